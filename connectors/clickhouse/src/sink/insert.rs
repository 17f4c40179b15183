//! Inserting spooled segments: the server's features, the deduplication token, retries
//! while ClickHouse is unavailable, and the salvage of a refused segment row by row, with
//! `failure.policy` for the rows ClickHouse refuses.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use danube_connect_core::failure::{Delivery, Handback, Undeliverable};
use danube_connect_core::{ConnectorError, ConnectorResult};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{Inner, Stopped, Table};
use crate::client::ClickHouseError;
use crate::config::{DedupMode, UnknownFields};
use crate::mapping::MapError;
use crate::spool::{json_each_row, LoadedSegment};

/// `deduplication_token = "auto"` before the server version is known.
pub(super) const DEDUP_UNKNOWN: u8 = 0;
/// Insert with `insert_deduplication_token`.
pub(super) const DEDUP_ON: u8 = 1;
/// Insert without it.
pub(super) const DEDUP_OFF: u8 = 2;

impl Inner {
    /// Refuses settings the server cannot honour (when it answers at all; otherwise the
    /// first insert finds out and retries).
    pub(super) async fn check_server_features(&self) -> ConnectorResult<()> {
        let needs_version = self.config.async_insert || self.config.deduplication_token == DedupMode::Always;
        if !needs_version {
            return Ok(());
        }
        let (major, minor) = match self.ch.version().await {
            Ok(version) => version,
            Err(e) => {
                warn!(error = %danube_connect_core::error::error_chain(&e), "cannot read the ClickHouse version at start");
                return Ok(());
            }
        };
        if self.config.async_insert && (major, minor) < (21, 11) {
            return Err(ConnectorError::fatal_msg(format!(
                "connector.async_insert needs ClickHouse 21.11 or later; the server is {major}.{minor}"
            )));
        }
        if self.config.deduplication_token == DedupMode::Always && (major, minor) < (22, 2) {
            return Err(ConnectorError::fatal_msg(format!(
                "connector.deduplication_token = \"always\" needs ClickHouse 22.2 or later; the server is {major}.{minor} (use \"auto\")"
            )));
        }
        Ok(())
    }

    pub(super) async fn dedup_enabled(&self) -> Result<bool, ClickHouseError> {
        match self.dedup.load(Ordering::Relaxed) {
            DEDUP_ON => Ok(true),
            DEDUP_OFF => Ok(false),
            _ => {
                let (major, minor) = self.ch.version().await?;
                let supported = (major, minor) >= (22, 2);
                info!(version = %format!("{major}.{minor}"), insert_deduplication_token = supported, "ClickHouse version detected");
                self.dedup.store(if supported { DEDUP_ON } else { DEDUP_OFF }, Ordering::Relaxed);
                Ok(supported)
            }
        }
    }

    /// One insert of `rows` (tagged with `token`), retried with backoff while ClickHouse is
    /// unavailable; returns the rejection when the server refuses the data. With a batch
    /// id column, an insert whose earlier attempt may have landed (`uncertain`) is first
    /// looked up by its token and skipped when it is already there.
    pub(super) async fn insert_with_retry(
        &self,
        table: &Table,
        columns: &[String],
        rows: &[Vec<u8>],
        token: &str,
        mut uncertain: bool,
        stop: &CancellationToken,
    ) -> Result<Result<(), ClickHouseError>, Stopped> {
        let label = [table.label.as_str()];
        let batch_column = table.mapping.batch_id_column.as_deref();
        let mut columns = columns.to_vec();
        if let Some(column) = batch_column {
            columns.push(column.to_string());
        }
        let body = json_each_row(rows, batch_column.map(|c| (c, token)));
        let mut delays = self.retry.delays();
        loop {
            let result = match (uncertain, batch_column) {
                (true, Some(column)) => match self.ch.count_token(&table.database, &table.name, column, token).await {
                    Ok(present) if present >= rows.len() as u64 => {
                        self.metrics.inserts.with_label_values(&[label[0], "already_present"]).inc();
                        info!(table = %table.label, token, rows = rows.len(), "batch already in ClickHouse (an earlier attempt landed); not inserting it again");
                        self.set_problem(None);
                        return Ok(Ok(()));
                    }
                    Ok(present) => {
                        if present > 0 {
                            warn!(table = %table.label, token, present, rows = rows.len(), "part of the batch is already in ClickHouse; inserting it whole (duplicates)");
                        }
                        self.insert_once(table, &columns, &body, token).await
                    }
                    Err(error) => Err(error),
                },
                _ => self.insert_once(table, &columns, &body, token).await,
            };
            let error = match result {
                Ok(()) => {
                    self.metrics.inserts.with_label_values(&[label[0], "ok"]).inc();
                    self.set_problem(None);
                    return Ok(Ok(()));
                }
                Err(error @ ClickHouseError::Rejected { .. }) => {
                    self.metrics.inserts.with_label_values(&[label[0], "rejected"]).inc();
                    return Ok(Err(error));
                }
                Err(error) => error,
            };
            // The request may have reached the server: look before inserting again.
            uncertain = true;
            self.metrics.inserts.with_label_values(&[label[0], "retryable"]).inc();
            let chain = danube_connect_core::error::error_chain(&error);
            let delay = delays.next().unwrap_or(Duration::from_secs(10));
            warn!(table = %table.label, error = %chain, retry_in = ?delay, "insert failed; the rows stay in the spool");
            self.set_problem(Some(format!("inserts into {} failing: {chain}", table.label)));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return Err(Stopped),
            }
        }
    }

    pub(super) async fn insert_once(
        &self,
        table: &Table,
        columns: &[String],
        body: &[u8],
        token: &str,
    ) -> Result<(), ClickHouseError> {
        let dedup = self.dedup_enabled().await?;
        self.ch.insert(&table.database, &table.name, columns, body.to_vec(), dedup.then_some(token)).await
    }

    /// Inserts one sealed segment; rows ClickHouse refuses go to the dead-letter topic.
    pub(super) async fn insert_segment(
        &self,
        table: &Table,
        loaded: &LoadedSegment,
        stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        if loaded.rows.is_empty() {
            return Ok(());
        }
        let token = loaded.token(&table.label);
        let started = Instant::now();
        let uncertain = loaded.segment.recovered;
        match self.insert_with_retry(table, &loaded.columns, &loaded.rows, &token, uncertain, stop).await? {
            Ok(()) => {
                self.count_inserted(table, loaded.rows.len());
                debug!(table = %table.label, rows = loaded.rows.len(), took = ?started.elapsed(), "segment inserted");
                Ok(())
            }
            Err(rejection) => self.salvage(table, loaded, &token, rejection, stop).await,
        }
    }

    pub(super) fn count_inserted(&self, table: &Table, rows: usize) {
        self.metrics.rows_inserted.with_label_values(&[table.label.as_str()]).inc_by(rows as u64);
    }

    /// ClickHouse refused a segment (its schema changed since the rows were spooled, or a
    /// type the sink passes through unchecked): re-read the columns, re-map every row, and
    /// insert in halves until each refused row is isolated and dead-lettered.
    pub(super) async fn salvage(
        &self,
        table: &Table,
        loaded: &LoadedSegment,
        token: &str,
        rejection: ClickHouseError,
        stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        warn!(table = %table.label, segment = %loaded.segment.name, error = %danube_connect_core::error::error_chain(&rejection), "ClickHouse refused a spooled segment; re-reading the columns and isolating the bad rows");
        let mut delays = self.retry.delays();
        let mapper = loop {
            match self.refresh_schema(table).await {
                Ok(mapper) => break mapper,
                Err(error) => {
                    self.set_problem(Some(error.chain()));
                    tokio::select! {
                        _ = tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(10))) => {}
                        _ = stop.cancelled() => return Err(Stopped),
                    }
                }
            }
        };
        let mut groups: HashMap<Vec<u16>, Vec<Vec<u8>>> = HashMap::new();
        for row in &loaded.rows {
            let remapped = serde_json::from_slice::<serde_json::Map<String, Value>>(row)
                .map_err(MapError::NotJson)
                .and_then(|object| mapper.map_object(&object, &[], UnknownFields::Ignore));
            match remapped {
                Ok(encoded) => groups.entry(encoded.shape).or_default().push(encoded.line),
                Err(error) => {
                    self.dead_letter(table, row, &danube_connect_core::error::error_chain(&error), 1, stop).await?
                }
            }
        }
        let mut shapes: Vec<(Vec<u16>, Vec<Vec<u8>>)> = groups.into_iter().collect();
        shapes.sort();
        for (group, (shape, rows)) in shapes.iter().enumerate() {
            let columns = mapper.insert_columns(shape);
            // Each range with the inserts its rows were in: the segment's, then one per half.
            let mut stack = vec![(0usize, rows.len(), 2usize)];
            while let Some((from, to, attempts)) = stack.pop() {
                let part_token = format!("{token}:s{group}:{from}-{to}");
                let uncertain = loaded.segment.recovered;
                match self.insert_with_retry(table, &columns, &rows[from..to], &part_token, uncertain, stop).await? {
                    Ok(()) => self.count_inserted(table, to - from),
                    Err(error) if to - from == 1 => {
                        let error = danube_connect_core::error::error_chain(&error);
                        self.dead_letter(table, &rows[from], &error, attempts, stop).await?
                    }
                    Err(_) => {
                        let mid = from + (to - from) / 2;
                        stack.push((mid, to, attempts + 1));
                        stack.push((from, mid, attempts + 1));
                    }
                }
            }
        }
        Ok(())
    }

    /// A row ClickHouse refused after it was spooled and acked to Danube, after `attempts`
    /// inserts that carried it: core's `failure.policy` applies. It was acked to Danube
    /// already, so `nack` acts as `stop`; with `stop` (or `nack`) the flusher stops and the
    /// segment stays in the spool, to be inserted again at the next start.
    pub(super) async fn dead_letter(
        &self,
        table: &Table,
        row: &[u8],
        error: &str,
        attempts: usize,
        stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        let mut attributes = HashMap::new();
        attributes.insert("clickhouse.table".to_string(), table.label.clone());
        let failed = Undeliverable {
            payload: row.to_vec().into(),
            attributes,
            routing_key: None,
            source_topic: table.mapping.topic.clone(),
            source_offset: None,
            error: error.to_string(),
            kind: "invalid",
            attempts,
        };
        match self.failures.with_stop(stop.clone()).undeliverable(failed, Handback::Impossible).await {
            Delivery::Published | Delivery::DeadLettered => {
                self.metrics.dead_lettered.with_label_values(&[table.label.as_str()]).inc();
                warn!(table = %table.label, error, "a spooled row was refused by ClickHouse and dead-lettered");
                Ok(())
            }
            Delivery::Refused | Delivery::Stopped | Delivery::NotDelivered { .. } => {
                error!(table = %table.label, error, "a spooled row was refused by ClickHouse and not dead-lettered; its segment stays in the spool");
                Err(Stopped)
            }
        }
    }
}

//! Plain-mode intake: records mapped to rows with the table's columns (read from
//! ClickHouse, refreshed when a record brings an unknown field) and appended to the
//! table's spool, waiting while the spool is full.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use danube_connect_core::{ConnectorError, ConnectorResult, SinkRecord};
use tracing::{debug, error, warn};

use super::{Inner, Table};
use crate::config::TableMode;
use crate::mapping::{MapError, Mapper};
use crate::spool::{record_id, RowGroup, SpoolError};

impl Inner {
    /// Reads the table's columns and replaces its mapper.
    pub(super) async fn refresh_schema(&self, table: &Table) -> ConnectorResult<Arc<Mapper>> {
        *table.last_refresh.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
        let columns = self
            .ch
            .columns(&table.database, &table.name)
            .await
            .map_err(|e| ConnectorError::retryable(format!("read the columns of {}", table.label), e))?;
        if columns.is_empty() {
            return Err(ConnectorError::retryable_msg(format!("table {} does not exist", table.label)));
        }
        let mapper =
            Arc::new(Mapper::new(columns, &table.mapping).map_err(|message| {
                ConnectorError::fatal_msg(format!("table mapping for {}: {message}", table.label))
            })?);
        if table.mapping.mode == TableMode::Cdc {
            let keys = if table.mapping.key_columns.is_empty() {
                let engine = self
                    .ch
                    .engine_full(&table.database, &table.name)
                    .await
                    .map_err(|e| ConnectorError::retryable(format!("read the engine of {}", table.label), e))?;
                crate::cdc::sorting_key(&engine)
            } else {
                table.mapping.key_columns.clone()
            };
            *table.keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = keys;
        }
        debug!(table = %table.label, columns = mapper.columns().len(), "table columns loaded");
        *table.mapper.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(mapper.clone());
        Ok(mapper)
    }

    pub(super) fn may_refresh(&self, table: &Table, interval: Duration) -> bool {
        table
            .last_refresh
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_none_or(|at| at.elapsed() >= interval)
    }

    /// The table's mapper, loading it when missing.
    pub(super) async fn mapper(&self, table: &Table) -> ConnectorResult<Arc<Mapper>> {
        if let Some(mapper) = table.mapper.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone() {
            return Ok(mapper);
        }
        if !self.may_refresh(table, Duration::from_secs(1)) {
            return Err(ConnectorError::Defer {
                delay: Duration::from_secs(5),
                message: format!("the columns of {} are not known yet", table.label),
            });
        }
        match self.refresh_schema(table).await {
            Ok(mapper) => Ok(mapper),
            Err(error @ ConnectorError::Fatal { .. }) => Err(error),
            Err(error) => {
                warn!(table = %table.label, error = %error.chain(), "cannot read the table's columns; handing records back to the broker");
                Err(ConnectorError::Defer { delay: Duration::from_secs(5), message: error.chain() })
            }
        }
    }

    /// Maps and spools `indices` of `records` (all for `table`), pushing per-record failures.
    pub(super) async fn spool_records(
        &self,
        table: &Arc<Table>,
        records: &[SinkRecord],
        indices: &[usize],
        failures: &mut Vec<(usize, ConnectorError)>,
    ) {
        let mut mapper = match self.mapper(table).await {
            Ok(mapper) => mapper,
            Err(error) => {
                for &index in indices {
                    failures.push((index, copy_error(&error)));
                }
                return;
            }
        };
        let mut groups: HashMap<Vec<u16>, Vec<(u128, Vec<u8>)>> = HashMap::new();
        let mut spooled: Vec<usize> = Vec::new();
        for &index in indices {
            let record = &records[index];
            let mut mapped = mapper.map_record(record);
            if let Err(MapError::UnknownField(_)) = &mapped {
                // Perhaps a column was just added: look again (rate limited).
                if self.may_refresh(table, self.config.schema_refresh_interval) {
                    if let Ok(fresh) = self.refresh_schema(table).await {
                        mapper = fresh;
                        mapped = mapper.map_record(record);
                    }
                }
            }
            match mapped {
                Ok(row) => {
                    groups
                        .entry(row.shape)
                        .or_default()
                        .push((record_id(&record.message_id(), record.publish_time, &record.producer_name), row.line));
                    spooled.push(index);
                }
                Err(error) => failures.push((
                    index,
                    ConnectorError::invalid(format!("record does not fit table {}", table.label), error),
                )),
            }
        }
        let groups: Vec<RowGroup> =
            groups.into_iter().map(|(shape, rows)| (mapper.insert_columns(&shape), rows)).collect();
        self.append_rows(table, groups, spooled, failures).await;
    }

    /// Appends mapped rows (of the records at `spooled`) to the table's spool, pushing a
    /// failure per record when that fails.
    pub(super) async fn append_rows(
        &self,
        table: &Arc<Table>,
        groups: Vec<RowGroup>,
        spooled: Vec<usize>,
        failures: &mut Vec<(usize, ConnectorError)>,
    ) {
        if spooled.is_empty() {
            return;
        }
        if let Err(error) = self.wait_for_space(table).await {
            for index in spooled {
                failures.push((index, copy_error(&error)));
            }
            return;
        }
        let spool = table.spool.clone();
        let result = tokio::task::spawn_blocking(move || spool.append(groups)).await;
        let label = [table.label.as_str()];
        match result {
            Ok(Ok(outcome)) => {
                if outcome.duplicates > 0 {
                    self.metrics.duplicates.with_label_values(&label).inc_by(outcome.duplicates as u64);
                    debug!(table = %table.label, duplicates = outcome.duplicates, "redelivered records were already spooled");
                }
                self.metrics.spool_bytes.with_label_values(&label).set(table.spool.bytes() as i64);
                if outcome.appended > 0 {
                    // A sealed segment to insert, or a new linger deadline to watch.
                    table.wake.notify_one();
                }
            }
            Ok(Err(error)) => {
                let error: Arc<SpoolError> = Arc::new(error);
                error!(table = %table.label, error = %danube_connect_core::error::error_chain(error.as_ref()), "spool append failed");
                for index in spooled {
                    failures.push((
                        index,
                        ConnectorError::retryable("append to the spool", SharedSpoolError(error.clone())),
                    ));
                }
            }
            Err(join) => {
                let message = format!("spool append task failed: {join}");
                for index in spooled {
                    failures.push((index, ConnectorError::retryable_msg(message.clone())));
                }
            }
        }
    }

    /// Waits while the table's spool is over `spool.max_bytes` (ClickHouse is behind).
    pub(super) async fn wait_for_space(&self, table: &Table) -> ConnectorResult<()> {
        let started = Instant::now();
        while table.spool.bytes() >= self.config.spool.max_bytes {
            if started.elapsed() >= self.config.spool.full_wait {
                return Err(ConnectorError::Defer {
                    delay: self.config.spool.full_wait,
                    message: format!("the spool of {} is full; ClickHouse is behind", table.label),
                });
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), table.space.notified()).await;
        }
        Ok(())
    }
}

/// A copy of a per-batch error for each record it applies to.
pub(super) fn copy_error(error: &ConnectorError) -> ConnectorError {
    match error {
        ConnectorError::Defer { delay, message } => ConnectorError::Defer { delay: *delay, message: message.clone() },
        ConnectorError::Fatal { .. } => ConnectorError::fatal_msg(error.chain()),
        ConnectorError::InvalidRecord { .. } => ConnectorError::invalid_msg(error.chain()),
        _ => ConnectorError::retryable_msg(error.chain()),
    }
}

/// One spool error shared as the source of several record errors.
#[derive(Debug)]
struct SharedSpoolError(Arc<SpoolError>);

impl std::fmt::Display for SharedSpoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", danube_connect_core::error::error_chain(self.0.as_ref()))
    }
}

impl std::error::Error for SharedSpoolError {}

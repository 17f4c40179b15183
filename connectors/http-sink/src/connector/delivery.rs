//! Sending records: one request per record (keys in parallel, each key in order) or per
//! batch target, the answer classified into the [`Failure`] the runtime acts on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use danube_connect_core::trace_context;
use danube_connect_core::{ConnectorError, ConnectorResult, SinkRecord};
use futures::future::join_all;
use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use sha2::{Digest, Sha256};
use tracing::{debug, warn};
use url::Url;

use super::{HttpSink, MIN_DEFER};
use crate::body::decode_json;
use crate::breaker::{Admission, CircuitBreaker, Report};
use crate::error::{DeliveryError, Failure};
use crate::outcome::{parse_retry_after, Class};
use crate::signature;
use crate::ssrf::SsrfError;
use crate::template::{endpoint_of, target_of};

/// Bytes of an error response kept for the error message (and the dead-letter record).
const ERROR_BODY_LIMIT: usize = 512;
/// Bytes of a success response read (so the connection can be reused) before it is dropped.
const SUCCESS_BODY_LIMIT: usize = 64 * 1024;

impl HttpSink {
    /// Sends one request carrying `records` (one, or a batch) to `url`.
    async fn deliver(&self, records: &[&SinkRecord], url: Url) -> Result<(), Failure> {
        let endpoint = endpoint_of(&url);
        let target = target_of(&url);
        if !self.policy.allows_all() {
            if let Some(host) = url.host() {
                let host = host.to_owned();
                let mut verdict = self.policy.check_host(&host);
                if verdict.is_ok() && self.proxied {
                    verdict = match self.policy.check_proxied(&host).await {
                        Ok(verdict) => verdict,
                        Err(error) => {
                            self.outcome("network");
                            return Err(Failure::Retry {
                                after: None,
                                error: Arc::new(DeliveryError::Lookup { target: target.clone(), source: error }),
                            });
                        }
                    };
                }
                if let Err(error) = verdict {
                    self.outcome("refused");
                    return Err(Failure::Permanent(Arc::new(DeliveryError::Refused(error))));
                }
            }
        }
        let body = self.body.build(records).map_err(|e| {
            self.outcome("permanent");
            Failure::Permanent(Arc::new(DeliveryError::Body(e)))
        })?;
        let probe = match self.breaker.as_ref().map(|b| b.admit(&endpoint)) {
            Some(Admission::Rejected(wait)) => {
                self.outcome("deferred");
                return Err(Failure::Defer {
                    delay: wait.max(MIN_DEFER),
                    message: format!("circuit open for {endpoint}"),
                });
            }
            Some(Admission::Probe) => true,
            _ => false,
        };
        let ids: Vec<String> = records.iter().map(|r| r.message_id()).collect();
        let attempt = records.iter().map(|r| r.attempt).max().unwrap_or(1);
        let deferrals = records.iter().map(|r| r.deferrals).max().unwrap_or(0);
        let message_id = match ids.as_slice() {
            [one] => one.clone(),
            many => batch_id(many),
        };

        let mut headers = self.headers.clone();
        let mut dynamic = |name: HeaderName, value: &str| {
            // Values made here are ASCII (ids from topic names and numbers, base64, hex);
            // one that is not is left out rather than failing the delivery.
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        };
        dynamic(CONTENT_TYPE, &body.content_type);
        dynamic(self.message_id_header.clone(), &message_id);
        dynamic(self.attempt_header.clone(), &attempt.to_string());
        if let Some(signer) = &self.webhook {
            let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            dynamic(HeaderName::from_static(signature::headers::ID), &message_id);
            dynamic(HeaderName::from_static(signature::headers::TIMESTAMP), &timestamp.to_string());
            dynamic(
                HeaderName::from_static(signature::headers::SIGNATURE),
                &signer.sign(&message_id, timestamp, &body.bytes),
            );
        }
        if let Some((name, signer)) = &self.hmac {
            dynamic(name.clone(), &signer.sign(&body.bytes));
        }
        // The W3C trace context the record brought (e.g. from the webhook http-source took
        // it from): a batch carries it only when every record shares it.
        if let [first, rest @ ..] = records {
            let parent = first.attributes.get(trace_context::TRACEPARENT);
            if rest.iter().all(|r| r.attributes.get(trace_context::TRACEPARENT) == parent) {
                trace_context::copy_into_headers(&first.attributes, &mut headers);
            }
        }

        // Closing the semaphore never happens: acquire fails only when closed.
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| Failure::Defer { delay: MIN_DEFER, message: "sink is shutting down".into() })?;
        let started = Instant::now();
        let sent = self.client.request(self.method.clone(), url).headers(headers).body(body.bytes).send().await;
        let result = match sent {
            Ok(response) => self.on_response(response, &endpoint, &target, deferrals, attempt).await,
            Err(error) => Err(self.on_transport_error(error, &endpoint, &target)),
        };
        self.metrics.observe_duration(started.elapsed().as_secs_f64());
        if probe {
            debug!(%endpoint, ok = result.is_ok(), "circuit probe finished");
        }
        self.update_open_circuits();
        result
    }

    async fn on_response(
        &self,
        mut response: reqwest::Response,
        endpoint: &str,
        target: &str,
        deferrals: u32,
        attempt: u32,
    ) -> Result<(), Failure> {
        let status = response.status();
        let class = self.outcomes.classify(status.as_u16());
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
            .map(|hint| hint.min(self.retry_after.max));
        let limit = if class == Class::Success { SUCCESS_BODY_LIMIT } else { ERROR_BODY_LIMIT };
        let mut snippet = Vec::new();
        while snippet.len() < limit {
            match response.chunk().await {
                Ok(Some(chunk)) => snippet.extend_from_slice(&chunk[..chunk.len().min(limit - snippet.len())]),
                Ok(None) | Err(_) => break,
            }
        }
        match class {
            Class::Success => {
                self.outcome("success");
                self.report(endpoint, Report::Healthy);
                Ok(())
            }
            Class::Permanent => {
                self.outcome("permanent");
                self.report(endpoint, Report::Healthy);
                Err(Failure::Permanent(Arc::new(DeliveryError::Status {
                    method: self.method.clone(),
                    target: target.to_string(),
                    status,
                    body: one_line(&snippet),
                })))
            }
            Class::Retryable => {
                let report =
                    if status == reqwest::StatusCode::TOO_MANY_REQUESTS { Report::Neutral } else { Report::Failed };
                let opened = self.report(endpoint, report);
                let error = Arc::new(DeliveryError::Status {
                    method: self.method.clone(),
                    target: target.to_string(),
                    status,
                    body: one_line(&snippet),
                });
                debug!(%target, %status, attempt, ?retry_after, "retryable answer");
                if opened {
                    self.outcome("deferred");
                    return Err(self.opened(endpoint, &error));
                }
                self.outcome("retryable");
                match retry_after {
                    Some(hint) if hint > self.retry_after.defer_threshold => {
                        if self.may_defer(deferrals) {
                            Err(Failure::Defer {
                                delay: hint.max(MIN_DEFER),
                                message: format!("{error}; Retry-After {hint:?} is past the defer threshold"),
                            })
                        } else {
                            warn!(%target, ?hint, "retry_after.max_defers spent: retrying in process, then the failure policy");
                            Err(Failure::Retry { after: Some(hint), error })
                        }
                    }
                    after => Err(Failure::Retry { after, error }),
                }
            }
        }
    }

    /// Whether one more deferral of records deferred `deferrals` times before (the
    /// runtime's count, [`SinkRecord::deferrals`]) stays within `retry_after.max_defers`.
    fn may_defer(&self, deferrals: u32) -> bool {
        self.retry_after.max_defers.is_none_or(|max| deferrals.saturating_add(1) <= max)
    }

    fn on_transport_error(&self, error: reqwest::Error, endpoint: &str, target: &str) -> Failure {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(current) = source {
            if let Some(refused) = current.downcast_ref::<SsrfError>() {
                self.outcome("refused");
                return Failure::Permanent(Arc::new(DeliveryError::Refused(refused.clone())));
            }
            source = current.source();
        }
        let error = Arc::new(DeliveryError::Transport {
            method: self.method.clone(),
            target: target.to_string(),
            what: if error.is_timeout() { "timed out" } else { "failed" },
            // Its text would repeat the whole URL, query and all.
            source: error.without_url(),
        });
        if self.report(endpoint, Report::Failed) {
            self.outcome("deferred");
            return self.opened(endpoint, &error);
        }
        self.outcome("network");
        Failure::Retry { after: None, error }
    }

    pub(crate) fn report(&self, endpoint: &str, report: Report) -> bool {
        self.breaker.as_ref().is_some_and(|b| b.report(endpoint, report))
    }

    /// The failure that opened the circuit: hand the record back instead of retrying it,
    /// so an outage never exhausts retries into the dead-letter topic.
    fn opened(&self, endpoint: &str, error: &DeliveryError) -> Failure {
        let cool_down = self.breaker.as_ref().map_or(MIN_DEFER, CircuitBreaker::cool_down);
        warn!(%endpoint, ?cool_down, error = %danube_connect_core::error::error_chain(error), "circuit opened");
        Failure::Defer { delay: cool_down.max(MIN_DEFER), message: format!("circuit opened for {endpoint}: {error}") }
    }

    /// One request for one record.
    pub(crate) async fn deliver_one(&self, record: &SinkRecord) -> Result<(), Failure> {
        let url = self.template.render(record).map_err(|e| {
            self.outcome("permanent");
            Failure::Permanent(Arc::new(DeliveryError::Url(e)))
        })?;
        self.deliver(&[record], url).await
    }

    /// Records of one key, one after another; after a retryable failure or a deferral the
    /// later records of the key are held back so they cannot overtake it.
    async fn deliver_in_order(&self, records: &[SinkRecord], indexes: &[usize]) -> Vec<(usize, ConnectorError)> {
        let mut failures = Vec::new();
        let mut blocked: Option<Failure> = None;
        for &index in indexes {
            if let Some(failure) = &blocked {
                failures.push((index, failure.held_back()));
                continue;
            }
            match self.deliver_one(&records[index]).await {
                Ok(()) => {}
                Err(failure @ Failure::Permanent(_)) => failures.push((index, failure.to_error())),
                Err(failure) => {
                    failures.push((index, failure.to_error()));
                    blocked = Some(failure);
                }
            }
        }
        failures
    }

    /// Batch mode: one request per target URL.
    pub(crate) async fn deliver_batches(&self, records: &[SinkRecord]) -> ConnectorResult<()> {
        let mut failures: Vec<(usize, ConnectorError)> = Vec::new();
        let mut groups: Vec<(Url, Vec<usize>)> = Vec::new();
        for (index, record) in records.iter().enumerate() {
            if self.body.needs_json() {
                if let Err(error) = decode_json(record) {
                    self.outcome("permanent");
                    failures.push((index, Failure::Permanent(Arc::new(DeliveryError::Body(error))).to_error()));
                    continue;
                }
            }
            match self.template.render(record) {
                Ok(url) => match groups.iter_mut().find(|(u, _)| *u == url) {
                    Some((_, members)) => members.push(index),
                    None => groups.push((url, vec![index])),
                },
                Err(error) => {
                    self.outcome("permanent");
                    failures.push((index, Failure::Permanent(Arc::new(DeliveryError::Url(error))).to_error()));
                }
            }
        }
        if failures.is_empty() && groups.len() == 1 {
            // The whole batch in one request: let the runtime retry it as a whole.
            let refs: Vec<&SinkRecord> = records.iter().collect();
            let Some((url, _)) = groups.pop() else { return Ok(()) };
            return self.deliver(&refs, url).await.map_err(|f| f.to_error());
        }
        let sends = groups.into_iter().map(|(url, members)| async move {
            let refs: Vec<&SinkRecord> = members.iter().map(|&i| &records[i]).collect();
            (members.clone(), self.deliver(&refs, url).await)
        });
        for (members, result) in join_all(sends).await {
            if let Err(failure) = result {
                failures.extend(members.into_iter().map(|i| (i, failure.to_error())));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(ConnectorError::PartialBatch { failures })
        }
    }

    /// One request per record: records of different keys in parallel, each key's records
    /// in order ([`Self::deliver_in_order`]).
    pub(crate) async fn deliver_per_key(&self, records: &[SinkRecord]) -> ConnectorResult<()> {
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut by_key: HashMap<&str, usize> = HashMap::new();
        for (index, record) in records.iter().enumerate() {
            match record.routing_key.as_deref() {
                Some(key) => {
                    let group = *by_key.entry(key).or_insert_with(|| {
                        groups.push(Vec::new());
                        groups.len() - 1
                    });
                    groups[group].push(index);
                }
                None => groups.push(vec![index]),
            }
        }
        let failures: Vec<(usize, ConnectorError)> =
            join_all(groups.iter().map(|g| self.deliver_in_order(records, g))).await.into_iter().flatten().collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(ConnectorError::PartialBatch { failures })
        }
    }
}

/// A stable id for a batch: a hash of its records' ids.
fn batch_id(ids: &[String]) -> String {
    let mut hasher = Sha256::new();
    for id in ids {
        hasher.update(id.as_bytes());
        hasher.update(b"\n");
    }
    format!("batch_{}", hex::encode(&hasher.finalize()[..16]))
}

/// The start of a response body as one printable line.
fn one_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut line: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).take(200).collect();
    if text.chars().count() > 200 {
        line.push_str("...");
    }
    line.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_id_is_stable_and_order_sensitive() {
        let a = vec!["/default/t:1".to_string(), "/default/t:2".to_string()];
        let b = vec!["/default/t:2".to_string(), "/default/t:1".to_string()];
        assert_eq!(batch_id(&a), batch_id(&a.clone()));
        assert_ne!(batch_id(&a), batch_id(&b));
        assert!(batch_id(&a).starts_with("batch_"));
    }

    #[test]
    fn one_line_strips_control_characters_and_truncates() {
        assert_eq!(one_line(b"a\nb\tc"), "a b c");
        assert!(one_line(&[b'x'; 500]).ends_with("..."));
    }
}

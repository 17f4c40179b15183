//! OpenTelemetry traces: a span for each record a source publishes and each record a sink
//! processes, exported over OTLP/HTTP when `[telemetry]` names an endpoint.
//!
//! ```toml
//! [telemetry]
//! otlp_endpoint = "http://127.0.0.1:4318"   # an OpenTelemetry Collector, Jaeger, Tempo...
//! sample_ratio = 0.1                        # of new traces; a sampled caller is followed
//! ```
//!
//! Spans and the record's W3C trace context ([`crate::trace_context`]) go together:
//! - a source's `publish {topic}` span (kind producer) is the child of the `traceparent` the
//!   record arrived with (e.g. the webhook's), and the record goes to Danube with the
//!   `traceparent` of that span;
//! - a sink's `process {topic}` span (kind consumer) is the child of the record's
//!   `traceparent`, and the connector sees the record with the `traceparent` of that span,
//!   so the call it makes (http-sink's request headers) is the child of the sink's span.
//!
//! Off by default: without `otlp_endpoint` no span is made and the attributes pass through
//! unchanged, at no cost beyond one check per record.

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Validate};

/// The `[telemetry]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Base URL of an OTLP/HTTP receiver (protobuf); spans are posted to
    /// `{otlp_endpoint}/v1/traces`. Unset (the default): no spans.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the spans; the connector name when unset.
    pub service_name: Option<String>,
    /// Share of new traces that are recorded, 0.0 to 1.0 (default 1.0). A record whose
    /// `traceparent` says sampled is always followed, one that says not sampled never.
    pub sample_ratio: f64,
    /// Longest wait for one export request.
    #[serde(with = "humantime_serde")]
    pub export_timeout: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { otlp_endpoint: None, service_name: None, sample_ratio: 1.0, export_timeout: Duration::from_secs(5) }
    }
}

impl Validate for TelemetryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(endpoint) = &self.otlp_endpoint {
            let url = reqwest::Url::parse(endpoint).map_err(|e| {
                ConfigError::invalid("telemetry.otlp_endpoint", format!("`{endpoint}` is not a URL: {e}"))
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ConfigError::invalid(
                    "telemetry.otlp_endpoint",
                    "must be an http:// or https:// URL (OTLP over HTTP, e.g. http://127.0.0.1:4318)",
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(ConfigError::invalid("telemetry.sample_ratio", "must be between 0.0 and 1.0"));
        }
        if self.export_timeout.is_zero() {
            return Err(ConfigError::invalid("telemetry.export_timeout", "must be above 0"));
        }
        Ok(())
    }
}

/// Why the exporter could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP exporter for {endpoint}")]
pub struct TelemetryError {
    endpoint: String,
    #[source]
    source: opentelemetry_otlp::ExporterBuildError,
}

/// The process's tracer, set once by [`init`].
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The exporter of a process; [`shutdown`](Self::shutdown) flushes what is buffered.
#[derive(Debug)]
pub(crate) struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Sends the spans still buffered and stops the exporter. Call it outside the async
    /// runtime (the exporter's HTTP client blocks).
    pub(crate) fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "telemetry: flushing the last spans failed");
        }
    }
}

/// Starts exporting spans when `config.otlp_endpoint` is set; `Ok(None)` otherwise. Call it
/// once per process, before the async runtime starts (the connector binaries' `main` does,
/// through [`cli::run`](crate::cli::run)).
pub(crate) fn init(config: &TelemetryConfig, connector_name: &str) -> Result<Option<Telemetry>, TelemetryError> {
    let Some(endpoint) = &config.otlp_endpoint else { return Ok(None) };
    use opentelemetry_otlp::WithExportConfig;
    let traces = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(traces.clone())
        .with_timeout(config.export_timeout)
        .build()
        .map_err(|source| TelemetryError { endpoint: traces, source })?;
    let service = config.service_name.clone().unwrap_or_else(|| connector_name.to_string());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio))))
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    let _ = TRACER.set(provider.tracer("danube-connect"));
    Ok(Some(Telemetry { provider }))
}

/// A started span around one record; [`finish`](Self::finish) ends it with the outcome.
#[derive(Debug)]
pub(crate) struct RecordSpan(Context);

impl RecordSpan {
    /// Ends the span: ok, or an error with `error`'s message.
    pub(crate) fn finish(self, error: Option<&dyn std::fmt::Display>) {
        let span = self.0.span();
        if let Some(error) = error {
            span.set_status(Status::error(error.to_string()));
        }
        span.end();
    }
}

/// Starts a `{operation} {topic}` span, the child of the `traceparent` in `attributes`, and
/// writes the new span's `traceparent` into `attributes`. `None` (attributes untouched) when
/// telemetry is off.
pub(crate) fn start_record_span(
    operation: &'static str,
    kind: SpanKind,
    topic: &str,
    attributes: &mut std::collections::HashMap<String, String>,
) -> Option<RecordSpan> {
    let tracer = TRACER.get()?;
    let propagator = TraceContextPropagator::new();
    let parent = propagator.extract(attributes);
    let span = tracer
        .span_builder(format!("{operation} {topic}"))
        .with_kind(kind)
        .with_attributes([
            KeyValue::new("messaging.system", "danube"),
            KeyValue::new("messaging.operation.type", operation),
            KeyValue::new("messaging.destination.name", topic.to_string()),
        ])
        .start_with_context(tracer, &parent);
    let context = parent.with_span(span);
    if context.span().span_context().is_valid() {
        propagator.inject_context(&context, attributes);
    }
    Some(RecordSpan(context))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_name_their_field() {
        let bad = |config: TelemetryConfig| config.validate().expect_err("refused").to_string();
        let endpoint = |e: &str| TelemetryConfig { otlp_endpoint: Some(e.into()), ..TelemetryConfig::default() };
        assert!(bad(endpoint("127.0.0.1:4318")).contains("telemetry.otlp_endpoint"));
        assert!(bad(endpoint("grpc://127.0.0.1:4317")).contains("telemetry.otlp_endpoint"));
        assert!(bad(TelemetryConfig { sample_ratio: 1.5, ..TelemetryConfig::default() }).contains("sample_ratio"));
        endpoint("http://127.0.0.1:4318").validate().expect("valid");
        TelemetryConfig::default().validate().expect("off is valid");
    }

    #[test]
    fn without_telemetry_no_span_is_made_and_attributes_pass_through() {
        let mut attributes = std::collections::HashMap::from([(
            "traceparent".to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
        )]);
        let before = attributes.clone();
        assert!(start_record_span("publish", SpanKind::Producer, "/default/x", &mut attributes).is_none());
        assert_eq!(attributes, before);
    }
}

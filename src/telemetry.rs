//! Logs, and OpenTelemetry traces over OTLP. Traces are off unless the standard variables
//! say where to send them (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_SDK_DISABLED=true` or
//! `OTEL_TRACES_EXPORTER=none` turn them off); the exporter reads the rest of them itself
//! (`OTEL_SERVICE_NAME`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_SCHEDULE_DELAY`, ...).
//!
//! One span per request (the HTTP layer's, continuing a W3C `traceparent`), with a child
//! for each stage of each image: `decode` and `render` as they run, `queue`, `forward`,
//! `backward` and `scores` laid out back to back from the durations the model worker
//! measured (a batch's passes serve several requests; each gets its own spans).

use std::time::{Duration, SystemTime};

use axum::http::HeaderMap;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Span as _, TraceContextExt, Tracer as _};
use opentelemetry::{global, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The instrumentation's name on every span.
const SCOPE: &str = env!("CARGO_PKG_NAME");

/// Keeps the trace exporter; [`Telemetry::shutdown`] sends what is still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("gradcam-serve: could not send the last traces: {e}");
            }
        }
    }
}

/// Whether the standard variables ask for traces to be exported.
pub fn traces_wanted(var: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| var(name).is_some_and(|v| !v.trim().is_empty());
    let off = var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
    !off && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Logs to stderr filtered by `GRADCAM_LOG` (default `info`), and spans to OTLP when the
/// variables ask for it. The log filter does not reach the spans: `GRADCAM_LOG=warn` quiets
/// the log, not the traces.
pub fn init() -> Telemetry {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GRADCAM_LOG")
        .unwrap_or_else(|_| "info,tower_http=info".into());
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let provider = if traces_wanted(|name| std::env::var(name).ok()) {
        match exporter() {
            Ok(provider) => Some(provider),
            Err(e) => {
                eprintln!("gradcam-serve: traces are off: the OTLP exporter failed: {e}");
                None
            }
        }
    } else {
        None
    };
    let spans = provider.as_ref().map(|provider| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(SCOPE))
            // The span's own attributes only: no source location, thread or busy/idle time.
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(Targets::new().with_target(SCOPE.replace('-', "_"), LevelFilter::INFO))
    });
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init();
    Telemetry { provider }
}

fn exporter() -> anyhow::Result<SdkTracerProvider> {
    let endpoint = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .into_iter()
    .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    .unwrap_or_default();
    // The exporter is built without TLS (no TLS stack is linked for it): say so rather than
    // fail on every export.
    if endpoint.trim().to_ascii_lowercase().starts_with("https:") {
        anyhow::bail!(
            "{endpoint}: this build exports over plain HTTP only; send to a collector on \
             http:// (a sidecar or the node's agent), which can forward over TLS"
        );
    }
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(protocol) = std::env::var(name)
            .ok()
            .filter(|p| p.trim() != "http/protobuf")
        {
            anyhow::bail!("{name}={protocol}: this build sends OTLP over http/protobuf only");
        }
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(SCOPE);
    }
    let provider = SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_batch_exporter(exporter)
        .build();
    global::set_tracer_provider(provider.clone());
    global::set_text_map_propagator(TraceContextPropagator::new());
    Ok(provider)
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Makes `span` continue the trace of a W3C `traceparent` header, when there is one.
pub fn continue_trace(span: &tracing::Span, headers: &HeaderMap) {
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// A stage the model worker timed, as a child span of `parent` from `start` for
/// `duration` (nothing when traces are off).
pub fn timed_stage(
    parent: &tracing::Span,
    name: &'static str,
    start: SystemTime,
    duration: Duration,
    attributes: Vec<KeyValue>,
) {
    let context = parent.context();
    if !context.span().span_context().is_valid() {
        return;
    }
    let tracer = global::tracer(SCOPE);
    let mut span = tracer
        .span_builder(name)
        .with_start_time(start)
        .with_attributes(attributes)
        .start_with_context(&tracer, &context);
    span.end_with_timestamp(start + duration);
}

#[cfg(test)]
mod tests {
    use super::traces_wanted;

    fn with(vars: &[(&str, &str)]) -> bool {
        traces_wanted(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn traces_only_where_the_standard_variables_ask() {
        assert!(!with(&[]));
        assert!(with(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector:4318"
        )]));
        assert!(with(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4318/v1/traces"
        )]));
        assert!(!with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]));
        assert!(!with(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SDK_DISABLED", "true")
        ]));
        assert!(!with(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_TRACES_EXPORTER", "none")
        ]));
    }
}

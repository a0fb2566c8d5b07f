//! Logging, trace export and trace context.
//!
//! Every process logs structured `tracing` events to stderr (`RUST_LOG` filters,
//! `PASSAGE_LOG_FORMAT=json` for JSON lines). A sign-in carries one W3C trace context from the
//! gateway through the dispatcher into the agent — in gRPC metadata where there is a call, in
//! the [`TraceContext`](passage_proto::v1::TraceContext) field of stream messages where there
//! is not — so the three processes' log lines for one sign-in share a `trace_id`.
//!
//! With an OTLP endpoint configured through the standard `OTEL_*` variables, [`init`] also
//! exports the spans over OTLP/gRPC: the gateway's `sign_in` span is the parent of the
//! dispatcher's `dispatch` span, whose per-agent `relay` span is the parent of the agent's
//! `validate` span, which covers `decrypt` and `authenticate` (the directory). See
//! `docs/observability.md`.

mod export;
mod traceparent;

pub use export::{Telemetry, TelemetryError, init};
pub use traceparent::{TraceParent, join_trace};

use tracing_subscriber::{EnvFilter, Layer, Registry, fmt};

/// The stderr log layer: compact text, or JSON lines with `PASSAGE_LOG_FORMAT=json`.
fn log_layer<S>() -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let json = std::env::var("PASSAGE_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    // Colour codes only for a terminal: in files they are noise, and cost measurable CPU.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    if json {
        layer.json().flatten_event(true).boxed()
    } else {
        layer.compact().boxed()
    }
}

fn env_filter(default_filter: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter))
}

/// Installs the global log subscriber (no trace export) once; later calls do nothing. For
/// short-lived commands; services call [`init`].
pub fn init_logging(default_filter: &str) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let _ = Registry::default()
        .with(env_filter(default_filter))
        .with(log_layer())
        .try_init();
}

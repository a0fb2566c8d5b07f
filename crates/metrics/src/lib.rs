//! Prometheus metrics of the Passage services, and the `/metrics` endpoint that serves them.
//!
//! Each service has one struct naming everything it counts and measures ([`gateway`],
//! [`dispatcher`], [`agent`]); the services call its methods where things happen, and values
//! that are a state rather than an event (agents connected, directory servers up, certificate
//! expiry) are read when Prometheus scrapes, from a function the service registers.
//!
//! Conventions: every name starts with `passage_<service>_`; durations are histograms in
//! seconds (`_seconds`), counters end in `_total` (added by the encoder), timestamps in Unix
//! seconds (`_timestamp_seconds`). Labels come from closed sets — outcomes, Passage error codes,
//! agent ids and connector groups — and **never** carry a username, an IP address or anything a
//! user typed (cardinality, and privacy: the metrics endpoint is not an audit log). Latency
//! histograms carry the trace id of a recent observation per bucket as an OpenMetrics exemplar,
//! so a slow bucket in Grafana leads to its trace in Tempo.

pub mod agent;
pub mod dispatcher;
pub mod gateway;
mod serve;

pub use prometheus_client::registry::Registry;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{gauge::Gauge, histogram::exponential_buckets},
};
pub use serve::{CONTENT_TYPE, router, serve};

/// An exemplar's labels: the trace an observation belongs to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceLabel {
    /// 32 lower-case hex digits (W3C trace context).
    pub trace_id: String,
}

/// The exemplar for `trace_id`, when there is one.
fn exemplar(trace_id: Option<String>) -> Option<TraceLabel> {
    trace_id.map(|trace_id| TraceLabel { trace_id })
}

/// Latency buckets, in seconds: 0.5 ms to ~16 s, doubling.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0005, 2.0, 16)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// A registry whose names start with `passage_<service>`, holding `passage_<service>_build_info`
/// (1, with the version as a label).
pub fn registry(service: &'static str, version: &'static str) -> Registry {
    let mut registry = Registry::with_prefix(format!("passage_{service}"));
    let info = prometheus_client::metrics::family::Family::<BuildLabels, Gauge>::default();
    info.get_or_create(&BuildLabels { version }).set(1);
    registry.register("build_info", "The running build (always 1)", info);
    registry
}

/// The registry as OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail; a collector's error would leave a partial exposition.
    if let Err(err) = prometheus_client::encoding::text::encode(&mut text, registry) {
        tracing::error!(error = %err, "metrics could not be encoded");
    }
    text
}

//! What the agent counts: validations by outcome, how long opening the sealed password and
//! asking the directory take, and — read at each scrape — its streams, its directory servers
//! and its certificate.

use std::{sync::Arc, time::Duration};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        MetricType, counter::ConstCounter, counter::Counter, exemplar::HistogramWithExemplars,
        family::Family, gauge::ConstGauge,
    },
    registry::Registry,
};

use crate::{TraceLabel, exemplar, latency_buckets};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
    outcome: &'static str,
}

/// The agent's state, as a scrape sees it.
#[derive(Debug, Clone, Default)]
pub struct AgentState {
    /// Dispatcher streams connected, of those expected (every replica resolved; one per URL
    /// dialled by name).
    pub streams: (u32, u32),
    /// Directory servers up, of how many.
    pub directory_servers: (u32, u32),
    /// Directory servers found unreachable during an operation since start (each moved the
    /// operation on to the next server, if any).
    pub directory_failovers: u64,
    /// The certificate's expiry, Unix seconds (none before enrolment).
    pub certificate_not_after: Option<i64>,
}

/// Where the agent's state is read from at scrape time.
pub type StateSource = Arc<dyn Fn() -> AgentState + Send + Sync>;

/// The agent's metrics.
#[derive(Debug, Clone)]
pub struct AgentMetrics {
    validations: Family<OutcomeLabel, Counter>,
    decrypt: HistogramWithExemplars<TraceLabel>,
    directory: Family<OperationLabels, HistogramWithExemplars<TraceLabel>>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self {
            validations: Family::default(),
            decrypt: HistogramWithExemplars::new(latency_buckets()),
            directory: Family::new_with_constructor(|| {
                HistogramWithExemplars::new(latency_buckets())
            }),
        }
    }
}

impl AgentMetrics {
    /// Registers these metrics in `registry` (they may have counted already: the validator
    /// exists before the agent's streams), with `state` read at each scrape.
    pub fn register(&self, registry: &mut Registry, state: StateSource) {
        let metrics = self;
        registry.register(
            "validations",
            "Validations answered, by outcome (the directory's verdict, repeat, refused, unavailable)",
            metrics.validations.clone(),
        );
        registry.register(
            "decrypt_duration_seconds",
            "Opening a sealed password (RSA-OAEP or X25519 + ML-KEM-768), off the async workers",
            metrics.decrypt.clone(),
        );
        registry.register(
            "directory_duration_seconds",
            "The directory's part of a validation (search and bind, or a password change), by operation and outcome",
            metrics.directory.clone(),
        );
        registry.register_collector(Box::new(State(state)));
    }

    /// Counts a validation's answer.
    pub fn validation(&self, outcome: &'static str) {
        self.validations
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Records how long opening a sealed password took.
    pub fn decrypt(&self, elapsed: Duration, trace_id: Option<String>) {
        self.decrypt
            .observe(elapsed.as_secs_f64(), exemplar(trace_id), None);
    }

    /// Records how long the directory took for `operation` (`authenticate`,
    /// `change_password`), ending in `outcome`.
    pub fn directory(
        &self,
        operation: &'static str,
        outcome: &'static str,
        elapsed: Duration,
        trace_id: Option<String>,
    ) {
        self.directory
            .get_or_create(&OperationLabels { operation, outcome })
            .observe(elapsed.as_secs_f64(), exemplar(trace_id), None);
    }
}

struct State(StateSource);

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("State")
    }
}

impl Collector for State {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = (self.0)();
        let gauges = [
            (
                "streams_connected",
                "Dispatcher streams connected",
                Some(i64::from(state.streams.0)),
            ),
            (
                "streams_expected",
                "Dispatcher streams the agent should hold: every replica resolved behind each URL (one per URL dialled by name)",
                Some(i64::from(state.streams.1)),
            ),
            (
                "directory_servers_up",
                "Directory servers believed reachable",
                Some(i64::from(state.directory_servers.0)),
            ),
            (
                "directory_servers",
                "Directory servers known (configured or found in DNS)",
                Some(i64::from(state.directory_servers.1)),
            ),
            (
                "certificate_expiry_timestamp_seconds",
                "When the agent's certificate expires (Unix seconds)",
                state.certificate_not_after,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                ConstGauge::new(value).encode(metric)?;
            }
        }
        let metric = encoder.encode_descriptor(
            "directory_failovers",
            "Directory servers found unreachable during an operation (each moves it on to the next server, if any)",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(state.directory_failovers).encode(metric)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_is_read_at_each_scrape() {
        let mut registry = crate::registry("agent", "0.1.0");
        let metrics = AgentMetrics::default();
        metrics.register(
            &mut registry,
            Arc::new(|| AgentState {
                streams: (1, 2),
                directory_servers: (1, 2),
                directory_failovers: 3,
                certificate_not_after: Some(1_800_000_000),
            }),
        );
        metrics.validation("success");
        metrics.decrypt(Duration::from_micros(900), Some("ab".repeat(16)));
        metrics.directory("authenticate", "success", Duration::from_millis(2), None);
        let text = crate::encode(&registry);
        for line in [
            "passage_agent_streams_connected 1",
            "passage_agent_directory_servers_up 1",
            "passage_agent_directory_failovers_total 3",
            "passage_agent_certificate_expiry_timestamp_seconds 1800000000",
            "passage_agent_validations_total{outcome=\"success\"} 1",
            "passage_agent_decrypt_duration_seconds_count 1",
            "passage_agent_directory_duration_seconds_count{operation=\"authenticate\",outcome=\"success\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}

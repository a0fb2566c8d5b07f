//! What the dispatcher counts: relays by outcome and their latency, failovers between the two
//! candidate agents, and — read at each scrape — the agents connected to this replica.

use std::{sync::Arc, time::Duration};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        MetricType, counter::Counter, exemplar::HistogramWithExemplars, family::Family,
        gauge::ConstGauge,
    },
    registry::Registry,
};

use crate::{TraceLabel, exemplar, latency_buckets};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// One connected agent, as a scrape sees it.
#[derive(Debug, Clone, Default)]
pub struct AgentSample {
    /// The agent's id (a label: bounded by the fleet, not by users).
    pub agent_id: String,
    /// Its tenant.
    pub tenant: String,
    /// Its connector group.
    pub connector_group: String,
    /// Its software version.
    pub version: String,
    /// Validations sent to it and not yet answered.
    pub in_flight: u32,
    /// Validations it accepts at once.
    pub capacity: u32,
    /// Its certificate's expiry, Unix seconds (none in plaintext development mode).
    pub certificate_not_after: Option<i64>,
    /// Its directory servers up, of how many, as its last heartbeat said.
    pub directory_servers: (u32, u32),
}

/// Where the dispatcher's agents are read from at scrape time.
pub type AgentSource = Arc<dyn Fn() -> Vec<AgentSample> + Send + Sync>;

/// The dispatcher's metrics.
#[derive(Debug, Clone)]
pub struct DispatcherMetrics {
    relays: Family<OutcomeLabel, Counter>,
    duration: Family<OutcomeLabel, HistogramWithExemplars<TraceLabel>>,
    failovers: Family<ReasonLabel, Counter>,
}

impl DispatcherMetrics {
    /// Registers the dispatcher's metrics in `registry`, with `agents` read at each scrape.
    pub fn register(registry: &mut Registry, agents: AgentSource) -> Self {
        let metrics = Self {
            relays: Family::default(),
            duration: Family::new_with_constructor(|| {
                HistogramWithExemplars::new(latency_buckets())
            }),
            failovers: Family::default(),
        };
        registry.register(
            "relays",
            "Validations relayed, by outcome (answered, or the Passage error code returned)",
            metrics.relays.clone(),
        );
        registry.register(
            "relay_duration_seconds",
            "Relay latency: from the gateway's call to the answer sent back",
            metrics.duration.clone(),
        );
        registry.register(
            "relay_failovers",
            "Validations moved to the other candidate agent, by reason (lost, overloaded, rejected, directory_unavailable)",
            metrics.failovers.clone(),
        );
        registry.register_collector(Box::new(Agents(agents)));
        // Closed sets start at 0 (a rate exists before the first event).
        for reason in [
            "lost",
            "overloaded",
            "rejected",
            "directory_unavailable",
            "unusable",
        ] {
            let _ = metrics.failovers.get_or_create(&ReasonLabel { reason });
        }
        metrics
    }

    /// Counts one relay's end: `outcome` is `answered` or the error code returned.
    pub fn relay(&self, outcome: &'static str, elapsed: Duration, trace_id: Option<String>) {
        let label = OutcomeLabel { outcome };
        self.relays.get_or_create(&label).inc();
        self.duration.get_or_create(&label).observe(
            elapsed.as_secs_f64(),
            exemplar(trace_id),
            None,
        );
    }

    /// Counts a validation moved to the other candidate.
    pub fn failover(&self, reason: &'static str) {
        self.failovers.get_or_create(&ReasonLabel { reason }).inc();
    }
}

/// The connected agents, read when Prometheus scrapes.
struct Agents(AgentSource);

/// One agent's value of a per-agent gauge (none: left out).
type PerAgent = fn(&AgentSample) -> Option<i64>;

impl std::fmt::Debug for Agents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Agents")
    }
}

impl Collector for Agents {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let agents = (self.0)();
        let mut groups: std::collections::BTreeMap<(&str, &str), i64> = Default::default();
        for agent in &agents {
            *groups
                .entry((&agent.tenant, &agent.connector_group))
                .or_default() += 1;
        }
        // A family without samples is left out (some parsers refuse an empty one).
        if agents.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "connected_agents",
            "Agents with a live stream to this dispatcher replica, by tenant and connector group",
            None,
            MetricType::Gauge,
        )?;
        for ((tenant, group), count) in groups {
            ConstGauge::new(count)
                .encode(family.encode_family(&[("tenant", tenant), ("connector_group", group)])?)?;
        }
        let per_agent: [(&str, &str, PerAgent); 5] = [
            (
                "agent_in_flight",
                "Validations sent to the agent and not yet answered",
                |a| Some(i64::from(a.in_flight)),
            ),
            (
                "agent_capacity",
                "Validations the agent accepts at once",
                |a| Some(i64::from(a.capacity)),
            ),
            (
                "agent_certificate_expiry_timestamp_seconds",
                "When the agent's certificate expires (Unix seconds)",
                |a| a.certificate_not_after,
            ),
            (
                "agent_directory_servers_up",
                "Directory servers the agent reaches, as its last heartbeat said",
                |a| Some(i64::from(a.directory_servers.0)),
            ),
            (
                "agent_directory_servers",
                "Directory servers the agent knows of, as its last heartbeat said",
                |a| Some(i64::from(a.directory_servers.1)),
            ),
        ];
        for (name, help, value) in per_agent {
            let values: Vec<(&AgentSample, i64)> = agents
                .iter()
                .filter_map(|agent| value(agent).map(|value| (agent, value)))
                .collect();
            if values.is_empty() {
                continue;
            }
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (agent, value) in values {
                ConstGauge::new(value).encode(family.encode_family(&[
                    ("agent_id", agent.agent_id.as_str()),
                    ("connector_group", agent.connector_group.as_str()),
                ])?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "agent_info",
            "One per connected agent (always 1), with its version",
            None,
            MetricType::Gauge,
        )?;
        for agent in &agents {
            ConstGauge::new(1).encode(family.encode_family(&[
                ("agent_id", agent.agent_id.as_str()),
                ("connector_group", agent.connector_group.as_str()),
                ("version", agent.version.as_str()),
            ])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_are_read_at_each_scrape() {
        let agents = Arc::new(std::sync::Mutex::new(vec![AgentSample {
            agent_id: "a1".into(),
            tenant: "acme".into(),
            connector_group: "corp".into(),
            version: "0.1.0".into(),
            in_flight: 2,
            capacity: 64,
            certificate_not_after: Some(1_800_000_000),
            directory_servers: (1, 2),
        }]));
        let source = Arc::clone(&agents);
        let mut registry = crate::registry("dispatcher", "0.1.0");
        let metrics = DispatcherMetrics::register(
            &mut registry,
            Arc::new(move || source.lock().unwrap().clone()),
        );
        metrics.relay("answered", Duration::from_millis(2), None);
        metrics.failover("lost");
        let text = crate::encode(&registry);
        for line in [
            "passage_dispatcher_connected_agents{tenant=\"acme\",connector_group=\"corp\"} 1",
            "passage_dispatcher_agent_in_flight{agent_id=\"a1\",connector_group=\"corp\"} 2",
            "passage_dispatcher_agent_certificate_expiry_timestamp_seconds{agent_id=\"a1\",connector_group=\"corp\"} 1800000000",
            "passage_dispatcher_agent_directory_servers_up{agent_id=\"a1\",connector_group=\"corp\"} 1",
            "passage_dispatcher_agent_info{agent_id=\"a1\",connector_group=\"corp\",version=\"0.1.0\"} 1",
            "passage_dispatcher_relays_total{outcome=\"answered\"} 1",
            "passage_dispatcher_relay_failovers_total{reason=\"lost\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        agents.lock().unwrap().clear();
        let text = crate::encode(&registry);
        assert!(!text.contains("agent_id=\"a1\""), "{text}");
    }
}

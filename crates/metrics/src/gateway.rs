//! What the gateway counts: sign-ins by outcome and code, their latency, smart lockout, policy
//! decisions, second factors, retries, and the store's latency on the sign-in path.

use std::time::Duration;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter, exemplar::HistogramWithExemplars, family::Family, histogram::Histogram,
    },
    registry::Registry,
};

use crate::{TraceLabel, exemplar, latency_buckets};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignInLabels {
    outcome: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrantLabel {
    grant: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: &'static str,
}

/// The end of one sign-in attempt, as the sign-in log records it (without who or where).
#[derive(Debug, Clone)]
pub struct Attempt<'a> {
    /// `success`, `failure`, `interrupted` (a second factor is asked for) or `throttled`.
    pub outcome: &'a str,
    /// The Passage error code, empty on success.
    pub code: &'a str,
    /// Smart lockout: `none`, `counted`, `repeat`, `locked` or `refused`.
    pub lockout: &'a str,
    /// What the second factor did (empty: not asked); see the sign-in log's `mfa`.
    pub mfa: &'a str,
    /// From the call's arrival to its answer.
    pub elapsed: Duration,
    /// The trace the attempt belongs to, when traces are exported.
    pub trace_id: Option<String>,
}

/// The gateway's metrics.
#[derive(Debug, Clone)]
pub struct GatewayMetrics {
    sign_ins: Family<SignInLabels, Counter>,
    duration: Family<OutcomeLabel, HistogramWithExemplars<TraceLabel>>,
    lockout: Family<StateLabel, Counter>,
    policy: Family<GrantLabel, Counter>,
    report_only: Family<GrantLabel, Counter>,
    mfa: Family<ResultLabel, Counter>,
    retries: Counter,
    store: Family<OperationLabel, Histogram>,
}

impl GatewayMetrics {
    /// Registers the gateway's metrics in `registry` (made by [`crate::registry`]).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            sign_ins: Family::default(),
            duration: Family::new_with_constructor(|| {
                HistogramWithExemplars::new(latency_buckets())
            }),
            lockout: Family::default(),
            policy: Family::default(),
            report_only: Family::default(),
            mfa: Family::default(),
            retries: Counter::default(),
            store: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
        };
        registry.register(
            "sign_ins",
            "Sign-in attempts that passed the input checks and were routed to a connector group (SignIn, ChangePassword, CompleteMfa, the sign-in page), by outcome and Passage error code",
            metrics.sign_ins.clone(),
        );
        registry.register(
            "sign_in_duration_seconds",
            "Sign-in latency at the gateway, from the call's arrival to its answer",
            metrics.duration.clone(),
        );
        registry.register(
            "lockout_attempts",
            "Sign-ins by what smart lockout did with them (counted, repeat, locked, refused; none is not counted)",
            metrics.lockout.clone(),
        );
        registry.register(
            "policy_decisions",
            "Conditional access decisions enforced after a right password (allow, require_mfa, block)",
            metrics.policy.clone(),
        );
        registry.register(
            "policy_report_only",
            "What report-only policies would have done, one per policy that applied",
            metrics.report_only.clone(),
        );
        registry.register(
            "mfa_results",
            "Second-factor results (required, otp, recovery_code, wrong_code, locked, ...)",
            metrics.mfa.clone(),
        );
        registry.register(
            "validation_retries",
            "Validations sent again: with a fresh key set (no agent, a rejected envelope, a lost agent), or to another dispatcher replica (unreachable, refused the connection, or without agents)",
            metrics.retries.clone(),
        );
        registry.register(
            "store_operation_duration_seconds",
            "Latency of the store on the sign-in path, by operation",
            metrics.store.clone(),
        );
        // Closed sets start at 0, so a rate over them exists before the first event (and a
        // dashboard's query finds its series).
        for state in ["counted", "repeat", "locked", "refused"] {
            let _ = metrics.lockout.get_or_create(&StateLabel {
                state: state.into(),
            });
        }
        for grant in ["allow", "require_mfa", "block"] {
            let _ = metrics.policy.get_or_create(&GrantLabel { grant });
            let _ = metrics.report_only.get_or_create(&GrantLabel { grant });
        }
        for result in ["required", "otp", "recovery_code", "wrong_code", "locked"] {
            let _ = metrics.mfa.get_or_create(&ResultLabel {
                result: result.into(),
            });
        }
        metrics
    }

    /// Counts one attempt's end.
    pub fn attempt(&self, attempt: Attempt<'_>) {
        self.sign_ins
            .get_or_create(&SignInLabels {
                outcome: attempt.outcome.to_owned(),
                code: attempt.code.to_owned(),
            })
            .inc();
        self.duration
            .get_or_create(&OutcomeLabel {
                outcome: attempt.outcome.to_owned(),
            })
            .observe(
                attempt.elapsed.as_secs_f64(),
                exemplar(attempt.trace_id),
                None,
            );
        if !attempt.lockout.is_empty() && attempt.lockout != "none" {
            self.lockout
                .get_or_create(&StateLabel {
                    state: attempt.lockout.to_owned(),
                })
                .inc();
        }
        if !attempt.mfa.is_empty() {
            self.mfa
                .get_or_create(&ResultLabel {
                    result: attempt.mfa.to_owned(),
                })
                .inc();
        }
    }

    /// Counts conditional access's decision (`grant`) and what report-only policies would
    /// have done.
    pub fn policy(&self, grant: &'static str, report_only: impl IntoIterator<Item = &'static str>) {
        self.policy.get_or_create(&GrantLabel { grant }).inc();
        for grant in report_only {
            self.report_only.get_or_create(&GrantLabel { grant }).inc();
        }
    }

    /// Counts a validation sent again after a lost one.
    pub fn retry(&self) {
        self.retries.inc();
    }

    /// Records how long a store `operation` took.
    pub fn store(&self, operation: &'static str, elapsed: Duration) {
        self.store
            .get_or_create(&OperationLabel { operation })
            .observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_moves_its_counters_and_nothing_personal_is_a_label() {
        let mut registry = crate::registry("gateway", "1.2.3");
        let metrics = GatewayMetrics::register(&mut registry);
        metrics.attempt(Attempt {
            outcome: "failure",
            code: "PSG50050",
            lockout: "counted",
            mfa: "",
            elapsed: Duration::from_millis(3),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        });
        metrics.attempt(Attempt {
            outcome: "success",
            code: "",
            lockout: "none",
            mfa: "otp",
            elapsed: Duration::from_millis(40),
            trace_id: None,
        });
        metrics.policy("require_mfa", ["block"]);
        let text = crate::encode(&registry);
        for line in [
            "passage_gateway_build_info{version=\"1.2.3\"} 1",
            "passage_gateway_sign_ins_total{outcome=\"failure\",code=\"PSG50050\"} 1",
            "passage_gateway_sign_ins_total{outcome=\"success\",code=\"\"} 1",
            "passage_gateway_lockout_attempts_total{state=\"counted\"} 1",
            "passage_gateway_mfa_results_total{result=\"otp\"} 1",
            "passage_gateway_policy_decisions_total{grant=\"require_mfa\"} 1",
            "passage_gateway_policy_report_only_total{grant=\"block\"} 1",
            "passage_gateway_sign_in_duration_seconds_count{outcome=\"failure\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        // The 4 ms bucket holds the 3 ms failure, with its trace as the exemplar.
        assert!(
            text.contains("passage_gateway_sign_in_duration_seconds_bucket{le=\"0.004\",outcome=\"failure\"} 1 # {trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"} 0.003"),
            "{text}"
        );
        assert!(!text.contains("state=\"none\""), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}

//! `Dispatcher.Validate` and `Dispatcher.ListAgentKeys`: the gateway's side of the dispatcher.

use std::{sync::Arc, time::Duration};

use passage_error_codes::ErrorCode;
use passage_metrics::dispatcher::DispatcherMetrics;
use passage_pki::GatewayIdentity;
use passage_proto::v1::{
    AgentError, AgentKey, ListAgentKeysRequest, ListAgentKeysResponse, ValidateRequest,
    ValidateResponse, ValidationAnswer, ValidationTask, dispatcher_server::Dispatcher,
};
use passage_telemetry::{TraceParent, join_trace};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::registry::{AgentConnection, AgentRegistry, DispatchError};

/// Largest sealed password accepted (RSA-4096 envelope plus payload, with room to spare).
const MAX_CIPHERTEXT_BYTES: usize = 4096;
/// Longest accepted username, tenant or group.
const MAX_NAME_BYTES: usize = 256;

/// The `Dispatcher` service.
pub struct RelayService {
    registry: Arc<AgentRegistry>,
    default_timeout: Duration,
    liveness: Duration,
    gateways_authenticated: bool,
    metrics: DispatcherMetrics,
}

impl RelayService {
    /// A relay over `registry`, waiting at most `default_timeout` unless the caller's deadline
    /// is shorter; agents unheard of for `liveness` are not offered. With
    /// `gateways_authenticated`, every call must come with a gateway certificate naming the
    /// tenant it asks for.
    pub fn new(
        registry: Arc<AgentRegistry>,
        default_timeout: Duration,
        liveness: Duration,
        gateways_authenticated: bool,
        metrics: DispatcherMetrics,
    ) -> Self {
        Self {
            registry,
            default_timeout,
            liveness,
            gateways_authenticated,
            metrics,
        }
    }

    /// Refuses a caller whose gateway certificate does not name `tenant`. TLS has verified
    /// the certificate's chain to the services CA; this reads what it permits.
    fn authorise<T>(&self, request: &Request<T>, tenant: &str) -> Result<(), Status> {
        if !self.gateways_authenticated {
            return Ok(());
        }
        let certs = request.peer_certs();
        let Some(cert) = certs.as_ref().and_then(|c| c.first()) else {
            return Err(ErrorCode::GatewayNotPermitted
                .status("a gateway certificate is required (passage gateway certificate issue)"));
        };
        let gateway = GatewayIdentity::from_certificate(cert.as_ref()).map_err(|err| {
            tracing::warn!(error = %err, "caller refused: not a gateway certificate");
            ErrorCode::GatewayNotPermitted
                .status("the client certificate is not a gateway certificate")
        })?;
        if !gateway.may_act_for(tenant) {
            tracing::warn!(gateway = %gateway.name, %tenant, "gateway refused: tenant not in its certificate");
            return Err(ErrorCode::GatewayNotPermitted.status(format!(
                "this gateway's certificate does not permit tenant {tenant:?}"
            )));
        }
        Ok(())
    }
}

/// What happened when one candidate was tried.
enum Attempt {
    Answered(Box<ValidationAnswer>),
    Lost,
    TimedOut,
    Unusable,
}

fn check_name(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() || value.len() > MAX_NAME_BYTES || value.chars().any(char::is_control) {
        return Err(ErrorCode::InvalidRequest.status(format!(
            "{field} must be 1 to {MAX_NAME_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}

/// Parses a `grpc-timeout` header value (`<digits><unit>`).
fn grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl RelayService {
    async fn try_candidate(
        &self,
        connection: &Arc<AgentConnection>,
        task: ValidationTask,
        deadline: tokio::time::Instant,
    ) -> Attempt {
        let pending = match connection.dispatch(task) {
            Ok(pending) => pending,
            Err(DispatchError::Gone | DispatchError::Full) => return Attempt::Unusable,
        };
        match tokio::time::timeout_at(deadline, pending.answer()).await {
            Ok(Some(answer)) => Attempt::Answered(Box::new(answer)),
            Ok(None) => Attempt::Lost,
            Err(_) => Attempt::TimedOut,
        }
    }

    /// Tries the live candidates, least loaded first, and returns the first usable answer.
    async fn relay(
        &self,
        request: ValidateRequest,
        trace: TraceParent,
        timeout: Duration,
        started: tokio::time::Instant,
        deadline: tokio::time::Instant,
    ) -> Result<Response<ValidateResponse>, Status> {
        // Live candidates of the right tenant and group: those whose directory answers first,
        // then least loaded (power of two choices: the gateway picked two at random, we take
        // the less busy one).
        let mut candidates: Vec<(Arc<AgentConnection>, Vec<u8>)> = request
            .candidates
            .into_iter()
            .filter_map(|c| {
                let connection = self.registry.get(&c.agent_id)?;
                let right_place = connection.identity.tenant == request.tenant
                    && connection.identity.connector_group == request.connector_group;
                (right_place && connection.is_healthy(self.liveness))
                    .then_some((connection, c.ciphertext))
            })
            .collect();
        if candidates.is_empty() {
            tracing::warn!(connector_group = %request.connector_group, "no candidate agent is connected here");
            return Err(ErrorCode::NoAgentAvailable.public_status());
        }
        candidates.sort_by_key(|(c, _)| (!c.directory_reachable(), c.is_full(), c.in_flight()));

        let single_bind = request.single_bind;
        let mut lost = 0u32;
        let mut directory_down = None;
        let mut rejected = None;
        // Why the previous candidate was left: counted when the next one is tried.
        let mut left: Option<&'static str> = None;
        for (connection, ciphertext) in candidates {
            if let Some(reason) = left.take() {
                self.metrics.failover(reason);
            }
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let agent_id = connection.identity.agent_id.clone();
            // One span per agent tried: a retry after a lost agent shows as a second hop.
            let hop = tracing::info_span!("relay", otel.kind = "client", %agent_id);
            let task = ValidationTask {
                request_id: 0,
                username: request.username.clone(),
                tenant: request.tenant.clone(),
                ciphertext,
                timeout_ms: remaining.as_millis() as u32,
                trace: Some(
                    TraceParent::of_span(&hop)
                        .unwrap_or_else(|| trace.child())
                        .to_message(),
                ),
            };
            let attempt = self
                .try_candidate(&connection, task, deadline)
                .instrument(hop)
                .await;
            match attempt {
                Attempt::Answered(answer) => {
                    let error = AgentError::try_from(answer.error).unwrap_or_default();
                    // The verdict is sealed for the gateway: all the dispatcher learns is
                    // whether the agent answered, refused, or could not decide.
                    tracing::info!(
                        %agent_id,
                        answered = !answer.sealed_answer.is_empty(),
                        retryable = answer.retryable,
                        ?error,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "agent answered"
                    );
                    if error == AgentError::Overloaded {
                        left = Some("overloaded");
                        continue;
                    }
                    if error != AgentError::Unspecified {
                        rejected = Some((error, answer.detail));
                        left = Some("rejected");
                        continue;
                    }
                    if answer.retryable {
                        directory_down = Some(answer.detail);
                        left = Some("directory_unavailable");
                        // The first agent may have bound before timing out at the directory.
                        if single_bind {
                            break;
                        }
                        continue;
                    }
                    if answer.sealed_answer.is_empty() {
                        tracing::error!(%agent_id, "the agent sent no answer");
                        return Err(ErrorCode::Internal.public_status());
                    }
                    return Ok(Response::new(ValidateResponse {
                        agent_id,
                        sealed_answer: answer.sealed_answer,
                        lost_attempts: lost,
                        ..Default::default()
                    }));
                }
                Attempt::Lost if single_bind => {
                    tracing::warn!(%agent_id, "agent stream lost mid-request; not trying the other candidate (single bind)");
                    lost += 1;
                    break;
                }
                Attempt::Lost => {
                    tracing::warn!(%agent_id, "agent stream lost mid-request; trying the other candidate");
                    lost += 1;
                    left = Some("lost");
                }
                Attempt::Unusable => left = Some("unusable"),
                Attempt::TimedOut => {
                    tracing::warn!(%agent_id, ?timeout, "agent did not answer in time");
                    return Err(with_lost_attempts(
                        ErrorCode::AgentTimeout.public_status(),
                        lost,
                    ));
                }
            }
        }
        // What the agents said stays here, in the log and the trace; the caller gets the code.
        let code = if let Some(detail) = directory_down {
            tracing::warn!(%detail, "the agent could not reach the directory");
            ErrorCode::DirectoryUnavailable
        } else if let Some((error, detail)) = rejected {
            tracing::warn!(?error, %detail, "the agent refused the sealed password");
            ErrorCode::AgentRejected
        } else if lost > 0 {
            tracing::warn!("every candidate agent disconnected before answering");
            ErrorCode::AgentLost
        } else {
            tracing::warn!("every candidate agent is gone or at capacity");
            ErrorCode::NoAgentAvailable
        };
        Err(with_lost_attempts(code.public_status(), lost))
    }
}

fn with_lost_attempts(mut status: Status, lost: u32) -> Status {
    if lost > 0
        && let Ok(value) = lost.to_string().parse()
    {
        status
            .metadata_mut()
            .insert(passage_proto::LOST_ATTEMPTS_HEADER, value);
    }
    status
}

#[tonic::async_trait]
impl Dispatcher for RelayService {
    async fn validate(
        &self,
        request: Request<ValidateRequest>,
    ) -> Result<Response<ValidateResponse>, Status> {
        let timeout = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(grpc_timeout)
            .map_or(self.default_timeout, |t| t.min(self.default_timeout));
        let caller_trace = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse);
        let started = tokio::time::Instant::now();
        let deadline = started + timeout;
        self.authorise(&request, &request.get_ref().tenant)?;
        let request = request.into_inner();
        check_name("tenant", &request.tenant)?;
        check_name("connector_group", &request.connector_group)?;
        check_name("username", &request.username)?;
        if request.candidates.is_empty() || request.candidates.len() > 2 {
            return Err(ErrorCode::InvalidRequest.status("one or two candidates are required"));
        }
        if request
            .candidates
            .iter()
            .any(|c| c.ciphertext.len() > MAX_CIPHERTEXT_BYTES)
        {
            return Err(ErrorCode::InvalidRequest.status("ciphertext too large"));
        }
        let span = tracing::info_span!(
            "dispatch",
            otel.kind = "server",
            trace_id = tracing::field::Empty,
            username = %request.username,
            connector_group = %request.connector_group,
        );
        let trace = join_trace(
            &span,
            TraceParent::from_message(request.trace.as_ref()).or(caller_trace),
        );
        let exported = TraceParent::of_span(&span).map(|trace| trace.trace_id_hex());
        let result = self
            .relay(request, trace, timeout, started, deadline)
            .instrument(span)
            .await;
        let outcome = match &result {
            Ok(_) => "answered",
            Err(status) => ErrorCode::of(status).map_or("unknown", ErrorCode::as_str),
        };
        self.metrics.relay(outcome, started.elapsed(), exported);
        result
    }

    async fn list_agent_keys(
        &self,
        request: Request<ListAgentKeysRequest>,
    ) -> Result<Response<ListAgentKeysResponse>, Status> {
        self.authorise(&request, &request.get_ref().tenant)?;
        let request = request.into_inner();
        check_name("tenant", &request.tenant)?;
        check_name("connector_group", &request.connector_group)?;
        let keys = self
            .registry
            .healthy(&request.tenant, &request.connector_group, self.liveness)
            .into_iter()
            .map(|c| {
                let (threshold, window_s) = c.directory_lockout();
                AgentKey {
                    agent_id: c.identity.agent_id.clone(),
                    connector_group: c.identity.connector_group.clone(),
                    public_key_der: c.identity.public_key_der.clone(),
                    in_flight: c.in_flight(),
                    certificate_der: c.identity.certificate_der.clone().unwrap_or_default(),
                    hybrid_public_key: c.identity.hybrid_public_key.clone(),
                    directory_lockout_threshold: threshold,
                    directory_lockout_window_s: window_s,
                    directory_unreachable: !c.directory_reachable(),
                }
            })
            .collect();
        Ok(Response::new(ListAgentKeysResponse { keys }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout(""), None);
        assert_eq!(grpc_timeout("12x"), None);
        assert_eq!(grpc_timeout("m"), None);
    }
}

//! `Gateway.SignIn`.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use passage_credentials::{CredentialError, MAX_FIELD_BYTES, Password, Username, check_field};
use passage_envelope::PayloadFields;
use passage_error_codes::ErrorCode;
use passage_proto::v1::{
    SealedPassword, SignInRequest, SignInResponse, ValidateRequest, ValidateResponse,
    ValidationOutcome, dispatcher_client::DispatcherClient, gateway_server::Gateway,
};
use passage_telemetry::{TraceParent, join_trace};
use passage_tokens::{Subject, TokenIssuer};
use tonic::{Request, Response, Status, transport::Channel};
use tracing::Instrument;

use crate::{
    ClientRegistration, ConnectorGroupRoute, GatewayConfig,
    keyset::{KeySetCache, pick_two},
};

/// The `Gateway` service.
pub struct SignInService {
    dispatcher: DispatcherClient<Channel>,
    keys: Arc<KeySetCache>,
    issuer: Arc<TokenIssuer>,
    tenant: String,
    routes: Vec<ConnectorGroupRoute>,
    clients: Vec<ClientRegistration>,
    envelope_lifetime: Duration,
    validation_timeout: Duration,
}

/// A sign-in request that passed every input check.
struct CheckedRequest {
    username: Username,
    password: Password,
    client_id: String,
    client_ip: Option<IpAddr>,
}

fn invalid(err: CredentialError) -> Status {
    ErrorCode::InvalidRequest.status(err)
}

impl SignInService {
    /// A service calling `dispatcher` with keys from `keys`, issuing with `issuer`.
    pub fn new(
        config: &GatewayConfig,
        dispatcher: DispatcherClient<Channel>,
        keys: Arc<KeySetCache>,
        issuer: Arc<TokenIssuer>,
    ) -> Self {
        Self {
            dispatcher,
            keys,
            issuer,
            tenant: config.tenant.clone(),
            routes: config.connector_groups.clone(),
            clients: config.clients.clone(),
            envelope_lifetime: Duration::from_secs(config.envelope_lifetime_s),
            validation_timeout: Duration::from_millis(config.validation_timeout_ms),
        }
    }

    /// Every check that needs nothing but the request: nothing malformed goes further.
    fn check(&self, request: SignInRequest) -> Result<CheckedRequest, Status> {
        let SignInRequest {
            username,
            password,
            client_id,
            client_ip,
        } = request;
        // Check the password first, so it is wiped (Password::new) on every path.
        let password = Password::new(password).map_err(invalid)?;
        let username = Username::parse(&username).map_err(invalid)?;
        check_field("client_id", &client_id, MAX_FIELD_BYTES).map_err(invalid)?;
        if client_id.is_empty() {
            return Err(invalid(CredentialError::Empty { field: "client_id" }));
        }
        if !self.clients.is_empty() && !self.clients.iter().any(|c| c.id == client_id) {
            return Err(ErrorCode::UnknownClient
                .status(format!("client_id {client_id:?} is not registered")));
        }
        check_field("client_ip", &client_ip, MAX_FIELD_BYTES).map_err(invalid)?;
        let client_ip =
            match client_ip.as_str() {
                "" => None,
                text => Some(text.parse::<IpAddr>().map_err(|_| {
                    ErrorCode::InvalidRequest.status("client_ip is not an IP address")
                })?),
            };
        Ok(CheckedRequest {
            username,
            password,
            client_id,
            client_ip,
        })
    }

    /// The connector group serving `username`'s domain.
    fn route(&self, username: &Username) -> Result<String, Status> {
        let domain = username.domain();
        if self.routes.is_empty() {
            return Ok(domain);
        }
        self.routes
            .iter()
            .find(|route| {
                route
                    .domains
                    .iter()
                    .any(|d| d.eq_ignore_ascii_case(&domain))
            })
            .map(|route| route.name.clone())
            .ok_or_else(|| {
                ErrorCode::UnknownDomain
                    .status(format!("no connector group serves the domain {domain}"))
            })
    }

    /// Seals to two random agents and asks the dispatcher; on a failure that a fresh key set
    /// may cure (no agent, agent lost, sealed to a stale key) it refreshes and tries once more.
    async fn validate(
        &self,
        request: &CheckedRequest,
        group: &str,
        trace: &TraceParent,
    ) -> Result<ValidateResponse, Status> {
        let mut refreshed = false;
        loop {
            let keys = self
                .keys
                .keys(group, refreshed)
                .await
                .map_err(dispatcher_unreachable)?;
            let result = if keys.is_empty() {
                Err(ErrorCode::NoAgentAvailable
                    .status(format!("no agent of connector group {group} is connected")))
            } else {
                self.call_dispatcher(request, group, &keys, trace).await
            };
            match result {
                Err(status)
                    if !refreshed
                        && matches!(
                            ErrorCode::of(&status),
                            Some(
                                ErrorCode::NoAgentAvailable
                                    | ErrorCode::AgentLost
                                    | ErrorCode::AgentRejected
                            )
                        ) =>
                {
                    tracing::debug!(message = %status.message(), "retrying with a fresh key set");
                    refreshed = true;
                }
                other => return other,
            }
        }
    }

    async fn call_dispatcher(
        &self,
        request: &CheckedRequest,
        group: &str,
        keys: &[Arc<crate::keyset::AgentSealingKey>],
        trace: &TraceParent,
    ) -> Result<ValidateResponse, Status> {
        let not_after = SystemTime::now() + self.envelope_lifetime;
        let fields = PayloadFields {
            username: request.username.as_str(),
            password: &request.password,
            tenant: &self.tenant,
            not_after,
        };
        let candidates = pick_two(keys)
            .into_iter()
            .map(|agent| {
                let ciphertext = agent.key.seal(&fields).map_err(|err| {
                    ErrorCode::Internal.status(format!("sealing for {}: {err}", agent.agent_id))
                })?;
                Ok(SealedPassword {
                    agent_id: agent.agent_id.clone(),
                    ciphertext,
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let mut call = Request::new(ValidateRequest {
            tenant: self.tenant.clone(),
            connector_group: group.to_owned(),
            username: request.username.as_str().to_owned(),
            candidates,
            trace: Some(trace.to_message()),
        });
        call.set_timeout(self.validation_timeout);
        if let Ok(value) = trace.to_string().parse() {
            call.metadata_mut().insert("traceparent", value);
        }
        match self.dispatcher.clone().validate(call).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) if ErrorCode::of(&status).is_some() => Err(status),
            Err(status) if status.code() == tonic::Code::DeadlineExceeded => {
                Err(ErrorCode::AgentTimeout.status(format!(
                    "no answer within {} ms",
                    self.validation_timeout.as_millis()
                )))
            }
            Err(status) => Err(dispatcher_unreachable(status)),
        }
    }
}

fn dispatcher_unreachable(status: Status) -> Status {
    if ErrorCode::of(&status).is_some() {
        return status;
    }
    tracing::warn!(code = ?status.code(), message = %status.message(), "dispatcher call failed");
    ErrorCode::NoAgentAvailable.status("the sign-in service cannot reach any agent right now")
}

/// The user-facing error for a directory answer other than success.
fn outcome_error(outcome: ValidationOutcome) -> Status {
    match outcome {
        ValidationOutcome::AccountLocked => ErrorCode::AccountLocked.status("the account is locked; try again later or contact your administrator"),
        ValidationOutcome::AccountDisabled => ErrorCode::AccountDisabled.status("the account is disabled"),
        ValidationOutcome::AccountExpired => ErrorCode::AccountExpired.status("the account has expired"),
        ValidationOutcome::PasswordExpired => ErrorCode::PasswordExpired.status(
            "the password has expired; your organisation does not allow changing it here — change it on the corporate network",
        ),
        ValidationOutcome::PasswordMustChange => ErrorCode::PasswordMustChange.status(
            "the password must be changed before first use; your organisation does not allow changing it here",
        ),
        ValidationOutcome::DirectoryUnavailable => ErrorCode::DirectoryUnavailable.status("the directory is unavailable"),
        ValidationOutcome::InvalidCredentials | ValidationOutcome::Success | ValidationOutcome::Unspecified => {
            ErrorCode::InvalidCredentials.status("invalid username or password")
        }
    }
}

#[tonic::async_trait]
impl Gateway for SignInService {
    async fn sign_in(
        &self,
        request: Request<SignInRequest>,
    ) -> Result<Response<SignInResponse>, Status> {
        let started = Instant::now();
        let caller_trace = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse);
        let request = self.check(request.into_inner())?;
        let group = self.route(&request.username)?;
        let span = tracing::info_span!(
            "sign_in",
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            username = %request.username,
            client_id = %request.client_id,
            connector_group = %group,
            error_code = tracing::field::Empty,
        );
        let trace = join_trace(&span, caller_trace);
        self.sign_in_checked(request, group, trace, started)
            .instrument(span)
            .await
    }
}

impl SignInService {
    /// The sign-in after its input passed the checks, inside its span.
    async fn sign_in_checked(
        &self,
        request: CheckedRequest,
        group: String,
        trace: TraceParent,
        started: Instant,
    ) -> Result<Response<SignInResponse>, Status> {
        let result = self
            .validate(&request, &group, &trace)
            .await
            .and_then(|response| {
                let outcome = ValidationOutcome::try_from(response.outcome).unwrap_or_default();
                match (outcome, response.user) {
                    (ValidationOutcome::Success, Some(user)) => Ok((user, response.agent_id)),
                    (outcome, _) => Err(outcome_error(outcome)),
                }
            });
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let client_ip = request
            .client_ip
            .map(|ip| ip.to_string())
            .unwrap_or_default();
        match result {
            Ok((user, agent_id)) => {
                let subject = Subject {
                    sub: if user.object_id.is_empty() {
                        user.dn.clone()
                    } else {
                        user.object_id.clone()
                    },
                    tenant: self.tenant.clone(),
                    upn: if user.upn.is_empty() {
                        request.username.to_string()
                    } else {
                        user.upn.clone()
                    },
                    name: user.display_name,
                    email: user.mail,
                    groups: user.groups,
                };
                let tokens = self
                    .issuer
                    .issue(&subject, &request.client_id)
                    .map_err(|err| ErrorCode::Internal.status(err))?;
                tracing::info!(target: "passage::signin_log", outcome = "success", %agent_id, %client_ip, elapsed_ms, "sign-in");
                Ok(Response::new(SignInResponse {
                    access_token: tokens.access_token,
                    id_token: tokens.id_token,
                    token_type: "Bearer".into(),
                    expires_in: tokens.expires_in.as_secs() as u32,
                }))
            }
            Err(status) => {
                let code = ErrorCode::of(&status).map_or("-", ErrorCode::as_str);
                let span = tracing::Span::current();
                span.record("error_code", code);
                span.record("otel.status_code", "ERROR");
                tracing::info!(target: "passage::signin_log", outcome = "failure", error_code = code, %client_ip, elapsed_ms, "sign-in");
                Err(status)
            }
        }
    }
}

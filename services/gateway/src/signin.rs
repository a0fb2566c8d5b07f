//! `Gateway.SignIn`.

use std::{
    future::Future,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use passage_credentials::{CredentialError, MAX_FIELD_BYTES, Password, Username, check_field};
use passage_envelope::{AnswerBinding, PayloadFields, Sealed};
use passage_error_codes::ErrorCode;
use passage_lockout::{
    Admission, Outcome, Scope, Settled, SmartLockout,
    throttle::{Throttle, Throttled},
};
use passage_proto::v1::{
    ChangePasswordRequest, ChangePasswordResponse, CompleteMfaRequest, CompleteMfaResponse,
    DirectoryUser, PasswordRejection, RefreshRequest, RefreshResponse, SealedPassword,
    SealedVerdict, SignInRequest, SignInResponse, ValidateRequest, ValidateResponse,
    ValidationOutcome, gateway_server::Gateway,
};
use passage_store::{SigninEntry, Store};

use crate::signin_log::SigninLog;
use passage_metrics::gateway::{Attempt, GatewayMetrics};
use passage_policy::{ClientType, Grant, SignInFacts};
use passage_telemetry::{TraceParent, join_trace};
use passage_tokens::{Authentication, Subject, TokenIssuer};
use prost::Message;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::{
    ClientRegistration, GatewayConfig,
    access::{Enrolled, MfaFailure, PendingSignIn, Policies, SecondFactor},
    dispatchers::Dispatchers,
    keyset::{KeySetCache, pick_two_preferring},
    routing::{self, Routes},
};

/// The `Gateway` service.
pub struct SignInService {
    throttle: Throttle,
    lockout: Option<SmartLockout>,
    signin_log: Option<SigninLog>,
    dispatchers: Arc<Dispatchers>,
    keys: Arc<KeySetCache>,
    issuer: Arc<TokenIssuer>,
    tenant: String,
    routes: Routes,
    clients: Vec<ClientRegistration>,
    envelope_lifetime: Duration,
    validation_timeout: Duration,
    /// Whether users may change their password here (`password_writeback`).
    password_writeback: bool,
    policies: Arc<Policies>,
    second_factor: Option<SecondFactor>,
    metrics: GatewayMetrics,
}

/// A sign-in request that passed every input check.
struct CheckedRequest {
    username: Username,
    password: Password,
    /// A password change: the new password.
    new_password: Option<Password>,
    client_id: String,
    client_ip: Option<IpAddr>,
    client_type: ClientType,
}

/// What a sign-in comes to when it is not refused. The gRPC API turns a grant into tokens at
/// once; the browser flow (see [`crate::oidc`]) into an authorization code first.
pub enum Signed {
    /// Tokens may be issued.
    Granted(Box<Granted>),
    /// A second factor stands before the tokens: the opaque challenge handle.
    Challenge {
        /// What the client answers with its code.
        handle: String,
        /// Seconds the challenge stays open.
        expires_in: u32,
    },
}

impl std::fmt::Debug for Signed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Signed::Granted(granted) => f.debug_tuple("Granted").field(granted).finish(),
            // The handle is a bearer secret until the challenge ends.
            Signed::Challenge { expires_in, .. } => f
                .debug_struct("Challenge")
                .field("handle", &"[redacted]")
                .field("expires_in", expires_in)
                .finish(),
        }
    }
}

/// A sign-in that may have its tokens.
#[derive(Debug, Clone)]
pub struct Granted {
    /// Who signed in.
    pub subject: Subject,
    /// How (methods, and a policy's token lifetime).
    pub how: Authentication,
    /// When the user authenticated, Unix seconds.
    pub auth_time: i64,
    /// The application that signed the user in.
    pub client_id: String,
}

/// Why a sign-in did not produce tokens. Converted to a [`Status`] in one place,
/// [`SignInError::into_status`]: the caller gets a stable code and a fixed message; what an
/// agent, the dispatcher or the directory said stays in the logs and traces.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// A malformed field (the message names the caller's own field, nothing internal).
    #[error("{0}")]
    Invalid(#[from] CredentialError),
    /// `client_ip` is not an IP address.
    #[error("client_ip is not an IP address")]
    BadClientIp,
    /// The client id is not registered.
    #[error("client_id {0:?} is not registered")]
    UnknownClient(String),
    /// The directory refused the new password of a password change.
    #[error("the directory refused the new password ({})", rejection_reason(*.0))]
    PasswordRejected(PasswordRejection),
    /// Password changes are off for this tenant (`password_writeback`).
    #[error("password writeback is off")]
    WritebackDisabled,
    /// No connector group serves the domain.
    #[error("no connector group serves the domain {0}")]
    UnknownDomain(String),
    /// The directory answered, and not with success.
    #[error("the directory answered {0:?}")]
    Refused(ValidationOutcome),
    /// No trusted agent of the group is connected.
    #[error("no agent of connector group {0} is connected")]
    NoAgent(String),
    /// The dispatcher answered with a Passage error.
    #[error("dispatcher: {message}")]
    Dispatcher {
        /// Its code.
        code: ErrorCode,
        /// What it said (logs only).
        message: String,
        /// Candidates it lost after sending them the password.
        lost_attempts: u32,
    },
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The dispatcher could not be reached or failed without a Passage code (the call may
    /// have reached it: it may have relayed the password).
    #[error("dispatcher unreachable: {0}")]
    Unreachable(String),
    /// The dispatcher replica refused the connection: nothing was sent.
    #[error("dispatcher replica refused the connection: {0}")]
    ConnectionRefused(String),
    /// Sealing the password failed.
    #[error("sealing for agent {agent_id}: {source}")]
    Seal {
        /// The agent.
        agent_id: String,
        /// Why.
        source: passage_envelope::EnvelopeError,
    },
    /// Issuing tokens failed.
    #[error("issuing tokens: {0}")]
    Tokens(#[from] passage_tokens::TokenError),
    /// The relayed answer did not open with the answer key sealed for the agent it names.
    #[error("the answer said to come from agent {0} is not authentic")]
    NotAuthentic(String),
    /// Smart lockout: too many failures; refused without asking any agent (until a Unix time,
    /// or until a successful sign-in from a familiar network).
    #[error("locked out by smart lockout until {}", .0.map_or("a successful sign-in from a familiar network".to_owned(), |t| format!("Unix time {t}")))]
    LockedOut(Option<i64>),
    /// Over a rate limit.
    #[error(transparent)]
    Throttled(#[from] Throttled),
    /// A conditional-access policy blocks the sign-in (the policies' names: logs only).
    #[error("blocked by conditional access: {0}")]
    BlockedByPolicy(String),
    /// A policy requires MFA and the user has no authenticator.
    #[error("MFA is required and the user has no authenticator")]
    MfaNotEnrolled,
    /// Too many wrong codes for the user lately: no new challenge for now.
    #[error("too many wrong MFA codes for this user lately")]
    MfaLocked,
    /// The second factor was not accepted.
    #[error(transparent)]
    Mfa(#[from] MfaFailure),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] passage_store::StoreError),
    /// A refresh token was refused, or could not be issued.
    #[error("refresh token: {0}")]
    Refresh(passage_oidc::token::TokenError),
    /// Refresh tokens were asked for, and this gateway keeps none (no store and key).
    #[error("refresh tokens need the gateway's store_url and store_encryption_key_file")]
    NoRefreshTokens,
}

impl SignInError {
    /// Whether the password may have reached the directory although no verdict came back: a
    /// deadline passed, an answer did not open, or the dispatcher failed after taking it.
    /// Smart lockout counts such an attempt. (An agent that could not reach the directory
    /// says so as "directory unavailable", which is not counted: see docs/lockout.md.)
    pub fn may_have_bound(&self) -> bool {
        match self {
            SignInError::Timeout(_)
            | SignInError::NotAuthentic(_)
            | SignInError::Unreachable(_) => true,
            SignInError::Dispatcher { code, .. } => {
                matches!(code, ErrorCode::AgentTimeout | ErrorCode::Internal)
            }
            _ => false,
        }
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            SignInError::Invalid(_) | SignInError::BadClientIp => ErrorCode::InvalidRequest,
            SignInError::UnknownClient(_) => ErrorCode::UnknownClient,
            SignInError::UnknownDomain(_) => ErrorCode::UnknownDomain,
            SignInError::PasswordRejected(_) => ErrorCode::PasswordRejected,
            SignInError::WritebackDisabled => ErrorCode::WritebackDisabled,
            SignInError::Refused(outcome) => match outcome {
                ValidationOutcome::AccountLocked => ErrorCode::AccountLocked,
                ValidationOutcome::AccountDisabled => ErrorCode::AccountDisabled,
                ValidationOutcome::AccountExpired => ErrorCode::AccountExpired,
                ValidationOutcome::PasswordExpired => ErrorCode::PasswordExpired,
                ValidationOutcome::PasswordMustChange => ErrorCode::PasswordMustChange,
                ValidationOutcome::PasswordRejected => ErrorCode::PasswordRejected,
                ValidationOutcome::DirectoryUnavailable => ErrorCode::DirectoryUnavailable,
                ValidationOutcome::InvalidCredentials
                | ValidationOutcome::Success
                | ValidationOutcome::Unspecified => ErrorCode::InvalidCredentials,
            },
            SignInError::NoAgent(_)
            | SignInError::Unreachable(_)
            | SignInError::ConnectionRefused(_) => ErrorCode::NoAgentAvailable,
            SignInError::Dispatcher { code, .. } => *code,
            SignInError::Timeout(_) => ErrorCode::AgentTimeout,
            SignInError::Seal { .. } | SignInError::Tokens(_) => ErrorCode::Internal,
            SignInError::NotAuthentic(_) => ErrorCode::AnswerNotAuthentic,
            SignInError::LockedOut(_) => ErrorCode::SmartLockout,
            SignInError::Throttled(_) => ErrorCode::Throttled,
            SignInError::BlockedByPolicy(_) => ErrorCode::BlockedByPolicy,
            SignInError::MfaNotEnrolled => ErrorCode::MfaNotEnrolled,
            SignInError::MfaLocked => ErrorCode::MfaLocked,
            SignInError::Mfa(failure) => match failure {
                MfaFailure::NoSuchChallenge | MfaFailure::NotThisClient(_) => {
                    ErrorCode::MfaChallengeInvalid
                }
                MfaFailure::UserLocked(_) => ErrorCode::MfaLocked,
                MfaFailure::WrongCode { .. } => ErrorCode::MfaCodeInvalid,
                MfaFailure::Ended(_) => ErrorCode::MfaChallengeEnded,
                MfaFailure::Store(_) | MfaFailure::Enrolment(_) => ErrorCode::Internal,
            },
            SignInError::Store(_) => ErrorCode::Internal,
            SignInError::Refresh(err) => match err.error {
                "invalid_grant" => ErrorCode::RefreshTokenInvalid,
                "invalid_client" => ErrorCode::ClientAuthenticationFailed,
                "server_error" => ErrorCode::Internal,
                _ => ErrorCode::InvalidRequest,
            },
            SignInError::NoRefreshTokens => ErrorCode::InvalidRequest,
        }
    }

    /// The caller's view: the code and, for input errors, which field; otherwise the code's
    /// fixed message.
    pub fn into_status(self) -> Status {
        let code = self.code();
        if let SignInError::Throttled(throttled) = &self {
            // The message says when (and so does a retry-after header, in seconds).
            let seconds = throttled.retry_after().as_secs().max(1);
            let mut status = code.status(self);
            if let Ok(value) = seconds.to_string().parse() {
                status.metadata_mut().insert("retry-after", value);
            }
            return status;
        }
        match self {
            SignInError::Invalid(_)
            | SignInError::BadClientIp
            | SignInError::UnknownClient(_)
            | SignInError::UnknownDomain(_)
            | SignInError::PasswordRejected(_)
            | SignInError::NoRefreshTokens => code.status(self),
            // "client authentication failed": which field is wrong, never more.
            SignInError::Refresh(ref err) if err.error == "invalid_client" => code.status(self),
            _ => code.public_status(),
        }
    }
}

impl SignInService {
    /// The caller's view of `err`, as [`SignInError::into_status`] — but an expired or
    /// must-change password, where this gateway allows writeback, tells the client to change
    /// it here rather than the organisation's way.
    pub fn status_of(&self, err: SignInError) -> Status {
        match &err {
            SignInError::Refused(
                outcome @ (ValidationOutcome::PasswordExpired
                | ValidationOutcome::PasswordMustChange),
            ) if self.password_writeback => {
                let what = match outcome {
                    ValidationOutcome::PasswordExpired => "the password has expired",
                    _ => "the password must be changed before it can be used",
                };
                err.code().status(format!(
                    "{what}: change it with Gateway.ChangePassword (old and new password), which signs in with the new one"
                ))
            }
            _ => err.into_status(),
        }
    }

    /// A service calling `dispatcher` with keys from `keys`, issuing with `issuer`; with
    /// `store`, every attempt goes to the sign-in log, with `lockout`, smart lockout applies,
    /// `policies` decide what a right password leads to, and `second_factor` runs MFA; every
    /// attempt is counted in `metrics`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &GatewayConfig,
        dispatchers: Arc<Dispatchers>,
        keys: Arc<KeySetCache>,
        issuer: Arc<TokenIssuer>,
        store: Option<Store>,
        lockout: Option<SmartLockout>,
        policies: Arc<Policies>,
        second_factor: Option<SecondFactor>,
        metrics: GatewayMetrics,
    ) -> Self {
        Self {
            metrics,
            throttle: Throttle::new(&config.throttle),
            lockout,
            signin_log: store.map(SigninLog::start),
            dispatchers,
            keys,
            issuer,
            tenant: config.tenant.clone(),
            // Checked when the configuration was loaded.
            routes: Routes::new(
                &config.connector_groups,
                config.default_connector_group.as_deref(),
            )
            .unwrap_or_default(),
            clients: config.clients.clone(),
            envelope_lifetime: Duration::from_secs(config.envelope_lifetime_s),
            password_writeback: config.password_writeback,
            validation_timeout: Duration::from_millis(config.validation_timeout_ms),
            policies,
            second_factor,
        }
    }

    /// Every check that needs nothing but the request: nothing malformed goes further.
    fn check(
        &self,
        request: SignInRequest,
        client_type: ClientType,
    ) -> Result<CheckedRequest, SignInError> {
        let SignInRequest {
            username,
            password,
            client_id,
            client_ip,
            offline_access: _,
        } = request;
        // Check the password first, so it is wiped (Password::new) on every path.
        let password = Password::new(password)?;
        let username = Username::parse(&username)?;
        check_field("client_id", &client_id, MAX_FIELD_BYTES)?;
        if client_id.is_empty() {
            return Err(CredentialError::Empty { field: "client_id" }.into());
        }
        if !self.clients.is_empty() && !self.clients.iter().any(|c| c.id == client_id) {
            return Err(SignInError::UnknownClient(client_id));
        }
        check_field("client_ip", &client_ip, MAX_FIELD_BYTES)?;
        let client_ip = match client_ip.as_str() {
            "" => None,
            // An IPv4-mapped IPv6 address is the IPv4 address, for every decision made on it.
            text => Some(
                text.parse::<IpAddr>()
                    .map_err(|_| SignInError::BadClientIp)?
                    .to_canonical(),
            ),
        };
        Ok(CheckedRequest {
            username,
            password,
            new_password: None,
            client_id,
            client_ip,
            client_type,
        })
    }

    /// The checks of a `CompleteMfa` request: bounded fields, a registered client, an address.
    fn check_mfa(&self, request: &CompleteMfaRequest) -> Result<Option<IpAddr>, SignInError> {
        check_field("mfa_challenge", &request.mfa_challenge, 128)?;
        check_field("code", &request.code, 64)?;
        check_field("client_id", &request.client_id, MAX_FIELD_BYTES)?;
        if request.mfa_challenge.is_empty() {
            return Err(CredentialError::Empty {
                field: "mfa_challenge",
            }
            .into());
        }
        if request.code.is_empty() {
            return Err(CredentialError::Empty { field: "code" }.into());
        }
        if !self.clients.is_empty() && !self.clients.iter().any(|c| c.id == request.client_id) {
            return Err(SignInError::UnknownClient(request.client_id.clone()));
        }
        check_field("client_ip", &request.client_ip, MAX_FIELD_BYTES)?;
        match request.client_ip.as_str() {
            "" => Ok(None),
            text => text
                .parse::<IpAddr>()
                .map(|ip| Some(ip.to_canonical()))
                .map_err(|_| SignInError::BadClientIp),
        }
    }

    /// The connector group serving `username` ([`Routes`]).
    fn route(&self, username: &Username) -> Result<String, SignInError> {
        self.routes
            .group_for(username)
            .map_err(|unrouted| SignInError::UnknownDomain(unrouted.0))
    }

    /// Seals to two random agents and asks the dispatcher; on a failure that a fresh key set
    /// may cure (no agent, agent lost, sealed to a stale key) it refreshes and tries once more.
    /// Also says how many agents were lost after they had been sent the password (each may
    /// have bound to the directory: smart lockout counts them).
    async fn validate(
        &self,
        request: &CheckedRequest,
        group: &str,
        trace: &TraceParent,
        single_bind: bool,
    ) -> (Result<Answer, SignInError>, u32) {
        let mut refreshed = false;
        let mut single_bind = single_bind;
        let mut lost = 0;
        // The replica that answered the first try, passed over by the second: it may be
        // draining (its agents gone) or unreachable.
        let mut avoid = None;
        loop {
            let keys = match self.keys.keys(group, refreshed).await {
                Ok(keys) => keys,
                Err(status) => return (Err(dispatcher_failed(status)), lost),
            };
            let replica = self.dispatchers.pick(avoid.as_ref());
            let result = if keys.is_empty() {
                Err(SignInError::NoAgent(group.to_owned()))
            } else {
                self.call_dispatcher(request, group, &keys, trace, single_bind, &replica)
                    .await
            };
            // What the dispatcher lost on the way, whatever the outcome: each may have bound.
            if let Err(SignInError::Dispatcher {
                code,
                lost_attempts,
                ..
            }) = &result
            {
                lost += if *code == ErrorCode::AgentLost && *lost_attempts == 0 {
                    // An older dispatcher does not say: every candidate it had.
                    lost_candidates(&keys, single_bind)
                } else {
                    *lost_attempts
                };
            }
            match result {
                // A replica that refused the connection was sent nothing: another one, once,
                // counting nothing.
                Err(SignInError::ConnectionRefused(why)) if !refreshed => {
                    tracing::warn!(replica = ?replica.addr, error = %why, "dispatcher replica refused the connection; trying another");
                    self.dispatchers.failed(&replica);
                    self.metrics.retry();
                    refreshed = true;
                    avoid = Some(replica);
                }
                // A replica that went away mid-call (stopped, crashed): another one, once. It
                // may have relayed the password to each candidate before it went, so they count
                // as possible binds, and the second try binds once at most.
                Err(SignInError::Unreachable(why)) if !refreshed && !single_bind => {
                    tracing::warn!(replica = ?replica.addr, error = %why, "dispatcher replica unreachable; trying another, one bind at most");
                    self.dispatchers.failed(&replica);
                    self.metrics.retry();
                    lost += lost_candidates(&keys, single_bind);
                    refreshed = true;
                    single_bind = true;
                    avoid = Some(replica);
                }
                Err(err @ (SignInError::Unreachable(_) | SignInError::ConnectionRefused(_))) => {
                    self.dispatchers.failed(&replica);
                    return (Err(err), lost);
                }
                // After a lost agent the password may have reached the directory: only with
                // room for a second failure is it sent again, and then to one agent only.
                Err(err)
                    if !refreshed
                        && lost == 0
                        && matches!(
                            err.code(),
                            ErrorCode::NoAgentAvailable | ErrorCode::AgentRejected
                        ) =>
                {
                    tracing::debug!(error = %err, "retrying with a fresh key set");
                    self.metrics.retry();
                    refreshed = true;
                    avoid = Some(replica);
                }
                Err(err) if !refreshed && err.code() == ErrorCode::AgentLost && !single_bind => {
                    tracing::debug!(error = %err, "retrying with a fresh key set, one bind at most");
                    self.metrics.retry();
                    refreshed = true;
                    single_bind = true;
                    avoid = Some(replica);
                }
                Err(err) => return (Err(err), lost),
                Ok(answer) => {
                    lost += answer.lost_attempts;
                    return (Ok(answer), lost);
                }
            }
        }
    }

    async fn call_dispatcher(
        &self,
        request: &CheckedRequest,
        group: &str,
        keys: &[Arc<crate::keyset::AgentSealingKey>],
        trace: &TraceParent,
        single_bind: bool,
        replica: &crate::dispatchers::Replica,
    ) -> Result<Answer, SignInError> {
        let not_after = SystemTime::now() + self.envelope_lifetime;
        let fields = PayloadFields {
            username: request.username.as_str(),
            password: &request.password,
            new_password: request.new_password.as_ref(),
            tenant: &self.tenant,
            not_after,
        };
        // Each candidate's answer key stays here: only the agent that opens its envelope can
        // answer in a way that opens with it.
        let mut sealed_for = Vec::with_capacity(2);
        let candidates = pick_two_preferring(keys, |agent| agent.directory_reachable)
            .into_iter()
            .map(|agent| {
                let sealed = agent
                    .key
                    .seal(&fields)
                    .map_err(|source| SignInError::Seal {
                        agent_id: agent.agent_id.clone(),
                        source,
                    })?;
                let candidate = SealedPassword {
                    agent_id: agent.agent_id.clone(),
                    ciphertext: sealed.ciphertext.clone(),
                };
                sealed_for.push((agent.agent_id.clone(), sealed));
                Ok(candidate)
            })
            .collect::<Result<Vec<_>, SignInError>>()?;
        let mut call = Request::new(ValidateRequest {
            tenant: self.tenant.clone(),
            connector_group: group.to_owned(),
            username: request.username.as_str().to_owned(),
            candidates,
            trace: Some(trace.to_message()),
            single_bind,
        });
        call.set_timeout(self.validation_timeout);
        if let Ok(value) = trace.to_string().parse() {
            call.metadata_mut().insert("traceparent", value);
        }
        match replica.client().validate(call).await {
            Ok(response) => {
                let response = response.into_inner();
                self.open_answer(request, &sealed_for, &response)
            }
            Err(status)
                if status.code() == tonic::Code::DeadlineExceeded
                    && ErrorCode::of(&status).is_none() =>
            {
                Err(SignInError::Timeout(self.validation_timeout))
            }
            Err(status) if crate::dispatchers::connection_refused(&status) => {
                Err(SignInError::ConnectionRefused(status.message().to_owned()))
            }
            Err(status) => Err(dispatcher_failed(status)),
        }
    }
}

impl SignInService {
    /// Opens the answer relayed as `response` with the key sealed for the candidate it names.
    /// A forged, replayed or swapped answer does not open: no token, and the dispatcher's
    /// misbehaviour is logged.
    fn open_answer(
        &self,
        request: &CheckedRequest,
        sealed_for: &[(String, Sealed)],
        response: &ValidateResponse,
    ) -> Result<Answer, SignInError> {
        let not_authentic = |why: &str| {
            tracing::warn!(
                agent_id = %response.agent_id,
                reason = why,
                "the dispatcher relayed an answer that is not authentic; no token issued"
            );
            SignInError::NotAuthentic(response.agent_id.clone())
        };
        let (_, sealed) = sealed_for
            .iter()
            .find(|(agent_id, _)| *agent_id == response.agent_id)
            .ok_or_else(|| not_authentic("it names no agent the password was sealed for"))?;
        let binding = AnswerBinding {
            nonce: &sealed.nonce,
            agent_id: &response.agent_id,
            tenant: &self.tenant,
            username: request.username.as_str(),
        };
        let plain = sealed
            .answer_key
            .open(&binding, &response.sealed_answer)
            .map_err(|_| not_authentic("it does not open with that agent's answer key"))?;
        let verdict = SealedVerdict::decode(plain.as_slice())
            .map_err(|_| not_authentic("its verdict does not decode"))?;
        Ok(Answer {
            lost_attempts: response.lost_attempts,
            agent_id: response.agent_id.clone(),
            outcome: ValidationOutcome::try_from(verdict.outcome).unwrap_or_default(),
            user: verdict.user,
            repeated_wrong_password: verdict.repeated_wrong_password,
            rejection: PasswordRejection::try_from(verdict.rejection).unwrap_or_default(),
        })
    }
}

/// An authentic answer: what the agent that opened the password said.
struct Answer {
    /// Candidates the dispatcher says it lost after sending them the password.
    lost_attempts: u32,
    agent_id: String,
    outcome: ValidationOutcome,
    user: Option<DirectoryUser>,
    /// A wrong password the user tried recently (the agent recognised it): counted once.
    repeated_wrong_password: bool,
    /// A password change the directory refused: why.
    rejection: PasswordRejection,
}

/// Why a new password was refused, in words for the caller.
pub fn rejection_reason(rejection: PasswordRejection) -> &'static str {
    match rejection {
        PasswordRejection::TooShort => {
            "it is shorter than the organisation's password policy allows"
        }
        PasswordRejection::InHistory => "it was used before",
        PasswordRejection::TooYoung => "the password was changed too recently to change again",
        PasswordRejection::Quality => "it does not meet the password policy's quality rules",
        PasswordRejection::Policy | PasswordRejection::Unspecified => {
            "it does not meet the organisation's password policy (length, complexity or history)"
        }
    }
}

/// A dispatcher failure as a sign-in error, keeping its Passage code when it has one.
fn dispatcher_failed(status: Status) -> SignInError {
    match ErrorCode::of(&status) {
        Some(code) => SignInError::Dispatcher {
            code,
            message: status.message().to_owned(),
            // Candidates the dispatcher lost after sending them the password (each may have
            // bound), as its error says.
            lost_attempts: status
                .metadata()
                .get(passage_proto::LOST_ATTEMPTS_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        },
        None => SignInError::Unreachable(format!("{:?}: {}", status.code(), status.message())),
    }
}

/// The `Gateway` gRPC service. Each call runs to its end in a task of its own, even when the
/// caller cancels it or its deadline passes: once a password may be on its way to the
/// directory, smart lockout must still count what came of it (an abandoned call would otherwise
/// be a free guess).
#[derive(Clone)]
pub struct GatewayService {
    service: Arc<SignInService>,
    /// Refresh tokens (the OpenID provider keeps them), when the gateway has a store.
    refresh: Option<crate::oidc::Provider>,
}

impl GatewayService {
    /// Serves `service`, without refresh tokens.
    pub fn new(service: SignInService) -> Self {
        Self::from_shared(Arc::new(service), None)
    }

    /// Serves a service the browser sign-in shares; `refresh` issues and rotates refresh
    /// tokens.
    pub fn from_shared(
        service: Arc<SignInService>,
        refresh: Option<crate::oidc::Provider>,
    ) -> Self {
        Self { service, refresh }
    }
}

/// A refresh token for `granted`, from `refresh` if the gateway keeps them.
async fn refresh_token_for(
    refresh: Option<&crate::oidc::Provider>,
    granted: &Granted,
) -> Result<String, SignInError> {
    refresh
        .ok_or(SignInError::NoRefreshTokens)?
        .grpc_refresh_token(granted)
        .await
        .map_err(SignInError::Refresh)
}

/// The gRPC answer to a sign-in (a password change's included): the tokens, with a refresh
/// token when `offline`, or the MFA challenge that stands before them.
async fn signed_response(
    service: &SignInService,
    refresh: Option<&crate::oidc::Provider>,
    signed: Signed,
    offline: bool,
) -> Result<SignInResponse, SignInError> {
    Ok(match signed {
        Signed::Granted(granted) => {
            let mut response = service.tokens(&granted)?;
            if offline {
                response.refresh_token = refresh_token_for(refresh, &granted).await?;
            }
            response
        }
        Signed::Challenge { handle, expires_in } => SignInResponse {
            mfa_challenge: handle,
            mfa_challenge_expires_in: expires_in,
            ..SignInResponse::default()
        },
    })
}

#[tonic::async_trait]
impl Gateway for GatewayService {
    async fn sign_in(
        &self,
        request: Request<SignInRequest>,
    ) -> Result<Response<SignInResponse>, Status> {
        let (service, refresh) = (Arc::clone(&self.service), self.refresh.clone());
        to_the_end(async move {
            let offline = request.get_ref().offline_access;
            let answer = async {
                let signed = service.sign_in(request).await?;
                signed_response(&service, refresh.as_ref(), signed, offline).await
            };
            answer
                .await
                .map(Response::new)
                .map_err(|err| service.status_of(err))
        })
        .await
    }

    async fn change_password(
        &self,
        request: Request<ChangePasswordRequest>,
    ) -> Result<Response<ChangePasswordResponse>, Status> {
        let (service, refresh) = (Arc::clone(&self.service), self.refresh.clone());
        to_the_end(async move {
            let offline = request.get_ref().offline_access;
            let answer = async {
                let signed = service.change_password(request).await?;
                let response = signed_response(&service, refresh.as_ref(), signed, offline).await?;
                Ok(ChangePasswordResponse {
                    access_token: response.access_token,
                    id_token: response.id_token,
                    token_type: response.token_type,
                    expires_in: response.expires_in,
                    mfa_challenge: response.mfa_challenge,
                    mfa_challenge_expires_in: response.mfa_challenge_expires_in,
                    refresh_token: response.refresh_token,
                })
            };
            answer
                .await
                .map(Response::new)
                .map_err(SignInError::into_status)
        })
        .await
    }

    async fn complete_mfa(
        &self,
        request: Request<CompleteMfaRequest>,
    ) -> Result<Response<CompleteMfaResponse>, Status> {
        let (service, refresh) = (Arc::clone(&self.service), self.refresh.clone());
        to_the_end(async move {
            let request = request.into_inner();
            let offline = request.offline_access;
            let answer = async {
                let granted = service.complete_mfa_as(request).await?;
                let tokens = service.tokens(&granted)?;
                let refresh_token = if offline {
                    refresh_token_for(refresh.as_ref(), &granted).await?
                } else {
                    String::new()
                };
                Ok(CompleteMfaResponse {
                    access_token: tokens.access_token,
                    id_token: tokens.id_token,
                    token_type: tokens.token_type,
                    expires_in: tokens.expires_in,
                    refresh_token,
                })
            };
            answer
                .await
                .map(Response::new)
                .map_err(SignInError::into_status)
        })
        .await
    }

    async fn refresh(
        &self,
        request: Request<RefreshRequest>,
    ) -> Result<Response<RefreshResponse>, Status> {
        let refresh = self.refresh.clone();
        to_the_end(async move {
            let request = request.into_inner();
            let answer = async {
                check_field("refresh_token", &request.refresh_token, 128)?;
                check_field("client_id", &request.client_id, MAX_FIELD_BYTES)?;
                check_field("client_secret", &request.client_secret, MAX_FIELD_BYTES)?;
                let provider = refresh.ok_or(SignInError::NoRefreshTokens)?;
                let (tokens, next) = provider
                    .grpc_refresh(
                        &request.client_id,
                        &request.client_secret,
                        &request.refresh_token,
                    )
                    .await
                    .map_err(SignInError::Refresh)?;
                Ok::<_, SignInError>(RefreshResponse {
                    access_token: tokens.access_token,
                    id_token: tokens.id_token,
                    token_type: "Bearer".into(),
                    expires_in: tokens.expires_in.as_secs() as u32,
                    refresh_token: next,
                })
            };
            answer.await.map(Response::new).map_err(|err| {
                tracing::info!(error = %err, client_id = %request.client_id, "refresh refused");
                err.into_status()
            })
        })
        .await
    }
}

/// Runs `call` in a task of its own and waits for its answer: if the caller goes away, the
/// task still finishes.
async fn to_the_end<T: Send + 'static>(
    call: impl Future<Output = Result<T, Status>> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(call).await.unwrap_or_else(|err| {
        tracing::error!(error = %err, "a sign-in task failed");
        Err(ErrorCode::Internal.public_status())
    })
}

impl SignInService {
    /// `Gateway.SignIn`, up to what it grants.
    pub async fn sign_in(&self, request: Request<SignInRequest>) -> Result<Signed, SignInError> {
        let caller_trace = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse);
        self.sign_in_as(request.into_inner(), ClientType::Grpc, caller_trace)
            .await
    }

    /// A sign-in from a `client_type` client: every step (throttling, smart lockout, the
    /// agents, conditional access, MFA, the sign-in log) but the tokens.
    pub async fn sign_in_as(
        &self,
        request: SignInRequest,
        client_type: ClientType,
        caller_trace: Option<TraceParent>,
    ) -> Result<Signed, SignInError> {
        let started = Instant::now();
        let request = self.check(request, client_type)?;
        self.sign_in_traced(request, caller_trace, started).await
    }

    /// A password change (writeback) and the sign-in with the new password: refused unless
    /// the tenant allows writeback; otherwise every step of a sign-in, the old password
    /// standing for the password.
    pub async fn change_password(
        &self,
        request: Request<ChangePasswordRequest>,
    ) -> Result<Signed, SignInError> {
        let caller_trace = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse);
        self.change_password_as(request.into_inner(), ClientType::Grpc, caller_trace)
            .await
    }

    /// Waits (up to `timeout`) until the store holds what every sign-in answered so far left
    /// to be written in the background (its sign-in log entry, a success's lockout counts): a
    /// stopping gateway calls it once its calls have finished.
    pub async fn flush_writes(&self, timeout: Duration) {
        let log = async {
            if let Some(log) = &self.signin_log {
                log.flush(timeout).await;
            }
        };
        let lockout = async {
            if let Some(lockout) = &self.lockout {
                lockout.flush(timeout).await;
            }
        };
        tokio::join!(log, lockout);
    }

    /// Whether users may change their password here.
    pub fn password_writeback(&self) -> bool {
        self.password_writeback
    }

    /// A password change from a `client_type` client (see [`SignInService::change_password`]).
    pub async fn change_password_as(
        &self,
        request: ChangePasswordRequest,
        client_type: ClientType,
        caller_trace: Option<TraceParent>,
    ) -> Result<Signed, SignInError> {
        let started = Instant::now();
        let ChangePasswordRequest {
            username,
            old_password,
            new_password,
            client_id,
            client_ip,
            offline_access,
        } = request;
        // Both passwords become Password (wiped on every path) before anything else.
        let new_password = Password::new(new_password).map_err(|err| match err {
            CredentialError::Empty { .. } => CredentialError::Empty {
                field: "new_password",
            },
            other => other,
        })?;
        let mut checked = self.check(
            SignInRequest {
                username,
                password: old_password,
                client_id,
                client_ip,
                offline_access,
            },
            client_type,
        )?;
        if !self.password_writeback {
            return Err(SignInError::WritebackDisabled);
        }
        if new_password.expose() == checked.password.expose() {
            return Err(SignInError::PasswordRejected(PasswordRejection::InHistory));
        }
        checked.new_password = Some(new_password);
        self.sign_in_traced(checked, caller_trace, started).await
    }

    /// Every step of a checked sign-in but the tokens, in its span.
    async fn sign_in_traced(
        &self,
        request: CheckedRequest,
        caller_trace: Option<TraceParent>,
        started: Instant,
    ) -> Result<Signed, SignInError> {
        let client_ip = request.client_ip.map(|ip| ip.to_string());
        if let Err(throttled) =
            self.throttle
                .admit(&self.tenant, client_ip.as_deref(), Instant::now())
        {
            tracing::info!(target: "passage::signin_log", outcome = "throttled", client_ip = client_ip.as_deref().unwrap_or("-"), %throttled, "sign-in");
            return Err(self.throttled(throttled, started));
        }
        let group = self.route(&request.username)?;
        let span = tracing::info_span!(
            "sign_in",
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            username = %request.username,
            client_id = %request.client_id,
            client_type = request.client_type.as_str(),
            password_change = request.new_password.is_some(),
            connector_group = %group,
            error_code = tracing::field::Empty,
        );
        let trace = join_trace(&span, caller_trace);
        self.sign_in_checked(request, group, trace, started)
            .instrument(span)
            .await
    }

    /// The second factor of a sign-in, from any client: the grant it completes.
    pub async fn complete_mfa_as(
        &self,
        request: CompleteMfaRequest,
    ) -> Result<Granted, SignInError> {
        let started = Instant::now();
        let client_ip = self.check_mfa(&request)?;
        let client_ip_text = client_ip.map(|ip| ip.to_string());
        if let Err(throttled) =
            self.throttle
                .admit(&self.tenant, client_ip_text.as_deref(), Instant::now())
        {
            tracing::info!(target: "passage::signin_log", outcome = "throttled", step = "complete_mfa", client_ip = client_ip_text.as_deref().unwrap_or("-"), %throttled, "sign-in");
            return Err(self.throttled(throttled, started));
        }
        let span = tracing::info_span!(
            "complete_mfa",
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            client_id = %request.client_id,
            error_code = tracing::field::Empty,
        );
        self.complete_mfa_checked(request, client_ip, started)
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
    ) -> Result<Signed, SignInError> {
        let now = passage_pki::unix_now();
        // Smart lockout first: a locked-out user's sign-in never reaches an agent, so neither
        // its answer nor its timing depends on the password. An admitted attempt is counted
        // before it goes out and settled when the answer is known.
        let admission = match &self.lockout {
            Some(lockout) => {
                // The directory's policy comes with the group's key set (cached; a failure to
                // fetch it shows when the sign-in asks for it below).
                let _ = self.keys.keys(&group, false).await;
                let limits = lockout.limits_for(
                    &group,
                    self.keys.directory_lockout(&group),
                    self.routes.name_forms(&group),
                );
                let asked = Instant::now();
                let admitted = lockout
                    .admit(
                        &self.tenant,
                        &routing::lockout_name(&request.username, &group),
                        request.client_ip,
                        &limits,
                        now,
                    )
                    .await;
                self.metrics.store("lockout_admit", asked.elapsed());
                match admitted {
                    Ok(admission) => Some(admission),
                    Err(err) => {
                        tracing::error!(error = %err, "smart lockout: the store failed");
                        return Err(SignInError::Store(err));
                    }
                }
            }
            None => None,
        };
        let (ticket, scope) = match admission {
            Some(Admission::Refused { scope, refusal }) => {
                return self
                    .finish(
                        &request,
                        Err(SignInError::LockedOut(refusal.until)),
                        Some(scope),
                        "refused",
                        now,
                        started,
                    )
                    .await;
            }
            Some(Admission::Admitted(ticket)) => {
                let scope = ticket.scope;
                (Some(ticket), Some(scope))
            }
            None => (None, None),
        };
        // Near the limits, a lost agent's password is not sent to another (smart lockout
        // counted room for one failure of this attempt).
        // A password change goes to one agent only: a second agent after a lost one would
        // find the password already changed and answer "wrong old password".
        let single_bind = request.new_password.is_some()
            || ticket.as_ref().is_some_and(|t| !t.room_for_second_bind);
        let (answer, lost) = self.validate(&request, &group, &trace, single_bind).await;
        let repeated = answer
            .as_ref()
            .is_ok_and(|answer| answer.repeated_wrong_password);
        // Conditional access decides what a right password leads to; a network becomes familiar
        // only when the sign-in gets its tokens now (not behind a block or a second factor).
        let result = answer.and_then(|answer| match (answer.outcome, answer.user) {
            (ValidationOutcome::Success, Some(user)) => {
                let subject = self.subject(&request, user);
                let evaluation = self.evaluate(&request, &subject, scope);
                Ok((subject, answer.agent_id, evaluation))
            }
            (ValidationOutcome::PasswordRejected, _) => {
                Err(SignInError::PasswordRejected(answer.rejection))
            }
            (outcome, _) => Err(SignInError::Refused(outcome)),
        });
        let mut lockout_state = "none";
        if let (Some(lockout), Some(ticket)) = (&self.lockout, ticket) {
            let outcome = match &result {
                Ok((_, _, evaluation)) => Outcome::Success {
                    remember_network: evaluation.grant == Grant::Allow,
                },
                // Wrong password and unknown user alike (the answer does not tell them apart),
                // unless the agent recognised a wrong password tried before and did not bind.
                Err(SignInError::Refused(ValidationOutcome::InvalidCredentials)) if !repeated => {
                    Outcome::Failures(1 + lost)
                }
                // The directory answered otherwise, or the agent answered from memory: only
                // the lost agents may have bound.
                Err(SignInError::Refused(_)) => Outcome::Failures(lost),
                // No answer, but the password may have reached the directory: counted.
                Err(err) if err.may_have_bound() => Outcome::Failures(1 + lost),
                Err(_) => Outcome::Failures(lost),
            };
            // The time the answer came (a sign-in can take seconds), for the count's window.
            let settled_at = passage_pki::unix_now();
            let asked = Instant::now();
            let settled = lockout
                .settle(&self.tenant, ticket, request.client_ip, outcome, settled_at)
                .await;
            self.metrics.store("lockout_settle", asked.elapsed());
            match settled {
                Ok(Settled::Nothing) if repeated => lockout_state = "repeat",
                Ok(Settled::Nothing) => {}
                Ok(Settled::Counted) => lockout_state = "counted",
                Ok(Settled::LockedOut(_)) => lockout_state = "locked",
                Err(err) => tracing::error!(error = %err, "smart lockout: counting failed"),
            }
        }
        self.finish(&request, result, scope, lockout_state, now, started)
            .await
    }

    /// Who signed in, as the tokens will say: the directory's stable id (else its DN) and UPN
    /// (else the username as typed).
    fn subject(&self, request: &CheckedRequest, user: DirectoryUser) -> Subject {
        Subject {
            sub: if user.object_id.is_empty() {
                user.dn
            } else {
                user.object_id
            },
            tenant: self.tenant.clone(),
            upn: if user.upn.is_empty() {
                request.username.to_string()
            } else {
                user.upn
            },
            preferred_username: request.username.to_string(),
            name: user.display_name,
            email: user.mail,
            groups: user.groups,
            password_expires_in_s: (user.password_expires_in_s > 0)
                .then_some(user.password_expires_in_s),
        }
    }

    /// What the policies in force decide for a sign-in whose password the directory accepted.
    fn evaluate(
        &self,
        request: &CheckedRequest,
        subject: &Subject,
        scope: Option<Scope>,
    ) -> passage_policy::Evaluation {
        self.policies.current().evaluate(&SignInFacts {
            user: &subject.upn,
            groups: &subject.groups,
            application: &request.client_id,
            client_ip: request.client_ip,
            unfamiliar_location: scope != Some(Scope::Familiar),
            client_type: request.client_type,
        })
    }

    /// Issues tokens for a success, or the coded error; logs the attempt either way.
    async fn finish(
        &self,
        request: &CheckedRequest,
        result: Result<(Subject, String, passage_policy::Evaluation), SignInError>,
        scope: Option<Scope>,
        lockout_state: &'static str,
        now: i64,
        started: Instant,
    ) -> Result<Signed, SignInError> {
        let client_ip = request
            .client_ip
            .map(|ip| ip.to_string())
            .unwrap_or_default();
        let mut entry = SigninEntry {
            at: now,
            tenant: self.tenant.clone(),
            username: request.username.to_string(),
            client_id: request.client_id.clone(),
            client_ip: client_ip.clone(),
            familiar_location: scope == Some(Scope::Familiar),
            lockout: lockout_state.into(),
            ..SigninEntry::default()
        };
        let outcome = match result {
            Ok((subject, agent_id, evaluation)) => {
                entry.upn = subject.upn.clone();
                entry.agent_id = agent_id.clone();
                self.after_password(
                    request, subject, agent_id, evaluation, scope, now, &mut entry,
                )
                .await
            }
            Err(err) => Err(err),
        };
        let response = self.answer(outcome, &mut entry, started.elapsed());
        if let Some(log) = &self.signin_log {
            log.record(entry).await;
        }
        response
    }

    /// Logs and counts the attempt's end.
    fn answer<T>(
        &self,
        outcome: Result<T, SignInError>,
        entry: &mut SigninEntry,
        elapsed: Duration,
    ) -> Result<T, SignInError> {
        let elapsed_ms = elapsed.as_millis() as u64;
        entry.latency_ms = elapsed_ms as i64;
        let response = match outcome {
            Ok(response) => {
                if entry.outcome.is_empty() {
                    entry.outcome = "success".into();
                }
                tracing::info!(target: "passage::signin_log", outcome = %entry.outcome, upn = %entry.upn, agent_id = %entry.agent_id, client_ip = %entry.client_ip, elapsed_ms, lockout = %entry.lockout, policies = %entry.policies, mfa = %entry.mfa, "sign-in");
                Ok(response)
            }
            Err(err) => {
                let code = err.code().as_str();
                let span = tracing::Span::current();
                span.record("error_code", code);
                span.record("otel.status_code", "ERROR");
                // The detail (what the dispatcher, agent or directory said) is for operators.
                tracing::info!(target: "passage::signin_log", outcome = "failure", error_code = code, detail = %err, upn = %entry.upn, client_ip = %entry.client_ip, elapsed_ms, lockout = %entry.lockout, policies = %entry.policies, mfa = %entry.mfa, "sign-in");
                entry.outcome = "failure".into();
                entry.error_code = code.into();
                Err(err)
            }
        };
        self.metrics.attempt(Attempt {
            outcome: &entry.outcome,
            code: &entry.error_code,
            lockout: &entry.lockout,
            mfa: &entry.mfa,
            elapsed,
            trace_id: TraceParent::current_trace_id(),
        });
        response
    }

    /// A throttled attempt, counted (it is not in the sign-in log: nothing was asked).
    fn throttled(&self, throttled: Throttled, started: Instant) -> SignInError {
        let err = SignInError::from(throttled);
        self.metrics.attempt(Attempt {
            outcome: "throttled",
            code: err.code().as_str(),
            lockout: "",
            mfa: "",
            elapsed: started.elapsed(),
            trace_id: None,
        });
        err
    }

    /// After the directory said the password is right: conditional access decides, then the
    /// tokens, or an MFA challenge, or a refusal.
    #[allow(clippy::too_many_arguments)]
    async fn after_password(
        &self,
        request: &CheckedRequest,
        subject: Subject,
        agent_id: String,
        evaluation: passage_policy::Evaluation,
        scope: Option<Scope>,
        now: i64,
        entry: &mut SigninEntry,
    ) -> Result<Signed, SignInError> {
        let policies = self.policies.current();
        entry.policies = evaluation.summary();
        self.metrics.policy(
            evaluation.grant.as_str(),
            evaluation
                .report_only
                .iter()
                .map(|(_, grant)| grant.as_str()),
        );
        let lifetime = evaluation.token_lifetime;
        match evaluation.grant {
            Grant::Block => Err(SignInError::BlockedByPolicy(
                evaluation.deciding_policies.join(", "),
            )),
            Grant::Allow => Ok(Signed::Granted(Box::new(Granted {
                subject,
                how: Authentication {
                    lifetime,
                    ..Authentication::password()
                },
                auth_time: now,
                client_id: request.client_id.clone(),
            }))),
            Grant::RequireMfa => {
                let Some(mfa) = &self.second_factor else {
                    // Refused at start: policies that can require MFA need the store.
                    tracing::error!("a policy requires MFA, and this gateway has no store for it");
                    return Err(SignInError::MfaNotEnrolled);
                };
                let user_key = subject.upn.to_lowercase();
                match mfa.enrolled(&self.tenant, &user_key, now).await? {
                    Enrolled::Waiting => {
                        entry.mfa = "locked".into();
                        Err(SignInError::MfaLocked)
                    }
                    Enrolled::Yes => {
                        let pending = PendingSignIn {
                            username: request.username.to_string(),
                            agent_id,
                            sub: subject.sub.clone(),
                            upn: subject.upn.clone(),
                            name: subject.name.clone(),
                            email: subject.email.clone(),
                            groups: subject.groups.clone(),
                            password_expires_in_s: subject.password_expires_in_s,
                            familiar_location: scope == Some(Scope::Familiar),
                            token_lifetime_s: lifetime.map(|l| l.as_secs()),
                            policies: entry.policies.clone(),
                        };
                        let (challenge, expires_in) = mfa
                            .challenge(
                                &self.tenant,
                                &user_key,
                                &request.client_id,
                                request.client_ip,
                                &pending,
                                now,
                            )
                            .await?;
                        entry.outcome = "interrupted".into();
                        entry.mfa = "required".into();
                        Ok(Signed::Challenge {
                            handle: challenge.as_str().to_owned(),
                            expires_in: expires_in.as_secs() as u32,
                        })
                    }
                    Enrolled::No
                        if mfa.config().allow_unenrolled_from_trusted_networks
                            && request
                                .client_ip
                                .is_some_and(|ip| policies.is_trusted_network(ip)) =>
                    {
                        entry.mfa = "not_enrolled_trusted_network".into();
                        Ok(Signed::Granted(Box::new(Granted {
                            subject,
                            how: Authentication {
                                lifetime,
                                ..Authentication::password()
                            },
                            auth_time: now,
                            client_id: request.client_id.clone(),
                        })))
                    }
                    Enrolled::No => {
                        entry.mfa = "not_enrolled".into();
                        Err(SignInError::MfaNotEnrolled)
                    }
                }
            }
        }
    }

    /// Signs the token pair of the gRPC API (audience: the client that signed the user in).
    pub fn tokens(&self, granted: &Granted) -> Result<SignInResponse, SignInError> {
        let tokens = self
            .issuer
            .issue_authenticated(&granted.subject, &granted.client_id, &granted.how)
            .inspect_err(|err| tracing::error!(error = %err, "issuing tokens failed"))?;
        Ok(SignInResponse {
            access_token: tokens.access_token,
            id_token: tokens.id_token,
            token_type: "Bearer".into(),
            expires_in: tokens.expires_in.as_secs() as u32,
            ..SignInResponse::default()
        })
    }

    /// `Gateway.CompleteMfa`, inside its span.
    async fn complete_mfa_checked(
        &self,
        request: CompleteMfaRequest,
        client_ip: Option<IpAddr>,
        started: Instant,
    ) -> Result<Granted, SignInError> {
        let now = passage_pki::unix_now();
        let mut entry = SigninEntry {
            at: now,
            tenant: self.tenant.clone(),
            client_id: request.client_id.clone(),
            client_ip: client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            lockout: "none".into(),
            ..SigninEntry::default()
        };
        let record = |entry: &mut SigninEntry, pending: &PendingSignIn| {
            entry.username = pending.username.clone();
            entry.upn = pending.upn.clone();
            entry.agent_id = pending.agent_id.clone();
            entry.familiar_location = pending.familiar_location;
            entry.policies = pending.policies.clone();
        };
        let outcome = match &self.second_factor {
            None => Err(SignInError::Mfa(MfaFailure::NoSuchChallenge)),
            Some(mfa) => match mfa
                .complete(
                    &self.tenant,
                    &request.mfa_challenge,
                    &request.code,
                    &request.client_id,
                    client_ip,
                    now,
                )
                .await
            {
                Ok(done) => {
                    record(&mut entry, &done.pending);
                    entry.mfa = done.log_word.into();
                    // Now the sign-in is complete, its network becomes familiar.
                    if let (Some(lockout), Some(ip)) = (&self.lockout, client_ip)
                        && let Err(err) = lockout
                            .remember_network(&self.tenant, &done.pending.username, ip, now)
                            .await
                    {
                        tracing::error!(error = %err, "smart lockout: remembering the network failed");
                    }
                    Ok(Granted {
                        subject: done.pending.subject(&self.tenant),
                        how: Authentication {
                            lifetime: done.pending.token_lifetime_s.map(Duration::from_secs),
                            ..Authentication::with_second_factor(done.method)
                        },
                        auth_time: now,
                        client_id: request.client_id.clone(),
                    })
                }
                Err(failure) => {
                    match &failure {
                        MfaFailure::WrongCode { pending, .. } => {
                            record(&mut entry, pending);
                            entry.mfa = "wrong_code".into();
                        }
                        MfaFailure::Ended(pending) => {
                            record(&mut entry, pending);
                            entry.mfa = "challenge_ended".into();
                        }
                        MfaFailure::NotThisClient(pending) => {
                            record(&mut entry, pending);
                            entry.mfa = "other_client".into();
                        }
                        MfaFailure::UserLocked(pending) => {
                            record(&mut entry, pending);
                            entry.mfa = "locked".into();
                        }
                        _ => entry.mfa = "invalid_challenge".into(),
                    }
                    Err(SignInError::Mfa(failure))
                }
            },
        };
        let response = self.answer(outcome, &mut entry, started.elapsed());
        if let Some(log) = &self.signin_log {
            log.record(entry).await;
        }
        response
    }
}

/// How many candidates a dispatcher answering `AgentLost` may have lost after sending them the
/// password: one when it was told to send it to one only, else every candidate.
fn lost_candidates(keys: &[Arc<crate::keyset::AgentSealingKey>], single_bind: bool) -> u32 {
    if single_bind {
        1
    } else {
        keys.len().min(2) as u32
    }
}

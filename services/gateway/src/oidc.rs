//! Passage as an OpenID Connect provider: the browser sign-in (authorization code flow with
//! PKCE), the token endpoint (codes, and refresh tokens rotated on every use), userinfo,
//! revocation, introspection and RP-initiated logout.
//!
//! The protocol's rules live in `passage-oidc`; this module wires them to HTTP, to the
//! sign-in pipeline ([`SignInService::sign_in_as`], so a browser sign-in goes through
//! throttling, smart lockout, the agents, conditional access, MFA and the sign-in log exactly
//! like a gRPC one) and to the store (codes and refresh tokens by digest, what they grant
//! sealed with the key-encryption key; signing keys shared by every replica).
//!
//! Passage keeps no browser session: every `/authorize` asks for the password (so
//! `prompt=none` answers `login_required`), and logging out revokes the user's refresh tokens
//! for the application.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Extension, State},
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::get,
};
use passage_error_codes::ErrorCode;
use passage_oidc::{
    authorize::{self, AuthorizationRequest, AuthorizeError},
    client::{Client, Clients},
    csrf, discovery,
    pages::{self, Message, Strings},
    pkce,
    token::{self, Grant, TokenError},
    tokens::{digest, opaque_token},
};
use passage_policy::{Cidr, ClientType};
use passage_proto::v1::{
    ChangePasswordRequest, CompleteMfaRequest, SignInRequest, ValidationOutcome,
};
use passage_store::{CodeRedemption, NewCode, NewRefreshToken, RefreshRotation, Store};
use passage_tokens::{
    ACR_MFA, ACR_PASSWORD, Authentication, IssuedTokens, Subject, TokenIssuer, TokenRequest,
};
use serde::{Deserialize, Serialize};

use crate::signin::{Granted, SignInError, SignInService, Signed};

/// The TCP peer of an HTTP request (set by the listener on every connection).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Where the second-factor page posts (beside `/authorize`, so that relative links work).
const MFA: &str = "/mfa";
/// The password-change form posts here (beside `/authorize`), when writeback is on.
const PASSWORD: &str = "/password";

/// A route as pages link it: relative to the page, so that it holds under an issuer's path.
fn relative(route: &'static str) -> &'static str {
    route.trim_start_matches('/')
}

/// How long the sign-in form (and its CSRF cookie) stays usable.
const FORM_LIFETIME_S: u64 = 3600;

/// What a code or a refresh token grants, sealed in the store.
#[derive(Clone, Serialize, Deserialize)]
struct GrantRecord {
    sub: String,
    upn: String,
    /// The name typed at sign-in (grants stored before it was kept have none).
    #[serde(default)]
    preferred_username: String,
    /// When the password expires (Unix seconds), as the directory warned at sign-in: each
    /// token issued from the grant (a refresh days later included) tells the time left then.
    #[serde(default)]
    password_expires_at: Option<i64>,
    name: String,
    email: String,
    groups: Vec<String>,
    amr: Vec<String>,
    lifetime_s: Option<u64>,
    auth_time: i64,
    scope: String,
    /// Codes only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
    /// Codes only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code_challenge: Option<String>,
}

impl GrantRecord {
    /// What `granted` grants, for `scope`; with a code's `nonce` and `code_challenge`.
    fn new(
        granted: Granted,
        scope: &str,
        nonce: Option<String>,
        code_challenge: Option<String>,
    ) -> Self {
        Self {
            sub: granted.subject.sub,
            upn: granted.subject.upn,
            preferred_username: granted.subject.preferred_username,
            password_expires_at: granted.subject.password_expires_in_s.map(|s| {
                granted
                    .auth_time
                    .saturating_add(i64::try_from(s).unwrap_or(i64::MAX))
            }),
            name: granted.subject.name,
            email: granted.subject.email,
            groups: granted.subject.groups,
            amr: granted.how.methods,
            lifetime_s: granted.how.lifetime.map(|l| l.as_secs()),
            auth_time: granted.auth_time,
            scope: scope.to_owned(),
            nonce,
            code_challenge,
        }
    }

    fn offline(&self) -> bool {
        self.scope.split(' ').any(|s| s == "offline_access")
    }

    fn subject(&self, tenant: &str) -> Subject {
        Subject {
            sub: self.sub.clone(),
            tenant: tenant.to_owned(),
            upn: self.upn.clone(),
            preferred_username: self.preferred_username.clone(),
            name: self.name.clone(),
            email: self.email.clone(),
            groups: self.groups.clone(),
            password_expires_in_s: self
                .password_expires_at
                .map(|at| u64::try_from(at.saturating_sub(passage_pki::unix_now())).unwrap_or(0)),
        }
    }

    fn authentication(&self) -> Authentication {
        Authentication {
            methods: self.amr.clone(),
            lifetime: self.lifetime_s.map(Duration::from_secs),
        }
    }
}

/// The provider's settings.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// The tenant every sign-in belongs to.
    pub tenant: String,
    /// How long an authorization code can be redeemed.
    pub code_lifetime: Duration,
    /// How long a refresh token family lives at most (rotation keeps the end).
    pub refresh_lifetime: Duration,
    /// Reverse proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// Origins of the registered redirect URIs: browser-based applications there may call the
    /// token, userinfo and revocation endpoints from their pages (CORS).
    pub cors_origins: Vec<String>,
}

/// The OpenID provider.
#[derive(Clone)]
pub struct Provider(Arc<Inner>);

struct Inner {
    /// Client secret verifications (Argon2) running at once, at most.
    verifications: Arc<tokio::sync::Semaphore>,
    service: Arc<SignInService>,
    issuer: Arc<TokenIssuer>,
    clients: Clients,
    store: Store,
    settings: ProviderSettings,
}

impl Provider {
    /// A provider signing users in through `service`, issuing with `issuer`, keeping codes and
    /// refresh tokens in `store` (which seals what they grant).
    pub fn new(
        service: Arc<SignInService>,
        issuer: Arc<TokenIssuer>,
        clients: Clients,
        store: Store,
        settings: ProviderSettings,
    ) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self(Arc::new(Inner {
            verifications: Arc::new(tokio::sync::Semaphore::new(cores)),
            service,
            issuer,
            clients,
            store,
            settings,
        }))
    }

    /// The provider's routes (discovery and the JWKS are served by [`crate::http`]).
    pub fn routes(&self) -> Router {
        Router::new()
            .route(
                discovery::AUTHORIZE,
                get(authorize_page).post(authorize_submit),
            )
            .route(MFA, axum::routing::post(mfa_submit))
            .route(PASSWORD, axum::routing::post(password_submit))
            .route(
                discovery::TOKEN,
                axum::routing::post(token_endpoint).options(preflight),
            )
            .route(
                discovery::USERINFO,
                get(userinfo).post(userinfo).options(preflight),
            )
            .route(
                discovery::REVOKE,
                axum::routing::post(revoke).options(preflight),
            )
            .route(discovery::INTROSPECT, axum::routing::post(introspect))
            .route(discovery::LOGOUT, get(logout).post(logout_form))
            .route(
                pages::STYLESHEET_PATH,
                get(|| async {
                    (
                        [
                            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
                            (header::CACHE_CONTROL, "public, max-age=3600"),
                        ],
                        pages::STYLESHEET,
                    )
                }),
            )
            .with_state(self.clone())
    }
}

// ---------------------------------------------------------------------------------------------
// The browser pages
// ---------------------------------------------------------------------------------------------

async fn authorize_page(
    State(provider): State<Provider>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let params = parse_form(uri.query().unwrap_or("").as_bytes());
    let strings = strings_for(&headers, None);
    match authorize::parse(&params, &provider.0.clients) {
        Ok(request) => {
            let strings = strings_for(&headers, request.ui_locales.as_deref());
            let csrf = csrf::new_token();
            let username = request.login_hint.clone().unwrap_or_default();
            provider.sign_in_page(&request, strings, &csrf, &username, None, StatusCode::OK)
        }
        Err(err) => provider.authorize_error(err, strings),
    }
}

/// The scope of the gRPC API's tokens, with the refresh token it asked for.
const GRPC_OFFLINE_SCOPE: &str = "openid profile email offline_access";

/// The token endpoint's answer (RFC 6749 §5.1, OpenID Connect Core §3.1.3.3).
fn token_body(tokens: &IssuedTokens, scope: &str) -> serde_json::Value {
    serde_json::json!({
        "access_token": tokens.access_token,
        "token_type": "Bearer",
        "expires_in": tokens.expires_in.as_secs(),
        "id_token": tokens.id_token,
        "scope": scope,
    })
}

/// A posted page's form: its own fields, and the authorization request it carries, once the
/// CSRF token matched its cookie.
struct PostedForm {
    fields: Vec<Option<String>>,
    request: AuthorizationRequest,
    strings: &'static Strings,
    csrf_token: String,
}

impl Provider {
    /// Takes `own` fields out of the posted `body` (credentials never reach the parser of the
    /// authorization request), parses the rest as the request it carries, and checks the CSRF
    /// token against its cookie; or the page that refuses it.
    fn posted_form(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        own: &[&str],
    ) -> Result<PostedForm, Box<Response>> {
        let mut form = parse_form(body);
        let fields = own.iter().map(|name| take(&mut form, name)).collect();
        let form_csrf = take(&mut form, "csrf");
        let request = authorize::parse(&form, &self.0.clients)
            .map_err(|err| Box::new(self.authorize_error(err, strings_for(headers, None))))?;
        let strings = strings_for(headers, request.ui_locales.as_deref());
        if !csrf::matches(
            cookie(headers, csrf::COOKIE).as_deref(),
            form_csrf.as_deref(),
        ) {
            tracing::info!(client_id = %request.client_id, "a sign-in form without a matching CSRF token was refused");
            return Err(Box::new(page_response(
                StatusCode::FORBIDDEN,
                pages::error_page(strings, strings.message(Message::FormExpired)),
                None,
            )));
        }
        Ok(PostedForm {
            fields,
            request,
            strings,
            csrf_token: form_csrf.unwrap_or_default(),
        })
    }
}

async fn authorize_submit(
    State(provider): State<Provider>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let PostedForm {
        mut fields,
        request,
        strings,
        csrf_token,
    } = match provider.posted_form(&headers, &body, &["username", "password"]) {
        Ok(posted) => posted,
        Err(refused) => return *refused,
    };
    let password = fields[1].take().unwrap_or_default();
    let username = fields[0].take().unwrap_or_default();
    let client_ip = provider.client_ip(peer, &headers);
    let signed = provider
        .0
        .service
        .sign_in_as(
            SignInRequest {
                username: username.clone(),
                password,
                client_id: request.client_id.clone(),
                client_ip: client_ip.to_string(),
                offline_access: false,
            },
            ClientType::Browser,
            None,
        )
        .await;
    match signed {
        // The password is right but must change, and the tenant lets users change it here.
        Err(SignInError::Refused(
            ValidationOutcome::PasswordExpired | ValidationOutcome::PasswordMustChange,
        )) if provider.0.service.password_writeback() => provider.change_password_page(
            &request,
            strings,
            &csrf_token,
            &username,
            Message::ChangeNeeded,
        ),
        signed => {
            provider
                .continue_sign_in(&request, strings, &csrf_token, &username, signed)
                .await
        }
    }
}

/// The password-change form: the current password again and the new one twice; on success
/// the sign-in goes on with the new password (a second factor, then the code).
async fn password_submit(
    State(provider): State<Provider>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let PostedForm {
        mut fields,
        request,
        strings,
        csrf_token,
    } = match provider.posted_form(
        &headers,
        &body,
        &[
            "username",
            "old_password",
            "new_password",
            "confirm_password",
        ],
    ) {
        Ok(posted) => posted,
        Err(refused) => return *refused,
    };
    let confirm = fields[3].take().unwrap_or_default();
    let new_password = fields[2].take().unwrap_or_default();
    let old_password = fields[1].take().unwrap_or_default();
    let username = fields[0].take().unwrap_or_default();
    if new_password != confirm {
        return provider.change_password_page(
            &request,
            strings,
            &csrf_token,
            &username,
            Message::PasswordsDiffer,
        );
    }
    let client_ip = provider.client_ip(peer, &headers);
    let changed = provider
        .0
        .service
        .change_password_as(
            ChangePasswordRequest {
                username: username.clone(),
                old_password,
                new_password,
                client_id: request.client_id.clone(),
                client_ip: client_ip.to_string(),
                offline_access: false,
            },
            ClientType::Browser,
            None,
        )
        .await;
    match changed {
        Err(SignInError::PasswordRejected(_)) => provider.change_password_page(
            &request,
            strings,
            &csrf_token,
            &username,
            Message::NewPasswordRejected,
        ),
        signed => {
            provider
                .continue_sign_in(&request, strings, &csrf_token, &username, signed)
                .await
        }
    }
}

async fn mfa_submit(
    State(provider): State<Provider>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let PostedForm {
        mut fields,
        request,
        strings,
        csrf_token,
    } = match provider.posted_form(&headers, &body, &["code", "mfa_challenge"]) {
        Ok(posted) => posted,
        Err(refused) => return *refused,
    };
    let code = fields[0].take().unwrap_or_default();
    let challenge = fields[1].take().unwrap_or_default();
    let client_ip = provider.client_ip(peer, &headers);
    let completed = provider
        .0
        .service
        .complete_mfa_as(CompleteMfaRequest {
            mfa_challenge: challenge.clone(),
            code,
            client_id: request.client_id.clone(),
            client_ip: client_ip.to_string(),
            offline_access: false,
        })
        .await;
    match completed {
        Ok(granted) => provider.redirect_with_code(&request, granted).await,
        // A wrong code leaves the challenge open: ask again.
        Err(err) if err.code() == ErrorCode::MfaCodeInvalid => provider.mfa_page(
            &request,
            strings,
            &csrf_token,
            &challenge,
            Some(Message::MfaWrongCode),
        ),
        // Otherwise the challenge is over: back to the password.
        Err(err) => {
            let (status, message) = page_message(&err);
            provider.sign_in_page(&request, strings, &csrf_token, "", Some(message), status)
        }
    }
}

impl Provider {
    /// The client's address: the TCP peer, or, when the peer is a trusted reverse proxy, the
    /// last address in `X-Forwarded-For` that is not one of the trusted proxies.
    fn client_ip(&self, peer: Peer, headers: &HeaderMap) -> IpAddr {
        let trusted = |ip: IpAddr| {
            self.0
                .settings
                .trusted_proxies
                .iter()
                .any(|c| c.contains(ip))
        };
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        forwarded_client(peer.0.ip(), &hops, trusted)
    }

    fn sign_in_page(
        &self,
        request: &AuthorizationRequest,
        strings: &'static Strings,
        csrf_token: &str,
        username: &str,
        error: Option<Message>,
        status: StatusCode,
    ) -> Response {
        let hidden = request.to_params();
        let client = self.client(&request.client_id);
        let html = pages::sign_in(&pages::SignInPage {
            strings,
            action: relative(discovery::AUTHORIZE),
            client_name: client_name(client),
            hidden: &hidden,
            csrf: csrf_token,
            username,
            error,
        });
        page_with_csrf(status, html, &request.redirect_uri, csrf_token)
    }

    fn mfa_page(
        &self,
        request: &AuthorizationRequest,
        strings: &'static Strings,
        csrf_token: &str,
        challenge: &str,
        error: Option<Message>,
    ) -> Response {
        let mut hidden = request.to_params();
        hidden.push(("mfa_challenge", challenge.to_owned()));
        let client = self.client(&request.client_id);
        let html = pages::mfa(&pages::MfaPage {
            strings,
            action: relative(MFA),
            client_name: client_name(client),
            hidden: &hidden,
            csrf: csrf_token,
            error,
        });
        page_with_csrf(StatusCode::OK, html, &request.redirect_uri, csrf_token)
    }

    /// Where a sign-in's result takes the browser: back to the application with a code, on
    /// to the second factor, or to the sign-in page again with what went wrong.
    async fn continue_sign_in(
        &self,
        request: &AuthorizationRequest,
        strings: &'static Strings,
        csrf_token: &str,
        username: &str,
        signed: Result<Signed, SignInError>,
    ) -> Response {
        match signed {
            Ok(Signed::Granted(granted)) => self.redirect_with_code(request, *granted).await,
            Ok(Signed::Challenge { handle, .. }) => {
                self.mfa_page(request, strings, csrf_token, &handle, None)
            }
            Err(err) => {
                let (status, message) = page_message(&err);
                self.sign_in_page(
                    request,
                    strings,
                    csrf_token,
                    username,
                    Some(message),
                    status,
                )
            }
        }
    }

    fn change_password_page(
        &self,
        request: &AuthorizationRequest,
        strings: &'static Strings,
        csrf_token: &str,
        username: &str,
        message: Message,
    ) -> Response {
        let mut hidden = request.to_params();
        hidden.push(("username", username.to_owned()));
        let client = self.client(&request.client_id);
        let html = pages::change_password(&pages::ChangePasswordPage {
            strings,
            action: relative(PASSWORD),
            client_name: client_name(client),
            hidden: &hidden,
            csrf: csrf_token,
            message,
        });
        page_with_csrf(StatusCode::OK, html, &request.redirect_uri, csrf_token)
    }

    fn client(&self, id: &str) -> Option<&Client> {
        self.0.clients.get(id)
    }

    /// An authorization request that cannot go on: shown on Passage's page when the redirect
    /// URI is not to be trusted, else sent back to the application.
    fn authorize_error(&self, err: AuthorizeError, strings: &'static Strings) -> Response {
        match err {
            AuthorizeError::NoRedirect { message } => {
                tracing::info!(%message, "authorization request refused");
                page_response(
                    StatusCode::BAD_REQUEST,
                    pages::error_page(strings, &message),
                    None,
                )
            }
            AuthorizeError::Redirect(redirect) => {
                tracing::info!(error = redirect.error, description = %redirect.description, "authorization request refused; sent back to the application");
                see_other(&redirect.location(self.0.issuer.issuer()))
            }
        }
    }

    /// A granted sign-in: a single-use code, and back to the application with it.
    async fn redirect_with_code(
        &self,
        request: &AuthorizationRequest,
        granted: Granted,
    ) -> Response {
        let record = GrantRecord::new(
            granted,
            &request.scope,
            request.nonce.clone(),
            request.code_challenge.clone(),
        );
        let code = opaque_token();
        let code_digest = digest(&code);
        let stored = match serde_json::to_vec(&record) {
            Ok(payload) => {
                self.0
                    .store
                    .create_authorization_code(&NewCode {
                        digest: &code_digest,
                        tenant: &self.0.settings.tenant,
                        client_id: &request.client_id,
                        redirect_uri: &request.redirect_uri,
                        expires_at: passage_pki::unix_now()
                            + self.0.settings.code_lifetime.as_secs() as i64,
                        payload: &payload,
                    })
                    .await
            }
            Err(err) => {
                tracing::error!(error = %err, "encoding an authorization code failed");
                return internal_page();
            }
        };
        if let Err(err) = stored {
            tracing::error!(error = %err, "storing an authorization code failed");
            return internal_page();
        }
        let mut response = see_other(&authorize::success_location(
            &request.redirect_uri,
            &code,
            request.state.as_deref(),
            self.0.issuer.issuer(),
        ));
        if let Ok(value) = HeaderValue::from_str(&csrf::clear_cookie()) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
        response
    }
}

/// What the sign-in page says about a refusal, and with which status.
///
/// The page never tells whether a username exists. A directory's lockout does: AD (`775`) and
/// ppolicy answer "locked" whatever the password typed, so it reads as a wrong password here
/// (the sign-in log keeps the real code). Smart lockout counts unknown usernames too, so
/// saying it is safe.
fn page_message(err: &SignInError) -> (StatusCode, Message) {
    let message = match err.code() {
        ErrorCode::InvalidCredentials
        | ErrorCode::AccountLocked
        | ErrorCode::UnknownDomain
        | ErrorCode::InvalidRequest
        | ErrorCode::UnknownClient => Message::InvalidCredentials,
        ErrorCode::SmartLockout | ErrorCode::MfaLocked => Message::LockedOut,
        ErrorCode::Throttled => return (StatusCode::TOO_MANY_REQUESTS, Message::Throttled),
        ErrorCode::BlockedByPolicy => Message::Blocked,
        ErrorCode::PasswordExpired => Message::PasswordExpired,
        ErrorCode::PasswordMustChange => Message::MustChangePassword,
        ErrorCode::AccountDisabled | ErrorCode::AccountExpired => Message::AccountDisabled,
        ErrorCode::PasswordRejected => Message::NewPasswordRejected,
        ErrorCode::WritebackDisabled => Message::PasswordExpired,
        ErrorCode::MfaNotEnrolled => Message::MfaNotEnrolled,
        ErrorCode::MfaCodeInvalid => Message::MfaWrongCode,
        ErrorCode::MfaChallengeEnded | ErrorCode::MfaChallengeInvalid => Message::MfaEnded,
        ErrorCode::NoAgentAvailable
        | ErrorCode::AgentTimeout
        | ErrorCode::AgentLost
        | ErrorCode::DirectoryUnavailable
        | ErrorCode::AgentRejected
        | ErrorCode::AnswerNotAuthentic => {
            return (StatusCode::SERVICE_UNAVAILABLE, Message::Unavailable);
        }
        _ => return (StatusCode::INTERNAL_SERVER_ERROR, Message::Generic),
    };
    (StatusCode::OK, message)
}

// ---------------------------------------------------------------------------------------------
// The token endpoint
// ---------------------------------------------------------------------------------------------

async fn token_endpoint(
    State(provider): State<Provider>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = parse_form(&body);
    let response = match provider.token(&headers, &form).await {
        Ok(body) => no_store(Json(body).into_response()),
        Err(err) => token_error(err),
    };
    provider.cors(&headers, response)
}

/// A CORS preflight for the endpoints browser-based applications call.
async fn preflight(State(provider): State<Provider>, headers: HeaderMap) -> Response {
    let Some(origin) = provider.allowed_origin(&headers) else {
        return StatusCode::FORBIDDEN.into_response();
    };
    let mut response = StatusCode::NO_CONTENT.into_response();
    let answer = response.headers_mut();
    answer.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    answer.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST"),
    );
    answer.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type"),
    );
    answer.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    answer.insert(header::VARY, HeaderValue::from_static("origin"));
    response
}

impl Provider {
    /// The request's `Origin`, when it is the origin of a registered redirect URI.
    fn allowed_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        self.0
            .settings
            .cors_origins
            .iter()
            .any(|allowed| allowed == text)
            .then(|| origin.clone())
    }

    /// `response`, readable by the page of an allowed origin that sent the request.
    fn cors(&self, headers: &HeaderMap, mut response: Response) -> Response {
        if let Some(origin) = self.allowed_origin(headers) {
            let answer = response.headers_mut();
            answer.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            answer.insert(header::VARY, HeaderValue::from_static("origin"));
        }
        response
    }
}

impl Provider {
    /// The calling client, authenticated (Argon2 verification of its secret runs on the
    /// blocking pool, off the request threads).
    async fn authenticate(
        &self,
        headers: &HeaderMap,
        form: &[(String, String)],
    ) -> Result<Client, TokenError> {
        let provider = self.clone();
        let authorization = authorization(headers).map(str::to_owned);
        let form = form.to_vec();
        // Argon2 costs memory and a core: a few at once, whoever sends secrets.
        let Ok(_permit) = Arc::clone(&self.0.verifications).acquire_owned().await else {
            return Err(TokenError::server_error("client authentication failed"));
        };
        tokio::task::spawn_blocking(move || {
            token::authenticate_client(&provider.0.clients, authorization.as_deref(), &form)
                .cloned()
        })
        .await
        .unwrap_or_else(|_| Err(TokenError::server_error("client authentication failed")))
    }

    async fn token(
        &self,
        headers: &HeaderMap,
        form: &[(String, String)],
    ) -> Result<serde_json::Value, TokenError> {
        let client = self.authenticate(headers, form).await?;
        let client = &client;
        let grant = token::parse_grant(form)?;
        let now = passage_pki::unix_now();
        match grant {
            Grant::AuthorizationCode {
                code,
                redirect_uri,
                code_verifier,
            } => {
                let family = opaque_token();
                let redemption = self
                    .0
                    .store
                    .redeem_authorization_code(&digest(&code), &family, now)
                    .await
                    .map_err(|err| self.store_failed(err))?;
                let (code_client, code_redirect, payload) = match redemption {
                    CodeRedemption::Redeemed {
                        client_id,
                        redirect_uri,
                        payload,
                    } => (client_id, redirect_uri, payload),
                    CodeRedemption::AlreadyUsed { family_id } => {
                        // A code used twice was stolen or replayed: what the first use issued
                        // is revoked (RFC 6749 §4.1.2).
                        if let Some(family_id) = family_id {
                            let revoked = self
                                .0
                                .store
                                .revoke_refresh_family(&family_id, now)
                                .await
                                .map_err(|err| self.store_failed(err))?;
                            tracing::warn!(client_id = %client.id, revoked, "an authorization code was presented twice; the tokens it gave were revoked");
                        }
                        return Err(TokenError::invalid_grant("the code was already used"));
                    }
                    CodeRedemption::Unknown => {
                        return Err(TokenError::invalid_grant(
                            "the code is unknown or has expired",
                        ));
                    }
                };
                if code_client != client.id {
                    return Err(TokenError::invalid_grant(
                        "the code was issued to another client",
                    ));
                }
                if code_redirect != redirect_uri {
                    return Err(TokenError::invalid_grant(
                        "redirect_uri is not the one of the authorization request",
                    ));
                }
                let record: GrantRecord = serde_json::from_slice(payload.expose())
                    .map_err(|_| TokenError::invalid_grant("the code does not hold a grant"))?;
                match (&record.code_challenge, &code_verifier) {
                    (Some(challenge), Some(verifier)) if pkce::verify_s256(verifier, challenge) => {
                    }
                    (Some(_), _) => {
                        return Err(TokenError::invalid_grant(
                            "code_verifier does not match the code_challenge",
                        ));
                    }
                    (None, Some(_)) => {
                        return Err(TokenError::invalid_grant(
                            "code_verifier given, but the authorization request had no code_challenge",
                        ));
                    }
                    (None, None) => {}
                }
                self.issue(client, &record, record.nonce.as_deref(), Some(&family), now)
                    .await
            }
            Grant::RefreshToken {
                refresh_token,
                scope,
            } => {
                let (tokens, record, next) = self
                    .refresh(client, &refresh_token, scope.as_deref(), now)
                    .await?;
                let mut body = token_body(&tokens, &record.scope);
                body["refresh_token"] = next.into();
                Ok(body)
            }
        }
    }

    /// Spends `presented`, a refresh token of `client`, for new tokens of its grant (narrowed
    /// to `scope`): the tokens, the grant, and the refresh token that replaces it.
    async fn refresh(
        &self,
        client: &Client,
        presented: &str,
        scope: Option<&str>,
        now: i64,
    ) -> Result<(IssuedTokens, GrantRecord, String), TokenError> {
        let old = digest(presented);
        // The token must be this client's, and the scope asked for within its grant, before
        // it is spent. A token no longer active goes straight to the rotation, whatever the
        // scope asked for: that is where a reused one revokes its family.
        let info = self
            .0
            .store
            .refresh_token(&old, now)
            .await
            .map_err(|err| self.store_failed(err))?;
        let (mut record, active): (GrantRecord, bool) = match info {
            Some(info) if info.client_id == client.id => (
                serde_json::from_slice(info.payload.expose()).map_err(|_| {
                    TokenError::invalid_grant("the refresh token does not hold a grant")
                })?,
                info.active,
            ),
            _ => return Err(TokenError::invalid_grant("unknown refresh token")),
        };
        let narrowed = match active {
            true => Some(token::narrow_scope(&record.scope, scope)?),
            false => None,
        };
        let next = opaque_token();
        let rotation = self
            .0
            .store
            .rotate_refresh_token(&old, &digest(&next), now)
            .await
            .map_err(|err| self.store_failed(err))?;
        match rotation {
            RefreshRotation::Rotated { .. } => {
                // Only an active token rotates, and its scope was checked above.
                record.scope = match narrowed {
                    Some(narrowed) => narrowed,
                    None => token::narrow_scope(&record.scope, scope)?,
                };
                let tokens = self.tokens(client, &record, None)?;
                Ok((tokens, record, next))
            }
            RefreshRotation::Reused { family_id, .. } => {
                tracing::warn!(client_id = %client.id, family = %short(&family_id), "a rotated refresh token was presented again: its whole family is revoked");
                Err(TokenError::invalid_grant(
                    "the refresh token was already used",
                ))
            }
            RefreshRotation::Revoked => {
                Err(TokenError::invalid_grant("the refresh token was revoked"))
            }
            RefreshRotation::Unknown => Err(TokenError::invalid_grant("unknown refresh token")),
        }
    }

    /// The token response of a redeemed code: tokens, and a refresh token when the client
    /// asked for `offline_access`.
    async fn issue(
        &self,
        client: &Client,
        record: &GrantRecord,
        nonce: Option<&str>,
        family: Option<&str>,
        now: i64,
    ) -> Result<serde_json::Value, TokenError> {
        let tokens = self.tokens(client, record, nonce)?;
        let mut body = token_body(&tokens, &record.scope);
        if let (true, Some(family)) = (record.offline(), family) {
            body["refresh_token"] = self
                .new_family(&client.id, record, family, now)
                .await?
                .into();
        }
        Ok(body)
    }

    /// The first refresh token of a sign-in's family `family`: it keeps what `record`
    /// grants, without a code's single-use parts.
    async fn new_family(
        &self,
        client_id: &str,
        record: &GrantRecord,
        family: &str,
        now: i64,
    ) -> Result<String, TokenError> {
        let refresh = opaque_token();
        let kept = GrantRecord {
            nonce: None,
            code_challenge: None,
            ..record.clone()
        };
        let payload = serde_json::to_vec(&kept)
            .map_err(|_| TokenError::server_error("encoding the refresh token failed"))?;
        self.0
            .store
            .create_refresh_token(
                &NewRefreshToken {
                    digest: &digest(&refresh),
                    family_id: family,
                    tenant: &self.0.settings.tenant,
                    client_id,
                    user_key: &record.upn.to_lowercase(),
                    // A policy's session lifetime bounds the sign-in, refreshes included.
                    expires_at: now
                        + record
                            .lifetime_s
                            .map_or(self.0.settings.refresh_lifetime.as_secs(), |policy| {
                                policy.min(self.0.settings.refresh_lifetime.as_secs())
                            }) as i64,
                    payload: &payload,
                },
                now,
            )
            .await
            .map_err(|err| self.store_failed(err))?;
        Ok(refresh)
    }

    /// The gRPC API's `offline_access`: a refresh token for a grant `Gateway.SignIn` or
    /// `CompleteMfa` just gave.
    pub async fn grpc_refresh_token(&self, granted: &Granted) -> Result<String, TokenError> {
        let record = GrantRecord::new(granted.clone(), GRPC_OFFLINE_SCOPE, None, None);
        let family = opaque_token();
        self.new_family(
            &granted.client_id,
            &record,
            &family,
            passage_pki::unix_now(),
        )
        .await
    }

    /// `Gateway.Refresh`: spends `presented`, a refresh token of `client_id`, for new tokens
    /// and the refresh token that replaces it.
    pub async fn grpc_refresh(
        &self,
        client_id: &str,
        client_secret: &str,
        presented: &str,
    ) -> Result<(IssuedTokens, String), TokenError> {
        let client = self
            .0
            .clients
            .get(client_id)
            .ok_or_else(|| TokenError::invalid_grant("unknown refresh token"))?;
        // A confidential client proves itself, as at the token endpoint (RFC 6749 §6).
        if !client.is_public() {
            let form = [
                ("client_id".to_owned(), client_id.to_owned()),
                ("client_secret".to_owned(), client_secret.to_owned()),
            ];
            self.authenticate(&HeaderMap::new(), &form).await?;
        }
        let (tokens, _, next) = self
            .refresh(client, presented, None, passage_pki::unix_now())
            .await?;
        Ok((tokens, next))
    }

    fn tokens(
        &self,
        client: &Client,
        record: &GrantRecord,
        nonce: Option<&str>,
    ) -> Result<IssuedTokens, TokenError> {
        self.0
            .issuer
            .issue_for(
                &record.subject(&self.0.settings.tenant),
                &client.id,
                &record.authentication(),
                &TokenRequest {
                    scope: &record.scope,
                    nonce,
                    auth_time: Some(record.auth_time.max(0) as u64),
                },
            )
            .map_err(|err| {
                tracing::error!(error = %err, "issuing tokens failed");
                TokenError::server_error("issuing tokens failed")
            })
    }

    fn store_failed(&self, err: passage_store::StoreError) -> TokenError {
        tracing::error!(error = %err, "the store failed at the token endpoint");
        TokenError::server_error("the store failed")
    }
}

// ---------------------------------------------------------------------------------------------
// Userinfo, revocation, introspection, logout
// ---------------------------------------------------------------------------------------------

async fn userinfo(State(provider): State<Provider>, headers: HeaderMap) -> Response {
    let response = userinfo_answer(&provider, &headers);
    provider.cors(&headers, response)
}

fn userinfo_answer(provider: &Provider, headers: &HeaderMap) -> Response {
    let token = authorization(headers)
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|token| !token.is_empty());
    let Some(token) = token else {
        return bearer_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request",
            "an access token is required",
        );
    };
    match provider.0.issuer.verify_own_access_token(token) {
        Ok(claims) => {
            let mut body = serde_json::json!({
                "sub": claims.sub,
                "upn": claims.upn,
                "preferred_username": claims.upn,
                "tid": claims.tid,
            });
            if !claims.name.is_empty() {
                body["name"] = claims.name.into();
            }
            if !claims.email.is_empty() {
                body["email"] = claims.email.into();
            }
            if !claims.groups.is_empty() {
                body["groups"] = claims.groups.into();
            }
            no_store(Json(body).into_response())
        }
        Err(err) => {
            tracing::debug!(error = %err, "userinfo: access token refused");
            bearer_error(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the access token is not valid",
            )
        }
    }
}

async fn revoke(State(provider): State<Provider>, headers: HeaderMap, body: Bytes) -> Response {
    let response = revoke_answer(&provider, &headers, &body).await;
    provider.cors(&headers, response)
}

async fn revoke_answer(provider: &Provider, headers: &HeaderMap, body: &[u8]) -> Response {
    let form = parse_form(body);
    let client = match provider.authenticate(headers, &form).await {
        Ok(client) => client,
        Err(err) => return token_error(err),
    };
    let Some(presented) = form
        .iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.as_str())
    else {
        return token_error(TokenError::invalid_request("token is required"));
    };
    let now = passage_pki::unix_now();
    let store = &provider.0.store;
    // A refresh token of this client ends its family. A valid access token — any client's:
    // it is self-contained and stays valid until it expires — cannot be revoked, and the
    // client is told so rather than led to believe it was (RFC 7009 §2.2.1). Anything else
    // (unknown, expired, another client's refresh token) is answered as a success (§2.2).
    match store.refresh_token(&digest(presented), now).await {
        Ok(Some(info)) if info.client_id == client.id => {
            if let Err(err) = store.revoke_refresh_family(&info.family_id, now).await {
                tracing::error!(error = %err, "revoking a refresh token failed");
                return token_error(TokenError::server_error("the store failed"));
            }
            tracing::info!(client_id = %client.id, "refresh token family revoked");
        }
        Ok(None) if provider.0.issuer.verify_own_access_token(presented).is_ok() => {
            return token_error(TokenError::unsupported_token_type(
                "access tokens cannot be revoked: they stay valid until they expire; revoke the refresh token",
            ));
        }
        Ok(_) => {}
        Err(err) => {
            tracing::error!(error = %err, "revocation: the store failed");
            return token_error(TokenError::server_error("the store failed"));
        }
    }
    no_store(StatusCode::OK.into_response())
}

async fn introspect(State(provider): State<Provider>, headers: HeaderMap, body: Bytes) -> Response {
    let form = parse_form(&body);
    let client = match provider.authenticate(&headers, &form).await {
        Ok(client) => client,
        Err(err) => return token_error(err),
    };
    let Some(presented) = form
        .iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.as_str())
    else {
        return token_error(TokenError::invalid_request("token is required"));
    };
    // Only a client that proves itself learns about tokens (RFC 7662 §4): a public client's
    // id is no secret.
    if client.is_public() {
        return token_error(TokenError::invalid_client(
            authorization(&headers).is_some(),
        ));
    }
    let inactive = || no_store(Json(serde_json::json!({ "active": false })).into_response());
    // An access token: any authenticated client may ask (resource servers introspect tokens
    // issued to the applications that call them).
    if let Ok(claims) = provider.0.issuer.verify_own_access_token(presented) {
        return no_store(
            Json(serde_json::json!({
                "active": true,
                "token_type": "Bearer",
                "scope": claims.scope,
                "client_id": claims.client_id,
                "username": claims.upn,
                "sub": claims.sub,
                "aud": claims.aud,
                "iss": claims.iss,
                "exp": claims.exp,
                "iat": claims.iat,
                "nbf": claims.nbf,
                "jti": claims.jti,
            }))
            .into_response(),
        );
    }
    // A refresh token: only the client it was issued to learns anything about it.
    let now = passage_pki::unix_now();
    match provider
        .0
        .store
        .refresh_token(&digest(presented), now)
        .await
    {
        Ok(Some(info)) if info.active && info.client_id == client.id => {
            let Ok(record) = serde_json::from_slice::<GrantRecord>(info.payload.expose()) else {
                return inactive();
            };
            no_store(
                Json(serde_json::json!({
                    "active": true,
                    "token_type": "refresh_token",
                    "scope": record.scope,
                    "client_id": info.client_id,
                    "sub": record.sub,
                    "username": record.upn,
                    "iss": provider.0.issuer.issuer(),
                    "exp": info.expires_at,
                    "iat": info.created_at,
                }))
                .into_response(),
            )
        }
        Ok(_) => inactive(),
        Err(err) => {
            tracing::error!(error = %err, "introspection: the store failed");
            token_error(TokenError::server_error("the store failed"))
        }
    }
}

async fn logout(State(provider): State<Provider>, headers: HeaderMap, uri: Uri) -> Response {
    let params = parse_form(uri.query().unwrap_or("").as_bytes());
    end_session(&provider, &headers, &params).await
}

/// RP-initiated logout by a form post (OpenID Connect RP-Initiated Logout §2 allows both).
async fn logout_form(
    State(provider): State<Provider>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    end_session(&provider, &headers, &parse_form(&body)).await
}

async fn end_session(
    provider: &Provider,
    headers: &HeaderMap,
    params: &[(String, String)],
) -> Response {
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let strings = strings_for(headers, get("ui_locales").as_deref());
    let hint = get("id_token_hint");
    let mut client_id = get("client_id");
    let claims = match hint.as_deref() {
        Some(hint) => match provider
            .0
            .issuer
            .verify_id_token_hint(hint, client_id.as_deref())
        {
            Ok(claims) => Some(claims),
            Err(err) => {
                tracing::info!(error = %err, "logout: id_token_hint refused");
                return page_response(
                    StatusCode::BAD_REQUEST,
                    pages::error_page(strings, strings.message(Message::LogoutRefused)),
                    None,
                );
            }
        },
        None => None,
    };
    if let Some(claims) = &claims {
        client_id.get_or_insert_with(|| claims.aud.clone());
    }
    let client = client_id
        .as_deref()
        .and_then(|id| provider.0.clients.get(id));
    let target = get("post_logout_redirect_uri");
    // Only a registered URI of a known client is followed.
    let redirect = match (&target, client) {
        (Some(uri), Some(client)) if client.post_logout_uri_registered(uri) => Some(uri.clone()),
        (Some(_), _) => {
            return page_response(
                StatusCode::BAD_REQUEST,
                pages::error_page(strings, strings.message(Message::LogoutRefused)),
                None,
            );
        }
        (None, _) => None,
    };
    if let (Some(claims), Some(client)) = (&claims, client) {
        let now = passage_pki::unix_now();
        match provider
            .0
            .store
            .revoke_refresh_tokens_of(
                &provider.0.settings.tenant,
                Some(&client.id),
                &claims.upn.to_lowercase(),
                now,
            )
            .await
        {
            Ok(revoked) => {
                tracing::info!(client_id = %client.id, revoked, "signed out: refresh tokens revoked")
            }
            Err(err) => {
                tracing::error!(error = %err, "logout: the store failed");
                return internal_page();
            }
        }
    }
    match redirect {
        Some(uri) => {
            let mut location = uri;
            if let Some(state) = get("state") {
                let query: String = form_urlencoded::Serializer::new(String::new())
                    .append_pair("state", &state)
                    .finish();
                location.push(if location.contains('?') { '&' } else { '?' });
                location.push_str(&query);
            }
            see_other(&location)
        }
        None => page_response(StatusCode::OK, pages::signed_out(strings), None),
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The browser's address behind `peer`: from the right of `X-Forwarded-For`'s `hops`, each
/// trusted proxy names who called it. It stops at the first address not of a trusted proxy —
/// or at an entry that is no address, rather than skip it into what the client wrote itself.
fn forwarded_client(peer: IpAddr, hops: &[&str], trusted: impl Fn(IpAddr) -> bool) -> IpAddr {
    let mut ip = peer.to_canonical();
    for hop in hops.iter().rev() {
        if !trusted(ip) {
            break;
        }
        match parse_hop(hop) {
            Some(hop) => ip = hop,
            None => break,
        }
    }
    ip
}

/// An `X-Forwarded-For` entry: an address, possibly with a port (`203.0.113.7:4711`,
/// `[2001:db8::1]:4711`), as some proxies write it.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    hop.parse::<SocketAddr>()
        .ok()
        .map(|addr| addr.ip().to_canonical())
}

fn parse_form(bytes: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(bytes).into_owned().collect()
}

/// Removes `name` from `form` and returns its (last) value.
fn take(form: &mut Vec<(String, String)>, name: &str) -> Option<String> {
    let mut value = None;
    form.retain_mut(|(k, v)| {
        if k == name {
            value = Some(std::mem::take(v));
            false
        } else {
            true
        }
    });
    value
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn strings_for(headers: &HeaderMap, ui_locales: Option<&str>) -> &'static Strings {
    let accept = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok());
    pages::choose(ui_locales, accept)
}

fn client_name(client: Option<&Client>) -> &str {
    match client {
        Some(client) if !client.name.is_empty() => &client.name,
        Some(client) => &client.id,
        None => "",
    }
}

/// The first characters of an identifier, for logs.
fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// An HTML page with the headers every Passage page has: no framing, no caching, no
/// referrer, and a policy that allows only Passage's own stylesheet and forms. `form_target`
/// is the origin a form's answer may redirect to (browsers hold redirects after a form post
/// to `form-action`).
fn page_response(status: StatusCode, html: String, form_target: Option<&str>) -> Response {
    let form_action = match form_target {
        Some(origin) => format!("'self' {origin}"),
        None => "'self'".to_owned(),
    };
    let csp = format!(
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action {form_action}; \
         frame-ancestors 'none'; base-uri 'none'"
    );
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    no_store(response)
}

/// A sign-in or MFA page, with its CSRF cookie.
fn page_with_csrf(
    status: StatusCode,
    html: String,
    redirect_uri: &str,
    csrf_token: &str,
) -> Response {
    let mut response = page_response(status, html, origin_of(redirect_uri).as_deref());
    if let Ok(value) = HeaderValue::from_str(&csrf::set_cookie(csrf_token, FORM_LIFETIME_S)) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// The origin of a redirect URI as CSP writes it (`https://app.example.com:8443`, or the
/// scheme alone for a native app's `com.example.app:/callback`).
pub fn origin_of(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once(':')?;
    match rest.strip_prefix("//") {
        Some(authority) => {
            let end = authority.find(['/', '?', '#']).unwrap_or(authority.len());
            Some(format!("{scheme}://{}", &authority[..end]))
        }
        None => Some(format!("{scheme}:")),
    }
}

fn see_other(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(value) => {
            let mut response = StatusCode::SEE_OTHER.into_response();
            response.headers_mut().insert(header::LOCATION, value);
            no_store(response)
        }
        Err(_) => internal_page(),
    }
}

fn internal_page() -> Response {
    let strings = pages::choose(None, None);
    page_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        pages::error_page(strings, strings.message(Message::Generic)),
        None,
    )
}

fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

fn token_error(err: TokenError) -> Response {
    let status = StatusCode::from_u16(err.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = (status, Json(err.body())).into_response();
    if err.basic_challenge {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"passage\""),
        );
    }
    no_store(response)
}

fn bearer_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut response = (
        status,
        Json(serde_json::json!({ "error": error, "error_description": description })),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&format!(
        "Bearer error=\"{error}\", error_description=\"{description}\""
    )) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    no_store(response)
}

/// The `acr` values the provider may put in tokens.
pub const ACR_VALUES: [&str; 2] = [ACR_PASSWORD, ACR_MFA];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_may_redirect_to_the_application_origin_only() {
        assert_eq!(
            origin_of("https://app.example.com:8443/cb?x=1").as_deref(),
            Some("https://app.example.com:8443")
        );
        assert_eq!(
            origin_of("http://localhost:3000/login/generic_oauth").as_deref(),
            Some("http://localhost:3000")
        );
        assert_eq!(
            origin_of("com.example.app:/callback").as_deref(),
            Some("com.example.app:")
        );
    }

    #[test]
    fn credentials_are_taken_out_of_the_form() {
        let mut form = parse_form(b"username=ada%40example.com&password=p%26ss&client_id=app");
        assert_eq!(take(&mut form, "password").as_deref(), Some("p&ss"));
        assert_eq!(
            take(&mut form, "username").as_deref(),
            Some("ada@example.com")
        );
        assert_eq!(form, vec![("client_id".to_owned(), "app".to_owned())]);
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-passage-csrf-x=2; __Host-passage-csrf=3"),
        );
        assert_eq!(
            cookie(&headers, "__Host-passage-csrf").as_deref(),
            Some("3")
        );
        assert_eq!(cookie(&headers, "b"), None);
    }

    #[test]
    fn only_trusted_proxies_name_the_client() {
        let proxy = |ip: IpAddr| ip.to_string().starts_with("10.");
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        // Not from a proxy: the header is the client's own words.
        assert_eq!(
            forwarded_client(ip("203.0.113.9"), &["198.51.100.1"], proxy),
            ip("203.0.113.9")
        );
        // Through two trusted proxies; what the client wrote further left is ignored.
        assert_eq!(
            forwarded_client(
                ip("10.0.0.2"),
                &["192.0.2.66", "203.0.113.7:4711", "10.0.0.1"],
                proxy
            ),
            ip("203.0.113.7")
        );
        // An entry that is no address stops the walk at the last trusted hop.
        assert_eq!(
            forwarded_client(ip("10.0.0.2"), &["192.0.2.66", "unknown"], proxy),
            ip("10.0.0.2")
        );
        assert_eq!(
            forwarded_client(ip("10.0.0.2"), &["[2001:db8::1]:443"], proxy),
            ip("2001:db8::1")
        );
    }
}

//! The gateway: Passage's public sign-in API.
//!
//! * [`signin`]: `Gateway.SignIn` — input checks, routing to a connector group, sealing the
//!   password to two random healthy agents, the dispatcher call, tokens, the sign-in log.
//! * [`keyset`]: the cached public keys of each connector group's healthy agents.
//! * [`http`]: OIDC discovery and the JWKS over HTTP, so relying parties can verify tokens.
//! * [`oidc`]: the OpenID provider — browser sign-in page, token endpoint, refresh tokens,
//!   userinfo, revocation, introspection, logout.
//! * [`signing_keys`]: the token signing keys every replica shares through the store.
//! * [`client`]: small helpers for callers (CLI, tests) to fetch the JWKS.

pub mod access;
pub mod admin;
pub mod client;
pub mod dispatchers;
pub mod http;
pub mod keyset;
pub mod oidc;
pub mod readiness;
pub mod routing;
pub mod signin;
pub mod signin_log;
pub mod signing_keys;
pub mod tls;

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use passage_proto::v1::{gateway_admin_server::GatewayAdminServer, gateway_server::GatewayServer};
use passage_tokens::TokenIssuer;
use passage_transport::{ClientTls, ServerTls, TransportError};
use serde::Deserialize;
use tonic::transport::server::TcpIncoming;

use crate::{
    keyset::{KeySetCache, KeyVerifier},
    signin::{GatewayService, SignInService},
};

/// Gateway configuration (TOML).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Where gRPC clients call `Gateway.SignIn`.
    #[serde(default = "default_grpc_listen")]
    pub grpc_listen: SocketAddr,
    /// Where OIDC discovery and the JWKS are served over HTTP.
    #[serde(default = "default_http_listen")]
    pub http_listen: SocketAddr,
    /// Where Prometheus scrapes `GET /metrics` (plain HTTP; an admin address, not the
    /// Internet). Off when absent.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// The issuer (`iss`) and base URL of discovery; default `http(s)://<http_listen>`, which is
    /// refused when `http_listen` is an unspecified address (`0.0.0.0`, `::`).
    #[serde(default)]
    pub issuer: Option<String>,
    /// The dispatcher's gateway-facing URL (`https://dispatcher:8444`). Every address its host
    /// resolves to is a replica: calls are spread over them, and one that cannot be reached
    /// is passed over.
    pub dispatcher_url: String,
    /// How often the dispatcher's host name is resolved again, in seconds.
    #[serde(default = "default_dispatcher_resolve_interval_s")]
    pub dispatcher_resolve_interval_s: u64,
    /// Name servers for the dispatcher's name (`ip` or `ip:port`); default the system's.
    #[serde(default)]
    pub dispatcher_name_servers: Vec<String>,
    /// TLS towards the dispatcher.
    #[serde(default)]
    pub dispatcher_tls: Option<ClientTls>,
    /// TLS for both listeners (gRPC and HTTP).
    #[serde(default)]
    pub tls: Option<ServerTls>,
    /// Tenant of every sign-in at this gateway.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Which connector group serves which username domains (exact, or `*.suffix`) and NetBIOS
    /// domains (`CORP\user`). Without any, the domain itself (lower-cased) names the group.
    #[serde(default)]
    pub connector_groups: Vec<ConnectorGroupRoute>,
    /// Whether users may change their password through `Gateway.ChangePassword` (password
    /// writeback to the directory, by the agent). Off: the change is refused (`PSG50141`) and
    /// expired or must-change passwords are changed the organisation's way.
    #[serde(default)]
    pub password_writeback: bool,
    /// The connector group where bare usernames (no `@domain`, no `DOMAIN\`) are looked up;
    /// without it they are refused (`PSG50034`).
    #[serde(default)]
    pub default_connector_group: Option<String>,
    /// Applications allowed to sign users in; tokens are issued with the client id as audience.
    #[serde(default)]
    pub clients: Vec<ClientRegistration>,
    /// PKCS#8 DER P-256 key signing tokens; created (mode 0600) when missing.
    pub signing_key_file: PathBuf,
    /// Token lifetime in seconds.
    #[serde(default = "default_token_lifetime_s")]
    pub token_lifetime_s: u64,
    /// How long a sealed password stays valid, in seconds.
    #[serde(default = "default_envelope_lifetime_s")]
    pub envelope_lifetime_s: u64,
    /// How long the agents' key set is cached, in milliseconds.
    #[serde(default = "default_key_cache_ttl_ms")]
    pub key_cache_ttl_ms: u64,
    /// Deadline of one dispatcher call, in milliseconds.
    #[serde(default = "default_validation_timeout_ms")]
    pub validation_timeout_ms: u64,
    /// Serve plaintext gRPC and dial `http://` dispatchers. Development only.
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// The shared store. With it (production trust), passwords are sealed only to agent keys
    /// whose certificate chains to the tenant CA and still stands in the store; a gateway
    /// without one refuses to start unless `insecure_plaintext` (development trust: any key the
    /// dispatcher offers).
    #[serde(default)]
    pub store_url: Option<String>,
    /// How long a certificate replaced by a renewal stays trusted, in seconds (as the
    /// dispatcher's setting of the same name).
    #[serde(default = "default_certificate_switchover_s")]
    pub certificate_switchover_s: u64,
    /// Longest an HTTP client may take to send a request's headers, in milliseconds.
    #[serde(default = "default_http_header_read_timeout_ms")]
    pub http_header_read_timeout_ms: u64,
    /// Longest an HTTP request may take, in milliseconds (answered 408 past it).
    #[serde(default = "default_http_request_timeout_ms")]
    pub http_request_timeout_ms: u64,
    /// Most HTTP connections open at once; more are closed when accepted.
    #[serde(default = "default_http_max_connections")]
    pub http_max_connections: usize,
    /// Seal passwords only with envelope version 2 (hybrid X25519 + ML-KEM-768): agents whose
    /// certificate carries no hybrid key yet are not used, and the log names them.
    #[serde(default)]
    pub require_post_quantum: bool,
    /// Smart lockout (with a store): `[lockout]` threshold, durations, the directory's own
    /// threshold, what makes a network familiar.
    #[serde(default)]
    pub lockout: passage_lockout::LockoutConfig,
    /// Rate limits in front of sign-in: per client IP (as the application reports it) and per
    /// tenant, token buckets in this replica's memory.
    #[serde(default)]
    pub throttle: passage_lockout::throttle::ThrottleConfig,
    /// How long sign-ins are kept in the sign-in log, in days (0: no sign-in log).
    #[serde(default = "default_signin_log_days")]
    pub signin_log_days: u32,
    /// Most connector groups whose key sets are cached at once (least recently used are
    /// dropped), so sign-ins for endless unknown domains cannot grow the gateway.
    #[serde(default = "default_key_cache_max_groups")]
    pub key_cache_max_groups: usize,
    /// SHA-256 (hex) of each administrator token `GatewayAdmin` accepts (`passage admin
    /// token` makes one); none: administrative calls are refused.
    #[serde(default)]
    pub admin_token_sha256: Vec<String>,
    /// The conditional-access policy file (YAML, see docs/access.md); none: a right password
    /// is enough everywhere.
    #[serde(default)]
    pub policies_file: Option<PathBuf>,
    /// How often the policy file is read again for changes, in seconds.
    #[serde(default = "default_policies_reload_s")]
    pub policies_reload_s: u64,
    /// MFA: `[mfa]` issuer name, challenge lifetime, first sign-ins from trusted networks.
    #[serde(default)]
    pub mfa: access::MfaConfig,
    /// How often readiness is checked (a dispatcher and the store answer), in milliseconds.
    #[serde(default = "default_readiness_interval_ms")]
    pub readiness_interval_ms: u64,
    /// The store's key-encryption key (as the dispatchers'): TOTP secrets and MFA challenges
    /// are sealed with it. Required when policies can require MFA (except with
    /// `insecure_plaintext`, where they are kept in plaintext).
    #[serde(default)]
    pub store_encryption_key_file: Option<PathBuf>,
    /// The OpenID provider (with a store and its key-encryption key): `[oidc]` lifetimes of
    /// codes and refresh tokens, trusted reverse proxies, how often the shared signing keys
    /// are read.
    #[serde(default)]
    pub oidc: OidcConfig,
}

/// `[oidc]`: the browser sign-in and the token endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// How long an authorization code can be redeemed, in seconds.
    #[serde(default = "default_code_lifetime_s")]
    pub code_lifetime_s: u64,
    /// How long a refresh token family lives, in seconds, from the sign-in (rotation does not
    /// extend it): after it, the user signs in again.
    #[serde(default = "default_refresh_token_lifetime_s")]
    pub refresh_token_lifetime_s: u64,
    /// How often the signing keys are read from the store, in seconds (a rotation reaches
    /// every replica within it).
    #[serde(default = "default_signing_keys_reload_s")]
    pub signing_keys_reload_s: u64,
    /// Reverse proxies (addresses or CIDR ranges) whose `X-Forwarded-For` names the browser's
    /// address; from anyone else the header is ignored.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

impl Default for OidcConfig {
    fn default() -> Self {
        Self {
            code_lifetime_s: default_code_lifetime_s(),
            refresh_token_lifetime_s: default_refresh_token_lifetime_s(),
            signing_keys_reload_s: default_signing_keys_reload_s(),
            trusted_proxies: Vec::new(),
        }
    }
}

fn default_code_lifetime_s() -> u64 {
    60
}
fn default_refresh_token_lifetime_s() -> u64 {
    30 * 86_400
}
fn default_signing_keys_reload_s() -> u64 {
    30
}

fn default_policies_reload_s() -> u64 {
    2
}

fn default_readiness_interval_ms() -> u64 {
    5000
}

/// A connector group and the username domains it serves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorGroupRoute {
    /// The group's name, as agents announce it.
    pub name: String,
    /// Username suffixes (after `@`), matched case-insensitively: a domain, or `*.domain` for
    /// every subdomain of it.
    #[serde(default)]
    pub domains: Vec<String>,
    /// NetBIOS domain names (`CORP` for `CORP\alice`), matched case-insensitively.
    #[serde(default)]
    pub netbios_names: Vec<String>,
}

/// An application allowed to sign users in.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRegistration {
    /// The `client_id`; becomes the tokens' audience.
    pub id: String,
    /// Human-readable name, for logs and the sign-in page.
    #[serde(default)]
    pub name: String,
    /// Where the browser sign-in may send the user back to, matched exactly.
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// Where logging out may send the user back to, matched exactly.
    #[serde(default)]
    pub post_logout_redirect_uris: Vec<String>,
    /// Argon2id hash of the client secret (`passage client secret` makes one); none: a public
    /// client, which must use PKCE.
    #[serde(default)]
    pub secret_hash: Option<String>,
}

impl ClientRegistration {
    /// As the OpenID provider sees it.
    pub fn to_oidc(&self) -> passage_oidc::client::Client {
        passage_oidc::client::Client {
            id: self.id.clone(),
            name: self.name.clone(),
            redirect_uris: self.redirect_uris.clone(),
            post_logout_redirect_uris: self.post_logout_redirect_uris.clone(),
            secret_hash: self.secret_hash.clone(),
        }
    }
}

fn default_grpc_listen() -> SocketAddr {
    ([0, 0, 0, 0], 9443).into()
}
fn default_dispatcher_resolve_interval_s() -> u64 {
    30
}
fn default_http_listen() -> SocketAddr {
    ([0, 0, 0, 0], 8080).into()
}
fn default_tenant() -> String {
    "default".into()
}
fn default_token_lifetime_s() -> u64 {
    3600
}
fn default_envelope_lifetime_s() -> u64 {
    60
}
fn default_key_cache_ttl_ms() -> u64 {
    2_000
}
fn default_validation_timeout_ms() -> u64 {
    10_000
}
fn default_signin_log_days() -> u32 {
    30
}
fn default_http_header_read_timeout_ms() -> u64 {
    5_000
}
fn default_http_request_timeout_ms() -> u64 {
    10_000
}
fn default_http_max_connections() -> usize {
    1024
}
fn default_certificate_switchover_s() -> u64 {
    60
}
fn default_key_cache_max_groups() -> usize {
    1024
}

impl GatewayConfig {
    /// How long a retired signing key stays published: until every token it signed has
    /// expired, including those signed before this replica read the rotation.
    pub fn signing_key_keep_s(&self) -> i64 {
        (self.token_lifetime_s + self.oidc.signing_keys_reload_s) as i64
    }

    /// A development configuration: plaintext, one open client, everything else default.
    pub fn development(dispatcher_url: String, signing_key_file: PathBuf) -> Self {
        Self {
            grpc_listen: default_grpc_listen(),
            http_listen: default_http_listen(),
            metrics_listen: None,
            issuer: None,
            dispatcher_url,
            dispatcher_resolve_interval_s: default_dispatcher_resolve_interval_s(),
            dispatcher_name_servers: Vec::new(),
            dispatcher_tls: None,
            tls: None,
            tenant: default_tenant(),
            connector_groups: Vec::new(),
            default_connector_group: None,
            password_writeback: false,
            clients: Vec::new(),
            signing_key_file,
            token_lifetime_s: default_token_lifetime_s(),
            envelope_lifetime_s: default_envelope_lifetime_s(),
            key_cache_ttl_ms: default_key_cache_ttl_ms(),
            validation_timeout_ms: default_validation_timeout_ms(),
            insecure_plaintext: true,
            store_url: None,
            certificate_switchover_s: default_certificate_switchover_s(),
            http_header_read_timeout_ms: default_http_header_read_timeout_ms(),
            http_request_timeout_ms: default_http_request_timeout_ms(),
            http_max_connections: default_http_max_connections(),
            require_post_quantum: false,
            lockout: passage_lockout::LockoutConfig::default(),
            throttle: passage_lockout::throttle::ThrottleConfig::default(),
            signin_log_days: default_signin_log_days(),
            key_cache_max_groups: default_key_cache_max_groups(),
            admin_token_sha256: Vec::new(),
            policies_file: None,
            policies_reload_s: default_policies_reload_s(),
            readiness_interval_ms: default_readiness_interval_ms(),
            mfa: access::MfaConfig::default(),
            store_encryption_key_file: None,
            oidc: OidcConfig::default(),
        }
    }
}

/// Gateway start-up errors.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Listener or dispatcher transport problem.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Signing key problem.
    #[error(transparent)]
    Tokens(#[from] passage_tokens::TokenError),
    /// Configuration problem.
    #[error("configuration: {0}")]
    Config(String),
    /// The store could not be opened or read.
    #[error(transparent)]
    Store(#[from] passage_store::StoreError),
}

/// A gateway whose listeners are bound; [`BoundGateway::run`] serves.
pub struct BoundGateway {
    config: GatewayConfig,
    http_tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    verifier: Option<KeyVerifier>,
    /// The store (shared state: lockout, the sign-in log).
    store: Option<passage_store::Store>,
    /// The store sealing secrets with the key-encryption key (MFA secrets, codes, refresh
    /// tokens, signing keys); plaintext only with `insecure_plaintext`.
    sealing: Option<passage_store::Store>,
    issuer: Arc<TokenIssuer>,
    grpc_incoming: TcpIncoming,
    grpc_addr: SocketAddr,
    http_listener: tokio::net::TcpListener,
    http_addr: SocketAddr,
    metrics_listener: Option<(tokio::net::TcpListener, SocketAddr)>,
}

/// Loads the signing key and binds both listeners.
pub async fn bind(config: GatewayConfig) -> Result<BoundGateway, GatewayError> {
    passage_transport::server_builder(
        "gateway gRPC listener",
        config.tls.as_ref(),
        config.insecure_plaintext,
    )?;
    // Fail at start-up, not at the first sign-in, when the dispatcher URL is unusable.
    passage_transport::endpoint(
        &config.dispatcher_url,
        config.dispatcher_tls.as_ref(),
        config.insecure_plaintext,
    )?;
    config
        .lockout
        .validate()
        .map_err(|e| GatewayError::Config(e.to_string()))?;
    admin::AdminTokens::from_hex(&config.admin_token_sha256)
        .map_err(|e| GatewayError::Config(e.to_string()))?;
    if config.tenant.is_empty() {
        return Err(GatewayError::Config("tenant must not be empty".into()));
    }
    routing::Routes::new(
        &config.connector_groups,
        config.default_connector_group.as_deref(),
    )
    .map_err(|e| GatewayError::Config(format!("connector_groups: {e}")))?;
    if config.envelope_lifetime_s == 0 || config.envelope_lifetime_s > 300 {
        return Err(GatewayError::Config(
            "envelope_lifetime_s must be 1 to 300".into(),
        ));
    }
    let (store, verifier) = match &config.store_url {
        Some(url) => {
            let store = passage_store::Store::open(url).await?;
            match store.tenant_ca_certificate(&config.tenant).await? {
                Some(pem) => {
                    let ca = passage_pki::CaCertificate::from_pem(&config.tenant, &pem)
                        .map_err(|e| GatewayError::Config(e.to_string()))?;
                    tracing::info!(
                        tenant = %config.tenant,
                        "trust mode: production — passwords are sealed only to agents whose certificate the tenant CA issued and the store still trusts"
                    );
                    let verifier = KeyVerifier {
                        ca,
                        verifier: passage_pki::AgentVerifier::new(
                            store.clone(),
                            Duration::from_secs(config.certificate_switchover_s),
                        ),
                    };
                    (Some(store), Some(verifier))
                }
                // Development with a store for the shared state (the demo's OpenID provider).
                None if config.insecure_plaintext => {
                    tracing::warn!(
                        tenant = %config.tenant,
                        "trust mode: development — the tenant has no CA, so passwords are sealed to any key the dispatcher offers (never use this in production); the store keeps the shared state"
                    );
                    (Some(store), None)
                }
                None => {
                    return Err(GatewayError::Config(format!(
                        "tenant {} has no CA yet: create an enrolment token (passage agent token create) first",
                        config.tenant
                    )));
                }
            }
        }
        None if config.insecure_plaintext => {
            tracing::warn!(
                "trust mode: development — no store, so passwords are sealed to any key the dispatcher offers (never use this in production)"
            );
            (None, None)
        }
        None => {
            return Err(GatewayError::Config(
                "no store_url: without the store the gateway cannot tell which agent keys to trust \
                 and would seal passwords to any key the dispatcher offers. Set store_url (the \
                 dispatcher's store), or pass --insecure-plaintext for development"
                    .into(),
            ));
        }
    };
    // Secrets in the store are sealed with the key-encryption key (plaintext in development).
    let sealing = match (&store, &config.store_encryption_key_file) {
        (Some(store), Some(path)) => {
            let kek = passage_store::KeyEncryptionKey::from_file(path)
                .map_err(|e| GatewayError::Config(format!("store_encryption_key_file: {e}")))?;
            Some(
                store
                    .clone()
                    .with_key_protection(passage_store::KeyProtection::Encrypted(kek)),
            )
        }
        (Some(store), None) if config.insecure_plaintext => Some(
            store
                .clone()
                .with_key_protection(passage_store::KeyProtection::Plaintext),
        ),
        _ => None,
    };
    // Every replica signs with the store's key set; alone, with the key file.
    let (key, retired) = match &sealing {
        Some(sealing) => {
            signing_keys::load_or_create(
                sealing,
                &config.tenant,
                &config.signing_key_file,
                config.signing_key_keep_s(),
            )
            .await?
        }
        None => (
            passage_tokens::load_or_create_signing_key(&config.signing_key_file)?,
            Vec::new(),
        ),
    };
    let (grpc_incoming, grpc_addr) = passage_transport::bind(config.grpc_listen).await?;
    let (http_listener, http_addr) = passage_transport::bind_tcp(config.http_listen).await?;
    let metrics_listener = match config.metrics_listen {
        Some(listen) => Some(passage_transport::bind_tcp(listen).await?),
        None => None,
    };
    let http_tls = config
        .tls
        .as_ref()
        .map(|tls| tls::server_config(&tls.cert_file, &tls.key_file))
        .transpose()
        .map_err(|e| GatewayError::Config(format!("HTTP TLS: {e}")))?;
    let scheme = if http_tls.is_some() { "https" } else { "http" };
    // A default issuer is only the listener's own address: on 0.0.0.0 or :: that is no URL
    // anybody can reach, and every token would carry it.
    if config.issuer.is_none() && config.http_listen.ip().is_unspecified() {
        return Err(GatewayError::Config(format!(
            "issuer is required when http_listen is {} (every address): set issuer to the \
             public URL relying parties reach this gateway at, e.g. issuer = \"https://login.example.com\"",
            config.http_listen
        )));
    }
    // On loopback, `localhost`: browsers treat it as a secure context (the sign-in page's
    // secure cookies work on plain HTTP in development).
    let issuer_url = config.issuer.clone().unwrap_or_else(|| {
        if http_addr.ip().is_loopback() {
            format!("{scheme}://localhost:{}", http_addr.port())
        } else {
            format!("{scheme}://{http_addr}")
        }
    });
    let issuer = Arc::new(TokenIssuer::with_keys(
        issuer_url,
        key,
        retired,
        Duration::from_secs(config.token_lifetime_s),
    ));
    Ok(BoundGateway {
        config,
        http_tls,
        verifier,
        store,
        sealing,
        issuer,
        grpc_incoming,
        grpc_addr,
        http_listener,
        http_addr,
        metrics_listener,
    })
}

impl BoundGateway {
    /// Where gRPC clients call.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Where discovery and the JWKS are served.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where `/metrics` is served, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().map(|(_, addr)| *addr)
    }

    /// The token issuer URL.
    pub fn issuer_url(&self) -> &str {
        self.issuer.issuer()
    }

    /// Serves until `shutdown` resolves; calls in progress finish first.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), GatewayError> {
        let config = self.config;
        let dispatchers = dispatchers::Dispatchers::resolve(
            &config.dispatcher_url,
            config.dispatcher_tls.as_ref(),
            config.insecure_plaintext,
            &config.dispatcher_name_servers,
        )
        .await?;
        dispatchers.watch(Duration::from_secs(
            config.dispatcher_resolve_interval_s.max(1),
        ));
        // With a store (production trust): smart lockout and the sign-in log.
        let store = self.store.clone();
        let lockout = match &store {
            Some(store) if config.lockout.enabled => Some(
                passage_lockout::SmartLockout::new(
                    store.clone(),
                    config.lockout.clone(),
                    // A sign-in asks the dispatcher at most twice (a retry with a fresh key set).
                    Duration::from_millis(config.validation_timeout_ms.saturating_mul(2)),
                )
                .map_err(|e| GatewayError::Config(e.to_string()))?,
            ),
            _ => None,
        };
        let log_store = store.clone().filter(|_| config.signin_log_days > 0);
        if let Some(store) = store.clone() {
            tokio::spawn(prune_hourly(
                store,
                (config.signin_log_days > 0).then_some(i64::from(config.signin_log_days) * 86_400),
                config.signing_key_keep_s(),
            ));
        }
        let keys = Arc::new(KeySetCache::new(
            Arc::clone(&dispatchers),
            config.tenant.clone(),
            Duration::from_millis(config.key_cache_ttl_ms),
            config.key_cache_max_groups,
            self.verifier,
            config.require_post_quantum,
        ));
        // Conditional access: the policy file in force, read again when it changes.
        let policies = match &config.policies_file {
            Some(path) => access::Policies::load(path)
                .map_err(|e| GatewayError::Config(format!("policies_file: {e}")))?,
            None => access::Policies::none(),
        };
        policies.watch(Duration::from_secs(config.policies_reload_s.max(1)));
        // MFA: over the store, with secrets sealed by the key-encryption key.
        let second_factor = self
            .sealing
            .clone()
            .map(|sealing| access::SecondFactor::new(sealing, config.mfa.clone()));
        policies.set_mfa_available(second_factor.is_some());
        if second_factor.is_none() && policies.current().can_require_mfa() {
            return Err(GatewayError::Config(
                "policies_file has policies that require MFA: the gateway needs store_url and \
                 store_encryption_key_file (TOTP secrets are sealed with it)"
                    .into(),
            ));
        }
        let admin = admin::AdminService::new(
            admin::AdminTokens::from_hex(&config.admin_token_sha256)
                .map_err(|e| GatewayError::Config(e.to_string()))?,
            config.tenant.clone(),
            log_store.clone(),
            Arc::clone(&policies),
        );
        let mut registry = passage_metrics::registry("gateway", env!("CARGO_PKG_VERSION"));
        let metrics = passage_metrics::gateway::GatewayMetrics::register(&mut registry);
        let signin = Arc::new(SignInService::new(
            &config,
            Arc::clone(&dispatchers),
            keys,
            Arc::clone(&self.issuer),
            log_store,
            lockout,
            policies,
            second_factor,
            metrics,
        ));
        // The OpenID provider needs the store's sealing (codes, refresh tokens, keys).
        let mut key_sync = None;
        let provider = match &self.sealing {
            Some(sealing) => {
                let clients = passage_oidc::client::Clients::new(
                    config
                        .clients
                        .iter()
                        .map(ClientRegistration::to_oidc)
                        .collect(),
                )
                .map_err(|e| GatewayError::Config(format!("clients: {e}")))?;
                let trusted_proxies = config
                    .oidc
                    .trusted_proxies
                    .iter()
                    .map(|text| {
                        passage_policy::Cidr::parse(text)
                            .map(|(cidr, _)| cidr)
                            .map_err(|e| {
                                GatewayError::Config(format!("oidc.trusted_proxies: {text:?}: {e}"))
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let sync = signing_keys::KeySync::new(
                    sealing.clone(),
                    config.tenant.clone(),
                    Arc::clone(&self.issuer),
                    config.signing_key_keep_s(),
                );
                sync.watch(Duration::from_secs(
                    config.oidc.signing_keys_reload_s.max(1),
                ));
                key_sync = Some(sync);
                Some(oidc::Provider::new(
                    Arc::clone(&signin),
                    Arc::clone(&self.issuer),
                    clients,
                    sealing.clone(),
                    oidc::ProviderSettings {
                        tenant: config.tenant.clone(),
                        code_lifetime: Duration::from_secs(config.oidc.code_lifetime_s.max(1)),
                        refresh_lifetime: Duration::from_secs(
                            config.oidc.refresh_token_lifetime_s.max(1),
                        ),
                        trusted_proxies,
                        cors_origins: config
                            .clients
                            .iter()
                            .flat_map(|client| &client.redirect_uris)
                            .filter_map(|uri| oidc::origin_of(uri))
                            .filter(|origin| origin.starts_with("http"))
                            .collect(),
                    },
                ))
            }
            None => {
                tracing::info!(
                    "OpenID provider off: it needs store_url and store_encryption_key_file (codes, refresh tokens and signing keys are kept sealed in the store)"
                );
                None
            }
        };
        let service = GatewayService::from_shared(Arc::clone(&signin), provider.clone());

        let (health_reporter, health) = passage_transport::health();
        health_reporter
            .set_serving::<GatewayServer<GatewayService>>()
            .await;
        // Liveness for probes: serving as long as the process answers, whatever readiness says.
        health_reporter
            .set_service_status("liveness", tonic_health::ServingStatus::Serving)
            .await;

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let grpc = passage_transport::server_builder(
            "gateway gRPC listener",
            config.tls.as_ref(),
            config.insecure_plaintext,
        )?
        .add_service(health)
        .add_service(passage_transport::reflection()?)
        .add_service(passage_transport::reflection_v1alpha()?)
        .add_service(GatewayServer::new(service))
        .add_service(GatewayAdminServer::new(admin))
        .serve_with_incoming_shutdown(self.grpc_incoming, stopped(stop_rx.clone()));
        let readiness = readiness::Readiness::new();
        readiness.watch(
            dispatchers,
            store.clone(),
            health_reporter.clone(),
            Duration::from_millis(config.readiness_interval_ms.max(100)),
            stop_rx.clone(),
        );
        if let Some((listener, _)) = self.metrics_listener {
            tokio::spawn(passage_metrics::serve(
                listener,
                Arc::new(registry),
                stopped(stop_rx.clone()),
            ));
        }
        let router = http::router(Arc::clone(&self.issuer), key_sync, readiness, provider);
        let http_stopped = stopped(stop_rx);
        let limits = http::HttpLimits {
            header_read_timeout: Duration::from_millis(config.http_header_read_timeout_ms),
            request_timeout: Duration::from_millis(config.http_request_timeout_ms),
            max_connections: config.http_max_connections.max(1),
            max_body_bytes: 64 * 1024,
        };
        let http: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = match self.http_tls {
            Some(tls) => {
                let listener = tls::TlsListener::new(self.http_listener, tls)
                    .map_err(|e| GatewayError::Config(format!("HTTP listener: {e}")))?;
                Box::pin(http::serve(listener, router, limits, http_stopped))
            }
            None => Box::pin(http::serve(
                self.http_listener,
                router,
                limits,
                http_stopped,
            )),
        };
        tracing::info!(grpc = %self.grpc_addr, http = %self.http_addr, issuer = %self.issuer.issuer(), "gateway serving");
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down: finishing calls in progress");
            health_reporter
                .set_not_serving::<GatewayServer<GatewayService>>()
                .await;
            let _ = stop_tx.send(true);
        });
        let (grpc, ()) = tokio::join!(grpc, http);
        // Every call has finished: what they left to write goes to the store before the
        // process ends.
        signin.flush_writes(Duration::from_secs(10)).await;
        grpc.map_err(|err| GatewayError::Config(err.to_string()))?;
        Ok(())
    }
}

/// Hourly: deletes sign-ins older than `log_retention_s` (when the log is kept), MFA challenges
/// that expired over an hour ago, expired codes and refresh tokens, and retired signing keys
/// whose tokens have all expired.
async fn prune_hourly(
    store: passage_store::Store,
    log_retention_s: Option<i64>,
    signing_key_keep_s: i64,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(retention_s) = log_retention_s {
            match store
                .prune_signins(passage_pki::unix_now() - retention_s)
                .await
            {
                Ok(0) => {}
                Ok(pruned) => tracing::info!(pruned, "pruned the sign-in log"),
                Err(err) => tracing::warn!(error = %err, "pruning the sign-in log failed"),
            }
        }
        // MFA challenges expire in minutes; keep an hour of them for the record.
        match store
            .prune_mfa_challenges(passage_pki::unix_now() - 3600)
            .await
        {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "pruned expired MFA challenges"),
            Err(err) => tracing::warn!(error = %err, "pruning MFA challenges failed"),
        }
        let now = passage_pki::unix_now();
        match store.prune_oidc(now).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(
                pruned,
                "pruned expired authorization codes and refresh tokens"
            ),
            Err(err) => tracing::warn!(error = %err, "pruning codes and refresh tokens failed"),
        }
        // Past their drop_after by as long as this gateway keeps publishing a retired key.
        match store.prune_signing_keys(now - signing_key_keep_s).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "dropped retired signing keys"),
            Err(err) => tracing::warn!(error = %err, "dropping retired signing keys failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_example_parses() {
        let config: GatewayConfig =
            toml::from_str(include_str!("../../../docs/examples/gateway.toml"))
                .expect("example parses");
        assert_eq!(config.connector_groups[0].domains.len(), 2);
        assert_eq!(config.clients[0].id, "intranet");
    }
}

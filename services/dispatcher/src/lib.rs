//! The dispatcher: the cloud end of the agents' outbound streams.
//!
//! * [`registry`]: live agent streams (DashMap), in-flight counts, answer correlation.
//! * [`tunnel`]: `AgentTunnel.Connect`, where agents say hello and heartbeat.
//! * [`relay`]: `Dispatcher.Validate` and `ListAgentKeys` for the gateway — power-of-two-choices
//!   between the gateway's two candidates, retry on the other when a stream dies mid-request.
//!
//! The dispatcher only ever relays ciphertext: passwords are sealed by the gateway to agent
//! keys and opened by the agent.

pub mod enrolment;
pub mod registry;
pub mod relay;
pub mod tunnel;

use std::{future::Future, net::SocketAddr, path::PathBuf, pin::Pin, sync::Arc, time::Duration};

use std::collections::HashMap;

use passage_error_codes::ErrorCode;
use passage_proto::v1::{
    agent_enrolment_server::AgentEnrolmentServer, agent_tunnel_server::AgentTunnelServer,
    dispatcher_server::DispatcherServer,
};
use passage_store::{KeyEncryptionKey, KeyProtection, Store};
use passage_transport::{
    ServerTls, TransportError,
    tls::{self, ClientCas, TlsListener},
};
use serde::Deserialize;
use tonic::transport::server::TcpIncoming;

use crate::{
    enrolment::EnrolmentService,
    registry::AgentRegistry,
    relay::RelayService,
    tunnel::{AgentTrust, TunnelService},
};

/// Dispatcher configuration (TOML).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatcherConfig {
    /// Where agents connect (`AgentTunnel`).
    pub agent_listen: SocketAddr,
    /// Where gateways call (`Dispatcher`).
    pub api_listen: SocketAddr,
    /// Where Prometheus scrapes `GET /metrics` (plain HTTP; an admin address). Off when absent.
    pub metrics_listen: Option<SocketAddr>,
    /// With a store: how often it is checked, in milliseconds. While it does not answer, both
    /// listeners' gRPC health says NOT_SERVING (revocations and enrolment need it), so
    /// Kubernetes takes the replica out of its Services and gateways pass it over.
    pub readiness_interval_ms: u64,
    /// This replica's name in logs and welcomes (default: host name).
    pub dispatcher_id: Option<String>,
    /// How often agents must heartbeat, in milliseconds; three missed heartbeats drop the stream.
    pub heartbeat_interval_ms: u64,
    /// Longest a validation may wait for an agent, in milliseconds (a shorter gRPC deadline from
    /// the gateway wins).
    pub validation_timeout_ms: u64,
    /// On SIGTERM, how long to let in-flight validations finish, in milliseconds.
    pub drain_timeout_ms: u64,
    /// TLS for the agent listener (with `client_ca_file` for agent certificates).
    pub agent_tls: Option<ServerTls>,
    /// TLS for the gateway-facing listener.
    pub api_tls: Option<ServerTls>,
    /// Serve plaintext gRPC where no TLS is configured. Development only.
    pub insecure_plaintext: bool,
    /// The shared store (`sqlite://...` or `postgres://...`). With it, agents enrol and must
    /// connect with their certificate; without it (development), an agent's hello is believed.
    pub store_url: Option<String>,
    /// Tenants whose CAs are loaded (and created if missing) at start. Tenants created later
    /// (by `passage agent token create --tenant`) are picked up within `tenant_poll_ms`, or
    /// at once by the replica that enrols their first agent.
    pub tenants: Vec<String>,
    /// Lifetime of agent certificates issued at enrolment and renewal, in seconds.
    pub agent_certificate_lifetime_s: u64,
    /// Least time between two renewals in one connector group, in milliseconds, so a group's
    /// agents renew (and reconnect) one at a time.
    pub renewal_spacing_ms: u64,
    /// How often revocations are read from the store, in milliseconds.
    pub revocation_poll_ms: u64,
    /// How often new tenants are read from the store, in milliseconds.
    pub tenant_poll_ms: u64,
    /// File holding the key-encryption key (32 random bytes, base64; `passage store key
    /// create`) that tenant CA keys are encrypted with in the store. Required with a store
    /// unless `insecure_plaintext`; plaintext keys left from before are encrypted at start.
    pub store_encryption_key_file: Option<PathBuf>,
    /// How long a certificate replaced by a renewal stays trusted, in seconds. Agents reconnect
    /// with the new certificate at once; after this window the old one is refused everywhere
    /// and streams still using it are cut.
    pub certificate_switchover_s: u64,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            agent_listen: ([0, 0, 0, 0], 8443).into(),
            api_listen: ([0, 0, 0, 0], 8444).into(),
            metrics_listen: None,
            readiness_interval_ms: 5_000,
            dispatcher_id: None,
            heartbeat_interval_ms: 5_000,
            validation_timeout_ms: 10_000,
            drain_timeout_ms: 20_000,
            agent_tls: None,
            api_tls: None,
            insecure_plaintext: false,
            store_url: None,
            tenants: vec!["default".into()],
            agent_certificate_lifetime_s: 180 * 24 * 3600,
            renewal_spacing_ms: 10_000,
            revocation_poll_ms: 500,
            tenant_poll_ms: 5_000,
            certificate_switchover_s: 60,
            store_encryption_key_file: None,
        }
    }
}

/// Checks `store` every `every` until `stop` (draining: the drain has said NOT_SERVING for
/// good); while it does not answer, every reporter says NOT_SERVING (the server as a whole
/// and its services; `liveness` stays serving).
async fn watch_store(
    store: Store,
    reporters: Vec<tonic_health::server::HealthReporter>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut serving = true;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let answer = tokio::time::timeout(Duration::from_secs(2), store.ping()).await;
        let now = matches!(answer, Ok(Ok(())));
        if now == serving || *stop.borrow() {
            continue;
        }
        serving = now;
        match &answer {
            Ok(Ok(())) => tracing::info!("ready: the store answers again"),
            Ok(Err(err)) => tracing::warn!(error = %err, "not ready: the store does not answer"),
            Err(_) => tracing::warn!("not ready: the store does not answer in time"),
        }
        let status = match now {
            true => tonic_health::ServingStatus::Serving,
            false => tonic_health::ServingStatus::NotServing,
        };
        let services = [
            "",
            <DispatcherServer<RelayService> as tonic::server::NamedService>::NAME,
            <AgentTunnelServer<TunnelService> as tonic::server::NamedService>::NAME,
        ];
        for reporter in &reporters {
            for service in services {
                reporter.set_service_status(service, status).await;
            }
        }
    }
}

/// How the store keeps tenant CA keys: encrypted with the configured key-encryption key, or —
/// in development only — in plaintext.
fn key_protection(config: &DispatcherConfig) -> Result<KeyProtection, DispatcherError> {
    match (&config.store_encryption_key_file, config.insecure_plaintext) {
        (Some(path), _) => {
            let kek =
                KeyEncryptionKey::from_file(path).map_err(|e| DispatcherError::Store(e.into()))?;
            tracing::info!(fingerprint = %kek.fingerprint(), "tenant CA keys are encrypted at rest");
            Ok(KeyProtection::Encrypted(kek))
        }
        (None, true) => {
            tracing::warn!(
                "no store_encryption_key_file: tenant CA keys are stored in plaintext (development only)"
            );
            Ok(KeyProtection::Plaintext)
        }
        (None, false) => Err(DispatcherError::Config(
            "with a store, tenant CA keys are encrypted at rest: set store_encryption_key_file \
             (create the key with `passage store key create --out FILE`), or pass \
             --insecure-plaintext for development"
                .into(),
        )),
    }
}

/// A dispatcher whose listeners are bound; [`BoundDispatcher::run`] serves.
pub struct BoundDispatcher {
    config: DispatcherConfig,
    /// Whether gateways present certificates naming their tenants (checked per request).
    gateways_authenticated: bool,
    store: Option<Store>,
    trust: Option<Arc<AgentTrust>>,
    registry: Arc<AgentRegistry>,
    agent_listener: AgentListener,
    api_incoming: TcpIncoming,
    agent_addr: SocketAddr,
    api_addr: SocketAddr,
    metrics_listener: Option<(tokio::net::TcpListener, SocketAddr)>,
}

/// Dispatcher start-up errors.
#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    /// Listener or TLS problem.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] passage_store::StoreError),
    /// Configuration problem.
    #[error("configuration: {0}")]
    Config(String),
}

/// The agent listener: our own TLS acceptor (its client roots follow the tenants), or
/// plaintext for development.
enum AgentListener {
    Tls(tokio::net::TcpListener, Arc<tls::RustlsServerConfig>),
    Plaintext(TcpIncoming),
}

/// Binds both listeners (fails fast on missing TLS, an unusable store or a taken port).
pub async fn bind(config: DispatcherConfig) -> Result<BoundDispatcher, DispatcherError> {
    let extra_client_ca = match config
        .agent_tls
        .as_ref()
        .and_then(|tls| tls.client_ca_file.as_ref())
    {
        Some(path) => {
            Some(
                std::fs::read_to_string(path).map_err(|source| TransportError::Read {
                    path: path.clone(),
                    source,
                })?,
            )
        }
        None => None,
    };
    let (store, trust) = match &config.store_url {
        Some(url) => {
            let store = Store::open(url)
                .await?
                .with_key_protection(key_protection(&config)?);
            if config.store_encryption_key_file.is_some() {
                let encrypted = store.encrypt_plaintext_keys().await?;
                if encrypted > 0 {
                    tracing::info!(
                        encrypted,
                        "encrypted tenant CA keys that were stored in plaintext"
                    );
                }
            }
            let mut tenants = config.tenants.clone();
            tenants.extend(store.tenants().await?);
            tenants.sort();
            tenants.dedup();
            let mut cas = HashMap::new();
            for tenant in tenants {
                let ca = enrolment::tenant_ca(&store, &tenant)
                    .await
                    .map_err(|status| {
                        DispatcherError::Config(format!("tenant {tenant}: {}", status.message()))
                    })?;
                cas.insert(tenant, ca);
            }
            let trust = match &config.agent_tls {
                Some(_) => Some(Arc::new(AgentTrust::new(
                    store.clone(),
                    cas,
                    extra_client_ca.clone(),
                    Duration::from_secs(config.agent_certificate_lifetime_s),
                    Duration::from_millis(config.renewal_spacing_ms),
                    Duration::from_secs(config.certificate_switchover_s),
                )?)),
                None if config.insecure_plaintext => {
                    tracing::warn!(
                        "agent listener is plaintext: agent certificates are NOT checked (development only)"
                    );
                    None
                }
                None => return Err(TransportError::NoTls("agent listener").into()),
            };
            (Some(store), trust)
        }
        None => (None, None),
    };
    // Validate TLS material before binding anything.
    let agent_tls = match &config.agent_tls {
        Some(tls) => {
            // Without a store there are no tenant CAs: the operator's CA, if any, is required.
            let own_cas;
            let client_cas = match (&trust, &extra_client_ca) {
                (Some(trust), _) => Some(trust.client_cas()),
                (None, Some(pem)) => {
                    own_cas = ClientCas::new([pem.as_str()], true)?;
                    Some(&own_cas)
                }
                (None, None) => None,
            };
            Some(
                tls::server_config(&tls.cert_file, &tls.key_file, client_cas, &[b"h2"])
                    .map_err(|e| TransportError::Config(format!("agent listener: {e}")))?,
            )
        }
        None if config.insecure_plaintext => None,
        None => return Err(TransportError::NoTls("agent listener").into()),
    };
    passage_transport::server_builder(
        "api listener",
        config.api_tls.as_ref(),
        config.insecure_plaintext,
    )?;
    let gateways_authenticated = config
        .api_tls
        .as_ref()
        .is_some_and(|tls| tls.client_ca_file.is_some());
    // In production trust only gateways, each for its own tenants, may ask for keys and
    // validations: anyone else reaching the API would have a password oracle.
    if store.is_some() && !gateways_authenticated && !config.insecure_plaintext {
        return Err(DispatcherError::Config(
            "with a store (production trust) the gateway API requires mutual TLS: set \
             api_tls.client_ca_file to the services CA that issues gateway certificates \
             (passage gateway certificate issue), or pass --insecure-plaintext for development"
                .into(),
        ));
    }
    if !gateways_authenticated {
        tracing::warn!(
            "gateway API without client certificates: any caller may act for any tenant (development only)"
        );
    }
    let (agent_listener, agent_addr) = match agent_tls {
        Some(server_config) => {
            let (listener, addr) = passage_transport::bind_tcp(config.agent_listen).await?;
            (AgentListener::Tls(listener, server_config), addr)
        }
        None => {
            let (incoming, addr) = passage_transport::bind(config.agent_listen).await?;
            (AgentListener::Plaintext(incoming), addr)
        }
    };
    let (api_incoming, api_addr) = passage_transport::bind(config.api_listen).await?;
    let metrics_listener = match config.metrics_listen {
        Some(listen) => Some(passage_transport::bind_tcp(listen).await?),
        None => None,
    };
    Ok(BoundDispatcher {
        metrics_listener,
        gateways_authenticated,
        config,
        store,
        trust,
        registry: Arc::new(AgentRegistry::default()),
        agent_listener,
        api_incoming,
        agent_addr,
        api_addr,
    })
}

impl BoundDispatcher {
    /// Where agents connect.
    pub fn agent_addr(&self) -> SocketAddr {
        self.agent_addr
    }

    /// Where gateways call.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// Where `/metrics` is served, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().map(|(_, addr)| *addr)
    }

    /// The agent registry (for in-process inspection).
    pub fn registry(&self) -> Arc<AgentRegistry> {
        Arc::clone(&self.registry)
    }

    /// Serves until `shutdown` resolves, then drains: agents are told to stop sending here,
    /// in-flight validations get up to `drain_timeout_ms` to finish.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), TransportError> {
        let config = &self.config;
        let heartbeat = Duration::from_millis(config.heartbeat_interval_ms);
        let dispatcher_id = config.dispatcher_id.clone().unwrap_or_else(hostname);
        let tunnel = TunnelService::new(
            Arc::clone(&self.registry),
            dispatcher_id.clone(),
            heartbeat,
            self.trust.clone(),
        );
        let enrolment = self.store.clone().map(|store| {
            AgentEnrolmentServer::new(EnrolmentService::new(
                store,
                Duration::from_secs(config.agent_certificate_lifetime_s),
                self.trust.clone(),
            ))
        });
        if let Some(trust) = self.trust.clone() {
            tokio::spawn(watch_tenants(
                trust,
                Duration::from_millis(config.tenant_poll_ms),
            ));
        }
        if let Some(store) = self.store.clone() {
            tokio::spawn(watch_revocations(
                store.clone(),
                Arc::clone(&self.registry),
                Duration::from_millis(config.revocation_poll_ms),
                Duration::from_secs(config.certificate_switchover_s),
            ));
            tokio::spawn(report_connections(
                store,
                Arc::clone(&self.registry),
                dispatcher_id.clone(),
                heartbeat,
            ));
        }
        let mut registry = passage_metrics::registry("dispatcher", env!("CARGO_PKG_VERSION"));
        let agents = Arc::clone(&self.registry);
        let metrics = passage_metrics::dispatcher::DispatcherMetrics::register(
            &mut registry,
            Arc::new(move || agents.all().iter().map(|c| c.sample()).collect()),
        );
        let relay = RelayService::new(
            Arc::clone(&self.registry),
            Duration::from_millis(config.validation_timeout_ms),
            heartbeat * 3,
            self.gateways_authenticated,
            metrics,
        );

        let (agent_health_reporter, agent_health) = passage_transport::health();
        agent_health_reporter
            .set_serving::<AgentTunnelServer<TunnelService>>()
            .await;
        let (api_health_reporter, api_health) = passage_transport::health();
        api_health_reporter
            .set_serving::<DispatcherServer<RelayService>>()
            .await;

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        if let Some((listener, _)) = self.metrics_listener {
            tokio::spawn(passage_metrics::serve(
                listener,
                Arc::new(registry),
                stopped(stop_rx.clone()),
            ));
        }
        // Liveness for probes: serving as long as the process answers, whatever the store.
        for reporter in [&agent_health_reporter, &api_health_reporter] {
            reporter
                .set_service_status("liveness", tonic_health::ServingStatus::Serving)
                .await;
        }
        // Set when draining starts: readiness never comes back after that.
        let (draining_tx, draining_rx) = tokio::sync::watch::channel(false);
        if let Some(store) = self.store.clone() {
            tokio::spawn(watch_store(
                store,
                vec![agent_health_reporter.clone(), api_health_reporter.clone()],
                Duration::from_millis(config.readiness_interval_ms.max(100)),
                draining_rx,
            ));
        }
        let agent_router = passage_transport::plaintext_builder()
            .add_service(agent_health)
            .add_service(passage_transport::reflection()?)
            .add_service(passage_transport::reflection_v1alpha()?)
            .add_service(AgentTunnelServer::new(tunnel))
            .add_optional_service(enrolment);
        let agent_stopped = stopped(stop_rx.clone());
        let agent_server: Pin<
            Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>,
        > = match self.agent_listener {
            AgentListener::Tls(listener, server_config) => {
                let incoming = TlsListener::new(listener, server_config)
                    .map_err(|e| TransportError::Config(format!("agent listener: {e}")))?
                    .into_incoming();
                Box::pin(agent_router.serve_with_incoming_shutdown(incoming, agent_stopped))
            }
            AgentListener::Plaintext(incoming) => {
                Box::pin(agent_router.serve_with_incoming_shutdown(incoming, agent_stopped))
            }
        };
        let api_server = passage_transport::server_builder(
            "api listener",
            config.api_tls.as_ref(),
            config.insecure_plaintext,
        )?
        .add_service(api_health)
        .add_service(passage_transport::reflection()?)
        .add_service(passage_transport::reflection_v1alpha()?)
        .add_service(DispatcherServer::new(relay))
        .serve_with_incoming_shutdown(self.api_incoming, stopped(stop_rx));
        tracing::info!(%dispatcher_id, agents = %self.agent_addr, api = %self.api_addr, "dispatcher serving");

        let registry = Arc::clone(&self.registry);
        let drain_timeout = Duration::from_millis(config.drain_timeout_ms);
        let drain = async move {
            shutdown.await;
            let _ = draining_tx.send(true);
            tracing::info!("shutting down: draining agent streams");
            agent_health_reporter
                .set_not_serving::<AgentTunnelServer<TunnelService>>()
                .await;
            api_health_reporter
                .set_not_serving::<DispatcherServer<RelayService>>()
                .await;
            for connection in registry.all() {
                connection.drain("dispatcher shutting down").await;
            }
            let deadline = tokio::time::Instant::now() + drain_timeout;
            while registry.all().iter().any(|c| c.in_flight() > 0)
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = stop_tx.send(true);
        };
        let servers = async {
            tokio::try_join!(agent_server, api_server)
                .map_err(|err| TransportError::Config(err.to_string()))
        };
        tokio::pin!(servers);
        tokio::select! {
            result = &mut servers => result.map(|_| ()),
            () = drain => {
                // Long-lived agent streams may outlive the drain; give connections a moment to
                // close on their own, then stop regardless.
                let _ = tokio::time::timeout(Duration::from_secs(2), servers).await;
                Ok(())
            }
        }
    }
}

/// Picks up tenants created after start (by the CLI or another replica), so their agents can
/// connect without a restart.
async fn watch_tenants(trust: Arc<AgentTrust>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(err) = trust.learn_new_tenants().await {
            tracing::warn!(error = %err, "could not read new tenants from the store");
        }
    }
}

/// How far back each revocation poll looks before the previous one: revocation times come
/// from the clock of whoever revoked (the CLI, another replica).
const REVOCATION_CLOCK_SKEW_S: i64 = 120;

/// Cuts the streams of revoked agents, and the streams still using a certificate that a
/// renewal replaced more than `switchover` ago: reads the revocations and renewals made since
/// the previous read every `every` (they may be made by the CLI or another replica). An agent
/// revoked before this replica started never got a stream here: `Connect` checks trust.
async fn watch_revocations(
    store: Store,
    registry: Arc<AgentRegistry>,
    every: Duration,
    switchover: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut since = enrolment::unix_now() - REVOCATION_CLOCK_SKEW_S;
    let switchover = switchover.as_secs() as i64;
    loop {
        tick.tick().await;
        let polled_at = enrolment::unix_now();
        let revoked = match store.revoked_since(since).await {
            Ok(revoked) => revoked,
            Err(err) => {
                tracing::warn!(error = %err, "reading revocations failed");
                continue;
            }
        };
        since = polled_at - REVOCATION_CLOCK_SKEW_S;
        for agent_id in revoked {
            let status = ErrorCode::AgentRevoked.status(format!(
                "agent {agent_id} has been revoked; enrol the agent again with a new token"
            ));
            if registry.cut(&agent_id, status) {
                tracing::warn!(%agent_id, "revoked agent's stream cut");
            }
        }
        let superseded = match store
            .superseded_since(polled_at - switchover - REVOCATION_CLOCK_SKEW_S)
            .await
        {
            Ok(superseded) => superseded,
            Err(err) => {
                tracing::warn!(error = %err, "reading renewals failed");
                continue;
            }
        };
        for old in superseded {
            if polled_at < old.superseded_at + switchover {
                continue;
            }
            let stream = registry
                .get(&old.agent_id)
                .filter(|c| c.identity.cert_serial.as_deref() == Some(old.serial.as_str()));
            if let Some(stream) = stream {
                let status = ErrorCode::AgentRevoked
                    .status("this certificate was replaced by a renewal; enrol the agent again");
                // That stream only: the agent may have reconnected with its new certificate.
                if registry.cut_connection(&old.agent_id, stream.connection_id, status) {
                    tracing::warn!(agent_id = %old.agent_id, serial = %old.serial, "stream on a superseded certificate cut");
                }
            }
        }
    }
}

/// Reports this replica's agent streams to the store every `every`, for `passage agent list`.
async fn report_connections(
    store: Store,
    registry: Arc<AgentRegistry>,
    dispatcher_id: String,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = enrolment::unix_now();
        let connections: Vec<passage_store::AgentConnection> = registry
            .all()
            .iter()
            .map(|c| passage_store::AgentConnection {
                agent_id: c.identity.agent_id.clone(),
                dispatcher_id: dispatcher_id.clone(),
                in_flight: i64::from(c.in_flight()),
                last_heartbeat: now - c.silent_for().as_secs() as i64,
            })
            .collect();
        if let Err(err) = store.report_connections(&dispatcher_id, &connections).await {
            tracing::warn!(error = %err, "reporting agent connections failed");
        }
    }
}

/// The host name, for replica ids.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "dispatcher".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_example_parses() {
        let config: DispatcherConfig =
            toml::from_str(include_str!("../../../docs/examples/dispatcher.toml"))
                .expect("example parses");
        assert!(config.agent_tls.and_then(|t| t.client_ca_file).is_some());
        assert!(!config.insecure_plaintext);
    }
}

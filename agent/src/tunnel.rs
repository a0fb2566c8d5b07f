//! The agent's outbound streams: one per dispatcher address, reconnecting forever.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use passage_proto::v1::{
    AgentHello, ConnectRequest, Heartbeat, agent_tunnel_client::AgentTunnelClient, connect_request,
    connect_response,
};
use tokio::{
    sync::{Semaphore, mpsc, watch},
    task::JoinSet,
};
use tokio_stream::wrappers::ReceiverStream;

use passage_error_codes::ErrorCode;

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use passage_envelope::{AgentKey, HybridKey};
use passage_pki::{CertifiedAgent, agent_csr, pem_to_der};
use passage_proto::v1::{RenewRequest, RenewResponse};
use passage_transport::ClientIdentity;
use tokio::sync::oneshot;

use crate::{AgentConfig, Validator, state::AgentState};

/// Reconnect delays: from `INITIAL_BACKOFF`, doubling up to `MAX_BACKOFF`, with full jitter.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A stream that lived this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// Why a stream failed.
#[derive(Debug)]
struct StreamError {
    message: String,
    /// The dispatcher refused this agent in a way retrying cannot cure (revoked, certificate
    /// replaced or never issued, or no certificate where one is required).
    final_refusal: bool,
}

impl From<String> for StreamError {
    fn from(message: String) -> Self {
        Self {
            message,
            final_refusal: false,
        }
    }
}

impl From<&str> for StreamError {
    fn from(message: &str) -> Self {
        message.to_owned().into()
    }
}

impl StreamError {
    /// A refusal or cut by the dispatcher, classified by its Passage code.
    fn refused(context: &str, status: &tonic::Status, enrolled: bool) -> Self {
        let final_refusal = match ErrorCode::of(status) {
            Some(ErrorCode::AgentRevoked) => true,
            // Without a certificate, a dispatcher that requires one never accepts us.
            Some(ErrorCode::AgentNotTrusted) => !enrolled,
            _ => false,
        };
        Self {
            message: format!("{context}: {}", status.message()),
            final_refusal,
        }
    }
}

/// Why a stream ended.
#[derive(Debug)]
enum StreamEnd {
    /// The dispatcher asked us to leave; reconnect promptly (to another replica, usually).
    Drained,
    /// The certificate was renewed: reconnect at once with the new one.
    Renewed,
    /// The agent is shutting down.
    Shutdown,
}

/// Runs one stream per dispatcher in `config` until `shutdown` resolves; in-flight validations
/// finish before a stream closes.
pub async fn run(
    config: AgentConfig,
    state: AgentState,
    validator: Arc<Validator>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let capacity = Arc::new(Semaphore::new(config.capacity as usize));
    // Once enrolled, the certificate says who the agent is; the configuration only helps
    // before enrolment (development mode).
    let (tenant, connector_group) = match &state.certificate {
        Some((_, certified)) => {
            let id = &certified.identity;
            if id.tenant != config.tenant || id.connector_group != config.connector_group {
                tracing::warn!(
                    certificate_tenant = %id.tenant,
                    certificate_group = %id.connector_group,
                    "the configuration names another tenant or connector group than the certificate; the certificate wins"
                );
            }
            (id.tenant.clone(), id.connector_group.clone())
        }
        None => (config.tenant.clone(), config.connector_group.clone()),
    };
    let (generation, _) = watch::channel(0u64);
    let link = Arc::new(Link {
        hello: RwLock::new(AgentHello {
            agent_id: state.agent_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            tenant,
            connector_group,
            capacity: config.capacity,
            public_key_der: state.key.public_key_der().to_vec(),
            hostname: hostname(),
            hybrid_public_key: announced_hybrid_key(
                &state.key,
                state.certificate.as_ref().map(|(_, c)| c),
            ),
            // Set from the validator at each hello.
            directory_lockout_threshold: 0,
            directory_lockout_window_s: 0,
        }),
        identity: RwLock::new(state.client_identity()),
        certificate: RwLock::new(state.certificate.as_ref().map(|(_, c)| c.clone())),
        generation,
        live: Mutex::new(Vec::new()),
        pending_renewal: Mutex::new(None),
        config,
        validator,
        capacity,
        connected: Arc::new(AtomicUsize::new(0)),
        expected: Mutex::new(HashMap::new()),
    });
    // The directory's lockout policy is read before the first hello, so gateways know it
    // before the first sign-in (a directory that does not answer holds the start up for at
    // most a few seconds), then again periodically.
    if tokio::time::timeout(FIRST_POLICY_READ, link.validator.refresh_lockout_policy())
        .await
        .is_err()
    {
        tracing::warn!(
            "the directory's lockout policy was not read in time; reading it again later"
        );
    }
    let mut streams = JoinSet::new();
    if let Some(listen) = link.config.health_listen {
        let mut registry = passage_metrics::registry("agent", env!("CARGO_PKG_VERSION"));
        let observed = Arc::clone(&link);
        link.validator.metrics().register(
            &mut registry,
            Arc::new(move || {
                let directory = observed.validator.directory_health();
                passage_metrics::agent::AgentState {
                    streams: (
                        observed.connected.load(Ordering::Relaxed) as u32,
                        observed.expected_streams() as u32,
                    ),
                    directory_servers: (directory.servers_up, directory.servers_total),
                    directory_failovers: directory.failovers,
                    certificate_not_after: observed
                        .certificate
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .as_ref()
                        .map(|certified| certified.not_after),
                }
            }),
        );
        streams.spawn(serve_health(
            listen,
            state.agent_id.clone(),
            link.config.dispatchers.len(),
            Arc::clone(&link.connected),
            Arc::new(registry),
            stop_rx.clone(),
        ));
    }
    streams.spawn(keep_policy_read(Arc::clone(&link), stop_rx.clone()));
    for url in link.config.dispatchers.clone() {
        streams.spawn(follow_replicas(url, Arc::clone(&link), stop_rx.clone()));
    }
    if link
        .certificate
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .is_some()
    {
        streams.spawn(keep_renewed(Arc::clone(&link), stop_rx.clone()));
    }
    shutdown.await;
    tracing::info!("agent shutting down; finishing in-flight validations");
    let _ = stop_tx.send(true);
    while streams.join_next().await.is_some() {}
}

/// How long the start waits for the first read of the directory's lockout policy.
const FIRST_POLICY_READ: Duration = Duration::from_secs(10);

/// Reads the directory's lockout policy every `lockout_policy_refresh_s` until shutdown.
async fn keep_policy_read(link: Arc<Link>, mut stop: watch::Receiver<bool>) {
    let period = Duration::from_secs(link.config.lockout_policy_refresh_s);
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = stopped(&mut stop) => return,
        }
        tokio::select! {
            () = link.validator.refresh_lockout_policy() => {}
            () = stopped(&mut stop) => return,
        }
    }
}

/// What every stream of this agent shares.
struct Link {
    config: AgentConfig,
    /// The hello to send; its key changes on renewal.
    hello: RwLock<AgentHello>,
    /// The TLS client identity; changes on renewal.
    identity: RwLock<Option<ClientIdentity>>,
    /// What the current certificate says (none in development mode).
    certificate: RwLock<Option<CertifiedAgent>>,
    /// Bumped when the identity changes: every stream then reconnects with the new one.
    generation: watch::Sender<u64>,
    /// The senders of the streams welcomed and not ended, oldest first: renewals go over the
    /// newest.
    live: Mutex<Vec<mpsc::Sender<ConnectRequest>>>,
    /// Who waits for the answer to a renewal request.
    pending_renewal: Mutex<Option<oneshot::Sender<RenewResponse>>>,
    validator: Arc<Validator>,
    capacity: Arc<Semaphore>,
    /// Streams welcomed by a dispatcher and not ended since.
    connected: Arc<AtomicUsize>,
    /// Per dispatcher URL, the streams it should have: its replicas' addresses, or 1 when
    /// dialled by name.
    expected: Mutex<HashMap<String, usize>>,
}

impl Link {
    /// Streams the agent should hold: every replica resolved, one per URL dialled by name.
    fn expected_streams(&self) -> usize {
        lock(&self.expected).values().sum()
    }
}

/// Offers a welcomed stream's sender for renewal requests until dropped (a stream to a replica
/// that left must not be the one a renewal is sent over).
struct LiveStream<'a> {
    link: &'a Link,
    sender: mpsc::Sender<ConnectRequest>,
}

impl<'a> LiveStream<'a> {
    fn new(link: &'a Link, sender: &mpsc::Sender<ConnectRequest>) -> Self {
        lock(&link.live).push(sender.clone());
        Self {
            link,
            sender: sender.clone(),
        }
    }
}

impl Drop for LiveStream<'_> {
    fn drop(&mut self) {
        lock(&self.link.live).retain(|live| !live.same_channel(&self.sender));
    }
}

/// Counts a welcomed stream as connected until dropped (whichever way the stream ends).
struct ConnectedStream(Arc<AtomicUsize>);

impl ConnectedStream {
    fn new(connected: &Arc<AtomicUsize>) -> Self {
        connected.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(connected))
    }
}

impl Drop for ConnectedStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `GET /healthz` on `listen` (200 while a stream is connected, 503 otherwise) and
/// `GET /metrics` (Prometheus).
async fn serve_health(
    listen: std::net::SocketAddr,
    agent_id: String,
    configured: usize,
    connected: Arc<AtomicUsize>,
    metrics: Arc<passage_metrics::Registry>,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(%listen, error = %err, "the health endpoint cannot listen");
            return;
        }
    };
    tracing::info!(%listen, "health endpoint serving /healthz and /metrics");
    let router = passage_metrics::router(metrics).route(
        "/healthz",
        axum::routing::get(move || {
            let (agent_id, connected) = (agent_id.clone(), Arc::clone(&connected));
            async move {
                let streams = connected.load(Ordering::Relaxed);
                let status = if streams > 0 {
                    axum::http::StatusCode::OK
                } else {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                };
                let body = serde_json::json!({
                    "agent_id": agent_id,
                    "streams_connected": streams,
                    "dispatchers_configured": configured,
                });
                (status, axum::Json(body))
            }
        }),
    );
    let _ = axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })
        .await;
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Renews the certificate over a live stream once two-thirds of its lifetime have passed,
/// checking every `renew_check_interval_ms`; failures are retried at the next check.
async fn keep_renewed(link: Arc<Link>, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_millis(link.config.renew_check_interval_ms.max(100));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stopped(&mut stop) => return,
        }
        let due = link
            .certificate
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|c| {
                let now = passage_pki::unix_now();
                now >= c.not_before + (c.not_after - c.not_before) * 2 / 3
            });
        if !due {
            continue;
        }
        match renew(&link).await {
            Ok(not_after) => tracing::info!(not_after, "certificate renewed with a new key pair"),
            Err(err) => tracing::warn!(error = %err, "certificate renewal failed; will retry"),
        }
    }
}

/// The hybrid key to announce in the hello: the certified one once enrolled (a certificate
/// from before the agent had one certifies none, and a claim it does not certify is refused),
/// the agent's own in development mode.
fn announced_hybrid_key(key: &AgentKey, certificate: Option<&CertifiedAgent>) -> Vec<u8> {
    match certificate {
        Some(certified) => certified.hybrid_public_key.clone().unwrap_or_default(),
        None => key
            .hybrid()
            .map(|h| h.public().as_bytes().to_vec())
            .unwrap_or_default(),
    }
}

/// One renewal: new key pairs, CSR over the live stream, new certificate, switch over.
async fn renew(link: &Link) -> Result<i64, String> {
    let bits = link.config.rsa_bits().map_err(|e| e.to_string())?;
    let hybrid = link.config.post_quantum_sealing;
    let key = tokio::task::spawn_blocking(move || {
        let key = AgentKey::generate(bits)?;
        Ok::<_, passage_envelope::EnvelopeError>(if hybrid {
            key.with_hybrid(HybridKey::generate()?)
        } else {
            key
        })
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let agent_id = link
        .hello
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .agent_id
        .clone();
    let csr_der = agent_csr(
        key.pkcs8_der().expose(),
        &agent_id,
        key.hybrid().map(|h| h.public().as_bytes()),
    )
    .map_err(|e| e.to_string())?;
    let sender = lock(&link.live)
        .last()
        .cloned()
        .ok_or("no live stream to renew over")?;
    let (answer_tx, answer_rx) = oneshot::channel();
    *lock(&link.pending_renewal) = Some(answer_tx);
    sender
        .send(ConnectRequest {
            message: Some(connect_request::Message::Renew(RenewRequest { csr_der })),
        })
        .await
        .map_err(|_| "the stream closed")?;
    let response = tokio::time::timeout(Duration::from_secs(30), answer_rx)
        .await
        .map_err(|_| "no answer to the renewal request within 30 s")?
        .map_err(|_| "the stream closed before the answer")?;
    if !response.error.is_empty() {
        return Err(response.error);
    }
    let der = pem_to_der(&response.certificate_pem).ok_or("the new certificate is not PEM")?;
    let certified = CertifiedAgent::parse(&der).map_err(|e| e.to_string())?;
    if certified.public_key_der != key.public_key_der() {
        return Err("the new certificate does not certify the new key".into());
    }
    let key = match (&certified.hybrid_public_key, key.hybrid()) {
        (Some(certified_hybrid), Some(hybrid))
            if certified_hybrid.as_slice() == hybrid.public().as_bytes() =>
        {
            key
        }
        (None, None) => key,
        // A dispatcher that does not certify hybrid keys (an older one, during an upgrade):
        // keep the renewal, seal with version 1 until a later renewal certifies one.
        (None, Some(_)) => {
            tracing::warn!(
                "the renewed certificate certifies no sealing key; version 1 (RSA) until the next renewal"
            );
            key.without_hybrid()
        }
        _ => return Err("the new certificate certifies another sealing key".into()),
    };
    AgentState::save_renewal(&link.config.state_dir, &key, &response.certificate_pem)
        .map_err(|e| e.to_string())?;
    let key = Arc::new(key);
    // Order matters: the validator opens with the new key (and still the old one) before any
    // dispatcher can hand out the new key.
    link.validator.rotate(Arc::clone(&key));
    *link.identity.write().unwrap_or_else(|p| p.into_inner()) = Some(
        crate::state::client_identity(&response.certificate_pem, &key),
    );
    {
        let mut hello = link.hello.write().unwrap_or_else(|p| p.into_inner());
        hello.public_key_der = key.public_key_der().to_vec();
        hello.hybrid_public_key = announced_hybrid_key(&key, Some(&certified));
    }
    let not_after = certified.not_after;
    *link.certificate.write().unwrap_or_else(|p| p.into_inner()) = Some(certified);
    link.generation.send_modify(|g| *g += 1);
    Ok(not_after)
}

/// Keeps one stream to every replica behind `url`: resolves its host every
/// `dispatcher_resolve_interval_s`, opens a stream to each new address and closes the streams
/// of addresses gone. With a proxy, or an IP address, one stream by the URL alone.
async fn follow_replicas(url: String, link: Arc<Link>, mut stop: watch::Receiver<bool>) {
    let host = passage_transport::replicas::replicated_host(&url, link.config.proxy.as_deref());
    // Checked by AgentConfig::validate.
    let resolver = passage_transport::replicas::resolver(
        &link.config.dispatcher_name_servers,
        "dispatcher_name_servers",
    );
    let (Some(host), Ok(resolver)) = (host, resolver) else {
        lock(&link.expected).insert(url.clone(), 1);
        return keep_connected(url, None, link, stop).await;
    };
    let interval = Duration::from_secs(link.config.dispatcher_resolve_interval_s.max(1));
    let mut replicas: HashMap<std::net::IpAddr, watch::Sender<bool>> = HashMap::new();
    // While the name has never resolved here, one stream dials it by name (the system's
    // resolver may know it when this one cannot).
    let mut by_name: Option<watch::Sender<bool>> = None;
    let mut streams = JoinSet::new();
    loop {
        match passage_transport::replicas::addresses(&resolver, &host).await {
            Ok(addresses) => {
                if let Some(stop_by_name) = by_name.take() {
                    let _ = stop_by_name.send(true);
                }
                replicas.retain(|addr, stop_one| {
                    let kept = addresses.contains(addr);
                    if !kept {
                        tracing::info!(dispatcher = %url, replica = %addr, "dispatcher replica gone from DNS: closing its stream");
                        let _ = stop_one.send(true);
                    }
                    kept
                });
                for addr in addresses {
                    if let std::collections::hash_map::Entry::Vacant(entry) = replicas.entry(addr) {
                        tracing::info!(dispatcher = %url, replica = %addr, "dispatcher replica found: opening a stream");
                        let (stop_one, stopped_one) = watch::channel(false);
                        entry.insert(stop_one);
                        streams.spawn(keep_connected(
                            url.clone(),
                            Some(addr),
                            Arc::clone(&link),
                            stopped_one,
                        ));
                    }
                }
            }
            // Keep the streams there are: a DNS outage must not cut working streams.
            Err(err) => {
                tracing::warn!(dispatcher = %url, error = %err, "resolving the dispatcher's replicas failed; keeping the streams there are");
                if replicas.is_empty() && by_name.is_none() {
                    let (stop_by_name, stopped_by_name) = watch::channel(false);
                    by_name = Some(stop_by_name);
                    streams.spawn(keep_connected(
                        url.clone(),
                        None,
                        Arc::clone(&link),
                        stopped_by_name,
                    ));
                }
            }
        }
        lock(&link.expected).insert(url.clone(), replicas.len().max(1));
        while streams.try_join_next().is_some() {}
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stopped(&mut stop) => break,
        }
    }
    for stop_one in replicas.values() {
        let _ = stop_one.send(true);
    }
    if let Some(stop_by_name) = &by_name {
        let _ = stop_by_name.send(true);
    }
    while streams.join_next().await.is_some() {}
}

async fn keep_connected(
    url: String,
    addr: Option<std::net::IpAddr>,
    link: Arc<Link>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = INITIAL_BACKOFF;
    // The stream's name in logs: the URL, and the replica's address when dialled by address.
    let label = match addr {
        Some(addr) => format!("{url} ({addr})"),
        None => url.clone(),
    };
    loop {
        let started = Instant::now();
        let result = session(&url, addr, &link, stop.clone()).await;
        match result {
            Ok(StreamEnd::Shutdown) => return,
            Ok(StreamEnd::Drained) => {
                tracing::info!(dispatcher = %label, "dispatcher drained this stream; reconnecting");
                backoff = INITIAL_BACKOFF;
            }
            Ok(StreamEnd::Renewed) => {
                tracing::info!(dispatcher = %label, "reconnecting with the renewed certificate");
                backoff = INITIAL_BACKOFF;
                continue;
            }
            Err(err) if err.final_refusal => {
                let retry_in = Duration::from_secs(link.config.refused_retry_interval_s);
                tracing::error!(
                    dispatcher = %label,
                    reason = %err.message,
                    retry_in_s = retry_in.as_secs(),
                    "the dispatcher refuses this agent and retrying will not change that: enrol it \
                     again (passage agent token create, then passage-agent register --token ...)"
                );
                // Check back rarely, not in a tight loop: nothing here can cure it.
                backoff = MAX_BACKOFF;
                tokio::select! {
                    () = tokio::time::sleep(retry_in) => {}
                    () = stopped(&mut stop) => return,
                }
                continue;
            }
            Err(err) => {
                if started.elapsed() > STABLE_AFTER {
                    backoff = INITIAL_BACKOFF;
                }
                tracing::warn!(dispatcher = %label, error = %err.message, retry_in_ms = backoff.as_millis() as u64, "stream to dispatcher ended");
            }
        }
        let delay = jitter(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stopped(&mut stop) => return,
        }
    }
}

/// A uniformly random delay in [d/2, d] ("equal jitter"), so agents do not reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    let mut bytes = [0u8; 4];
    let fraction = match SystemRandom::new().fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX),
        Err(_) => 1.0,
    };
    d.mul_f64(0.5 + fraction / 2.0)
}

async fn session(
    url: &str,
    addr: Option<std::net::IpAddr>,
    link: &Link,
    mut stop: watch::Receiver<bool>,
) -> Result<StreamEnd, StreamError> {
    let config = &link.config;
    let validator = &link.validator;
    let capacity = &link.capacity;
    // The identity this stream uses; a renewal bumps the generation and ends the stream.
    let mut generation = link.generation.subscribe();
    generation.mark_unchanged();
    let (directory_lockout_threshold, directory_lockout_window_s) =
        validator.directory_lockout_report();
    let hello = AgentHello {
        directory_lockout_threshold,
        directory_lockout_window_s,
        ..link.hello.read().unwrap_or_else(|p| p.into_inner()).clone()
    };
    let identity = link
        .identity
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let channel = tokio::select! {
        result = crate::dial(config, url, addr, identity.as_ref()) => result?,
        () = stopped(&mut stop) => return Ok(StreamEnd::Shutdown),
    };
    let mut client = AgentTunnelClient::new(channel);
    let (outbound, receiver) = mpsc::channel::<ConnectRequest>(config.capacity as usize + 16);
    outbound
        .send(ConnectRequest {
            message: Some(connect_request::Message::Hello(hello)),
        })
        .await
        .map_err(|_| "stream closed before hello".to_owned())?;
    let enrolled = identity.is_some();
    let mut inbound = client
        .connect(ReceiverStream::new(receiver))
        .await
        .map_err(|status| StreamError::refused("dispatcher refused the stream", &status, enrolled))?
        .into_inner();

    let welcome = match inbound.message().await.map_err(|status| {
        StreamError::refused("dispatcher refused the stream", &status, enrolled)
    })? {
        Some(passage_proto::v1::ConnectResponse {
            message: Some(connect_response::Message::Welcome(welcome)),
        }) => welcome,
        _ => return Err("dispatcher did not welcome the agent".into()),
    };
    let heartbeat_every = match welcome.heartbeat_interval_ms {
        0 => config.heartbeat_interval(),
        ms => Duration::from_millis(u64::from(ms)),
    };
    tracing::info!(dispatcher = %url, dispatcher_id = %welcome.dispatcher_id, "connected to dispatcher");
    let _connected = ConnectedStream::new(&link.connected);
    let _live = LiveStream::new(link, &outbound);

    let mut tasks = JoinSet::new();
    let mut heartbeat = tokio::time::interval(heartbeat_every);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = loop {
        tokio::select! {
            message = inbound.message() => {
                let message = match message {
                    Ok(Some(message)) => message,
                    Ok(None) => break Err("dispatcher closed the stream".into()),
                    Err(status) => break Err(StreamError::refused("stream error", &status, enrolled)),
                };
                match message.message {
                    Some(connect_response::Message::Task(task)) => {
                        let outbound = outbound.clone();
                        let validator = Arc::clone(validator);
                        let Ok(permit) = Arc::clone(capacity).try_acquire_owned() else {
                            let answer = passage_proto::v1::ValidationAnswer {
                                request_id: task.request_id,
                                error: passage_proto::v1::AgentError::Overloaded as i32,
                                detail: "agent at capacity".into(),
                                ..Default::default()
                            };
                            let _ = outbound.send(ConnectRequest { message: Some(connect_request::Message::Answer(answer)) }).await;
                            continue;
                        };
                        tasks.spawn(async move {
                            let answer = validator.validate(task).await;
                            drop(permit);
                            let _ = outbound
                                .send(ConnectRequest { message: Some(connect_request::Message::Answer(answer)) })
                                .await;
                        });
                    }
                    Some(connect_response::Message::Renewed(response)) => {
                        if let Some(waiter) = lock(&link.pending_renewal).take() {
                            let _ = waiter.send(response);
                        }
                    }
                    Some(connect_response::Message::Drain(drain)) => {
                        tracing::info!(reason = %drain.reason, "dispatcher asked to drain");
                        break Ok(StreamEnd::Drained);
                    }
                    Some(connect_response::Message::Welcome(_)) | None => {}
                }
            }
            _ = heartbeat.tick() => {
                let in_flight = config.capacity.saturating_sub(capacity.available_permits() as u32);
                let (directory_lockout_threshold, directory_lockout_window_s) = validator.directory_lockout_report();
                let health = validator.directory_health();
                let beat = ConnectRequest { message: Some(connect_request::Message::Heartbeat(Heartbeat {
                    in_flight,
                    directory_lockout_threshold,
                    directory_lockout_window_s,
                    directory_servers_up: health.servers_up,
                    directory_servers_total: health.servers_total,
                })) };
                if outbound.send(beat).await.is_err() {
                    break Err("stream closed".into());
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = generation.changed() => break Ok(StreamEnd::Renewed),
            () = stopped(&mut stop) => break Ok(StreamEnd::Shutdown),
        }
    };
    // Answer what we already accepted before closing our side (drain and shutdown).
    while tasks.join_next().await.is_some() {}
    drop(outbound);
    end
}

/// Resolves once `stop` says so (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// This host's name, for operators.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_and_whole() {
        for _ in 0..1000 {
            let d = jitter(Duration::from_millis(1000));
            assert!(
                d >= Duration::from_millis(500) && d <= Duration::from_millis(1000),
                "{d:?}"
            );
        }
    }
}

//! Several directory servers behind one connector (domain controllers, or OpenLDAP replicas
//! holding the same data), configured or found in DNS ([`crate::discovery`]), and failing
//! over between them.
//!
//! Operations go to the first server in the configured order that is up. A server that cannot
//! be reached — the connection refused, closed or timed out — is marked down, its pooled
//! connections are dropped, and the operation is tried again on the next server; a background
//! probe connects to it every `probe_interval_ms` and marks it up once it answers a service
//! bind. Meanwhile it is skipped — unless every server is down, when all are tried in order
//! (the probe may not have noticed a recovery yet). A server that *answers* (a wrong password,
//! a search error) is not failed over: its answer stands.
//!
//! A bind interrupted by a server failure is retried on the next server, so a wrong password
//! may reach two servers. AD counts failures per domain controller and forwards them to the
//! PDC emulator, ppolicy counts per replica: either way one wrong attempt can count twice in
//! the directory while smart lockout counts it once — a limit written down in
//! `docs/lockout.md`: when the user's own failures have used all the room below the
//! directory's threshold, that one double count can reach it.

use std::{
    sync::{
        Arc, Mutex, RwLock, Weak,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError};
use passage_credentials::Secret;

use crate::{DirectoryError, discovery::Discovery};

/// How connections are opened and bound as the service account: shared by every server and by
/// the background probes.
pub(crate) struct Connector {
    pub timeout: Duration,
    pub starttls: bool,
    pub no_tls_verify: bool,
    pub tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    pub bind_dn: Option<String>,
    pub bind_password: Option<Secret>,
}

impl Connector {
    /// A new connection to `url`; any failure is [`DirectoryError::Unreachable`].
    pub async fn connect(&self, url: &str) -> Result<Ldap, DirectoryError> {
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(self.timeout)
            .set_starttls(self.starttls)
            .set_no_tls_verify(self.no_tls_verify);
        if let Some(tls) = &self.tls {
            settings = settings.set_config(Arc::clone(tls));
        }
        let (conn, ldap) = LdapConnAsync::with_settings(settings, url)
            .await
            .map_err(|err| DirectoryError::Unreachable(format!("connect to {url}: {err}")))?;
        tokio::spawn(async move {
            if let Err(err) = conn.drive().await {
                tracing::debug!(error = %err, "LDAP connection closed");
            }
        });
        Ok(ldap)
    }

    /// Binds `ldap` as the service account (nothing to do for anonymous searches).
    pub async fn service_bind(&self, ldap: &mut Ldap) -> Result<(), DirectoryError> {
        let Some(dn) = &self.bind_dn else {
            return Ok(());
        };
        let password = self
            .bind_password
            .as_ref()
            .map(|s| String::from_utf8_lossy(s.expose()).into_owned())
            .unwrap_or_default();
        if password.is_empty() {
            return Err(DirectoryError::Misconfigured(
                "bind_dn is set but no bind password is configured".into(),
            ));
        }
        let result = ldap
            .with_timeout(self.timeout)
            .simple_bind(dn, &password)
            .await
            .map_err(|err| failure("service bind", &err))?;
        match result.rc {
            0 => Ok(()),
            49 => Err(DirectoryError::Misconfigured(
                "the service account's credentials were refused".into(),
            )),
            rc => Err(DirectoryError::Unavailable(format!(
                "service bind answered rc={rc}: {}",
                result.text
            ))),
        }
    }
}

/// One server: its pooled connections and whether it is up.
pub(crate) struct Server {
    pub url: String,
    /// Connections bound as the service account, each multiplexing searches.
    pub search_slots: Vec<tokio::sync::Mutex<Option<Ldap>>>,
    pub next_search: AtomicUsize,
    /// Connections for user binds, each carrying one bind at a time.
    pub idle_binds: Mutex<Vec<Ldap>>,
    down: AtomicBool,
    probing: AtomicBool,
}

impl Server {
    fn new(url: String, search_connections: usize) -> Self {
        Self {
            url,
            search_slots: (0..search_connections)
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next_search: AtomicUsize::new(0),
            idle_binds: Mutex::new(Vec::new()),
            down: AtomicBool::new(false),
            probing: AtomicBool::new(false),
        }
    }

    /// Whether the server is believed reachable.
    pub fn is_up(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }
}

/// The servers of one connector: configured, or found in DNS and looked up again now and then.
pub(crate) struct Servers {
    list: RwLock<Vec<Arc<Server>>>,
    search_connections: usize,
    pub connector: Arc<Connector>,
    probe_interval: Duration,
    discovery: Option<Found>,
    /// Operations moved on from a server that could not be reached.
    failovers: AtomicU64,
}

/// Servers found in DNS: the lookup, and when it is due again.
struct Found {
    discovery: Discovery,
    /// Held by the one lookup under way.
    looking: tokio::sync::Mutex<()>,
    /// When the next background lookup is due.
    next: Mutex<Instant>,
    /// The last lookup found nothing (reported in the health as one server, down).
    failed: AtomicBool,
    /// When a lookup last found nothing, and why: while no server is known, operations
    /// within [`RETRY_LOOKUP_AFTER`] fail at once instead of each asking DNS again.
    last_failure: Mutex<Option<(Instant, String)>>,
}

/// How long a lookup that found nothing stands before an operation asks DNS again.
const RETRY_LOOKUP_AFTER: Duration = Duration::from_secs(5);

impl Found {
    /// Whether a background lookup is due; the caller that sees it due starts it (the next
    /// one is reckoned from now).
    fn due(&self) -> bool {
        let now = Instant::now();
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let due = now >= *next;
        if due {
            *next = now + self.discovery.refresh_interval();
        }
        due
    }
}

impl Servers {
    /// Servers at `urls`, or (with `discovery`) found in DNS before the first operation.
    pub fn new(
        urls: &[String],
        discovery: Option<Discovery>,
        search_connections: usize,
        connector: Connector,
        probe_interval: Duration,
    ) -> Self {
        Self {
            list: RwLock::new(
                urls.iter()
                    .map(|url| Arc::new(Server::new(url.clone(), search_connections)))
                    .collect(),
            ),
            search_connections,
            connector: Arc::new(connector),
            probe_interval,
            discovery: discovery.map(|discovery| Found {
                discovery,
                looking: tokio::sync::Mutex::new(()),
                next: Mutex::new(Instant::now()),
                failed: AtomicBool::new(false),
                last_failure: Mutex::new(None),
            }),
            failovers: AtomicU64::new(0),
        }
    }

    fn list(&self) -> Vec<Arc<Server>> {
        self.list.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The servers to try, in order: those up first (configured or DNS order), then those
    /// down. With DNS discovery, the first call looks the servers up (an error when none is
    /// found), and a call after the refresh interval starts a lookup in the background.
    pub async fn in_order(self: &Arc<Self>) -> Result<Vec<Arc<Server>>, DirectoryError> {
        if let Some(found) = &self.discovery {
            if self
                .list
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
            {
                if let Some((at, why)) =
                    &*found.last_failure.lock().unwrap_or_else(|p| p.into_inner())
                    && at.elapsed() < RETRY_LOOKUP_AFTER
                {
                    return Err(DirectoryError::Unreachable(why.clone()));
                }
                let _looking = found.looking.lock().await;
                // Another caller may have found them while this one waited.
                if self
                    .list
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_empty()
                {
                    self.look_up(found).await?;
                }
            } else if found.due() {
                let servers = Arc::clone(self);
                tokio::spawn(async move {
                    if let Some(found) = &servers.discovery {
                        let _looking = found.looking.lock().await;
                        // A failed refresh keeps the servers found before (logged).
                        let _ = servers.look_up(found).await;
                    }
                });
            }
        }
        let (up, down): (Vec<_>, Vec<_>) = self.list().into_iter().partition(|s| s.is_up());
        Ok(up.into_iter().chain(down).collect())
    }

    /// Looks the servers up and replaces the list; a server still listed keeps its
    /// connections and its state.
    async fn look_up(&self, found: &Found) -> Result<(), DirectoryError> {
        *found.next.lock().unwrap_or_else(|p| p.into_inner()) =
            Instant::now() + found.discovery.refresh_interval();
        let urls = match found.discovery.lookup().await {
            Ok(urls) => urls,
            Err(err) => {
                found.failed.store(true, Ordering::Relaxed);
                let why = match &err {
                    DirectoryError::Unreachable(why)
                    | DirectoryError::Unavailable(why)
                    | DirectoryError::Misconfigured(why) => why.clone(),
                };
                *found.last_failure.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), why));
                tracing::warn!(lookup = %found.discovery.describe(), error = %err, "directory servers not found in DNS; keeping those found before");
                return Err(err);
            }
        };
        found.failed.store(false, Ordering::Relaxed);
        if found.discovery.plaintext() {
            tracing::warn!(
                ?urls,
                "plaintext LDAP without StartTLS: passwords cross the network in clear (allow_plaintext = true)"
            );
        }
        let mut list = self.list.write().unwrap_or_else(|p| p.into_inner());
        let before: Vec<String> = list.iter().map(|s| s.url.clone()).collect();
        if before != urls {
            tracing::info!(?before, now = ?urls, "directory servers found in DNS");
        }
        *list = urls
            .iter()
            .map(|url| match list.iter().find(|s| &s.url == url) {
                Some(kept) => Arc::clone(kept),
                None => Arc::new(Server::new(url.clone(), self.search_connections)),
            })
            .collect();
        Ok(())
    }

    /// How many servers are up, of how many (a DNS lookup that found nothing counts as one
    /// server down).
    pub fn health(&self) -> (u32, u32) {
        let list = self.list();
        let up = list.iter().filter(|s| s.is_up()).count() as u32;
        let failed = self
            .discovery
            .as_ref()
            .is_some_and(|found| found.failed.load(Ordering::Relaxed));
        match (list.len() as u32, failed) {
            (0, true) => (0, 1),
            (total, _) => (up, total),
        }
    }

    /// What is used, for logs: the URLs, and the DNS lookup when there is one.
    pub fn describe(&self) -> String {
        let urls: Vec<String> = self.list().iter().map(|s| s.url.clone()).collect();
        match &self.discovery {
            Some(found) => format!("{} [{}]", found.discovery.describe(), urls.join(" ")),
            None => urls.join(" "),
        }
    }

    /// How many operations moved on from an unreachable server since start.
    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    /// `server` could not be reached: mark it down, drop its pooled connections, and have a
    /// background task probe it until it answers again (or leaves the list).
    pub fn failed(&self, server: &Arc<Server>, why: &str) {
        self.failovers.fetch_add(1, Ordering::Relaxed);
        if !server.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(url = %server.url, error = %why, "directory server unreachable: marked down, failing over");
        }
        server
            .idle_binds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        for slot in &server.search_slots {
            if let Ok(mut cached) = slot.try_lock() {
                *cached = None;
            }
        }
        if !server.probing.swap(true, Ordering::Relaxed) {
            tokio::spawn(probe(
                Arc::downgrade(server),
                Arc::clone(&self.connector),
                self.probe_interval,
            ));
        }
    }
}

/// Connects to the server every `interval` until a service bind succeeds, then marks it up.
/// Ends when the directory is dropped.
async fn probe(server: Weak<Server>, connector: Arc<Connector>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(server) = server.upgrade() else {
            return;
        };
        let answer = match connector.connect(&server.url).await {
            Ok(mut ldap) => {
                let bound = connector.service_bind(&mut ldap).await;
                let _ = ldap.unbind().await;
                bound
            }
            Err(err) => Err(err),
        };
        match answer {
            // A refused service bind is an answer: the server is up (and misconfigured, which
            // the next operation will report).
            Ok(()) | Err(DirectoryError::Misconfigured(_)) => {
                // Probing ends first: a failure marked in between starts a new probe, which
                // finds the server up and ends in turn.
                server.probing.store(false, Ordering::Relaxed);
                server.down.store(false, Ordering::Relaxed);
                tracing::info!(url = %server.url, "directory server answers again: marked up");
                return;
            }
            Err(err) => {
                tracing::debug!(url = %server.url, error = %err, "directory server still down")
            }
        }
    }
}

/// An operation's failure: [`DirectoryError::Unreachable`] when the connection failed (closed,
/// reset, timed out: another server may answer), else [`DirectoryError::Unavailable`].
pub(crate) fn failure(what: &str, err: &LdapError) -> DirectoryError {
    match is_connection_error(err) || matches!(err, LdapError::Timeout { .. }) {
        true => DirectoryError::Unreachable(format!("{what}: {err}")),
        false => DirectoryError::Unavailable(format!("{what}: {err}")),
    }
}

/// Whether the connection itself failed (closed, reset, not sent): a pooled connection that
/// died, or a server that went away.
pub(crate) fn is_connection_error(err: &LdapError) -> bool {
    matches!(
        err,
        LdapError::Io { .. }
            | LdapError::OpSend { .. }
            | LdapError::ResultRecv { .. }
            | LdapError::IdScrubSend { .. }
            | LdapError::EndOfStream
    )
}

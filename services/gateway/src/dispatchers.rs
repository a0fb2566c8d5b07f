//! The dispatcher replicas behind `dispatcher_url`, and how calls are spread over them.
//!
//! The URL's host is resolved at start and every `dispatcher_resolve_interval_s` (every pod of a
//! Kubernetes headless Service is an address); each address gets a lazily connected channel
//! that checks the certificate for the URL's name. Calls go round-robin over the replicas not
//! marked down; one that could not be reached is marked down for a few seconds and the caller
//! may try the next. With an IP address in the URL, or a name that does not resolve yet, the
//! URL itself is the one replica.

use std::{
    net::IpAddr,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use hickory_resolver::TokioResolver;
use passage_proto::v1::dispatcher_client::DispatcherClient;
use passage_transport::{ClientTls, TransportError, replicas};
use tonic::{Code, Status, transport::Channel};

/// Whether `status` says the replica could not be reached or failed below the dispatcher (no
/// Passage code): another replica may answer.
pub fn unreachable(status: &Status) -> bool {
    passage_error_codes::ErrorCode::of(status).is_none()
        && matches!(status.code(), Code::Unavailable | Code::Unknown)
}

/// Whether the call certainly never reached the replica: its connection was refused, so
/// nothing — no password — was sent.
pub fn connection_refused(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// How long a replica that could not be reached is passed over.
const DOWN_FOR: Duration = Duration::from_secs(5);

/// One replica: its address (none: the URL by name) and channel.
pub struct Replica {
    /// Its address, when dialled by address.
    pub addr: Option<IpAddr>,
    channel: Channel,
    /// Until when it is passed over (milliseconds since the pool started; 0: up).
    down_until_ms: AtomicU64,
}

impl Replica {
    /// A client on this replica.
    pub fn client(&self) -> DispatcherClient<Channel> {
        DispatcherClient::new(self.channel.clone())
    }

    /// Its channel (health checks).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }
}

/// The replicas of the dispatcher.
pub struct Dispatchers {
    url: String,
    host: Option<String>,
    tls: Option<ClientTls>,
    insecure_plaintext: bool,
    resolver: Option<TokioResolver>,
    replicas: RwLock<Vec<Arc<Replica>>>,
    next: AtomicUsize,
    started: Instant,
}

impl Dispatchers {
    /// The replicas behind `url`, resolved once now (a failure leaves the URL as the one
    /// replica, and is retried at each refresh).
    pub async fn resolve(
        url: &str,
        tls: Option<&ClientTls>,
        insecure_plaintext: bool,
        name_servers: &[String],
    ) -> Result<Arc<Self>, TransportError> {
        let host = replicas::host_of(url).filter(|host| host.parse::<IpAddr>().is_err());
        let resolver = match &host {
            Some(_) => Some(replicas::resolver(name_servers, "dispatcher_name_servers")?),
            None => None,
        };
        let by_name = Arc::new(Replica {
            addr: None,
            channel: replicas::endpoint_at(url, None, tls, None, insecure_plaintext)?
                .connect_lazy(),
            down_until_ms: AtomicU64::new(0),
        });
        let dispatchers = Arc::new(Self {
            url: url.to_owned(),
            host,
            tls: tls.cloned(),
            insecure_plaintext,
            resolver,
            replicas: RwLock::new(vec![by_name]),
            next: AtomicUsize::new(0),
            started: Instant::now(),
        });
        dispatchers.refresh().await;
        Ok(dispatchers)
    }

    /// Resolves the name again every `interval`, in the background.
    pub fn watch(self: &Arc<Self>, interval: Duration) {
        if self.resolver.is_none() {
            return;
        }
        let dispatchers = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(dispatchers) = dispatchers.upgrade() else {
                    return;
                };
                dispatchers.refresh().await;
            }
        });
    }

    /// Resolves the name and replaces the replicas; a replica still there keeps its channel.
    async fn refresh(&self) {
        let (Some(resolver), Some(host)) = (&self.resolver, &self.host) else {
            return;
        };
        let addresses = match replicas::addresses(resolver, host).await {
            Ok(addresses) => addresses,
            Err(err) => {
                tracing::warn!(dispatcher = %self.url, error = %err, "resolving the dispatcher's replicas failed; keeping those there are");
                return;
            }
        };
        let current = self.all();
        let mut next = Vec::with_capacity(addresses.len());
        for addr in addresses {
            match current.iter().find(|r| r.addr == Some(addr)) {
                Some(kept) => next.push(Arc::clone(kept)),
                None => match replicas::endpoint_at(
                    &self.url,
                    Some(addr),
                    self.tls.as_ref(),
                    None,
                    self.insecure_plaintext,
                ) {
                    Ok(endpoint) => next.push(Arc::new(Replica {
                        addr: Some(addr),
                        channel: endpoint.connect_lazy(),
                        down_until_ms: AtomicU64::new(0),
                    })),
                    Err(err) => {
                        tracing::warn!(dispatcher = %self.url, replica = %addr, error = %err, "cannot dial this replica")
                    }
                },
            }
        }
        if next.is_empty() {
            return;
        }
        let addrs = |list: &[Arc<Replica>]| list.iter().map(|r| r.addr).collect::<Vec<_>>();
        if addrs(&current) != addrs(&next) {
            tracing::info!(dispatcher = %self.url, replicas = ?addrs(&next), "dispatcher replicas");
        }
        *self.replicas.write().unwrap_or_else(|p| p.into_inner()) = next;
    }

    /// Every replica.
    pub fn all(&self) -> Vec<Arc<Replica>> {
        self.replicas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The next replica in turn that is up and is not `avoid` (when every other one is
    /// down, any but `avoid`; with a single replica, that one).
    pub fn pick(&self, avoid: Option<&Arc<Replica>>) -> Arc<Replica> {
        let all = self.all();
        let now = self.started.elapsed().as_millis() as u64;
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let candidates = (0..all.len())
            .map(|i| &all[(start + i) % all.len()])
            .filter(|r| avoid.is_none_or(|avoid| !Arc::ptr_eq(r, avoid)));
        let mut fallback = None;
        for replica in candidates {
            if replica.down_until_ms.load(Ordering::Relaxed) <= now {
                return Arc::clone(replica);
            }
            fallback.get_or_insert(replica);
        }
        Arc::clone(fallback.unwrap_or(&all[start % all.len()]))
    }

    /// `replica` could not be reached: passed over for a few seconds.
    pub fn failed(&self, replica: &Replica) {
        let now = self.started.elapsed();
        let until = (now + DOWN_FOR).as_millis() as u64;
        if replica.down_until_ms.swap(until, Ordering::Relaxed) <= now.as_millis() as u64 {
            tracing::warn!(dispatcher = %self.url, replica = ?replica.addr, "dispatcher replica unreachable: passed over for a few seconds");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connection_is_told_from_a_failed_call() {
        // A port nothing listens on: the connection is refused, nothing is sent.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let dispatchers =
            Dispatchers::resolve(&format!("http://127.0.0.1:{port}"), None, true, &[])
                .await
                .unwrap();
        let status = dispatchers
            .pick(None)
            .client()
            .list_agent_keys(passage_proto::v1::ListAgentKeysRequest::default())
            .await
            .unwrap_err();
        assert!(connection_refused(&status), "{status:?}");
        assert!(unreachable(&status), "{status:?}");
        // A dispatcher's own refusal is neither.
        let coded = passage_error_codes::ErrorCode::NoAgentAvailable.public_status();
        assert!(!connection_refused(&coded) && !unreachable(&coded));
    }
}

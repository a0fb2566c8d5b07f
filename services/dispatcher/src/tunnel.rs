//! `AgentTunnel.Connect`: accepts agent streams and keeps the registry current.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, RwLock},
    time::Duration,
};

use passage_envelope::SealingKey;
use passage_error_codes::ErrorCode;
use passage_pki::{AgentClaim, AgentCsr, AgentVerifier, CertifiedAgent, TenantCa, TrustError};
use passage_proto::v1::{
    AgentHello, ConnectRequest, ConnectResponse, RenewResponse, Welcome,
    agent_tunnel_server::AgentTunnel, connect_request, connect_response,
};
use passage_store::{AgentCertificate, Renewal, Store};
use passage_transport::{TransportError, tls::ClientCas};
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use crate::registry::{AgentConnection, AgentIdentity, AgentRegistry};

/// Longest accepted agent id, tenant, group, version or host name.
const MAX_NAME_BYTES: usize = 256;
/// Largest capacity an agent may advertise.
const MAX_CAPACITY: u32 = 4096;

/// What agents must prove: a certificate from their tenant's CA, not revoked. Also renews
/// certificates over the live stream.
pub struct AgentTrust {
    /// Where agents, their certificates and revocations are recorded.
    pub store: Store,
    /// The one trust decision, shared with the gateway.
    verifier: AgentVerifier,
    /// Tenant CAs by tenant: the ones known at start, and those learnt since.
    cas: RwLock<HashMap<String, Arc<TenantCa>>>,
    /// The agent listener's TLS roots: every tenant CA, plus `extra_client_ca`.
    client_cas: ClientCas,
    /// The operator's own client CA for the agent listener (`agent_tls.client_ca_file`).
    extra_client_ca: Option<String>,
    /// Lifetime of renewed certificates.
    pub certificate_lifetime: Duration,
    /// Least time between two renewals in one connector group (at this replica).
    pub renewal_spacing: Duration,
    /// When each (tenant, connector group) last renewed.
    pub last_renewal: std::sync::Mutex<HashMap<(String, String), std::time::Instant>>,
}

impl AgentTrust {
    /// Trust in `cas`' agents, checked against `store`; `extra_client_ca` (PEM) is also
    /// accepted at the TLS layer.
    pub fn new(
        store: Store,
        cas: HashMap<String, TenantCa>,
        extra_client_ca: Option<String>,
        certificate_lifetime: Duration,
        renewal_spacing: Duration,
        switchover: Duration,
    ) -> Result<Self, TransportError> {
        let cas: HashMap<String, Arc<TenantCa>> =
            cas.into_iter().map(|(t, ca)| (t, Arc::new(ca))).collect();
        let client_cas = ClientCas::new(tls_roots(&cas, extra_client_ca.as_deref()), false)?;
        Ok(Self {
            verifier: AgentVerifier::new(store.clone(), switchover),
            store,
            cas: RwLock::new(cas),
            client_cas,
            extra_client_ca,
            certificate_lifetime,
            renewal_spacing,
            last_renewal: Default::default(),
        })
    }

    /// The roots the agent listener's TLS accepts client certificates from.
    pub fn client_cas(&self) -> &ClientCas {
        &self.client_cas
    }

    fn ca(&self, tenant: &str) -> Option<Arc<TenantCa>> {
        self.cas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .cloned()
    }

    /// Whether agents of `tenant` can be checked here.
    pub fn knows(&self, tenant: &str) -> bool {
        self.ca(tenant).is_some()
    }

    /// Trusts `tenant`'s agents from now on: the TLS layer accepts their certificates for new
    /// connections at once.
    pub fn learn(&self, tenant: &str, ca: TenantCa) -> Result<(), TransportError> {
        let mut cas = self.cas.write().unwrap_or_else(|p| p.into_inner());
        if cas.contains_key(tenant) {
            return Ok(());
        }
        let mut next = cas.clone();
        next.insert(tenant.to_owned(), Arc::new(ca));
        self.client_cas
            .replace(tls_roots(&next, self.extra_client_ca.as_deref()))?;
        *cas = next;
        tracing::info!(%tenant, "now trusting the agents of a new tenant");
        Ok(())
    }

    /// Learns the tenants whose CA appeared in the store since start (made at another
    /// replica's first enrolment, or imported) and returns how many were new. It never creates
    /// a CA itself, so an operator can still import one until the tenant's first enrolment.
    pub async fn learn_new_tenants(&self) -> Result<usize, String> {
        let tenants = self.store.tenants().await.map_err(|e| e.to_string())?;
        let mut learnt = 0;
        for tenant in tenants {
            if self.knows(&tenant) {
                continue;
            }
            let Some(stored) = self
                .store
                .tenant_ca(&tenant)
                .await
                .map_err(|e| e.to_string())?
            else {
                continue;
            };
            let ca = TenantCa::from_parts(&tenant, &stored.cert_pem, &stored.key_der)
                .map_err(|e| format!("tenant {tenant}: {e}"))?;
            self.learn(&tenant, ca).map_err(|e| e.to_string())?;
            learnt += 1;
        }
        Ok(learnt)
    }

    /// How long a certificate replaced by a renewal stays trusted.
    pub fn switchover(&self) -> Duration {
        self.verifier.switchover()
    }

    /// Checks the client certificate (DER) and returns what it certifies.
    async fn check(&self, cert: Option<&[u8]>) -> Result<(CertifiedAgent, Vec<u8>), Status> {
        let not_trusted = |message: String| ErrorCode::AgentNotTrusted.status(message);
        let cert = cert.ok_or_else(|| {
            not_trusted("a client certificate issued at enrolment is required (run `passage-agent register`)".into())
        })?;
        let claimed = CertifiedAgent::parse(cert).map_err(|e| not_trusted(e.to_string()))?;
        let ca = self
            .ca(&claimed.identity.tenant)
            .ok_or_else(|| not_trusted(format!("unknown tenant {}", claimed.identity.tenant)))?;
        // TLS checked the chain against every tenant CA; this pins it to the tenant it names
        // and asks the store whether the certificate still stands.
        match self
            .verifier
            .verify(&ca.certificate(), cert, std::time::SystemTime::now())
            .await
        {
            Ok(certified) => {
                // The first connection with a renewed certificate retires the ones before it.
                let activated = self
                    .store
                    .activate_certificate(
                        &certified.identity.agent_id,
                        &certified.serial,
                        crate::enrolment::unix_now(),
                    )
                    .await
                    .map_err(|err| {
                        tracing::error!(error = %err, "store failure");
                        ErrorCode::Internal.public_status()
                    })?;
                if activated > 0 {
                    tracing::info!(agent_id = %certified.identity.agent_id, serial = %certified.serial, superseded = activated, "agent switched to its renewed certificate");
                }
                Ok((certified, cert.to_vec()))
            }
            Err(TrustError::Distrust(distrust)) if distrust.is_final() => {
                Err(ErrorCode::AgentRevoked.status(format!(
                    "{distrust}; enrol the agent again with a new token"
                )))
            }
            Err(TrustError::Distrust(distrust)) => Err(not_trusted(format!(
                "{distrust}; if the certificate expired, enrol the agent again"
            ))),
            Err(TrustError::Store(err)) => {
                tracing::error!(error = %err, "store failure");
                Err(ErrorCode::Internal.public_status())
            }
        }
    }

    /// Issues a certificate for the stream's agent to the key in `csr_der`: the stream's
    /// current certificate is the proof of identity. Agents of one group renew one at a time.
    async fn renew(&self, identity: &AgentIdentity, csr_der: &[u8]) -> Result<String, String> {
        {
            let mut last = self.last_renewal.lock().unwrap_or_else(|p| p.into_inner());
            let key = (identity.tenant.clone(), identity.connector_group.clone());
            if let Some(at) = last.get(&key)
                && at.elapsed() < self.renewal_spacing
            {
                return Err(format!(
                    "another agent of connector group {} renewed moments ago; retry later",
                    identity.connector_group
                ));
            }
            last.insert(key, std::time::Instant::now());
        }
        let ca = self.ca(&identity.tenant).ok_or("unknown tenant")?;
        let subject = passage_pki::AgentIdentity {
            tenant: identity.tenant.clone(),
            connector_group: identity.connector_group.clone(),
            agent_id: identity.agent_id.clone(),
        };
        let csr = AgentCsr::parse(csr_der).map_err(|e| e.to_string())?;
        let issued = ca
            .issue_agent(csr, &subject, self.certificate_lifetime)
            .map_err(|e| e.to_string())?;
        let certificate = AgentCertificate {
            serial: issued.certified.serial.clone(),
            not_after: issued.certified.not_after,
            public_key_der: issued.certified.public_key_der.clone(),
            hybrid_public_key: issued.certified.hybrid_public_key.clone(),
        };
        let presented = identity
            .cert_serial
            .as_deref()
            .ok_or("this stream has no certificate to renew")?;
        // One transaction: a revocation racing this renewal wins, and the certificate just
        // signed is then never recorded, so never trusted. Only a current certificate renews.
        let renewal = self
            .store
            .renew_agent(
                &identity.agent_id,
                presented,
                &certificate,
                &identity.version,
                crate::enrolment::unix_now(),
            )
            .await
            .map_err(|err| {
                tracing::error!(error = %err, "store failure during a renewal");
                "the store failed; retry later".to_owned()
            })?;
        match renewal {
            Renewal::Renewed => {}
            Renewal::Revoked => return Err("the agent has been revoked".into()),
            Renewal::Superseded => {
                return Err(
                    "this certificate was replaced by a renewal; only the current one renews"
                        .into(),
                );
            }
            Renewal::Unknown => return Err("the agent is not enrolled".into()),
        }
        tracing::info!(
            agent_id = %identity.agent_id,
            serial = %issued.certified.serial,
            not_after = issued.certified.not_after,
            "agent certificate renewed"
        );
        Ok(issued.cert_pem)
    }
}

/// Every tenant CA certificate and the operator's extra CA, as PEM.
fn tls_roots<'a>(
    cas: &'a HashMap<String, Arc<TenantCa>>,
    extra: Option<&'a str>,
) -> impl Iterator<Item = &'a str> {
    cas.values().map(|ca| ca.cert_pem()).chain(extra)
}

/// The `AgentTunnel` service.
pub struct TunnelService {
    registry: Arc<AgentRegistry>,
    dispatcher_id: String,
    heartbeat_interval: Duration,
    hello_timeout: Duration,
    trust: Option<Arc<AgentTrust>>,
}

impl TunnelService {
    /// A service registering streams in `registry`.
    ///
    /// With `trust`, an agent is accepted only with a valid, unrevoked certificate whose
    /// identity and key match its hello; without (plaintext development mode), its hello is
    /// believed.
    pub fn new(
        registry: Arc<AgentRegistry>,
        dispatcher_id: String,
        heartbeat_interval: Duration,
        trust: Option<Arc<AgentTrust>>,
    ) -> Self {
        Self {
            registry,
            dispatcher_id,
            heartbeat_interval,
            hello_timeout: Duration::from_secs(10),
            trust,
        }
    }
}

fn check_name(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() || value.len() > MAX_NAME_BYTES || value.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "hello.{field} must be 1 to {MAX_NAME_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}

fn identity_from_hello(hello: AgentHello) -> Result<AgentIdentity, Status> {
    check_name("agent_id", &hello.agent_id)?;
    check_name("tenant", &hello.tenant)?;
    check_name("connector_group", &hello.connector_group)?;
    check_name("version", &hello.version)?;
    if hello.hostname.len() > MAX_NAME_BYTES {
        return Err(Status::invalid_argument("hello.hostname is too long"));
    }
    if hello.capacity == 0 || hello.capacity > MAX_CAPACITY {
        return Err(Status::invalid_argument(format!(
            "hello.capacity must be 1 to {MAX_CAPACITY}"
        )));
    }
    SealingKey::from_der(&hello.public_key_der).map_err(|_| {
        Status::invalid_argument(
            "hello.public_key_der is not an RSA public key of at least 2048 bits",
        )
    })?;
    if !hello.hybrid_public_key.is_empty() {
        SealingKey::hybrid(&hello.hybrid_public_key).map_err(|_| {
            Status::invalid_argument(
                "hello.hybrid_public_key is not an X25519 + ML-KEM-768 public key",
            )
        })?;
    }
    Ok(AgentIdentity {
        agent_id: hello.agent_id,
        tenant: hello.tenant,
        connector_group: hello.connector_group,
        version: hello.version,
        hostname: hello.hostname,
        public_key_der: hello.public_key_der,
        hybrid_public_key: hello.hybrid_public_key,
        capacity: hello.capacity,
        cert_serial: None,
        certificate_der: None,
        directory_lockout: (
            hello.directory_lockout_threshold,
            hello.directory_lockout_window_s,
        ),
    })
}

/// Refuses a hello that does not match the certificate it came with.
fn matches_certificate(identity: &AgentIdentity, certified: &CertifiedAgent) -> Result<(), Status> {
    certified
        .check_claim(&AgentClaim {
            tenant: &identity.tenant,
            connector_group: &identity.connector_group,
            agent_id: &identity.agent_id,
            public_key_der: &identity.public_key_der,
            hybrid_public_key: &identity.hybrid_public_key,
        })
        .map_err(|distrust| ErrorCode::AgentNotTrusted.status(format!("hello: {distrust}")))
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ConnectResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AgentTunnel for TunnelService {
    type ConnectStream = ResponseStream;

    async fn connect(
        &self,
        request: Request<Streaming<ConnectRequest>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let peer = request.remote_addr();
        let certified = match &self.trust {
            Some(trust) => {
                let certs = request.peer_certs();
                let first = certs.as_ref().and_then(|c| c.first()).map(|c| c.as_ref());
                Some(trust.check(first).await.inspect_err(|status| {
                    tracing::warn!(peer = ?peer, reason = %status.message(), "agent refused");
                })?)
            }
            None => None,
        };
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(self.hello_timeout, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 s"))??;
        let Some(ConnectRequest {
            message: Some(connect_request::Message::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message on a stream must be a hello",
            ));
        };
        let mut identity = identity_from_hello(hello)?;
        if let Some((certified, der)) = certified {
            matches_certificate(&identity, &certified)?;
            identity.cert_serial = Some(certified.serial);
            identity.certificate_der = Some(der);
        }

        let (outbound, receiver) = mpsc::channel(identity.capacity as usize + 16);
        let welcome = ConnectResponse {
            message: Some(connect_response::Message::Welcome(Welcome {
                dispatcher_id: self.dispatcher_id.clone(),
                heartbeat_interval_ms: self.heartbeat_interval.as_millis() as u32,
            })),
        };
        outbound
            .send(Ok(welcome))
            .await
            .map_err(|_| Status::cancelled("stream closed"))?;

        let connection = Arc::new(AgentConnection::new(
            identity,
            self.registry.next_connection_id(),
            outbound,
        ));
        tracing::info!(
            agent_id = %connection.identity.agent_id,
            tenant = %connection.identity.tenant,
            connector_group = %connection.identity.connector_group,
            version = %connection.identity.version,
            hostname = %connection.identity.hostname,
            capacity = connection.identity.capacity,
            peer = ?peer,
            "agent connected"
        );
        self.registry.register(Arc::clone(&connection));

        let registry = Arc::clone(&self.registry);
        let trust = self.trust.clone();
        // An agent that stays silent for three heartbeats is gone even if TCP has not noticed.
        let liveness = self.heartbeat_interval * 3;
        tokio::spawn(async move {
            let reason = loop {
                match tokio::time::timeout(liveness, inbound.message()).await {
                    Err(_) => break "no heartbeat".to_owned(),
                    Ok(Err(status)) => break format!("stream error: {}", status.message()),
                    Ok(Ok(None)) => break "agent closed the stream".to_owned(),
                    Ok(Ok(Some(message))) => {
                        connection.touch();
                        match message.message {
                            Some(connect_request::Message::Answer(answer)) => {
                                let request_id = answer.request_id;
                                if !connection.complete(answer) {
                                    tracing::debug!(request_id, "late or unknown answer dropped");
                                }
                            }
                            Some(connect_request::Message::Heartbeat(beat)) => {
                                connection.set_directory_lockout(
                                    beat.directory_lockout_threshold,
                                    beat.directory_lockout_window_s,
                                );
                                connection.set_directory_health(
                                    beat.directory_servers_up,
                                    beat.directory_servers_total,
                                );
                            }
                            Some(connect_request::Message::Renew(request)) => {
                                let trust = trust.clone();
                                let connection = Arc::clone(&connection);
                                tokio::spawn(async move {
                                    let result = match &trust {
                                        Some(trust) => {
                                            trust
                                                .renew(&connection.identity, &request.csr_der)
                                                .await
                                        }
                                        None => {
                                            Err("this dispatcher has no store: nothing to renew"
                                                .into())
                                        }
                                    };
                                    let response = match result {
                                        Ok(certificate_pem) => RenewResponse {
                                            certificate_pem,
                                            error: String::new(),
                                        },
                                        Err(error) => RenewResponse {
                                            certificate_pem: String::new(),
                                            error,
                                        },
                                    };
                                    connection
                                        .send(ConnectResponse {
                                            message: Some(connect_response::Message::Renewed(
                                                response,
                                            )),
                                        })
                                        .await;
                                });
                            }
                            Some(connect_request::Message::Hello(_)) | None => {
                                break "unexpected message after hello".to_owned();
                            }
                        }
                    }
                }
            };
            registry.unregister(&connection.identity.agent_id, connection.connection_id);
            tracing::info!(agent_id = %connection.identity.agent_id, %reason, "agent disconnected");
        });

        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tenants_created_after_start_are_learnt_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("passage.db").display());
        let store = Store::open(&url)
            .await
            .unwrap()
            .with_key_protection(passage_store::KeyProtection::Plaintext);
        let default_ca = crate::enrolment::tenant_ca(&store, "default")
            .await
            .unwrap();
        let trust = AgentTrust::new(
            store.clone(),
            HashMap::from([("default".to_owned(), default_ca)]),
            None,
            Duration::from_secs(3600),
            Duration::from_secs(1),
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(trust.learn_new_tenants().await.unwrap(), 0);
        assert!(!trust.knows("acme"));

        // `passage agent token create --tenant acme` on another machine: a tenant without a CA
        // yet, which an operator may still import. Polling does not create one.
        store.ensure_tenant("acme", 0).await.unwrap();
        assert_eq!(trust.learn_new_tenants().await.unwrap(), 0);
        assert!(store.tenant_ca("acme").await.unwrap().is_none());
        // Another replica enrols acme's first agent, creating the CA.
        crate::enrolment::tenant_ca(&store, "acme").await.unwrap();
        assert_eq!(trust.learn_new_tenants().await.unwrap(), 1);
        assert!(trust.knows("acme"));
        assert!(trust.knows("default"));
        // The CA it trusts is the one in the store, which enrolment issues from.
        let stored = store.tenant_ca("acme").await.unwrap().expect("acme's CA");
        assert_eq!(trust.ca("acme").unwrap().cert_pem(), stored.cert_pem);
        assert_eq!(trust.learn_new_tenants().await.unwrap(), 0);
    }
}

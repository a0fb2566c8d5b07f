//! A dispatcher that lies: it stands between a gateway and the real dispatcher, passes key
//! sets through, and tampers with answers — forging a success, replaying an earlier sign-in's
//! answer, or swapping the answers of two concurrent sign-ins. The gateway must catch each.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use passage_proto::v1::{
    DirectoryUser, ListAgentKeysRequest, ListAgentKeysResponse, ValidateRequest, ValidateResponse,
    ValidationOutcome,
    dispatcher_client::DispatcherClient,
    dispatcher_server::{Dispatcher, DispatcherServer},
};
use tokio::sync::oneshot;
use tonic::{
    Request, Response, Status,
    transport::{Certificate, Channel, ClientTlsConfig, Identity, ServerTlsConfig},
};

/// How the dispatcher lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lie {
    /// Answers every validation itself with "success" for the user, never asking an agent.
    ForgeSuccess,
    /// Relays the first answer truthfully, then hands that answer out for every later sign-in.
    ReplayFirst,
    /// Relays answers in pairs, each to the other's sign-in.
    SwapPairs,
    /// Offers the agents' keys without their hybrid sealing key, to get version 1 envelopes.
    StripHybrid,
    /// Offers keys of its own in place of the agents' (certificates unchanged).
    SubstituteKeys,
}

struct Liar {
    real: DispatcherClient<Channel>,
    lie: Lie,
    validations: Arc<AtomicUsize>,
    first: Mutex<Option<ValidateResponse>>,
    waiting: Mutex<Option<(ValidateResponse, oneshot::Sender<ValidateResponse>)>>,
}

#[tonic::async_trait]
impl Dispatcher for Liar {
    async fn validate(
        &self,
        request: Request<ValidateRequest>,
    ) -> Result<Response<ValidateResponse>, Status> {
        let request = request.into_inner();
        self.validations.fetch_add(1, Ordering::Relaxed);
        let first_candidate = request
            .candidates
            .first()
            .map(|c| c.agent_id.clone())
            .unwrap_or_default();
        if self.lie == Lie::ForgeSuccess {
            // Everything a verdict could say, in the clear fields and in a made-up sealed one.
            #[allow(deprecated)]
            let forged = ValidateResponse {
                outcome: ValidationOutcome::Success as i32,
                user: Some(DirectoryUser {
                    dn: "uid=mallory,ou=people,dc=corp,dc=example,dc=com".into(),
                    object_id: "forged".into(),
                    upn: request.username.clone(),
                    display_name: "Forged".into(),
                    mail: "forged@corp.example.com".into(),
                    groups: vec!["admins".into()],
                    password_expires_in_s: 0,
                }),
                agent_id: first_candidate,
                sealed_answer: vec![0x5a; 96],
                lost_attempts: 0,
            };
            return Ok(Response::new(forged));
        }
        let truthful = self.real.clone().validate(request).await?.into_inner();
        match self.lie {
            Lie::ForgeSuccess => unreachable!("answered above"),
            Lie::StripHybrid | Lie::SubstituteKeys => Ok(Response::new(truthful)),
            Lie::ReplayFirst => {
                let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
                match first.as_ref() {
                    None => {
                        *first = Some(truthful.clone());
                        Ok(Response::new(truthful))
                    }
                    Some(recorded) => Ok(Response::new(ValidateResponse {
                        // Named after an agent this sign-in was sealed for, so only the
                        // answer itself can give the replay away.
                        agent_id: first_candidate,
                        ..recorded.clone()
                    })),
                }
            }
            Lie::SwapPairs => {
                // Take the waiting partner or become it under one lock: two sign-ins that
                // both found nobody waiting must not overwrite each other.
                let partner_or_wait = {
                    let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
                    match waiting.take() {
                        Some(partner) => Ok(partner),
                        None => {
                            let (tx, rx) = oneshot::channel();
                            *waiting = Some((truthful.clone(), tx));
                            Err(rx)
                        }
                    }
                };
                match partner_or_wait {
                    Ok((theirs, to_them)) => {
                        let _ = to_them.send(truthful);
                        Ok(Response::new(theirs))
                    }
                    Err(rx) => match tokio::time::timeout(Duration::from_secs(10), rx).await {
                        Ok(Ok(theirs)) => Ok(Response::new(theirs)),
                        _ => Err(Status::deadline_exceeded("no second sign-in to swap with")),
                    },
                }
            }
        }
    }

    async fn list_agent_keys(
        &self,
        request: Request<ListAgentKeysRequest>,
    ) -> Result<Response<ListAgentKeysResponse>, Status> {
        let mut keys = self
            .real
            .clone()
            .list_agent_keys(request.into_inner())
            .await?
            .into_inner();
        for key in &mut keys.keys {
            match self.lie {
                Lie::StripHybrid => key.hybrid_public_key.clear(),
                Lie::SubstituteKeys => {
                    let own =
                        passage_envelope::AgentKey::generate(passage_envelope::RsaBits::Rsa2048)
                            .expect("RSA key")
                            .with_hybrid(
                                passage_envelope::HybridKey::generate().expect("hybrid key"),
                            );
                    key.public_key_der = own.public_key_der().to_vec();
                    key.hybrid_public_key = own
                        .hybrid()
                        .map(|h| h.public().as_bytes().to_vec())
                        .unwrap_or_default();
                }
                _ => {}
            }
        }
        Ok(Response::new(keys))
    }
}

/// TLS for a lying dispatcher in production trust: it serves with the dispatcher's own server
/// certificate and calls the real one with a gateway's client certificate (all PEM).
pub struct LiarTls {
    /// The services CA.
    pub ca: Vec<u8>,
    /// Server certificate and key it presents to the gateway.
    pub server: (Vec<u8>, Vec<u8>),
    /// Client certificate and key it presents to the real dispatcher.
    pub client: (Vec<u8>, Vec<u8>),
}

/// A lying dispatcher on 127.0.0.1, in front of the real one at `real_url`.
pub struct ForgingDispatcher {
    /// Where gateways reach it.
    pub url: String,
    validations: Arc<AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

impl ForgingDispatcher {
    /// Starts it, plaintext or (with `tls`) as a production dispatcher would be reached.
    pub async fn start(real_url: &str, lie: Lie, tls: Option<LiarTls>) -> Self {
        let mut endpoint = Channel::from_shared(real_url.to_owned()).expect("dispatcher URL");
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = &tls {
            endpoint = endpoint
                .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(&tls.ca))
                        .identity(Identity::from_pem(&tls.client.0, &tls.client.1)),
                )
                .expect("client TLS");
            server = server
                .tls_config(
                    ServerTlsConfig::new()
                        .identity(Identity::from_pem(&tls.server.0, &tls.server.1)),
                )
                .expect("server TLS");
        }
        let real = DispatcherClient::new(endpoint.connect_lazy());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", listener.local_addr().expect("address"));
        let (stop, stopped) = oneshot::channel::<()>();
        let validations = Arc::new(AtomicUsize::new(0));
        let liar = Liar {
            real,
            lie,
            validations: Arc::clone(&validations),
            first: Mutex::new(None),
            waiting: Mutex::new(None),
        };
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = server
                .add_service(DispatcherServer::new(liar))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            url,
            validations,
            _stop: stop,
        }
    }

    /// How many validations gateways asked it for.
    pub fn validations(&self) -> usize {
        self.validations.load(Ordering::Relaxed)
    }
}

//! TLS listeners served by our own rustls acceptor, for what tonic's built-in server TLS
//! cannot do: client-certificate roots that change while the listener runs (a dispatcher
//! learning a tenant created after it started), and HTTPS for axum.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, RwLock},
    time::Duration,
};

use tokio::{net::TcpListener, sync::mpsc};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        DigitallySignedStruct, DistinguishedName, Error as TlsError, RootCertStore, ServerConfig,
        SignatureScheme,
        client::danger::HandshakeSignatureValid,
        crypto::{CryptoProvider, aws_lc_rs::default_provider},
        pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject},
        server::{
            WebPkiClientVerifier,
            danger::{ClientCertVerified, ClientCertVerifier},
        },
    },
    server::TlsStream,
};
use tokio_stream::StreamExt as _;

use crate::TransportError;

pub use tokio_rustls::rustls::ServerConfig as RustlsServerConfig;

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Client-certificate roots that can be replaced while the listener runs.
#[derive(Clone)]
pub struct ClientCas {
    current: Arc<RwLock<Arc<dyn ClientCertVerifier>>>,
    provider: Arc<CryptoProvider>,
    mandatory: bool,
}

impl std::fmt::Debug for ClientCas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCas").finish_non_exhaustive()
    }
}

impl ClientCas {
    /// Roots from PEM certificates (each item may hold several). Unless `mandatory`, a client
    /// without a certificate is let in (enrolment needs that) and services must check
    /// `peer_certs()` themselves; a certificate that is presented must chain to the roots.
    pub fn new<'a>(
        pems: impl IntoIterator<Item = &'a str>,
        mandatory: bool,
    ) -> Result<Self, TransportError> {
        let provider = Arc::new(default_provider());
        let verifier = verifier(pems, &provider, mandatory)?;
        Ok(Self {
            current: Arc::new(RwLock::new(verifier)),
            provider,
            mandatory,
        })
    }

    /// Replaces the roots; handshakes from now on use the new set, connections already
    /// established are not touched.
    pub fn replace<'a>(
        &self,
        pems: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), TransportError> {
        let verifier = verifier(pems, &self.provider, self.mandatory)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = verifier;
        Ok(())
    }

    fn get(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }
}

fn verifier<'a>(
    pems: impl IntoIterator<Item = &'a str>,
    provider: &Arc<CryptoProvider>,
    mandatory: bool,
) -> Result<Arc<dyn ClientCertVerifier>, TransportError> {
    let mut roots = RootCertStore::empty();
    for pem in pems {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| TransportError::Config(format!("client CA: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| TransportError::Config(format!("client CA: {e}")))?;
        }
    }
    if roots.is_empty() {
        return Err(TransportError::Config("no client CA certificate".into()));
    }
    let builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider));
    let builder = if mandatory {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder
        .build()
        .map_err(|e| TransportError::Config(format!("client CA: {e}")))
}

/// The rustls hook: every call goes to the roots current at that moment.
#[derive(Debug)]
struct Reloading(ClientCas);

impl ClientCertVerifier for Reloading {
    fn client_auth_mandatory(&self) -> bool {
        self.0.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints would borrow from a set that may be replaced; clients with one certificate
        // (agents, gateways) send it without them.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        self.0
            .get()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.get().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.get().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.get().supported_verify_schemes()
    }
}

/// A rustls server configuration from PEM files, asking for client certificates from
/// `client_cas` when given, offering `alpn` (`h2` for gRPC, `http/1.1` for axum).
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_cas: Option<&ClientCas>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TransportError> {
    passage_credentials::secret_file::check_permissions(key_file)
        .map_err(|e| TransportError::Config(e.to_string()))?;
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TransportError::Config(format!("{}: {e}", cert_file.display())))?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| TransportError::Config(format!("{}: {e}", key_file.display())))?;
    let builder = ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| TransportError::Config(e.to_string()))?;
    let builder = match client_cas {
        Some(cas) => builder.with_client_cert_verifier(Arc::new(Reloading(cas.clone()))),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TransportError::Config(format!("{}: {e}", cert_file.display())))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A TCP listener whose connections are TLS: handshakes run in their own tasks, so a slow
/// client never holds up the others.
pub struct TlsListener {
    local: SocketAddr,
    accepted: mpsc::Receiver<(TlsStream<tokio::net::TcpStream>, SocketAddr)>,
}

impl TlsListener {
    /// Serves TLS with `config` on `listener`.
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, accepted) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::debug!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let sender = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = sender.send((tls, peer)).await;
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(%peer, error = %err, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(Self { local, accepted })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The next established connection; `None` once the acceptor has stopped.
    pub async fn accept(&mut self) -> Option<(TlsStream<tokio::net::TcpStream>, SocketAddr)> {
        self.accepted.recv().await
    }

    /// The connections as the stream `tonic`'s `serve_with_incoming` takes; peers' certificates
    /// then reach services through `Request::peer_certs`.
    pub fn into_incoming(
        self,
    ) -> impl tokio_stream::Stream<Item = Result<TlsStream<tokio::net::TcpStream>, std::io::Error>>
    {
        tokio_stream::wrappers::ReceiverStream::new(self.accepted).map(|(tls, _)| Ok(tls))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_rustls::{
        TlsConnector,
        rustls::{ClientConfig, pki_types::ServerName},
    };

    struct Ca {
        pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// (certificate PEM, key PEM) for `localhost`, issued by `ca`.
    fn leaf(ca: &Ca) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// One TLS connection to a listener using `client_cas`; true when the client presenting
    /// a certificate from `client_ca` (or none) gets an answer back.
    async fn handshake(
        server_files: &(tempfile::TempDir, std::path::PathBuf, std::path::PathBuf),
        server_ca: &Ca,
        client_cas: &ClientCas,
        client: Option<&Ca>,
    ) -> bool {
        let config =
            server_config(&server_files.1, &server_files.2, Some(client_cas), &[]).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut tls = TlsListener::new(listener, config).unwrap();
        tokio::spawn(async move {
            while let Some((mut stream, _)) = tls.accept().await {
                let _ = stream.write_all(b"ok").await;
                let _ = stream.shutdown().await;
            }
        });

        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(server_ca.pem.as_bytes()).unwrap())
            .unwrap();
        let builder = ClientConfig::builder_with_provider(Arc::new(default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match client {
            Some(ca) => {
                let (cert, key) = leaf(ca);
                builder
                    .with_client_auth_cert(
                        vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                        PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                    )
                    .unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let Ok(mut stream) = TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
        else {
            return false;
        };
        // TLS 1.3: a refused client certificate shows when reading.
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.is_ok() && answer == b"ok"
    }

    #[tokio::test]
    async fn client_roots_can_be_replaced_while_the_listener_runs() {
        let server_ca = ca("server CA");
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = leaf(&server_ca);
        let (cert_file, key_file) = (dir.path().join("server.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_file, cert).unwrap();
        std::fs::write(&key_file, key).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let files = (dir, cert_file, key_file);

        let (tenant_a, tenant_b) = (ca("tenant a"), ca("tenant b"));
        let cas = ClientCas::new([tenant_a.pem.as_str()], false).unwrap();
        assert!(handshake(&files, &server_ca, &cas, Some(&tenant_a)).await);
        assert!(handshake(&files, &server_ca, &cas, None).await, "optional");
        assert!(!handshake(&files, &server_ca, &cas, Some(&tenant_b)).await);

        cas.replace([tenant_a.pem.as_str(), tenant_b.pem.as_str()])
            .unwrap();
        assert!(handshake(&files, &server_ca, &cas, Some(&tenant_b)).await);
        assert!(handshake(&files, &server_ca, &cas, Some(&tenant_a)).await);

        let mandatory = ClientCas::new([tenant_a.pem.as_str()], true).unwrap();
        assert!(!handshake(&files, &server_ca, &mandatory, None).await);
        assert!(handshake(&files, &server_ca, &mandatory, Some(&tenant_a)).await);
    }
}

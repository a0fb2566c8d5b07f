//! Listening and dialling, the same way in every Passage process.
//!
//! Every listener speaks TLS unless the operator passes the explicit development flag
//! (`--insecure-plaintext`, which `passage demo` sets); a listener with neither refuses to
//! start. Every gRPC server also serves `grpc.health.v1` and server reflection, so `grpcurl`
//! and Kubernetes probes work out of the box.

pub mod client_tls;
pub mod proxy;
pub mod replicas;
pub mod tls;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;
use tokio::net::TcpListener;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
    server::TcpIncoming,
};

/// Transport set-up errors.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Neither TLS material nor the plaintext flag was given.
    #[error(
        "{0}: no TLS configured; set tls.cert_file and tls.key_file, or pass --insecure-plaintext for development"
    )]
    NoTls(&'static str),
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Binding the listener failed.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// TLS or endpoint configuration was refused.
    #[error("{0}")]
    Config(String),
}

/// Server-side TLS material (PEM files).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// Certificate chain.
    pub cert_file: PathBuf,
    /// Private key (must be mode 0600).
    pub key_file: PathBuf,
    /// When set, clients must present a certificate issued by this CA (mutual TLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// Client-side TLS material (PEM files).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// CA that must have issued the server's certificate (pinning); system roots are not used.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain, for mutual TLS.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Client private key.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

fn read(path: &PathBuf) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|source| TransportError::Read {
        path: path.clone(),
        source,
    })
}

/// A tonic server builder speaking TLS with `tls` (clients must present a certificate from
/// `tls.client_ca_file` when it is set), or plaintext when `insecure_plaintext`.
pub fn server_builder(
    name: &'static str,
    tls: Option<&ServerTls>,
    insecure_plaintext: bool,
) -> Result<Server, TransportError> {
    let builder = plaintext_builder();
    match (tls, insecure_plaintext) {
        (Some(tls), _) => {
            check_key_permissions(&tls.key_file)?;
            let identity = Identity::from_pem(read(&tls.cert_file)?, read(&tls.key_file)?);
            let mut config = ServerTlsConfig::new().identity(identity);
            if let Some(ca) = &tls.client_ca_file {
                config = config.client_ca_root(Certificate::from_pem(read(ca)?));
            }
            builder
                .tls_config(config)
                .map_err(|err| TransportError::Config(format!("{name}: {err}")))
        }
        (None, true) => Ok(builder),
        (None, false) => Err(TransportError::NoTls(name)),
    }
}

/// A tonic server builder with Passage's connection settings and no TLS: for listeners whose
/// TLS is done by a [`tls::TlsListener`], and for the development flag.
pub fn plaintext_builder() -> Server {
    Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .tcp_nodelay(true)
}

fn check_key_permissions(path: &std::path::Path) -> Result<(), TransportError> {
    passage_credentials::secret_file::check_permissions(path)
        .map_err(|err| TransportError::Config(err.to_string()))
}

/// Binds `addr` (port 0 picks a free port) and returns the incoming stream and the bound address.
pub async fn bind(addr: SocketAddr) -> Result<(TcpIncoming, SocketAddr), TransportError> {
    let (listener, local) = bind_tcp(addr).await?;
    Ok((TcpIncoming::from(listener).with_nodelay(Some(true)), local))
}

/// Binds `addr` (port 0 picks a free port) for a listener that does its own TLS or HTTP, and
/// returns it with the bound address.
pub async fn bind_tcp(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), TransportError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| TransportError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| TransportError::Bind { addr, source })?;
    Ok((listener, local))
}

/// The gRPC health service (all services start as serving) and its reporter.
pub fn health() -> (
    tonic_health::server::HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    tonic_health::server::health_reporter()
}

/// The gRPC server-reflection service describing `passage.v1` (and health).
pub fn reflection() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    TransportError,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(passage_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|err| TransportError::Config(format!("reflection: {err}")))
}

/// The same reflection as [`reflection`] under the older `grpc.reflection.v1alpha` name, which
/// Python's `grpcio-reflection` client and older `grpcurl` builds still speak.
pub fn reflection_v1alpha() -> Result<
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
    TransportError,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(passage_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|err| TransportError::Config(format!("reflection: {err}")))
}

/// An error and every cause under it, joined (`transport error: tcp connect error: Connection
/// refused (os error 111)`), with a hint of what to check for the usual root causes: tonic's
/// own messages say only "transport error".
pub fn describe_error(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    let mut innermost = text.clone();
    while let Some(inner) = cause {
        let part = inner.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        innermost = part;
        cause = inner.source();
    }
    let lower = innermost.to_lowercase();
    let hint = if lower.contains("connection refused") {
        Some("nothing listens there: is the service running, and is the port right?")
    } else if lower.contains("dns") || lower.contains("lookup") || lower.contains("resolve") {
        Some("the host name does not resolve: check its spelling and the DNS")
    } else if lower.contains("certificate")
        || lower.contains("unknownissuer")
        || lower.contains("tls")
    {
        Some(
            "TLS failed: check --ca-file (the CA that signed the server's certificate) and that the certificate names this host",
        )
    } else if lower.contains("timed out") {
        Some("no answer in time: check the address, firewalls and proxies")
    } else {
        None
    };
    match hint {
        Some(hint) => format!("{text} ({hint})"),
        None => text,
    }
}

/// An endpoint for `url` (`https://` with `tls`, or `http://` only when `insecure_plaintext`).
pub fn endpoint(
    url: &str,
    tls: Option<&ClientTls>,
    insecure_plaintext: bool,
) -> Result<Endpoint, TransportError> {
    endpoint_with_identity(url, tls, None, insecure_plaintext)
}

/// A client certificate and key held in memory (PEM), e.g. an enrolled agent's.
#[derive(Clone)]
pub struct ClientIdentity {
    /// Certificate chain, PEM.
    pub cert_pem: String,
    /// Private key, PEM (never printed).
    pub key_pem: passage_credentials::Secret,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("key_pem", &"[redacted]")
            .finish()
    }
}

/// Like [`endpoint`], presenting `identity` (which takes precedence over `tls`'s files).
pub fn endpoint_with_identity(
    url: &str,
    tls: Option<&ClientTls>,
    identity: Option<&ClientIdentity>,
    insecure_plaintext: bool,
) -> Result<Endpoint, TransportError> {
    endpoint_with_identity_named(url, tls, identity, insecure_plaintext, None)
}

/// Like [`endpoint_with_identity`]; with `server_name`, the server's certificate must name it
/// rather than the URL's host (a URL pointed at one replica's address:
/// [`replicas::endpoint_at`]).
pub(crate) fn endpoint_with_identity_named(
    url: &str,
    tls: Option<&ClientTls>,
    identity: Option<&ClientIdentity>,
    insecure_plaintext: bool,
    server_name: Option<&str>,
) -> Result<Endpoint, TransportError> {
    let endpoint = Channel::from_shared(url.to_owned())
        .map_err(|err| TransportError::Config(format!("{url}: {err}")))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    if url.starts_with("http://") {
        if !insecure_plaintext {
            return Err(TransportError::Config(format!(
                "{url} is plaintext; use https:// or pass --insecure-plaintext for development"
            )));
        }
        return Ok(endpoint);
    }
    let tls = tls.cloned().unwrap_or_default();
    let mut config = ClientTlsConfig::new();
    if let Some(name) = server_name {
        config = config.domain_name(name);
    }
    if let Some(ca) = &tls.ca_file {
        config = config.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    if let Some(identity) = identity {
        config = config.identity(Identity::from_pem(
            identity.cert_pem.as_bytes(),
            identity.key_pem.expose(),
        ));
    } else if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        check_key_permissions(key)?;
        config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    endpoint
        .tls_config(config)
        .map_err(|err| TransportError::Config(format!("{url}: {err}")))
}

/// Resolves on SIGTERM (Kubernetes stopping the pod) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

//! HTTPS for the gateway's HTTP side (discovery, JWKS): a TLS listener for axum, and a small
//! HTTPS client for relying parties, the CLI and tests.

use std::{net::SocketAddr, path::Path, sync::Arc};

use tokio::net::TcpListener;
use tokio_rustls::{
    TlsConnector,
    rustls::{ServerConfig, pki_types::ServerName},
    server::TlsStream,
};

/// A rustls server configuration for HTTPS from PEM files.
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, String> {
    passage_transport::tls::server_config(cert_file, key_file, None, &[b"http/1.1"])
        .map_err(|e| e.to_string())
}

/// The gateway's HTTPS listener for axum.
pub struct TlsListener(passage_transport::tls::TlsListener);

impl TlsListener {
    /// Serves TLS with `config` on `listener`.
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<Self> {
        passage_transport::tls::TlsListener::new(listener, config).map(Self)
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.0.accept().await {
            Some(accepted) => accepted,
            // The acceptor task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.0.local_addr())
    }
}

/// A TLS connector trusting `ca_file` (PEM) if given, else the system's roots.
pub fn connector(ca_file: Option<&Path>) -> Result<TlsConnector, String> {
    passage_transport::client_tls::client_config(ca_file, &[])
        .map(TlsConnector::from)
        .map_err(|e| e.to_string())
}

/// The name to check the server certificate against.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
    .map_err(|e| format!("{host}: {e}"))
}

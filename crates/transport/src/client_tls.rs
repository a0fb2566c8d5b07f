//! Whom Passage trusts when it dials out over TLS — to the issuer (the `passage` CLI, relying
//! parties' helpers), to directory servers (LDAPS and StartTLS) — in one place.
//!
//! A server is trusted when its chain leads to `ca_file` (PEM), or to the system's roots when
//! none is given, and names the host dialled. With certificate pins (SHA-256 of the
//! certificate's DER), the server's own certificate must also be one of them; pins without a
//! `ca_file` are enough on their own — the way to trust a domain controller's self-signed
//! certificate without trusting anything else.

use std::{path::Path, sync::Arc};

use aws_lc_rs::digest::{SHA256, digest};
use tokio_rustls::rustls::{
    ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, aws_lc_rs::default_provider},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};

use crate::TransportError;

/// A SHA-256 certificate fingerprint.
pub type Pin = [u8; 32];

/// Parses a pin written as 64 hex digits (colons allowed: `AB:CD:...`, as `openssl x509
/// -fingerprint -sha256` prints it).
pub fn parse_pin(text: &str) -> Result<Pin, TransportError> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    let bad = || {
        TransportError::Config(format!(
            "certificate pin {text:?}: expected the SHA-256 fingerprint as 64 hex digits"
        ))
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut pin = [0u8; 32];
    for (i, byte) in pin.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(pin)
}

/// A client configuration trusting `ca_file` (else the system's roots) and, with `pins`, only
/// servers whose certificate is pinned (see the module's documentation).
pub fn client_config(
    ca_file: Option<&Path>,
    pins: &[Pin],
) -> Result<Arc<ClientConfig>, TransportError> {
    let provider = Arc::new(default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TransportError::Config(format!("TLS: {e}")))?;
    let chain = match ca_file {
        Some(path) => Some(roots_from(path)?),
        None if pins.is_empty() => {
            let mut roots = RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            Some(roots)
        }
        None => None,
    };
    let config = if pins.is_empty() {
        builder
            .with_root_certificates(chain.unwrap_or_else(RootCertStore::empty))
            .with_no_client_auth()
    } else {
        let chain = chain
            .map(|roots| {
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|e| TransportError::Config(format!("TLS: {e}")))
            })
            .transpose()?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                pins: pins.to_vec(),
                chain,
                provider,
            }))
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
}

fn roots_from(path: &Path) -> Result<RootCertStore, TransportError> {
    let read = |e: &dyn std::fmt::Display| {
        TransportError::Config(format!("CA file {}: {e}", path.display()))
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| read(&e))? {
        roots
            .add(cert.map_err(|e| read(&e))?)
            .map_err(|e| read(&e))?;
    }
    if roots.is_empty() {
        return Err(read(&"no certificate in it"));
    }
    Ok(roots)
}

/// Accepts a server whose certificate is pinned (and, with a chain verifier, also valid).
#[derive(Debug)]
struct PinnedVerifier {
    pins: Vec<Pin>,
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let fingerprint = digest(&SHA256, end_entity.as_ref());
        if !self.pins.iter().any(|pin| pin == fingerprint.as_ref()) {
            return Err(TlsError::General(
                "the server's certificate is not one of the pinned certificates".into(),
            ));
        }
        match &self.chain {
            Some(chain) => {
                chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        tokio_rustls::rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        tokio_rustls::rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_with_or_without_colons() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_pin(&hex).unwrap(), [0xab; 32]);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_pin(&colons).unwrap(), [0xab; 32]);
        for bad in [
            "",
            "abc",
            &"zz".repeat(32),
            &"ab".repeat(33),
            &"é".repeat(32),
        ] {
            assert!(parse_pin(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = client_config(Some(&empty), &[]).unwrap_err();
        assert!(err.to_string().contains("no certificate"), "{err}");
        assert!(client_config(None, &[[1; 32]]).is_ok());
        assert!(client_config(None, &[]).is_ok());
    }
}

//! The agent's durable identity: `agent-id` and `agent-key.der` in its state directory.

use std::{path::Path, sync::Arc};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::{Engine, engine::general_purpose::STANDARD};
use passage_credentials::{Secret, secret_file};
use passage_envelope::{AgentKey, HybridKey, RsaBits};
use passage_pki::{CertifiedAgent, pem_to_der};
use passage_transport::ClientIdentity;

use crate::AgentError;

/// File name of the agent id.
pub const AGENT_ID_FILE: &str = "agent-id";
/// File name of the PKCS#8 DER private key.
pub const KEY_FILE: &str = "agent-key.der";
/// File name of the hybrid X25519 + ML-KEM-768 sealing key (envelope version 2).
pub const HYBRID_KEY_FILE: &str = "sealing-key.bin";
/// File name of the certificate issued at enrolment (PEM).
pub const CERT_FILE: &str = "agent-cert.pem";
/// File name of the tenant CA certificate received at enrolment (PEM).
pub const TENANT_CA_FILE: &str = "tenant-ca.pem";

/// The agent's id and key pair, and its certificate once enrolled.
#[derive(Debug, Clone)]
pub struct AgentState {
    /// Stable agent id (assigned at enrolment, generated locally before).
    pub agent_id: String,
    /// RSA key pair; the public half is advertised, the private half opens sealed passwords.
    pub key: Arc<AgentKey>,
    /// The certificate from enrolment (PEM) and what it certifies.
    pub certificate: Option<(String, CertifiedAgent)>,
}

impl AgentState {
    /// The TLS client identity (certificate and key) when enrolled.
    pub fn client_identity(&self) -> Option<ClientIdentity> {
        let (cert_pem, _) = self.certificate.as_ref()?;
        Some(client_identity(cert_pem, &self.key))
    }

    /// Replaces the key and certificate in `dir` after a renewal (the key file atomically,
    /// created 0600).
    pub fn save_renewal(dir: &Path, key: &AgentKey, cert_pem: &str) -> Result<(), AgentError> {
        let fail = |what: &str, e: std::io::Error| {
            AgentError::State(format!("{what} in {}: {e}", dir.display()))
        };
        let staged = dir.join(format!("{KEY_FILE}.new"));
        let _ = std::fs::remove_file(&staged);
        secret_file::write_new(&staged, key.pkcs8_der().expose())
            .map_err(|e| fail("writing the new key", e))?;
        let staged_hybrid = dir.join(format!("{HYBRID_KEY_FILE}.new"));
        if let Some(hybrid) = key.hybrid() {
            let _ = std::fs::remove_file(&staged_hybrid);
            secret_file::write_new(&staged_hybrid, hybrid.private_bytes().expose())
                .map_err(|e| fail("writing the new sealing key", e))?;
        }
        let staged_cert = dir.join(format!("{CERT_FILE}.new"));
        std::fs::write(&staged_cert, cert_pem)
            .map_err(|e| fail("writing the new certificate", e))?;
        std::fs::rename(&staged, dir.join(KEY_FILE))
            .map_err(|e| fail("installing the new key", e))?;
        if key.hybrid().is_some() {
            std::fs::rename(&staged_hybrid, dir.join(HYBRID_KEY_FILE))
                .map_err(|e| fail("installing the new sealing key", e))?;
        }
        std::fs::rename(&staged_cert, dir.join(CERT_FILE))
            .map_err(|e| fail("installing the new certificate", e))
    }

    /// Records the outcome of enrolment in `dir`: agent id, certificate, tenant CA.
    pub fn save_enrolment(
        dir: &Path,
        agent_id: &str,
        cert_pem: &str,
        ca_pem: &str,
    ) -> Result<(), AgentError> {
        let write = |name: &str, text: &str| {
            std::fs::write(dir.join(name), text)
                .map_err(|e| AgentError::State(format!("writing {name} in {}: {e}", dir.display())))
        };
        write(CERT_FILE, cert_pem)?;
        write(TENANT_CA_FILE, ca_pem)?;
        write(AGENT_ID_FILE, agent_id)
    }
}

/// The TLS client identity of `key` certified by `cert_pem`.
pub fn client_identity(cert_pem: &str, key: &AgentKey) -> ClientIdentity {
    ClientIdentity {
        cert_pem: cert_pem.to_owned(),
        key_pem: Secret::new(pkcs8_pem(key.pkcs8_der().expose()).into_bytes()),
    }
}

/// PEM ("PRIVATE KEY") of a PKCS#8 DER key.
fn pkcs8_pem(der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

impl AgentState {
    /// Loads the state from `dir`, generating the id and keys on first start: the RSA key
    /// always (TLS identity, envelope version 1), the hybrid sealing key when `hybrid`.
    pub fn load_or_create(dir: &Path, bits: RsaBits, hybrid: bool) -> Result<Self, AgentError> {
        let state_err = |what: &str, err: std::io::Error| {
            AgentError::State(format!("{what} in {}: {err}", dir.display()))
        };
        std::fs::create_dir_all(dir).map_err(|e| state_err("creating", e))?;

        let id_path = dir.join(AGENT_ID_FILE);
        let agent_id = match std::fs::read_to_string(&id_path) {
            Ok(id) => id.trim().to_owned(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 8];
                SystemRandom::new()
                    .fill(&mut bytes)
                    .map_err(|_| AgentError::State("no random source".into()))?;
                let id = format!(
                    "agent-{}",
                    bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
                );
                std::fs::write(&id_path, &id).map_err(|e| state_err("writing agent-id", e))?;
                id
            }
            Err(err) => return Err(state_err("reading agent-id", err)),
        };
        if agent_id.is_empty() {
            return Err(AgentError::State(format!("{} is empty", id_path.display())));
        }

        let key_path = dir.join(KEY_FILE);
        let key = if key_path.exists() {
            let der =
                secret_file::read(&key_path).map_err(|e| state_err("reading agent-key.der", e))?;
            AgentKey::from_pkcs8_der(der.expose())
                .map_err(|err| AgentError::State(format!("{}: {err}", key_path.display())))?
        } else {
            let key = AgentKey::generate(bits).map_err(|err| AgentError::State(err.to_string()))?;
            secret_file::write_new(&key_path, key.pkcs8_der().expose())
                .map_err(|e| state_err("writing agent-key.der", e))?;
            tracing::info!(path = %key_path.display(), "generated a new agent key pair");
            key
        };
        let key = if hybrid {
            let path = dir.join(HYBRID_KEY_FILE);
            let sealing = if path.exists() {
                let bytes = secret_file::read(&path)
                    .map_err(|e| state_err("reading sealing-key.bin", e))?;
                HybridKey::from_bytes(bytes.expose())
                    .map_err(|err| AgentError::State(format!("{}: {err}", path.display())))?
            } else {
                let sealing =
                    HybridKey::generate().map_err(|err| AgentError::State(err.to_string()))?;
                secret_file::write_new(&path, sealing.private_bytes().expose())
                    .map_err(|e| state_err("writing sealing-key.bin", e))?;
                tracing::info!(path = %path.display(), "generated a new hybrid sealing key pair");
                sealing
            };
            key.with_hybrid(sealing)
        } else {
            key
        };
        let cert_path = dir.join(CERT_FILE);
        let certificate = match std::fs::read_to_string(&cert_path) {
            Ok(pem) => {
                let der = pem_to_der(&pem).ok_or_else(|| {
                    AgentError::State(format!("{} is not PEM", cert_path.display()))
                })?;
                let certified = CertifiedAgent::parse(&der)
                    .map_err(|e| AgentError::State(format!("{}: {e}", cert_path.display())))?;
                if certified.public_key_der != key.public_key_der() {
                    return Err(AgentError::State(format!(
                        "{} does not certify {}; enrol again",
                        cert_path.display(),
                        key_path.display()
                    )));
                }
                // A certificate from before the agent had a hybrid key certifies none: the
                // agent seals with RSA until its next renewal certifies one.
                if let Some(certified_hybrid) = &certified.hybrid_public_key
                    && key.hybrid().map(|h| h.public().as_bytes())
                        != Some(certified_hybrid.as_slice())
                {
                    return Err(AgentError::State(format!(
                        "{} certifies another sealing key than {HYBRID_KEY_FILE}; enrol again",
                        cert_path.display()
                    )));
                }
                Some((pem, certified))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => return Err(state_err("reading agent-cert.pem", err)),
        };
        Ok(Self {
            agent_id,
            key: Arc::new(key),
            certificate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_is_created_once_with_a_private_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let first = AgentState::load_or_create(dir.path(), RsaBits::Rsa2048, true).unwrap();
        let again = AgentState::load_or_create(dir.path(), RsaBits::Rsa2048, true).unwrap();
        assert_eq!(first.agent_id, again.agent_id);
        assert_eq!(first.key.public_key_der(), again.key.public_key_der());
        assert_eq!(
            first.key.hybrid().unwrap().public().as_bytes(),
            again.key.hybrid().unwrap().public().as_bytes()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for file in [KEY_FILE, HYBRID_KEY_FILE] {
                let mode = std::fs::metadata(dir.path().join(file))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{file}");
            }
            std::fs::set_permissions(
                dir.path().join(KEY_FILE),
                std::fs::Permissions::from_mode(0o644),
            )
            .unwrap();
            let err = AgentState::load_or_create(dir.path(), RsaBits::Rsa2048, true).unwrap_err();
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
    }
}

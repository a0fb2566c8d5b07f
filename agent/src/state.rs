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

    /// Replaces the keys and certificate in `dir` after a renewal. Every file is staged
    /// (`.new`, keys created 0600) and synced first; installing the RSA key is the point of no
    /// return, and [`AgentState::load_or_create`] finishes or discards a renewal a crash
    /// interrupted, so the keys and the certificate on disk always belong together.
    pub fn save_renewal(dir: &Path, key: &AgentKey, cert_pem: &str) -> Result<(), AgentError> {
        let fail = |what: &str, e: std::io::Error| {
            AgentError::State(format!("{what} in {}: {e}", dir.display()))
        };
        let staged = |name: &str| dir.join(format!("{name}.new"));
        for name in [KEY_FILE, HYBRID_KEY_FILE, CERT_FILE] {
            let _ = std::fs::remove_file(staged(name));
        }
        secret_file::write_new(&staged(KEY_FILE), key.pkcs8_der().expose())
            .map_err(|e| fail("writing the new key", e))?;
        if let Some(hybrid) = key.hybrid() {
            secret_file::write_new(&staged(HYBRID_KEY_FILE), hybrid.private_bytes().expose())
                .map_err(|e| fail("writing the new sealing key", e))?;
        }
        write_synced(&staged(CERT_FILE), cert_pem.as_bytes())
            .map_err(|e| fail("writing the new certificate", e))?;
        sync_dir(dir).map_err(|e| fail("syncing", e))?;
        std::fs::rename(staged(KEY_FILE), dir.join(KEY_FILE))
            .map_err(|e| fail("installing the new key", e))?;
        Self::finish_renewal(dir)
    }

    /// Installs the staged sealing key (or, if the new certificate certifies none, removes the
    /// old one: old private keys must not linger) and the staged certificate.
    fn finish_renewal(dir: &Path) -> Result<(), AgentError> {
        let fail = |what: &str, e: std::io::Error| {
            AgentError::State(format!("{what} in {}: {e}", dir.display()))
        };
        let staged_hybrid = dir.join(format!("{HYBRID_KEY_FILE}.new"));
        if staged_hybrid.exists() {
            std::fs::rename(&staged_hybrid, dir.join(HYBRID_KEY_FILE))
                .map_err(|e| fail("installing the new sealing key", e))?;
        } else {
            match std::fs::remove_file(dir.join(HYBRID_KEY_FILE)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(fail("removing the old sealing key", e));
                }
                _ => {}
            }
        }
        std::fs::rename(dir.join(format!("{CERT_FILE}.new")), dir.join(CERT_FILE))
            .map_err(|e| fail("installing the new certificate", e))?;
        sync_dir(dir).map_err(|e| fail("syncing", e))
    }

    /// Finishes a renewal a crash interrupted after its point of no return, or discards one
    /// interrupted before it.
    fn recover_interrupted_renewal(dir: &Path) -> Result<(), AgentError> {
        let staged = |name: &str| dir.join(format!("{name}.new"));
        if staged(KEY_FILE).exists() {
            for name in [KEY_FILE, HYBRID_KEY_FILE, CERT_FILE] {
                let _ = std::fs::remove_file(staged(name));
            }
            tracing::warn!(dir = %dir.display(), "discarded a renewal interrupted before it took effect");
        } else if staged(CERT_FILE).exists() {
            Self::finish_renewal(dir)?;
            tracing::warn!(dir = %dir.display(), "finished a renewal a crash interrupted");
        } else if staged(HYBRID_KEY_FILE).exists() {
            let _ = std::fs::remove_file(staged(HYBRID_KEY_FILE));
        }
        Ok(())
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

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Makes renames in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
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
        Self::recover_interrupted_renewal(dir)?;

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
        // The sealing key is loaded whenever there is one (a certificate may certify it even
        // after post_quantum_sealing was turned off: the next renewal drops it), and made
        // when there is none and the agent should have one.
        let hybrid_path = dir.join(HYBRID_KEY_FILE);
        let key = if hybrid_path.exists() {
            let bytes = secret_file::read(&hybrid_path)
                .map_err(|e| state_err("reading sealing-key.bin", e))?;
            let sealing = HybridKey::from_bytes(bytes.expose())
                .map_err(|err| AgentError::State(format!("{}: {err}", hybrid_path.display())))?;
            key.with_hybrid(sealing)
        } else if hybrid {
            let sealing =
                HybridKey::generate().map_err(|err| AgentError::State(err.to_string()))?;
            secret_file::write_new(&hybrid_path, sealing.private_bytes().expose())
                .map_err(|e| state_err("writing sealing-key.bin", e))?;
            tracing::info!(path = %hybrid_path.display(), "generated a new hybrid sealing key pair");
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
        let certified_hybrid = certificate
            .as_ref()
            .is_some_and(|(_, c)| c.hybrid_public_key.is_some());
        let key = if !hybrid && !certified_hybrid {
            key.without_hybrid()
        } else {
            key
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

    fn certificate_for(key: &AgentKey, agent_id: &str) -> String {
        let ca = passage_pki::TenantCa::generate("default").unwrap();
        let csr = passage_pki::agent_csr(
            key.pkcs8_der().expose(),
            agent_id,
            key.hybrid().map(|h| h.public().as_bytes()),
        )
        .unwrap();
        ca.issue_agent(
            passage_pki::AgentCsr::parse(&csr).unwrap(),
            &passage_pki::AgentIdentity {
                tenant: "default".into(),
                connector_group: "corp".into(),
                agent_id: agent_id.into(),
            },
            std::time::Duration::from_secs(3600),
        )
        .unwrap()
        .cert_pem
    }

    fn new_keys() -> AgentKey {
        AgentKey::generate(RsaBits::Rsa2048)
            .unwrap()
            .with_hybrid(HybridKey::generate().unwrap())
    }

    #[test]
    fn a_renewal_a_crash_interrupted_is_finished_or_discarded_never_half_done() {
        let dir = tempfile::tempdir().unwrap();
        let first = AgentState::load_or_create(dir.path(), RsaBits::Rsa2048, true).unwrap();
        let old_cert = certificate_for(&first.key, &first.agent_id);
        std::fs::write(dir.path().join(CERT_FILE), &old_cert).unwrap();
        let staged = |name: &str| dir.path().join(format!("{name}.new"));

        // Crash before the point of no return: everything staged, nothing installed.
        let renewed = new_keys();
        let new_cert = certificate_for(&renewed, &first.agent_id);
        secret_file::write_new(&staged(KEY_FILE), renewed.pkcs8_der().expose()).unwrap();
        secret_file::write_new(
            &staged(HYBRID_KEY_FILE),
            renewed.hybrid().unwrap().private_bytes().expose(),
        )
        .unwrap();
        std::fs::write(staged(CERT_FILE), &new_cert).unwrap();
        let after = AgentState::load_or_create(dir.path(), RsaBits::Rsa2048, true).unwrap();
        assert_eq!(after.key.public_key_der(), first.key.public_key_der());
        assert_eq!(after.certificate.unwrap().0, old_cert);
        for name in [KEY_FILE, HYBRID_KEY_FILE, CERT_FILE] {
            assert!(!staged(name).exists(), "{name}.new left behind");
        }

        // Crash after it: the RSA key installed, the sealing key and certificate still staged.
        secret_file::write_new(
            &staged(HYBRID_KEY_FILE),
            renewed.hybrid().unwrap().private_bytes().expose(),
        )
        .unwrap();
        std::fs::write(staged(CERT_FILE), &new_cert).unwrap();
        std::fs::remove_file(dir.path().join(KEY_FILE)).unwrap();
        secret_file::write_new(&dir.path().join(KEY_FILE), renewed.pkcs8_der().expose()).unwrap();
        let after = AgentState::load_or_create(dir.path(), RsaBits::Rsa2048, true).unwrap();
        assert_eq!(after.key.public_key_der(), renewed.public_key_der());
        assert_eq!(
            after.key.hybrid().unwrap().public().as_bytes(),
            renewed.hybrid().unwrap().public().as_bytes()
        );
        assert_eq!(after.certificate.unwrap().0, new_cert);

        // A whole renewal to a certificate without a sealing key removes the old one.
        let rsa_only = AgentKey::generate(RsaBits::Rsa2048).unwrap();
        AgentState::save_renewal(
            dir.path(),
            &rsa_only,
            &certificate_for(&rsa_only, &first.agent_id),
        )
        .unwrap();
        assert!(!dir.path().join(HYBRID_KEY_FILE).exists());
    }

    #[test]
    fn turning_post_quantum_sealing_off_keeps_a_certified_sealing_key() {
        let dir = tempfile::tempdir().unwrap();
        let state = AgentState::load_or_create(dir.path(), RsaBits::Rsa2048, true).unwrap();
        std::fs::write(
            dir.path().join(CERT_FILE),
            certificate_for(&state.key, &state.agent_id),
        )
        .unwrap();
        let off = AgentState::load_or_create(dir.path(), RsaBits::Rsa2048, false).unwrap();
        assert!(off.key.hybrid().is_some(), "the certificate certifies it");
        // Without a certificate that certifies one, off means off.
        let plain = tempfile::tempdir().unwrap();
        AgentState::load_or_create(plain.path(), RsaBits::Rsa2048, true).unwrap();
        let off = AgentState::load_or_create(plain.path(), RsaBits::Rsa2048, false).unwrap();
        assert!(off.key.hybrid().is_none());
    }

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

//! The public keys of each connector group's healthy agents, cached from the dispatcher.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use passage_envelope::SealingKey;
use passage_pki::{CaCertificate, CertifiedAgent};
use passage_proto::v1::{AgentKey, ListAgentKeysRequest, dispatcher_client::DispatcherClient};
use passage_store::Store;
use tonic::{Status, transport::Channel};

/// One agent a password can be sealed to.
pub struct AgentSealingKey {
    /// Agent id.
    pub agent_id: String,
    /// Its public key.
    pub key: SealingKey,
}

/// What makes a key trustworthy: a certificate from the tenant CA, not revoked.
pub struct KeyVerifier {
    /// The tenant CA's certificate (the gateway never holds the CA key).
    pub ca: CaCertificate,
    /// Where revocations are recorded.
    pub store: Store,
}

/// Checks that `key` comes with a certificate from `ca`, valid now, for this agent, group and
/// key. A dispatcher cannot make the gateway seal a password to a key of its choosing.
pub fn check_certificate(
    ca: &CaCertificate,
    key: &AgentKey,
    group: &str,
) -> Result<CertifiedAgent, String> {
    if key.certificate_der.is_empty() {
        return Err("no certificate".into());
    }
    let certified = ca
        .verify(&key.certificate_der, SystemTime::now())
        .map_err(|e| e.to_string())?;
    let id = &certified.identity;
    if id.agent_id != key.agent_id || id.connector_group != group {
        return Err(format!(
            "certificate is for {}/{}, offered as {}/{group}",
            id.connector_group, id.agent_id, key.agent_id
        ));
    }
    if certified.public_key_der != key.public_key_der {
        return Err("the offered key is not the certified key".into());
    }
    Ok(certified)
}

struct Cached {
    fetched: Instant,
    keys: Arc<Vec<Arc<AgentSealingKey>>>,
}

/// Key sets by connector group, refreshed after `ttl` or on demand.
pub struct KeySetCache {
    dispatcher: DispatcherClient<Channel>,
    tenant: String,
    ttl: Duration,
    cache: Mutex<HashMap<String, Cached>>,
    verifier: Option<KeyVerifier>,
    /// Serialises refreshes so a burst of sign-ins makes one dispatcher call, not hundreds.
    refresh: tokio::sync::Mutex<()>,
}

impl KeySetCache {
    /// A cache over `dispatcher` for `tenant`; with `verifier`, only certified, unrevoked keys
    /// are kept (without, in development mode, every key the dispatcher offers).
    pub fn new(
        dispatcher: DispatcherClient<Channel>,
        tenant: String,
        ttl: Duration,
        verifier: Option<KeyVerifier>,
    ) -> Self {
        Self {
            dispatcher,
            tenant,
            ttl,
            cache: Mutex::new(HashMap::new()),
            verifier,
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    fn cached(
        &self,
        group: &str,
        newer_than: Option<Instant>,
    ) -> Option<Arc<Vec<Arc<AgentSealingKey>>>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let entry = cache.get(group)?;
        let fresh =
            entry.fetched.elapsed() < self.ttl && newer_than.is_none_or(|t| entry.fetched > t);
        fresh.then(|| Arc::clone(&entry.keys))
    }

    /// The key set of `group`: cached, or fetched when stale or when `force` (after a failure
    /// that suggests the set changed).
    pub async fn keys(
        &self,
        group: &str,
        force: bool,
    ) -> Result<Arc<Vec<Arc<AgentSealingKey>>>, Status> {
        let asked = Instant::now();
        if !force && let Some(keys) = self.cached(group, None) {
            return Ok(keys);
        }
        let _refreshing = self.refresh.lock().await;
        // Someone else may have refreshed while we waited.
        let newer_than = force.then_some(asked);
        if let Some(keys) = self.cached(group, newer_than) {
            return Ok(keys);
        }
        let response = self
            .dispatcher
            .clone()
            .list_agent_keys(ListAgentKeysRequest {
                tenant: self.tenant.clone(),
                connector_group: group.to_owned(),
            })
            .await?
            .into_inner();
        let mut keys = Vec::new();
        for k in response.keys {
            if let Err(reason) = self.trusted(&k, group).await {
                tracing::warn!(agent_id = %k.agent_id, %reason, "not sealing to an untrusted agent key");
                continue;
            }
            match SealingKey::from_der(&k.public_key_der) {
                Ok(key) => keys.push(Arc::new(AgentSealingKey {
                    agent_id: k.agent_id,
                    key,
                })),
                Err(err) => {
                    tracing::warn!(agent_id = %k.agent_id, error = %err, "ignoring unusable agent key");
                }
            }
        }
        let keys = Arc::new(keys);
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(
            group.to_owned(),
            Cached {
                fetched: Instant::now(),
                keys: Arc::clone(&keys),
            },
        );
        Ok(keys)
    }
}

impl KeySetCache {
    async fn trusted(&self, key: &AgentKey, group: &str) -> Result<(), String> {
        let Some(verifier) = &self.verifier else {
            return Ok(());
        };
        let certified = check_certificate(&verifier.ca, key, group)?;
        match verifier.store.is_revoked(&certified.serial).await {
            Ok(false) => Ok(()),
            Ok(true) => Err("certificate revoked".into()),
            Err(err) => Err(format!("revocation check failed: {err}")),
        }
    }
}

/// Up to two distinct random entries of `keys`.
pub fn pick_two<T: Clone>(keys: &[T]) -> Vec<T> {
    match keys.len() {
        0 | 1 => keys.to_vec(),
        n => {
            let first = random_below(n);
            let second = (first + 1 + random_below(n - 1)) % n;
            vec![keys[first].clone(), keys[second].clone()]
        }
    }
}

fn random_below(n: usize) -> usize {
    let mut bytes = [0u8; 8];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("system random source");
    (u64::from_le_bytes(bytes) % n as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::{
        encoding::AsDer,
        rsa::{KeySize, PrivateDecryptingKey},
    };
    use passage_pki::{AgentIdentity, TenantCa, agent_csr, pem_to_der};

    fn offered(ca: &TenantCa, agent_id: &str, group: &str) -> AgentKey {
        let key = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
        let csr = agent_csr(key.as_der().unwrap().as_ref(), agent_id).unwrap();
        let identity = AgentIdentity {
            tenant: ca.tenant().into(),
            connector_group: group.into(),
            agent_id: agent_id.into(),
        };
        let issued = ca
            .issue_agent(&csr, &identity, Duration::from_secs(3600))
            .unwrap();
        AgentKey {
            agent_id: agent_id.into(),
            connector_group: group.into(),
            public_key_der: key.public_key().as_der().unwrap().as_ref().to_vec(),
            in_flight: 0,
            certificate_der: pem_to_der(&issued.cert_pem).unwrap(),
        }
    }

    #[test]
    fn only_certified_keys_of_the_right_agent_and_group_are_trusted() {
        let ca = TenantCa::generate("default").unwrap();
        let good = offered(&ca, "agent-1", "corp");
        check_certificate(&ca.certificate(), &good, "corp").unwrap();

        assert!(check_certificate(&ca.certificate(), &good, "other-group").is_err());
        let renamed = AgentKey {
            agent_id: "agent-2".into(),
            ..good.clone()
        };
        assert!(check_certificate(&ca.certificate(), &renamed, "corp").is_err());
        // A dispatcher swapping in its own key keeps the certificate but not the key.
        let swapped = AgentKey {
            public_key_der: offered(&ca, "agent-1", "corp").public_key_der,
            ..good.clone()
        };
        assert!(check_certificate(&ca.certificate(), &swapped, "corp").is_err());
        let bare = AgentKey {
            certificate_der: vec![],
            ..good.clone()
        };
        assert!(check_certificate(&ca.certificate(), &bare, "corp").is_err());
        let rogue = TenantCa::generate("default").unwrap();
        assert!(check_certificate(&rogue.certificate(), &good, "corp").is_err());
    }

    #[test]
    fn pick_two_returns_distinct_members() {
        assert!(pick_two::<u8>(&[]).is_empty());
        assert_eq!(pick_two(&[7]), vec![7]);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..500 {
            let picked = pick_two(&[1, 2, 3, 4]);
            assert_eq!(picked.len(), 2);
            assert_ne!(picked[0], picked[1]);
            seen.extend(picked);
        }
        assert_eq!(seen.len(), 4, "every agent is picked sometimes");
    }
}

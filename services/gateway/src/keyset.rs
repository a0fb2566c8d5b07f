//! The public keys of each connector group's healthy agents, cached from the dispatcher.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use passage_envelope::SealingKey;
use passage_lockout::{DirectoryPolicy, Remembered};
use passage_pki::{AgentClaim, AgentVerifier, CaCertificate, CertifiedAgent, Distrust, TrustError};
use passage_proto::v1::{AgentKey, ListAgentKeysRequest, ListAgentKeysResponse};
use tonic::Status;

use crate::dispatchers::Dispatchers;

/// One agent a password can be sealed to.
pub struct AgentSealingKey {
    /// Agent id.
    pub agent_id: String,
    /// Its public key.
    pub key: SealingKey,
    /// The directory lockout policy it read (none: the directory locks no one, or unknown).
    pub directory_lockout: Option<DirectoryPolicy>,
    /// Whether its directory answers, as its last heartbeat said.
    pub directory_reachable: bool,
}

/// What makes a key trustworthy: a certificate from the tenant CA that the store says still
/// stands (the one decision, shared with the dispatcher: [`AgentVerifier`]).
pub struct KeyVerifier {
    /// The tenant CA's certificate (the gateway never holds the CA key).
    pub ca: CaCertificate,
    /// The trust decision.
    pub verifier: AgentVerifier,
}

impl KeyVerifier {
    /// Checks that `key` comes with a certificate the tenant trusts now, for exactly this
    /// agent, group and key: a dispatcher cannot make the gateway seal a password to a key of
    /// its choosing.
    pub async fn check(
        &self,
        tenant: &str,
        key: &AgentKey,
        group: &str,
    ) -> Result<CertifiedAgent, TrustError> {
        if key.certificate_der.is_empty() {
            return Err(Distrust::NotVerified(passage_pki::PkiError::BadCertificate(
                "no certificate".into(),
            ))
            .into());
        }
        let certified = self
            .verifier
            .verify(&self.ca, &key.certificate_der, SystemTime::now())
            .await?;
        certified.check_claim(&AgentClaim {
            tenant,
            connector_group: group,
            agent_id: &key.agent_id,
            public_key_der: &key.public_key_der,
            hybrid_public_key: &key.hybrid_public_key,
        })?;
        Ok(certified)
    }
}

/// The shared, immutable key set of one group.
pub type KeySet = Arc<Vec<Arc<AgentSealingKey>>>;

/// One connector group's cache entry. Each group has its own refresh lock, so a slow or
/// failing refresh of one group never holds up another.
struct GroupEntry {
    cached: Mutex<Option<(Instant, KeySet)>>,
    last_used: Mutex<Instant>,
    refresh: tokio::sync::Mutex<()>,
}

impl GroupEntry {
    fn new() -> Self {
        Self {
            cached: Mutex::new(None),
            last_used: Mutex::new(Instant::now()),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    fn fresh(&self, ttl: Duration, newer_than: Option<Instant>) -> Option<KeySet> {
        let cached = lock(&self.cached);
        let (fetched, keys) = cached.as_ref()?;
        let fresh = fetched.elapsed() < ttl && newer_than.is_none_or(|t| *fetched > t);
        fresh.then(|| Arc::clone(keys))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Key sets by connector group, refreshed after `ttl` or on demand. At most `max_groups`
/// groups are kept (least recently used go first), so sign-ins for endless made-up domains
/// cannot grow it; an empty key set is cached like any other (negative caching).
pub struct KeySetCache {
    dispatchers: Arc<Dispatchers>,
    tenant: String,
    ttl: Duration,
    max_groups: usize,
    groups: Mutex<HashMap<String, Arc<GroupEntry>>>,
    verifier: Option<KeyVerifier>,
    require_post_quantum: bool,
    /// Agents already named as holding `require_post_quantum` back (said once each).
    warned: Mutex<std::collections::HashSet<String>>,
}

impl KeySetCache {
    /// A cache over `dispatcher` for `tenant` holding at most `max_groups` groups; with
    /// `verifier`, only trusted keys are kept (without, in development mode, every key the
    /// dispatcher offers); with `require_post_quantum`, only agents with a hybrid key.
    pub fn new(
        dispatchers: Arc<Dispatchers>,
        tenant: String,
        ttl: Duration,
        max_groups: usize,
        verifier: Option<KeyVerifier>,
        require_post_quantum: bool,
    ) -> Self {
        Self {
            dispatchers,
            tenant,
            ttl,
            max_groups: max_groups.max(1),
            groups: Mutex::new(HashMap::new()),
            verifier,
            require_post_quantum,
            warned: Mutex::new(Default::default()),
        }
    }

    /// Groups currently cached.
    pub fn len(&self) -> usize {
        lock(&self.groups).len()
    }

    /// Whether no group is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entry of `group`, made (evicting the least recently used when full) if missing.
    fn entry(&self, group: &str) -> Arc<GroupEntry> {
        let mut groups = lock(&self.groups);
        if let Some(entry) = groups.get(group) {
            *lock(&entry.last_used) = Instant::now();
            return Arc::clone(entry);
        }
        if groups.len() >= self.max_groups {
            let oldest = groups
                .iter()
                .min_by_key(|(_, e)| *lock(&e.last_used))
                .map(|(name, _)| name.clone());
            if let Some(oldest) = oldest {
                groups.remove(&oldest);
            }
        }
        let entry = Arc::new(GroupEntry::new());
        groups.insert(group.to_owned(), Arc::clone(&entry));
        entry
    }

    /// The directory lockout policy the agents of `group` in the cached key set reported: the
    /// lowest threshold and the longest memory (no fetch: the set was just asked for).
    pub fn directory_lockout(&self, group: &str) -> Option<DirectoryPolicy> {
        let entry = lock(&self.groups).get(group).cloned()?;
        let cached = lock(&entry.cached);
        cached
            .as_ref()?
            .1
            .iter()
            .filter_map(|k| k.directory_lockout)
            .reduce(|a, b| DirectoryPolicy {
                threshold: a.threshold.min(b.threshold),
                remembered: a.remembered.longer(b.remembered),
            })
    }

    /// Asks a dispatcher replica for `group`'s keys, and another one when it cannot be
    /// reached or knows no agent of the group (a replica that has just started, before the
    /// agents found it): every replica holds every agent's stream once they have.
    async fn list_agent_keys(&self, group: &str) -> Result<ListAgentKeysResponse, Status> {
        let request = ListAgentKeysRequest {
            tenant: self.tenant.clone(),
            connector_group: group.to_owned(),
        };
        let replica = self.dispatchers.pick(None);
        let first = replica.client().list_agent_keys(request.clone()).await;
        let another = match &first {
            Ok(response) => response.get_ref().keys.is_empty(),
            Err(status) => crate::dispatchers::unreachable(status),
        };
        if !another || self.dispatchers.all().len() < 2 {
            return first.map(tonic::Response::into_inner);
        }
        if first.is_err() {
            self.dispatchers.failed(&replica);
        }
        let other = self.dispatchers.pick(Some(&replica));
        match (other.client().list_agent_keys(request).await, first) {
            (Ok(response), _) => Ok(response.into_inner()),
            // The other one failed: what the first said, if it answered.
            (Err(_), Ok(response)) => Ok(response.into_inner()),
            (Err(status), Err(_)) => Err(status),
        }
    }

    /// The key set of `group`: cached, or fetched when stale or when `force` (after a failure
    /// that suggests the set changed).
    pub async fn keys(&self, group: &str, force: bool) -> Result<KeySet, Status> {
        let asked = Instant::now();
        let entry = self.entry(group);
        if !force && let Some(keys) = entry.fresh(self.ttl, None) {
            return Ok(keys);
        }
        // A burst of sign-ins for one group makes one dispatcher call, not hundreds.
        let _refreshing = entry.refresh.lock().await;
        if let Some(keys) = entry.fresh(self.ttl, force.then_some(asked)) {
            return Ok(keys);
        }
        let response = self.list_agent_keys(group).await?;
        let mut keys = Vec::new();
        let mut without_hybrid = Vec::new();
        for k in response.keys {
            if let Some(verifier) = &self.verifier
                && let Err(reason) = verifier.check(&self.tenant, &k, group).await
            {
                tracing::warn!(agent_id = %k.agent_id, %reason, "not sealing to an untrusted agent key");
                continue;
            }
            // With a verifier, the hybrid key was just checked against the certificate.
            let sealing = if k.hybrid_public_key.is_empty() {
                if self.require_post_quantum {
                    without_hybrid.push(k.agent_id);
                    continue;
                }
                SealingKey::from_der(&k.public_key_der)
            } else {
                SealingKey::hybrid(&k.hybrid_public_key)
            };
            match sealing {
                Ok(key) => keys.push(Arc::new(AgentSealingKey {
                    agent_id: k.agent_id,
                    key,
                    directory_lockout: (k.directory_lockout_threshold > 0).then_some(
                        DirectoryPolicy {
                            threshold: k.directory_lockout_threshold,
                            remembered: match k.directory_lockout_window_s {
                                0 => Remembered::UntilSuccess,
                                s => Remembered::For(u64::from(s)),
                            },
                        },
                    ),
                    directory_reachable: !k.directory_unreachable,
                })),
                Err(err) => {
                    tracing::warn!(agent_id = %k.agent_id, error = %err, "ignoring unusable agent key");
                }
            }
        }
        if !without_hybrid.is_empty() {
            let mut warned = lock(&self.warned);
            without_hybrid.retain(|id| warned.insert(id.clone()));
            if !without_hybrid.is_empty() {
                tracing::warn!(
                    connector_group = %group,
                    agents = ?without_hybrid,
                    "require_post_quantum: not sealing to agents without a hybrid key; they get one when their certificate is next renewed"
                );
            }
        }
        let keys = Arc::new(keys);
        *lock(&entry.cached) = Some((Instant::now(), Arc::clone(&keys)));
        Ok(keys)
    }
}

/// Up to two distinct random entries of `keys`, taken from those `preferred` says first: two
/// preferred ones when there are, else every preferred one and random others.
pub fn pick_two_preferring<T: Clone>(keys: &[T], preferred: impl Fn(&T) -> bool) -> Vec<T> {
    let (first, rest): (Vec<T>, Vec<T>) = keys.iter().cloned().partition(|k| preferred(k));
    let mut picked = pick_two(&first);
    if picked.len() < 2 {
        picked.extend(pick_two(&rest).into_iter().take(2 - picked.len()));
    }
    picked
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
    use passage_pki::{AgentCsr, AgentIdentity, TenantCa, agent_csr, pem_to_der};
    use passage_store::{AgentRecord, EnrolmentToken, Store};

    fn offered(ca: &TenantCa, agent_id: &str, group: &str) -> (AgentKey, AgentRecord) {
        let key = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
        let hybrid = passage_envelope::HybridKey::generate().unwrap();
        let hybrid_public = hybrid.public().as_bytes().to_vec();
        let csr = agent_csr(
            key.as_der().unwrap().as_ref(),
            agent_id,
            Some(&hybrid_public),
        )
        .unwrap();
        let identity = AgentIdentity {
            tenant: ca.tenant().into(),
            connector_group: group.into(),
            agent_id: agent_id.into(),
        };
        let issued = ca
            .issue_agent(
                AgentCsr::parse(&csr).unwrap(),
                &identity,
                Duration::from_secs(3600),
            )
            .unwrap();
        let record = AgentRecord {
            agent_id: agent_id.into(),
            tenant: ca.tenant().into(),
            connector_group: group.into(),
            hostname: "host".into(),
            version: "test".into(),
            cert_serial: issued.certified.serial.clone(),
            cert_not_after: issued.certified.not_after,
            public_key_der: issued.certified.public_key_der.clone(),
            hybrid_public_key: issued.certified.hybrid_public_key.clone(),
            enrolled_at: 0,
            revoked_at: None,
        };
        let offered = AgentKey {
            agent_id: agent_id.into(),
            connector_group: group.into(),
            public_key_der: key.public_key().as_der().unwrap().as_ref().to_vec(),
            in_flight: 0,
            certificate_der: pem_to_der(&issued.cert_pem).unwrap(),
            hybrid_public_key: hybrid_public,
            directory_lockout_threshold: 0,
            directory_lockout_window_s: 0,
            directory_unreachable: false,
        };
        (offered, record)
    }

    async fn enrol(store: &Store, record: &AgentRecord, token: &str) {
        let now = 1_000;
        store.ensure_tenant(&record.tenant, now).await.unwrap();
        store
            .create_enrolment_token(&EnrolmentToken {
                token_hash: token.into(),
                tenant: record.tenant.clone(),
                connector_group: record.connector_group.clone(),
                created_at: now,
                expires_at: i64::MAX,
            })
            .await
            .unwrap();
        store
            .enrol_agent(token, record, now)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn only_recorded_certified_keys_of_the_right_agent_and_group_are_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("p.db").display()))
            .await
            .unwrap();
        let ca = TenantCa::generate("default").unwrap();
        let verifier = KeyVerifier {
            ca: ca.certificate(),
            verifier: AgentVerifier::new(store.clone(), Duration::from_secs(60)),
        };
        let (good, record) = offered(&ca, "agent-1", "corp");
        // Issued by the CA but never recorded in the store: refused.
        assert!(verifier.check("default", &good, "corp").await.is_err());
        enrol(&store, &record, "token-1").await;
        verifier.check("default", &good, "corp").await.unwrap();

        assert!(
            verifier
                .check("default", &good, "other-group")
                .await
                .is_err()
        );
        assert!(verifier.check("acme", &good, "corp").await.is_err());
        let renamed = AgentKey {
            agent_id: "agent-2".into(),
            ..good.clone()
        };
        assert!(verifier.check("default", &renamed, "corp").await.is_err());
        // A dispatcher swapping in its own key keeps the certificate but not the key.
        let swapped = AgentKey {
            public_key_der: offered(&ca, "agent-1", "corp").0.public_key_der,
            ..good.clone()
        };
        assert!(verifier.check("default", &swapped, "corp").await.is_err());
        // ...and the same for the hybrid sealing key.
        let swapped_hybrid = AgentKey {
            hybrid_public_key: offered(&ca, "agent-1", "corp").0.hybrid_public_key,
            ..good.clone()
        };
        assert!(
            verifier
                .check("default", &swapped_hybrid, "corp")
                .await
                .is_err()
        );
        let bare = AgentKey {
            certificate_der: vec![],
            ..good.clone()
        };
        assert!(verifier.check("default", &bare, "corp").await.is_err());
        let rogue = KeyVerifier {
            ca: TenantCa::generate("default").unwrap().certificate(),
            verifier: AgentVerifier::new(store.clone(), Duration::from_secs(60)),
        };
        assert!(rogue.check("default", &good, "corp").await.is_err());
        // Revocation refuses it at once.
        store.revoke_agent("agent-1", 2_000).await.unwrap().unwrap();
        assert!(matches!(
            verifier.check("default", &good, "corp").await,
            Err(TrustError::Distrust(Distrust::Revoked { .. }))
        ));
    }

    #[tokio::test]
    async fn the_cache_keeps_at_most_its_bound_of_groups() {
        let dispatchers = Dispatchers::resolve("http://127.0.0.1:9", None, true, &[])
            .await
            .unwrap();
        let cache = KeySetCache::new(
            dispatchers,
            "default".into(),
            Duration::from_secs(60),
            16,
            None,
            false,
        );
        cache.entry("corp");
        for n in 0..1_000 {
            cache.entry(&format!("made-up-{n}.example"));
            // The group in use is never the one evicted.
            cache.entry("corp");
            assert!(cache.len() <= 16);
        }
        assert!(lock(&cache.groups).contains_key("corp"));
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

    #[test]
    fn agents_whose_directory_answers_are_picked_first() {
        let even = |n: &u8| n.is_multiple_of(2);
        for _ in 0..200 {
            let picked = pick_two_preferring(&[1, 2, 3, 4, 5], even);
            assert!(picked.iter().all(even), "{picked:?}");
            assert_eq!(picked.len(), 2);
            let one = pick_two_preferring(&[1, 2, 3], even);
            assert_eq!(one.len(), 2);
            assert_eq!(one[0], 2, "the one preferred, then another");
            assert_ne!(one[1], 2);
        }
        assert_eq!(
            pick_two_preferring(&[1, 3], even).len(),
            2,
            "none preferred: any two"
        );
    }
}

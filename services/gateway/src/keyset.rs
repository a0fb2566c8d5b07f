//! The public keys of each connector group's healthy agents, cached from the dispatcher.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use passage_envelope::SealingKey;
use passage_proto::v1::{ListAgentKeysRequest, dispatcher_client::DispatcherClient};
use tonic::{Status, transport::Channel};

/// One agent a password can be sealed to.
pub struct AgentSealingKey {
    /// Agent id.
    pub agent_id: String,
    /// Its public key.
    pub key: SealingKey,
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
    /// Serialises refreshes so a burst of sign-ins makes one dispatcher call, not hundreds.
    refresh: tokio::sync::Mutex<()>,
}

impl KeySetCache {
    /// A cache over `dispatcher` for `tenant`.
    pub fn new(dispatcher: DispatcherClient<Channel>, tenant: String, ttl: Duration) -> Self {
        Self {
            dispatcher,
            tenant,
            ttl,
            cache: Mutex::new(HashMap::new()),
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
        let keys: Vec<Arc<AgentSealingKey>> = response
            .keys
            .into_iter()
            .filter_map(|k| match SealingKey::from_der(&k.public_key_der) {
                Ok(key) => Some(Arc::new(AgentSealingKey { agent_id: k.agent_id, key })),
                Err(err) => {
                    tracing::warn!(agent_id = %k.agent_id, error = %err, "ignoring unusable agent key");
                    None
                }
            })
            .collect();
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

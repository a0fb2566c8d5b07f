//! The token signing keys every gateway replica shares, kept in the store (sealed with the
//! key-encryption key), so a token signed by one replica verifies at every relying party
//! whichever replica published the JWKS it fetched.
//!
//! One key signs; `passage keys rotate` adds a new one, which every replica signs with as soon
//! as it reads the keys again (`[oidc] signing_keys_reload_s`) and publishes at once (the JWKS
//! is served from a read of the store made for the request), and retires the old one: it
//! stays in the JWKS until every token it signed has expired — `keep_s` (the token lifetime
//! plus the reload interval) after its retirement, or its `drop_after` if later — then leaves
//! it. A gateway starting against a store without keys adopts its `signing_key_file` (so
//! tokens a single gateway signed before keep verifying), or creates a key.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use passage_store::Store;
use passage_tokens::{SigningKey, TokenIssuer};

use crate::GatewayError;

/// The key that signs and the retired keys still published.
pub type KeySet = (SigningKey, Vec<Jwk>);

/// Reads the tenant's key set from `store`; when it has none, stores the key of
/// `signing_key_file` (or a new one if the file does not exist) as the first.
pub async fn load_or_create(
    store: &Store,
    tenant: &str,
    signing_key_file: &Path,
    keep_s: i64,
) -> Result<KeySet, GatewayError> {
    let now = passage_pki::unix_now();
    if let Some(keys) = load(store, tenant, now, keep_s).await? {
        return Ok(keys);
    }
    let first = if signing_key_file.exists() {
        let key = passage_tokens::load_or_create_signing_key(signing_key_file)?;
        tracing::info!(kid = key.kid(), file = %signing_key_file.display(), "the store has no signing key yet: adopting the key file's");
        key
    } else {
        SigningKey::generate()?
    };
    // Another replica starting at the same time may win; then its key is the one.
    let inserted = store
        .ensure_signing_key(tenant, first.kid(), first.pkcs8().expose(), now)
        .await?;
    if inserted {
        tracing::info!(kid = first.kid(), "signing key stored for every replica");
    }
    load(store, tenant, now, keep_s).await?.ok_or_else(|| {
        GatewayError::Config(
            "the store kept no signing key: is another writer removing them?".into(),
        )
    })
}

/// The tenant's key set at `now`, if it has a signing key: retired keys are left out once
/// `keep_s` after their retirement and their `drop_after` have both passed.
async fn load(
    store: &Store,
    tenant: &str,
    now: i64,
    keep_s: i64,
) -> Result<Option<KeySet>, GatewayError> {
    let mut signing = None;
    let mut retired = Vec::new();
    for stored in store.signing_keys(tenant).await? {
        let key = SigningKey::from_pkcs8_der(stored.private_pkcs8.expose())?;
        match (stored.retired_at, stored.drop_after) {
            (None, _) if signing.is_none() => signing = Some(key),
            (None, _) => retired.push(key.public_jwk().clone()),
            (Some(retired_at), drop_after)
                if now >= drop_after.unwrap_or(0).max(retired_at + keep_s) => {}
            (Some(_), _) => retired.push(key.public_jwk().clone()),
        }
    }
    Ok(signing.map(|key| (key, retired)))
}

/// Keeps an issuer's keys in step with the store: read again every `interval` by a task
/// ([`KeySync::watch`]), and whenever the JWKS is served ([`KeySync::fresh_jwks`]) — so a key
/// that any replica signs with (it read it from the store) is in every replica's JWKS,
/// whatever their reload intervals.
#[derive(Clone)]
pub struct KeySync {
    store: Store,
    tenant: String,
    issuer: Arc<TokenIssuer>,
    keep_s: i64,
    /// When the last completed read of the store began.
    last_read: Arc<tokio::sync::Mutex<Option<Instant>>>,
}

impl KeySync {
    /// Syncs `issuer` with the tenant's keys in `store`.
    pub fn new(store: Store, tenant: String, issuer: Arc<TokenIssuer>, keep_s: i64) -> Self {
        Self {
            store,
            tenant,
            issuer,
            keep_s,
            last_read: Arc::new(tokio::sync::Mutex::new(None)),
        }
    }

    /// Reads the keys again every `interval`.
    pub fn watch(&self, interval: Duration) {
        let sync = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                sync.read().await;
            }
        });
    }

    /// How long the JWKS waits for the store before it serves the keys read last.
    const STORE_WAIT: Duration = Duration::from_secs(2);

    /// The JWKS as the store holds it now: from a read that began after this call. Calls
    /// arriving together share one read (a burst of requests costs the store one query). A
    /// store slower than [`KeySync::STORE_WAIT`] gets the keys read last instead of a stalled
    /// answer.
    pub async fn fresh_jwks(&self) -> JwkSet {
        let arrived = Instant::now();
        let read = async {
            let mut last = self.last_read.lock().await;
            if last.is_none_or(|began| began < arrived) {
                let began = Instant::now();
                self.apply().await;
                *last = Some(began);
            }
        };
        if tokio::time::timeout(Self::STORE_WAIT, read).await.is_err() {
            tracing::warn!("the store did not answer in time: serving the JWKS read last");
        }
        self.issuer.jwks()
    }

    async fn read(&self) {
        let mut last = self.last_read.lock().await;
        let began = Instant::now();
        self.apply().await;
        *last = Some(began);
    }

    /// Reads the key set and hands it to the issuer when it changed; on a failure the issuer
    /// keeps signing with the last set read.
    async fn apply(&self) {
        match load(
            &self.store,
            &self.tenant,
            passage_pki::unix_now(),
            self.keep_s,
        )
        .await
        {
            Ok(Some((signing, retired))) => {
                let published = |jwks: &[Jwk]| -> Vec<Option<String>> {
                    jwks.iter().map(|k| k.common.key_id.clone()).collect()
                };
                let mut next = vec![signing.public_jwk().clone()];
                next.extend(retired.iter().cloned());
                if published(&self.issuer.jwks().keys) != published(&next) {
                    tracing::info!(
                        kid = signing.kid(),
                        retired = retired.len(),
                        "signing keys changed"
                    );
                    self.issuer.set_keys(signing, retired);
                }
            }
            Ok(None) => {
                tracing::warn!("the store holds no signing key; signing with the last one read")
            }
            Err(err) => tracing::warn!(error = %err, "reading the signing keys failed"),
        }
    }
}

//! OpenID Connect provider state that every gateway replica shares: each tenant's token
//! signing keys (PKCS#8 private keys sealed with the key-encryption key, rotated with an
//! overlap), single-use authorization codes, and rotating refresh tokens grouped in families
//! (a rotated token presented again revokes its family). Codes and refresh tokens are kept by
//! the SHA-256 of what the client holds, never the value itself; what the gateway needs to
//! issue tokens is sealed per row.
//!
//! Every time is Unix seconds, given by the caller: nothing here reads the clock.

use passage_credentials::Secret;
use sqlx::{AnyConnection, Row};

use crate::{Store, StoreError};

/// How long codes and refresh tokens are kept past their expiry by [`Store::prune_oidc`]: a
/// code replayed late is still recognised as already used (so the tokens its first redemption
/// issued can be revoked), and introspection answers "inactive" rather than "unknown".
pub const OIDC_PRUNE_GRACE_S: i64 = 86_400;

/// A tenant's token signing key.
#[derive(Debug, Clone)]
pub struct StoredSigningKey {
    /// Key id (the JWT `kid`).
    pub kid: String,
    /// The P-256 private key, PKCS#8 DER (opened with the key-encryption key; `Debug` prints
    /// it redacted).
    pub private_pkcs8: Secret,
    /// Created, Unix seconds.
    pub created_at: i64,
    /// When a newer key replaced it; `None` while it is the key that signs.
    pub retired_at: Option<i64>,
    /// After this time (Unix seconds) no token it signed is valid any more: it leaves the JWKS
    /// and [`Store::prune_signing_keys`] deletes it. `None` until retired.
    pub drop_after: Option<i64>,
}

/// An authorization code to record.
#[derive(Clone, Copy)]
pub struct NewCode<'a> {
    /// SHA-256 (hex) of the code; the code itself is never stored.
    pub digest: &'a str,
    /// Tenant.
    pub tenant: &'a str,
    /// The client it was issued to.
    pub client_id: &'a str,
    /// The redirect URI of the authorization request (the token request must repeat it).
    pub redirect_uri: &'a str,
    /// Valid until, Unix seconds.
    pub expires_at: i64,
    /// What the gateway needs to issue tokens, opaque to the store (sealed in it).
    pub payload: &'a [u8],
}

/// What redeeming an authorization code did.
#[derive(Debug)]
pub enum CodeRedemption {
    /// The code is now spent; this redemption is its only one.
    Redeemed {
        /// The client it was issued to (the caller checks it is the one redeeming).
        client_id: String,
        /// The redirect URI of the authorization request.
        redirect_uri: String,
        /// What was recorded with the code.
        payload: Secret,
    },
    /// The code was redeemed before: revoke what that redemption issued (RFC 6749 §4.1.2).
    AlreadyUsed {
        /// The refresh-token family the first redemption created.
        family_id: Option<String>,
    },
    /// No such code, or it expired unused.
    Unknown,
}

/// A refresh token to record.
#[derive(Clone, Copy)]
pub struct NewRefreshToken<'a> {
    /// SHA-256 (hex) of the token; the token itself is never stored.
    pub digest: &'a str,
    /// Its family: the tokens that rotations of one grant produce.
    pub family_id: &'a str,
    /// Tenant.
    pub tenant: &'a str,
    /// The client it was issued to.
    pub client_id: &'a str,
    /// The user: case-folded userPrincipalName (what administrators name them by).
    pub user_key: &'a str,
    /// The family's absolute end, Unix seconds (carried over on rotation).
    pub expires_at: i64,
    /// What the gateway needs to issue tokens, opaque to the store (sealed in it).
    pub payload: &'a [u8],
}

/// What presenting a refresh token for rotation did.
#[derive(Debug)]
pub enum RefreshRotation {
    /// The token is now rotated and the new one is its family's current token.
    Rotated {
        /// The client it was issued to (the caller checks it is the one presenting it).
        client_id: String,
        /// The user (case-folded userPrincipalName).
        user_key: String,
        /// The family's absolute end, Unix seconds.
        expires_at: i64,
        /// What was recorded with the token (now also with the new one).
        payload: Secret,
    },
    /// The token had been rotated before: someone replays it (RFC 9700 §4.14.2), so its whole
    /// family is now revoked.
    Reused {
        /// The family revoked.
        family_id: String,
        /// The client it was issued to.
        client_id: String,
    },
    /// The token was revoked.
    Revoked,
    /// No such token, or its family expired.
    Unknown,
}

/// A refresh token as the store holds it (introspection, revocation).
#[derive(Debug)]
pub struct RefreshTokenInfo {
    /// Its family.
    pub family_id: String,
    /// Tenant.
    pub tenant: String,
    /// The client it was issued to.
    pub client_id: String,
    /// The user (case-folded userPrincipalName).
    pub user_key: String,
    /// Created, Unix seconds.
    pub created_at: i64,
    /// The family's absolute end, Unix seconds.
    pub expires_at: i64,
    /// Whether it may still be used: not rotated, not revoked, not expired.
    pub active: bool,
    /// What was recorded with it.
    pub payload: Secret,
}

fn signing_key_context(tenant: &str, kid: &str) -> Vec<u8> {
    format!("signing_keys.private_sealed:{tenant}:{kid}").into_bytes()
}

fn code_context(digest: &str) -> Vec<u8> {
    format!("authorization_codes.payload_sealed:{digest}").into_bytes()
}

fn refresh_context(digest: &str) -> Vec<u8> {
    format!("refresh_tokens.payload_sealed:{digest}").into_bytes()
}

/// Which refresh tokens to revoke.
enum RevocationScope<'a> {
    /// Every token of a family.
    Family(&'a str),
    /// Every token of a user, or of a user at one client.
    Subject {
        tenant: &'a str,
        client_id: Option<&'a str>,
        user_key: &'a str,
    },
}

/// Revokes the refresh tokens in `scope` on `conn`; returns how many rows it marked.
///
/// Repeated until a pass marks none: on PostgreSQL (READ COMMITTED) a rotation committing
/// while a pass waits for its row lock inserts a successor the pass cannot see; the next pass
/// sees it. A rotation starting later finds its token revoked and inserts nothing.
async fn revoke_refresh(
    conn: &mut AnyConnection,
    scope: &RevocationScope<'_>,
    now: i64,
) -> Result<u64, StoreError> {
    let mut revoked = 0;
    loop {
        let result = match scope {
            RevocationScope::Family(family_id) => {
                sqlx::query(
                    "UPDATE refresh_tokens SET revoked_at = $1 \
                     WHERE family_id = $2 AND revoked_at IS NULL",
                )
                .bind(now)
                .bind(*family_id)
                .execute(&mut *conn)
                .await?
            }
            RevocationScope::Subject {
                tenant,
                client_id: None,
                user_key,
            } => {
                sqlx::query(
                    "UPDATE refresh_tokens SET revoked_at = $1 \
                     WHERE tenant_id = $2 AND user_key = $3 AND revoked_at IS NULL",
                )
                .bind(now)
                .bind(*tenant)
                .bind(*user_key)
                .execute(&mut *conn)
                .await?
            }
            RevocationScope::Subject {
                tenant,
                client_id: Some(client_id),
                user_key,
            } => {
                sqlx::query(
                    "UPDATE refresh_tokens SET revoked_at = $1 \
                     WHERE tenant_id = $2 AND user_key = $3 AND client_id = $4 \
                     AND revoked_at IS NULL",
                )
                .bind(now)
                .bind(*tenant)
                .bind(*user_key)
                .bind(*client_id)
                .execute(&mut *conn)
                .await?
            }
        };
        let marked = result.rows_affected();
        if marked == 0 {
            return Ok(revoked);
        }
        revoked += marked;
    }
}

impl Store {
    /// The tenant's signing keys, newest first (`created_at`, then `kid`, descending): the
    /// one that signs is the first with no `retired_at` (there is at most one); retired ones
    /// belong in the JWKS until their `drop_after`. Every stored key is returned, including
    /// retired ones past `drop_after` not pruned yet: the caller filters by its clock.
    pub async fn signing_keys(&self, tenant: &str) -> Result<Vec<StoredSigningKey>, StoreError> {
        let rows = sqlx::query(
            "SELECT kid, private_sealed, created_at, retired_at, drop_after FROM signing_keys \
             WHERE tenant_id = $1 ORDER BY created_at DESC, kid DESC",
        )
        .bind(tenant)
        .fetch_all(&self.reads)
        .await?;
        rows.iter()
            .map(|row| {
                let kid: String = row.try_get("kid")?;
                Ok(StoredSigningKey {
                    private_pkcs8: self.open_secret(
                        row.try_get("private_sealed")?,
                        &signing_key_context(tenant, &kid),
                    )?,
                    created_at: row.try_get("created_at")?,
                    retired_at: row.try_get("retired_at")?,
                    drop_after: row.try_get("drop_after")?,
                    kid,
                })
            })
            .collect()
    }

    /// Rotates the tenant's signing key (`passage keys rotate`): in one transaction, retires
    /// the current key (`retired_at = now`, kept in the JWKS until `previous_drop_after`) and
    /// makes `private_pkcs8` (sealed with the key-encryption key) the key that signs.
    ///
    /// A rotation racing another one for the same tenant fails with a database error (one
    /// current key per tenant is a unique index) rather than leaving two current keys.
    pub async fn add_signing_key(
        &self,
        tenant: &str,
        kid: &str,
        private_pkcs8: &[u8],
        now: i64,
        previous_drop_after: i64,
    ) -> Result<(), StoreError> {
        let sealed = self.seal_secret(private_pkcs8, &signing_key_context(tenant, kid))?;
        let mut tx = self.pool.begin().await?;
        // Retire first: the unique index allows one current key per tenant.
        sqlx::query(
            "UPDATE signing_keys SET retired_at = $1, drop_after = $2 \
             WHERE tenant_id = $3 AND retired_at IS NULL",
        )
        .bind(now)
        .bind(previous_drop_after)
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO signing_keys (tenant_id, kid, private_sealed, created_at, retired_at, \
             drop_after) VALUES ($1, $2, $3, $4, NULL, NULL)",
        )
        .bind(tenant)
        .bind(kid)
        .bind(sealed)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Makes `private_pkcs8` the tenant's signing key if the tenant has none that signs (a
    /// gateway's first start); `false` when it already had one (read it with
    /// [`Store::signing_keys`] and use that). Replicas starting together end with one current
    /// key: a unique index on the tenant's unretired key decides, atomically on both backends.
    pub async fn ensure_signing_key(
        &self,
        tenant: &str,
        kid: &str,
        private_pkcs8: &[u8],
        now: i64,
    ) -> Result<bool, StoreError> {
        let sealed = self.seal_secret(private_pkcs8, &signing_key_context(tenant, kid))?;
        let inserted = sqlx::query(
            "INSERT INTO signing_keys (tenant_id, kid, private_sealed, created_at, retired_at, \
             drop_after) VALUES ($1, $2, $3, $4, NULL, NULL) \
             ON CONFLICT (tenant_id) WHERE retired_at IS NULL DO NOTHING",
        )
        .bind(tenant)
        .bind(kid)
        .bind(sealed)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// Deletes retired signing keys whose `drop_after` is at or before `now` (no token they
    /// signed is valid any more); returns how many.
    pub async fn prune_signing_keys(&self, now: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "DELETE FROM signing_keys WHERE retired_at IS NOT NULL AND drop_after <= $1",
        )
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Records an authorization code (by its digest; the payload sealed with the
    /// key-encryption key).
    pub async fn create_authorization_code(&self, code: &NewCode<'_>) -> Result<(), StoreError> {
        let sealed = self.seal_secret(code.payload, &code_context(code.digest))?;
        sqlx::query(
            "INSERT INTO authorization_codes (code_digest, tenant_id, client_id, redirect_uri, \
             expires_at, used_at, family_id, payload_sealed) \
             VALUES ($1, $2, $3, $4, $5, NULL, NULL, $6)",
        )
        .bind(code.digest)
        .bind(code.tenant)
        .bind(code.client_id)
        .bind(code.redirect_uri)
        .bind(code.expires_at)
        .bind(sealed)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Redeems the code with SHA-256 `digest` at `now`, recording `family_id` as the
    /// refresh-token family this redemption creates: of any number of redemptions, on any
    /// replicas, one is [`CodeRedemption::Redeemed`]. A later one is
    /// [`CodeRedemption::AlreadyUsed`] with that family (also after the code's expiry, until
    /// [`Store::prune_oidc`] deletes it), so the caller can revoke what the first issued.
    ///
    /// The caller issues the first redemption's refresh token after this returns: a replay
    /// answered in between revokes a family that has no token yet.
    pub async fn redeem_authorization_code(
        &self,
        digest: &str,
        family_id: &str,
        now: i64,
    ) -> Result<CodeRedemption, StoreError> {
        let row = sqlx::query(
            "UPDATE authorization_codes SET used_at = $1, family_id = $2 \
             WHERE code_digest = $3 AND used_at IS NULL AND expires_at > $1 \
             RETURNING client_id, redirect_uri, payload_sealed",
        )
        .bind(now)
        .bind(family_id)
        .bind(digest)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = row {
            return Ok(CodeRedemption::Redeemed {
                client_id: row.try_get("client_id")?,
                redirect_uri: row.try_get("redirect_uri")?,
                payload: self.open_secret(row.try_get("payload_sealed")?, &code_context(digest))?,
            });
        }
        let row = sqlx::query(
            "SELECT used_at, family_id FROM authorization_codes WHERE code_digest = $1",
        )
        .bind(digest)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(CodeRedemption::Unknown);
        };
        // Unused, the update would have taken it unless it expired.
        Ok(if row.try_get::<Option<i64>, _>("used_at")?.is_some() {
            CodeRedemption::AlreadyUsed {
                family_id: row.try_get("family_id")?,
            }
        } else {
            CodeRedemption::Unknown
        })
    }

    /// Records a refresh token created at `now` as its family's current token (by its digest;
    /// the payload sealed with the key-encryption key).
    pub async fn create_refresh_token(
        &self,
        token: &NewRefreshToken<'_>,
        now: i64,
    ) -> Result<(), StoreError> {
        let sealed = self.seal_secret(token.payload, &refresh_context(token.digest))?;
        sqlx::query(
            "INSERT INTO refresh_tokens (token_digest, family_id, tenant_id, client_id, user_key, \
             created_at, expires_at, rotated_at, revoked_at, payload_sealed) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL, $8)",
        )
        .bind(token.digest)
        .bind(token.family_id)
        .bind(token.tenant)
        .bind(token.client_id)
        .bind(token.user_key)
        .bind(now)
        .bind(token.expires_at)
        .bind(sealed)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Rotates the refresh token with SHA-256 `old_digest` at `now`, in one transaction: when
    /// it is its family's current token (not rotated, not revoked, not expired) it is marked
    /// rotated and the token with `new_digest` becomes the current one, with the same family,
    /// client, user, end and payload. Of concurrent rotations of one token, on any
    /// replicas, one succeeds.
    ///
    /// A token rotated before is a replay (RFC 9700 §4.14.2): its whole family is revoked,
    /// the current token included, and the answer is [`RefreshRotation::Reused`].
    pub async fn rotate_refresh_token(
        &self,
        old_digest: &str,
        new_digest: &str,
        now: i64,
    ) -> Result<RefreshRotation, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE refresh_tokens SET rotated_at = $1 WHERE token_digest = $2 \
             AND rotated_at IS NULL AND revoked_at IS NULL AND expires_at > $1 \
             RETURNING family_id, tenant_id, client_id, user_key, expires_at, payload_sealed",
        )
        .bind(now)
        .bind(old_digest)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = row {
            let family_id: String = row.try_get("family_id")?;
            let tenant: String = row.try_get("tenant_id")?;
            let client_id: String = row.try_get("client_id")?;
            let user_key: String = row.try_get("user_key")?;
            let expires_at: i64 = row.try_get("expires_at")?;
            // Sealed for its row: opened with the old token's context, sealed for the new.
            let payload =
                self.open_secret(row.try_get("payload_sealed")?, &refresh_context(old_digest))?;
            let sealed = self.seal_secret(payload.expose(), &refresh_context(new_digest))?;
            sqlx::query(
                "INSERT INTO refresh_tokens (token_digest, family_id, tenant_id, client_id, \
                 user_key, created_at, expires_at, rotated_at, revoked_at, payload_sealed) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL, $8)",
            )
            .bind(new_digest)
            .bind(family_id)
            .bind(tenant)
            .bind(&client_id)
            .bind(&user_key)
            .bind(now)
            .bind(expires_at)
            .bind(sealed)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(RefreshRotation::Rotated {
                client_id,
                user_key,
                expires_at,
                payload,
            });
        }
        let row = sqlx::query(
            "SELECT family_id, client_id, expires_at, rotated_at, revoked_at FROM refresh_tokens \
             WHERE token_digest = $1",
        )
        .bind(old_digest)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(RefreshRotation::Unknown);
        };
        // Every token of a family ends with it: an expired one has nothing left to protect.
        if row.try_get::<i64, _>("expires_at")? <= now {
            return Ok(RefreshRotation::Unknown);
        }
        if row.try_get::<Option<i64>, _>("revoked_at")?.is_some() {
            return Ok(RefreshRotation::Revoked);
        }
        if row.try_get::<Option<i64>, _>("rotated_at")?.is_none() {
            // Not reached: rotated_at and revoked_at are only ever set, so the update above
            // took a current, unexpired token.
            return Ok(RefreshRotation::Unknown);
        }
        let family_id: String = row.try_get("family_id")?;
        let client_id: String = row.try_get("client_id")?;
        revoke_refresh(&mut tx, &RevocationScope::Family(&family_id), now).await?;
        tx.commit().await?;
        Ok(RefreshRotation::Reused {
            family_id,
            client_id,
        })
    }

    /// The refresh token with SHA-256 `digest`, and whether it is active at `now`; `None`
    /// when unknown (or pruned).
    pub async fn refresh_token(
        &self,
        digest: &str,
        now: i64,
    ) -> Result<Option<RefreshTokenInfo>, StoreError> {
        let row = sqlx::query(
            "SELECT family_id, tenant_id, client_id, user_key, created_at, expires_at, \
             rotated_at, revoked_at, payload_sealed FROM refresh_tokens WHERE token_digest = $1",
        )
        .bind(digest)
        .fetch_optional(&self.reads)
        .await?;
        row.map(|row| {
            let expires_at: i64 = row.try_get("expires_at")?;
            let rotated_at: Option<i64> = row.try_get("rotated_at")?;
            let revoked_at: Option<i64> = row.try_get("revoked_at")?;
            Ok(RefreshTokenInfo {
                family_id: row.try_get("family_id")?,
                tenant: row.try_get("tenant_id")?,
                client_id: row.try_get("client_id")?,
                user_key: row.try_get("user_key")?,
                created_at: row.try_get("created_at")?,
                expires_at,
                active: rotated_at.is_none() && revoked_at.is_none() && expires_at > now,
                payload: self
                    .open_secret(row.try_get("payload_sealed")?, &refresh_context(digest))?,
            })
        })
        .transpose()
    }

    /// Revokes every token of the family at `now`; returns how many were not revoked before
    /// (rotated ones included).
    pub async fn revoke_refresh_family(
        &self,
        family_id: &str,
        now: i64,
    ) -> Result<u64, StoreError> {
        let mut conn = self.pool.acquire().await?;
        revoke_refresh(&mut conn, &RevocationScope::Family(family_id), now).await
    }

    /// Revokes every refresh token of the user `user_key` in the tenant at `now`, or only those issued to
    /// `client_id` (logout, an administrator); returns how many were not revoked before
    /// (rotated ones included).
    pub async fn revoke_refresh_tokens_of(
        &self,
        tenant: &str,
        client_id: Option<&str>,
        user_key: &str,
        now: i64,
    ) -> Result<u64, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let scope = RevocationScope::Subject {
            tenant,
            client_id,
            user_key,
        };
        revoke_refresh(&mut conn, &scope, now).await
    }

    /// Deletes authorization codes and refresh tokens that expired more than
    /// [`OIDC_PRUNE_GRACE_S`] before `now`; returns how many.
    pub async fn prune_oidc(&self, now: i64) -> Result<u64, StoreError> {
        let before = now.saturating_sub(OIDC_PRUNE_GRACE_S);
        let codes = sqlx::query("DELETE FROM authorization_codes WHERE expires_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let tokens = sqlx::query("DELETE FROM refresh_tokens WHERE expires_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(codes + tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeyEncryptionKey, KeyProtection};

    async fn sealed_store(dir: &tempfile::TempDir) -> Store {
        let url = format!("sqlite://{}", dir.path().join("p.db").display());
        Store::open(&url)
            .await
            .unwrap()
            .with_key_protection(KeyProtection::Encrypted(
                KeyEncryptionKey::generate().unwrap(),
            ))
    }

    #[tokio::test]
    async fn a_sealed_value_opens_only_in_its_own_row() {
        let dir = tempfile::tempdir().unwrap();
        let store = sealed_store(&dir).await;
        assert!(
            store
                .ensure_signing_key("t", "k1", b"0 one", 1)
                .await
                .unwrap()
        );
        store
            .add_signing_key("t", "k2", b"0 two", 2, 10)
            .await
            .unwrap();
        assert_eq!(store.signing_keys("t").await.unwrap().len(), 2);
        // Another row's sealed key, copied into this one, does not open.
        sqlx::query(
            "UPDATE signing_keys SET private_sealed = \
             (SELECT private_sealed FROM signing_keys WHERE kid = 'k2') WHERE kid = 'k1'",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        let keys = store.signing_keys("t").await;
        assert!(
            matches!(keys, Err(StoreError::KeyEncryption(_))),
            "{keys:?}"
        );
    }

    #[tokio::test]
    async fn a_rotation_that_cannot_open_its_payload_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = sealed_store(&dir).await;
        let token = NewRefreshToken {
            digest: "a",
            family_id: "f",
            tenant: "t",
            client_id: "app",
            user_key: "alice",
            expires_at: 100,
            payload: b"{}",
        };
        store.create_refresh_token(&token, 1).await.unwrap();
        store
            .create_refresh_token(
                &NewRefreshToken {
                    digest: "b",
                    family_id: "g",
                    ..token
                },
                1,
            )
            .await
            .unwrap();
        sqlx::query(
            "UPDATE refresh_tokens SET payload_sealed = \
             (SELECT payload_sealed FROM refresh_tokens WHERE token_digest = 'b') \
             WHERE token_digest = 'a'",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        let rotation = store.rotate_refresh_token("a", "a2", 2).await;
        assert!(
            matches!(rotation, Err(StoreError::KeyEncryption(_))),
            "{rotation:?}"
        );
        let rotated_at: Option<i64> =
            sqlx::query_scalar("SELECT rotated_at FROM refresh_tokens WHERE token_digest = 'a'")
                .fetch_one(&store.pool)
                .await
                .unwrap();
        assert_eq!(rotated_at, None, "the transaction was rolled back");
        assert!(matches!(
            store.rotate_refresh_token("b", "b2", 2).await.unwrap(),
            RefreshRotation::Rotated { .. }
        ));
    }
}

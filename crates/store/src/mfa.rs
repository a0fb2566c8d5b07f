//! MFA's shared state: TOTP enrolments (secrets sealed with the key-encryption key), the last
//! time step accepted per user (a code is accepted once, across replicas), single-use
//! recovery codes (Argon2id hashes only), and the challenges between a primary sign-in and its
//! second factor (by the SHA-256 of the handle the client holds).

use passage_credentials::Secret;
use sqlx::Row;

use crate::{Store, StoreError};

/// A user's TOTP enrolment.
#[derive(Debug)]
pub struct MfaEnrolment {
    /// The shared secret (opened with the key-encryption key).
    pub secret: Secret,
    /// When it was begun, Unix seconds.
    pub created_at: i64,
    /// When the user's first code confirmed it; `None` while pending.
    pub confirmed_at: Option<i64>,
    /// The last TOTP time step accepted.
    pub last_step: i64,
    /// Recovery codes not used yet.
    pub recovery_codes_left: i64,
}

/// Where a challenge stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeState {
    /// Waiting for a code.
    Open,
    /// A code was accepted and tokens issued: it cannot be used again.
    Done,
    /// Too many wrong codes.
    Ended,
}

impl ChallengeState {
    fn as_str(self) -> &'static str {
        match self {
            ChallengeState::Open => "open",
            ChallengeState::Done => "done",
            ChallengeState::Ended => "ended",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "open" => ChallengeState::Open,
            "done" => ChallengeState::Done,
            _ => ChallengeState::Ended,
        }
    }
}

/// An MFA challenge: what a primary sign-in produced, waiting for the second factor.
#[derive(Debug)]
pub struct MfaChallenge {
    /// SHA-256 (hex) of the handle the client holds.
    pub digest: String,
    /// Tenant.
    pub tenant: String,
    /// The user's counter key (case-folded username).
    pub user_key: String,
    /// The application that signed the user in.
    pub client_id: String,
    /// The client IP it reported (empty if none).
    pub client_ip: String,
    /// Valid until, Unix seconds.
    pub expires_at: i64,
    /// Wrong codes so far.
    pub wrong_codes: i64,
    /// Where it stands.
    pub state: ChallengeState,
    /// What the sign-in produced (the subject to issue tokens for), opaque to the store and
    /// sealed in it with the key-encryption key.
    pub payload: Secret,
}

fn enrolment_context(tenant: &str, user_key: &str) -> Vec<u8> {
    format!("mfa_enrolments.secret_sealed:{tenant}:{user_key}").into_bytes()
}

fn challenge_context(digest: &str) -> Vec<u8> {
    format!("mfa_challenges.payload_sealed:{digest}").into_bytes()
}

impl Store {
    /// Begins a TOTP enrolment for `user_key` with `secret`, replacing one not yet confirmed.
    /// `false` when the user already has a confirmed enrolment (reset it first).
    pub async fn mfa_begin_enrolment(
        &self,
        tenant: &str,
        user_key: &str,
        secret: &[u8],
        now: i64,
    ) -> Result<bool, StoreError> {
        let sealed = self.seal_secret(secret, &enrolment_context(tenant, user_key))?;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM mfa_enrolments WHERE tenant_id = $1 AND user_key = $2 \
             AND confirmed_at IS NULL",
        )
        .bind(tenant)
        .bind(user_key)
        .execute(&mut *tx)
        .await?;
        let inserted = sqlx::query(
            "INSERT INTO mfa_enrolments (tenant_id, user_key, secret_sealed, created_at, \
             confirmed_at, last_step, wrong_codes, wrong_since) \
             VALUES ($1, $2, $3, $4, NULL, 0, 0, 0) \
             ON CONFLICT (tenant_id, user_key) DO NOTHING",
        )
        .bind(tenant)
        .bind(user_key)
        .bind(sealed)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(inserted == 1)
    }

    /// The user's enrolment, if any.
    pub async fn mfa_enrolment(
        &self,
        tenant: &str,
        user_key: &str,
    ) -> Result<Option<MfaEnrolment>, StoreError> {
        let row = sqlx::query(
            "SELECT e.secret_sealed, e.created_at, e.confirmed_at, e.last_step, \
             (SELECT COUNT(*) FROM mfa_recovery_codes r WHERE r.tenant_id = e.tenant_id \
              AND r.user_key = e.user_key AND r.used_at IS NULL) AS recovery_left \
             FROM mfa_enrolments e WHERE e.tenant_id = $1 AND e.user_key = $2",
        )
        .bind(tenant)
        .bind(user_key)
        .fetch_optional(&self.reads)
        .await?;
        row.map(|row| {
            Ok(MfaEnrolment {
                secret: self.open_secret(
                    row.try_get("secret_sealed")?,
                    &enrolment_context(tenant, user_key),
                )?,
                created_at: row.try_get("created_at")?,
                confirmed_at: row.try_get("confirmed_at")?,
                last_step: row.try_get("last_step")?,
                recovery_codes_left: row.try_get("recovery_left")?,
            })
        })
        .transpose()
    }

    /// Confirms a pending enrolment with the time step of the user's first code, and stores
    /// the recovery codes' hashes; `false` when there was no pending enrolment.
    pub async fn mfa_confirm_enrolment(
        &self,
        tenant: &str,
        user_key: &str,
        step: i64,
        recovery_code_hashes: &[String],
        now: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let confirmed = sqlx::query(
            "UPDATE mfa_enrolments SET confirmed_at = $3, last_step = $4 \
             WHERE tenant_id = $1 AND user_key = $2 AND confirmed_at IS NULL",
        )
        .bind(tenant)
        .bind(user_key)
        .bind(now)
        .bind(step)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if confirmed != 1 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM mfa_recovery_codes WHERE tenant_id = $1 AND user_key = $2")
            .bind(tenant)
            .bind(user_key)
            .execute(&mut *tx)
            .await?;
        for hash in recovery_code_hashes {
            sqlx::query(
                "INSERT INTO mfa_recovery_codes (tenant_id, user_key, code_hash, used_at) \
                 VALUES ($1, $2, $3, NULL)",
            )
            .bind(tenant)
            .bind(user_key)
            .bind(hash)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Accepts a TOTP code of time `step` for the user: only when the enrolment is confirmed
    /// and no code of this step or a later one was accepted before (atomic across replicas:
    /// a code is accepted once).
    pub async fn mfa_accept_step(
        &self,
        tenant: &str,
        user_key: &str,
        step: i64,
    ) -> Result<bool, StoreError> {
        let accepted = sqlx::query(
            "UPDATE mfa_enrolments SET last_step = $3 WHERE tenant_id = $1 AND user_key = $2 \
             AND confirmed_at IS NOT NULL AND last_step < $3",
        )
        .bind(tenant)
        .bind(user_key)
        .bind(step)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(accepted == 1)
    }

    /// The hashes of the user's unused recovery codes.
    pub async fn mfa_recovery_code_hashes(
        &self,
        tenant: &str,
        user_key: &str,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT code_hash FROM mfa_recovery_codes WHERE tenant_id = $1 AND user_key = $2 \
             AND used_at IS NULL",
        )
        .bind(tenant)
        .bind(user_key)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok(row.try_get("code_hash")?))
            .collect()
    }

    /// Uses the recovery code with `hash`: `true` only the first time.
    pub async fn mfa_use_recovery_code(
        &self,
        tenant: &str,
        user_key: &str,
        hash: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let used = sqlx::query(
            "UPDATE mfa_recovery_codes SET used_at = $4 WHERE tenant_id = $1 AND user_key = $2 \
             AND code_hash = $3 AND used_at IS NULL",
        )
        .bind(tenant)
        .bind(user_key)
        .bind(hash)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(used == 1)
    }

    /// Removes the user's enrolment and recovery codes; `true` when there was one.
    pub async fn mfa_reset(&self, tenant: &str, user_key: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM mfa_recovery_codes WHERE tenant_id = $1 AND user_key = $2")
            .bind(tenant)
            .bind(user_key)
            .execute(&mut *tx)
            .await?;
        let removed =
            sqlx::query("DELETE FROM mfa_enrolments WHERE tenant_id = $1 AND user_key = $2")
                .bind(tenant)
                .bind(user_key)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        tx.commit().await?;
        Ok(removed == 1)
    }

    /// Records a new challenge (its payload sealed with the key-encryption key).
    pub async fn mfa_create_challenge(&self, challenge: &MfaChallenge) -> Result<(), StoreError> {
        let sealed = self.seal_secret(
            challenge.payload.expose(),
            &challenge_context(&challenge.digest),
        )?;
        sqlx::query(
            "INSERT INTO mfa_challenges (challenge_digest, tenant_id, user_key, client_id, \
             client_ip, expires_at, wrong_codes, state, payload_sealed) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&challenge.digest)
        .bind(&challenge.tenant)
        .bind(&challenge.user_key)
        .bind(&challenge.client_id)
        .bind(&challenge.client_ip)
        .bind(challenge.expires_at)
        .bind(challenge.wrong_codes)
        .bind(challenge.state.as_str())
        .bind(sealed)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The challenge whose handle has SHA-256 `digest`, if any.
    pub async fn mfa_challenge(&self, digest: &str) -> Result<Option<MfaChallenge>, StoreError> {
        let row = sqlx::query(
            "SELECT tenant_id, user_key, client_id, client_ip, expires_at, wrong_codes, state, \
             payload_sealed FROM mfa_challenges WHERE challenge_digest = $1",
        )
        .bind(digest)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            let state: String = row.try_get("state")?;
            Ok(MfaChallenge {
                digest: digest.to_owned(),
                tenant: row.try_get("tenant_id")?,
                user_key: row.try_get("user_key")?,
                client_id: row.try_get("client_id")?,
                client_ip: row.try_get("client_ip")?,
                expires_at: row.try_get("expires_at")?,
                wrong_codes: row.try_get("wrong_codes")?,
                state: ChallengeState::parse(&state),
                payload: self
                    .open_secret(row.try_get("payload_sealed")?, &challenge_context(digest))?,
            })
        })
        .transpose()
    }

    /// Takes one of an open, unexpired challenge's `max_attempts` attempts before its code is
    /// checked, so concurrent calls cannot check more codes than allowed; `None` when the
    /// challenge is not open, has expired, or has no attempt left. A right code gives it back
    /// ([`Store::mfa_challenge_done`]); after a wrong one, [`Store::mfa_challenge_wrong_code`].
    pub async fn mfa_challenge_attempt(
        &self,
        digest: &str,
        now: i64,
        max_attempts: i64,
    ) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query(
            "UPDATE mfa_challenges SET wrong_codes = wrong_codes + 1 WHERE challenge_digest = $1 \
             AND state = 'open' AND expires_at > $2 AND wrong_codes < $3 RETURNING wrong_codes",
        )
        .bind(digest)
        .bind(now)
        .bind(max_attempts)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| Ok(row.try_get("wrong_codes")?)).transpose()
    }

    /// After a wrong code: ends the challenge once its attempts are used up; returns its state.
    pub async fn mfa_challenge_wrong_code(
        &self,
        digest: &str,
        max_attempts: i64,
    ) -> Result<ChallengeState, StoreError> {
        let row = sqlx::query(
            "UPDATE mfa_challenges SET state = CASE WHEN wrong_codes >= $2 THEN 'ended' \
             ELSE state END WHERE challenge_digest = $1 AND state = 'open' RETURNING state",
        )
        .bind(digest)
        .bind(max_attempts)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(row) => ChallengeState::parse(&row.try_get::<String, _>("state")?),
            None => ChallengeState::Ended,
        })
    }

    /// Marks an open challenge done after a right code (giving back the attempt it took):
    /// `true` exactly once, so tokens are issued once.
    pub async fn mfa_challenge_done(&self, digest: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE mfa_challenges SET state = 'done', wrong_codes = wrong_codes - 1 \
             WHERE challenge_digest = $1 AND state = 'open'",
        )
        .bind(digest)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(done == 1)
    }

    /// Counts a wrong code against the user (across challenges): the count starts again when
    /// the last one is older than `window_s`. Returns the count.
    pub async fn mfa_user_wrong_code(
        &self,
        tenant: &str,
        user_key: &str,
        now: i64,
        window_s: i64,
    ) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "UPDATE mfa_enrolments SET \
             wrong_codes = CASE WHEN wrong_since <= $3 - $4 THEN 1 ELSE wrong_codes + 1 END, \
             wrong_since = $3 WHERE tenant_id = $1 AND user_key = $2 RETURNING wrong_codes",
        )
        .bind(tenant)
        .bind(user_key)
        .bind(now)
        .bind(window_s)
        .fetch_optional(&self.pool)
        .await?;
        row.map_or(Ok(0), |row| Ok(row.try_get("wrong_codes")?))
    }

    /// Where the user's MFA stands, in one read and without opening the secret: whether the
    /// enrolment is confirmed, and the wrong codes still counting at `now` (0 when older than
    /// `window_s`). `None` without an enrolment.
    pub async fn mfa_standing(
        &self,
        tenant: &str,
        user_key: &str,
        now: i64,
        window_s: i64,
    ) -> Result<Option<(bool, i64)>, StoreError> {
        let row = sqlx::query(
            "SELECT CASE WHEN confirmed_at IS NULL THEN 0 ELSE 1 END AS confirmed, \
             CASE WHEN wrong_since <= $3 - $4 THEN 0 ELSE wrong_codes END AS wrong \
             FROM mfa_enrolments WHERE tenant_id = $1 AND user_key = $2",
        )
        .bind(tenant)
        .bind(user_key)
        .bind(now)
        .bind(window_s)
        .fetch_optional(&self.reads)
        .await?;
        row.map(|row| {
            Ok((
                row.try_get::<i64, _>("confirmed")? != 0,
                row.try_get("wrong")?,
            ))
        })
        .transpose()
    }

    /// A right code: the user's count of wrong ones starts again.
    pub async fn mfa_user_right_code(
        &self,
        tenant: &str,
        user_key: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE mfa_enrolments SET wrong_codes = 0 WHERE tenant_id = $1 AND user_key = $2 \
             AND wrong_codes <> 0",
        )
        .bind(tenant)
        .bind(user_key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes challenges that expired before `before`; returns how many.
    pub async fn prune_mfa_challenges(&self, before: i64) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM mfa_challenges WHERE expires_at < $1")
                .bind(before)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }
}

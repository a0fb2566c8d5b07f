//! Conditional access and the second factor, as the gateway wires them in: which policy set is
//! in force (read again when its file changes; a bad file is refused and the previous set stays
//! active), and MFA challenges over the store. The decisions themselves are
//! `passage-policy`'s and `passage-mfa`'s; this module holds only what needs the gateway's
//! state, so the gRPC sign-in and the browser flow share it.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use passage_mfa::{ChallengeToken, TotpSecret};
use passage_policy::{PolicyError, PolicySet};
use passage_store::{ChallengeState, MfaChallenge, Store, StoreError};
use passage_tokens::Subject;
use serde::{Deserialize, Serialize};

/// MFA settings (the gateway's `[mfa]` table).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MfaConfig {
    /// The issuer shown in authenticator apps (`otpauth://totp/<issuer>:<user>`).
    pub issuer: String,
    /// How long a challenge waits for its code, in seconds.
    pub challenge_ttl_s: u64,
    /// A user who must do MFA but has no authenticator yet may sign in with the password
    /// alone from a *trusted* named network of the policy file (so that an administrator can
    /// enrol them there); elsewhere they get `PSG50079`. Off by default.
    pub allow_unenrolled_from_trusted_networks: bool,
}

impl Default for MfaConfig {
    fn default() -> Self {
        Self {
            issuer: "Passage".into(),
            challenge_ttl_s: 300,
            allow_unenrolled_from_trusted_networks: false,
        }
    }
}

/// The policy set in force, read from a file and read again when it changes.
pub struct Policies {
    path: Option<PathBuf>,
    current: RwLock<Arc<PolicySet>>,
    /// The file's text last seen (good or bad), so a bad file is reported once.
    last_text: Mutex<String>,
    /// Whether this gateway can run MFA; without it, a set that can require MFA is refused.
    mfa_available: std::sync::atomic::AtomicBool,
}

impl Policies {
    /// No policy file: every sign-in whose password is right is allowed.
    pub fn none() -> Arc<Self> {
        Arc::new(Self {
            path: None,
            current: RwLock::new(Arc::new(PolicySet::empty())),
            last_text: Mutex::new(String::new()),
            mfa_available: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// The policy set in `path`; refused (with file, line and column) when it is not valid.
    pub fn load(path: &Path) -> Result<Arc<Self>, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            origin: path.display().to_string(),
            source,
        })?;
        let set = PolicySet::parse(&text, &path.display().to_string())?;
        tracing::info!(
            file = %path.display(),
            policy_set = set.content_hash(),
            policies = set.policy_count(),
            "conditional access policy set active"
        );
        Ok(Arc::new(Self {
            path: Some(path.to_owned()),
            current: RwLock::new(Arc::new(set)),
            last_text: Mutex::new(text),
            mfa_available: std::sync::atomic::AtomicBool::new(true),
        }))
    }

    /// Says whether this gateway can run MFA: when it cannot, a changed file whose policies
    /// can require MFA is refused like a bad one (as it is at start).
    pub fn set_mfa_available(&self, available: bool) {
        self.mfa_available
            .store(available, std::sync::atomic::Ordering::Relaxed);
    }

    /// The policy set in force now.
    pub fn current(&self) -> Arc<PolicySet> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Reads the file again every `every` and puts a changed, valid policy set in force; a
    /// changed file that is not valid is logged (file, line, column) and the set in force
    /// stays. Polling rather than file events: Kubernetes swaps a mounted ConfigMap by
    /// renaming a symlinked directory, which event watchers easily miss.
    pub fn watch(self: &Arc<Self>, every: Duration) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let policies = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Ok(text) = tokio::fs::read_to_string(&path).await else {
                    continue;
                };
                policies.reload(&path, text);
            }
        });
    }

    fn reload(&self, path: &Path, text: String) {
        let mut last = self.last_text.lock().unwrap_or_else(|p| p.into_inner());
        if *last == text {
            return;
        }
        match PolicySet::parse(&text, &path.display().to_string()) {
            Ok(set)
                if set.can_require_mfa()
                    && !self
                        .mfa_available
                        .load(std::sync::atomic::Ordering::Relaxed) =>
            {
                tracing::error!(
                    file = %path.display(),
                    active = self.current().content_hash(),
                    "conditional access policy file refused: its policies can require MFA, and this gateway has no store_encryption_key_file for it; the previous policy set stays active"
                );
            }
            Ok(set) => {
                tracing::info!(
                    file = %path.display(),
                    policy_set = set.content_hash(),
                    policies = set.policy_count(),
                    "conditional access policy set active"
                );
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
            }
            Err(err) => tracing::error!(
                error = %err,
                active = self.current().content_hash(),
                "conditional access policy file refused; the previous policy set stays active"
            ),
        }
        *last = text;
    }
}

/// What a primary sign-in produced, kept (sealed) with its MFA challenge until the second
/// factor completes it.
#[derive(Debug, Serialize, Deserialize)]
pub struct PendingSignIn {
    /// The username as typed.
    pub username: String,
    /// The agent that answered.
    pub agent_id: String,
    /// Who signed in.
    pub sub: String,
    /// userPrincipalName.
    pub upn: String,
    /// Display name.
    pub name: String,
    /// E-mail address.
    pub email: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Seconds until the password expires, when the directory warned.
    #[serde(default)]
    pub password_expires_in_s: Option<u64>,
    /// Whether the sign-in came from a familiar network.
    pub familiar_location: bool,
    /// The token lifetime the policies set, in seconds.
    pub token_lifetime_s: Option<u64>,
    /// What conditional access decided (for the sign-in log).
    pub policies: String,
}

impl PendingSignIn {
    /// The token subject.
    pub fn subject(&self, tenant: &str) -> Subject {
        Subject {
            sub: self.sub.clone(),
            tenant: tenant.to_owned(),
            upn: self.upn.clone(),
            preferred_username: self.username.clone(),
            name: self.name.clone(),
            email: self.email.clone(),
            groups: self.groups.clone(),
            password_expires_in_s: self.password_expires_in_s,
        }
    }
}

/// Wrong codes a user may enter across challenges within [`USER_WRONG_CODES_WINDOW_S`]
/// before MFA waits for them (so a stolen password cannot buy endless challenges to guess
/// codes in).
pub const MAX_USER_WRONG_CODES: i64 = 10;
/// The window of [`MAX_USER_WRONG_CODES`], in seconds.
pub const USER_WRONG_CODES_WINDOW_S: i64 = 900;

/// Why a second factor was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum MfaFailure {
    /// Unknown, expired, or already used.
    #[error("the MFA challenge is unknown, expired or used")]
    NoSuchChallenge,
    /// Another client's, or from another address, than the sign-in that opened it.
    #[error("the MFA challenge belongs to another client or address")]
    NotThisClient(Box<PendingSignIn>),
    /// Too many wrong codes for the user lately: MFA waits.
    #[error("too many wrong codes for this user lately")]
    UserLocked(Box<PendingSignIn>),
    /// A wrong (or replayed) code; the challenge stays open.
    #[error("wrong code ({wrong} of {max})")]
    WrongCode {
        /// Wrong codes so far.
        wrong: i64,
        /// How many end the challenge.
        max: u32,
        /// The sign-in it belongs to.
        pending: Box<PendingSignIn>,
    },
    /// Too many wrong codes: the challenge is over.
    #[error("too many wrong codes; the challenge is over")]
    Ended(Box<PendingSignIn>),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The enrolment's secret could not be used.
    #[error("the MFA enrolment is unusable: {0}")]
    Enrolment(String),
}

/// A completed challenge.
#[derive(Debug)]
pub struct Completed {
    /// What the primary sign-in produced.
    pub pending: PendingSignIn,
    /// The `amr` of the second factor: `otp` (a TOTP code) or `mfa` (a recovery code).
    pub method: &'static str,
    /// The sign-in log's word for it: `otp` or `recovery_code`.
    pub log_word: &'static str,
}

/// Whether a user has a usable second factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enrolled {
    /// Confirmed: challenges can be answered.
    Yes,
    /// Confirmed, but too many wrong codes lately: no challenge for now.
    Waiting,
    /// None, or not confirmed yet.
    No,
}

/// MFA challenges over the store.
pub struct SecondFactor {
    store: Store,
    config: MfaConfig,
    /// Recovery-code checks running at once (each is up to ten Argon2id hashes).
    recovery_checks: tokio::sync::Semaphore,
}

impl SecondFactor {
    /// MFA over `store` (whose secrets are sealed with the key-encryption key).
    pub fn new(store: Store, config: MfaConfig) -> Self {
        Self {
            store,
            config,
            recovery_checks: tokio::sync::Semaphore::new(2),
        }
    }

    /// Whether the user entered too many wrong codes lately: no new challenge then.
    pub async fn user_locked(
        &self,
        tenant: &str,
        user_key: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        Ok(self.enrolled(tenant, user_key, now).await? == Enrolled::Waiting)
    }

    /// The settings.
    pub fn config(&self) -> &MfaConfig {
        &self.config
    }

    /// Whether `user_key` has a confirmed enrolment, and whether MFA waits for them (too many
    /// wrong codes lately): one read, the secret stays sealed.
    pub async fn enrolled(
        &self,
        tenant: &str,
        user_key: &str,
        now: i64,
    ) -> Result<Enrolled, StoreError> {
        Ok(
            match self
                .store
                .mfa_standing(tenant, user_key, now, USER_WRONG_CODES_WINDOW_S)
                .await?
            {
                Some((true, wrong)) if wrong >= MAX_USER_WRONG_CODES => Enrolled::Waiting,
                Some((true, _)) => Enrolled::Yes,
                _ => Enrolled::No,
            },
        )
    }

    /// Opens a challenge for a primary sign-in of `user_key` by `client_id` from `client_ip`:
    /// the handle for the client and its lifetime.
    pub async fn challenge(
        &self,
        tenant: &str,
        user_key: &str,
        client_id: &str,
        client_ip: Option<IpAddr>,
        pending: &PendingSignIn,
        now: i64,
    ) -> Result<(ChallengeToken, Duration), StoreError> {
        let token = ChallengeToken::generate();
        let payload = serde_json::to_vec(pending).expect("a pending sign-in serialises");
        self.store
            .mfa_create_challenge(&MfaChallenge {
                digest: token.digest_hex(),
                tenant: tenant.to_owned(),
                user_key: user_key.to_owned(),
                client_id: client_id.to_owned(),
                client_ip: client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
                expires_at: now + self.config.challenge_ttl_s as i64,
                wrong_codes: 0,
                state: ChallengeState::Open,
                payload: passage_credentials::Secret::new(payload),
            })
            .await?;
        Ok((token, Duration::from_secs(self.config.challenge_ttl_s)))
    }

    /// Completes the challenge `token` with `code`, for the client that opened it. A TOTP
    /// code is accepted once per user (across replicas), a recovery code once ever;
    /// [`passage_mfa::MAX_WRONG_CODES`] wrong codes end the challenge.
    pub async fn complete(
        &self,
        tenant: &str,
        token: &str,
        code: &str,
        client_id: &str,
        client_ip: Option<IpAddr>,
        now: i64,
    ) -> Result<Completed, MfaFailure> {
        let token = ChallengeToken::parse(token).map_err(|_| MfaFailure::NoSuchChallenge)?;
        let digest = token.digest_hex();
        let challenge = self
            .store
            .mfa_challenge(&digest)
            .await?
            .ok_or(MfaFailure::NoSuchChallenge)?;
        let client_ip = client_ip.map(|ip| ip.to_string()).unwrap_or_default();
        if challenge.tenant != tenant {
            return Err(MfaFailure::NoSuchChallenge);
        }
        let pending: PendingSignIn = serde_json::from_slice(challenge.payload.expose())
            .map_err(|_| MfaFailure::NoSuchChallenge)?;
        if challenge.client_id != client_id || challenge.client_ip != client_ip {
            return Err(MfaFailure::NotThisClient(Box::new(pending)));
        }
        let user_key = challenge.user_key.as_str();
        if self.user_locked(tenant, user_key, now).await? {
            return Err(MfaFailure::UserLocked(Box::new(pending)));
        }
        let max = passage_mfa::MAX_WRONG_CODES;
        // One of the challenge's attempts, taken before the code is checked.
        if self
            .store
            .mfa_challenge_attempt(&digest, now, i64::from(max))
            .await?
            .is_none()
        {
            return Err(match challenge.state {
                ChallengeState::Done => MfaFailure::NoSuchChallenge,
                _ if challenge.expires_at <= now => MfaFailure::NoSuchChallenge,
                _ => MfaFailure::Ended(Box::new(pending)),
            });
        }
        let accepted = if passage_mfa::looks_like_recovery_code(code) {
            self.recovery_code(tenant, user_key, code, now).await?
        } else {
            self.totp_code(tenant, user_key, code, now).await?
        };
        let Some((method, log_word)) = accepted else {
            let state = self
                .store
                .mfa_challenge_wrong_code(&digest, i64::from(max))
                .await?;
            let wrong = self
                .store
                .mfa_user_wrong_code(tenant, user_key, now, USER_WRONG_CODES_WINDOW_S)
                .await?;
            return Err(if state == ChallengeState::Ended {
                MfaFailure::Ended(Box::new(pending))
            } else if wrong >= MAX_USER_WRONG_CODES {
                MfaFailure::UserLocked(Box::new(pending))
            } else {
                MfaFailure::WrongCode {
                    wrong,
                    max,
                    pending: Box::new(pending),
                }
            });
        };
        // Exactly once, even with the same code sent twice at the same moment.
        if !self.store.mfa_challenge_done(&digest).await? {
            return Err(MfaFailure::NoSuchChallenge);
        }
        self.store.mfa_user_right_code(tenant, user_key).await?;
        Ok(Completed {
            pending,
            method,
            log_word,
        })
    }

    async fn totp_code(
        &self,
        tenant: &str,
        user_key: &str,
        code: &str,
        now: i64,
    ) -> Result<Option<(&'static str, &'static str)>, MfaFailure> {
        let Some(enrolment) = self.store.mfa_enrolment(tenant, user_key).await? else {
            return Ok(None);
        };
        if enrolment.confirmed_at.is_none() {
            return Ok(None);
        }
        let secret = TotpSecret::from_bytes(enrolment.secret.expose().to_vec())
            .map_err(|err| MfaFailure::Enrolment(err.to_string()))?;
        let Some(step) = passage_mfa::verify_totp(&secret, code, now.max(0) as u64) else {
            return Ok(None);
        };
        // A code (its time step, or an earlier one) accepted before is refused.
        Ok(self
            .store
            .mfa_accept_step(tenant, user_key, step as i64)
            .await?
            .then_some(("otp", "otp")))
    }

    async fn recovery_code(
        &self,
        tenant: &str,
        user_key: &str,
        code: &str,
        now: i64,
    ) -> Result<Option<(&'static str, &'static str)>, MfaFailure> {
        let hashes = self
            .store
            .mfa_recovery_code_hashes(tenant, user_key)
            .await?;
        let code = code.to_owned();
        // Argon2id on the blocking pool, two checks at a time at most: each costs tens of
        // milliseconds of CPU and 19 MiB.
        let _permit = self
            .recovery_checks
            .acquire()
            .await
            .map_err(|err| MfaFailure::Enrolment(err.to_string()))?;
        let matched = tokio::task::spawn_blocking(move || {
            hashes
                .into_iter()
                .find(|hash| passage_mfa::verify_recovery_code(&code, hash))
        })
        .await
        .map_err(|err| MfaFailure::Enrolment(err.to_string()))?;
        let Some(hash) = matched else {
            return Ok(None);
        };
        Ok(self
            .store
            .mfa_use_recovery_code(tenant, user_key, &hash, now)
            .await?
            .then_some(("mfa", "recovery_code")))
    }
}

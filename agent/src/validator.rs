//! One validation: open the sealed password, check it, ask the directory, map the answer.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use passage_directory::{
    Directory, DirectoryError, Verdict,
    password_change::{ChangeOutcome, Rejection},
};
use passage_envelope::{AgentKey, AnswerBinding, EnvelopeError, Opened, ReplayGuard};
use passage_metrics::agent::AgentMetrics;
use passage_proto::v1::{
    AgentError, DirectoryUser, PasswordRejection, SealedVerdict, ValidationAnswer,
    ValidationOutcome, ValidationTask,
};
use passage_telemetry::{TraceParent, join_trace};
use prost::Message;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::repeats::WrongPasswords;

/// Validates tasks for one agent.
pub struct Validator {
    /// The current key and, after a renewal, the previous one: passwords sealed to the old key
    /// while the switch happens still open.
    keys: std::sync::RwLock<(Arc<AgentKey>, Option<Arc<AgentKey>>)>,
    directory: Arc<dyn Directory>,
    agent_id: String,
    tenant: String,
    replay: ReplayGuard,
    decrypt_permits: Semaphore,
    wrong_passwords: WrongPasswords,
    metrics: AgentMetrics,
    /// The directory's own lockout policy as last read (none, or not read yet).
    directory_lockout: std::sync::Mutex<Option<passage_directory::LockoutPolicy>>,
    /// Whether the policy was read (or tried) once.
    lockout_policy_read: std::sync::atomic::AtomicBool,
}

impl Validator {
    /// A validator opening with `key`, checking against `directory`, answering as `agent_id`
    /// for `tenant`; at most
    /// `decrypt_threads` RSA decryptions run at once; sealed passwords valid for longer than
    /// `replay_window` are refused.
    pub fn new(
        key: Arc<AgentKey>,
        directory: Arc<dyn Directory>,
        agent_id: String,
        tenant: String,
        decrypt_threads: usize,
        replay_window: Duration,
        repeat_window: Duration,
    ) -> Self {
        Self {
            keys: std::sync::RwLock::new((key, None)),
            directory,
            agent_id,
            tenant,
            replay: ReplayGuard::new(replay_window, 1_000_000),
            decrypt_permits: Semaphore::new(decrypt_threads.max(1)),
            metrics: AgentMetrics::default(),
            wrong_passwords: WrongPasswords::new(repeat_window, 100_000),
            directory_lockout: std::sync::Mutex::new(None),
            lockout_policy_read: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// How many of the directory's servers answer, as every heartbeat reports it.
    pub fn directory_health(&self) -> passage_directory::DirectoryHealth {
        self.directory.health()
    }

    /// The directory's lockout policy as last read, as the hello and every heartbeat report
    /// it: (threshold, window in seconds); (0, 0) when the directory locks no one or it could
    /// not be read yet, a window of 0 when failures are remembered until a success.
    pub fn directory_lockout_report(&self) -> (u32, u32) {
        let policy = *self
            .directory_lockout
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        policy.map_or((0, 0), |p| {
            (
                p.threshold,
                p.observation_window_s
                    .map_or(0, |s| u32::try_from(s).unwrap_or(u32::MAX)),
            )
        })
    }

    /// Reads the directory's lockout policy again. When it cannot be read, the last value
    /// read stays (a passing outage must not raise the gateway's threshold).
    pub async fn refresh_lockout_policy(&self) {
        if !self.directory.has_lockout_policy() {
            return;
        }
        let first = !self
            .lockout_policy_read
            .swap(true, std::sync::atomic::Ordering::Relaxed);
        match self.directory.lockout_policy().await {
            Ok(policy) => {
                let previous = std::mem::replace(
                    &mut *self
                        .directory_lockout
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()),
                    policy,
                );
                if first || previous != policy {
                    match policy {
                        Some(policy) => tracing::info!(
                            threshold = policy.threshold,
                            observation_window_s = policy.observation_window_s,
                            "directory lockout policy read"
                        ),
                        None => tracing::warn!(
                            "no directory lockout policy found: either the directory locks no account, or the service account cannot read its policy entries (then set the gateways' lockout.directory_threshold)"
                        ),
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not read the directory's lockout policy; keeping the last one read");
            }
        }
    }

    /// Makes `key` the current key, keeping the one it replaces for envelopes already sealed.
    pub fn rotate(&self, key: Arc<AgentKey>) {
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let previous = std::mem::replace(&mut keys.0, key);
        keys.1 = Some(previous);
    }

    /// What the validator counts (registered for scraping by the agent's health endpoint).
    pub fn metrics(&self) -> &AgentMetrics {
        &self.metrics
    }

    /// Handles one task and returns the answer to send (never fails: errors are answers).
    pub async fn validate(&self, task: ValidationTask) -> ValidationAnswer {
        let span = tracing::info_span!(
            "validate",
            otel.kind = "server",
            trace_id = tracing::field::Empty,
            request_id = task.request_id,
            username = %task.username,
        );
        join_trace(&span, TraceParent::from_message(task.trace.as_ref()));
        let request_id = task.request_id;
        let started = Instant::now();
        let mut verdict = "";
        let answer = self
            .validate_inner(task, &mut verdict)
            .instrument(span.clone())
            .await;
        self.metrics.validation(match () {
            () if answer.error != AgentError::Unspecified as i32 => "refused",
            () if answer.retryable => "unavailable",
            () => verdict,
        });
        let _guard = span.enter();
        tracing::info!(
            answered = !answer.sealed_answer.is_empty(),
            retryable = answer.retryable,
            error = ?AgentError::try_from(answer.error).unwrap_or_default(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "validation finished"
        );
        ValidationAnswer {
            request_id,
            ..answer
        }
    }

    /// Answers `task`; `verdict` is set to what the answer says when it is sealed (for the
    /// metrics: the sealed answer cannot be read back).
    async fn validate_inner(
        &self,
        task: ValidationTask,
        verdict: &mut &'static str,
    ) -> ValidationAnswer {
        let timeout = Duration::from_millis(u64::from(task.timeout_ms.max(1)));
        let opened = {
            let Ok(_permit) = self.decrypt_permits.acquire().await else {
                return refused(AgentError::Overloaded, "agent shutting down");
            };
            let (current, previous) = self.keys.read().unwrap_or_else(|p| p.into_inner()).clone();
            let ciphertext = task.ciphertext;
            // RSA decryption is the pipeline's main CPU cost: keep it off the async workers.
            let metrics = self.metrics.clone();
            let open = move || {
                let started = Instant::now();
                let opened = match (current.open(&ciphertext), previous) {
                    (Err(EnvelopeError::DecryptFailed), Some(previous)) => {
                        previous.open(&ciphertext)
                    }
                    (result, _) => result,
                };
                metrics.decrypt(started.elapsed(), TraceParent::current_trace_id());
                opened
            };
            let span = tracing::info_span!("decrypt");
            match tokio::task::spawn_blocking(move || span.in_scope(open)).await {
                Ok(result) => result,
                Err(_) => return refused(AgentError::DecryptFailed, "decrypt task failed"),
            }
        };
        let opened = match opened {
            Ok(opened) => opened,
            Err(err) => return refused(envelope_error(&err), &err.to_string()),
        };
        if let Err(err) = opened.check(
            &task.username,
            &self.tenant,
            SystemTime::now(),
            &self.replay,
        ) {
            tracing::warn!(error = %err, "sealed password refused");
            return refused(envelope_error(&err), &err.to_string());
        }

        // A wrong password this user tried moments ago: answer from memory, so the directory
        // (and its own lockout) sees it once.
        if self
            .wrong_passwords
            .is_known_wrong(&opened.username, &opened.password)
        {
            tracing::info!("a repeated wrong password: answered without asking the directory");
            *verdict = "repeat";
            return self.seal(&opened, Verdict::InvalidCredentials, true);
        }
        // A password change: the directory checks the old password and its own policy for the
        // new one, then the user signs in with it.
        if let Some(new_password) = &opened.new_password {
            let asked = Instant::now();
            let changed = tokio::time::timeout(
                timeout,
                self.directory
                    .change_password(&opened.username, &opened.password, new_password)
                    .instrument(tracing::info_span!("change_password")),
            )
            .await;
            *verdict = match &changed {
                Ok(Ok(ChangeOutcome::Changed(_))) => "password_changed",
                Ok(Ok(ChangeOutcome::Refused(refused))) => refused.name(),
                Ok(Ok(ChangeOutcome::Rejected(_))) => "password_rejected",
                _ => "unavailable",
            };
            self.metrics.directory(
                "change_password",
                verdict,
                asked.elapsed(),
                TraceParent::current_trace_id(),
            );
            return match changed {
                Err(_) => unavailable("the directory did not answer in time"),
                Ok(Err(err)) => {
                    tracing::warn!(detail = %err, "directory could not change the password");
                    unavailable(&err.to_string())
                }
                Ok(Ok(ChangeOutcome::Changed(info))) => {
                    self.seal(&opened, Verdict::Success(info), false)
                }
                Ok(Ok(ChangeOutcome::Refused(verdict))) => {
                    tracing::info!(
                        outcome = verdict.name(),
                        "the directory refused the old password"
                    );
                    self.seal(&opened, verdict, false)
                }
                Ok(Ok(ChangeOutcome::Rejected(rejection))) => {
                    tracing::info!(
                        rejection = rejection.name(),
                        "the directory refused the new password"
                    );
                    let mut message = verdict_message(Verdict::InvalidCredentials);
                    message.outcome = ValidationOutcome::PasswordRejected as i32;
                    message.rejection = rejection_message(rejection) as i32;
                    self.seal_message(&opened, message)
                }
            };
        }
        let asked = Instant::now();
        let answered = tokio::time::timeout(
            timeout,
            self.directory
                .authenticate(&opened.username, &opened.password)
                .instrument(tracing::info_span!("authenticate")),
        )
        .await;
        *verdict = match &answered {
            Ok(Ok(answer)) => answer.name(),
            _ => "unavailable",
        };
        self.metrics.directory(
            "authenticate",
            verdict,
            asked.elapsed(),
            TraceParent::current_trace_id(),
        );
        match answered {
            Err(_) => unavailable("the directory did not answer in time"),
            Ok(Err(
                DirectoryError::Unavailable(detail)
                | DirectoryError::Unreachable(detail)
                | DirectoryError::Misconfigured(detail),
            )) => {
                tracing::warn!(%detail, "directory could not answer");
                unavailable(&detail)
            }
            Ok(Ok(verdict)) => {
                tracing::info!(outcome = verdict.name(), "the directory answered");
                if verdict == Verdict::InvalidCredentials {
                    self.wrong_passwords
                        .remember_wrong(&opened.username, &opened.password);
                }
                self.seal(&opened, verdict, false)
            }
        }
    }

    /// Seals `verdict` so that only the gateway that sealed the password can read it, and only
    /// for this sign-in: the dispatcher relays it blind.
    fn seal(&self, opened: &Opened, verdict: Verdict, repeated: bool) -> ValidationAnswer {
        let mut message = verdict_message(verdict);
        message.repeated_wrong_password = repeated;
        self.seal_message(opened, message)
    }

    /// Seals `message` under the envelope's answer key, bound to this sign-in.
    fn seal_message(&self, opened: &Opened, message: SealedVerdict) -> ValidationAnswer {
        let binding = AnswerBinding {
            nonce: &opened.nonce,
            agent_id: &self.agent_id,
            tenant: &self.tenant,
            username: &opened.username,
        };
        match opened.answer_key.seal(&binding, &message.encode_to_vec()) {
            Ok(sealed_answer) => ValidationAnswer {
                sealed_answer,
                ..Default::default()
            },
            Err(err) => refused(AgentError::DecryptFailed, &err.to_string()),
        }
    }
}

fn envelope_error(err: &EnvelopeError) -> AgentError {
    match err {
        EnvelopeError::UsernameMismatch => AgentError::UsernameMismatch,
        EnvelopeError::WrongTenant => AgentError::WrongTenant,
        EnvelopeError::Expired => AgentError::Expired,
        EnvelopeError::Replayed => AgentError::Replayed,
        EnvelopeError::BadPublicKey
        | EnvelopeError::BadPrivateKey
        | EnvelopeError::DecryptFailed
        | EnvelopeError::BadPayload
        | EnvelopeError::BadAnswer => AgentError::DecryptFailed,
    }
}

fn refused(error: AgentError, detail: &str) -> ValidationAnswer {
    ValidationAnswer {
        error: error as i32,
        detail: detail.to_owned(),
        ..Default::default()
    }
}

fn unavailable(detail: &str) -> ValidationAnswer {
    ValidationAnswer {
        retryable: true,
        detail: detail.to_owned(),
        ..Default::default()
    }
}

/// The verdict as the gateway will read it.
fn verdict_message(verdict: Verdict) -> SealedVerdict {
    let (outcome, user) = match verdict {
        Verdict::Success(info) => (
            ValidationOutcome::Success,
            Some(DirectoryUser {
                dn: info.dn,
                object_id: info.object_id,
                upn: info.upn,
                display_name: info.display_name,
                mail: info.mail,
                groups: info.groups,
                password_expires_in_s: info.password_expires_in_s.unwrap_or(0),
            }),
        ),
        Verdict::InvalidCredentials => (ValidationOutcome::InvalidCredentials, None),
        Verdict::AccountLocked => (ValidationOutcome::AccountLocked, None),
        Verdict::AccountDisabled => (ValidationOutcome::AccountDisabled, None),
        Verdict::AccountExpired => (ValidationOutcome::AccountExpired, None),
        Verdict::PasswordExpired => (ValidationOutcome::PasswordExpired, None),
        Verdict::PasswordMustChange => (ValidationOutcome::PasswordMustChange, None),
    };
    SealedVerdict {
        outcome: outcome as i32,
        user,
        repeated_wrong_password: false,
        rejection: PasswordRejection::Unspecified as i32,
    }
}

fn rejection_message(rejection: Rejection) -> PasswordRejection {
    match rejection {
        Rejection::TooShort => PasswordRejection::TooShort,
        Rejection::InHistory => PasswordRejection::InHistory,
        Rejection::TooYoung => PasswordRejection::TooYoung,
        Rejection::Quality => PasswordRejection::Quality,
        Rejection::Policy => PasswordRejection::Policy,
    }
}

#[cfg(test)]
mod tests {
    use passage_credentials::Password;
    use passage_directory::{StaticDirectory, StaticUser, UserState, static_file::hash_password};
    use passage_envelope::{HybridKey, PayloadFields, RsaBits, Sealed, SealingKey};

    use super::*;

    fn validator(key: Arc<AgentKey>) -> Validator {
        let directory = StaticDirectory::from_users(vec![StaticUser {
            username: "alice@x.test".into(),
            password_hash: hash_password(&Password::new("right".into()).unwrap()),
            display_name: "Alice".into(),
            mail: "alice@x.test".into(),
            groups: vec![],
            state: UserState::Active,
        }])
        .unwrap();
        Validator::new(
            key,
            Arc::new(directory),
            "agent-1".into(),
            "default".into(),
            2,
            Duration::from_secs(60),
            Duration::from_secs(600),
        )
    }

    /// A task for `request_user` carrying `password` sealed for `sealed_user` (version 2 when
    /// the key has a hybrid half), and what the gateway keeps to read the answer.
    fn task(
        key: &AgentKey,
        sealed_user: &str,
        request_user: &str,
        password: &str,
    ) -> (ValidationTask, Sealed) {
        let password = Password::new(password.into()).unwrap();
        let sealing = match key.hybrid() {
            Some(hybrid) => SealingKey::hybrid(hybrid.public().as_bytes()).unwrap(),
            None => SealingKey::from_der(key.public_key_der()).unwrap(),
        };
        let sealed = sealing
            .seal(&PayloadFields {
                username: sealed_user,
                password: &password,
                new_password: None,
                tenant: "default",
                not_after: SystemTime::now() + Duration::from_secs(30),
            })
            .unwrap();
        let task = ValidationTask {
            request_id: 7,
            username: request_user.into(),
            tenant: "default".into(),
            ciphertext: sealed.ciphertext.clone(),
            timeout_ms: 5_000,
            trace: None,
        };
        (task, sealed)
    }

    /// What the gateway reads from `answer` for the sign-in of `username` it sealed.
    fn read(sealed: &Sealed, username: &str, answer: &ValidationAnswer) -> SealedVerdict {
        let binding = AnswerBinding {
            nonce: &sealed.nonce,
            agent_id: "agent-1",
            tenant: "default",
            username,
        };
        let plain = sealed
            .answer_key
            .open(&binding, &answer.sealed_answer)
            .expect("the answer opens for its own sign-in");
        SealedVerdict::decode(plain.as_slice()).unwrap()
    }

    async fn right_wrong_swapped_and_replayed(key: Arc<AgentKey>) {
        let v = validator(Arc::clone(&key));
        let user = "alice@x.test";

        let (ok_task, ok_sealed) = task(&key, user, user, "right");
        let ok = v.validate(ok_task).await;
        assert_eq!(ok.request_id, 7);
        // Nothing readable in the clear: the verdict and the attributes are sealed.
        #[allow(deprecated)]
        {
            assert_eq!(ok.outcome, ValidationOutcome::Unspecified as i32);
            assert!(ok.user.is_none());
        }
        let verdict = read(&ok_sealed, user, &ok);
        assert_eq!(verdict.outcome, ValidationOutcome::Success as i32);
        assert_eq!(verdict.user.unwrap().mail, "alice@x.test");
        // Another sign-in's key cannot read it.
        let (_, other) = task(&key, user, user, "right");
        let binding = AnswerBinding {
            nonce: &other.nonce,
            agent_id: "agent-1",
            tenant: "default",
            username: user,
        };
        assert!(other.answer_key.open(&binding, &ok.sealed_answer).is_err());

        let (wrong_task, wrong_sealed) = task(&key, user, user, "wrong");
        let wrong = v.validate(wrong_task).await;
        let first = read(&wrong_sealed, user, &wrong);
        assert_eq!(first.outcome, ValidationOutcome::InvalidCredentials as i32);
        assert!(!first.repeated_wrong_password);
        // The same wrong password again is flagged (and answered from memory).
        let (again_task, again_sealed) = task(&key, user, user, "wrong");
        let again = read(&again_sealed, user, &v.validate(again_task).await);
        assert_eq!(again.outcome, ValidationOutcome::InvalidCredentials as i32);
        assert!(again.repeated_wrong_password);

        let (swapped_task, _) = task(&key, user, "bob@x.test", "right");
        let swapped = v.validate(swapped_task).await;
        assert_eq!(swapped.error, AgentError::UsernameMismatch as i32);
        assert!(swapped.sealed_answer.is_empty());

        let (replayed, replayed_sealed) = task(&key, user, user, "right");
        let first = v.validate(replayed.clone()).await;
        assert_eq!(
            read(&replayed_sealed, user, &first).outcome,
            ValidationOutcome::Success as i32
        );
        let again = v.validate(replayed).await;
        assert_eq!(again.error, AgentError::Replayed as i32);
        assert!(again.sealed_answer.is_empty());

        let (mut garbage, _) = task(&key, user, user, "right");
        garbage.ciphertext = vec![1, 2, 3];
        assert_eq!(
            v.validate(garbage).await.error,
            AgentError::DecryptFailed as i32
        );
    }

    #[tokio::test]
    async fn version_1_answers_are_sealed_and_checked() {
        right_wrong_swapped_and_replayed(Arc::new(AgentKey::generate(RsaBits::Rsa2048).unwrap()))
            .await;
    }

    #[tokio::test]
    async fn version_2_answers_are_sealed_and_checked() {
        let key = AgentKey::generate(RsaBits::Rsa2048)
            .unwrap()
            .with_hybrid(HybridKey::generate().unwrap());
        right_wrong_swapped_and_replayed(Arc::new(key)).await;
    }

    #[tokio::test]
    async fn after_a_rotation_envelopes_sealed_to_the_old_keys_still_open() {
        let key = Arc::new(
            AgentKey::generate(RsaBits::Rsa2048)
                .unwrap()
                .with_hybrid(HybridKey::generate().unwrap()),
        );
        let v = validator(Arc::clone(&key));
        let (to_old, old_sealed) = task(&key, "alice@x.test", "alice@x.test", "right");
        let new_key = Arc::new(
            AgentKey::generate(RsaBits::Rsa2048)
                .unwrap()
                .with_hybrid(HybridKey::generate().unwrap()),
        );
        v.rotate(Arc::clone(&new_key));
        let answer = v.validate(to_old).await;
        assert_eq!(
            read(&old_sealed, "alice@x.test", &answer).outcome,
            ValidationOutcome::Success as i32
        );
        let (to_new, new_sealed) = task(&new_key, "alice@x.test", "alice@x.test", "right");
        let answer = v.validate(to_new).await;
        assert_eq!(
            read(&new_sealed, "alice@x.test", &answer).outcome,
            ValidationOutcome::Success as i32
        );
    }
}

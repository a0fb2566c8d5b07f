//! One validation: open the sealed password, check it, ask the directory, map the answer.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use passage_directory::{Directory, DirectoryError, Verdict};
use passage_envelope::{AgentKey, EnvelopeError, ReplayGuard};
use passage_proto::v1::{
    AgentError, DirectoryUser, ValidationAnswer, ValidationOutcome, ValidationTask,
};
use passage_telemetry::{TraceParent, join_trace};
use tokio::sync::Semaphore;
use tracing::Instrument;

/// Validates tasks for one agent.
pub struct Validator {
    /// The current key and, after a renewal, the previous one: passwords sealed to the old key
    /// while the switch happens still open.
    keys: std::sync::RwLock<(Arc<AgentKey>, Option<Arc<AgentKey>>)>,
    directory: Arc<dyn Directory>,
    tenant: String,
    replay: ReplayGuard,
    decrypt_permits: Semaphore,
}

impl Validator {
    /// A validator opening with `key`, checking against `directory`, for `tenant`; at most
    /// `decrypt_threads` RSA decryptions run at once; sealed passwords valid for longer than
    /// `replay_window` are refused.
    pub fn new(
        key: Arc<AgentKey>,
        directory: Arc<dyn Directory>,
        tenant: String,
        decrypt_threads: usize,
        replay_window: Duration,
    ) -> Self {
        Self {
            keys: std::sync::RwLock::new((key, None)),
            directory,
            tenant,
            replay: ReplayGuard::new(replay_window, 1_000_000),
            decrypt_permits: Semaphore::new(decrypt_threads.max(1)),
        }
    }

    /// Makes `key` the current key, keeping the one it replaces for envelopes already sealed.
    pub fn rotate(&self, key: Arc<AgentKey>) {
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let previous = std::mem::replace(&mut keys.0, key);
        keys.1 = Some(previous);
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
        let answer = self.validate_inner(task).instrument(span.clone()).await;
        let _guard = span.enter();
        tracing::info!(
            outcome = ?ValidationOutcome::try_from(answer.outcome).unwrap_or_default(),
            error = ?AgentError::try_from(answer.error).unwrap_or_default(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "validation finished"
        );
        ValidationAnswer {
            request_id,
            ..answer
        }
    }

    async fn validate_inner(&self, task: ValidationTask) -> ValidationAnswer {
        let timeout = Duration::from_millis(u64::from(task.timeout_ms.max(1)));
        let opened = {
            let Ok(_permit) = self.decrypt_permits.acquire().await else {
                return refused(AgentError::Overloaded, "agent shutting down");
            };
            let (current, previous) = self.keys.read().unwrap_or_else(|p| p.into_inner()).clone();
            let ciphertext = task.ciphertext;
            // RSA decryption is the pipeline's main CPU cost: keep it off the async workers.
            let open = move || match (current.open(&ciphertext), previous) {
                (Err(EnvelopeError::DecryptFailed), Some(previous)) => previous.open(&ciphertext),
                (result, _) => result,
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

        let verdict = tokio::time::timeout(
            timeout,
            self.directory
                .authenticate(&opened.username, &opened.password)
                .instrument(tracing::info_span!("authenticate")),
        )
        .await;
        match verdict {
            Err(_) => unavailable("the directory did not answer in time"),
            Ok(Err(
                DirectoryError::Unavailable(detail) | DirectoryError::Misconfigured(detail),
            )) => {
                tracing::warn!(%detail, "directory could not answer");
                unavailable(&detail)
            }
            Ok(Ok(verdict)) => answer_for(verdict),
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
        | EnvelopeError::BadPayload => AgentError::DecryptFailed,
    }
}

fn refused(error: AgentError, detail: &str) -> ValidationAnswer {
    ValidationAnswer {
        outcome: ValidationOutcome::Unspecified as i32,
        error: error as i32,
        detail: detail.to_owned(),
        ..Default::default()
    }
}

fn unavailable(detail: &str) -> ValidationAnswer {
    ValidationAnswer {
        outcome: ValidationOutcome::DirectoryUnavailable as i32,
        detail: detail.to_owned(),
        ..Default::default()
    }
}

fn answer_for(verdict: Verdict) -> ValidationAnswer {
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
            }),
        ),
        Verdict::InvalidCredentials => (ValidationOutcome::InvalidCredentials, None),
        Verdict::AccountLocked => (ValidationOutcome::AccountLocked, None),
        Verdict::AccountDisabled => (ValidationOutcome::AccountDisabled, None),
        Verdict::AccountExpired => (ValidationOutcome::AccountExpired, None),
        Verdict::PasswordExpired => (ValidationOutcome::PasswordExpired, None),
        Verdict::PasswordMustChange => (ValidationOutcome::PasswordMustChange, None),
    };
    ValidationAnswer {
        outcome: outcome as i32,
        user,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use passage_credentials::Password;
    use passage_directory::{StaticDirectory, StaticUser, UserState, static_file::hash_password};
    use passage_envelope::{PayloadFields, RsaBits, SealingKey};

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
            "default".into(),
            2,
            Duration::from_secs(60),
        )
    }

    fn task(
        key: &AgentKey,
        sealed_user: &str,
        request_user: &str,
        password: &str,
    ) -> ValidationTask {
        let password = Password::new(password.into()).unwrap();
        let ciphertext = SealingKey::from_der(key.public_key_der())
            .unwrap()
            .seal(&PayloadFields {
                username: sealed_user,
                password: &password,
                tenant: "default",
                not_after: SystemTime::now() + Duration::from_secs(30),
            })
            .unwrap();
        ValidationTask {
            request_id: 7,
            username: request_user.into(),
            tenant: "default".into(),
            ciphertext,
            timeout_ms: 5_000,
            trace: None,
        }
    }

    #[tokio::test]
    async fn right_wrong_swapped_and_replayed() {
        let key = Arc::new(AgentKey::generate(RsaBits::Rsa2048).unwrap());
        let v = validator(Arc::clone(&key));

        let ok = v
            .validate(task(&key, "alice@x.test", "alice@x.test", "right"))
            .await;
        assert_eq!(ok.outcome, ValidationOutcome::Success as i32);
        assert_eq!(ok.request_id, 7);
        assert_eq!(ok.user.unwrap().mail, "alice@x.test");

        let wrong = v
            .validate(task(&key, "alice@x.test", "alice@x.test", "wrong"))
            .await;
        assert_eq!(wrong.outcome, ValidationOutcome::InvalidCredentials as i32);

        let swapped = v
            .validate(task(&key, "alice@x.test", "bob@x.test", "right"))
            .await;
        assert_eq!(swapped.error, AgentError::UsernameMismatch as i32);
        assert_ne!(swapped.outcome, ValidationOutcome::Success as i32);

        // After a rotation, envelopes sealed to the old key still open; new ones use the new key.
        let sealed_to_old = task(&key, "alice@x.test", "alice@x.test", "right");
        let new_key = Arc::new(AgentKey::generate(RsaBits::Rsa2048).unwrap());
        v.rotate(Arc::clone(&new_key));
        assert_eq!(
            v.validate(sealed_to_old).await.outcome,
            ValidationOutcome::Success as i32
        );
        let sealed_to_new = task(&new_key, "alice@x.test", "alice@x.test", "right");
        assert_eq!(
            v.validate(sealed_to_new).await.outcome,
            ValidationOutcome::Success as i32
        );

        let replayed = task(&key, "alice@x.test", "alice@x.test", "right");
        assert_eq!(
            v.validate(replayed.clone()).await.outcome,
            ValidationOutcome::Success as i32
        );
        let again = v.validate(replayed).await;
        assert_eq!(again.error, AgentError::Replayed as i32);
        assert_ne!(again.outcome, ValidationOutcome::Success as i32);

        let garbage = ValidationTask {
            ciphertext: vec![1, 2, 3],
            ..task(&key, "alice@x.test", "alice@x.test", "right")
        };
        assert_eq!(
            v.validate(garbage).await.error,
            AgentError::DecryptFailed as i32
        );
    }
}

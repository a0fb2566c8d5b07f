//! Multi-factor authentication building blocks for the gateway: pure logic, no store, no
//! network, no clock (every function that needs the time takes `now` in Unix seconds).
//!
//! * [`totp`]: TOTP (RFC 6238) secrets, enrolment (an `otpauth://` URI and a QR code for the
//!   terminal) and verification that reports the time step it matched, so that the store can
//!   accept each step once per user.
//! * [`recovery`]: ten single-use recovery codes per user, kept only as Argon2id hashes.
//! * [`challenge`]: the opaque handle between a primary sign-in and its second factor, kept
//!   only as a SHA-256 digest.
//!
//! Secrets (TOTP seeds, recovery codes, challenge handles) are types whose `Debug` prints
//! `[redacted]` and which wipe their memory on drop, so they cannot reach logs or panics by
//! accident.

pub mod challenge;
pub mod recovery;
pub mod totp;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};

pub use challenge::{CHALLENGE_TOKEN_CHARS, ChallengeToken, MAX_WRONG_CODES};
pub use recovery::{
    RECOVERY_CODE_COUNT, RecoveryCode, hash_recovery_code, looks_like_recovery_code,
    recovery_codes, verify_recovery_code,
};
pub use totp::{
    CODE_DIGITS, Enrolment, MIN_SECRET_BYTES, SECRET_BYTES, STEP_SECONDS, TotpSecret, enrol,
    otpauth_uri, terminal_qr, time_step, totp_code, verify_totp,
};

/// Why an MFA building block could not do its job. A wrong code is not an error: the
/// verifying functions answer `None` or `false` for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MfaError {
    /// A TOTP secret shorter than RFC 4226 allows.
    #[error("a TOTP secret must be at least {min} bytes, got {bytes}", min = MIN_SECRET_BYTES)]
    SecretTooShort {
        /// How many bytes it had.
        bytes: usize,
    },
    /// The issuer or account name for an enrolment was empty: an authenticator app would show
    /// an entry nobody can tell apart from the others.
    #[error("the {field} must not be empty")]
    EmptyLabel {
        /// Which label: `issuer` or `account`.
        field: &'static str,
    },
    /// totp-rs refused the enrolment (for example a `:` in the issuer or account name, which
    /// the `otpauth://` label uses as its separator).
    #[error("TOTP: {0}")]
    Totp(String),
    /// The `otpauth://` URI does not fit in a QR code (an absurdly long issuer or account).
    #[error("QR code: {0}")]
    Qr(String),
    /// Argon2 could not hash a recovery code.
    #[error("recovery code hashing: {0}")]
    Hash(String),
    /// What was given to hash is not a recovery code (see [`looks_like_recovery_code`]).
    #[error("not a recovery code")]
    MalformedRecoveryCode,
    /// A challenge handle that is not 43 characters of URL-safe base64 (32 bytes).
    #[error("malformed MFA challenge")]
    MalformedChallenge,
}

/// Fills `dest` from the system's random source.
///
/// # Panics
///
/// When the system random source fails: nothing in the process can recover from that, and
/// a secret made without it must never exist.
fn fill_random(dest: &mut [u8]) {
    SystemRandom::new()
        .fill(dest)
        .expect("system random source");
}

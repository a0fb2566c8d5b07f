//! Where passwords are checked: the [`Directory`] trait and its two backends.
//!
//! Like Dex's `PasswordConnector`, a directory distinguishes an *answer* from a *failure to
//! answer*: a wrong password is `Ok(Verdict::InvalidCredentials)`, an unreachable server is
//! `Err(DirectoryError::Unavailable)`. Only answers count towards lockout.
//!
//! * [`ldap::LdapDirectory`]: search for the user as a service account (RFC 4515-escaped filter),
//!   then bind as the user; maps Active Directory sub-codes and OpenLDAP ppolicy controls.
//! * [`static_file::StaticDirectory`]: users with Argon2id hashes in a TOML file, for the demo
//!   and tests that do not need a directory server.

pub mod discovery;
pub mod dn;
pub mod groups;
pub mod ldap;
pub mod lockout_policy;
pub mod password_change;
mod servers;
pub mod static_file;

use std::{future::Future, pin::Pin};

use passage_credentials::Password;
use serde::Deserialize;

pub use ldap::{LdapConfig, LdapDirectory};
pub use lockout_policy::LockoutPolicy;
pub use static_file::{StaticConfig, StaticDirectory, StaticUser, UserState};

/// What the directory knows about a user who signed in successfully.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    /// Distinguished name (or the static user's name).
    pub dn: String,
    /// Stable identifier (entryUUID, objectGUID), empty if none.
    pub object_id: String,
    /// The login name's canonical value (userPrincipalName).
    pub upn: String,
    /// Display name.
    pub display_name: String,
    /// E-mail address.
    pub mail: String,
    /// Group names.
    pub groups: Vec<String>,
    /// Seconds until the password expires, when the directory warned at this sign-in
    /// (ppolicy `timeBeforeExpiration`).
    pub password_expires_in_s: Option<u64>,
}

/// The directory's answer about a username and password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Right password, usable account.
    Success(UserInfo),
    /// Wrong password or no such user (never distinguished).
    InvalidCredentials,
    /// Locked by the directory's own lockout policy.
    AccountLocked,
    /// Disabled.
    AccountDisabled,
    /// The account has expired.
    AccountExpired,
    /// Right password, but it has expired.
    PasswordExpired,
    /// Right password, but it must be changed first.
    PasswordMustChange,
}

impl Verdict {
    /// The verdict's name for logs (no user data).
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Success(_) => "success",
            Verdict::InvalidCredentials => "invalid_credentials",
            Verdict::AccountLocked => "account_locked",
            Verdict::AccountDisabled => "account_disabled",
            Verdict::AccountExpired => "account_expired",
            Verdict::PasswordExpired => "password_expired",
            Verdict::PasswordMustChange => "password_must_change",
        }
    }
}

/// The directory could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// The server is unreachable, timed out, or answered with a server-side error.
    #[error("directory unavailable: {0}")]
    Unavailable(String),
    /// No server could be reached: connections refused, closed or timed out (with several
    /// servers, after trying each).
    #[error("directory unreachable: {0}")]
    Unreachable(String),
    /// The configuration does not work (bad service-account credentials, bad base DN, ...).
    #[error("directory misconfigured: {0}")]
    Misconfigured(String),
}

/// How many of a directory's servers are reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectoryHealth {
    /// Servers believed up.
    pub servers_up: u32,
    /// Servers configured.
    pub servers_total: u32,
    /// Operations moved to another server because one could not be reached, since start.
    pub failovers: u64,
}

/// The future a [`Directory`] returns.
pub type VerdictFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Verdict, DirectoryError>> + Send + 'a>>;

/// The future [`Directory::change_password`] returns.
pub type ChangeFuture<'a> = Pin<
    Box<dyn Future<Output = Result<password_change::ChangeOutcome, DirectoryError>> + Send + 'a>,
>;

/// The future [`Directory::lockout_policy`] returns.
pub type PolicyFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<LockoutPolicy>, DirectoryError>> + Send + 'a>>;

/// A source of truth for passwords.
pub trait Directory: Send + Sync + 'static {
    /// Checks `password` for the user whose login attribute equals `login`.
    fn authenticate<'a>(&'a self, login: &'a str, password: &'a Password) -> VerdictFuture<'a>;

    /// Changes the password of the user whose login is `login` from `old` to `new` (password
    /// writeback), then reads the user as a sign-in with `new` would.
    fn change_password<'a>(
        &'a self,
        login: &'a str,
        old: &'a Password,
        new: &'a Password,
    ) -> ChangeFuture<'a> {
        let _ = (login, old, new);
        Box::pin(async {
            Err(DirectoryError::Misconfigured(
                "this directory cannot change passwords".into(),
            ))
        })
    }

    /// Whether the directory has a lockout policy of its own to read (LDAP and AD do; the
    /// static file does not).
    fn has_lockout_policy(&self) -> bool {
        false
    }

    /// The directory's own account lockout policy (the strictest that applies to anyone), so
    /// the gateway can stay below it; `None` when accounts are never locked.
    fn lockout_policy(&self) -> PolicyFuture<'_> {
        Box::pin(async { Ok(None) })
    }

    /// How many of the directory's servers are reachable, as last seen (for the heartbeat:
    /// the dispatcher prefers agents whose directory answers).
    fn health(&self) -> DirectoryHealth {
        DirectoryHealth {
            servers_up: 1,
            servers_total: 1,
            failovers: 0,
        }
    }

    /// A one-line description for logs (never contains secrets).
    fn describe(&self) -> String;
}

/// Which backend an agent uses, as written in its configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DirectoryConfig {
    /// An LDAP or Active Directory server.
    Ldap(Box<LdapConfig>),
    /// A file of users with Argon2id password hashes.
    Static(StaticConfig),
}

impl DirectoryConfig {
    /// Builds the backend (reads files; does not contact servers yet).
    pub fn build(&self) -> Result<Box<dyn Directory>, DirectoryError> {
        Ok(match self {
            DirectoryConfig::Ldap(config) => Box::new(LdapDirectory::new((**config).clone())?),
            DirectoryConfig::Static(config) => Box::new(StaticDirectory::from_config(config)?),
        })
    }
}

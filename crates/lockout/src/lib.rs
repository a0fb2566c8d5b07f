//! Smart lockout: the gateway stops password guessing before it reaches the directory, and
//! never lets an attacker lock a real user out of their own directory.
//!
//! * Failures are counted per user (the username, case-folded, so casing does not make a new
//!   counter; unknown users are counted the same way, so counting reveals nothing) and per
//!   **location scope**: a network the user signed in from successfully before (`/24` for
//!   IPv4, `/56` for IPv6 by default) is *familiar*; failures from anywhere else count in a
//!   separate counter, so an attacker elsewhere cannot lock the user out where they work.
//! * At `threshold` failures within `window_s` the user is locked out in that scope for
//!   `lockout_duration_s`, doubling with every further lockout before a success, up to
//!   `max_lockout_duration_s`. A locked-out sign-in is refused without contacting any agent, so
//!   neither its answer nor its timing says whether the password was right.
//! * The cloud threshold stays below the directory's own lockout threshold
//!   ([`effective_threshold`]): a configured `directory_threshold` at or below the cloud
//!   threshold is refused at start.
//!
//! The counters live in the store (`passage-store`), so every gateway replica counts together;
//! the decisions are the pure functions below, table-tested.

pub mod throttle;

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use passage_store::{LockoutCounter, Store, StoreError};
use serde::Deserialize;

/// How many failures below the directory's own threshold the cloud stops at, at least.
pub const DIRECTORY_MARGIN: u32 = 2;

/// Smart lockout settings (the gateway's `[lockout]` table).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LockoutConfig {
    /// Failures (wrong password or unknown user) within `window_s` that lock a user out in one
    /// location scope.
    pub threshold: u32,
    /// How long the first lockout lasts, in seconds; each further one before a success lasts
    /// twice as long as the one before.
    pub lockout_duration_s: u64,
    /// The longest a lockout lasts, in seconds.
    pub max_lockout_duration_s: u64,
    /// Failures older than this, in seconds, no longer count.
    pub window_s: u64,
    /// The directory's own lockout threshold (AD `lockoutThreshold`, OpenLDAP
    /// `pwdMaxFailure`): the cloud threshold must stay below it, at least
    /// [`DIRECTORY_MARGIN`] failures below.
    pub directory_threshold: Option<u32>,
    /// Smart lockout on (with a store). Off, sign-ins are neither counted nor refused.
    pub enabled: bool,
    /// Prefix length that makes an IPv4 address's network.
    pub ipv4_prefix: u8,
    /// Prefix length that makes an IPv6 address's network.
    pub ipv6_prefix: u8,
    /// How many familiar networks are remembered per user (most recent first).
    pub familiar_networks: u32,
    /// How long a network stays familiar without a successful sign-in from it, in days.
    pub familiar_network_days: u32,
}

impl Default for LockoutConfig {
    fn default() -> Self {
        Self {
            threshold: 10,
            lockout_duration_s: 60,
            max_lockout_duration_s: 3600,
            window_s: 600,
            directory_threshold: None,
            enabled: true,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
            familiar_networks: 20,
            familiar_network_days: 90,
        }
    }
}

/// A lockout configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockoutConfigError {
    /// The cloud threshold is not below the directory's.
    #[error(
        "lockout.threshold = {cloud} is not below the directory's own lockout threshold \
         ({directory}): an attacker could lock users out of the directory itself. Set \
         lockout.threshold to at most {max}"
    )]
    NotBelowDirectory {
        /// The cloud threshold.
        cloud: u32,
        /// The directory's.
        directory: u32,
        /// The largest allowed.
        max: u32,
    },
    /// A setting out of range.
    #[error("lockout.{0}")]
    OutOfRange(&'static str),
}

impl LockoutConfig {
    /// Refuses settings that cannot work, saying why.
    pub fn validate(&self) -> Result<(), LockoutConfigError> {
        if self.threshold == 0 {
            return Err(LockoutConfigError::OutOfRange(
                "threshold must be at least 1",
            ));
        }
        if self.lockout_duration_s == 0 || self.max_lockout_duration_s < self.lockout_duration_s {
            return Err(LockoutConfigError::OutOfRange(
                "lockout_duration_s must be at least 1 and at most max_lockout_duration_s",
            ));
        }
        if self.window_s == 0 {
            return Err(LockoutConfigError::OutOfRange(
                "window_s must be at least 1",
            ));
        }
        if self.ipv4_prefix > 32 || self.ipv6_prefix > 128 {
            return Err(LockoutConfigError::OutOfRange(
                "ipv4_prefix must be at most 32 and ipv6_prefix at most 128",
            ));
        }
        if let Some(directory) = self.directory_threshold
            && self.threshold + DIRECTORY_MARGIN > directory
        {
            return Err(LockoutConfigError::NotBelowDirectory {
                cloud: self.threshold,
                directory,
                max: directory.saturating_sub(DIRECTORY_MARGIN),
            });
        }
        Ok(())
    }
}

/// The threshold in force: the configured one, lowered to stay [`DIRECTORY_MARGIN`] below a
/// directory threshold learnt at run time; `true` when it had to be lowered.
pub fn effective_threshold(configured: u32, directory: Option<u32>) -> (u32, bool) {
    match directory {
        Some(directory) if configured + DIRECTORY_MARGIN > directory => {
            (directory.saturating_sub(DIRECTORY_MARGIN).max(1), true)
        }
        _ => (configured, false),
    }
}

/// How long the `lockouts`-th lockout since the last success lasts (0-based), in seconds.
pub fn lockout_duration_s(config: &LockoutConfig, lockouts: i64) -> u64 {
    let doublings = lockouts.clamp(0, 20) as u32;
    config
        .lockout_duration_s
        .saturating_mul(1u64 << doublings)
        .min(config.max_lockout_duration_s)
}

/// The network `ip` belongs to, as `address/prefix`.
pub fn network_of(ip: IpAddr, ipv4_prefix: u8, ipv6_prefix: u8) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = u32::MAX
                .checked_shl(32 - u32::from(ipv4_prefix))
                .unwrap_or(0);
            format!("{}/{ipv4_prefix}", std::net::Ipv4Addr::from(bits & mask))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = u128::MAX
                .checked_shl(128 - u32::from(ipv6_prefix))
                .unwrap_or(0);
            format!("{}/{ipv6_prefix}", std::net::Ipv6Addr::from(bits & mask))
        }
    }
}

/// The counter key of a username: case-folded, so casing never makes a new counter.
pub fn user_key(username: &str) -> String {
    username.to_lowercase()
}

/// Where a sign-in comes from, for the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A network the user signed in from successfully before.
    Familiar,
    /// Anywhere else, or no client IP reported.
    Unfamiliar,
}

impl Scope {
    /// The scope's name in the store and the sign-in log.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Familiar => "familiar",
            Scope::Unfamiliar => "unfamiliar",
        }
    }
}

/// What the lockout says before a sign-in goes to an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    /// The user's scope for this sign-in.
    pub scope: Scope,
    /// Locked out in that scope until (Unix seconds), if so.
    pub locked_until: Option<i64>,
    /// When the client's network was last seen for the user, if familiar.
    pub familiar_since: Option<i64>,
    /// Whether any of the user's counters holds failures or lockouts (a success then resets
    /// them; otherwise it writes nothing).
    pub failures_to_reset: bool,
}

/// How long a familiar network's last sighting may be before a success records it again
/// (so that most successful sign-ins write nothing).
const FAMILIAR_REFRESH_S: i64 = 86_400;

/// What counting a failure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Counted; not locked out (yet).
    Counted,
    /// This failure locked the user out in its scope until (Unix seconds).
    LockedOut(i64),
}

/// Smart lockout over the shared store.
#[derive(Debug, Clone)]
pub struct SmartLockout {
    store: Store,
    config: LockoutConfig,
    /// The lowered threshold last warned about, per connector group.
    lowered: Arc<Mutex<HashMap<String, u32>>>,
}

impl SmartLockout {
    /// Lockout with `config` (validated) over `store`.
    pub fn new(store: Store, config: LockoutConfig) -> Result<Self, LockoutConfigError> {
        config.validate()?;
        Ok(Self {
            store,
            config,
            lowered: Arc::default(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &LockoutConfig {
        &self.config
    }

    /// The threshold in force for `connector_group`: the configured one, kept
    /// [`DIRECTORY_MARGIN`] below the directory's own threshold, which is the configured
    /// `directory_threshold` if there is one, else the lowest the group's agents read from the
    /// directory (`discovered`). Warns once per group and value when it had to be lowered.
    pub fn threshold_for(&self, connector_group: &str, discovered: Option<u32>) -> u32 {
        let directory = self.config.directory_threshold.or(discovered);
        let (threshold, lowered) = effective_threshold(self.config.threshold, directory);
        if lowered {
            let mut warned = self.lowered.lock().unwrap_or_else(|p| p.into_inner());
            if warned.get(connector_group) != Some(&threshold) {
                // Bounded: connector groups are few; a flood of names only costs repeats.
                if warned.len() >= 10_000 {
                    warned.clear();
                }
                warned.insert(connector_group.to_owned(), threshold);
                if directory.is_some_and(|d| d <= DIRECTORY_MARGIN) {
                    tracing::error!(
                        connector_group,
                        directory_threshold = directory,
                        "the directory locks accounts after so few failures that no cloud threshold stays {DIRECTORY_MARGIN} below it; counting with 1"
                    );
                } else {
                    tracing::warn!(
                        connector_group,
                        configured = self.config.threshold,
                        directory_threshold = directory,
                        effective = threshold,
                        "smart lockout threshold lowered to stay {DIRECTORY_MARGIN} failures below the directory's own lockout threshold"
                    );
                }
            }
        }
        threshold
    }

    fn network(&self, ip: IpAddr) -> String {
        network_of(ip, self.config.ipv4_prefix, self.config.ipv6_prefix)
    }

    /// The scope of a sign-in of `username` from `ip` at `now`, and whether the user is locked
    /// out there.
    pub async fn assess(
        &self,
        tenant: &str,
        username: &str,
        ip: Option<IpAddr>,
        now: i64,
    ) -> Result<Assessment, StoreError> {
        let key = user_key(username);
        let since = now - i64::from(self.config.familiar_network_days) * 86_400;
        let network = ip.map(|ip| self.network(ip));
        // One read per sign-in: every counter of the user and the network's last sighting.
        let state = self
            .store
            .lockout_state(tenant, &key, network.as_deref(), since)
            .await?;
        let familiar_since = state.network_last_seen;
        let scope = if familiar_since.is_some() {
            Scope::Familiar
        } else {
            Scope::Unfamiliar
        };
        let counter = state
            .counters
            .iter()
            .find(|(name, _)| name == scope.as_str())
            .map(|(_, counter)| *counter)
            .unwrap_or_default();
        Ok(Assessment {
            scope,
            locked_until: (counter.locked_until > now).then_some(counter.locked_until),
            familiar_since,
            failures_to_reset: state
                .counters
                .iter()
                .any(|(_, c)| c.failures != 0 || c.lockouts != 0),
        })
    }

    /// Counts a failure (wrong password or unknown user) in `scope`, with the given
    /// `threshold` (the effective one for the user's connector group).
    pub async fn failed(
        &self,
        tenant: &str,
        username: &str,
        scope: Scope,
        threshold: u32,
        now: i64,
    ) -> Result<Counted, StoreError> {
        let key = user_key(username);
        let counter: LockoutCounter = self
            .store
            .count_failure(
                tenant,
                &key,
                scope.as_str(),
                now,
                self.config.window_s as i64,
            )
            .await?;
        if counter.failures < i64::from(threshold) {
            return Ok(Counted::Counted);
        }
        let until = now + lockout_duration_s(&self.config, counter.lockouts) as i64;
        match self
            .store
            .lock_out(tenant, &key, scope.as_str(), i64::from(threshold), until)
            .await?
        {
            Some(locked) => {
                tracing::warn!(
                    %tenant,
                    scope = scope.as_str(),
                    locked_until = locked.locked_until,
                    lockouts = locked.lockouts,
                    "smart lockout: user locked out"
                );
                Ok(Counted::LockedOut(locked.locked_until))
            }
            // Another replica locked the user out a moment ago.
            None => Ok(Counted::Counted),
        }
    }

    /// A successful sign-in from `ip`, assessed as `assessment`: the failures start again,
    /// and the network becomes (or stays) familiar. Writes only what changes.
    pub async fn succeeded(
        &self,
        tenant: &str,
        username: &str,
        ip: Option<IpAddr>,
        assessment: &Assessment,
        now: i64,
    ) -> Result<(), StoreError> {
        let key = user_key(username);
        if assessment.failures_to_reset {
            self.store.reset_failures(tenant, &key).await?;
        }
        let fresh = assessment
            .familiar_since
            .is_some_and(|seen| now - seen < FAMILIAR_REFRESH_S);
        if let Some(ip) = ip
            && !fresh
        {
            self.store
                .remember_network(
                    tenant,
                    &key,
                    &self.network(ip),
                    now,
                    i64::from(self.config.familiar_networks),
                )
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_are_prefixes() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(network_of(ip("203.0.113.77"), 24, 56), "203.0.113.0/24");
        assert_eq!(network_of(ip("203.0.113.77"), 32, 56), "203.0.113.77/32");
        assert_eq!(network_of(ip("203.0.113.77"), 0, 56), "0.0.0.0/0");
        assert_eq!(
            network_of(ip("2001:db8:abcd:12ff:1::1"), 24, 56),
            "2001:db8:abcd:1200::/56"
        );
    }

    #[test]
    fn lockouts_grow_and_stop_at_the_maximum() {
        let config = LockoutConfig::default();
        assert_eq!(lockout_duration_s(&config, 0), 60);
        assert_eq!(lockout_duration_s(&config, 1), 120);
        assert_eq!(lockout_duration_s(&config, 3), 480);
        assert_eq!(lockout_duration_s(&config, 10), 3600);
        assert_eq!(lockout_duration_s(&config, i64::MAX), 3600);
    }

    #[test]
    fn the_cloud_threshold_stays_below_the_directorys() {
        assert_eq!(effective_threshold(10, None), (10, false));
        assert_eq!(effective_threshold(3, Some(5)), (3, false));
        assert_eq!(effective_threshold(4, Some(5)), (3, true));
        assert_eq!(effective_threshold(10, Some(5)), (3, true));
        assert_eq!(effective_threshold(10, Some(1)), (1, true));
        let refused = LockoutConfig {
            threshold: 5,
            directory_threshold: Some(5),
            ..LockoutConfig::default()
        };
        let err = refused.validate().unwrap_err();
        assert!(err.to_string().contains("at most 3"), "{err}");
        LockoutConfig {
            threshold: 3,
            directory_threshold: Some(5),
            ..LockoutConfig::default()
        }
        .validate()
        .unwrap();
        assert!(
            LockoutConfig {
                threshold: 0,
                ..LockoutConfig::default()
            }
            .validate()
            .is_err()
        );
    }

    #[tokio::test]
    async fn a_configured_directory_threshold_overrides_the_discovered_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("t.db").display()))
            .await
            .unwrap();
        let discovered_only = SmartLockout::new(store.clone(), LockoutConfig::default()).unwrap();
        assert_eq!(discovered_only.threshold_for("corp", None), 10);
        assert_eq!(discovered_only.threshold_for("corp", Some(5)), 3);
        assert_eq!(discovered_only.threshold_for("corp", Some(50)), 10);
        let configured = SmartLockout::new(
            store,
            LockoutConfig {
                threshold: 3,
                directory_threshold: Some(8),
                ..LockoutConfig::default()
            },
        )
        .unwrap();
        // The administrator's word wins over what an agent read (say, a stale policy).
        assert_eq!(configured.threshold_for("corp", Some(2)), 3);
        assert_eq!(configured.threshold_for("corp", None), 3);
    }

    #[test]
    fn usernames_count_whatever_their_casing() {
        assert_eq!(
            user_key("Alice@Corp.Example.COM"),
            user_key("alice@corp.example.com")
        );
    }

    #[tokio::test]
    async fn failures_lock_out_one_scope_and_a_success_resets_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("l.db").display()))
            .await
            .unwrap();
        let lockout = SmartLockout::new(
            store,
            LockoutConfig {
                threshold: 3,
                ..LockoutConfig::default()
            },
        )
        .unwrap();
        let (home, away) = (
            Some("203.0.113.7".parse().unwrap()),
            Some("198.51.100.9".parse().unwrap()),
        );
        let now = 1_000_000;
        lockout
            .succeeded(
                "t",
                "alice@x",
                home,
                &lockout.assess("t", "alice@x", home, now).await.unwrap(),
                now,
            )
            .await
            .unwrap();
        let at_home = lockout.assess("t", "ALICE@x", home, now).await.unwrap();
        assert_eq!(at_home.scope, Scope::Familiar);
        let elsewhere = lockout.assess("t", "alice@x", away, now).await.unwrap();
        assert_eq!(elsewhere.scope, Scope::Unfamiliar);
        assert_eq!(
            lockout
                .assess("t", "alice@x", None, now)
                .await
                .unwrap()
                .scope,
            Scope::Unfamiliar
        );

        for n in 1..=2 {
            assert_eq!(
                lockout
                    .failed("t", "alice@x", Scope::Unfamiliar, 3, now + n)
                    .await
                    .unwrap(),
                Counted::Counted
            );
        }
        assert_eq!(
            lockout
                .failed("t", "alice@x", Scope::Unfamiliar, 3, now + 3)
                .await
                .unwrap(),
            Counted::LockedOut(now + 3 + 60)
        );
        // Locked out away, not at home.
        let away_now = lockout.assess("t", "alice@x", away, now + 4).await.unwrap();
        assert_eq!(away_now.locked_until, Some(now + 63));
        assert_eq!(
            lockout
                .assess("t", "alice@x", home, now + 4)
                .await
                .unwrap()
                .locked_until,
            None
        );
        // The next lockout lasts twice as long; a success resets the count, not the lock.
        for n in 0..2 {
            lockout
                .failed("t", "alice@x", Scope::Unfamiliar, 3, now + 100 + n)
                .await
                .unwrap();
        }
        assert_eq!(
            lockout
                .failed("t", "alice@x", Scope::Unfamiliar, 3, now + 102)
                .await
                .unwrap(),
            Counted::LockedOut(now + 102 + 120)
        );
        lockout
            .succeeded(
                "t",
                "alice@x",
                home,
                &lockout
                    .assess("t", "alice@x", home, now + 103)
                    .await
                    .unwrap(),
                now + 103,
            )
            .await
            .unwrap();
        assert!(
            lockout
                .assess("t", "alice@x", away, now + 104)
                .await
                .unwrap()
                .locked_until
                .is_some()
        );
        // Failures outside the window start a new count.
        lockout
            .failed("t", "bob@x", Scope::Unfamiliar, 3, now)
            .await
            .unwrap();
        lockout
            .failed("t", "bob@x", Scope::Unfamiliar, 3, now + 1)
            .await
            .unwrap();
        assert_eq!(
            lockout
                .failed("t", "bob@x", Scope::Unfamiliar, 3, now + 700)
                .await
                .unwrap(),
            Counted::Counted
        );
    }

    #[test]
    fn the_documented_defaults_parse() {
        let config: LockoutConfig =
            toml::from_str("threshold = 3\ndirectory_threshold = 5\n").unwrap();
        config.validate().unwrap();
        assert_eq!(config.window_s, 600);
        assert!(toml::from_str::<LockoutConfig>("thresold = 3").is_err());
    }
}

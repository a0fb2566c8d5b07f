//! Smart lockout: the gateway stops password guessing before it reaches the directory, and
//! never lets an attacker lock a real user out of their own directory.
//!
//! * Failures are counted per user (the username, case-folded, so casing does not make a new
//!   counter; unknown users are counted the same way, so counting reveals nothing) and per
//!   **location scope**: a network the user signed in from successfully before (`/24` for
//!   IPv4, `/56` for IPv6 by default) is *familiar*; failures from anywhere else count in a
//!   separate counter, so an attacker elsewhere cannot lock the user out where they work.
//! * Every attempt is recorded as outstanding **before** it goes to an agent, atomically in the
//!   store, and goes out only if the limits would hold even if every outstanding attempt
//!   failed; otherwise it waits for them to be answered. So concurrent attempts (from one
//!   replica or several) cannot all pass a check made before any of them was counted, and
//!   concurrent sign-ins with the right password are delayed, never refused.
//! * At a scope's limit the user is locked out there for `lockout_duration_s`, doubling with
//!   every further lockout before a success, up to `max_lockout_duration_s`. A locked-out
//!   sign-in is refused without contacting any agent, so neither its answer nor its timing says
//!   whether the password was right.
//! * Below the directory's own lockout ([`Limits::of`]): when the directory's policy is known
//!   (configured, or read by the agents), the failures that may stand in the directory at once
//!   stay below its threshold; the unfamiliar scope may use at most half of them, and counts
//!   them for as long as the directory remembers them.
//!
//! The counters live in the store (`passage-store`), so every gateway replica counts together;
//! the decisions are the pure functions of [`limits`], table-tested.

pub mod limits;
pub mod throttle;

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

pub use limits::{DirectoryPolicy, Limits, Refusal, Remembered};
pub use passage_store::LockoutScope as Scope;
use passage_store::{
    AttemptEnd, LockoutOp, Store, StoreError, UserCounters,
    batching::{Batches, Outstanding, WriterConnection},
};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

/// Smart lockout settings (the gateway's `[lockout]` table).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LockoutConfig {
    /// Failures (wrong password or unknown user) that lock a user out in one location scope.
    /// Lowered per connector group to stay below the directory's own threshold.
    pub threshold: u32,
    /// How long the first lockout lasts, in seconds; each further one before a success lasts
    /// twice as long as the one before.
    pub lockout_duration_s: u64,
    /// The longest a lockout lasts, in seconds.
    pub max_lockout_duration_s: u64,
    /// A scope's failures stop counting once this many seconds pass without a new one (at
    /// least; unfamiliar failures count as long as the directory remembers them).
    pub window_s: u64,
    /// The directory's own lockout threshold (AD `lockoutThreshold`, OpenLDAP
    /// `pwdMaxFailure`). Overrides what the agents read from the directory; the cloud
    /// threshold must be below it.
    pub directory_threshold: Option<u32>,
    /// How long the directory remembers a failed bind, in seconds (AD
    /// `lockOutObservationWindow`, OpenLDAP `pwdFailureCountInterval`); 0: until a successful
    /// bind. Overrides what the agents read. Without either, a configured
    /// `directory_threshold` is taken to be remembered until a success.
    pub directory_window_s: Option<u64>,
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
            directory_window_s: None,
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
        if self.directory_threshold == Some(0) {
            return Err(LockoutConfigError::OutOfRange(
                "directory_threshold must be at least 1 (leave it out for a directory that locks no one)",
            ));
        }
        if let Some(directory) = self.directory_threshold
            && self.threshold >= directory
        {
            return Err(LockoutConfigError::NotBelowDirectory {
                cloud: self.threshold,
                directory,
                max: directory.saturating_sub(1),
            });
        }
        Ok(())
    }

    /// The directory policy in force: the configured threshold and window where set, else
    /// what the agents read (`discovered`).
    pub fn directory_policy(&self, discovered: Option<DirectoryPolicy>) -> Option<DirectoryPolicy> {
        let configured_window = self.directory_window_s.map(|s| match s {
            0 => Remembered::UntilSuccess,
            s => Remembered::For(s),
        });
        let threshold = self
            .directory_threshold
            .or(discovered.map(|d| d.threshold))?;
        Some(DirectoryPolicy {
            threshold,
            remembered: configured_window
                .or(discovered.map(|d| d.remembered))
                .unwrap_or(Remembered::UntilSuccess),
        })
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

/// How long a familiar network's last sighting may be before a success records it again
/// (so that most successful sign-ins write no network).
const FAMILIAR_REFRESH_S: i64 = 86_400;

/// What smart lockout says before a sign-in goes to an agent.
#[derive(Debug)]
pub enum Admission {
    /// Refused without contacting any agent.
    Refused {
        /// The user's scope for this sign-in.
        scope: Scope,
        /// Until when.
        refusal: Refusal,
    },
    /// Recorded as outstanding; settle it with [`SmartLockout::settle`] once the answer is
    /// known.
    Admitted(Ticket),
}

/// An attempt recorded as outstanding.
#[derive(Debug)]
pub struct Ticket {
    key: String,
    /// The user's scope for this sign-in.
    pub scope: Scope,
    /// Whether the limits leave room for this attempt to reach the directory twice (a second
    /// agent trying it after the first was lost with the password). Without it, the sign-in
    /// must not be retried once the password may have reached the directory.
    pub room_for_second_bind: bool,
    familiar_since: Option<i64>,
    limits: Limits,
}

/// What the directory made of an admitted attempt, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The password was right: every count starts again; with `remember_network`, the
    /// client's network becomes (or stays) familiar — only when the sign-in gets its tokens
    /// now, not when a policy blocks it or a second factor is still to come.
    Success {
        /// Remember the client's network as familiar.
        remember_network: bool,
    },
    /// As many failed binds as the directory may have counted for this attempt (a wrong
    /// password: one, plus one per agent lost after it was sent the password; a repeated
    /// wrong password the agent answered from memory: only the lost ones).
    Failures(u32),
}

/// What counting did, for the sign-in log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Nothing counted (a success, or no failure reached the directory).
    Nothing,
    /// Counted; not locked out (yet).
    Counted,
    /// This attempt locked the user out in its scope, until (Unix seconds).
    LockedOut(i64),
}

/// One update waiting for its batch, and where its result goes (nowhere: nobody waits for it,
/// see [`Writer::submit`]).
type Job = (
    LockoutOp,
    Option<oneshot::Sender<Result<Option<UserCounters>, String>>>,
);

/// Sends lockout updates to the store in batches: one writer takes whatever queued up while
/// its last batch ran — and, when the batch holds only updates nobody waits for (successes),
/// what arrives within [`LINGER`] ([`passage_store::batching`]) — and writes its reservations
/// and successes with one upsert per scope, the rest (failures, lockouts) with a statement
/// each (each committing on its own; a batch that fails halfway leaves its first statements
/// done, and every caller in it gets the error). One writer keeps each user's updates in
/// order, on a connection it keeps ([`WriterConnection`]).
#[derive(Debug, Clone)]
struct Writer {
    queue: mpsc::Sender<Job>,
    /// Updates submitted without waiting and not written yet.
    unwritten: Arc<Outstanding>,
}

/// The most updates in one batch.
const MAX_BATCH: usize = 256;

/// How long the writer waits for more updates while its batch holds only successes (which
/// nobody waits for): under load, a reservation comes within it and takes them along, so a
/// success rarely costs a statement of its own. A reservation never waits for more.
const LINGER: Duration = Duration::from_millis(2);

impl Writer {
    fn start(store: &Store) -> Self {
        // One writer on either store: SQLite has one writer anyway, and on PostgreSQL a second
        // writer only split the batches (measured: the server's CPU per sign-in ~95 µs with
        // two writers, ~66 µs with one). A sign-in waiting for its reservation is never held
        // back for a bigger batch: that waiting made every other process's work costlier
        // (docs/benchmarks.md).
        let unwritten = Arc::new(Outstanding::default());
        let (queue, rx) = mpsc::channel::<Job>(4 * MAX_BATCH);
        let store = store.clone();
        let written = Arc::clone(&unwritten);
        tokio::spawn(async move {
            let mut batches =
                Batches::new(rx, MAX_BATCH, LINGER).urgent_when(|(_, reply): &Job| reply.is_some());
            let mut batch = Vec::with_capacity(MAX_BATCH);
            let mut conn = WriterConnection::default();
            while batches.next(&mut batch).await {
                let (ops, replies): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
                let unawaited = replies.iter().filter(|reply| reply.is_none()).count();
                match store.run_lockout_ops(&mut conn, &ops).await {
                    Ok(results) => {
                        for (reply, result) in replies.into_iter().zip(results) {
                            if let Some(reply) = reply {
                                let _ = reply.send(Ok(result));
                            }
                        }
                    }
                    Err(err) => {
                        if unawaited > 0 {
                            tracing::error!(error = %err, updates = unawaited, "smart lockout: the store failed; successful sign-ins' counts may not have been started again");
                        }
                        let message = err.to_string();
                        for reply in replies.into_iter().flatten() {
                            let _ = reply.send(Err(message.clone()));
                        }
                    }
                }
                written.written(unawaited);
            }
        });
        Self { queue, unwritten }
    }

    /// Runs `op` in a batch and returns its result.
    async fn run(&self, op: LockoutOp) -> Result<Option<UserCounters>, StoreError> {
        let (reply, result) = oneshot::channel();
        self.queue
            .send((op, Some(reply)))
            .await
            .map_err(|_| StoreError::Batch("the lockout writer stopped".into()))?;
        result
            .await
            .map_err(|_| StoreError::Batch("the lockout writer stopped".into()))?
            .map_err(StoreError::Batch)
    }

    /// Queues `op` for a batch without waiting for it to be written (it still runs before
    /// any later update of the same user: one writer, in order); a failure is logged.
    /// [`SmartLockout::flush`] waits for such updates.
    async fn submit(&self, op: LockoutOp) -> Result<(), StoreError> {
        self.unwritten
            .send(&self.queue, (op, None))
            .await
            .map_err(|_| StoreError::Batch("the lockout writer stopped".into()))
    }
}

/// Whether the limits leave room for an admitted attempt to fail twice (a failover after the
/// first agent was lost with the password), reckoned with the failures counted and this attempt
/// alone: other outstanding attempts are most often right passwords (a user's concurrent
/// sign-ins), and refusing every failover for them would fail sign-ins whenever an agent
/// reconnects. Under attack, counted failures are what close the room.
fn room_for_second_bind(limits: &Limits, after: &UserCounters, scope: Scope, now: i64) -> bool {
    let mut alone = *after;
    alone.familiar.pending = 0;
    alone.unfamiliar.pending = 0;
    let own = match scope {
        Scope::Familiar => &mut alone.familiar,
        Scope::Unfamiliar => &mut alone.unfamiliar,
    };
    own.pending = 1;
    own.pending_until = now.saturating_add(1);
    limits.admits_with(&alone, scope, now, 1)
}

/// How long a replica trusts what it last read of whether a network is familiar for a user.
/// A network another replica just made familiar may count as unfamiliar here for that long
/// (the stricter limits); one that stopped being familiar, after 90 days, for that long more.
const FAMILIARITY_TTL: Duration = Duration::from_secs(60);
/// Most (user, network) pairs remembered per replica.
const FAMILIARITY_ENTRIES: usize = 100_000;

/// What this replica last read of whether a network is familiar for a user: the network's
/// last sighting and when it was read. Saves the read on every sign-in's path; the counters
/// themselves always come from the store, in the atomic update that counts the attempt.
type FamiliarityCache = HashMap<(String, String, String), (Option<i64>, std::time::Instant)>;

/// Smart lockout over the shared store.
#[derive(Debug, Clone)]
pub struct SmartLockout {
    store: Store,
    writer: Writer,
    familiarity: Arc<Mutex<FamiliarityCache>>,
    config: LockoutConfig,
    /// The longest an admitted attempt stays outstanding (after that the store forgets it:
    /// its gateway is gone), and the longest an attempt waits for others to be answered.
    attempt_timeout: Duration,
    /// The limits last warned about, per connector group.
    lowered: Arc<Mutex<HashMap<String, Limits>>>,
}

impl SmartLockout {
    /// Lockout with `config` (validated) over `store`, for sign-ins whose answer takes at
    /// most `attempt_timeout`. Starts its store writers: call it inside a Tokio runtime.
    pub fn new(
        store: Store,
        config: LockoutConfig,
        attempt_timeout: Duration,
    ) -> Result<Self, LockoutConfigError> {
        config.validate()?;
        Ok(Self {
            writer: Writer::start(&store),
            familiarity: Arc::default(),
            store,
            config,
            attempt_timeout,
            lowered: Arc::default(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &LockoutConfig {
        &self.config
    }

    /// The limits in force for `connector_group`, whose agents read `discovered` from the
    /// directory (the lowest threshold, the longest memory), for one of the `name_forms` that
    /// reach its accounts ([`Limits::shared_by`]). Warns once per group and value when they
    /// are below the configured threshold.
    pub fn limits_for(
        &self,
        connector_group: &str,
        discovered: Option<DirectoryPolicy>,
        name_forms: u32,
    ) -> Limits {
        let directory = self.config.directory_policy(discovered);
        let limits = Limits::of(&self.config, directory).shared_by(name_forms);
        let Some(directory) = directory else {
            return limits;
        };
        if limits.familiar == self.config.threshold && limits.unfamiliar == self.config.threshold {
            return limits;
        }
        let mut warned = self.lowered.lock().unwrap_or_else(|p| p.into_inner());
        if warned.get(connector_group) != Some(&limits) {
            // Bounded: connector groups are few; a flood of names only costs repeats.
            if warned.len() >= 10_000 {
                warned.clear();
            }
            warned.insert(connector_group.to_owned(), limits);
            if Limits::cannot_stay_below(&directory) || limits.unfamiliar == 0 {
                tracing::error!(
                    connector_group,
                    directory_threshold = directory.threshold,
                    familiar = limits.familiar,
                    unfamiliar = limits.unfamiliar,
                    "the directory locks accounts after so few failures that smart lockout leaves no attempt from unfamiliar networks, and one where users signed in before"
                );
            } else {
                tracing::warn!(
                    connector_group,
                    configured = self.config.threshold,
                    directory_threshold = directory.threshold,
                    familiar = limits.familiar,
                    unfamiliar = limits.unfamiliar,
                    "smart lockout threshold lowered to stay below the directory's own lockout threshold"
                );
            }
        }
        limits
    }

    fn network(&self, ip: IpAddr) -> String {
        network_of(ip, self.config.ipv4_prefix, self.config.ipv6_prefix)
    }

    /// Decides whether a sign-in of `username` from `ip` at `now` may go to an agent, and if
    /// so records it as outstanding: one read and one atomic write. While the attempts already
    /// out could, all failing, reach a limit, it waits for them to be answered.
    pub async fn admit(
        &self,
        tenant: &str,
        username: &str,
        ip: Option<IpAddr>,
        limits: &Limits,
        now: i64,
    ) -> Result<Admission, StoreError> {
        let key = user_key(username);
        let since = now - i64::from(self.config.familiar_network_days) * 86_400;
        let network = ip.map(|ip| self.network(ip));
        let started = tokio::time::Instant::now();
        let give_up = started + self.attempt_timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            // Whether the network is familiar, from this replica's recent reading when it has
            // one (no client IP: unfamiliar, nothing to read); otherwise one read, which also
            // refuses a locked-out user without writing anything.
            let cached = match &network {
                None => Some(None),
                Some(network) => self.cached_familiarity(tenant, &key, network),
            };
            let network_last_seen = match cached {
                Some(seen) => seen,
                None => {
                    let state = self
                        .store
                        .lockout_state(tenant, &key, network.as_deref(), since)
                        .await?;
                    if let Some(network) = &network {
                        self.cache_familiarity(tenant, &key, network, state.network_last_seen);
                    }
                    let scope = if state.network_last_seen.is_some() {
                        Scope::Familiar
                    } else {
                        Scope::Unfamiliar
                    };
                    if let Some(refusal) = limits.refusal(&state.counters, scope, now) {
                        return Ok(Admission::Refused { scope, refusal });
                    }
                    state.network_last_seen
                }
            };
            let scope = if network_last_seen.is_some() {
                Scope::Familiar
            } else {
                Scope::Unfamiliar
            };
            // Outstanding for as long as the sign-in may still take from here (its dispatcher
            // calls), with room for the key fetch and the settling itself.
            let outstanding_until = now
                .saturating_add(started.elapsed().as_secs() as i64)
                .saturating_add(self.attempt_timeout.as_secs() as i64)
                .saturating_add(5);
            let after = self
                .writer
                .run(LockoutOp::Reserve {
                    tenant: tenant.to_owned(),
                    user_key: key.clone(),
                    scope,
                    now,
                    until: outstanding_until,
                })
                .await?
                .unwrap_or_default();
            if limits.admits(&after, scope, now) {
                return Ok(Admission::Admitted(Ticket {
                    key,
                    scope,
                    room_for_second_bind: room_for_second_bind(limits, &after, scope, now),
                    familiar_since: network_last_seen,
                    limits: *limits,
                }));
            }
            // Others are out and, all failing, would reach a limit: wait for their answers.
            self.writer
                .run(LockoutOp::Settle {
                    tenant: tenant.to_owned(),
                    user_key: key.clone(),
                    scope,
                    end: AttemptEnd::Failures {
                        failures: 0,
                        expired_before: i64::MIN,
                        standing_expired_before: i64::MIN,
                    },
                    now,
                })
                .await?;
            if let Some(refusal) = limits.refusal(&after, scope, now) {
                return Ok(Admission::Refused { scope, refusal });
            }
            if tokio::time::Instant::now() + pause > give_up {
                tracing::warn!(%tenant, scope = scope.as_str(), "smart lockout: attempts outstanding too long; refusing");
                return Ok(Admission::Refused {
                    scope,
                    refusal: Refusal {
                        until: Some(outstanding_until),
                    },
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// Settles an admitted attempt of a sign-in from `ip` with its `outcome`.
    pub async fn settle(
        &self,
        tenant: &str,
        ticket: Ticket,
        ip: Option<IpAddr>,
        outcome: Outcome,
        now: i64,
    ) -> Result<Settled, StoreError> {
        let Ticket {
            key,
            scope,
            familiar_since,
            limits,
            ..
        } = ticket;
        let failures = match outcome {
            Outcome::Success { remember_network } => {
                // Nothing here depends on its result, so the sign-in does not wait for it to
                // be written; the user's next update on this replica queues behind it (other
                // replicas see it once written, milliseconds later).
                self.writer
                    .submit(LockoutOp::Settle {
                        tenant: tenant.to_owned(),
                        user_key: key.clone(),
                        scope,
                        end: AttemptEnd::Success,
                        now,
                    })
                    .await?;
                let fresh = familiar_since.is_some_and(|seen| now - seen < FAMILIAR_REFRESH_S);
                if remember_network
                    && let Some(ip) = ip
                    && !fresh
                {
                    self.remember_network(tenant, &key, ip, now).await?;
                }
                return Ok(Settled::Nothing);
            }
            Outcome::Failures(failures) => failures,
        };
        let after = self
            .writer
            .run(LockoutOp::Settle {
                tenant: tenant.to_owned(),
                user_key: key.clone(),
                scope,
                end: AttemptEnd::Failures {
                    failures: i64::from(failures),
                    expired_before: limits.expired_before(scope, now),
                    // The directory's memory (that of the unfamiliar scope's count).
                    standing_expired_before: limits.expired_before(Scope::Unfamiliar, now),
                },
                now,
            })
            .await?
            .unwrap_or_default();
        if failures == 0 {
            return Ok(Settled::Nothing);
        }
        if !limits.locks(&after, scope, now) {
            return Ok(Settled::Counted);
        }
        let lockouts = after.scope(scope).lockouts;
        let until = now + lockout_duration_s(&self.config, lockouts) as i64;
        match self
            .writer
            .run(LockoutOp::LockOut {
                tenant: tenant.to_owned(),
                user_key: key,
                scope,
                until,
                restart: limits.restarts(scope),
                now,
            })
            .await?
        {
            Some(locked) => {
                tracing::warn!(
                    %tenant,
                    scope = scope.as_str(),
                    locked_until = locked.scope(scope).locked_until,
                    lockouts = locked.scope(scope).lockouts,
                    "smart lockout: user locked out"
                );
                Ok(Settled::LockedOut(locked.scope(scope).locked_until))
            }
            // Another replica locked the user out a moment ago.
            None => Ok(Settled::Counted),
        }
    }

    fn cached_familiarity(&self, tenant: &str, key: &str, network: &str) -> Option<Option<i64>> {
        let cache = self.familiarity.lock().unwrap_or_else(|p| p.into_inner());
        let (seen, read_at) =
            cache.get(&(tenant.to_owned(), key.to_owned(), network.to_owned()))?;
        (read_at.elapsed() < FAMILIARITY_TTL).then_some(*seen)
    }

    fn cache_familiarity(&self, tenant: &str, key: &str, network: &str, seen: Option<i64>) {
        let mut cache = self.familiarity.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= FAMILIARITY_ENTRIES {
            cache.retain(|_, (_, read_at)| read_at.elapsed() < FAMILIARITY_TTL);
            if cache.len() >= FAMILIARITY_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(
            (tenant.to_owned(), key.to_owned(), network.to_owned()),
            (seen, std::time::Instant::now()),
        );
    }

    /// Makes `ip`'s network familiar for `username` (after a sign-in completed with its second
    /// factor: the primary sign-in did not, so that a password alone never makes a network
    /// familiar while a policy still asks for more).
    pub async fn remember_network(
        &self,
        tenant: &str,
        username: &str,
        ip: IpAddr,
        now: i64,
    ) -> Result<(), StoreError> {
        let (key, network) = (user_key(username), self.network(ip));
        self.store
            .remember_network(
                tenant,
                &key,
                &network,
                now,
                i64::from(self.config.familiar_networks),
            )
            .await?;
        self.cache_familiarity(tenant, &key, &network, Some(now));
        Ok(())
    }

    /// Waits until every update this replica queued without waiting (successful sign-ins'
    /// counts) is in the store, or `timeout` has passed: `false` (and an error logged, with how
    /// many are missing) in the second case. A stopping gateway calls it.
    pub async fn flush(&self, timeout: Duration) -> bool {
        self.writer
            .unwritten
            .flush(timeout, "successful sign-ins' lockout counts")
            .await
    }

    /// The user's counters as the store holds them (for operators and tests), once this
    /// replica's queued updates are written (for up to the attempt timeout).
    pub async fn counters(&self, tenant: &str, username: &str) -> Result<UserCounters, StoreError> {
        let _ = self
            .writer
            .unwritten
            .wait_for_none(self.attempt_timeout)
            .await;
        Ok(self
            .store
            .lockout_state(tenant, &user_key(username), None, 0)
            .await?
            .counters)
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
    fn a_cloud_threshold_at_or_above_the_directorys_is_refused() {
        let refused = LockoutConfig {
            threshold: 5,
            directory_threshold: Some(5),
            ..LockoutConfig::default()
        };
        let err = refused.validate().unwrap_err();
        assert!(err.to_string().contains("at most 4"), "{err}");
        for (threshold, directory) in [(3, 5), (4, 5)] {
            LockoutConfig {
                threshold,
                directory_threshold: Some(directory),
                ..LockoutConfig::default()
            }
            .validate()
            .unwrap();
        }
        for bad in [
            LockoutConfig {
                threshold: 0,
                ..LockoutConfig::default()
            },
            LockoutConfig {
                directory_threshold: Some(0),
                ..LockoutConfig::default()
            },
        ] {
            assert!(bad.validate().is_err());
        }
    }

    #[test]
    fn the_configured_directory_policy_overrides_the_discovered_one() {
        let discovered = Some(DirectoryPolicy {
            threshold: 5,
            remembered: Remembered::For(1800),
        });
        let default = LockoutConfig::default();
        assert_eq!(default.directory_policy(discovered), discovered);
        assert_eq!(default.directory_policy(None), None);
        let configured = LockoutConfig {
            threshold: 3,
            directory_threshold: Some(8),
            ..LockoutConfig::default()
        };
        // The administrator's word wins over what an agent read (say, a stale policy)...
        assert_eq!(
            configured.directory_policy(discovered),
            Some(DirectoryPolicy {
                threshold: 8,
                remembered: Remembered::For(1800)
            })
        );
        // ...and with nothing said of the window, the directory remembers until a success.
        assert_eq!(
            configured.directory_policy(None),
            Some(DirectoryPolicy {
                threshold: 8,
                remembered: Remembered::UntilSuccess
            })
        );
        let with_window = LockoutConfig {
            directory_window_s: Some(0),
            ..configured
        };
        assert_eq!(
            with_window.directory_policy(discovered).unwrap().remembered,
            Remembered::UntilSuccess
        );
    }

    #[test]
    fn usernames_count_whatever_their_casing() {
        assert_eq!(
            user_key("Alice@Corp.Example.COM"),
            user_key("alice@corp.example.com")
        );
    }

    async fn lockout(config: LockoutConfig) -> (SmartLockout, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("l.db").display()))
            .await
            .unwrap();
        (
            SmartLockout::new(store, config, Duration::from_secs(5)).unwrap(),
            dir,
        )
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    /// One sign-in through admission and settlement: `None` when refused.
    async fn attempt(
        lockout: &SmartLockout,
        limits: &Limits,
        user: &str,
        from: Option<IpAddr>,
        outcome: Outcome,
        now: i64,
    ) -> Option<Settled> {
        match lockout.admit("t", user, from, limits, now).await.unwrap() {
            Admission::Refused { .. } => None,
            Admission::Admitted(ticket) => Some(
                lockout
                    .settle("t", ticket, from, outcome, now)
                    .await
                    .unwrap(),
            ),
        }
    }

    #[tokio::test]
    async fn a_success_is_written_in_the_background_and_a_flush_waits_for_it() {
        let (lockout, _dir) = lockout(LockoutConfig::default()).await;
        let limits = lockout.limits_for("corp", None, 1);
        let away = ip("198.51.100.9");
        let now = 1_000_000;
        let wrong = Outcome::Failures(1);
        assert_eq!(
            attempt(&lockout, &limits, "alice@x", away, wrong, now).await,
            Some(Settled::Counted)
        );
        let Admission::Admitted(ticket) = lockout
            .admit("t", "alice@x", away, &limits, now + 1)
            .await
            .unwrap()
        else {
            panic!("admitted");
        };
        let success = Outcome::Success {
            remember_network: false,
        };
        assert_eq!(
            lockout
                .settle("t", ticket, away, success, now + 1)
                .await
                .unwrap(),
            Settled::Nothing
        );
        assert!(lockout.flush(Duration::from_secs(5)).await);
        // Read from the store itself, not through `counters` (which flushes too).
        let stored = lockout
            .store
            .lockout_state("t", "alice@x", None, 0)
            .await
            .unwrap()
            .counters;
        assert_eq!(
            (stored.unfamiliar.failures, stored.unfamiliar.pending),
            (0, 0),
            "{stored:?}"
        );
    }

    #[tokio::test]
    async fn below_a_directory_that_remembers_until_a_success() {
        let (lockout, _dir) = lockout(LockoutConfig {
            threshold: 3,
            directory_threshold: Some(5),
            ..LockoutConfig::default()
        })
        .await;
        let limits = lockout.limits_for("corp", None, 1);
        assert_eq!((limits.familiar, limits.unfamiliar), (3, 2));
        let (home, away) = (ip("203.0.113.7"), ip("198.51.100.9"));
        let now = 1_000_000;
        assert_eq!(
            attempt(
                &lockout,
                &limits,
                "alice@x",
                home,
                Outcome::Success {
                    remember_network: true
                },
                now
            )
            .await,
            Some(Settled::Nothing)
        );
        // Two failures from elsewhere: the second locks that scope.
        let wrong = Outcome::Failures(1);
        assert_eq!(
            attempt(&lockout, &limits, "alice@x", away, wrong, now + 1).await,
            Some(Settled::Counted)
        );
        assert_eq!(
            attempt(&lockout, &limits, "ALICE@x", away, wrong, now + 2).await,
            Some(Settled::LockedOut(now + 62))
        );
        // Long after the cloud lockout, still refused: the directory remembers.
        assert_eq!(
            attempt(&lockout, &limits, "alice@x", away, wrong, now + 100_000).await,
            None
        );
        // At home: the two together must stay below 5, so two more failures, then refused.
        for n in 3..=4 {
            assert!(
                attempt(&lockout, &limits, "alice@x", home, wrong, now + n)
                    .await
                    .is_some()
            );
        }
        assert_eq!(
            attempt(
                &lockout,
                &limits,
                "alice@x",
                home,
                Outcome::Success {
                    remember_network: true
                },
                now + 5
            )
            .await,
            None
        );
        // The familiar lockout starts its own count again (what follows is the user's own
        // doing); the unfamiliar count stands.
        let counters = lockout.counters("t", "alice@x").await.unwrap();
        assert_eq!(
            (counters.familiar.failures, counters.unfamiliar.failures),
            (0, 2)
        );
        // Once the familiar lockout is over, a success resets every count; a lockout in
        // force elsewhere stays in force.
        let familiar_until = counters.familiar.locked_until;
        assert!(familiar_until > now + 4);
        assert_eq!(
            attempt(
                &lockout,
                &limits,
                "alice@x",
                home,
                Outcome::Success {
                    remember_network: true
                },
                familiar_until
            )
            .await,
            Some(Settled::Nothing)
        );
        let counters = lockout.counters("t", "alice@x").await.unwrap();
        assert_eq!(
            (counters.familiar.failures, counters.unfamiliar.failures),
            (0, 0)
        );
        assert_eq!(
            attempt(&lockout, &limits, "alice@x", away, wrong, now + 10).await,
            None,
            "the unfamiliar lockout still runs"
        );
    }

    #[tokio::test]
    async fn concurrent_attempts_cannot_pass_a_check_made_before_they_were_counted() {
        let (lockout, _dir) = lockout(LockoutConfig::default()).await;
        let limits = lockout.limits_for(
            "corp",
            Some(DirectoryPolicy {
                threshold: 5,
                remembered: Remembered::UntilSuccess,
            }),
            1,
        );
        let now = 1_000_000;
        // Forty wrong passwords at once: each attempt that gets out fails (after a moment, as
        // a directory would take); two get out, the rest wait, then are refused.
        let (out, wrong) = (
            Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        );
        let mut attempts = tokio::task::JoinSet::new();
        for n in 0..40 {
            let (lockout, limits, out, wrong) = (
                lockout.clone(),
                limits,
                Arc::clone(&out),
                Arc::clone(&wrong),
            );
            attempts.spawn(async move {
                let user = if n % 2 == 0 { "bob@x" } else { "BOB@x" };
                match lockout
                    .admit("t", user, ip("198.51.100.9"), &limits, now)
                    .await
                    .unwrap()
                {
                    Admission::Refused { .. } => {}
                    Admission::Admitted(ticket) => {
                        out.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        wrong.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        lockout
                            .settle("t", ticket, None, Outcome::Failures(1), now)
                            .await
                            .unwrap();
                    }
                }
            });
        }
        while attempts.join_next().await.is_some() {}
        assert_eq!(out.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(
            lockout
                .counters("t", "bob@x")
                .await
                .unwrap()
                .unfamiliar
                .failures,
            2
        );
        // Sixteen sign-ins at once with the right password: delayed, never refused.
        let mut right = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (lockout, limits) = (lockout.clone(), limits);
            right.spawn(async move {
                match lockout
                    .admit("t", "carol@x", ip("198.51.100.9"), &limits, now)
                    .await
                    .unwrap()
                {
                    Admission::Refused { .. } => false,
                    Admission::Admitted(ticket) => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        lockout
                            .settle(
                                "t",
                                ticket,
                                None,
                                Outcome::Success {
                                    remember_network: true,
                                },
                                now,
                            )
                            .await
                            .unwrap();
                        true
                    }
                }
            });
        }
        let mut admitted = 0;
        while let Some(ok) = right.join_next().await {
            admitted += usize::from(ok.unwrap());
        }
        assert_eq!(admitted, 16);
    }

    #[tokio::test]
    async fn what_is_given_back_and_what_counts_twice() {
        let (lockout, _dir) = lockout(LockoutConfig {
            threshold: 5,
            ..LockoutConfig::default()
        })
        .await;
        let limits = lockout.limits_for("corp", None, 1);
        let now = 1_000_000;
        let away = ip("198.51.100.9");
        let counters = |lockout: SmartLockout| async move {
            lockout.counters("t", "carol@x").await.unwrap().unfamiliar
        };
        // A repeated wrong password (or no directory answer): nothing counted, nothing left
        // outstanding.
        attempt(
            &lockout,
            &limits,
            "carol@x",
            away,
            Outcome::Failures(0),
            now,
        )
        .await;
        let c = counters(lockout.clone()).await;
        assert_eq!((c.failures, c.pending), (0, 0));
        // An agent lost after it had the password, then a wrong password: two.
        attempt(
            &lockout,
            &limits,
            "carol@x",
            away,
            Outcome::Failures(2),
            now,
        )
        .await;
        let c = counters(lockout.clone()).await;
        assert_eq!((c.failures, c.pending), (2, 0));
        // An attempt admitted before a success and failing after it counts after the reset.
        let Admission::Admitted(early) = lockout
            .admit("t", "carol@x", away, &limits, now + 1)
            .await
            .unwrap()
        else {
            panic!("admitted")
        };
        attempt(
            &lockout,
            &limits,
            "carol@x",
            away,
            Outcome::Success {
                remember_network: true,
            },
            now + 2,
        )
        .await;
        assert_eq!(counters(lockout.clone()).await.failures, 0);
        lockout
            .settle("t", early, away, Outcome::Failures(1), now + 3)
            .await
            .unwrap();
        let c = counters(lockout.clone()).await;
        assert_eq!((c.failures, c.pending), (1, 0));
        // An attempt never settled (its gateway died) is forgotten after the attempt timeout.
        // (The success made `away` familiar; no address is unfamiliar.)
        let Admission::Admitted(_abandoned) = lockout
            .admit("t", "carol@x", None, &limits, now + 10)
            .await
            .unwrap()
        else {
            panic!("admitted")
        };
        let c = counters(lockout.clone()).await;
        assert_eq!(c.pending, 1);
        // Outstanding for the attempt timeout (5 s here) and 5 s of room, then forgotten.
        let stored = lockout.counters("t", "carol@x").await.unwrap();
        assert_eq!(limits.pending(&stored, Scope::Unfamiliar, now + 19), 1);
        assert_eq!(limits.pending(&stored, Scope::Unfamiliar, now + 20), 0);
    }

    #[tokio::test]
    async fn without_a_directory_policy_a_lockout_starts_the_count_again() {
        let (lockout, _dir) = lockout(LockoutConfig {
            threshold: 3,
            ..LockoutConfig::default()
        })
        .await;
        let limits = lockout.limits_for("corp", None, 1);
        let now = 1_000_000;
        let away = ip("198.51.100.9");
        let wrong = Outcome::Failures(1);
        for n in 0..2 {
            assert_eq!(
                attempt(&lockout, &limits, "dave@x", away, wrong, now + n).await,
                Some(Settled::Counted)
            );
        }
        assert_eq!(
            attempt(&lockout, &limits, "dave@x", away, wrong, now + 2).await,
            Some(Settled::LockedOut(now + 62))
        );
        assert_eq!(
            attempt(&lockout, &limits, "dave@x", away, wrong, now + 61).await,
            None
        );
        // After the lockout: three more; the next lockout lasts twice as long.
        for n in 0..2 {
            assert_eq!(
                attempt(&lockout, &limits, "dave@x", away, wrong, now + 62 + n).await,
                Some(Settled::Counted)
            );
        }
        assert_eq!(
            attempt(&lockout, &limits, "dave@x", away, wrong, now + 64).await,
            Some(Settled::LockedOut(now + 64 + 120))
        );
        // Failures further apart than the window do not add up.
        for n in 0..4 {
            assert_eq!(
                attempt(&lockout, &limits, "erin@x", away, wrong, now + n * 600).await,
                Some(Settled::Counted)
            );
        }
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

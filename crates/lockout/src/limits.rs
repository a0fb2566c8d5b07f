//! The pure part of smart lockout: which limits apply to a connector group, and whether a
//! user's counters admit one more attempt. Table-tested; no store, no clock.

use passage_store::{LockoutScope as Scope, ScopeCounter, UserCounters};

use crate::LockoutConfig;

/// How long the directory remembers a failed bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remembered {
    /// For this many seconds after the last failure (AD `lockOutObservationWindow`, ppolicy
    /// `pwdFailureCountInterval`).
    For(u64),
    /// Until the next successful bind (ppolicy without `pwdFailureCountInterval`).
    UntilSuccess,
}

impl Remembered {
    /// The longer of two.
    pub fn longer(self, other: Remembered) -> Remembered {
        match (self, other) {
            (Remembered::For(a), Remembered::For(b)) => Remembered::For(a.max(b)),
            _ => Remembered::UntilSuccess,
        }
    }
}

/// The directory's own account lockout policy, as far as the gateway knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectoryPolicy {
    /// Failed binds that lock the account in the directory.
    pub threshold: u32,
    /// How long the directory remembers a failure.
    pub remembered: Remembered,
}

/// The limits in force for the users of one connector group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Failures that lock the familiar scope.
    pub familiar: u32,
    /// Failures that lock the unfamiliar scope.
    pub unfamiliar: u32,
    /// Failures of both scopes together that the directory takes without locking the account
    /// (its threshold less one), when its policy is known.
    pub together: Option<u32>,
    /// A familiar-scope count expires this many seconds after its last failure.
    pub familiar_window_s: u64,
    /// An unfamiliar-scope count expires this many seconds after its last failure; `None`:
    /// only a success resets it (the directory remembers until then).
    pub unfamiliar_window_s: Option<u64>,
    /// Whether a cloud lockout in the unfamiliar scope starts its count again. Not when the
    /// directory's policy is known: the directory still remembers those failures, so the
    /// scope stays closed until the directory forgets them.
    pub unfamiliar_restarts: bool,
}

/// Why an attempt is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// Until when, Unix seconds; `None`: until a successful sign-in (from a familiar network)
    /// resets the count.
    pub until: Option<i64>,
}

impl Limits {
    /// The limits for a connector group whose directory has `directory`'s policy (if known).
    ///
    /// Without a directory policy each scope gets the configured threshold, and a lockout
    /// starts its count again. With one, the directory must never count its threshold's worth
    /// of failures: at most `threshold - 1` may stand in it at once, the unfamiliar scope
    /// (where attackers are) may use at most half of them, and its failures count for as long
    /// as the directory remembers them; the familiar scope keeps the rest.
    pub fn of(config: &LockoutConfig, directory: Option<DirectoryPolicy>) -> Limits {
        let configured = config.threshold.max(1);
        let Some(directory) = directory else {
            return Limits {
                familiar: configured,
                unfamiliar: configured,
                together: None,
                familiar_window_s: config.window_s,
                unfamiliar_window_s: Some(config.window_s),
                unfamiliar_restarts: true,
            };
        };
        let bearable = directory.threshold.saturating_sub(1);
        Limits {
            // Where the user works, at least one attempt (their own risk, as at their desk);
            // from elsewhere none when the directory bears fewer than two failures.
            familiar: configured.min(bearable).max(1),
            unfamiliar: configured.min(bearable / 2),
            together: Some(bearable.max(1)),
            familiar_window_s: config.window_s,
            unfamiliar_window_s: match directory.remembered {
                Remembered::For(seconds) => Some(seconds.max(config.window_s)),
                Remembered::UntilSuccess => None,
            },
            unfamiliar_restarts: false,
        }
    }

    /// The limits of one name form when `forms` name forms reach the same directory accounts
    /// (`alice@corp.example.com` and the short name `CORP\\alice` or `alice` are counted apart:
    /// the gateway cannot tell they are one account before the directory answers). The room
    /// below the directory's threshold is shared among them, so that all together still stay
    /// below it — but each form keeps at least one attempt where the user works, as
    /// [`Limits::of`] does. Without a known directory policy there is no such room to share.
    pub fn shared_by(self, forms: u32) -> Limits {
        let Some(together) = self.together else {
            return self;
        };
        if forms <= 1 {
            return self;
        }
        let share = together / forms;
        Limits {
            familiar: self.familiar.min(share).max(1),
            unfamiliar: self.unfamiliar.min(share / 2),
            together: Some(share.max(1)),
            ..self
        }
    }

    /// Whether the directory's threshold is so low that these limits cannot stay below it.
    pub fn cannot_stay_below(directory: &DirectoryPolicy) -> bool {
        directory.threshold < 3
    }

    /// The limit of `scope`.
    pub fn limit(&self, scope: Scope) -> u32 {
        match scope {
            Scope::Familiar => self.familiar,
            Scope::Unfamiliar => self.unfamiliar,
        }
    }

    /// How long a count of `scope` lasts after its last failure (`None`: until a success).
    pub fn window_s(&self, scope: Scope) -> Option<u64> {
        match scope {
            Scope::Familiar => Some(self.familiar_window_s),
            Scope::Unfamiliar => self.unfamiliar_window_s,
        }
    }

    /// Whether a cloud lockout in `scope` starts its count again.
    pub fn restarts(&self, scope: Scope) -> bool {
        match scope {
            Scope::Familiar => true,
            Scope::Unfamiliar => self.unfamiliar_restarts,
        }
    }

    /// A count of `scope` whose last failure was at or before this has expired (`i64::MIN`:
    /// none ever does).
    pub fn expired_before(&self, scope: Scope, now: i64) -> i64 {
        match self.window_s(scope) {
            Some(window) => now.saturating_sub(window as i64),
            None => i64::MIN,
        }
    }

    /// The failures of `scope` that still count at `now`.
    pub fn live(&self, counters: &UserCounters, scope: Scope, now: i64) -> i64 {
        let counter = counters.scope(scope);
        if counter.last_failure_at <= self.expired_before(scope, now) {
            0
        } else {
            counter.failures.max(0)
        }
    }

    /// The failures of the *other* scope that count against `scope`'s room next to the
    /// directory's threshold: for the unfamiliar scope, every familiar failure the directory
    /// may still hold (a familiar lockout starts the familiar scope's own count again, not the
    /// directory's); for the familiar scope, the unfamiliar count.
    fn others_standing(&self, counters: &UserCounters, scope: Scope, now: i64) -> i64 {
        match scope {
            Scope::Familiar => self.live(counters, Scope::Unfamiliar, now),
            Scope::Unfamiliar => {
                if counters.familiar.last_failure_at <= self.expired_before(Scope::Unfamiliar, now)
                {
                    0
                } else {
                    counters
                        .familiar_standing
                        .max(self.live(counters, Scope::Familiar, now))
                }
            }
        }
    }

    /// The attempts of `scope` still outstanding at `now`.
    pub fn pending(&self, counters: &UserCounters, scope: Scope, now: i64) -> i64 {
        let counter = counters.scope(scope);
        if counter.pending_until > now {
            counter.pending.max(0)
        } else {
            0
        }
    }

    /// When the count of `scope` expires (`None`: only a success ends it).
    fn count_expires(&self, counter: &ScopeCounter, scope: Scope) -> Option<i64> {
        self.window_s(scope)
            .map(|window| counter.last_failure_at.saturating_add(window as i64))
    }

    /// Why one more attempt in `scope` is refused at `now`, given the counters before it
    /// (failures counted; attempts still outstanding may yet succeed, so they do not refuse).
    pub fn refusal(&self, counters: &UserCounters, scope: Scope, now: i64) -> Option<Refusal> {
        let counter = counters.scope(scope);
        if counter.locked_until > now {
            return Some(Refusal {
                until: Some(counter.locked_until),
            });
        }
        let own = self.live(counters, scope, now);
        if own >= i64::from(self.limit(scope)) {
            return Some(Refusal {
                until: self.count_expires(counter, scope),
            });
        }
        let other = self.others_standing(counters, scope, now);
        match self.together {
            Some(together) if own + other >= i64::from(together) => {
                let other_counter = counters.scope(scope.other());
                // Open again when either count expires (the familiar one also restarts after
                // its own lockout; that shows as its expiry here at the latest).
                let until = match (
                    self.count_expires(counter, scope),
                    self.count_expires(other_counter, scope.other()),
                ) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                Some(Refusal { until })
            }
            _ => None,
        }
    }

    /// Whether an attempt recorded as outstanding, making the counters `after`, may go out:
    /// even if every outstanding attempt fails, the limits hold. When not (and no
    /// [`Limits::refusal`] applies), it must wait for others to be answered.
    pub fn admits(&self, after: &UserCounters, scope: Scope, now: i64) -> bool {
        self.admits_with(after, scope, now, 0)
    }

    /// Like [`Limits::admits`], with room for `extra` more failures of this attempt (a second
    /// agent trying the password after the first was lost with it).
    pub fn admits_with(&self, after: &UserCounters, scope: Scope, now: i64, extra: i64) -> bool {
        let own = self.live(after, scope, now) + self.pending(after, scope, now) + extra;
        let other =
            self.others_standing(after, scope, now) + self.pending(after, scope.other(), now);
        after.scope(scope).locked_until <= now
            && own <= i64::from(self.limit(scope))
            && self
                .together
                .is_none_or(|together| own + other <= i64::from(together))
    }

    /// Whether failures leaving the counters `after` lock `scope` out.
    pub fn locks(&self, after: &UserCounters, scope: Scope, now: i64) -> bool {
        let own = self.live(after, scope, now);
        let other = self.others_standing(after, scope, now);
        own >= i64::from(self.limit(scope))
            || self
                .together
                .is_some_and(|together| own + other >= i64::from(together))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(threshold: u32) -> LockoutConfig {
        LockoutConfig {
            threshold,
            ..LockoutConfig::default()
        }
    }

    fn policy(threshold: u32, remembered: Remembered) -> Option<DirectoryPolicy> {
        Some(DirectoryPolicy {
            threshold,
            remembered,
        })
    }

    fn counters(familiar: (i64, i64), unfamiliar: (i64, i64)) -> UserCounters {
        UserCounters {
            familiar: ScopeCounter {
                failures: familiar.0,
                last_failure_at: familiar.1,
                ..ScopeCounter::default()
            },
            unfamiliar: ScopeCounter {
                failures: unfamiliar.0,
                last_failure_at: unfamiliar.1,
                ..ScopeCounter::default()
            },
            familiar_standing: familiar.0,
        }
    }

    #[test]
    fn limits_stay_below_the_directory_with_half_for_unfamiliar_networks() {
        use Remembered::*;
        // (configured, directory) → (familiar, unfamiliar, together)
        type Expected = (u32, u32, Option<u32>);
        let table: &[(u32, Option<DirectoryPolicy>, Expected)] = &[
            (10, None, (10, 10, None)),
            (3, policy(5, UntilSuccess), (3, 2, Some(4))),
            (10, policy(5, UntilSuccess), (4, 2, Some(4))),
            (10, policy(10, For(1800)), (9, 4, Some(9))),
            (10, policy(30, For(1800)), (10, 10, Some(29))),
            (10, policy(21, For(1800)), (10, 10, Some(20))),
            (10, policy(2, UntilSuccess), (1, 0, Some(1))),
            (10, policy(1, UntilSuccess), (1, 0, Some(1))),
        ];
        for &(configured, directory, expected) in table {
            let limits = Limits::of(&config(configured), directory);
            assert_eq!(
                (limits.familiar, limits.unfamiliar, limits.together),
                expected,
                "{configured} {directory:?}"
            );
        }
    }

    #[test]
    fn name_forms_of_one_account_share_the_room_below_the_directory() {
        // Threshold 10: 9 failures bearable; two forms (UPN, short name) get 4 each, 2 of them
        // from elsewhere.
        let limits = Limits::of(&config(10), policy(10, Remembered::UntilSuccess));
        let shared = limits.shared_by(2);
        assert_eq!(
            (shared.familiar, shared.unfamiliar, shared.together),
            (4, 2, Some(4))
        );
        assert!(2 * shared.together.unwrap() < 10);
        assert_eq!(limits.shared_by(1), limits);
        // Threshold 5 (CIS): 4 bearable, 2 each, 1 from elsewhere: still below it together.
        let cis = Limits::of(&config(10), policy(5, Remembered::UntilSuccess)).shared_by(2);
        assert_eq!(
            (cis.familiar, cis.unfamiliar, cis.together),
            (2, 1, Some(2))
        );
        // Threshold 3: one attempt each where the user works, none from elsewhere.
        let tight = Limits::of(&config(10), policy(3, Remembered::UntilSuccess)).shared_by(2);
        assert_eq!(
            (tight.familiar, tight.unfamiliar, tight.together),
            (1, 0, Some(1))
        );
        // No directory policy known: nothing to share.
        let cloud = Limits::of(&config(10), None);
        assert_eq!(cloud.shared_by(3), cloud);
    }

    #[test]
    fn the_unfamiliar_count_lasts_as_long_as_the_directory_remembers() {
        let window = |r| Limits::of(&config(5), policy(11, r)).unfamiliar_window_s;
        assert_eq!(window(Remembered::UntilSuccess), None);
        assert_eq!(window(Remembered::For(1800)), Some(1800));
        // Never shorter than the cloud's own window.
        assert_eq!(window(Remembered::For(60)), Some(600));
        let cloud_only = Limits::of(&config(5), None);
        assert_eq!(cloud_only.unfamiliar_window_s, Some(600));
        assert!(cloud_only.unfamiliar_restarts);
        assert!(!Limits::of(&config(5), policy(11, Remembered::UntilSuccess)).unfamiliar_restarts);
    }

    #[test]
    fn refusals_by_scope_limit_together_and_lock() {
        let now = 10_000;
        // Directory threshold 5: unfamiliar 2, familiar 4, together 4; remembered until success.
        let limits = Limits::of(&config(10), policy(5, Remembered::UntilSuccess));
        let cases: &[(UserCounters, Scope, Option<Option<i64>>)] = &[
            (counters((0, 0), (0, 0)), Scope::Unfamiliar, None),
            (counters((0, 0), (1, 1)), Scope::Unfamiliar, None),
            // The attacker's two: refused until a success, however old.
            (counters((0, 0), (2, 1)), Scope::Unfamiliar, Some(None)),
            // ...while the user keeps two attempts where they work.
            (counters((0, 0), (2, 1)), Scope::Familiar, None),
            (counters((1, now - 5), (2, 1)), Scope::Familiar, None),
            // Together at 4: refused in both scopes; the familiar count expires after 600 s.
            (
                counters((2, now - 5), (2, 1)),
                Scope::Familiar,
                Some(Some(now + 595)),
            ),
            (
                counters((3, now - 5), (1, 1)),
                Scope::Unfamiliar,
                Some(Some(now + 595)),
            ),
            // An expired familiar count no longer counts.
            (counters((2, now - 600), (2, 1)), Scope::Familiar, None),
        ];
        for (counters, scope, expected) in cases {
            assert_eq!(
                limits.refusal(counters, *scope, now).map(|r| r.until),
                *expected,
                "{counters:?} {scope:?}"
            );
        }
        let mut locked = counters((0, 0), (0, 0));
        locked.familiar.locked_until = now + 1;
        assert_eq!(
            limits
                .refusal(&locked, Scope::Familiar, now)
                .map(|r| r.until),
            Some(Some(now + 1))
        );
        assert_eq!(limits.refusal(&locked, Scope::Familiar, now + 1), None);
    }

    #[test]
    fn familiar_failures_the_directory_still_holds_narrow_the_unfamiliar_room() {
        let now = 10_000;
        let limits = Limits::of(&config(10), policy(5, Remembered::UntilSuccess));
        // The user failed 4 times at home; the familiar lockout started their own count again
        // (0), but the directory holds all 4: nothing from elsewhere may go out.
        let mut counters = counters((0, now - 700), (0, 0));
        counters.familiar_standing = 4;
        assert_eq!(limits.refusal(&counters, Scope::Familiar, now), None);
        assert!(limits.refusal(&counters, Scope::Unfamiliar, now).is_some());
        // Nor when it is counted first and checked after (the path without a read).
        let mut reserved = counters;
        reserved.unfamiliar.pending = 1;
        reserved.unfamiliar.pending_until = now + 30;
        assert!(!limits.admits(&reserved, Scope::Unfamiliar, now));
        // Without a directory policy there is no room to share.
        assert_eq!(
            Limits::of(&config(10), None).refusal(&counters, Scope::Unfamiliar, now),
            None
        );
    }

    #[test]
    fn without_a_directory_policy_counts_expire_after_the_window() {
        let limits = Limits::of(&config(3), None);
        let now = 10_000;
        let full = counters((0, 0), (3, now - 10));
        assert_eq!(
            limits
                .refusal(&full, Scope::Unfamiliar, now)
                .map(|r| r.until),
            Some(Some(now + 590))
        );
        assert_eq!(limits.refusal(&full, Scope::Unfamiliar, now + 590), None);
        assert_eq!(limits.refusal(&full, Scope::Familiar, now), None);
    }

    fn outstanding(
        mut counters: UserCounters,
        familiar: i64,
        unfamiliar: i64,
        until: i64,
    ) -> UserCounters {
        counters.familiar.pending = familiar;
        counters.familiar.pending_until = until;
        counters.unfamiliar.pending = unfamiliar;
        counters.unfamiliar.pending_until = until;
        counters
    }

    #[test]
    fn admission_counts_outstanding_attempts_as_if_they_failed() {
        let now = 10_000;
        let limits = Limits::of(&config(10), policy(5, Remembered::UntilSuccess));
        // One failure and this attempt outstanding: admitted; a failure then locks.
        let second = outstanding(counters((0, 0), (1, now)), 0, 1, now + 30);
        assert!(limits.admits(&second, Scope::Unfamiliar, now));
        assert!(limits.locks(&counters((0, 0), (2, now)), Scope::Unfamiliar, now));
        // Two outstanding and no failure yet: the second may go, a third waits (they may all
        // fail), and is not refused (they may all succeed).
        let busy = outstanding(counters((0, 0), (0, 0)), 0, 3, now + 30);
        assert!(!limits.admits(&busy, Scope::Unfamiliar, now));
        assert_eq!(limits.refusal(&busy, Scope::Unfamiliar, now), None);
        assert!(limits.admits(
            &outstanding(counters((0, 0), (0, 0)), 0, 2, now + 30),
            Scope::Unfamiliar,
            now
        ));
        // Outstanding attempts whose gateway is gone are forgotten after their deadline.
        assert!(limits.admits(&busy, Scope::Unfamiliar, now + 30));
        // Together: familiar ones that could bring the two past 4 wait too.
        let together = outstanding(counters((1, now), (2, now)), 2, 0, now + 30);
        assert!(!limits.admits(&together, Scope::Familiar, now));
        assert!(limits.admits(
            &outstanding(counters((1, now), (2, now)), 1, 0, now + 30),
            Scope::Familiar,
            now
        ));
        let cloud_only = Limits::of(&config(3), None);
        assert!(cloud_only.admits(
            &outstanding(counters((2, now), (3, now)), 1, 0, now + 30),
            Scope::Familiar,
            now
        ));
        assert!(!cloud_only.admits(
            &outstanding(counters((3, now), (0, 0)), 1, 0, now + 30),
            Scope::Familiar,
            now
        ));
    }
}

//! The directory's own account lockout policy, as the agent reads it, so the gateway's smart
//! lockout can stay below it: an attacker must never be able to lock a user out of the
//! directory itself.
//!
//! Read from entries the service account can see:
//!
//! * OpenLDAP ppolicy: every `pwdPolicy` entry with `pwdLockout: TRUE` and a `pwdMaxFailure`
//!   above 0 (`pwdFailureCountInterval` is its observation window);
//! * Active Directory: the domain object's `lockoutThreshold` / `lockOutObservationWindow`, and
//!   fine-grained password settings (`msDS-PasswordSettings`: `msDS-LockoutThreshold`,
//!   `msDS-LockoutObservationWindow`) where the account may read them.
//!
//! Several policies may apply to different users; the lowest threshold and the longest memory
//! are reported, so the cloud stays below every one of them.

use std::collections::HashMap;

/// A directory lockout policy: `threshold` failed binds lock the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutPolicy {
    /// Failed binds that lock the account.
    pub threshold: u32,
    /// How long failures are remembered, in seconds (`None`: until a success, or unknown).
    pub observation_window_s: Option<u64>,
}

/// The object classes and attributes [`from_entries`] understands, for the search.
pub const POLICY_FILTER: &str =
    "(|(objectClass=pwdPolicy)(objectClass=domainDNS)(objectClass=msDS-PasswordSettings))";

/// Attributes to ask for.
pub const POLICY_ATTRIBUTES: [&str; 7] = [
    "pwdMaxFailure",
    "pwdLockout",
    "pwdFailureCountInterval",
    "lockoutThreshold",
    "lockOutObservationWindow",
    "msDS-LockoutThreshold",
    "msDS-LockoutObservationWindow",
];

fn value<'a>(attrs: &'a HashMap<String, Vec<String>>, name: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .and_then(|(_, values)| values.first())
        .map(String::as_str)
}

/// AD durations are negative counts of 100-nanosecond intervals.
fn ad_duration_s(text: &str) -> Option<u64> {
    let ticks: i64 = text.trim().parse().ok()?;
    Some(ticks.unsigned_abs() / 10_000_000)
}

/// The policy one entry states, if it locks accounts at all.
fn policy_of(attrs: &HashMap<String, Vec<String>>) -> Option<LockoutPolicy> {
    if let Some(max) = value(attrs, "pwdMaxFailure") {
        // ppolicy locks only with pwdLockout TRUE (its default is FALSE).
        let locks = value(attrs, "pwdLockout").is_some_and(|v| v.eq_ignore_ascii_case("TRUE"));
        let threshold: u32 = max.trim().parse().ok()?;
        if !locks || threshold == 0 {
            return None;
        }
        let window = value(attrs, "pwdFailureCountInterval")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&s| s > 0);
        return Some(LockoutPolicy {
            threshold,
            observation_window_s: window,
        });
    }
    for (threshold, window) in [
        ("msDS-LockoutThreshold", "msDS-LockoutObservationWindow"),
        ("lockoutThreshold", "lockOutObservationWindow"),
    ] {
        if let Some(max) = value(attrs, threshold) {
            // 0 means "never lock" in AD.
            let threshold: u32 = max.trim().parse().ok().filter(|&t| t > 0)?;
            return Some(LockoutPolicy {
                threshold,
                observation_window_s: value(attrs, window).and_then(ad_duration_s),
            });
        }
    }
    None
}

/// The strictest policy among `entries` (attribute maps of policy entries): the lowest
/// threshold, and the longest observation window of any of them (none: until a success);
/// `None` when none of them locks accounts.
pub fn from_entries<'a>(
    entries: impl IntoIterator<Item = &'a HashMap<String, Vec<String>>>,
) -> Option<LockoutPolicy> {
    entries
        .into_iter()
        .filter_map(policy_of)
        .reduce(|a, b| LockoutPolicy {
            threshold: a.threshold.min(b.threshold),
            observation_window_s: a
                .observation_window_s
                .zip(b.observation_window_s)
                .map(|(a, b)| a.max(b)),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pairs: &[(&str, &str)]) -> HashMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), vec![(*v).to_owned()]))
            .collect()
    }

    #[test]
    fn ppolicy_entries_lock_only_with_pwd_lockout() {
        let locking = entry(&[
            ("pwdMaxFailure", "5"),
            ("pwdLockout", "TRUE"),
            ("pwdFailureCountInterval", "600"),
        ]);
        let not_locking = entry(&[("pwdMaxFailure", "3"), ("pwdLockout", "FALSE")]);
        let unlimited = entry(&[("pwdMaxFailure", "0"), ("pwdLockout", "TRUE")]);
        let default_lockout = entry(&[("pwdMaxFailure", "2")]);
        assert_eq!(
            from_entries([&locking, &not_locking, &unlimited, &default_lockout]),
            Some(LockoutPolicy {
                threshold: 5,
                observation_window_s: Some(600)
            })
        );
        // A policy that remembers failures until a success makes the whole set do so.
        let forever = entry(&[("pwdMaxFailure", "8"), ("pwdLockout", "TRUE")]);
        assert_eq!(
            from_entries([&locking, &forever]),
            Some(LockoutPolicy {
                threshold: 5,
                observation_window_s: None
            })
        );
        assert_eq!(from_entries([&not_locking, &unlimited]), None);
    }

    #[test]
    fn active_directory_domain_and_fine_grained_policies() {
        let domain = entry(&[
            ("lockoutThreshold", "10"),
            ("lockOutObservationWindow", "-18000000000"),
        ]);
        let pso = entry(&[
            ("msDS-LockoutThreshold", "4"),
            ("msDS-LockoutObservationWindow", "-6000000000"),
        ]);
        let never = entry(&[("lockoutthreshold", "0")]);
        assert_eq!(
            from_entries([&domain]),
            Some(LockoutPolicy {
                threshold: 10,
                observation_window_s: Some(1800)
            })
        );
        assert_eq!(
            from_entries([&domain, &pso, &never]),
            Some(LockoutPolicy {
                threshold: 4,
                observation_window_s: Some(1800)
            })
        );
        assert_eq!(from_entries([&never]), None);
    }

    #[test]
    fn garbage_values_are_ignored() {
        let bad = entry(&[("pwdMaxFailure", "many"), ("pwdLockout", "TRUE")]);
        let bad_ad = entry(&[("lockoutThreshold", "-1")]);
        assert_eq!(from_entries([&bad, &bad_ad]), None);
    }
}

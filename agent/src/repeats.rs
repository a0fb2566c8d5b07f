//! The same wrong password, repeated, counts once: the agent remembers the wrong passwords
//! recently tried for each user — as keyed hashes (HMAC-SHA256 under a random key made when
//! the process starts), in memory only — and answers a repeat without binding again.
//!
//! No hash of any password leaves the agent: the gateway learns only a flag, inside the sealed
//! answer, that this wrong password was a repeat, and does not count it towards smart
//! lockout. The directory sees the first try only, so a user whose phone retries an old
//! password all night is not locked out of Active Directory. Entra cannot do this with
//! pass-through authentication; the agent can, because it runs on-premises.
//!
//! Bounded: at most [`PER_USER`] wrong passwords per user, kept `window`, and at most
//! `max_users` users (the oldest forgotten first).

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

use aws_lc_rs::{hmac, rand::SystemRandom};
use passage_credentials::Password;
use zeroize::Zeroize;

/// Wrong passwords remembered per user.
pub const PER_USER: usize = 8;

/// A keyed hash of one (username, password) pair.
type Tag = [u8; 32];

/// Recently tried wrong passwords, as keyed hashes.
pub struct WrongPasswords {
    key: hmac::Key,
    window: Duration,
    max_users: usize,
    users: Mutex<HashMap<String, VecDeque<(Tag, Instant)>>>,
}

impl std::fmt::Debug for WrongPasswords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrongPasswords")
            .field("key", &"[redacted]")
            .field("window", &self.window)
            .finish()
    }
}

impl WrongPasswords {
    /// A memory keeping wrong passwords for `window`, for at most `max_users` users, under a
    /// fresh random key.
    pub fn new(window: Duration, max_users: usize) -> Self {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .expect("the system random source");
        Self {
            key,
            window,
            max_users: max_users.max(1),
            users: Mutex::new(HashMap::new()),
        }
    }

    fn tag(&self, username: &str, password: &Password) -> (String, Tag) {
        let user = username.to_lowercase();
        let mut message = Vec::with_capacity(user.len() + 1 + password.expose().len());
        message.extend_from_slice(user.as_bytes());
        message.push(0);
        message.extend_from_slice(password.expose().as_bytes());
        let mut tag = [0u8; 32];
        tag.copy_from_slice(hmac::sign(&self.key, &message).as_ref());
        message.zeroize();
        (user, tag)
    }

    /// Whether `password` is one of `username`'s recent wrong passwords.
    pub fn is_known_wrong(&self, username: &str, password: &Password) -> bool {
        let (user, tag) = self.tag(username, password);
        let now = Instant::now();
        let users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        users.get(&user).is_some_and(|tags| {
            tags.iter()
                .any(|(t, at)| *t == tag && now.duration_since(*at) < self.window)
        })
    }

    /// Remembers `password` as wrong for `username`.
    pub fn remember_wrong(&self, username: &str, password: &Password) {
        let (user, tag) = self.tag(username, password);
        let now = Instant::now();
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if !users.contains_key(&user) && users.len() >= self.max_users {
            // Forget what has expired; if that is not enough, the least recently updated.
            users.retain(|_, tags| {
                tags.back()
                    .is_some_and(|(_, at)| now.duration_since(*at) < self.window)
            });
            while users.len() >= self.max_users {
                let oldest = users
                    .iter()
                    .min_by_key(|(_, tags)| tags.back().map(|(_, at)| *at))
                    .map(|(name, _)| name.clone());
                match oldest {
                    Some(name) => users.remove(&name),
                    None => break,
                };
            }
        }
        let tags = users.entry(user).or_default();
        tags.retain(|(t, at)| *t != tag && now.duration_since(*at) < self.window);
        if tags.len() >= PER_USER {
            tags.pop_front();
        }
        tags.push_back((tag, now));
    }

    /// Users currently remembered.
    pub fn len(&self) -> usize {
        self.users.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no user is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn password(text: &str) -> Password {
        Password::new(text.into()).unwrap()
    }

    #[test]
    fn a_repeated_wrong_password_is_recognised_whatever_the_username_casing() {
        let memory = WrongPasswords::new(Duration::from_secs(60), 100);
        assert!(!memory.is_known_wrong("alice@x", &password("guess-1")));
        memory.remember_wrong("alice@x", &password("guess-1"));
        assert!(memory.is_known_wrong("alice@x", &password("guess-1")));
        assert!(memory.is_known_wrong("ALICE@x", &password("guess-1")));
        assert!(!memory.is_known_wrong("alice@x", &password("guess-2")));
        assert!(!memory.is_known_wrong("bob@x", &password("guess-1")));
    }

    #[test]
    fn the_memory_is_bounded_per_user_and_in_users_and_expires() {
        let memory = WrongPasswords::new(Duration::from_secs(60), 3);
        for n in 0..=PER_USER {
            memory.remember_wrong("alice@x", &password(&format!("guess-{n}")));
        }
        assert!(
            !memory.is_known_wrong("alice@x", &password("guess-0")),
            "the oldest goes"
        );
        assert!(memory.is_known_wrong("alice@x", &password(&format!("guess-{PER_USER}"))));
        for user in ["a@x", "b@x", "c@x", "d@x"] {
            memory.remember_wrong(user, &password("p"));
        }
        assert!(memory.len() <= 3);
        assert!(memory.is_known_wrong("d@x", &password("p")));

        let short = WrongPasswords::new(Duration::from_millis(1), 10);
        short.remember_wrong("alice@x", &password("p"));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!short.is_known_wrong("alice@x", &password("p")));
    }

    #[test]
    fn the_debug_output_holds_no_key() {
        let memory = WrongPasswords::new(Duration::from_secs(60), 10);
        assert!(format!("{memory:?}").contains("[redacted]"));
    }
}

//! Remembers the nonces of accepted envelopes until they expire.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, SystemTime},
};

use crate::{EnvelopeError, NONCE_LEN};

/// Refuses a nonce seen before within its validity window.
///
/// Entries live until their envelope's `not_after`; envelopes valid for longer than the window
/// are refused outright, which bounds memory to (sign-ins per second × window).
#[derive(Debug)]
pub struct ReplayGuard {
    window: Duration,
    max_entries: usize,
    seen: Mutex<HashMap<[u8; NONCE_LEN], SystemTime>>,
}

impl ReplayGuard {
    /// A guard accepting envelopes valid for at most `window`, remembering at most `max_entries`.
    pub fn new(window: Duration, max_entries: usize) -> Self {
        Self {
            window,
            max_entries,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The longest validity accepted.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Records `nonce`, or refuses it if seen. When full even after dropping expired entries it
    /// fails closed: refusing a sign-in is better than accepting a possible replay.
    pub fn record(
        &self,
        nonce: [u8; NONCE_LEN],
        not_after: SystemTime,
        now: SystemTime,
    ) -> Result<(), EnvelopeError> {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if seen.contains_key(&nonce) {
            return Err(EnvelopeError::Replayed);
        }
        if seen.len() >= self.max_entries {
            seen.retain(|_, expiry| *expiry >= now);
            if seen.len() >= self.max_entries {
                return Err(EnvelopeError::Replayed);
            }
        }
        seen.insert(nonce, not_after);
        Ok(())
    }
}

impl Default for ReplayGuard {
    fn default() -> Self {
        Self::new(Duration::from_secs(300), 1_000_000)
    }
}

//! The MFA challenge handle: what a client holds between its primary sign-in and its second
//! factor. 32 random bytes, so it cannot be guessed; the store keeps only its SHA-256, so a
//! copy of the store cannot complete anyone's challenge.

use std::fmt;

use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::{MfaError, fill_random};

/// How many wrong codes a challenge takes before it ends: enough for typos and a code typed
/// at a step boundary, too few to guess a 6-digit code (5 in a million).
pub const MAX_WRONG_CODES: u32 = 5;

/// Random bytes in a challenge handle.
const TOKEN_BYTES: usize = 32;

/// Characters in a challenge handle: 32 bytes in URL-safe base64 without padding.
pub const CHALLENGE_TOKEN_CHARS: usize = 43;

/// An opaque MFA challenge handle: 32 random bytes as URL-safe base64 without padding.
/// `Debug` prints `ChallengeToken([redacted])`; wiped from memory on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ChallengeToken(String);

impl ChallengeToken {
    /// A new random handle.
    ///
    /// # Panics
    ///
    /// When the system random source fails.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; TOKEN_BYTES]);
        fill_random(bytes.as_mut_slice());
        Self(URL_SAFE_NO_PAD.encode(bytes.as_slice()))
    }

    /// The handle as the client holds it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Reads a handle a client sent back: exactly 43 characters of canonical URL-safe base64
    /// (no padding, unused trailing bits zero), so each handle has one spelling and one
    /// digest.
    pub fn parse(text: &str) -> Result<Self, MfaError> {
        if text.len() != CHALLENGE_TOKEN_CHARS {
            return Err(MfaError::MalformedChallenge);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map(Zeroizing::new)
            .map_err(|_| MfaError::MalformedChallenge)?;
        if bytes.len() != TOKEN_BYTES {
            return Err(MfaError::MalformedChallenge);
        }
        Ok(Self(text.to_owned()))
    }

    /// The SHA-256 of the handle's text, in lower-case hex (64 digits): what the store keeps
    /// and looks the challenge up by.
    pub fn digest_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digest = digest(&SHA256, self.0.as_bytes());
        let mut hex = String::with_capacity(2 * digest.as_ref().len());
        for &byte in digest.as_ref() {
            hex.push(char::from(HEX[usize::from(byte >> 4)]));
            hex.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        hex
    }
}

impl fmt::Debug for ChallengeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChallengeToken([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_token_round_trips_and_digests_to_64_hex_digits() {
        let token = ChallengeToken::generate();
        assert_eq!(token.as_str().len(), CHALLENGE_TOKEN_CHARS);
        let parsed = ChallengeToken::parse(token.as_str()).unwrap();
        assert_eq!(parsed.as_str(), token.as_str());
        let digest = token.digest_hex();
        assert_eq!(digest.len(), 64);
        assert!(
            digest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{digest}"
        );
        assert_eq!(parsed.digest_hex(), digest);
        assert_ne!(ChallengeToken::generate().as_str(), token.as_str());
    }

    #[test]
    fn the_digest_is_the_sha256_of_the_text() {
        // 43 'A's: 32 zero bytes. sha256sum of the 43 characters, computed independently.
        let token = ChallengeToken::parse(&"A".repeat(43)).unwrap();
        assert_eq!(
            token.digest_hex(),
            "0f007385b6f9d4b7eeb2748605afe1a984a0a3bfa3f014d09e2a784ce9e5cd1a"
        );
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = "A".repeat(43);
        for bad in [
            String::new(),
            "A".repeat(42),
            "A".repeat(44),
            format!("{good}="),
            // Standard base64's alphabet, padding, and a stray character.
            format!("{}+", "A".repeat(42)),
            format!("{}/", "A".repeat(42)),
            format!("{}=", "A".repeat(42)),
            format!("{}.", "A".repeat(42)),
            // Non-zero unused trailing bits: a second spelling of a valid token.
            format!("{}B", "A".repeat(42)),
            // 43 bytes, but not 43 ASCII characters.
            format!("{}\u{e9}", "A".repeat(41)),
        ] {
            assert_eq!(
                ChallengeToken::parse(&bad).unwrap_err(),
                MfaError::MalformedChallenge,
                "{bad:?}"
            );
        }
        // Unused trailing bits zero: accepted.
        assert!(ChallengeToken::parse(&format!("{}E", "A".repeat(42))).is_ok());
    }

    #[test]
    fn debug_output_holds_no_token() {
        let token = ChallengeToken::generate();
        let printed = format!("{token:?}");
        assert_eq!(printed, "ChallengeToken([redacted])");
        assert!(!printed.contains(&token.as_str()[..8]));
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_accepts_only_43_url_safe_characters(
            text in prop_oneof![any::<String>(), "[A-Za-z0-9_+/=-]{41,45}"],
        ) {
            if let Ok(token) = ChallengeToken::parse(&text) {
                prop_assert_eq!(token.as_str(), text.as_str());
                prop_assert_eq!(text.len(), CHALLENGE_TOKEN_CHARS);
                prop_assert!(text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
                prop_assert_eq!(token.digest_hex().len(), 64);
            }
        }
    }
}

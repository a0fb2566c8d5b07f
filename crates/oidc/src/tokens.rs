//! The opaque tokens of the provider: authorization codes, refresh tokens (and their family
//! ids), CSRF tokens and client secrets are 32 random bytes (256 bits, beyond any guessing) in
//! URL-safe base64 without padding, so they travel in URLs, forms and cookies unescaped.
//!
//! Codes and refresh tokens are stored only as their SHA-256 [`digest`]: a copy of the store
//! redeems nothing. A plain hash is enough, unlike for passwords, because the tokens carry
//! their full 256 bits of entropy; no salt or slow hash would add to that.
//!
//! The tokens are plain `String`s handed to the gateway at once; no type here holds one, so
//! none can be printed by a `Debug` by accident.

use aws_lc_rs::digest::{SHA256, digest as sha256};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Random bytes in an opaque token.
pub const TOKEN_BYTES: usize = 32;

/// Characters in an opaque token: [`TOKEN_BYTES`] in URL-safe base64 without padding.
pub const TOKEN_CHARS: usize = 43;

/// A new opaque token: 32 random bytes, URL-safe base64 without padding (43 characters).
///
/// # Panics
///
/// When the system random source fails: nothing in the process can recover from that, and a
/// token made without it must never exist.
pub fn opaque_token() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<TOKEN_BYTES>())
}

/// The SHA-256 of `token`'s text in lower-case hex (64 digits): what the store keeps of a
/// code or a refresh token, and looks it up by.
pub fn digest(token: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = sha256(&SHA256, token.as_bytes());
    let mut hex = String::with_capacity(2 * digest.as_ref().len());
    for &byte in digest.as_ref() {
        hex.push(char::from(HEX[usize::from(byte >> 4)]));
        hex.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    hex
}

/// `N` bytes from the system's random source.
///
/// # Panics
///
/// When the system random source fails.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("system random source");
    bytes
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn tokens_are_43_url_safe_characters_and_distinct() {
        let tokens: Vec<String> = (0..100).map(|_| opaque_token()).collect();
        for token in &tokens {
            assert_eq!(token.len(), TOKEN_CHARS, "{token}");
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{token}"
            );
            assert_eq!(URL_SAFE_NO_PAD.decode(token).unwrap().len(), TOKEN_BYTES);
        }
        assert_eq!(tokens.iter().collect::<HashSet<_>>().len(), tokens.len());
    }

    #[test]
    fn the_digest_is_sha256_in_lower_case_hex() {
        // FIPS 180-2's test vector.
        assert_eq!(
            digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            digest(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let token = opaque_token();
        assert_eq!(digest(&token), digest(&token));
        assert_ne!(digest(&token), digest(&opaque_token()));
    }
}

//! Proof Key for Code Exchange (RFC 7636), `S256` only.
//!
//! The client sends `code_challenge = BASE64URL-NOPAD(SHA256(code_verifier))` with the
//! authorization request and the `code_verifier` with the token request, so that a code
//! intercepted on its way back (a custom URI scheme claimed by another app, a leaking log)
//! cannot be redeemed. The `plain` method, which sends the verifier itself up front and so
//! protects nothing against an attacker who reads the authorization request, is refused
//! (RFC 9700 §2.1.1).

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The only `code_challenge_method` Passage accepts.
pub const METHOD_S256: &str = "S256";

/// Fewest characters in a code verifier (RFC 7636 §4.1).
pub const MIN_VERIFIER_CHARS: usize = 43;

/// Most characters in a code verifier (RFC 7636 §4.1).
pub const MAX_VERIFIER_CHARS: usize = 128;

/// Characters in an `S256` code challenge: a SHA-256 (32 bytes) in URL-safe base64 without
/// padding.
pub const CHALLENGE_CHARS: usize = 43;

/// Whether `verifier` is the one `challenge` was made from with `S256`:
/// `BASE64URL-NOPAD(SHA256(ASCII(verifier))) == challenge`, compared in constant time. A
/// verifier of the wrong syntax never matches.
pub fn verify_s256(verifier: &str, challenge: &str) -> bool {
    if !valid_verifier(verifier) {
        return false;
    }
    let computed = URL_SAFE_NO_PAD.encode(digest(&SHA256, verifier.as_bytes()));
    verify_slices_are_equal(computed.as_bytes(), challenge.as_bytes()).is_ok()
}

/// Whether `verifier` has a code verifier's syntax (RFC 7636 §4.1): 43 to 128 characters of
/// `[A-Za-z0-9-._~]`.
pub fn valid_verifier(verifier: &str) -> bool {
    (MIN_VERIFIER_CHARS..=MAX_VERIFIER_CHARS).contains(&verifier.len())
        && verifier.bytes().all(is_unreserved)
}

/// Whether `challenge` can be an `S256` code challenge: exactly 43 characters of URL-safe
/// base64 (`[A-Za-z0-9-_]`).
pub fn valid_challenge(challenge: &str) -> bool {
    challenge.len() == CHALLENGE_CHARS
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `unreserved` of RFC 3986, the verifier's alphabet.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 7636 Appendix B.
    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    #[test]
    fn the_rfc_7636_example_verifies() {
        assert!(valid_verifier(VERIFIER));
        assert!(valid_challenge(CHALLENGE));
        assert!(verify_s256(VERIFIER, CHALLENGE));
    }

    #[test]
    fn another_verifier_or_challenge_does_not() {
        let other = format!("{}A", &VERIFIER[..VERIFIER.len() - 1]);
        assert!(!verify_s256(&other, CHALLENGE));
        assert!(!verify_s256(
            VERIFIER,
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cN"
        ));
        // `plain`: the verifier given as its own challenge.
        assert!(!verify_s256(VERIFIER, VERIFIER));
        assert!(!verify_s256(VERIFIER, ""));
        assert!(!verify_s256(VERIFIER, &format!("{CHALLENGE}=")));
    }

    #[test]
    fn a_verifier_of_the_wrong_syntax_never_verifies() {
        // Shorter than 43 characters, though its challenge is computed honestly.
        let short = "a".repeat(42);
        let challenge = URL_SAFE_NO_PAD.encode(digest(&SHA256, short.as_bytes()));
        assert!(!verify_s256(&short, &challenge));
    }

    #[test]
    fn verifier_syntax() {
        assert!(valid_verifier(&"a".repeat(43)));
        assert!(valid_verifier(&"Az09-._~".repeat(16)));
        assert!(!valid_verifier(&"a".repeat(42)));
        assert!(!valid_verifier(&"a".repeat(129)));
        assert!(!valid_verifier(""));
        for bad in ['+', '/', '=', ' ', '%', '\u{e9}'] {
            let verifier = format!("{}{bad}", "a".repeat(43));
            assert!(!valid_verifier(&verifier), "{verifier:?}");
        }
    }

    #[test]
    fn challenge_syntax() {
        assert!(valid_challenge(CHALLENGE));
        assert!(!valid_challenge(&CHALLENGE[..42]));
        assert!(!valid_challenge(&format!("{CHALLENGE}A")));
        assert!(!valid_challenge(&format!("{}=", &CHALLENGE[..42])));
        assert!(!valid_challenge(&format!("{}+", &CHALLENGE[..42])));
        assert!(!valid_challenge(&format!("{}.", &CHALLENGE[..42])));
        assert!(!valid_challenge(""));
    }

    proptest! {
        /// Any well-formed verifier verifies against its own challenge and no other.
        #[test]
        fn every_valid_verifier_round_trips(verifier in "[A-Za-z0-9._~-]{43,128}") {
            let challenge = URL_SAFE_NO_PAD.encode(digest(&SHA256, verifier.as_bytes()));
            prop_assert!(valid_challenge(&challenge));
            prop_assert!(verify_s256(&verifier, &challenge));
            prop_assert!(!verify_s256(&verifier, CHALLENGE) || verifier == VERIFIER);
        }
    }
}

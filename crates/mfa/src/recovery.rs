//! Single-use recovery codes: ten per user, shown once at enrolment and stored only as
//! Argon2id hashes (PHC strings), so a copy of the store does not hand out second factors.
//!
//! A code is 12 characters of Crockford's base32 alphabet in lower case, shown as
//! `xxxx-xxxx-xxxx`: 60 bits of entropy, which no online guessing (bounded by
//! [`MAX_WRONG_CODES`](crate::MAX_WRONG_CODES) per challenge) comes near. The alphabet has no
//! `i`, `l`, `o` or `u`, so nothing on paper reads as something else; as in Crockford's
//! decoding, a typed `o` counts as `0` and `i` or `l` as `1`.

use std::fmt;

use argon2::password_hash::SaltString;
use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::{MfaError, fill_random};

/// How many recovery codes a user gets.
pub const RECOVERY_CODE_COUNT: usize = 10;

/// Crockford's base32 alphabet, lower case. 32 characters, so each random byte masked to its
/// low 5 bits picks one with equal chance (256 is a multiple of 32).
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// Characters in a code, without its dashes.
const CODE_CHARS: usize = 12;

/// Characters between dashes in the shown form.
const GROUP_CHARS: usize = 4;

// Argon2id memory cost in KiB, time cost and parallelism: OWASP's recommended minimum
// (19 MiB, 2 passes, 1 lane). The codes carry 60 bits of entropy, so the hash only has to
// make an offline search of a stolen store costly, not rescue a weak secret; a check stays
// at tens of milliseconds.
const ARGON2_MEMORY_KIB: u32 = 19_456;
const ARGON2_ITERATIONS: u32 = 2;
const ARGON2_LANES: u32 = 1;

/// Salt length in bytes (the PHC string format's recommendation).
const SALT_BYTES: usize = 16;

/// One recovery code. `Display` shows it (`xxxx-xxxx-xxxx`), for the one time it is shown;
/// `Debug` prints `RecoveryCode([redacted])`; wiped from memory on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct RecoveryCode(String);

impl RecoveryCode {
    /// A new random code.
    fn generate() -> Self {
        let mut random = Zeroizing::new([0u8; CODE_CHARS]);
        fill_random(random.as_mut_slice());
        let mut code = String::with_capacity(CODE_CHARS + CODE_CHARS / GROUP_CHARS);
        for (i, byte) in random.iter().enumerate() {
            if i > 0 && i.is_multiple_of(GROUP_CHARS) {
                code.push('-');
            }
            code.push(char::from(ALPHABET[usize::from(byte & 0x1f)]));
        }
        Self(code)
    }

    /// The code as shown: `xxxx-xxxx-xxxx`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RecoveryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RecoveryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryCode([redacted])")
    }
}

/// [`RECOVERY_CODE_COUNT`] new random codes.
///
/// # Panics
///
/// When the system random source fails.
pub fn recovery_codes() -> Vec<RecoveryCode> {
    (0..RECOVERY_CODE_COUNT)
        .map(|_| RecoveryCode::generate())
        .collect()
}

/// `code` as it is hashed: lower case, without whitespace and dashes, with Crockford's
/// readings of the letters the alphabet leaves out. Never longer than `code`, so the buffer
/// is never reallocated (which would leave an unwiped copy behind).
fn normalise(code: &str) -> Zeroizing<String> {
    let mut normalised = Zeroizing::new(String::with_capacity(code.len()));
    for c in code.chars() {
        if c.is_whitespace() || c == '-' {
            continue;
        }
        normalised.push(match c.to_ascii_lowercase() {
            'o' => '0',
            'i' | 'l' => '1',
            other => other,
        });
    }
    normalised
}

/// Whether `code` is shaped like a recovery code: 12 characters of the alphabet once
/// normalised (case, whitespace and dashes do not matter). The gateway uses it to try a
/// 6-digit input as a TOTP code and anything of this shape as a recovery code.
pub fn looks_like_recovery_code(code: &str) -> bool {
    let normalised = normalise(code);
    normalised.len() == CODE_CHARS && normalised.bytes().all(|b| ALPHABET.contains(&b))
}

/// The Argon2id hasher with our parameters.
fn hasher() -> Result<Argon2<'static>, MfaError> {
    let params = Params::new(ARGON2_MEMORY_KIB, ARGON2_ITERATIONS, ARGON2_LANES, None)
        .map_err(|err| MfaError::Hash(err.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// The Argon2id hash of `code` (normalised, see [`looks_like_recovery_code`]) as a PHC string
/// (`$argon2id$v=19$m=19456,t=2,p=1$…`), with a random 16-byte salt. This is all the store
/// keeps.
///
/// Costs tens of milliseconds of CPU and 19 MiB: run it off the async runtime.
///
/// # Panics
///
/// When the system random source fails.
pub fn hash_recovery_code(code: &str) -> Result<String, MfaError> {
    if !looks_like_recovery_code(code) {
        return Err(MfaError::MalformedRecoveryCode);
    }
    let normalised = normalise(code);
    let mut salt = [0u8; SALT_BYTES];
    fill_random(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|err| MfaError::Hash(err.to_string()))?;
    let hash = hasher()?
        .hash_password(normalised.as_bytes(), &salt)
        .map_err(|err| MfaError::Hash(err.to_string()))?;
    Ok(hash.to_string())
}

/// Whether `code`, normalised (case, whitespace and dashes do not matter), is the one
/// `phc_hash` was made from. Anything not shaped like a recovery code, and a hash that is
/// not a valid PHC string, never match.
///
/// Costs what hashing does (the parameters come from `phc_hash`): run it off the async
/// runtime.
pub fn verify_recovery_code(code: &str, phc_hash: &str) -> bool {
    if !looks_like_recovery_code(code) {
        return false;
    }
    let Ok(hash) = PasswordHash::new(phc_hash) else {
        return false;
    };
    let normalised = normalise(code);
    // `verify_password` compares the outputs in constant time.
    Argon2::default()
        .verify_password(normalised.as_bytes(), &hash)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ten_distinct_codes_of_the_shown_shape() {
        let codes = recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODE_COUNT);
        let distinct: HashSet<&str> = codes.iter().map(RecoveryCode::as_str).collect();
        assert_eq!(distinct.len(), RECOVERY_CODE_COUNT);
        for code in &codes {
            let text = code.as_str();
            assert_eq!(text.split('-').map(str::len).collect::<Vec<_>>(), [4, 4, 4]);
            assert!(
                text.bytes()
                    .filter(|&b| b != b'-')
                    .all(|b| ALPHABET.contains(&b)),
                "{text}"
            );
            assert!(looks_like_recovery_code(text), "{text}");
            assert_eq!(code.to_string(), text);
        }
    }

    #[test]
    fn the_alphabet_is_32_distinct_unambiguous_characters() {
        let distinct: HashSet<u8> = ALPHABET.iter().copied().collect();
        assert_eq!(distinct.len(), 32);
        for ambiguous in b"ilou" {
            assert!(!ALPHABET.contains(ambiguous));
        }
    }

    #[test]
    fn debug_output_holds_no_code() {
        let codes = recovery_codes();
        let printed = format!("{:?} {codes:?}", codes[0]);
        for code in &codes {
            assert!(!printed.contains(code.as_str()), "{printed}");
            assert!(
                !printed.contains(&code.as_str().replace('-', "")),
                "{printed}"
            );
        }
        assert!(printed.starts_with("RecoveryCode([redacted])"), "{printed}");
    }

    #[test]
    fn the_shape_of_a_recovery_code() {
        for yes in [
            "abcd-efgh-jkmn",
            "ABCD EFGH JKMN",
            "abcdefghjkmn",
            " abcd - efgh - jkmn ",
            "0123-4567-89xy",
            "oOiL-4567-89xy",
        ] {
            assert!(looks_like_recovery_code(yes), "{yes:?}");
        }
        for no in [
            "",
            "123456",
            "123 456",
            "abcd-efgh-jkm",
            "abcd-efgh-jkmnp",
            "abcd-efgh-jkmu",
            "abcd-efgh-jkm!",
            "abcd-efgh-jkm\u{e9}",
            "abcd_efgh_jkmn",
        ] {
            assert!(!looks_like_recovery_code(no), "{no:?}");
        }
    }

    #[test]
    fn a_hash_verifies_its_code_however_typed_and_nothing_else() {
        let codes = recovery_codes();
        let code = codes[0].as_str();
        let hash = hash_recovery_code(code).unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );

        let bare = code.replace('-', "");
        let upper = code.to_uppercase();
        let spaced = format!(" {} ", code.replace('-', " "));
        for typed in [code, bare.as_str(), upper.as_str(), spaced.as_str()] {
            assert!(verify_recovery_code(typed, &hash), "{typed:?}");
        }
        assert!(!verify_recovery_code(codes[1].as_str(), &hash));
        assert!(!verify_recovery_code(&code[..13], &hash));
        assert!(!verify_recovery_code("123456", &hash));
        assert!(!verify_recovery_code(code, "not a PHC string"));
        assert!(!verify_recovery_code(code, ""));

        // The same code hashes differently each time (random salt), and both verify.
        let again = hash_recovery_code(code).unwrap();
        assert_ne!(again, hash);
        assert!(verify_recovery_code(code, &again));
    }

    #[test]
    fn crockford_readings_verify_as_the_digits_they_stand_for() {
        let hash = hash_recovery_code("0a1b-c2d3-e4f5").unwrap();
        for typed in ["Oa1b-c2d3-e4f5", "0aIb-c2d3-e4f5", "oaLB C2D3 E4F5"] {
            assert!(verify_recovery_code(typed, &hash), "{typed:?}");
        }
    }

    #[test]
    fn only_recovery_codes_are_hashed() {
        for bad in ["", "123456", "abcd-efgh-jkm", "abcd-efgh-jkmu"] {
            assert_eq!(
                hash_recovery_code(bad).unwrap_err(),
                MfaError::MalformedRecoveryCode,
                "{bad:?}"
            );
        }
    }

    proptest! {
        /// Anything accepted as a recovery code normalises to 12 characters of the alphabet;
        /// a TOTP-shaped input never is one.
        #[test]
        fn the_shape_check_never_panics_and_means_twelve_alphabet_characters(
            code in prop_oneof![any::<String>(), "[0-9a-zA-Z -]{0,20}"],
        ) {
            if looks_like_recovery_code(&code) {
                let normalised = normalise(&code);
                prop_assert_eq!(normalised.len(), CODE_CHARS);
                prop_assert!(normalised.bytes().all(|b| ALPHABET.contains(&b)));
            }
        }

        #[test]
        fn six_digits_are_never_a_recovery_code(code in "[0-9]{6}| ?[0-9]{3} [0-9]{3} ?") {
            prop_assert!(!looks_like_recovery_code(&code));
        }
    }
}

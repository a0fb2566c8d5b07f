//! TOTP (RFC 6238): the shared secret, enrolment and verification.
//!
//! Fixed to what every authenticator app understands: HMAC-SHA-1, 6 digits, 30-second steps.
//! totp-rs computes the codes; the one-step skew either side is handled here rather than by
//! totp-rs, so that the caller learns which step matched and can refuse a step at or before
//! the last one it accepted for the user (replay protection lives in the store).

use std::fmt;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use qrcode::QrCode;
use qrcode::render::unicode::Dense1x2;
use totp_rs::{Algorithm, Builder, Totp};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::{MfaError, fill_random};

/// Length of a TOTP time step, in seconds (RFC 6238's default, which authenticator apps
/// assume).
pub const STEP_SECONDS: u64 = 30;

/// Digits in a TOTP code.
pub const CODE_DIGITS: u8 = 6;

/// Bytes in a generated secret: 160 bits, RFC 4226's recommendation (the HMAC-SHA-1 output
/// length).
pub const SECRET_BYTES: usize = 20;

/// Fewest bytes a secret may have: RFC 4226 section 4 requires at least 128 bits.
pub const MIN_SECRET_BYTES: usize = 16;

const CODE_LEN: usize = CODE_DIGITS as usize;

/// A TOTP shared secret. `Debug` prints `TotpSecret([redacted])`; wiped from memory on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct TotpSecret(Vec<u8>);

impl TotpSecret {
    /// A new secret of [`SECRET_BYTES`] random bytes.
    ///
    /// # Panics
    ///
    /// When the system random source fails.
    pub fn generate() -> Self {
        let mut bytes = vec![0u8; SECRET_BYTES];
        fill_random(&mut bytes);
        Self(bytes)
    }

    /// Takes `bytes` (as unsealed from the store) as a secret; refuses fewer than
    /// [`MIN_SECRET_BYTES`], wiping them.
    pub fn from_bytes(mut bytes: Vec<u8>) -> Result<Self, MfaError> {
        if bytes.len() < MIN_SECRET_BYTES {
            let len = bytes.len();
            bytes.zeroize();
            return Err(MfaError::SecretTooShort { bytes: len });
        }
        Ok(Self(bytes))
    }

    /// The secret bytes, for sealing into the store.
    pub fn expose_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The secret in RFC 4648 base32 without padding, as authenticator apps take it typed in.
    pub fn base32(&self) -> String {
        // totp-rs's own encoding, so that this is exactly what the otpauth URI carries; its
        // copy of the bytes is wiped when dropped (its `zeroize` feature).
        totp_rs::Secret::from(self.expose_bytes()).to_base32()
    }

    /// A totp-rs builder for this secret with our fixed parameters. Skew 0: [`verify_totp`]
    /// walks the neighbouring steps itself.
    fn builder(&self) -> Builder {
        Builder::new()
            .with_algorithm(Algorithm::SHA1)
            .with_digits(CODE_DIGITS)
            .with_skew(0)
            .with_step_duration(STEP_SECONDS)
            .with_secret(self.expose_bytes())
    }

    /// The totp-rs generator for this secret.
    fn totp(&self) -> Totp {
        // `Builder::build` checks exactly what is fixed above (6 digits, a non-zero step) and
        // what `TotpSecret` guarantees (at least 128 bits), so it could not fail here.
        self.builder().build_noncompliant()
    }
}

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret([redacted])")
    }
}

/// What an administrator shows the user at enrolment. `Debug` shows none of it (the URI and
/// the QR code carry the secret); wiped from memory on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Enrolment {
    /// The new secret, to seal into the store.
    pub secret: TotpSecret,
    /// `otpauth://totp/{issuer}:{account}?secret=…&issuer=…&algorithm=SHA1&digits=6&period=30`,
    /// for apps that take a URI or a typed secret.
    pub otpauth_uri: String,
    /// The URI as a QR code for a terminal (see [`terminal_qr`]).
    pub qr_text: String,
}

impl fmt::Debug for Enrolment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Enrolment")
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

/// A new secret for `account`, shown in authenticator apps under `issuer` (the service's
/// name), with its `otpauth://` URI and that URI as a terminal QR code.
///
/// Refuses an empty issuer or account, and (totp-rs's rule) a `:` in either.
///
/// # Panics
///
/// When the system random source fails.
pub fn enrol(issuer: &str, account: &str) -> Result<Enrolment, MfaError> {
    let secret = TotpSecret::generate();
    let mut uri = otpauth_uri(&secret, issuer, account)?;
    let qr_text = match terminal_qr(&uri) {
        Ok(qr_text) => qr_text,
        Err(err) => {
            uri.zeroize();
            return Err(err);
        }
    };
    Ok(Enrolment {
        secret,
        otpauth_uri: uri,
        qr_text,
    })
}

/// The Key URI of `secret` for `account` under `issuer`:
/// `otpauth://totp/{issuer}:{account}?secret=…&issuer=…&algorithm=SHA1&digits=6&period=30`,
/// with the label parts percent-encoded.
///
/// Refuses an empty issuer or account, and (totp-rs's rule) a `:` in either.
pub fn otpauth_uri(secret: &TotpSecret, issuer: &str, account: &str) -> Result<String, MfaError> {
    if issuer.trim().is_empty() {
        return Err(MfaError::EmptyLabel { field: "issuer" });
    }
    if account.trim().is_empty() {
        return Err(MfaError::EmptyLabel { field: "account" });
    }
    let totp = secret
        .builder()
        .with_issuer(Some(issuer))
        .with_account_name(account)
        .build()
        .map_err(|err| MfaError::Totp(err.to_string()))?;
    let uri = totp
        .to_url()
        .map_err(|err| MfaError::Totp(err.to_string()))?;
    let uri = Zeroizing::new(uri);
    // totp-rs leaves out parameters that equal the Key URI format's defaults; spelling them
    // out costs nothing and leaves no app to guess.
    Ok(format!(
        "{}&algorithm=SHA1&digits={CODE_DIGITS}&period={STEP_SECONDS}",
        uri.as_str()
    ))
}

/// `text` as a QR code drawn with Unicode half blocks (two modules per character cell), with
/// its quiet zone, for printing to a terminal.
///
/// Drawn for a dark terminal: light modules and the quiet zone are blocks in the (light)
/// foreground colour, dark modules are spaces showing the (dark) background, so a scanner sees
/// dark on light as it expects.
pub fn terminal_qr(text: &str) -> Result<String, MfaError> {
    let code = QrCode::new(text.as_bytes()).map_err(|err| MfaError::Qr(err.to_string()))?;
    let drawn = code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build();
    Ok(drawn)
}

/// The TOTP time step that Unix time `now` falls in.
pub fn time_step(now: u64) -> u64 {
    now / STEP_SECONDS
}

/// Checks `code` (6 digits; whitespace ignored) against `secret` at Unix time `now`, accepting
/// the current step and one step either side. Returns the time step it matched, so that the
/// caller can refuse any step at or before the last one accepted for the user.
///
/// Anything that is not exactly 6 ASCII digits once whitespace is removed never matches.
pub fn verify_totp(secret: &TotpSecret, code: &str, now: u64) -> Option<u64> {
    let typed = Zeroizing::new(typed_digits(code)?);
    let totp = secret.totp();
    let current = time_step(now);
    let mut matched = None;
    // Every candidate is computed and compared, so the time taken does not tell which one
    // matched. Should two steps share a code (one chance in a million), the later one is
    // reported, so that a fresh code is never taken for a replay of the earlier step.
    for step in [
        current.checked_sub(1),
        Some(current),
        current.checked_add(1),
    ]
    .into_iter()
    .flatten()
    {
        // Only the last step of the u64 range has no start time in u64.
        let Some(start) = step.checked_mul(STEP_SECONDS) else {
            continue;
        };
        let expected = Zeroizing::new(totp.generate(start).to_string());
        if verify_slices_are_equal(expected.as_bytes(), typed.as_slice()).is_ok() {
            matched = Some(step);
        }
    }
    matched
}

/// The code `secret` gives at Unix time `now` (for tests and the CLI's confirmation step).
pub fn totp_code(secret: &TotpSecret, now: u64) -> String {
    secret.totp().generate(now).to_string()
}

/// The 6 ASCII digits of `code` once whitespace is removed, or `None`. Never allocates, so
/// arbitrarily long input costs one pass.
fn typed_digits(code: &str) -> Option<[u8; CODE_LEN]> {
    let mut digits = [0u8; CODE_LEN];
    let mut count = 0;
    for c in code.chars().filter(|c| !c.is_whitespace()) {
        if count == CODE_LEN || !c.is_ascii_digit() {
            return None;
        }
        digits[count] = u8::try_from(c).ok()?;
        count += 1;
    }
    (count == CODE_LEN).then_some(digits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The secret of RFC 6238 Appendix B for SHA-1.
    fn rfc_secret() -> TotpSecret {
        TotpSecret::from_bytes(b"12345678901234567890".to_vec()).unwrap()
    }

    /// RFC 6238 Appendix B, SHA-1: (Unix time, 8-digit code).
    const RFC_6238_SHA1: [(u64, &str); 6] = [
        (59, "94287082"),
        (1_111_111_109, "07081804"),
        (1_111_111_111, "14050471"),
        (1_234_567_890, "89005924"),
        (2_000_000_000, "69279037"),
        (20_000_000_000, "65353130"),
    ];

    #[test]
    fn codes_are_rfc_6238_appendix_b_truncated_to_six_digits() {
        let secret = rfc_secret();
        // A 6-digit code is the truncated value mod 10^6, i.e. the last 6 digits of the
        // 8-digit code (value mod 10^8).
        let codes: Vec<String> = RFC_6238_SHA1
            .iter()
            .map(|&(time, _)| totp_code(&secret, time))
            .collect();
        assert_eq!(
            codes,
            ["287082", "081804", "050471", "005924", "279037", "353130"]
        );
        for (time, eight) in RFC_6238_SHA1 {
            let six = &eight[2..];
            assert_eq!(totp_code(&secret, time), six, "{time}");
            assert_eq!(verify_totp(&secret, six, time), Some(time / 30), "{time}");
        }
    }

    #[test]
    fn one_step_either_side_is_accepted_and_reported() {
        let secret = rfc_secret();
        // 1111111109 is the last second of step 37037036, whose code is 081804; the next
        // step's is 050471.
        let step = 37_037_036;
        assert_eq!(time_step(1_111_111_109), step);
        let first_second = |s: u64| s * STEP_SECONDS;
        let last_second = |s: u64| s * STEP_SECONDS + STEP_SECONDS - 1;
        for now in [
            first_second(step - 1),
            first_second(step),
            last_second(step),
            first_second(step + 1),
            last_second(step + 1),
        ] {
            assert_eq!(verify_totp(&secret, "081804", now), Some(step), "{now}");
        }
        for now in [last_second(step - 2), first_second(step + 2)] {
            assert_eq!(verify_totp(&secret, "081804", now), None, "{now}");
        }
        // The step that matched, not the current one, is reported.
        assert_eq!(
            verify_totp(&secret, "050471", last_second(step)),
            Some(step + 1)
        );
        assert_eq!(
            verify_totp(&secret, "081804", first_second(step + 1)),
            Some(step)
        );
    }

    #[test]
    fn whitespace_is_ignored_and_malformed_codes_never_match() {
        let secret = rfc_secret();
        let now = 1_111_111_109;
        for typed in [
            "081804",
            "081 804",
            " 081804\n",
            "0 8 1 8 0 4",
            "081\u{a0}804",
        ] {
            assert_eq!(
                verify_totp(&secret, typed, now),
                Some(37_037_036),
                "{typed:?}"
            );
        }
        for typed in [
            "",
            "08180",
            "0818041",
            "08180a",
            "abcdef",
            "+81804",
            "-81804",
            "081-804",
            "\u{ff10}81804",
            "0818040",
        ] {
            assert_eq!(verify_totp(&secret, typed, now), None, "{typed:?}");
        }
    }

    #[test]
    fn the_ends_of_time_do_not_panic() {
        let secret = rfc_secret();
        for now in [0, 1, 29, u64::MAX - 30, u64::MAX] {
            let code = totp_code(&secret, now);
            assert_eq!(code.len(), 6);
            assert!(verify_totp(&secret, &code, now).is_some(), "{now}");
        }
        assert_eq!(verify_totp(&secret, "287082", 0), Some(1));
    }

    #[test]
    fn secrets_are_random_and_at_least_128_bits() {
        let a = TotpSecret::generate();
        let b = TotpSecret::generate();
        assert_eq!(a.expose_bytes().len(), SECRET_BYTES);
        assert_ne!(a.expose_bytes(), b.expose_bytes());
        assert_eq!(
            TotpSecret::from_bytes(vec![7; 15]).unwrap_err(),
            MfaError::SecretTooShort { bytes: 15 }
        );
        assert!(TotpSecret::from_bytes(vec![7; 16]).is_ok());
    }

    #[test]
    fn base32_is_rfc_4648_without_padding() {
        // RFC 4648 section 10: BASE32("foobar") = "MZXW6YTBOI======".
        let mut bytes = b"foobar".to_vec();
        bytes.extend_from_slice(&[0; 10]);
        let secret = TotpSecret::from_bytes(bytes).unwrap();
        assert!(secret.base32().starts_with("MZXW6YTBOI"));
        assert!(!secret.base32().contains('='));
        assert_eq!(rfc_secret().base32(), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        assert_eq!(TotpSecret::generate().base32().len(), 32);
    }

    #[test]
    fn debug_output_holds_no_secret() {
        let secret = rfc_secret();
        let printed = format!("{secret:?}");
        assert_eq!(printed, "TotpSecret([redacted])");

        let enrolment = enrol("Passage", "alice@corp.example.com").unwrap();
        let printed = format!("{enrolment:?} {enrolment:#?}");
        let base32 = enrolment.secret.base32();
        assert!(!printed.contains(&base32), "{printed}");
        assert!(!printed.contains(&base32[..8]), "{printed}");
        assert!(!printed.contains("otpauth"), "{printed}");
        assert!(!printed.contains('\u{2588}'), "{printed}");
        assert!(printed.contains("[redacted]"), "{printed}");
    }

    #[test]
    fn the_uri_names_issuer_account_and_secret_and_totp_rs_reads_it_back() {
        let enrolment = enrol("Passage", "alice@corp.example.com").unwrap();
        let uri = enrolment.otpauth_uri.as_str();
        let base32 = enrolment.secret.base32();
        assert!(
            uri.starts_with("otpauth://totp/Passage:alice%40corp.example.com?"),
            "{uri}"
        );
        assert!(uri.contains(&format!("secret={base32}")), "{uri}");
        assert!(uri.contains("issuer=Passage"), "{uri}");
        for parameter in ["algorithm=SHA1", "digits=6", "period=30"] {
            assert_eq!(uri.matches(parameter).count(), 1, "{uri}");
        }
        let parsed = Totp::from_url(uri).unwrap();
        assert_eq!(parsed.secret().as_bytes(), enrolment.secret.expose_bytes());
        assert_eq!(parsed.issuer(), Some("Passage"));
        assert_eq!(parsed.account_name(), "alice@corp.example.com");
        assert_eq!(parsed.digits(), 6);
        assert_eq!(parsed.step(), 30);
        assert_eq!(parsed.algorithm(), Algorithm::SHA1);
    }

    #[test]
    fn labels_must_be_present_and_free_of_colons() {
        assert_eq!(
            enrol("", "alice").unwrap_err(),
            MfaError::EmptyLabel { field: "issuer" }
        );
        assert_eq!(
            enrol("Passage", " ").unwrap_err(),
            MfaError::EmptyLabel { field: "account" }
        );
        assert!(matches!(
            enrol("Pass:age", "alice").unwrap_err(),
            MfaError::Totp(_)
        ));
        assert!(matches!(
            enrol("Passage", "corp:alice").unwrap_err(),
            MfaError::Totp(_)
        ));
    }

    #[test]
    fn the_qr_code_is_a_multi_line_block_for_a_dark_terminal() {
        let enrolment = enrol("Passage", "alice@corp.example.com").unwrap();
        let lines: Vec<&str> = enrolment.qr_text.lines().collect();
        assert!(lines.len() > 10, "{}", enrolment.qr_text);
        let width = lines[0].chars().count();
        assert!(width > 20);
        assert!(lines.iter().all(|line| line.chars().count() == width));
        // The quiet zone is light, drawn as full blocks on a dark terminal.
        assert!(lines[0].chars().all(|c| c == '\u{2588}'), "{}", lines[0]);
    }

    #[test]
    fn an_oversized_uri_is_an_error_not_a_panic() {
        let long = "a".repeat(5000);
        assert!(matches!(
            enrol("Passage", &long).unwrap_err(),
            MfaError::Qr(_)
        ));
    }

    proptest! {
        #[test]
        fn verify_totp_never_panics(code in any::<String>(), now in any::<u64>()) {
            let _ = verify_totp(&rfc_secret(), &code, now);
        }

        #[test]
        fn only_six_digits_can_match(code in "[0-9 a+-]{0,9}", now in any::<u64>()) {
            if verify_totp(&rfc_secret(), &code, now).is_some() {
                let kept: Vec<char> = code.chars().filter(|c| *c != ' ').collect();
                prop_assert_eq!(kept.len(), 6);
                prop_assert!(kept.iter().all(char::is_ascii_digit));
            }
        }

        #[test]
        fn the_current_code_verifies_at_its_step(now in any::<u64>()) {
            let secret = rfc_secret();
            let code = totp_code(&secret, now);
            let step = verify_totp(&secret, &code, now);
            // Its own step, or the next one should that share the code.
            prop_assert!(
                step == Some(time_step(now)) || step == time_step(now).checked_add(1),
                "{step:?}"
            );
        }
    }
}

//! Credentials as types that carry their rules.
//!
//! * [`Password`] can only hold a non-empty password without control characters, prints as
//!   `[redacted]` and wipes its memory on drop. An empty password must never reach a
//!   directory: an LDAP simple bind with an empty password is an anonymous bind and succeeds.
//! * [`Username`] can only be built validated: bounded length, no control, invisible or
//!   bidirectional-control characters, no surrounding whitespace, NFC-normalised, and a
//!   `user@domain` shape whose domain routes it to a connector group.
//! * [`Secret`] is the general redacting, zeroizing wrapper for keys and tokens.

pub mod secret_file;

use std::fmt;

use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Longest accepted username, in bytes (AD's userPrincipalName is bounded well below this).
pub const MAX_USERNAME_BYTES: usize = 256;
/// Longest accepted password, in bytes (AD accepts at most 256 characters).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Longest accepted client id / client IP / other free-form request field, in bytes.
pub const MAX_FIELD_BYTES: usize = 256;

/// Why a credential was refused before anything was sent anywhere.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// The field was empty.
    #[error("{field} must not be empty")]
    Empty {
        /// Which field.
        field: &'static str,
    },
    /// The field was longer than allowed.
    #[error("{field} is longer than {max} bytes")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// The limit.
        max: usize,
    },
    /// The field contained a control character (NUL, newline, ...).
    #[error("{field} must not contain control characters")]
    ControlCharacter {
        /// Which field.
        field: &'static str,
    },
    /// The field contained an invisible or bidirectional-control character (see
    /// [`is_invisible`]): such names look like another user's name on screen and in logs.
    #[error("{field} must not contain invisible or bidirectional-control characters")]
    InvisibleCharacter {
        /// Which field.
        field: &'static str,
    },
    /// The username started or ended with whitespace, which would make two names that look
    /// alike in a list refer to different directory entries.
    #[error("username must not start or end with spaces")]
    SurroundingWhitespace {
        /// Which field.
        field: &'static str,
    },
    /// The username is not `user@domain`, `DOMAIN\\user` or a bare `user`: an empty part
    /// around the `@` or the backslash, or two backslashes.
    #[error("username must have the form user@domain, DOMAIN\\user or user")]
    NoDomain,
}

/// Whether `c` is invisible when rendered or reorders the text around it: Unicode general
/// category Cf (format: zero-width spaces and joiners, bidirectional marks, embeddings and
/// isolates, the byte-order mark, the soft hyphen, ...), Zl (line separator) or Zp (paragraph
/// separator).
///
/// Control characters (Cc) are not included: [`char::is_control`] covers those.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c.general_category(),
        GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    )
}

/// Checks the rules every free-form request field shares: bounded length, no control characters.
pub fn check_field(field: &'static str, value: &str, max: usize) -> Result<(), CredentialError> {
    if value.len() > max {
        return Err(CredentialError::TooLong { field, max });
    }
    if value.chars().any(char::is_control) {
        return Err(CredentialError::ControlCharacter { field });
    }
    Ok(())
}

/// A validated sign-in name, held in Unicode NFC, in one of the three forms Windows knows:
/// `user@domain` (a UPN, or an alternate login ID such as a mail address), `DOMAIN\user` (a
/// down-level logon name: NetBIOS domain and `sAMAccountName`), or a bare `user`.
///
/// The form and its domain select the connector group (see [`NameForm`]); the agent looks the
/// name up by the matching attribute (after RFC 4515 escaping).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Username {
    /// NFC-normalised.
    value: String,
    /// Byte index of the separator (the last `@`, or the backslash) in `value`, if any.
    separator: Option<usize>,
}

/// The form of a [`Username`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameForm<'a> {
    /// `user@domain`; the domain lower-cased (full Unicode).
    Upn {
        /// The part after the last `@`, lower-cased.
        domain: String,
    },
    /// `DOMAIN\user`.
    DownLevel {
        /// The NetBIOS domain, upper-cased.
        netbios: String,
        /// The account name after the backslash.
        account: &'a str,
    },
    /// A name alone.
    Bare,
}

impl Username {
    /// Validates `value` and normalises it to NFC.
    ///
    /// Refuses empty or over-long names, control characters, invisible or
    /// bidirectional-control characters ([`is_invisible`]), leading or trailing whitespace,
    /// and names without a non-empty local part and domain either side of the last `@`.
    pub fn parse(value: &str) -> Result<Self, CredentialError> {
        const FIELD: &str = "username";
        if value.is_empty() {
            return Err(CredentialError::Empty { field: FIELD });
        }
        // Bounds the input before normalising it, so the work below is bounded too.
        check_field(FIELD, value, MAX_USERNAME_BYTES)?;
        // A name typed with a combining accent and one typed precomposed are the same name.
        // Canonical equivalence never turns a character into or out of a control, format or
        // whitespace one, so checking the normalised name also covers the input.
        let value: String = value.nfc().collect();
        // Normalising can lengthen a string (composition exclusions decompose).
        if value.len() > MAX_USERNAME_BYTES {
            return Err(CredentialError::TooLong {
                field: FIELD,
                max: MAX_USERNAME_BYTES,
            });
        }
        if value.chars().any(is_invisible) {
            return Err(CredentialError::InvisibleCharacter { field: FIELD });
        }
        if value.starts_with(char::is_whitespace) || value.ends_with(char::is_whitespace) {
            return Err(CredentialError::SurroundingWhitespace { field: FIELD });
        }
        // An `@` makes a UPN, whatever its local part holds (a backslash included); only a
        // name without one can be down-level.
        let separator = match (value.rfind('@'), value.find('\\')) {
            (Some(at), _) => Some(at),
            (None, Some(slash)) if value[slash + 1..].contains('\\') => {
                return Err(CredentialError::NoDomain);
            }
            (None, slash) => slash,
        };
        if let Some(at) = separator
            && (at == 0 || at + 1 == value.len())
        {
            return Err(CredentialError::NoDomain);
        }
        Ok(Self { value, separator })
    }

    /// Which form the name has, and its domain.
    pub fn form(&self) -> NameForm<'_> {
        match self.separator {
            Some(at) if self.value.as_bytes()[at] == b'@' => NameForm::Upn {
                domain: self.value[at + 1..].to_lowercase(),
            },
            Some(slash) => NameForm::DownLevel {
                netbios: self.value[..slash].to_uppercase(),
                account: &self.value[slash + 1..],
            },
            None => NameForm::Bare,
        }
    }

    /// The whole name, NFC-normalised but otherwise as typed (the local part keeps its case).
    pub fn as_str(&self) -> &str {
        &self.value
    }

    /// For `user@domain`, the part after the last `@`, lower-cased (full Unicode, not only
    /// ASCII): the case-insensitive routing key for connector groups.
    pub fn domain(&self) -> Option<String> {
        match self.form() {
            NameForm::Upn { domain } => Some(domain),
            _ => None,
        }
    }
}

impl fmt::Debug for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Username").field(&self.value).finish()
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

/// A password: never empty, never printed, wiped from memory on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Password(String);

impl Password {
    /// Validates and takes ownership of `value`; the original is wiped when refused too.
    pub fn new(mut value: String) -> Result<Self, CredentialError> {
        let checked = if value.is_empty() {
            Err(CredentialError::Empty { field: "password" })
        } else {
            check_field("password", &value, MAX_PASSWORD_BYTES)
        };
        match checked {
            Ok(()) => Ok(Self(value)),
            Err(err) => {
                value.zeroize();
                Err(err)
            }
        }
    }

    /// Builds a password from UTF-8 bytes (as decrypted by an agent), wiping the input.
    pub fn from_utf8(mut bytes: Vec<u8>) -> Result<Self, CredentialError> {
        match String::from_utf8(std::mem::take(&mut bytes)) {
            Ok(text) => Self::new(text),
            Err(err) => {
                err.into_bytes().zeroize();
                Err(CredentialError::ControlCharacter { field: "password" })
            }
        }
    }

    /// The password itself. Call sites are the few places that must hand it on
    /// (sealing, directory bind, hash verification).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password([redacted])")
    }
}

/// Any secret value (private key bytes, enrolment tokens, TOTP seeds): redacted and zeroized.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The secret bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_password_is_refused() {
        assert_eq!(
            Password::new(String::new()).unwrap_err(),
            CredentialError::Empty { field: "password" }
        );
    }

    #[test]
    fn password_debug_is_redacted() {
        let password = Password::new("hunter2-very-secret".into()).unwrap();
        let printed = format!("{password:?} {:?}", Secret::new(b"key-bytes".to_vec()));
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("key-bytes"), "{printed}");
        assert!(printed.contains("[redacted]"));
    }

    #[test]
    fn password_with_control_characters_is_refused() {
        for bad in ["a\0b", "line\nbreak", "tab\there", "\u{7f}del"] {
            assert_eq!(
                Password::new(bad.into()).unwrap_err(),
                CredentialError::ControlCharacter { field: "password" },
                "{bad:?}"
            );
        }
    }

    #[test]
    fn over_long_fields_are_refused() {
        let long = "a".repeat(MAX_PASSWORD_BYTES + 1);
        assert!(matches!(
            Password::new(long).unwrap_err(),
            CredentialError::TooLong { .. }
        ));
        let user = format!("{}@corp.example.com", "u".repeat(MAX_USERNAME_BYTES));
        assert!(matches!(
            Username::parse(&user).unwrap_err(),
            CredentialError::TooLong { .. }
        ));
    }

    #[test]
    fn usernames_have_one_of_three_forms() {
        for bad in [
            "@corp.example.com",
            "alice@",
            "",
            "CORP\\",
            "\\alice",
            "CORP\\al\\ice",
        ] {
            assert!(Username::parse(bad).is_err(), "{bad:?}");
        }
        let user = Username::parse("Alice@Corp.Example.COM").unwrap();
        assert_eq!(user.domain().as_deref(), Some("corp.example.com"));
        assert_eq!(user.as_str(), "Alice@Corp.Example.COM");
        let down_level = Username::parse("corp\\Alice").unwrap();
        assert_eq!(
            down_level.form(),
            NameForm::DownLevel {
                netbios: "CORP".into(),
                account: "Alice"
            }
        );
        assert_eq!(down_level.domain(), None);
        assert_eq!(down_level.as_str(), "corp\\Alice");
        let escaped = Username::parse("CORP\\alice@corp.example.com").unwrap();
        assert_eq!(
            escaped.domain().as_deref(),
            Some("corp.example.com"),
            "an @ makes a UPN, backslash or not"
        );
        let bare = Username::parse("alice").unwrap();
        assert_eq!(bare.form(), NameForm::Bare);
        assert_eq!(bare.domain(), None);
    }

    #[test]
    fn ldap_metacharacters_are_allowed_through_to_escaping() {
        // They are legal in a UPN's local part; the agent escapes them (RFC 4515).
        assert!(Username::parse("a*)(uid=*)@corp.example.com").is_ok());
        assert!(Username::parse("nul\0@corp.example.com").is_err());
    }

    #[test]
    fn invisible_and_bidi_control_characters_are_refused() {
        for c in [
            '\u{200b}', '\u{200e}', '\u{202e}', '\u{2066}', '\u{feff}', '\u{ad}', '\u{2028}',
            '\u{2029}',
        ] {
            assert!(is_invisible(c), "{c:?}");
            for bad in [
                format!("al{c}ice@corp.example.com"),
                format!("alice@corp{c}.example.com"),
            ] {
                assert_eq!(
                    Username::parse(&bad).unwrap_err(),
                    CredentialError::InvisibleCharacter { field: "username" },
                    "{bad:?}"
                );
            }
        }
        assert!(!is_invisible('a'));
        assert!(!is_invisible(' '));
    }

    #[test]
    fn surrounding_whitespace_is_refused() {
        for bad in [
            " alice@corp.example.com",
            "alice@corp.example.com ",
            "alice@corp.example.com\u{3000}",
        ] {
            assert_eq!(
                Username::parse(bad).unwrap_err(),
                CredentialError::SurroundingWhitespace { field: "username" },
                "{bad:?}"
            );
        }
        // Control characters keep their own, earlier refusal.
        assert_eq!(
            Username::parse("alice@corp.example.com\n").unwrap_err(),
            CredentialError::ControlCharacter { field: "username" }
        );
    }

    #[test]
    fn usernames_are_normalised_to_nfc() {
        let user = Username::parse("e\u{301}mile@corp.example.com").unwrap();
        assert_eq!(user.as_str(), "\u{e9}mile@corp.example.com");
        assert_eq!(
            user,
            Username::parse("\u{e9}mile@corp.example.com").unwrap()
        );
        assert_eq!(user.domain().as_deref(), Some("corp.example.com"));
    }

    #[test]
    fn domain_is_lower_cased_in_full_unicode() {
        let user = Username::parse("Alice@CORP.Example.Com").unwrap();
        assert_eq!(user.domain().as_deref(), Some("corp.example.com"));
        assert_eq!(user.as_str(), "Alice@CORP.Example.Com");
        // "a@ÉXAMPLE.COM"
        let user = Username::parse("a@\u{c9}XAMPLE.COM").unwrap();
        assert_eq!(user.domain().as_deref(), Some("\u{e9}xample.com"));
    }

    proptest! {
        #[test]
        fn parsed_usernames_never_hold_control_characters(s in "\\PC*@[a-z.]{1,20}|.*") {
            if let Ok(user) = Username::parse(&s) {
                prop_assert!(!user.as_str().chars().any(char::is_control));
                prop_assert!(user.as_str().len() <= MAX_USERNAME_BYTES);
                prop_assert!(user.domain().is_none_or(|d| !d.is_empty()));
            }
        }

        /// The username parser never panics, and anything it accepts is NFC, has no Cf/Zl/Zp or
        /// control characters, no surrounding whitespace, and is at most MAX_USERNAME_BYTES.
        #[test]
        fn accepted_usernames_are_nfc_visible_and_trimmed(
            s in prop_oneof![
                any::<String>(),
                "[a-zE@\u{200b}\u{200e}\u{202e}\u{2066}\u{feff}\u{ad}\u{2028}\u{2029}\u{3000}\u{301}\u{c9} .]{0,40}",
            ]
        ) {
            if let Ok(user) = Username::parse(&s) {
                let name = user.as_str();
                prop_assert!(unicode_normalization::is_nfc(name), "{name:?}");
                prop_assert!(!name.chars().any(|c| c.is_control() || is_invisible(c)), "{name:?}");
                prop_assert!(!name.starts_with(char::is_whitespace), "{name:?}");
                prop_assert!(!name.ends_with(char::is_whitespace), "{name:?}");
                prop_assert!(name.len() <= MAX_USERNAME_BYTES, "{name:?}");
                let nfc: String = s.nfc().collect();
                prop_assert_eq!(name, nfc.as_str());
                prop_assert!(user.domain().is_none_or(|d| !d.is_empty()));
            }
        }
    }
}

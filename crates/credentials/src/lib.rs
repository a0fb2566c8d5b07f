//! Credentials as types that carry their rules.
//!
//! * [`Password`] can only hold a non-empty password without control characters, prints as
//!   `[redacted]` and wipes its memory on drop. An empty password must never reach a
//!   directory: an LDAP simple bind with an empty password is an anonymous bind and succeeds.
//! * [`Username`] can only be built validated: bounded length, no control characters, and a
//!   `user@domain` shape whose domain routes it to a connector group.
//! * [`Secret`] is the general redacting, zeroizing wrapper for keys and tokens.

pub mod secret_file;

use std::fmt;

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
    /// The username has no `@domain` part, or an empty local part or domain.
    #[error("username must have the form user@domain")]
    NoDomain,
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

/// A validated sign-in name of the form `user@domain`.
///
/// The domain (case-insensitive) selects the connector group; the whole name is what the agent
/// looks up in the directory (after RFC 4515 escaping).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Username {
    value: String,
    at: usize,
}

impl Username {
    /// Validates `value`.
    pub fn parse(value: &str) -> Result<Self, CredentialError> {
        if value.is_empty() {
            return Err(CredentialError::Empty { field: "username" });
        }
        check_field("username", value, MAX_USERNAME_BYTES)?;
        let at = value.rfind('@').ok_or(CredentialError::NoDomain)?;
        if at == 0 || at + 1 == value.len() {
            return Err(CredentialError::NoDomain);
        }
        Ok(Self {
            value: value.to_owned(),
            at,
        })
    }

    /// The whole name as typed.
    pub fn as_str(&self) -> &str {
        &self.value
    }

    /// The part after the last `@`, lower-cased: the routing key for connector groups.
    pub fn domain(&self) -> String {
        self.value[self.at + 1..].to_ascii_lowercase()
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
    fn username_needs_a_domain() {
        for bad in ["alice", "@corp.example.com", "alice@", ""] {
            assert!(Username::parse(bad).is_err(), "{bad:?}");
        }
        let user = Username::parse("Alice@Corp.Example.COM").unwrap();
        assert_eq!(user.domain(), "corp.example.com");
        assert_eq!(user.as_str(), "Alice@Corp.Example.COM");
    }

    #[test]
    fn ldap_metacharacters_are_allowed_through_to_escaping() {
        // They are legal in a UPN's local part; the agent escapes them (RFC 4515).
        assert!(Username::parse("a*)(uid=*)@corp.example.com").is_ok());
        assert!(Username::parse("nul\0@corp.example.com").is_err());
    }

    proptest! {
        #[test]
        fn parsed_usernames_never_hold_control_characters(s in "\\PC*@[a-z.]{1,20}|.*") {
            if let Ok(user) = Username::parse(&s) {
                prop_assert!(!user.as_str().chars().any(char::is_control));
                prop_assert!(user.as_str().len() <= MAX_USERNAME_BYTES);
                prop_assert!(!user.domain().is_empty());
            }
        }
    }
}

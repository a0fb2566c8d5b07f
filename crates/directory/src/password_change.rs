//! Changing a user's password in the directory (password writeback), and why a directory can
//! refuse a new one.
//!
//! * OpenLDAP: the Password Modify extended operation (RFC 3062), on a connection bound as the
//!   user with the old password — so the ppolicy overlay applies the user's own rules
//!   (quality, length, history, age) and answers in its response control. A must-change
//!   (`pwdReset`) session and a grace login of an expired password may change the password.
//! * Active Directory: `unicodePwd` deleted (the old value) and added (the new one) in one
//!   modify, over LDAPS, as the service account — AD checks the old password itself and allows
//!   this "change" (not a reset) for accounts that must change or whose password expired.

use serde::Deserialize;

use crate::{UserInfo, Verdict};

/// How the directory changes passwords.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PasswordChange {
    /// RFC 3062 Password Modify, bound as the user (OpenLDAP and most LDAP servers).
    #[default]
    PasswordModify,
    /// Active Directory's `unicodePwd` delete + add (needs LDAPS).
    ActiveDirectory,
}

/// Why the directory refused a new password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Shorter than the policy allows (ppolicy `passwordTooShort`).
    TooShort,
    /// Used before (ppolicy `passwordInHistory`).
    InHistory,
    /// The password was changed too recently (ppolicy `passwordTooYoung`).
    TooYoung,
    /// Fails the policy's quality checks (ppolicy `insufficientPasswordQuality`).
    Quality,
    /// Refused by the policy without saying which rule: AD's `0000052D` (length, complexity,
    /// history or age), or a constraint violation.
    Policy,
}

impl Rejection {
    /// A name for logs and answers.
    pub fn name(self) -> &'static str {
        match self {
            Rejection::TooShort => "too_short",
            Rejection::InHistory => "in_history",
            Rejection::TooYoung => "too_young",
            Rejection::Quality => "quality",
            Rejection::Policy => "policy",
        }
    }
}

/// What a password change came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeOutcome {
    /// Changed: the user, as a sign-in with the new password finds them.
    Changed(UserInfo),
    /// The old password did not open the account (wrong, locked, disabled, ...): the verdict a
    /// sign-in with it would get.
    Refused(Verdict),
    /// The directory refused the new password.
    Rejected(Rejection),
}

/// The rejection a ppolicy response control's `error` means, if it is one about the new
/// password.
pub fn ppolicy_rejection(error: u8) -> Option<Rejection> {
    Some(match error {
        5 => Rejection::Quality,
        6 => Rejection::TooShort,
        7 => Rejection::TooYoung,
        8 => Rejection::InHistory,
        _ => return None,
    })
}

/// What an Active Directory constraint violation on a password change says, by the Windows
/// error number leading its text: `0000052D` (ERROR_PASSWORD_RESTRICTION) the new password
/// breaks the policy; `00000056` (ERROR_INVALID_PASSWORD) the old one is wrong.
pub fn ad_change_error(text: &str) -> Option<ChangeOutcome> {
    let code = text.trim_start().get(..8)?.to_ascii_uppercase();
    match code.as_str() {
        "0000052D" => Some(ChangeOutcome::Rejected(Rejection::Policy)),
        "00000056" => Some(ChangeOutcome::Refused(Verdict::InvalidCredentials)),
        _ => None,
    }
}

/// A password as AD's `unicodePwd` takes it: in double quotes, UTF-16LE.
pub fn unicode_pwd(password: &str) -> Vec<u8> {
    format!("\"{password}\"")
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppolicy_errors_about_the_new_password() {
        assert_eq!(ppolicy_rejection(5), Some(Rejection::Quality));
        assert_eq!(ppolicy_rejection(6), Some(Rejection::TooShort));
        assert_eq!(ppolicy_rejection(7), Some(Rejection::TooYoung));
        assert_eq!(ppolicy_rejection(8), Some(Rejection::InHistory));
        for other in [0, 1, 2, 3, 4, 9, 255] {
            assert_eq!(ppolicy_rejection(other), None, "{other}");
        }
    }

    #[test]
    fn ad_change_errors_by_their_number() {
        assert_eq!(
            ad_change_error(
                "0000052D: Constraint violation - check_password_restrictions: the password is too short."
            ),
            Some(ChangeOutcome::Rejected(Rejection::Policy))
        );
        assert_eq!(
            ad_change_error(
                "00000056: Constraint violation - The old password specified doesn't match!"
            ),
            Some(ChangeOutcome::Refused(Verdict::InvalidCredentials))
        );
        assert_eq!(ad_change_error("00002081: something else"), None);
        assert_eq!(ad_change_error("52D"), None);
    }

    #[test]
    fn unicode_pwd_is_quoted_utf16le() {
        assert_eq!(unicode_pwd("ab"), vec![0x22, 0, 0x61, 0, 0x62, 0, 0x22, 0]);
        assert_eq!(unicode_pwd("é").len(), 6);
    }
}

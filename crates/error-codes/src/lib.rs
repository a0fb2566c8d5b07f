//! Stable error codes, in the spirit of Azure AD's `AADSTS` family.
//!
//! A code never changes meaning once released; operators search for it in
//! `docs/troubleshooting.md`. Every error that crosses a service boundary becomes a
//! [`tonic::Status`] here and nowhere else: the code leads the message (`PSG80001: ...`) and is
//! attached as a `google.rpc.ErrorInfo` detail (`reason` = code, `domain` = [`DOMAIN`]), so
//! clients and `grpcurl` can match on it without parsing prose.

use std::fmt;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every Passage error.
pub const DOMAIN: &str = "passage.dev";

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $name:ident = $text:literal, $grpc:ident; )*) => {
        /// A stable, documented Passage error code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $( $(#[$doc])* $name, )*
        }

        impl ErrorCode {
            /// Every code, for documentation and tests.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];

            /// The code as shown to users, e.g. `PSG80001`.
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$name => $text,)* }
            }

            /// The gRPC status code this error is reported with.
            pub fn grpc_code(self) -> Code {
                match self { $(ErrorCode::$name => Code::$grpc,)* }
            }

            /// Parses `PSG80001`-style text.
            pub fn parse(text: &str) -> Option<ErrorCode> {
                match text { $($text => Some(ErrorCode::$name),)* _ => None }
            }
        }
    };
}

error_codes! {
    /// The request was malformed: empty password, over-long field, control characters.
    InvalidRequest = "PSG90001", InvalidArgument;
    /// The `client_id` is not a registered application.
    UnknownClient = "PSG70016", InvalidArgument;
    /// No connector group serves the username's domain.
    UnknownDomain = "PSG50034", NotFound;
    /// Wrong password, or no such user: deliberately the same answer.
    InvalidCredentials = "PSG50126", Unauthenticated;
    /// The directory has locked the account.
    AccountLocked = "PSG50053", PermissionDenied;
    /// The account is disabled in the directory.
    AccountDisabled = "PSG50057", PermissionDenied;
    /// Smart lockout: too many failed sign-ins; refused without asking the directory.
    SmartLockout = "PSG50059", PermissionDenied;
    /// The account has expired in the directory.
    AccountExpired = "PSG50054", PermissionDenied;
    /// A conditional-access policy blocks this sign-in.
    BlockedByPolicy = "PSG53003", PermissionDenied;
    /// A policy requires MFA and the user has no authenticator registered.
    MfaNotEnrolled = "PSG50079", FailedPrecondition;
    /// The MFA code is wrong, or was used before; the challenge stays open.
    MfaCodeInvalid = "PSG50074", Unauthenticated;
    /// The MFA challenge is unknown, expired, already used, or another client's.
    MfaChallengeInvalid = "PSG50075", FailedPrecondition;
    /// Too many wrong MFA codes: the challenge is over; sign in again.
    MfaChallengeEnded = "PSG50076", PermissionDenied;
    /// Too many wrong MFA codes for this user lately, across challenges: MFA waits.
    MfaLocked = "PSG50078", PermissionDenied;
    /// The refresh token is unknown, expired, revoked, of another application, or was used
    /// already (then every token of its sign-in is revoked): sign in again.
    RefreshTokenInvalid = "PSG70008", Unauthenticated;
    /// The application could not be authenticated: an unknown `client_id`, or a confidential
    /// application's client secret missing or wrong.
    ClientAuthenticationFailed = "PSG70002", Unauthenticated;
    /// The password has expired; it must be changed on-premises.
    PasswordExpired = "PSG50055", FailedPrecondition;
    /// The password must be changed before first use.
    PasswordMustChange = "PSG50056", FailedPrecondition;
    /// A password change: the directory refused the new password (too short, used before,
    /// too soon, or its policy's other rules); the message says which.
    PasswordRejected = "PSG50140", InvalidArgument;
    /// A password change where this tenant does not allow password writeback.
    WritebackDisabled = "PSG50141", FailedPrecondition;
    /// No healthy agent of the connector group is connected.
    NoAgentAvailable = "PSG80001", Unavailable;
    /// The agent did not answer before the deadline.
    AgentTimeout = "PSG80002", DeadlineExceeded;
    /// Every candidate agent's stream was lost before it answered.
    AgentLost = "PSG80003", Unavailable;
    /// The agent could not reach the directory.
    DirectoryUnavailable = "PSG80004", Unavailable;
    /// The agent refused the sealed password (wrong key, expired, replayed, mismatched).
    AgentRejected = "PSG80010", Unavailable;
    /// The answer relayed by the dispatcher did not open with the key sealed for that agent
    /// and sign-in: forged, replayed or swapped on the way. No token is issued.
    AnswerNotAuthentic = "PSG80011", Unavailable;
    /// Enrolment was refused: unknown, used, expired or another tenant's token.
    EnrolmentRefused = "PSG82001", PermissionDenied;
    /// The agent's certificate is missing, not the tenant CA's, or does not match its hello.
    AgentNotTrusted = "PSG82002", Unauthenticated;
    /// The agent was revoked, or its certificate was replaced by a renewal or never issued:
    /// retrying cannot help, the agent must be enrolled again.
    AgentRevoked = "PSG82003", Unauthenticated;
    /// The caller's gateway certificate does not name the tenant it asked for (or it presented
    /// no gateway certificate).
    GatewayNotPermitted = "PSG82010", PermissionDenied;
    /// An administrative call without a valid administrator token.
    AdminNotAuthorised = "PSG82020", Unauthenticated;
    /// Too many sign-ins from one client address, or for the tenant: retry later.
    Throttled = "PSG90429", ResourceExhausted;
    /// An unexpected internal failure.
    Internal = "PSG90000", Internal;
}

impl ErrorCode {
    /// The fixed message callers are shown for this code. What an agent or a directory said
    /// (server messages, DNs, agent ids) goes to logs and traces only.
    pub fn public_message(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "the request is malformed",
            ErrorCode::UnknownClient => "the application is not registered",
            ErrorCode::UnknownDomain => "no connector group serves this username's domain",
            ErrorCode::InvalidCredentials => "invalid username or password",
            ErrorCode::AccountLocked => {
                "the account is locked; try again later or contact your administrator"
            }
            ErrorCode::AccountDisabled => "the account is disabled",
            ErrorCode::SmartLockout => {
                "too many failed sign-ins; the account is temporarily locked here, try again later"
            }
            ErrorCode::AccountExpired => "the account has expired",
            ErrorCode::BlockedByPolicy => {
                "your organisation's access policy does not allow this sign-in"
            }
            ErrorCode::MfaNotEnrolled => {
                "this sign-in needs a second factor and no authenticator is registered; ask your administrator to register one"
            }
            ErrorCode::MfaCodeInvalid => "the code is not valid; try the current code",
            ErrorCode::MfaChallengeInvalid => {
                "the verification step is no longer valid; sign in again"
            }
            ErrorCode::MfaChallengeEnded => "too many wrong codes; sign in again",
            ErrorCode::MfaLocked => "too many wrong codes lately; wait a few minutes and try again",
            ErrorCode::RefreshTokenInvalid => "the refresh token is not valid; sign in again",
            ErrorCode::ClientAuthenticationFailed => "the application could not be authenticated",
            ErrorCode::PasswordExpired => {
                "the password has expired. Your organization doesn't allow you to update your password on this site. Update it according to the method recommended by your organization, or ask your admin if you need help."
            }
            ErrorCode::PasswordMustChange => {
                "the password must be changed before it can be used. Your organization doesn't allow you to update your password on this site. Update it according to the method recommended by your organization, or ask your admin if you need help."
            }
            ErrorCode::PasswordRejected => {
                "the new password does not meet the organisation's password policy"
            }
            ErrorCode::WritebackDisabled => {
                "Your organization doesn't allow you to update your password on this site. Update it according to the method recommended by your organization, or ask your admin if you need help."
            }
            ErrorCode::NoAgentAvailable => {
                "no agent is available to check the password; try again shortly"
            }
            ErrorCode::AgentTimeout => "the password check took too long; try again",
            ErrorCode::AgentLost => "the agent checking the password went away; try again",
            ErrorCode::DirectoryUnavailable => "the directory is unavailable; try again later",
            ErrorCode::AgentRejected => "the password could not be checked; try again",
            ErrorCode::AnswerNotAuthentic => {
                "the password check's answer could not be verified; try again"
            }
            ErrorCode::EnrolmentRefused => "enrolment refused",
            ErrorCode::AgentNotTrusted => "the agent is not trusted",
            ErrorCode::AgentRevoked => "the agent is revoked; enrol it again",
            ErrorCode::GatewayNotPermitted => "this caller may not act for the tenant",
            ErrorCode::AdminNotAuthorised => "not authorised",
            ErrorCode::Throttled => "too many sign-ins; try again shortly",
            ErrorCode::Internal => "internal error",
        }
    }

    /// The status for this code with its fixed [`ErrorCode::public_message`].
    pub fn public_status(self) -> Status {
        self.status(self.public_message())
    }

    /// The status for this code, with `message` (which must not contain secrets).
    pub fn status(self, message: impl fmt::Display) -> Status {
        let details = ErrorDetails::with_error_info(self.as_str(), DOMAIN, []);
        Status::with_error_details(
            self.grpc_code(),
            format!("{}: {message}", self.as_str()),
            details,
        )
    }

    /// The Passage code a status carries, if any (from its `ErrorInfo`, else its message).
    pub fn of(status: &Status) -> Option<ErrorCode> {
        if let Some(info) = status.get_details_error_info()
            && info.domain == DOMAIN
        {
            return ErrorCode::parse(&info.reason);
        }
        status
            .message()
            .split_once(':')
            .and_then(|(code, _)| ErrorCode::parse(code))
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {code}");
            assert_eq!(ErrorCode::parse(code.as_str()), Some(*code));
            let status = code.status("something happened");
            assert_eq!(status.code(), code.grpc_code());
            assert_eq!(ErrorCode::of(&status), Some(*code));
            assert!(status.message().starts_with(code.as_str()));
            let public = code.public_status();
            assert_eq!(ErrorCode::of(&public), Some(*code));
            assert!(!code.public_message().is_empty());
        }
    }

    /// `docs/errors.md` lists every code with its gRPC status and the message users see; this
    /// keeps the table and the enum from drifting apart.
    #[test]
    fn the_documented_table_matches_the_codes() {
        let table = include_str!("../../../docs/errors.md");
        let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| `PSG")).collect();
        assert_eq!(rows.len(), ErrorCode::ALL.len(), "one row per code");
        for code in ErrorCode::ALL {
            let row = rows
                .iter()
                .find(|r| r.starts_with(&format!("| `{}` |", code.as_str())))
                .unwrap_or_else(|| panic!("{code} is not in docs/errors.md"));
            let grpc = format!("{:?}", code.grpc_code());
            let screaming: String = grpc
                .chars()
                .enumerate()
                .flat_map(|(i, c)| {
                    let sep = (i > 0 && c.is_uppercase()).then_some('_');
                    sep.into_iter().chain(c.to_uppercase())
                })
                .collect();
            assert!(row.contains(&format!("| {screaming} |")), "{code}: {row}");
            assert!(row.contains(code.public_message()), "{code}: {row}");
        }
    }

    #[test]
    fn foreign_status_has_no_code() {
        assert_eq!(ErrorCode::of(&Status::internal("boom")), None);
    }
}

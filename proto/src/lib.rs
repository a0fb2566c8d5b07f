//! Passage's wire contract, generated from `proto/passage/v1/*.proto`.
//!
//! This crate is the only place generated code lives; every service depends on it.

/// `passage.v1`: sign-in, dispatcher and agent-tunnel messages and services.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("passage.v1");
}

impl std::fmt::Debug for v1::SignInRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignInRequest")
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .field("client_id", &self.client_id)
            .field("client_ip", &self.client_ip)
            .finish()
    }
}

impl std::fmt::Debug for v1::PasswordPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordPayload")
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .field(
                "new_password",
                &if self.new_password.is_empty() {
                    ""
                } else {
                    "[redacted]"
                },
            )
            .field("tenant", &self.tenant)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A redacting `Debug` for a message: `shown` fields print, `hidden` ones print as
/// `[redacted]` when set (so an empty one still reads as empty).
macro_rules! redacting_debug {
    ($message:ident { shown: [$($shown:ident),*], hidden: [$($hidden:ident),*] }) => {
        impl std::fmt::Debug for v1::$message {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let mut out = f.debug_struct(stringify!($message));
                $(out.field(stringify!($shown), &self.$shown);)*
                $(out.field(
                    stringify!($hidden),
                    &if self.$hidden.is_empty() { "" } else { "[redacted]" },
                );)*
                out.finish_non_exhaustive()
            }
        }
    };
}

redacting_debug!(SignInResponse {
    shown: [token_type, expires_in, mfa_challenge_expires_in],
    hidden: [access_token, id_token, refresh_token, mfa_challenge]
});
redacting_debug!(CompleteMfaRequest {
    shown: [client_id, client_ip, offline_access],
    hidden: [mfa_challenge, code]
});
redacting_debug!(CompleteMfaResponse {
    shown: [token_type, expires_in],
    hidden: [access_token, id_token, refresh_token]
});
redacting_debug!(RefreshRequest {
    shown: [client_id],
    hidden: [refresh_token, client_secret]
});
redacting_debug!(RefreshResponse {
    shown: [token_type, expires_in],
    hidden: [access_token, id_token, refresh_token]
});
redacting_debug!(ChangePasswordRequest {
    shown: [username, client_id, client_ip, offline_access],
    hidden: [old_password, new_password]
});
redacting_debug!(ChangePasswordResponse {
    shown: [token_type, expires_in, mfa_challenge_expires_in],
    hidden: [access_token, id_token, refresh_token, mfa_challenge]
});
redacting_debug!(EnrolRequest {
    shown: [tenant, hostname, version, connector_group],
    hidden: [token]
});

/// The metadata key of a `Dispatcher.Validate` error that says how many candidate agents were
/// lost after they were sent the password (as `ValidateResponse.lost_attempts` does on an
/// answer): each may have bound to the directory, and smart lockout counts them.
pub const LOST_ATTEMPTS_HEADER: &str = "passage-lost-attempts";

/// Encoded `FileDescriptorSet` of `passage.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("passage_descriptor");

#[cfg(test)]
mod tests {
    #[test]
    fn password_messages_print_redacted() {
        let request = super::v1::SignInRequest {
            username: "alice@corp.example.com".into(),
            password: "Hunter2-secret".into(),
            ..Default::default()
        };
        let payload = super::v1::PasswordPayload {
            password: b"Hunter2-secret".to_vec(),
            ..Default::default()
        };
        let printed = format!("{request:?} {payload:?}");
        assert!(!printed.contains("Hunter2"), "{printed}");
        assert!(printed.contains("alice@corp.example.com"));
    }

    #[test]
    fn token_and_secret_messages_print_redacted() {
        use super::v1::*;
        let secret = "s3cret-value";
        let printed = format!(
            "{:?} {:?} {:?} {:?} {:?} {:?}",
            SignInResponse {
                access_token: secret.into(),
                id_token: secret.into(),
                refresh_token: secret.into(),
                mfa_challenge: secret.into(),
                token_type: "Bearer".into(),
                ..Default::default()
            },
            CompleteMfaRequest {
                mfa_challenge: secret.into(),
                code: secret.into(),
                client_id: "app".into(),
                ..Default::default()
            },
            CompleteMfaResponse {
                access_token: secret.into(),
                id_token: secret.into(),
                refresh_token: secret.into(),
                ..Default::default()
            },
            RefreshRequest {
                refresh_token: secret.into(),
                client_id: "app".into(),
                client_secret: secret.into(),
            },
            RefreshResponse {
                access_token: secret.into(),
                id_token: secret.into(),
                refresh_token: secret.into(),
                ..Default::default()
            },
            EnrolRequest {
                token: secret.into(),
                tenant: "corp".into(),
                ..Default::default()
            },
        );
        assert!(!printed.contains(secret), "{printed}");
        assert!(printed.contains("[redacted]") && printed.contains("Bearer"));
        assert!(printed.contains("app") && printed.contains("corp"));
    }
}

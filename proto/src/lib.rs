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
            .field("tenant", &self.tenant)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

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
}

//! Configuration problems: a client registration Passage refuses to start with, or a client
//! secret that could not be hashed. Protocol errors are not here: they are answers to a
//! request ([`AuthorizeError`](crate::authorize::AuthorizeError),
//! [`TokenError`](crate::token::TokenError)), not faults of the provider.

/// Why the provider's configuration cannot be used. Every message names the client and the
/// value at fault, so that the operator can fix the configuration file from it alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    /// A client registered without an id.
    #[error("a client is registered with an empty id")]
    EmptyClientId,
    /// A client id with a character outside printable ASCII (RFC 6749 Appendix A.1 allows
    /// `%x20-7E` only).
    #[error("client id {id:?}: only printable ASCII characters are allowed")]
    InvalidClientId {
        /// The id as registered.
        id: String,
    },
    /// Two clients registered with the same id.
    #[error("client {id:?} is registered more than once")]
    DuplicateClient {
        /// The id registered twice.
        id: String,
    },
    /// A redirect URI (or a post-logout one) that cannot be registered.
    #[error("client {client:?}: {field} entry {uri:?}: {reason}")]
    InvalidRedirectUri {
        /// The client's id.
        client: String,
        /// Which list the URI is in: `redirect_uris` or `post_logout_redirect_uris`.
        field: &'static str,
        /// The URI as registered.
        uri: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A `secret_hash` that is not an Argon2id PHC string.
    #[error("client {client:?}: secret_hash is not an Argon2id PHC string: {reason}")]
    InvalidSecretHash {
        /// The client's id.
        client: String,
        /// What is wrong with it (the hash itself is not repeated).
        reason: String,
    },
    /// An empty client secret was given to hash.
    #[error("a client secret must not be empty")]
    EmptySecret,
    /// Argon2 could not hash a client secret.
    #[error("hashing the client secret failed: {0}")]
    Hash(String),
}

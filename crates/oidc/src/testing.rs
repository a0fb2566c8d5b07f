//! Fixtures shared by the unit tests.

use std::sync::OnceLock;

use crate::client::{Client, Clients, hash_secret};

/// The secret of the confidential client `web`.
pub(crate) const WEB_SECRET: &str = "web-secret+with%special chars:";

/// The public client's redirect URI.
pub(crate) const SPA_REDIRECT: &str = "https://spa.example.com/cb";

/// The confidential client's redirect URI (with a query, which must be kept).
pub(crate) const WEB_REDIRECT: &str = "https://web.example.com/login/callback?tenant=a";

/// Two clients: `spa`, public, and `web`, confidential with [`WEB_SECRET`]. Hashed once for
/// all the tests (Argon2 is slow on purpose).
pub(crate) fn clients() -> &'static Clients {
    static CLIENTS: OnceLock<Clients> = OnceLock::new();
    CLIENTS.get_or_init(|| {
        Clients::new(vec![
            Client {
                id: "spa".to_owned(),
                name: "Single-page app".to_owned(),
                redirect_uris: vec![
                    SPA_REDIRECT.to_owned(),
                    "http://localhost:3000/cb".to_owned(),
                ],
                post_logout_redirect_uris: vec!["https://spa.example.com/".to_owned()],
                secret_hash: None,
            },
            Client {
                id: "web".to_owned(),
                name: "Web app".to_owned(),
                redirect_uris: vec![WEB_REDIRECT.to_owned()],
                post_logout_redirect_uris: Vec::new(),
                secret_hash: Some(hash_secret(WEB_SECRET).expect("hashing")),
            },
        ])
        .expect("valid clients")
    })
}

/// A parameter list from pairs.
pub(crate) fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

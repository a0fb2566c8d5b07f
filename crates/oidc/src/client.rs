//! The applications allowed to sign users in, and how they prove who they are.
//!
//! A client is *confidential* when it has a secret (kept here only as an Argon2id hash, so a
//! copy of the configuration does not let anyone act as the application) and *public* when
//! it has none: a single-page or native app that could not keep one. Public clients must use
//! PKCE (RFC 9700 §2.1.1); confidential clients may.
//!
//! The registry is checked once, when the gateway starts, so that a typo in a redirect URI is
//! a startup error naming the client rather than a sign-in failing later:
//!
//! * ids are non-empty printable ASCII (RFC 6749 Appendix A.1) and unique;
//! * redirect URIs (and post-logout ones) are absolute, without a fragment (RFC 6749 §3.1.2),
//!   of printable ASCII, and either `https://host…`, `http://` to a loopback host
//!   (`localhost`, `127.0.0.1`, `[::1]`: development, and native apps' loopback redirects,
//!   RFC 8252 §7.3), or a native app's private
//!   scheme named as a reverse domain (`com.example.app:/callback`, RFC 8252 §7.1), which
//!   also keeps `javascript:`, `data:` and their kind out;
//! * a `secret_hash` is an Argon2id PHC string with valid parameters.
//!
//! At request time redirect URIs are compared exactly, byte for byte (RFC 9700 §2.1): no
//! prefix, no wildcard, no normalisation of case, ports or trailing slashes. One exception, for
//! public clients only (native apps, which listen on whatever port the system gives them): a
//! loopback IP literal redirect URI (`http://127.0.0.1/…`, `http://[::1]/…`) matches on any
//! port (RFC 8252 §7.3). A confidential client's ports are matched exactly like the rest.

use std::collections::HashMap;
use std::fmt;

use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::OidcError;
use crate::tokens::random_bytes;

/// Salt length in bytes (the PHC string format's recommendation).
const SALT_BYTES: usize = 16;

/// Random bytes in a generated client secret.
const SECRET_BYTES: usize = 32;

/// A registered application.
///
/// `Debug` does not print the secret hash, only whether there is one.
#[derive(Clone, PartialEq, Eq)]
pub struct Client {
    /// The `client_id`; also the audience of the tokens issued to the client.
    pub id: String,
    /// The name shown on the sign-in page ("Continue to …").
    pub name: String,
    /// Where the authorization response may be sent, compared exactly.
    pub redirect_uris: Vec<String>,
    /// Where RP-initiated logout may send the user back to, compared exactly.
    pub post_logout_redirect_uris: Vec<String>,
    /// The Argon2id PHC string of the client secret ([`hash_secret`]); `None` for a public
    /// client, which must use PKCE.
    pub secret_hash: Option<String>,
}

impl Client {
    /// Whether the client has no secret (a single-page or native app). Public clients
    /// authenticate with `none` at the token endpoint and must use PKCE.
    pub fn is_public(&self) -> bool {
        self.secret_hash.is_none()
    }

    /// Whether `uri` is one of the client's redirect URIs, compared exactly (RFC 9700 §2.1);
    /// a public client's loopback IP redirect URIs match on any port (RFC 8252 §7.3).
    pub fn redirect_uri_registered(&self, uri: &str) -> bool {
        self.redirect_uris.iter().any(|registered| {
            registered == uri
                || (self.is_public()
                    && loopback_without_port(registered).is_some()
                    && loopback_without_port(registered) == loopback_without_port(uri))
        })
    }

    /// Whether `uri` is one of the client's post-logout redirect URIs, compared exactly.
    /// (Native applications' loopback redirect URIs match on any port: see
    /// [`loopback_without_port`].)
    pub fn post_logout_uri_registered(&self, uri: &str) -> bool {
        self.post_logout_redirect_uris
            .iter()
            .any(|registered| registered == uri)
    }

    /// Whether `secret` is the client's secret. Always `false` for a public client, for an
    /// empty secret, and for a hash that is not a PHC string.
    ///
    /// Runs Argon2 with the hash's parameters (tens of milliseconds of CPU, 19 MiB with the
    /// defaults): call it off the async runtime. The comparison of the outputs is constant
    /// time.
    pub fn verify_secret(&self, secret: &str) -> bool {
        let Some(phc) = &self.secret_hash else {
            return false;
        };
        if secret.is_empty() {
            return false;
        }
        let Ok(hash) = PasswordHash::new(phc) else {
            return false;
        };
        Argon2::default()
            .verify_password(secret.as_bytes(), &hash)
            .is_ok()
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("redirect_uris", &self.redirect_uris)
            .field("post_logout_redirect_uris", &self.post_logout_redirect_uris)
            .field(
                "secret_hash",
                &self.secret_hash.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

/// The Argon2id hash of a client secret as a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`,
/// argon2's default parameters, OWASP's minimum), with a random 16-byte salt: what the
/// configuration keeps as `secret_hash`.
///
/// # Errors
///
/// [`OidcError::EmptySecret`] for an empty secret; [`OidcError::Hash`] when Argon2 fails.
///
/// # Panics
///
/// When the system random source fails.
pub fn hash_secret(secret: &str) -> Result<String, OidcError> {
    if secret.is_empty() {
        return Err(OidcError::EmptySecret);
    }
    let salt = SaltString::encode_b64(&random_bytes::<SALT_BYTES>())
        .map_err(|err| OidcError::Hash(err.to_string()))?;
    let hash = Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map_err(|err| OidcError::Hash(err.to_string()))?;
    Ok(hash.to_string())
}

/// A new client secret: 32 random bytes, URL-safe base64 without padding (43 characters),
/// safe to put in a form or, URL-encoded or not, in HTTP Basic authentication.
///
/// # Panics
///
/// When the system random source fails.
pub fn generate_secret() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<SECRET_BYTES>())
}

/// The registered clients, checked (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct Clients {
    by_id: HashMap<String, Client>,
}

impl Clients {
    /// Checks `clients` and makes the registry.
    ///
    /// # Errors
    ///
    /// The first registration that breaks a rule of the module documentation, naming the
    /// client and the value at fault.
    pub fn new(clients: Vec<Client>) -> Result<Self, OidcError> {
        let mut by_id = HashMap::with_capacity(clients.len());
        for client in clients {
            check_client(&client)?;
            if by_id.contains_key(&client.id) {
                return Err(OidcError::DuplicateClient { id: client.id });
            }
            by_id.insert(client.id.clone(), client);
        }
        Ok(Self { by_id })
    }

    /// The client registered as `id`, compared exactly.
    pub fn get(&self, id: &str) -> Option<&Client> {
        self.by_id.get(id)
    }
}

/// Checks one registration.
fn check_client(client: &Client) -> Result<(), OidcError> {
    if client.id.is_empty() {
        return Err(OidcError::EmptyClientId);
    }
    if !client.id.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(OidcError::InvalidClientId {
            id: client.id.clone(),
        });
    }
    for (field, uris) in [
        ("redirect_uris", &client.redirect_uris),
        (
            "post_logout_redirect_uris",
            &client.post_logout_redirect_uris,
        ),
    ] {
        for uri in uris {
            check_redirect_uri(uri).map_err(|reason| OidcError::InvalidRedirectUri {
                client: client.id.clone(),
                field,
                uri: uri.clone(),
                reason,
            })?;
        }
    }
    if let Some(phc) = &client.secret_hash {
        check_secret_hash(phc).map_err(|reason| OidcError::InvalidSecretHash {
            client: client.id.clone(),
            reason,
        })?;
    }
    Ok(())
}

/// Whether `phc` is an Argon2id PHC string with a salt, an output and valid parameters.
fn check_secret_hash(phc: &str) -> Result<(), String> {
    let hash = PasswordHash::new(phc).map_err(|err| err.to_string())?;
    if hash.algorithm.as_str() != "argon2id" {
        return Err(format!(
            "the algorithm is {}, not argon2id",
            hash.algorithm.as_str()
        ));
    }
    if hash.salt.is_none() {
        return Err("it has no salt".to_owned());
    }
    if hash.hash.is_none() {
        return Err("it has no hash output".to_owned());
    }
    argon2::Params::try_from(&hash).map_err(|err| err.to_string())?;
    Ok(())
}

/// Whether `uri` can be registered as a redirect URI; why not otherwise.
fn check_redirect_uri(uri: &str) -> Result<(), &'static str> {
    if uri.is_empty() {
        return Err("is empty");
    }
    if !uri.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err("has a space, a control character or a non-ASCII character");
    }
    if uri.contains('#') {
        return Err("has a fragment, which a redirect URI must not have (RFC 6749 §3.1.2)");
    }
    let Some((scheme, rest)) = uri.split_once(':') else {
        return Err("is not an absolute URI: it has no scheme");
    };
    if !valid_scheme(scheme) {
        return Err("is not an absolute URI: its scheme is not valid");
    }
    match scheme.to_ascii_lowercase().as_str() {
        "https" => host_of(rest).map(|_| ()),
        "http" => {
            if is_loopback(host_of(rest)?) {
                Ok(())
            } else {
                Err(
                    "uses http: only https is allowed, and http to localhost, 127.0.0.1 \
                     or [::1] for development and native apps",
                )
            }
        }
        _ if !scheme.contains('.') => Err(
            "a private-use scheme must be a reverse domain name such as com.example.app \
             (RFC 8252 §7.1)",
        ),
        _ if rest.is_empty() => Err("has nothing after its scheme"),
        _ => Ok(()),
    }
}

/// `scheme` of RFC 3986 §3.1: `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
fn valid_scheme(scheme: &str) -> bool {
    let mut bytes = scheme.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// The host of the hierarchical part `rest` (what follows `scheme:`), which must be
/// `//authority…`; an IPv6 literal keeps its brackets.
fn host_of(rest: &str) -> Result<&str, &'static str> {
    let Some(after) = rest.strip_prefix("//") else {
        return Err("has no authority: it must start with scheme://host");
    };
    let end = after.find(['/', '?']).unwrap_or(after.len());
    let authority = &after[..end];
    if authority.contains('@') {
        return Err("has user information before its host");
    }
    let (host, port) = if authority.starts_with('[') {
        let Some(close) = authority.find(']') else {
            return Err("has an IPv6 address without its closing bracket");
        };
        let after_host = &authority[close + 1..];
        let port = match after_host.strip_prefix(':') {
            Some(port) => port,
            None if after_host.is_empty() => "",
            None => return Err("has something other than a port after its IPv6 address"),
        };
        (&authority[..=close], port)
    } else {
        authority.rsplit_once(':').unwrap_or((authority, ""))
    };
    if host.is_empty() {
        return Err("has no host");
    }
    if port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err("has a port that is not a number");
    }
    Ok(host)
}

/// Whether `host` names the loopback interface.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host == "127.0.0.1" || host == "[::1]"
}

/// A loopback IP redirect URI (`http://127.0.0.1:PORT/...` or `http://[::1]:PORT/...`)
/// without its port: native applications listen on a port the system gives them, so such a
/// URI matches a registered one on any port (RFC 8252 §7.3). `localhost` is not a loopback IP
/// literal and keeps exact matching.
fn loopback_without_port(uri: &str) -> Option<String> {
    let rest = uri.strip_prefix("http://")?;
    let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let host = if let Some(v6) = authority.strip_prefix('[') {
        let end = v6.find(']')?;
        let host = &authority[..end + 2];
        let port = &authority[end + 2..];
        if !(port.is_empty() || port.starts_with(':')) {
            return None;
        }
        host
    } else {
        authority.split(':').next()?
    };
    matches!(host, "127.0.0.1" | "[::1]").then(|| format!("http://{host}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client with these redirect URIs and no secret.
    fn public(id: &str, redirect_uris: &[&str]) -> Client {
        Client {
            id: id.to_owned(),
            name: format!("{id} app"),
            redirect_uris: redirect_uris.iter().map(|u| (*u).to_owned()).collect(),
            post_logout_redirect_uris: Vec::new(),
            secret_hash: None,
        }
    }

    #[test]
    fn redirect_uris_are_compared_exactly() {
        let client = public("app", &["https://app.example.com/cb"]);
        assert!(client.redirect_uri_registered("https://app.example.com/cb"));
        for other in [
            "https://app.example.com/cb/",
            "https://app.example.com/cb?x=1",
            "https://app.example.com/c",
            "https://APP.example.com/cb",
            "https://app.example.com:443/cb",
            "http://app.example.com/cb",
            "https://app.example.com/cb/../cb",
            "",
        ] {
            assert!(!client.redirect_uri_registered(other), "{other}");
        }
    }

    #[test]
    fn post_logout_uris_are_compared_exactly_and_apart() {
        let mut client = public("app", &["https://app.example.com/cb"]);
        client.post_logout_redirect_uris = vec!["https://app.example.com/bye".to_owned()];
        assert!(client.post_logout_uri_registered("https://app.example.com/bye"));
        assert!(!client.post_logout_uri_registered("https://app.example.com/bye/"));
        assert!(!client.post_logout_uri_registered("https://app.example.com/cb"));
        assert!(!client.redirect_uri_registered("https://app.example.com/bye"));
    }

    #[test]
    fn secrets_hash_and_verify() {
        let secret = generate_secret();
        assert_eq!(secret.len(), 43);
        assert_ne!(secret, generate_secret());
        let hash = hash_secret(&secret).unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        let client = Client {
            secret_hash: Some(hash),
            ..public("app", &[])
        };
        assert!(!client.is_public());
        assert!(client.verify_secret(&secret));
        assert!(!client.verify_secret(&generate_secret()));
        assert!(!client.verify_secret(""));
        assert!(!client.verify_secret(&secret[..42]));
        assert_eq!(hash_secret(""), Err(OidcError::EmptySecret));
    }

    #[test]
    fn public_clients_and_bad_hashes_never_verify() {
        let client = public("app", &[]);
        assert!(client.is_public());
        assert!(!client.verify_secret("anything"));
        let client = Client {
            secret_hash: Some("not a PHC string".to_owned()),
            ..public("app", &[])
        };
        assert!(!client.verify_secret("not a PHC string"));
    }

    #[test]
    fn debug_output_holds_no_secret_hash() {
        let client = Client {
            secret_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA".to_owned()),
            ..public("app", &[])
        };
        let printed = format!("{client:?}");
        assert!(!printed.contains("argon2"), "{printed}");
        assert!(printed.contains("[redacted]"), "{printed}");
    }

    #[test]
    fn accepted_redirect_uris() {
        for uri in [
            "https://app.example.com/cb",
            "https://app.example.com:8443/login/callback?tenant=a",
            "https://192.0.2.1/cb",
            "HTTPS://app.example.com/cb",
            "https://app.example.com",
            "http://localhost:3000/cb",
            "http://LOCALHOST/cb",
            "http://127.0.0.1:8080/cb",
            "http://[::1]:8080/cb",
            "http://[::1]/cb",
            "com.example.app:/callback",
            "com.example.app://callback",
        ] {
            assert_eq!(check_redirect_uri(uri), Ok(()), "{uri}");
        }
    }

    #[test]
    fn refused_redirect_uris() {
        for uri in [
            "",
            "/cb",
            "app.example.com/cb",
            "https://app.example.com/cb#frag",
            "https://app.example.com/cb#",
            "https://app.example.com/a b",
            "https://app.example.com/caf\u{e9}",
            "https://app.example.com/\n",
            "https:app.example.com/cb",
            "https:///cb",
            "https://",
            "https://user:pw@app.example.com/cb",
            "https://app.example.com:port/cb",
            "https://[::1/cb",
            "https://[::1]x/cb",
            "http://app.example.com/cb",
            "http://127.0.0.2/cb",
            "http://localhost.evil.example/cb",
            "http://[::2]/cb",
            "javascript:alert(1)",
            "data:text/html,hi",
            "myapp:/cb",
            "com.example.app:",
            "1com.example.app:/cb",
            "com_example.app:/cb",
        ] {
            assert!(check_redirect_uri(uri).is_err(), "{uri:?}");
        }
    }

    #[test]
    fn the_registry_finds_clients_by_exact_id() {
        let clients = Clients::new(vec![
            public("app", &["https://app.example.com/cb"]),
            public("App", &[]),
        ])
        .unwrap();
        assert_eq!(clients.get("app").unwrap().name, "app app");
        assert_eq!(clients.get("App").unwrap().name, "App app");
        assert!(clients.get("APP").is_none());
        assert!(clients.get("").is_none());
    }

    #[test]
    fn ids_must_be_present_printable_and_unique() {
        assert_eq!(
            Clients::new(vec![public("", &[])]).unwrap_err(),
            OidcError::EmptyClientId
        );
        assert_eq!(
            Clients::new(vec![public("a\nb", &[])]).unwrap_err(),
            OidcError::InvalidClientId {
                id: "a\nb".to_owned()
            }
        );
        assert!(Clients::new(vec![public("caf\u{e9}", &[])]).is_err());
        assert_eq!(
            Clients::new(vec![public("app", &[]), public("app", &[])]).unwrap_err(),
            OidcError::DuplicateClient {
                id: "app".to_owned()
            }
        );
    }

    #[test]
    fn a_bad_redirect_uri_is_a_startup_error_naming_the_client() {
        let err = Clients::new(vec![public("app", &["http://app.example.com/cb"])]).unwrap_err();
        let OidcError::InvalidRedirectUri {
            client, field, uri, ..
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(
            (client.as_str(), *field, uri.as_str()),
            ("app", "redirect_uris", "http://app.example.com/cb")
        );
        assert!(err.to_string().contains("\"app\""), "{err}");

        let mut client = public("spa", &[]);
        client.post_logout_redirect_uris = vec!["https://spa.example.com/#bye".to_owned()];
        let err = Clients::new(vec![client]).unwrap_err();
        assert!(
            matches!(
                &err,
                OidcError::InvalidRedirectUri {
                    field: "post_logout_redirect_uris",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn secret_hashes_must_be_argon2id_phc_strings() {
        let good = hash_secret("s3cret").unwrap();
        let with = |hash: &str| Client {
            secret_hash: Some(hash.to_owned()),
            ..public("app", &[])
        };
        assert!(Clients::new(vec![with(&good)]).is_ok());
        let argon2i = good.replacen("argon2id", "argon2i", 1);
        for bad in [
            "",
            "s3cret",
            "$2b$12$abcdefghijklmnopqrstuv",
            argon2i.as_str(),
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0",
            "$argon2id$v=19$m=1,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
        ] {
            let err = Clients::new(vec![with(bad)]).unwrap_err();
            assert!(
                matches!(&err, OidcError::InvalidSecretHash { client, .. } if client == "app"),
                "{bad:?}: {err:?}"
            );
            assert!(bad.is_empty() || !err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn loopback_redirect_uris_match_on_any_port() {
        let client = Client {
            id: "cli".into(),
            name: String::new(),
            redirect_uris: vec![
                "http://127.0.0.1/callback".into(),
                "http://[::1]:8000/cb".into(),
                "http://localhost:9000/cb".into(),
            ],
            post_logout_redirect_uris: Vec::new(),
            secret_hash: None,
        };
        assert!(client.redirect_uri_registered("http://127.0.0.1:53712/callback"));
        assert!(client.redirect_uri_registered("http://[::1]:1/cb"));
        assert!(!client.redirect_uri_registered("http://127.0.0.1:53712/other"));
        assert!(!client.redirect_uri_registered("http://127.0.0.2:53712/callback"));
        assert!(!client.redirect_uri_registered("https://127.0.0.1:53712/callback"));
        // localhost is a name, not a loopback literal: exact matching.
        assert!(!client.redirect_uri_registered("http://localhost:9001/cb"));
        assert!(client.redirect_uri_registered("http://localhost:9000/cb"));
        // A confidential client is a server with a port of its own: exact matching.
        let confidential = Client {
            secret_hash: Some(hash_secret("s3cret-value").unwrap()),
            ..client
        };
        assert!(!confidential.redirect_uri_registered("http://127.0.0.1:53712/callback"));
        assert!(confidential.redirect_uri_registered("http://[::1]:8000/cb"));
        assert!(!confidential.redirect_uri_registered("http://[::1]:8001/cb"));
    }
}

//! The token endpoint's request (RFC 6749 §4.1.3, §6): who the client is, and what it wants
//! exchanged. Revocation (RFC 7009) and introspection (RFC 7662) authenticate their callers
//! with the same [`authenticate_client`].
//!
//! # Client authentication
//!
//! A client authenticates with exactly one method (RFC 6749 §2.3):
//!
//! * `client_secret_basic`: `Authorization: Basic base64(id ":" secret)`, where the id and
//!   the secret are each `application/x-www-form-urlencoded` first (RFC 6749 §2.3.1), so both
//!   are decoded (`+` is a space; a `%` not followed by two hex digits stays as it is, as in a
//!   form). A `client_id` in the form as well must name the same client.
//! * `client_secret_post`: `client_id` and `client_secret` in the form.
//! * `none`: a public client sends its `client_id` only; it proves nothing, and PKCE is what
//!   protects its codes.
//!
//! Every failure is `invalid_client` with the same description, whether the id is unknown,
//! the secret wrong or missing, or a public client sent a secret: the answer does not tell
//! which part was wrong. (Client ids are not secrets: an unknown id is answered without
//! running Argon2, and no effort is made to hide that in the timing.) When the client tried
//! the `Authorization` header the error asks for a `WWW-Authenticate: Basic` challenge, with
//! status 401 (RFC 6749 §5.2).
//!
//! # Grants
//!
//! `authorization_code` (`code` and `redirect_uri` required, the redirect URI compared by the
//! gateway with the one the code was issued for; `code_verifier` checked for syntax here and
//! against the code's challenge by the gateway) and `refresh_token` (with an optional `scope`,
//! a subset of the one granted: [`narrow_scope`]).
//!
//! The parameters read here may each appear once (RFC 6749 §3.2); one sent empty counts as
//! left out.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use crate::client::{Client, Clients};
use crate::params::{first_duplicate, get};
use crate::{pkce, scope};

/// The parameters of the token, revocation and introspection endpoints: each may appear
/// once.
const READ: &[&str] = &[
    "grant_type",
    "code",
    "redirect_uri",
    "code_verifier",
    "refresh_token",
    "scope",
    "client_id",
    "client_secret",
    "token",
    "token_type_hint",
];

/// What `invalid_client` says, whatever went wrong.
const CLIENT_AUTHENTICATION_FAILED: &str = "client authentication failed";

/// An error answer of the token, revocation or introspection endpoint (RFC 6749 §5.2): the
/// HTTP status, and the JSON body [`body`](Self::body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}: {description}")]
pub struct TokenError {
    /// The HTTP status: 400, or 401 for `invalid_client`, 500 for `server_error`.
    pub status: u16,
    /// The error code.
    pub error: &'static str,
    /// A sentence for the client's developer.
    pub description: String,
    /// Whether the answer must carry `WWW-Authenticate: Basic` (the client tried HTTP Basic
    /// authentication and failed).
    pub basic_challenge: bool,
}

impl TokenError {
    fn new(status: u16, error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            error,
            description: description.into(),
            basic_challenge: false,
        }
    }

    /// `invalid_request` (400): a parameter missing, repeated or malformed.
    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(400, "invalid_request", description)
    }

    /// `invalid_client` (401): the client could not be authenticated. `basic` when it tried
    /// the `Authorization` header, so that the answer carries a Basic challenge.
    pub fn invalid_client(basic: bool) -> Self {
        Self {
            basic_challenge: basic,
            ..Self::new(401, "invalid_client", CLIENT_AUTHENTICATION_FAILED)
        }
    }

    /// `invalid_grant` (400): the code or refresh token is unknown, expired, used, revoked,
    /// another client's, or its PKCE or redirect URI do not match.
    pub fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new(400, "invalid_grant", description)
    }

    /// `unauthorized_client` (400): this client may not use this grant.
    pub fn unauthorized_client(description: impl Into<String>) -> Self {
        Self::new(400, "unauthorized_client", description)
    }

    /// `unsupported_grant_type` (400).
    pub fn unsupported_grant_type(description: impl Into<String>) -> Self {
        Self::new(400, "unsupported_grant_type", description)
    }

    /// `invalid_scope` (400): the scope is malformed or exceeds what was granted.
    pub fn invalid_scope(description: impl Into<String>) -> Self {
        Self::new(400, "invalid_scope", description)
    }

    /// `unsupported_token_type` (400, RFC 7009 §2.2.1): the server cannot revoke this kind
    /// of token (Passage's access tokens are self-contained and stay valid until they expire).
    pub fn unsupported_token_type(description: impl Into<String>) -> Self {
        Self::new(400, "unsupported_token_type", description)
    }

    /// `server_error` (500): Passage failed (the store, signing). Not one of RFC 6749 §5.2's
    /// codes, but the usual answer for a fault of the server; say nothing internal in
    /// `description`.
    pub fn server_error(description: impl Into<String>) -> Self {
        Self::new(500, "server_error", description)
    }

    /// The JSON body: `{"error": …, "error_description": …}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": self.error,
            "error_description": self.description,
        })
    }
}

/// What a token request asks for.
///
/// `Debug` does not print the code, the verifier or the refresh token.
#[derive(Clone, PartialEq, Eq)]
pub enum Grant {
    /// `grant_type=authorization_code`.
    AuthorizationCode {
        /// The code, as the client received it.
        code: String,
        /// The redirect URI of the authorization request, repeated.
        redirect_uri: String,
        /// The PKCE verifier, well-formed, when the client sent one.
        code_verifier: Option<String>,
    },
    /// `grant_type=refresh_token`.
    RefreshToken {
        /// The refresh token.
        refresh_token: String,
        /// A narrower scope, when the client asked for one (see [`narrow_scope`]).
        scope: Option<String>,
    },
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const REDACTED: &str = "[redacted]";
        match self {
            Self::AuthorizationCode {
                redirect_uri,
                code_verifier,
                ..
            } => f
                .debug_struct("AuthorizationCode")
                .field("code", &REDACTED)
                .field("redirect_uri", redirect_uri)
                .field("code_verifier", &code_verifier.as_ref().map(|_| REDACTED))
                .finish(),
            Self::RefreshToken { scope, .. } => f
                .debug_struct("RefreshToken")
                .field("refresh_token", &REDACTED)
                .field("scope", scope)
                .finish(),
        }
    }
}

/// Authenticates the client of a token, revocation or introspection request, from the
/// `Authorization` header's value (when there is one) and the form. See the module
/// documentation for the methods and the answers.
///
/// Verifying a secret runs Argon2: call this off the async runtime.
///
/// # Errors
///
/// `invalid_request` for a repeated parameter, two authentication methods at once, or a
/// form `client_id` that is not the one of the header; `invalid_client` otherwise.
pub fn authenticate_client<'c>(
    clients: &'c Clients,
    authorization: Option<&str>,
    form: &[(String, String)],
) -> Result<&'c Client, TokenError> {
    if let Some(name) = first_duplicate(form, READ) {
        return Err(TokenError::invalid_request(format!(
            "{name} is given more than once"
        )));
    }
    let form_id = get(form, "client_id");
    let form_secret = get(form, "client_secret");
    let Some(header) = authorization else {
        // client_secret_post, or none.
        let Some(id) = form_id else {
            return Err(TokenError::invalid_client(false));
        };
        let client = clients
            .get(id)
            .ok_or_else(|| TokenError::invalid_client(false))?;
        return match (client.is_public(), form_secret) {
            (true, None) => Ok(client),
            (false, Some(secret)) if client.verify_secret(secret) => Ok(client),
            _ => Err(TokenError::invalid_client(false)),
        };
    };
    // client_secret_basic.
    if form_secret.is_some() {
        return Err(TokenError::invalid_request(
            "the client authenticated twice: with the Authorization header and client_secret",
        ));
    }
    let (id, secret) = basic_credentials(header).ok_or_else(|| TokenError::invalid_client(true))?;
    if form_id.is_some_and(|form_id| form_id != id) {
        return Err(TokenError::invalid_request(
            "client_id is not the client of the Authorization header",
        ));
    }
    match clients.get(&id) {
        Some(client) if !client.is_public() && client.verify_secret(&secret) => Ok(client),
        _ => Err(TokenError::invalid_client(true)),
    }
}

/// The client id and secret of an `Authorization: Basic` value, decoded; `None` for another
/// scheme or anything malformed.
fn basic_credentials(header: &str) -> Option<(String, Zeroizing<String>)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = Zeroizing::new(STANDARD.decode(encoded.trim()).ok()?);
    let text = std::str::from_utf8(&decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let id = form_decode(id)?;
    let secret = Zeroizing::new(form_decode(secret)?);
    if id.is_empty() {
        return None;
    }
    Some((id, secret))
}

/// Decodes `application/x-www-form-urlencoded` text: `+` is a space, `%` and two hex digits
/// a byte; a `%` not followed by two hex digits stays as it is (as browsers and the
/// `form_urlencoded` crate read forms). `None` when the bytes are not UTF-8.
fn form_decode(text: &str) -> Option<String> {
    fn hex(byte: Option<&u8>) -> Option<u8> {
        let digit = char::from(*byte?).to_digit(16)?;
        u8::try_from(digit).ok()
    }
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                decoded.push(b' ');
                i += 1;
            }
            b'%' => match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                (Some(high), Some(low)) => {
                    decoded.push((high << 4) | low);
                    i += 3;
                }
                _ => {
                    decoded.push(b'%');
                    i += 1;
                }
            },
            byte => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(decoded).ok()
}

/// Reads the grant of a token request (the client is authenticated apart, with
/// [`authenticate_client`]).
///
/// # Errors
///
/// `invalid_request` for a missing or repeated parameter or a malformed `code_verifier`;
/// `unsupported_grant_type` for a grant other than `authorization_code` and
/// `refresh_token`.
pub fn parse_grant(form: &[(String, String)]) -> Result<Grant, TokenError> {
    if let Some(name) = first_duplicate(form, READ) {
        return Err(TokenError::invalid_request(format!(
            "{name} is given more than once"
        )));
    }
    let required = |name: &'static str| {
        get(form, name).ok_or_else(|| TokenError::invalid_request(format!("{name} is missing")))
    };
    match required("grant_type")? {
        "authorization_code" => {
            let code = required("code")?;
            let redirect_uri = required("redirect_uri")?;
            let code_verifier = get(form, "code_verifier");
            if code_verifier.is_some_and(|verifier| !pkce::valid_verifier(verifier)) {
                return Err(TokenError::invalid_request(
                    "code_verifier must be 43 to 128 characters of A-Z a-z 0-9 - . _ ~",
                ));
            }
            Ok(Grant::AuthorizationCode {
                code: code.to_owned(),
                redirect_uri: redirect_uri.to_owned(),
                code_verifier: code_verifier.map(str::to_owned),
            })
        }
        "refresh_token" => Ok(Grant::RefreshToken {
            refresh_token: required("refresh_token")?.to_owned(),
            scope: get(form, "scope").map(str::to_owned),
        }),
        _ => Err(TokenError::unsupported_grant_type(
            "grant_type must be authorization_code or refresh_token",
        )),
    }
}

/// The scope of a refreshed token: `granted` (the scope of the original grant) when the
/// client asked for none, else the `requested` one, normalised, which may only hold scopes
/// that were granted (RFC 6749 §6).
///
/// # Errors
///
/// `invalid_scope` for a malformed scope or one asking for more than was granted.
pub fn narrow_scope(granted: &str, requested: Option<&str>) -> Result<String, TokenError> {
    let Some(requested) = requested else {
        return Ok(granted.to_owned());
    };
    let requested = scope::tokens(requested).map_err(|_| {
        TokenError::invalid_scope("scope holds a character a scope token may not have")
    })?;
    if requested.is_empty() {
        return Ok(granted.to_owned());
    }
    let granted: Vec<&str> = granted.split(' ').filter(|t| !t.is_empty()).collect();
    if let Some(extra) = requested
        .iter()
        .copied()
        .find(|token| !granted.contains(token))
    {
        return Err(TokenError::invalid_scope(format!(
            "{extra} was not granted: a refresh may only narrow the scope"
        )));
    }
    Ok(requested.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{WEB_REDIRECT, WEB_SECRET, clients, params};

    fn basic(id: &str, secret: &str) -> String {
        let encode =
            |text: &str| form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
        format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", encode(id), encode(secret)))
        )
    }

    fn authenticated(header: Option<&str>, form: &[(&str, &str)]) -> Result<String, TokenError> {
        authenticate_client(clients(), header, &params(form)).map(|client| client.id.clone())
    }

    #[test]
    fn client_secret_basic() {
        let header = basic("web", WEB_SECRET);
        assert_eq!(authenticated(Some(header.as_str()), &[]).unwrap(), "web");
        // The scheme is case-insensitive; the same client_id in the form is fine.
        let lower = header.replacen("Basic", "basic", 1);
        assert_eq!(
            authenticated(Some(lower.as_str()), &[("client_id", "web")]).unwrap(),
            "web"
        );
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let encoded = STANDARD.encode("my%20app:a+b%3Ac%25%zz%");
        assert_eq!(
            basic_credentials(&format!("Basic {encoded}"))
                .map(|(id, secret)| (id, secret.as_str().to_owned())),
            Some(("my app".to_owned(), "a b:c%%zz%".to_owned()))
        );
        // A secret sent without encoding is read as encoded: its + is a space.
        let raw = format!("Basic {}", STANDARD.encode(format!("web:{WEB_SECRET}")));
        assert_eq!(
            authenticated(Some(raw.as_str()), &[]),
            Err(TokenError::invalid_client(true))
        );
    }

    #[test]
    fn a_failed_basic_authentication_asks_for_basic() {
        for header in [
            basic("web", "wrong"),
            basic("web", ""),
            basic("nobody", WEB_SECRET),
            basic("", WEB_SECRET),
            // A public client presenting a secret.
            basic("spa", "anything"),
            "Basic".to_owned(),
            "Basic !!!".to_owned(),
            format!("Basic {}", STANDARD.encode("no colon")),
            format!("Basic {}", STANDARD.encode([0xff, b':', b'x'])),
            format!("Bearer {}", STANDARD.encode(format!("web:{WEB_SECRET}"))),
            String::new(),
        ] {
            let err = authenticated(Some(header.as_str()), &[]).unwrap_err();
            assert_eq!(err, TokenError::invalid_client(true), "{header:?}");
            assert_eq!(err.status, 401);
            assert!(err.basic_challenge);
        }
    }

    #[test]
    fn client_secret_post() {
        let form = [("client_id", "web"), ("client_secret", WEB_SECRET)];
        assert_eq!(authenticated(None, &form).unwrap(), "web");
        for form in [
            &[("client_id", "web"), ("client_secret", "wrong")][..],
            // A confidential client without its secret.
            &[("client_id", "web")][..],
            &[("client_id", "web"), ("client_secret", "")][..],
            &[("client_id", "nobody"), ("client_secret", WEB_SECRET)][..],
            &[("client_secret", WEB_SECRET)][..],
            &[][..],
        ] {
            let err = authenticated(None, form).unwrap_err();
            assert_eq!(err, TokenError::invalid_client(false), "{form:?}");
            assert_eq!(err.status, 401);
            assert!(!err.basic_challenge);
        }
    }

    #[test]
    fn public_clients_send_their_id_alone() {
        assert_eq!(authenticated(None, &[("client_id", "spa")]).unwrap(), "spa");
        assert_eq!(
            authenticated(None, &[("client_id", "spa"), ("client_secret", "x")]),
            Err(TokenError::invalid_client(false))
        );
        assert_eq!(
            authenticated(None, &[("client_id", "SPA")]),
            Err(TokenError::invalid_client(false))
        );
    }

    #[test]
    fn every_failure_reads_the_same() {
        let wrong_secret = authenticated(None, &[("client_id", "web"), ("client_secret", "x")]);
        let unknown = authenticated(None, &[("client_id", "nobody"), ("client_secret", "x")]);
        assert_eq!(wrong_secret, unknown);
        assert_eq!(
            unknown.unwrap_err().body(),
            serde_json::json!({
                "error": "invalid_client",
                "error_description": "client authentication failed",
            })
        );
    }

    #[test]
    fn one_method_and_one_client_at_a_time() {
        let header = basic("web", WEB_SECRET);
        let err =
            authenticated(Some(header.as_str()), &[("client_secret", WEB_SECRET)]).unwrap_err();
        assert_eq!(err.error, "invalid_request");
        assert_eq!(err.status, 400);
        let err = authenticated(Some(header.as_str()), &[("client_id", "spa")]).unwrap_err();
        assert_eq!(err.error, "invalid_request");
    }

    #[test]
    fn repeated_parameters_are_refused() {
        let form = [("client_id", "spa"), ("client_id", "spa")];
        assert_eq!(
            authenticated(None, &form).unwrap_err().error,
            "invalid_request"
        );
        let form = params(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "a"),
            ("refresh_token", "b"),
        ]);
        assert_eq!(parse_grant(&form).unwrap_err().error, "invalid_request");
        // Parameters nobody reads may repeat.
        let form = [("client_id", "spa"), ("x", "1"), ("x", "2")];
        assert_eq!(authenticated(None, &form).unwrap(), "spa");
    }

    #[test]
    fn the_authorization_code_grant() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let grant = parse_grant(&params(&[
            ("grant_type", "authorization_code"),
            ("code", "c0de"),
            ("redirect_uri", WEB_REDIRECT),
            ("code_verifier", verifier),
            ("client_id", "web"),
        ]))
        .unwrap();
        assert_eq!(
            grant,
            Grant::AuthorizationCode {
                code: "c0de".to_owned(),
                redirect_uri: WEB_REDIRECT.to_owned(),
                code_verifier: Some(verifier.to_owned()),
            }
        );
        let without_pkce = parse_grant(&params(&[
            ("grant_type", "authorization_code"),
            ("code", "c0de"),
            ("redirect_uri", WEB_REDIRECT),
        ]))
        .unwrap();
        assert!(matches!(
            without_pkce,
            Grant::AuthorizationCode {
                code_verifier: None,
                ..
            }
        ));
    }

    #[test]
    fn an_authorization_code_grant_needs_its_parameters() {
        let full = [
            ("grant_type", "authorization_code"),
            ("code", "c0de"),
            ("redirect_uri", WEB_REDIRECT),
        ];
        for missing in ["grant_type", "code", "redirect_uri"] {
            let form: Vec<(&str, &str)> = full
                .iter()
                .copied()
                .filter(|(k, _)| *k != missing)
                .collect();
            let err = parse_grant(&params(&form)).unwrap_err();
            assert_eq!(err.error, "invalid_request", "{missing}");
            assert!(err.description.contains(missing), "{err:?}");
        }
        let short = "a".repeat(42);
        for verifier in [
            short.as_str(),
            "dBjftJeZ4CVP+mB92K27uhbUJU1p1r/wW1gFWFOEjXk",
        ] {
            let mut form = full.to_vec();
            form.push(("code_verifier", verifier));
            assert_eq!(
                parse_grant(&params(&form)).unwrap_err().error,
                "invalid_request"
            );
        }
    }

    #[test]
    fn the_refresh_token_grant() {
        let grant = parse_grant(&params(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "r3fresh"),
            ("scope", "openid"),
        ]))
        .unwrap();
        assert_eq!(
            grant,
            Grant::RefreshToken {
                refresh_token: "r3fresh".to_owned(),
                scope: Some("openid".to_owned()),
            }
        );
        let err = parse_grant(&params(&[("grant_type", "refresh_token")])).unwrap_err();
        assert_eq!(err.error, "invalid_request");
    }

    #[test]
    fn other_grant_types_are_unsupported() {
        for grant_type in [
            "client_credentials",
            "password",
            "implicit",
            "AUTHORIZATION_CODE",
        ] {
            let err = parse_grant(&params(&[("grant_type", grant_type)])).unwrap_err();
            assert_eq!(err.error, "unsupported_grant_type", "{grant_type}");
            assert_eq!(err.status, 400);
        }
    }

    #[test]
    fn debug_output_holds_no_token() {
        let grants = [
            Grant::AuthorizationCode {
                code: "secret-code".to_owned(),
                redirect_uri: WEB_REDIRECT.to_owned(),
                code_verifier: Some("secret-verifier".to_owned()),
            },
            Grant::RefreshToken {
                refresh_token: "secret-refresh".to_owned(),
                scope: None,
            },
        ];
        let printed = format!("{grants:?}");
        assert!(!printed.contains("secret"), "{printed}");
        assert!(printed.contains(WEB_REDIRECT), "{printed}");
    }

    #[test]
    fn a_refresh_may_narrow_the_scope_only() {
        let granted = "openid profile email offline_access";
        assert_eq!(narrow_scope(granted, None).unwrap(), granted);
        assert_eq!(narrow_scope(granted, Some("  ")).unwrap(), granted);
        assert_eq!(
            narrow_scope(granted, Some("email  openid email")).unwrap(),
            "email openid"
        );
        for wider in [
            "openid groups",
            "admin",
            "openid profile email offline_access x",
        ] {
            let err = narrow_scope(granted, Some(wider)).unwrap_err();
            assert_eq!(err.error, "invalid_scope", "{wider}");
        }
        assert_eq!(
            narrow_scope(granted, Some("openid \"x\""))
                .unwrap_err()
                .error,
            "invalid_scope"
        );
    }

    #[test]
    fn statuses_and_bodies() {
        assert_eq!(TokenError::invalid_request("x").status, 400);
        assert_eq!(TokenError::invalid_grant("x").status, 400);
        assert_eq!(
            TokenError::unauthorized_client("x").error,
            "unauthorized_client"
        );
        assert_eq!(TokenError::invalid_scope("x").status, 400);
        assert_eq!(TokenError::server_error("x").status, 500);
        assert!(!TokenError::invalid_client(false).basic_challenge);
        assert_eq!(
            TokenError::invalid_grant("the code was already used").body(),
            serde_json::json!({
                "error": "invalid_grant",
                "error_description": "the code was already used",
            })
        );
    }
}

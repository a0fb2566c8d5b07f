//! The authorization request (RFC 6749 §4.1.1, OpenID Connect Core 1.0 §3.1.2.1) and the
//! redirects that answer it.
//!
//! # Who sees an error
//!
//! Until the request's `client_id` names a registered client and its `redirect_uri` is one of
//! that client's, exactly, nothing is sent to the redirect URI: the error is
//! [`AuthorizeError::NoRedirect`], shown on Passage's own page (RFC 6749 §4.1.2.1), so that
//! Passage cannot be used as an open redirector. `redirect_uri` is required even when the
//! client has a single one registered: OpenID Connect requires it, and the token request must
//! then repeat it.
//!
//! Once the redirect URI is trusted, errors go back to the application as
//! [`AuthorizeError::Redirect`], with the codes of RFC 6749 §4.1.2.1 and OpenID Connect Core
//! §3.1.2.6, the request's `state`, and `iss` (RFC 9207, so that a client talking to several
//! providers can tell which one answered).
//!
//! # What is accepted
//!
//! * `response_type=code` only, answered in the query (`response_mode=query` or none).
//! * `scope` must include `openid`; scope tokens are checked (printable ASCII but `"` and
//!   `\`, RFC 6749 §3.3), repeats and extra spaces dropped.
//! * PKCE with `S256` only (RFC 7636, RFC 9700 §2.1.1); required of public clients. A
//!   confidential client may leave it out, but what it sends must be valid. A
//!   `code_challenge` without `code_challenge_method` means `plain` (RFC 7636 §4.3) and is
//!   refused like `plain`.
//! * `prompt`: Passage keeps no browser session, so every authorization asks for the
//!   password. `none` therefore always answers `login_required`; `login` is what happens
//!   anyway (and is carried on as [`AuthorizationRequest::prompt_login`]); `consent` and
//!   `select_account` are accepted and have nothing to do (Passage asks no consent: its
//!   clients are registered by the operator; there is one account per sign-in).
//! * `max_age` must be a non-negative integer; with no session it is always met, since the
//!   user authenticates now.
//! * `state`, `nonce`, `login_hint`, `ui_locales` and `scope` have length limits, so that a
//!   request cannot grow the pages, the codes' records or the redirects without bound.
//! * Request objects (`request`, `request_uri`) and dynamic registration (`registration`) are
//!   not supported and say so with their own error codes. `claims`, `display`, `acr_values`
//!   and `id_token_hint` are ignored, as the specification allows.
//!
//! Parameters sent twice are refused (RFC 6749 §3.1); parameters sent empty count as left
//! out; unknown parameters are ignored.

use std::fmt;

use crate::client::Clients;
use crate::params::{first_duplicate, get};
use crate::{pkce, scope};

/// Most characters in `state`.
pub const MAX_STATE_CHARS: usize = 1024;
/// The scopes Passage grants; others asked for are left out.
pub const SUPPORTED_SCOPES: [&str; 5] = ["openid", "profile", "email", "groups", "offline_access"];

/// Most characters in `nonce`.
pub const MAX_NONCE_CHARS: usize = 512;
/// Most characters in `login_hint`.
pub const MAX_LOGIN_HINT_CHARS: usize = 512;
/// Most characters in `ui_locales`.
pub const MAX_UI_LOCALES_CHARS: usize = 256;
/// Most characters in `scope`.
pub const MAX_SCOPE_CHARS: usize = 1024;

/// The parameters this module reads: each may appear once.
const READ: &[&str] = &[
    "client_id",
    "redirect_uri",
    "response_type",
    "response_mode",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "prompt",
    "max_age",
    "login_hint",
    "ui_locales",
    "request",
    "request_uri",
    "registration",
];

const INVALID_REQUEST: &str = "invalid_request";
const INVALID_SCOPE: &str = "invalid_scope";

/// An authorization request that passed every check: what the sign-in page carries on, and
/// what the code records once the user signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationRequest {
    /// The registered client asking.
    pub client_id: String,
    /// One of the client's registered redirect URIs, exactly as registered.
    pub redirect_uri: String,
    /// The scope, normalised: tokens separated by single spaces, no repeats, `openid` among
    /// them.
    pub scope: String,
    /// Opaque to Passage; returned with the answer.
    pub state: Option<String>,
    /// Opaque to Passage; put in the ID token.
    pub nonce: Option<String>,
    /// The `S256` PKCE challenge, when the client sent one (always for a public client).
    pub code_challenge: Option<String>,
    /// Whether the client asked `prompt=login`. Passage asks for the password every time
    /// anyway; kept so that the request survives the sign-in form unchanged.
    pub prompt_login: bool,
    /// The client's `max_age`, in seconds. Always met: the user authenticates now.
    pub max_age: Option<u64>,
    /// A username to prefill the sign-in form with.
    pub login_hint: Option<String>,
    /// The user's preferred languages for the pages, as BCP 47 tags separated by spaces.
    pub ui_locales: Option<String>,
}

/// Why an authorization request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorizeError {
    /// The client or its redirect URI cannot be trusted: show `message` on Passage's page
    /// and redirect nowhere. The message is for the user (and the developer looking over
    /// their shoulder); it never echoes the request.
    #[error("{message}")]
    NoRedirect {
        /// What is wrong, in English.
        message: String,
    },
    /// Send the error back to the application.
    #[error("{0}")]
    Redirect(ErrorRedirect),
}

/// An error response to send back to the application's (trusted) redirect URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorRedirect {
    /// The client's registered redirect URI the request named.
    pub redirect_uri: String,
    /// The request's `state`, to return. `None` when it had none, or sent it twice, or sent
    /// one too long to return.
    pub state: Option<String>,
    /// The error code (RFC 6749 §4.1.2.1, OpenID Connect Core §3.1.2.6).
    pub error: &'static str,
    /// A sentence for the application's developer.
    pub description: String,
}

impl ErrorRedirect {
    /// Where to send the browser: the redirect URI with `error`, `error_description`,
    /// `state` and `iss` (RFC 9207) added to its query (a query it already has is kept,
    /// RFC 6749 §3.1.2). `issuer` is Passage's issuer identifier.
    ///
    /// Characters `error_description` may not hold (RFC 6749 §4.1.2.1: printable ASCII but
    /// `"` and `\`) are replaced by spaces.
    pub fn location(&self, issuer: &str) -> String {
        let description: String = self
            .description
            .chars()
            .map(|c| {
                if matches!(c, '\x20'..='\x21' | '\x23'..='\x5b' | '\x5d'..='\x7e') {
                    c
                } else {
                    ' '
                }
            })
            .collect();
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("error", self.error);
        query.append_pair("error_description", &description);
        if let Some(state) = &self.state {
            query.append_pair("state", state);
        }
        query.append_pair("iss", issuer);
        with_query(&self.redirect_uri, &query.finish())
    }
}

impl fmt::Display for ErrorRedirect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error, self.description)
    }
}

impl AuthorizationRequest {
    /// The request as parameters, for the sign-in form's hidden fields: parsing them again
    /// gives this request back, so the form carries the request without Passage keeping
    /// anything between the page and its submission. `response_type=code` is included, and
    /// `code_challenge_method=S256` with a challenge.
    pub fn to_params(&self) -> Vec<(&'static str, String)> {
        let mut params = vec![
            ("client_id", self.client_id.clone()),
            ("redirect_uri", self.redirect_uri.clone()),
            ("response_type", "code".to_owned()),
            ("scope", self.scope.clone()),
        ];
        if let Some(state) = &self.state {
            params.push(("state", state.clone()));
        }
        if let Some(nonce) = &self.nonce {
            params.push(("nonce", nonce.clone()));
        }
        if let Some(challenge) = &self.code_challenge {
            params.push(("code_challenge", challenge.clone()));
            params.push(("code_challenge_method", pkce::METHOD_S256.to_owned()));
        }
        if self.prompt_login {
            params.push(("prompt", "login".to_owned()));
        }
        if let Some(max_age) = self.max_age {
            params.push(("max_age", max_age.to_string()));
        }
        if let Some(hint) = &self.login_hint {
            params.push(("login_hint", hint.clone()));
        }
        if let Some(locales) = &self.ui_locales {
            params.push(("ui_locales", locales.clone()));
        }
        params
    }
}

/// Where to send the browser once the user signed in: the redirect URI with `code`, `state`
/// (when the request had one) and `iss` (RFC 9207) added to its query.
pub fn success_location(
    redirect_uri: &str,
    code: &str,
    state: Option<&str>,
    issuer: &str,
) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("code", code);
    if let Some(state) = state {
        query.append_pair("state", state);
    }
    query.append_pair("iss", issuer);
    with_query(redirect_uri, &query.finish())
}

/// `uri` with `query` (already encoded) added to its query component.
fn with_query(uri: &str, query: &str) -> String {
    let separator = if !uri.contains('?') {
        "?"
    } else if uri.ends_with('?') || uri.ends_with('&') {
        ""
    } else {
        "&"
    };
    format!("{uri}{separator}{query}")
}

/// Reads and checks an authorization request: the parameters of a `GET /authorize` query, or
/// of the sign-in form's submission (from which the gateway took the credentials and the
/// CSRF token). See the module documentation for the rules.
///
/// # Errors
///
/// [`AuthorizeError::NoRedirect`] while the client or its redirect URI is not trusted,
/// [`AuthorizeError::Redirect`] afterwards.
pub fn parse(
    params: &[(String, String)],
    clients: &Clients,
) -> Result<AuthorizationRequest, AuthorizeError> {
    if let Some(name) = first_duplicate(params, &["client_id", "redirect_uri"]) {
        return Err(no_redirect(format!(
            "The request is not valid: {name} is given more than once."
        )));
    }
    let Some(client_id) = get(params, "client_id") else {
        return Err(no_redirect(
            "The request does not say which application it is for (client_id is missing).",
        ));
    };
    let Some(client) = clients.get(client_id) else {
        return Err(no_redirect(
            "The application asking you to sign in is not registered (unknown client_id).",
        ));
    };
    let Some(redirect_uri) = get(params, "redirect_uri") else {
        return Err(no_redirect(
            "The request does not say where to return to (redirect_uri is missing).",
        ));
    };
    if !client.redirect_uri_registered(redirect_uri) {
        return Err(no_redirect(
            "The request asks to return to an address that is not registered for this \
             application (redirect_uri).",
        ));
    }

    // From here on the redirect URI is trusted, and errors go back to it.
    let state = match first_duplicate(params, &["state"]) {
        Some(_) => None,
        None => get(params, "state").filter(|state| state.chars().count() <= MAX_STATE_CHARS),
    };
    let back = Back {
        redirect_uri,
        state,
    };

    if let Some(name) = first_duplicate(params, READ) {
        return Err(back.error(INVALID_REQUEST, format!("{name} is given more than once")));
    }
    if get(params, "request").is_some() {
        return Err(back.error("request_not_supported", "request objects are not supported"));
    }
    if get(params, "request_uri").is_some() {
        return Err(back.error("request_uri_not_supported", "request_uri is not supported"));
    }
    if get(params, "registration").is_some() {
        return Err(back.error(
            "registration_not_supported",
            "dynamic registration is not supported",
        ));
    }
    match get(params, "response_type") {
        None => return Err(back.error(INVALID_REQUEST, "response_type is missing")),
        Some("code") => {}
        Some(_) => {
            return Err(back.error(
                "unsupported_response_type",
                "only response_type=code is supported",
            ));
        }
    }
    if get(params, "response_mode").is_some_and(|mode| mode != "query") {
        return Err(back.error(INVALID_REQUEST, "only response_mode=query is supported"));
    }

    let requested_scope = get(params, "scope").unwrap_or_default();
    if requested_scope.len() > MAX_SCOPE_CHARS {
        return Err(back.error(INVALID_SCOPE, "scope is too long"));
    }
    let Ok(scope_tokens) = scope::tokens(requested_scope) else {
        return Err(back.error(
            INVALID_SCOPE,
            "scope holds a character a scope token may not have",
        ));
    };
    if !scope_tokens.contains(&"openid") {
        return Err(back.error(INVALID_SCOPE, "scope must include openid"));
    }
    // Scopes Passage does not grant are left out (as Keycloak does), so that no client can
    // put a scope of its choosing into an access token a resource server trusts.
    let scope = scope_tokens
        .into_iter()
        .filter(|token| SUPPORTED_SCOPES.contains(token))
        .collect::<Vec<_>>()
        .join(" ");

    let code_challenge = get(params, "code_challenge");
    match (code_challenge, get(params, "code_challenge_method")) {
        (None, None) if client.is_public() => {
            return Err(back.error(INVALID_REQUEST, "PKCE with S256 is required"));
        }
        (None, None) => {}
        (None, Some(_)) => {
            return Err(back.error(
                INVALID_REQUEST,
                "code_challenge_method is given without code_challenge",
            ));
        }
        (Some(challenge), Some(pkce::METHOD_S256)) => {
            if !pkce::valid_challenge(challenge) {
                return Err(back.error(
                    INVALID_REQUEST,
                    "code_challenge is not an S256 challenge (43 characters of base64url)",
                ));
            }
        }
        (Some(_), _) => {
            return Err(back.error(
                INVALID_REQUEST,
                "code_challenge_method must be S256 (plain is not supported)",
            ));
        }
    }

    let prompt =
        Prompt::parse(get(params, "prompt")).map_err(|why| back.error(INVALID_REQUEST, why))?;

    let max_age = get(params, "max_age")
        .map(|text| {
            parse_max_age(text).ok_or_else(|| {
                back.error(INVALID_REQUEST, "max_age must be a non-negative integer")
            })
        })
        .transpose()?;

    let state = get(params, "state");
    let nonce = get(params, "nonce");
    let login_hint = get(params, "login_hint");
    let ui_locales = get(params, "ui_locales");
    for (name, value, limit) in [
        ("state", state, MAX_STATE_CHARS),
        ("nonce", nonce, MAX_NONCE_CHARS),
        ("login_hint", login_hint, MAX_LOGIN_HINT_CHARS),
        ("ui_locales", ui_locales, MAX_UI_LOCALES_CHARS),
    ] {
        if value.is_some_and(|value| value.chars().count() > limit) {
            return Err(back.error(
                INVALID_REQUEST,
                format!("{name} is longer than {limit} characters"),
            ));
        }
        // No control characters: they would not come back unchanged through the page's
        // hidden fields (and `state` is printable ASCII by RFC 6749 Appendix A).
        let bad = |c: char| c.is_control() || (name == "state" && !c.is_ascii());
        if value.is_some_and(|value| value.chars().any(bad)) {
            return Err(back.error(
                INVALID_REQUEST,
                format!("{name} holds a character it may not have"),
            ));
        }
    }

    // Checked last, so that a malformed request hears what is wrong with it first.
    if prompt.none {
        return Err(back.error(
            "login_required",
            "Passage keeps no session: the user must sign in",
        ));
    }

    Ok(AuthorizationRequest {
        client_id: client.id.clone(),
        redirect_uri: redirect_uri.to_owned(),
        scope,
        state: state.map(str::to_owned),
        nonce: nonce.map(str::to_owned),
        code_challenge: code_challenge.map(str::to_owned),
        prompt_login: prompt.login,
        max_age,
        login_hint: login_hint.map(str::to_owned),
        ui_locales: ui_locales.map(str::to_owned),
    })
}

fn no_redirect(message: impl Into<String>) -> AuthorizeError {
    AuthorizeError::NoRedirect {
        message: message.into(),
    }
}

/// Where errors go once the redirect URI is trusted.
struct Back<'a> {
    redirect_uri: &'a str,
    state: Option<&'a str>,
}

impl Back<'_> {
    fn error(&self, error: &'static str, description: impl Into<String>) -> AuthorizeError {
        AuthorizeError::Redirect(ErrorRedirect {
            redirect_uri: self.redirect_uri.to_owned(),
            state: self.state.map(str::to_owned),
            error,
            description: description.into(),
        })
    }
}

/// The `prompt` values that change anything.
struct Prompt {
    none: bool,
    login: bool,
}

impl Prompt {
    /// Reads `prompt`: space-separated values among `none`, `login`, `consent` and
    /// `select_account`, `none` alone.
    fn parse(prompt: Option<&str>) -> Result<Self, &'static str> {
        let (mut none, mut login, mut others) = (false, false, false);
        for value in prompt
            .unwrap_or_default()
            .split(' ')
            .filter(|v| !v.is_empty())
        {
            match value {
                "none" => none = true,
                "login" => login = true,
                "consent" | "select_account" => {}
                _ => {
                    return Err("prompt values must be none, login, consent or select_account");
                }
            }
            others |= value != "none";
        }
        if none && others {
            return Err("prompt=none cannot be combined with other values");
        }
        Ok(Self { none, login })
    }
}

/// `max_age`: decimal digits only (no sign, no spaces), within `u64`.
fn parse_max_age(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{SPA_REDIRECT, WEB_REDIRECT, clients, params};
    use proptest::prelude::*;

    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    const ISSUER: &str = "https://login.example.com";

    /// A valid request of the public client, with `changes` applied: a pair replaces the
    /// parameter of that name, or is added; an empty value removes it.
    fn spa(changes: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut list = params(&[
            ("client_id", "spa"),
            ("redirect_uri", SPA_REDIRECT),
            ("response_type", "code"),
            ("scope", "openid profile"),
            ("state", "st4te"),
            ("nonce", "n0nce"),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
        ]);
        for (name, value) in changes {
            list.retain(|(k, _)| k != name);
            if !value.is_empty() {
                list.push(((*name).to_owned(), (*value).to_owned()));
            }
        }
        list
    }

    /// The error code and state a redirect carries, or a panic.
    fn redirected(result: Result<AuthorizationRequest, AuthorizeError>) -> ErrorRedirect {
        match result {
            Err(AuthorizeError::Redirect(redirect)) => redirect,
            other => panic!("expected a redirect, got {other:?}"),
        }
    }

    fn error_of(changes: &[(&str, &str)]) -> &'static str {
        redirected(parse(&spa(changes), clients())).error
    }

    fn no_redirect_message(list: &[(String, String)]) -> String {
        match parse(list, clients()) {
            Err(AuthorizeError::NoRedirect { message }) => message,
            other => panic!("expected an error page, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_request_is_read_whole() {
        let request = parse(
            &spa(&[
                ("scope", " openid  profile openid email "),
                ("max_age", "300"),
                ("login_hint", "ada@example.com"),
                ("ui_locales", "fr-CA en"),
                ("prompt", "login consent"),
                ("unknown", "ignored"),
                ("claims", "{}"),
            ]),
            clients(),
        )
        .unwrap();
        assert_eq!(
            request,
            AuthorizationRequest {
                client_id: "spa".to_owned(),
                redirect_uri: SPA_REDIRECT.to_owned(),
                scope: "openid profile email".to_owned(),
                state: Some("st4te".to_owned()),
                nonce: Some("n0nce".to_owned()),
                code_challenge: Some(CHALLENGE.to_owned()),
                prompt_login: true,
                max_age: Some(300),
                login_hint: Some("ada@example.com".to_owned()),
                ui_locales: Some("fr-CA en".to_owned()),
            }
        );
    }

    #[test]
    fn the_request_survives_the_sign_in_form() {
        for changes in [
            &[][..],
            &[
                ("max_age", "0"),
                ("prompt", "login"),
                ("login_hint", "a&b=\"c\""),
            ][..],
            &[("state", ""), ("nonce", ""), ("ui_locales", "de")][..],
            &[("prompt", "select_account")][..],
        ] {
            let request = parse(&spa(changes), clients()).unwrap();
            let carried: Vec<(String, String)> = request
                .to_params()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            assert_eq!(parse(&carried, clients()).unwrap(), request, "{changes:?}");
        }
        // A confidential client without PKCE.
        let list = params(&[
            ("client_id", "web"),
            ("redirect_uri", WEB_REDIRECT),
            ("response_type", "code"),
            ("scope", "openid"),
        ]);
        let request = parse(&list, clients()).unwrap();
        assert_eq!(request.code_challenge, None);
        let carried = request.to_params();
        assert!(!carried.iter().any(|(k, _)| k.starts_with("code_challenge")));
        let carried: Vec<(String, String)> = carried
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(parse(&carried, clients()).unwrap(), request);
    }

    #[test]
    fn an_untrusted_client_or_redirect_uri_is_never_redirected_to() {
        for list in [
            spa(&[("client_id", "")]),
            spa(&[("client_id", "nobody")]),
            spa(&[("client_id", "SPA")]),
            spa(&[("redirect_uri", "")]),
            spa(&[("redirect_uri", "https://evil.example.com/cb")]),
            spa(&[("redirect_uri", "https://spa.example.com/cb/")]),
            spa(&[("redirect_uri", "https://spa.example.com/cb?x=1")]),
            // Another client's URI.
            spa(&[("redirect_uri", WEB_REDIRECT)]),
        ] {
            let message = no_redirect_message(&list);
            assert!(!message.contains("evil"), "{message}");
        }
        let mut twice = spa(&[]);
        twice.push((
            "redirect_uri".to_owned(),
            "https://evil.example.com/cb".to_owned(),
        ));
        assert!(no_redirect_message(&twice).contains("redirect_uri"));
        let mut twice = spa(&[]);
        twice.push(("client_id".to_owned(), "web".to_owned()));
        assert!(no_redirect_message(&twice).contains("client_id"));
    }

    #[test]
    fn errors_after_the_redirect_uri_is_trusted_go_back_with_the_state() {
        let redirect = redirected(parse(&spa(&[("response_type", "token")]), clients()));
        assert_eq!(
            redirect,
            ErrorRedirect {
                redirect_uri: SPA_REDIRECT.to_owned(),
                state: Some("st4te".to_owned()),
                error: "unsupported_response_type",
                description: "only response_type=code is supported".to_owned(),
            }
        );
    }

    #[test]
    fn a_parameter_given_twice_is_refused() {
        for name in [
            "scope",
            "state",
            "nonce",
            "code_challenge",
            "code_challenge_method",
            "response_type",
        ] {
            let mut list = spa(&[]);
            let value = get(&list, name).unwrap().to_owned();
            list.push((name.to_owned(), value));
            let redirect = redirected(parse(&list, clients()));
            assert_eq!(redirect.error, "invalid_request", "{name}");
            assert!(redirect.description.contains(name), "{name}");
            if name == "state" {
                assert_eq!(redirect.state, None);
            }
        }
        // Unknown parameters may repeat; an empty repeat counts as left out.
        let mut list = spa(&[]);
        list.push(("x".to_owned(), "1".to_owned()));
        list.push(("x".to_owned(), "2".to_owned()));
        list.push(("nonce".to_owned(), String::new()));
        assert!(parse(&list, clients()).is_ok());
    }

    #[test]
    fn response_type_and_mode() {
        assert_eq!(error_of(&[("response_type", "")]), "invalid_request");
        for other in ["token", "id_token", "code id_token", "Code", "code "] {
            assert_eq!(
                error_of(&[("response_type", other)]),
                "unsupported_response_type",
                "{other:?}"
            );
        }
        assert!(parse(&spa(&[("response_mode", "query")]), clients()).is_ok());
        for mode in ["fragment", "form_post", "Query"] {
            assert_eq!(
                error_of(&[("response_mode", mode)]),
                "invalid_request",
                "{mode}"
            );
        }
    }

    #[test]
    fn unsupported_features_say_so() {
        assert_eq!(error_of(&[("request", "eyJ...")]), "request_not_supported");
        assert_eq!(
            error_of(&[("request_uri", "https://spa.example.com/req")]),
            "request_uri_not_supported"
        );
        assert_eq!(
            error_of(&[("registration", "{}")]),
            "registration_not_supported"
        );
    }

    #[test]
    fn scope_must_include_openid_and_be_well_formed() {
        // Scopes Passage does not grant are left out, never passed into tokens.
        let request = parse(
            &spa(&[("scope", "openid admin:write profile offline_access")]),
            clients(),
        )
        .unwrap();
        assert_eq!(request.scope, "openid profile offline_access");
        for scope in ["", "profile email", "openidx", "OpenID"] {
            assert_eq!(error_of(&[("scope", scope)]), "invalid_scope", "{scope:?}");
        }
        for scope in [
            "openid \"x\"",
            "openid a\\b",
            "openid\tprofile",
            "openid caf\u{e9}",
        ] {
            assert_eq!(error_of(&[("scope", scope)]), "invalid_scope", "{scope:?}");
        }
        let long = format!("openid {}", "a".repeat(MAX_SCOPE_CHARS));
        assert_eq!(error_of(&[("scope", long.as_str())]), "invalid_scope");
        let request = parse(&spa(&[("scope", "profile openid")]), clients()).unwrap();
        assert_eq!(request.scope, "profile openid");
    }

    #[test]
    fn pkce_is_s256_only_and_required_of_public_clients() {
        // Public client without PKCE.
        let redirect = redirected(parse(
            &spa(&[("code_challenge", ""), ("code_challenge_method", "")]),
            clients(),
        ));
        assert_eq!(redirect.error, "invalid_request");
        assert_eq!(redirect.description, "PKCE with S256 is required");
        // plain, explicit or by default.
        assert_eq!(
            error_of(&[("code_challenge_method", "plain")]),
            "invalid_request"
        );
        assert_eq!(
            error_of(&[("code_challenge_method", "")]),
            "invalid_request"
        );
        assert_eq!(
            error_of(&[("code_challenge_method", "s256")]),
            "invalid_request"
        );
        assert_eq!(error_of(&[("code_challenge", "")]), "invalid_request");
        for bad in [
            &CHALLENGE[..42],
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw+cM",
        ] {
            assert_eq!(
                error_of(&[("code_challenge", bad)]),
                "invalid_request",
                "{bad}"
            );
        }
    }

    #[test]
    fn confidential_clients_may_leave_pkce_out_but_not_get_it_wrong() {
        let web = |extra: &[(&str, &str)]| {
            let mut list = params(&[
                ("client_id", "web"),
                ("redirect_uri", WEB_REDIRECT),
                ("response_type", "code"),
                ("scope", "openid"),
            ]);
            list.extend(params(extra));
            parse(&list, clients())
        };
        assert!(web(&[]).is_ok());
        let with_pkce = web(&[
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
        ]);
        assert_eq!(
            with_pkce.unwrap().code_challenge.as_deref(),
            Some(CHALLENGE)
        );
        for extra in [
            &[("code_challenge", CHALLENGE)][..],
            &[
                ("code_challenge", CHALLENGE),
                ("code_challenge_method", "plain"),
            ][..],
            &[
                ("code_challenge", "short"),
                ("code_challenge_method", "S256"),
            ][..],
            &[("code_challenge_method", "S256")][..],
        ] {
            let redirect = redirected(web(extra));
            assert_eq!(redirect.error, "invalid_request", "{extra:?}");
            assert_eq!(redirect.redirect_uri, WEB_REDIRECT);
        }
    }

    #[test]
    fn prompt_values() {
        assert_eq!(error_of(&[("prompt", "none")]), "login_required");
        assert_eq!(error_of(&[("prompt", "none none")]), "login_required");
        for bad in [
            "none login",
            "consent none",
            "bogus",
            "login bogus",
            "LOGIN",
        ] {
            assert_eq!(error_of(&[("prompt", bad)]), "invalid_request", "{bad}");
        }
        for (prompt, login) in [
            ("login", true),
            ("consent", false),
            ("select_account", false),
            ("consent  select_account login", true),
        ] {
            let request = parse(&spa(&[("prompt", prompt)]), clients()).unwrap();
            assert_eq!(request.prompt_login, login, "{prompt}");
        }
        // A malformed request hears about its fault before login_required.
        assert_eq!(
            error_of(&[("prompt", "none"), ("max_age", "-1")]),
            "invalid_request"
        );
    }

    #[test]
    fn max_age_is_a_non_negative_integer() {
        for good in ["0", "3600", "18446744073709551615"] {
            let request = parse(&spa(&[("max_age", good)]), clients()).unwrap();
            assert_eq!(request.max_age, good.parse::<u64>().ok());
        }
        for bad in ["-1", "+5", "1.5", " 5", "5s", "18446744073709551616", "abc"] {
            assert_eq!(error_of(&[("max_age", bad)]), "invalid_request", "{bad:?}");
        }
    }

    #[test]
    fn lengths_are_limited() {
        let at = |n: usize| "x".repeat(n);
        for (name, limit) in [
            ("state", MAX_STATE_CHARS),
            ("nonce", MAX_NONCE_CHARS),
            ("login_hint", MAX_LOGIN_HINT_CHARS),
            ("ui_locales", MAX_UI_LOCALES_CHARS),
        ] {
            let longest = at(limit);
            assert!(
                parse(&spa(&[(name, longest.as_str())]), clients()).is_ok(),
                "{name}"
            );
            let too_long = at(limit + 1);
            let redirect = redirected(parse(&spa(&[(name, too_long.as_str())]), clients()));
            assert_eq!(redirect.error, "invalid_request", "{name}");
            if name == "state" {
                // Too long to send back.
                assert_eq!(redirect.state, None);
            } else {
                assert_eq!(redirect.state.as_deref(), Some("st4te"));
            }
        }
        // Characters, not bytes.
        let accented = "\u{e9}".repeat(MAX_NONCE_CHARS);
        assert!(parse(&spa(&[("nonce", accented.as_str())]), clients()).is_ok());
        // No control characters anywhere, and state is ASCII.
        for (name, value) in [
            ("nonce", "a\rb"),
            ("login_hint", "ada\u{0}"),
            ("state", "caf\u{e9}"),
        ] {
            let redirect = redirected(parse(&spa(&[(name, value)]), clients()));
            assert_eq!(redirect.error, "invalid_request", "{name}");
        }
    }

    #[test]
    fn the_error_location_keeps_the_query_and_encodes_everything() {
        let redirect = ErrorRedirect {
            redirect_uri: WEB_REDIRECT.to_owned(),
            state: Some("a b&c=d/é".to_owned()),
            error: "invalid_request",
            description: "max_age must be \"a\" number\\".to_owned(),
        };
        assert_eq!(
            redirect.location(ISSUER),
            "https://web.example.com/login/callback?tenant=a&error=invalid_request\
             &error_description=max_age+must+be++a++number+\
             &state=a+b%26c%3Dd%2F%C3%A9&iss=https%3A%2F%2Flogin.example.com"
        );
        let redirect = ErrorRedirect {
            redirect_uri: SPA_REDIRECT.to_owned(),
            state: None,
            error: "login_required",
            description: "sign in".to_owned(),
        };
        assert_eq!(
            redirect.location(ISSUER),
            "https://spa.example.com/cb?error=login_required&error_description=sign+in\
             &iss=https%3A%2F%2Flogin.example.com"
        );
    }

    #[test]
    fn the_success_location() {
        assert_eq!(
            success_location(SPA_REDIRECT, "c0de", Some("s&t"), ISSUER),
            "https://spa.example.com/cb?code=c0de&state=s%26t&iss=https%3A%2F%2Flogin.example.com"
        );
        assert_eq!(
            success_location(WEB_REDIRECT, "c0de", None, ISSUER),
            "https://web.example.com/login/callback?tenant=a&code=c0de\
             &iss=https%3A%2F%2Flogin.example.com"
        );
        assert_eq!(
            success_location("com.example.app:/cb?", "c", None, "i"),
            "com.example.app:/cb?code=c&iss=i"
        );
    }

    proptest! {
        /// Whatever the parameters, parsing answers without panicking, and never redirects to
        /// a URI that is not registered.
        #[test]
        fn parse_never_panics_nor_redirects_anywhere_unregistered(
            pairs in proptest::collection::vec(
                (
                    prop_oneof![
                        Just("client_id".to_owned()),
                        Just("redirect_uri".to_owned()),
                        Just("response_type".to_owned()),
                        Just("scope".to_owned()),
                        Just("prompt".to_owned()),
                        Just("max_age".to_owned()),
                        Just("code_challenge".to_owned()),
                        Just("code_challenge_method".to_owned()),
                        "[a-z_]{1,12}",
                    ],
                    prop_oneof![
                        Just("spa".to_owned()),
                        Just(SPA_REDIRECT.to_owned()),
                        Just("code".to_owned()),
                        Just("openid".to_owned()),
                        Just(CHALLENGE.to_owned()),
                        Just("S256".to_owned()),
                        any::<String>(),
                    ],
                ),
                0..12,
            ),
        ) {
            match parse(&pairs, clients()) {
                Ok(request) => {
                    prop_assert!(clients()
                        .get(&request.client_id)
                        .is_some_and(|c| c.redirect_uri_registered(&request.redirect_uri)));
                }
                Err(AuthorizeError::Redirect(redirect)) => {
                    prop_assert!(clients()
                        .get("spa")
                        .is_some_and(|c| c.redirect_uri_registered(&redirect.redirect_uri)));
                }
                Err(AuthorizeError::NoRedirect { .. }) => {}
            }
        }
    }
}

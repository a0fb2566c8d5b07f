//! Tokens the gateway issues after a successful sign-in, and how anyone verifies them.
//!
//! Tokens are ES256 JWTs. The signing key is a P-256 key in PKCS#8 DER, read from a file that
//! must not be readable by group or others (generated there with mode 0600 on first start).
//! Its public half is published as a JWKS, and the OIDC discovery document points at it, so
//! any relying party can verify tokens without talking to Passage otherwise.
//!
//! Access and ID tokens share a key and most claims, so they are told apart by the JWT
//! header's `typ` (explicit typing, RFC 8725 §3.11): access tokens are `at+jwt` (RFC 9068),
//! ID tokens `JWT`. [`verify_access_token`] and [`verify_id_token`] each accept only their
//! own type, so an ID token cannot be replayed where an access token is expected.

mod keys;

use std::{
    sync::{Arc, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use jsonwebtoken::{
    Algorithm, DecodingKey, Header, Validation,
    jwk::{Jwk, JwkSet},
};
use serde::{Deserialize, Serialize};

pub use keys::{SigningKey, load_or_create_signing_key};

/// Token errors.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The key file could not be read, written or parsed, or has unsafe permissions.
    #[error("signing key: {0}")]
    Key(String),
    /// Signing failed.
    #[error("signing: {0}")]
    Sign(String),
    /// The requested scope is not a valid OAuth 2.0 scope (RFC 6749 §3.3).
    #[error("scope: {0}")]
    Scope(String),
    /// The token did not verify.
    #[error("token does not verify: {0}")]
    Invalid(String),
    /// The token verified but is of another type than the caller expects, e.g. an ID token
    /// presented as an access token.
    #[error("token type is {found:?}, expected {expected:?}")]
    WrongType {
        /// The `typ` the caller expects, as Passage writes it.
        expected: &'static str,
        /// The token's header `typ`; empty if it has none.
        found: String,
    },
}

/// Scope of access tokens from [`TokenIssuer::issue`]: the tokens always carry the profile
/// (name, UPN) and e-mail claims, so the scope says so.
pub const DEFAULT_SCOPE: &str = "openid profile email";

/// The kinds of token Passage issues, told apart by the JWT header's `typ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// OAuth 2.0 access token, `typ: at+jwt` (RFC 9068 §2.1).
    Access,
    /// OpenID Connect ID token, `typ: JWT`.
    Id,
}

impl TokenType {
    /// The header `typ` Passage writes for this type.
    pub fn header_typ(self) -> &'static str {
        match self {
            Self::Access => "at+jwt",
            Self::Id => "JWT",
        }
    }

    /// Whether the header `typ` names this type.
    fn matches(self, typ: &str) -> bool {
        // `typ` is a media type (RFC 7515 §4.1.9): compared case-insensitively, and the
        // "application/" prefix may be left out; RFC 9068 §4 names both spellings.
        let lower = typ.to_ascii_lowercase();
        let bare = lower.strip_prefix("application/").unwrap_or(lower.as_str());
        bare.eq_ignore_ascii_case(self.header_typ())
    }
}

/// Claims of Passage's access and ID tokens.
///
/// Both carry the same identity claims; `client_id` and `scope` are only in access tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer: the gateway's public URL.
    pub iss: String,
    /// Subject: the directory's stable id for the user (falls back to the DN).
    pub sub: String,
    /// Audience: the client_id.
    pub aud: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Not before, Unix seconds.
    pub nbf: u64,
    /// Unique token id.
    pub jti: String,
    /// Access tokens only: the client the token was issued to (RFC 9068 §2.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Access tokens only: granted scopes, space-separated (RFC 9068 §2.2.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Tenant.
    pub tid: String,
    /// userPrincipalName, as the directory spells it.
    pub upn: String,
    /// The name the user signed in with (OpenID Connect's `preferred_username`): the cloud
    /// username, which may differ from the on-premises `upn` (an alternate login ID, a
    /// `DOMAIN\user` name).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub preferred_username: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// E-mail address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub email: String,
    /// Group names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// How the user authenticated (RFC 8176): `pwd`, then `otp` after a TOTP code or `mfa`
    /// after a recovery code.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    /// The authentication context class: [`ACR_PASSWORD`] or [`ACR_MFA`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub acr: String,
    /// ID tokens of the browser flow: the `nonce` of the authorization request, echoed so the
    /// relying party can bind the token to its session (OpenID Connect Core §3.1.2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// When the user typed their password (Unix seconds); in ID tokens of the browser flow
    /// and of refreshes, where it stays the original sign-in's time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<u64>,
    /// ID tokens only, when the directory warned at sign-in that the password expires soon:
    /// seconds after `iat` at which it expires (as Entra's `pwd_exp`), so the application can
    /// tell the user to change it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pwd_exp: Option<u64>,
}

/// `acr` of a sign-in with a password alone.
pub const ACR_PASSWORD: &str = "urn:passage:acr:pwd";
/// `acr` of a sign-in with a password and a second factor.
pub const ACR_MFA: &str = "urn:passage:acr:mfa";

/// How a user authenticated, and for how long the tokens hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authentication {
    /// `amr` values (RFC 8176).
    pub methods: Vec<String>,
    /// The token lifetime, when a policy shortens it (never longer than the issuer's own).
    pub lifetime: Option<Duration>,
}

impl Authentication {
    /// A password alone.
    pub fn password() -> Self {
        Self {
            methods: vec!["pwd".into()],
            lifetime: None,
        }
    }

    /// A password and a second factor (`otp` for a TOTP code, `mfa` for a recovery code).
    pub fn with_second_factor(method: &str) -> Self {
        Self {
            methods: vec!["pwd".into(), method.into()],
            lifetime: None,
        }
    }

    /// Whether a second factor was used.
    pub fn multi_factor(&self) -> bool {
        self.methods.len() > 1
    }
}

/// Who signed in, as the token describes them.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    /// Stable subject id.
    pub sub: String,
    /// Tenant.
    pub tenant: String,
    /// userPrincipalName.
    pub upn: String,
    /// The name typed at sign-in (may differ from `upn`).
    pub preferred_username: String,
    /// Display name.
    pub name: String,
    /// E-mail address.
    pub email: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Seconds until the password expires, when the directory warned at sign-in.
    pub password_expires_in_s: Option<u64>,
}

/// What a token request adds to the claims beyond who signed in and how.
#[derive(Debug, Clone, Default)]
pub struct TokenRequest<'a> {
    /// Granted scopes, space-separated (normalised; empty becomes `openid`).
    pub scope: &'a str,
    /// The authorization request's `nonce`, for the ID token.
    pub nonce: Option<&'a str>,
    /// When the user authenticated (Unix seconds), for the ID token's `auth_time`.
    pub auth_time: Option<u64>,
}

/// A freshly issued token pair. Its `Debug` leaves both tokens out: they are bearer
/// credentials.
#[derive(Clone)]
pub struct IssuedTokens {
    /// JWT access token (`typ: at+jwt`, RFC 9068).
    pub access_token: String,
    /// OpenID Connect ID token.
    pub id_token: String,
    /// Lifetime of both.
    pub expires_in: Duration,
}

impl std::fmt::Debug for IssuedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedTokens")
            .field("access_token", &"[redacted]")
            .field("id_token", &"[redacted]")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// The keys an issuer signs with and publishes: one signs, the others (retired keys whose
/// tokens may still be valid) are only published so those tokens keep verifying.
#[derive(Debug)]
struct KeyRing {
    signing: SigningKey,
    jwks: JwkSet,
}

/// Signs tokens for one issuer.
///
/// Its keys can be replaced while it serves ([`TokenIssuer::set_keys`]): replicas sharing a
/// key set through the store all sign with its current key and publish every key whose
/// tokens may still be valid.
pub struct TokenIssuer {
    issuer: String,
    keys: RwLock<Arc<KeyRing>>,
    lifetime: Duration,
}

impl TokenIssuer {
    /// An issuer named `issuer` (its public base URL) signing with `key`.
    pub fn new(issuer: impl Into<String>, key: SigningKey, lifetime: Duration) -> Self {
        Self::with_keys(issuer, key, Vec::new(), lifetime)
    }

    /// An issuer signing with `key` and also publishing `retired` keys (see
    /// [`set_keys`](Self::set_keys)).
    pub fn with_keys(
        issuer: impl Into<String>,
        key: SigningKey,
        retired: Vec<Jwk>,
        lifetime: Duration,
    ) -> Self {
        Self {
            issuer: issuer.into().trim_end_matches('/').to_owned(),
            keys: RwLock::new(Arc::new(KeyRing::new(key, retired))),
            lifetime,
        }
    }

    /// The issuer URL (`iss`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The longest lifetime of the tokens it issues.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Signs with `signing` from now on, and publishes `retired` (keys that no longer sign
    /// but whose tokens may still be valid) beside it.
    pub fn set_keys(&self, signing: SigningKey, retired: Vec<Jwk>) {
        let ring = Arc::new(KeyRing::new(signing, retired));
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = ring;
    }

    /// The `kid` of the key that signs now.
    pub fn signing_kid(&self) -> String {
        self.ring().signing.kid().to_owned()
    }

    fn ring(&self) -> Arc<KeyRing> {
        Arc::clone(&self.keys.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Issues an access token and an ID token for `subject`, audience `client_id`; the
    /// access token's scope is [`DEFAULT_SCOPE`].
    pub fn issue(&self, subject: &Subject, client_id: &str) -> Result<IssuedTokens, TokenError> {
        self.issue_with_scope(subject, client_id, DEFAULT_SCOPE)
    }

    /// Like [`issue`](Self::issue), saying how the user authenticated (`amr`, `acr`) and with
    /// the lifetime a policy set (at most the issuer's own).
    pub fn issue_authenticated(
        &self,
        subject: &Subject,
        client_id: &str,
        how: &Authentication,
    ) -> Result<IssuedTokens, TokenError> {
        let request = TokenRequest {
            scope: DEFAULT_SCOPE,
            ..TokenRequest::default()
        };
        self.issue_for(subject, client_id, how, &request)
    }

    /// Like [`issue`](Self::issue), with the access token's `scope` given: space-separated
    /// scope tokens (RFC 6749 §3.3). Extra spaces and repeats are dropped; an empty scope
    /// becomes `openid`, the least an OpenID Connect sign-in (which yields an ID token) implies.
    pub fn issue_with_scope(
        &self,
        subject: &Subject,
        client_id: &str,
        scope: &str,
    ) -> Result<IssuedTokens, TokenError> {
        let request = TokenRequest {
            scope,
            ..TokenRequest::default()
        };
        self.issue_for(subject, client_id, &Authentication::password(), &request)
    }

    /// The general form: `subject` authenticated `how`, for `client_id`, with what the token
    /// request adds (scope, nonce, auth_time).
    pub fn issue_for(
        &self,
        subject: &Subject,
        client_id: &str,
        how: &Authentication,
        request: &TokenRequest<'_>,
    ) -> Result<IssuedTokens, TokenError> {
        let scope = normalize_scope(request.scope)?;
        // Profile and e-mail claims only for the scopes that ask for them (OpenID Connect
        // Core §5.4); the gRPC API's default scope has both.
        let granted = |wanted: &str| scope.split(' ').any(|s| s == wanted);
        let (name, preferred_username) = if granted("profile") {
            (subject.name.clone(), subject.preferred_username.clone())
        } else {
            (String::new(), String::new())
        };
        let email = if granted("email") {
            subject.email.clone()
        } else {
            String::new()
        };
        let lifetime = how.lifetime.map_or(self.lifetime, |l| l.min(self.lifetime));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|err| TokenError::Sign(err.to_string()))?
            .as_secs();
        let id_claims = Claims {
            iss: self.issuer.clone(),
            sub: subject.sub.clone(),
            aud: client_id.to_owned(),
            exp: now + lifetime.as_secs(),
            iat: now,
            nbf: now,
            jti: random_id(),
            client_id: None,
            scope: None,
            tid: subject.tenant.clone(),
            upn: subject.upn.clone(),
            preferred_username,
            name,
            email,
            groups: subject.groups.clone(),
            amr: how.methods.clone(),
            acr: if how.multi_factor() {
                ACR_MFA.into()
            } else {
                ACR_PASSWORD.into()
            },
            nonce: request.nonce.map(str::to_owned),
            auth_time: request.auth_time,
            pwd_exp: subject.password_expires_in_s,
        };
        // RFC 9068 §2.2 requires client_id in access tokens; the ID token keeps OIDC's claims.
        let access_claims = Claims {
            jti: random_id(),
            client_id: Some(client_id.to_owned()),
            scope: Some(scope),
            nonce: None,
            pwd_exp: None,
            ..id_claims.clone()
        };
        let ring = self.ring();
        let sign = |typ: TokenType, claims: &Claims| {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some(ring.signing.kid().to_owned());
            header.typ = Some(typ.header_typ().to_owned());
            ring.signing.sign_jwt(&header, claims)
        };
        Ok(IssuedTokens {
            access_token: sign(TokenType::Access, &access_claims)?,
            id_token: sign(TokenType::Id, &id_claims)?,
            expires_in: lifetime,
        })
    }

    /// The JSON Web Key Set publishing the verification key(s): the signing key first, then
    /// the retired keys whose tokens may still be valid.
    pub fn jwks(&self) -> JwkSet {
        self.ring().jwks.clone()
    }

    /// Verifies an access token this issuer signed, for any audience (the userinfo and
    /// introspection endpoints serve every client): signature by a published key, issuer,
    /// expiry and type.
    pub fn verify_own_access_token(&self, token: &str) -> Result<Claims, TokenError> {
        verify(token, TokenType::Access, &self.jwks(), &self.issuer, None)
    }

    /// Verifies an ID token this issuer signed for `audience`, accepting an expired one (an
    /// `id_token_hint` at logout names who signs out; it may have expired long ago).
    pub fn verify_id_token_hint(
        &self,
        token: &str,
        audience: Option<&str>,
    ) -> Result<Claims, TokenError> {
        verify_with(
            token,
            TokenType::Id,
            &self.jwks(),
            &self.issuer,
            audience,
            false,
        )
    }
}

impl KeyRing {
    fn new(signing: SigningKey, retired: Vec<Jwk>) -> Self {
        let mut keys = vec![signing.public_jwk().clone()];
        keys.extend(
            retired
                .into_iter()
                .filter(|jwk| jwk.common.key_id.as_deref() != Some(signing.kid())),
        );
        Self {
            signing,
            jwks: JwkSet { keys },
        }
    }
}

/// Verifies an access token: header `typ` `at+jwt` (or `application/at+jwt`, any case,
/// RFC 9068 §4), then as [`verify_token`]. An ID token is refused with
/// [`TokenError::WrongType`].
pub fn verify_access_token(
    token: &str,
    jwks: &JwkSet,
    issuer: &str,
    audience: &str,
) -> Result<Claims, TokenError> {
    verify_token(token, TokenType::Access, jwks, issuer, audience)
}

/// Verifies an ID token: header `typ` `JWT` (or `application/jwt`, any case), then as
/// [`verify_token`]. An access token is refused with [`TokenError::WrongType`].
pub fn verify_id_token(
    token: &str,
    jwks: &JwkSet,
    issuer: &str,
    audience: &str,
) -> Result<Claims, TokenError> {
    verify_token(token, TokenType::Id, jwks, issuer, audience)
}

/// Verifies `token` against a JWKS: signature (by `kid`), issuer, audience, expiry, and that
/// its header `typ` is `expected`'s. A token without `typ` is refused: Passage always sets
/// it, and an untyped token could be anything.
pub fn verify_token(
    token: &str,
    expected: TokenType,
    jwks: &JwkSet,
    issuer: &str,
    audience: &str,
) -> Result<Claims, TokenError> {
    verify(token, expected, jwks, issuer, Some(audience))
}

fn verify(
    token: &str,
    expected: TokenType,
    jwks: &JwkSet,
    issuer: &str,
    audience: Option<&str>,
) -> Result<Claims, TokenError> {
    verify_with(token, expected, jwks, issuer, audience, true)
}

/// Verifies `token`; `audience: None` accepts any audience, `check_expiry: false` an expired
/// token (the signature, issuer and type still hold).
fn verify_with(
    token: &str,
    expected: TokenType,
    jwks: &JwkSet,
    issuer: &str,
    audience: Option<&str>,
    check_expiry: bool,
) -> Result<Claims, TokenError> {
    let header =
        jsonwebtoken::decode_header(token).map_err(|err| TokenError::Invalid(err.to_string()))?;
    let kid = header
        .kid
        .ok_or_else(|| TokenError::Invalid("token has no kid".into()))?;
    let jwk = jwks
        .find(&kid)
        .ok_or_else(|| TokenError::Invalid(format!("no key {kid} in the JWKS")))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|err| TokenError::Invalid(err.to_string()))?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_issuer(&[issuer]);
    match audience {
        Some(audience) => validation.set_audience(&[audience]),
        None => validation.validate_aud = false,
    }
    validation.validate_exp = check_expiry;
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let data = jsonwebtoken::decode::<Claims>(token, &key, &validation)
        .map_err(|err| TokenError::Invalid(err.to_string()))?;
    // The type is read from the header decode() verified, so WrongType is only ever
    // reported for a genuine token, never for a forgery.
    let found = data.header.typ.unwrap_or_default();
    if !expected.matches(&found) {
        return Err(TokenError::WrongType {
            expected: expected.header_typ(),
            found,
        });
    }
    Ok(data.claims)
}

/// Checks and tidies a scope: space-separated tokens of printable ASCII other than `"` and
/// `\` (RFC 6749 §3.3). Checked rather than passed through so that relying parties splitting
/// the claim on spaces always see the scopes that were meant.
fn normalize_scope(scope: &str) -> Result<String, TokenError> {
    let mut tokens: Vec<&str> = Vec::new();
    for token in scope.split(' ').filter(|token| !token.is_empty()) {
        if let Some(bad) = token
            .chars()
            .find(|&c| !matches!(c, '\x21' | '\x23'..='\x5b' | '\x5d'..='\x7e'))
        {
            return Err(TokenError::Scope(format!(
                "{bad:?} is not allowed in scope token {token:?}"
            )));
        }
        if !tokens.contains(&token) {
            tokens.push(token);
        }
    }
    if tokens.is_empty() {
        return Ok("openid".to_owned());
    }
    Ok(tokens.join(" "))
}

fn random_id() -> String {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("system random source");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> TokenIssuer {
        TokenIssuer::new(
            "https://login.example.com/",
            SigningKey::generate().unwrap(),
            Duration::from_secs(3600),
        )
    }

    fn alice() -> Subject {
        Subject {
            sub: "3f2a".into(),
            tenant: "default".into(),
            upn: "alice@corp.example.com".into(),
            preferred_username: "alice@mail.example.com".into(),
            name: "Alice".into(),
            email: "alice@corp.example.com".into(),
            groups: vec!["staff".into()],
            password_expires_in_s: Some(86_400),
        }
    }

    fn typ_of(token: &str) -> Option<String> {
        jsonwebtoken::decode_header(token).unwrap().typ
    }

    #[test]
    fn issued_tokens_verify_against_the_jwks() {
        let issuer = issuer();
        let tokens = issuer.issue(&alice(), "app-1").unwrap();
        // Round-trip the JWKS through JSON as a relying party would receive it.
        let jwks: JwkSet =
            serde_json::from_str(&serde_json::to_string(&issuer.jwks()).unwrap()).unwrap();
        for (token, typ) in [
            (&tokens.access_token, TokenType::Access),
            (&tokens.id_token, TokenType::Id),
        ] {
            let claims =
                verify_token(token, typ, &jwks, "https://login.example.com", "app-1").unwrap();
            assert_eq!(claims.upn, "alice@corp.example.com");
            assert_eq!(
                claims.preferred_username, "alice@mail.example.com",
                "both the on-premises UPN and the name signed in with"
            );
            assert_eq!(claims.aud, "app-1");
            assert_eq!(claims.sub, "3f2a");
            let pwd_exp = match typ {
                TokenType::Id => Some(86_400),
                TokenType::Access => None,
            };
            assert_eq!(
                claims.pwd_exp, pwd_exp,
                "the password warning, in ID tokens only"
            );
            assert_eq!(claims.exp - claims.iat, 3600);
        }
    }

    #[test]
    fn issued_tokens_print_without_the_tokens() {
        let tokens = issuer().issue(&alice(), "app-1").unwrap();
        let printed = format!("{tokens:?}");
        assert!(!printed.contains(&tokens.access_token), "{printed}");
        assert!(!printed.contains(&tokens.id_token), "{printed}");
        assert!(printed.contains("3600"), "{printed}");
    }

    #[test]
    fn access_token_is_at_jwt_with_client_id_and_scope() {
        let issuer = issuer();
        let tokens = issuer.issue(&alice(), "app-1").unwrap();
        let jwks = issuer.jwks();
        assert_eq!(typ_of(&tokens.access_token).as_deref(), Some("at+jwt"));
        let access = verify_access_token(
            &tokens.access_token,
            &jwks,
            "https://login.example.com",
            "app-1",
        )
        .unwrap();
        assert_eq!(access.client_id.as_deref(), Some("app-1"));
        assert_eq!(access.scope.as_deref(), Some(DEFAULT_SCOPE));
        assert!(!access.jti.is_empty());
        assert!(access.iat > 0);

        // The ID token keeps OIDC's claims only.
        assert_eq!(typ_of(&tokens.id_token).as_deref(), Some("JWT"));
        let id = verify_id_token(
            &tokens.id_token,
            &jwks,
            "https://login.example.com",
            "app-1",
        )
        .unwrap();
        assert_eq!(id.client_id, None);
        assert_eq!(id.scope, None);
        assert_ne!(id.jti, access.jti);
    }

    #[test]
    fn id_token_is_refused_as_access_token() {
        let issuer = issuer();
        let tokens = issuer.issue(&alice(), "app-1").unwrap();
        let err = verify_access_token(
            &tokens.id_token,
            &issuer.jwks(),
            "https://login.example.com",
            "app-1",
        )
        .unwrap_err();
        assert!(
            matches!(&err, TokenError::WrongType { expected: "at+jwt", found } if found == "JWT"),
            "{err}"
        );
    }

    #[test]
    fn access_token_is_refused_as_id_token() {
        let issuer = issuer();
        let tokens = issuer.issue(&alice(), "app-1").unwrap();
        let err = verify_id_token(
            &tokens.access_token,
            &issuer.jwks(),
            "https://login.example.com",
            "app-1",
        )
        .unwrap_err();
        assert!(
            matches!(&err, TokenError::WrongType { expected: "JWT", found } if found == "at+jwt"),
            "{err}"
        );
    }

    #[test]
    fn typ_is_compared_as_a_media_type_and_required() {
        let issuer = issuer();
        let tokens = issuer.issue(&alice(), "app-1").unwrap();
        let jwks = issuer.jwks();
        let claims = verify_access_token(
            &tokens.access_token,
            &jwks,
            "https://login.example.com",
            "app-1",
        )
        .unwrap();
        let resign = |typ: Option<&str>| {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some(issuer.ring().signing.kid().to_owned());
            header.typ = typ.map(str::to_owned);
            issuer.ring().signing.sign_jwt(&header, &claims).unwrap()
        };
        for typ in ["application/at+jwt", "AT+JWT", "Application/At+Jwt"] {
            let token = resign(Some(typ));
            assert!(
                verify_access_token(&token, &jwks, "https://login.example.com", "app-1").is_ok(),
                "{typ}"
            );
        }
        let token = resign(Some("application/jwt"));
        assert!(verify_id_token(&token, &jwks, "https://login.example.com", "app-1").is_ok());
        // Untyped tokens are neither.
        let token = resign(None);
        assert!(matches!(
            verify_access_token(&token, &jwks, "https://login.example.com", "app-1"),
            Err(TokenError::WrongType { .. })
        ));
        assert!(matches!(
            verify_id_token(&token, &jwks, "https://login.example.com", "app-1"),
            Err(TokenError::WrongType { .. })
        ));
    }

    #[test]
    fn scope_is_normalized_and_checked() {
        let issuer = issuer();
        let jwks = issuer.jwks();
        let scope_of = |scope: &str| -> Result<String, TokenError> {
            let tokens = issuer.issue_with_scope(&alice(), "app-1", scope)?;
            verify_access_token(
                &tokens.access_token,
                &jwks,
                "https://login.example.com",
                "app-1",
            )
            .map(|claims| claims.scope.unwrap_or_default())
        };
        assert_eq!(
            scope_of("openid  api:read openid ").unwrap(),
            "openid api:read"
        );
        assert_eq!(scope_of("").unwrap(), "openid");
        assert!(matches!(
            scope_of("openid\tprofile"),
            Err(TokenError::Scope(_))
        ));
        assert!(matches!(scope_of("a\"b"), Err(TokenError::Scope(_))));
    }

    #[test]
    fn tokens_say_how_the_user_authenticated_and_policies_shorten_them() {
        let issuer = issuer();
        let jwks = issuer.jwks();
        let plain = issuer.issue(&alice(), "app-1").unwrap();
        let claims =
            verify_id_token(&plain.id_token, &jwks, "https://login.example.com", "app-1").unwrap();
        assert_eq!(
            (claims.amr, claims.acr.as_str()),
            (vec!["pwd".to_owned()], ACR_PASSWORD)
        );
        let mfa = issuer
            .issue_authenticated(
                &alice(),
                "app-1",
                &Authentication {
                    lifetime: Some(Duration::from_secs(600)),
                    ..Authentication::with_second_factor("otp")
                },
            )
            .unwrap();
        assert_eq!(mfa.expires_in, Duration::from_secs(600));
        let claims = verify_access_token(
            &mfa.access_token,
            &jwks,
            "https://login.example.com",
            "app-1",
        )
        .unwrap();
        assert_eq!(claims.amr, vec!["pwd".to_owned(), "otp".to_owned()]);
        assert_eq!(claims.acr, ACR_MFA);
        assert_eq!(claims.exp - claims.iat, 600);
        // A policy can shorten the lifetime, never lengthen it.
        let long = issuer
            .issue_authenticated(
                &alice(),
                "app-1",
                &Authentication {
                    lifetime: Some(Duration::from_secs(86_400)),
                    ..Authentication::password()
                },
            )
            .unwrap();
        assert_eq!(long.expires_in, Duration::from_secs(3600));
    }

    #[test]
    fn wrong_audience_issuer_or_key_is_refused() {
        let issuer = issuer();
        let tokens = issuer.issue(&alice(), "app-1").unwrap();
        let jwks = issuer.jwks();
        assert!(
            verify_id_token(
                &tokens.id_token,
                &jwks,
                "https://login.example.com",
                "app-2"
            )
            .is_err()
        );
        assert!(
            verify_id_token(&tokens.id_token, &jwks, "https://evil.example.com", "app-1").is_err()
        );
        let other = TokenIssuer::new(
            "https://login.example.com",
            SigningKey::generate().unwrap(),
            Duration::from_secs(60),
        );
        assert!(
            verify_id_token(
                &tokens.id_token,
                &other.jwks(),
                "https://login.example.com",
                "app-1"
            )
            .is_err()
        );
    }

    #[test]
    fn tampered_token_is_refused() {
        let issuer = issuer();
        let token = issuer.issue(&alice(), "app-1").unwrap().id_token;
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut claims = alice();
        claims.upn = "mallory@corp.example.com".into();
        let forged = issuer.issue(&claims, "app-1").unwrap().id_token;
        parts[1] = forged.split('.').nth(1).unwrap().to_owned();
        assert!(
            verify_id_token(
                &parts.join("."),
                &issuer.jwks(),
                "https://login.example.com",
                "app-1"
            )
            .is_err()
        );
    }

    #[test]
    fn retyped_token_is_refused() {
        // Swapping the header to pass an ID token off as an access token breaks the signature.
        let issuer = issuer();
        let tokens = issuer.issue(&alice(), "app-1").unwrap();
        let mut parts: Vec<String> = tokens.id_token.split('.').map(str::to_owned).collect();
        parts[0] = tokens.access_token.split('.').next().unwrap().to_owned();
        assert!(matches!(
            verify_access_token(
                &parts.join("."),
                &issuer.jwks(),
                "https://login.example.com",
                "app-1"
            ),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn a_rotated_key_keeps_verifying_its_tokens_until_dropped() {
        let issuer = issuer();
        let subject = Subject {
            sub: "s-1".into(),
            tenant: "t".into(),
            upn: "ada@example.com".into(),
            ..Subject::default()
        };
        let before = issuer.issue(&subject, "app-1").unwrap();
        let old = issuer.jwks().keys[0].clone();
        let old_kid = issuer.signing_kid();
        issuer.set_keys(SigningKey::generate().unwrap(), vec![old]);
        assert_ne!(issuer.signing_kid(), old_kid);
        let after = issuer.issue(&subject, "app-1").unwrap();
        let jwks = issuer.jwks();
        assert_eq!(jwks.keys.len(), 2);
        for token in [&before.access_token, &after.access_token] {
            verify_access_token(token, &jwks, "https://login.example.com", "app-1").unwrap();
        }
        let header = jsonwebtoken::decode_header(&after.id_token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(issuer.signing_kid().as_str()));
        // Once the old key is dropped, its tokens no longer verify.
        issuer.set_keys(SigningKey::generate().unwrap(), Vec::new());
        assert!(matches!(
            issuer.verify_own_access_token(&before.access_token),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn nonce_and_auth_time_are_in_the_id_token_only() {
        let issuer = issuer();
        let subject = Subject {
            sub: "s-1".into(),
            tenant: "t".into(),
            upn: "ada@example.com".into(),
            ..Subject::default()
        };
        let request = TokenRequest {
            scope: "openid email",
            nonce: Some("n-0S6_WzA2Mj"),
            auth_time: Some(1_700_000_000),
        };
        let tokens = issuer
            .issue_for(&subject, "app-1", &Authentication::password(), &request)
            .unwrap();
        let jwks = issuer.jwks();
        let id = verify_id_token(
            &tokens.id_token,
            &jwks,
            "https://login.example.com",
            "app-1",
        )
        .unwrap();
        assert_eq!(id.nonce.as_deref(), Some("n-0S6_WzA2Mj"));
        assert_eq!(id.auth_time, Some(1_700_000_000));
        let access = issuer
            .verify_own_access_token(&tokens.access_token)
            .unwrap();
        assert_eq!(access.nonce, None);
        assert_eq!(access.scope.as_deref(), Some("openid email"));
    }
}

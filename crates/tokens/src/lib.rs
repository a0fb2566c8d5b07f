//! Tokens the gateway issues after a successful sign-in, and how anyone verifies them.
//!
//! Tokens are ES256 JWTs. The signing key is a P-256 key in PKCS#8 DER, read from a file that
//! must not be readable by group or others (generated there with mode 0600 on first start).
//! Its public half is published as a JWKS, and the OIDC discovery document points at it, so
//! any relying party can verify tokens without talking to Passage otherwise.

mod keys;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation, jwk::JwkSet};
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
    /// The token did not verify.
    #[error("token does not verify: {0}")]
    Invalid(String),
}

/// Claims of Passage's access and ID tokens.
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
    /// Tenant.
    pub tid: String,
    /// userPrincipalName.
    pub upn: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// E-mail address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub email: String,
    /// Group names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
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
    /// Display name.
    pub name: String,
    /// E-mail address.
    pub email: String,
    /// Groups.
    pub groups: Vec<String>,
}

/// A freshly issued token pair.
#[derive(Debug, Clone)]
pub struct IssuedTokens {
    /// JWT access token (`typ: at+jwt`, RFC 9068).
    pub access_token: String,
    /// OpenID Connect ID token.
    pub id_token: String,
    /// Lifetime of both.
    pub expires_in: Duration,
}

/// Signs tokens for one issuer.
pub struct TokenIssuer {
    issuer: String,
    key: SigningKey,
    lifetime: Duration,
}

impl TokenIssuer {
    /// An issuer named `issuer` (its public base URL) signing with `key`.
    pub fn new(issuer: impl Into<String>, key: SigningKey, lifetime: Duration) -> Self {
        Self {
            issuer: issuer.into().trim_end_matches('/').to_owned(),
            key,
            lifetime,
        }
    }

    /// The issuer URL (`iss`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Issues an access token and an ID token for `subject`, audience `client_id`.
    pub fn issue(&self, subject: &Subject, client_id: &str) -> Result<IssuedTokens, TokenError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|err| TokenError::Sign(err.to_string()))?
            .as_secs();
        let claims = |jti: String| Claims {
            iss: self.issuer.clone(),
            sub: subject.sub.clone(),
            aud: client_id.to_owned(),
            exp: now + self.lifetime.as_secs(),
            iat: now,
            nbf: now,
            jti,
            tid: subject.tenant.clone(),
            upn: subject.upn.clone(),
            name: subject.name.clone(),
            email: subject.email.clone(),
            groups: subject.groups.clone(),
        };
        let sign = |typ: &str, claims: &Claims| {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some(self.key.kid().to_owned());
            header.typ = Some(typ.to_owned());
            self.key.sign_jwt(&header, claims)
        };
        Ok(IssuedTokens {
            access_token: sign("at+jwt", &claims(random_id()))?,
            id_token: sign("JWT", &claims(random_id()))?,
            expires_in: self.lifetime,
        })
    }

    /// The JSON Web Key Set publishing the verification key(s).
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: vec![self.key.public_jwk().clone()],
        }
    }

    /// The OpenID Connect discovery document (`/.well-known/openid-configuration`).
    pub fn discovery_document(&self) -> serde_json::Value {
        serde_json::json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/.well-known/jwks.json", self.issuer),
            "id_token_signing_alg_values_supported": ["ES256"],
            "subject_types_supported": ["public"],
            "response_types_supported": ["id_token"],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "tid", "upn", "name", "email", "groups"],
        })
    }
}

/// Verifies `token` against a JWKS: signature (by `kid`), issuer, audience and expiry.
pub fn verify(
    token: &str,
    jwks: &JwkSet,
    issuer: &str,
    audience: &str,
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
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<Claims>(token, &key, &validation)
        .map(|data| data.claims)
        .map_err(|err| TokenError::Invalid(err.to_string()))
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
            name: "Alice".into(),
            email: "alice@corp.example.com".into(),
            groups: vec!["staff".into()],
        }
    }

    #[test]
    fn issued_tokens_verify_against_the_jwks() {
        let issuer = issuer();
        let tokens = issuer.issue(&alice(), "app-1").unwrap();
        // Round-trip the JWKS through JSON as a relying party would receive it.
        let jwks: JwkSet =
            serde_json::from_str(&serde_json::to_string(&issuer.jwks()).unwrap()).unwrap();
        for token in [&tokens.access_token, &tokens.id_token] {
            let claims = verify(token, &jwks, "https://login.example.com", "app-1").unwrap();
            assert_eq!(claims.upn, "alice@corp.example.com");
            assert_eq!(claims.aud, "app-1");
            assert_eq!(claims.sub, "3f2a");
            assert_eq!(claims.exp - claims.iat, 3600);
        }
    }

    #[test]
    fn wrong_audience_issuer_or_key_is_refused() {
        let issuer = issuer();
        let tokens = issuer.issue(&alice(), "app-1").unwrap();
        let jwks = issuer.jwks();
        assert!(
            verify(
                &tokens.id_token,
                &jwks,
                "https://login.example.com",
                "app-2"
            )
            .is_err()
        );
        assert!(verify(&tokens.id_token, &jwks, "https://evil.example.com", "app-1").is_err());
        let other = TokenIssuer::new(
            "https://login.example.com",
            SigningKey::generate().unwrap(),
            Duration::from_secs(60),
        );
        assert!(
            verify(
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
            verify(
                &parts.join("."),
                &issuer.jwks(),
                "https://login.example.com",
                "app-1"
            )
            .is_err()
        );
    }

    #[test]
    fn discovery_points_at_the_jwks() {
        let doc = issuer().discovery_document();
        assert_eq!(doc["issuer"], "https://login.example.com");
        assert_eq!(
            doc["jwks_uri"],
            "https://login.example.com/.well-known/jwks.json"
        );
    }
}

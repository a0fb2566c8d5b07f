//! The provider's endpoints and its discovery document (OpenID Connect Discovery 1.0 §3,
//! RFC 8414), served at `/.well-known/openid-configuration`.
//!
//! The document says what Passage does and nothing more: the code flow only, answered in the
//! query, PKCE with `S256` only, ES256 tokens, no request objects, no `claims` parameter, no
//! front- or back-channel logout, and `iss` in authorization responses (RFC 9207). Endpoint
//! URLs are the issuer followed by the paths below, so the issuer must be the URL the
//! gateway is reached at (without a trailing slash, which is dropped if given).

use serde_json::json;

use crate::pages;

/// The authorization endpoint: the sign-in page (`GET`) and its form (`POST`).
pub const AUTHORIZE: &str = "/authorize";
/// The token endpoint.
pub const TOKEN: &str = "/token";
/// The userinfo endpoint.
pub const USERINFO: &str = "/userinfo";
/// The revocation endpoint (RFC 7009).
pub const REVOKE: &str = "/revoke";
/// The introspection endpoint (RFC 7662).
pub const INTROSPECT: &str = "/introspect";
/// The end-session endpoint (OpenID Connect RP-Initiated Logout 1.0).
pub const LOGOUT: &str = "/logout";
/// The JSON Web Key Set.
pub const JWKS: &str = "/.well-known/jwks.json";
/// The discovery document itself.
pub const CONFIGURATION: &str = "/.well-known/openid-configuration";

/// How clients may authenticate at the token, revocation and introspection endpoints.
const CLIENT_AUTH_METHODS: [&str; 3] = ["client_secret_basic", "client_secret_post", "none"];

/// How confidential clients authenticate.
const CONFIDENTIAL_AUTH_METHODS: [&str; 2] = ["client_secret_basic", "client_secret_post"];

/// The claims Passage's tokens and userinfo may hold.
const CLAIMS: [&str; 15] = [
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "auth_time",
    "nonce",
    "amr",
    "acr",
    "name",
    "email",
    "upn",
    "groups",
    "tid",
    "preferred_username",
];

/// The full discovery document of the OpenID provider whose issuer identifier is `issuer`;
/// `acr_values` are the `acr` values its tokens may carry.
pub fn document(issuer: &str, acr_values: &[&str]) -> serde_json::Value {
    let base = issuer.trim_end_matches('/');
    let endpoint = |path: &str| format!("{base}{path}");
    let ui_locales: Vec<&str> = pages::LOCALES.iter().map(|strings| strings.lang).collect();
    json!({
        "issuer": issuer,
        "authorization_endpoint": endpoint(AUTHORIZE),
        "token_endpoint": endpoint(TOKEN),
        "userinfo_endpoint": endpoint(USERINFO),
        "jwks_uri": endpoint(JWKS),
        "revocation_endpoint": endpoint(REVOKE),
        "introspection_endpoint": endpoint(INTROSPECT),
        "end_session_endpoint": endpoint(LOGOUT),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "token_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
        "revocation_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
        // Only confidential clients (resource servers among them) may introspect.
        "introspection_endpoint_auth_methods_supported": CONFIDENTIAL_AUTH_METHODS,
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": crate::authorize::SUPPORTED_SCOPES,
        "claims_supported": CLAIMS,
        "acr_values_supported": acr_values,
        "prompt_values_supported": ["none", "login", "consent", "select_account"],
        "claims_parameter_supported": false,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
        "authorization_response_iss_parameter_supported": true,
        "ui_locales_supported": ui_locales,
        "frontchannel_logout_supported": false,
        "backchannel_logout_supported": false,
    })
}

/// The discovery document of a gateway without the OpenID provider (it has no store for
/// codes and refresh tokens): only what verifying the tokens of its gRPC API needs, the
/// issuer and the keys, and no endpoint that would not answer. `response_types_supported`,
/// which the specification requires, is empty: there is no browser flow to start (ID tokens
/// come from `Gateway.SignIn`, not from an authorization endpoint).
pub fn verification_only(issuer: &str, acr_values: &[&str]) -> serde_json::Value {
    let base = issuer.trim_end_matches('/');
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{base}{JWKS}"),
        "response_types_supported": [],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "claims_supported": CLAIMS,
        "acr_values_supported": acr_values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUER: &str = "https://login.example.com";
    const ACR: [&str; 2] = ["urn:passage:acr:pwd", "urn:passage:acr:mfa"];

    #[test]
    fn endpoints_are_the_issuer_and_the_paths() {
        let doc = document(ISSUER, &ACR);
        assert_eq!(doc["issuer"], ISSUER);
        for (field, path) in [
            ("authorization_endpoint", "/authorize"),
            ("token_endpoint", "/token"),
            ("userinfo_endpoint", "/userinfo"),
            ("jwks_uri", "/.well-known/jwks.json"),
            ("revocation_endpoint", "/revoke"),
            ("introspection_endpoint", "/introspect"),
            ("end_session_endpoint", "/logout"),
        ] {
            assert_eq!(doc[field], format!("{ISSUER}{path}"), "{field}");
        }
        // A trailing slash on the issuer does not double in the endpoints.
        let doc = document("https://login.example.com/", &ACR);
        assert_eq!(doc["issuer"], "https://login.example.com/");
        assert_eq!(doc["token_endpoint"], "https://login.example.com/token");
    }

    #[test]
    fn the_document_says_what_passage_supports() {
        let doc = document(ISSUER, &ACR);
        assert_eq!(doc["response_types_supported"], json!(["code"]));
        assert_eq!(doc["response_modes_supported"], json!(["query"]));
        assert_eq!(
            doc["grant_types_supported"],
            json!(["authorization_code", "refresh_token"])
        );
        assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
        assert_eq!(
            doc["id_token_signing_alg_values_supported"],
            json!(["ES256"])
        );
        assert_eq!(
            doc["introspection_endpoint_auth_methods_supported"],
            json!(["client_secret_basic", "client_secret_post"])
        );
        for field in [
            "token_endpoint_auth_methods_supported",
            "revocation_endpoint_auth_methods_supported",
        ] {
            assert_eq!(
                doc[field],
                json!(["client_secret_basic", "client_secret_post", "none"]),
                "{field}"
            );
        }
        assert_eq!(doc["acr_values_supported"], json!(ACR));
        assert_eq!(doc["ui_locales_supported"], json!(["en", "fr", "de"]));
        assert_eq!(doc["authorization_response_iss_parameter_supported"], true);
        for field in [
            "claims_parameter_supported",
            "request_parameter_supported",
            "request_uri_parameter_supported",
            "frontchannel_logout_supported",
            "backchannel_logout_supported",
        ] {
            assert_eq!(doc[field], false, "{field}");
        }
        let claims = doc["claims_supported"].as_array().unwrap();
        for claim in ["sub", "nonce", "auth_time", "acr", "amr", "groups", "tid"] {
            assert!(claims.contains(&json!(claim)), "{claim}");
        }
        assert!(
            doc["scopes_supported"]
                .as_array()
                .unwrap()
                .contains(&json!("offline_access"))
        );
    }

    #[test]
    fn without_the_provider_no_endpoint_is_announced() {
        let doc = verification_only(ISSUER, &ACR);
        assert_eq!(doc["issuer"], ISSUER);
        assert_eq!(
            doc["jwks_uri"],
            "https://login.example.com/.well-known/jwks.json"
        );
        let fields = doc.as_object().unwrap();
        assert!(
            fields.keys().all(|key| !key.ends_with("_endpoint")),
            "{doc}"
        );
        assert_eq!(
            doc["response_types_supported"],
            json!([]),
            "no browser flow"
        );
    }
}

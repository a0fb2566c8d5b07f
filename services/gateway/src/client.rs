//! What a relying party does with the gateway's HTTP side: fetch discovery and the JWKS.

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use jsonwebtoken::jwk::JwkSet;

/// GETs `url` (plain `http://`) and parses the JSON body.
pub async fn get_json<T: serde::de::DeserializeOwned>(url: &str) -> Result<T, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let response = client
        .get(uri)
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("GET {url}: {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("GET {url}: {e}"))
}

/// Follows `<issuer>/.well-known/openid-configuration` to its `jwks_uri` and fetches the keys.
pub async fn fetch_jwks(issuer: &str) -> Result<JwkSet, String> {
    let discovery: serde_json::Value = get_json(&format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    ))
    .await?;
    let jwks_uri = discovery["jwks_uri"]
        .as_str()
        .ok_or("discovery document has no jwks_uri")?;
    get_json(jwks_uri).await
}

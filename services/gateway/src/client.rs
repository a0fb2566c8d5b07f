//! What a relying party does with the gateway's HTTP side: fetch discovery and the JWKS.

use std::path::Path;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
};
use jsonwebtoken::jwk::JwkSet;

/// GETs `url` and parses the JSON body. `https://` URLs are verified against `ca_file` (PEM)
/// if given, else the system's roots.
pub async fn get_json<T: serde::de::DeserializeOwned>(
    url: &str,
    ca_file: Option<&Path>,
) -> Result<T, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let response = if uri.scheme_str() == Some("https") {
        https_get(&uri, ca_file)
            .await
            .map_err(|e| format!("GET {url}: {e}"))?
    } else {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        client
            .get(uri)
            .await
            .map_err(|e| format!("GET {url}: {e}"))?
    };
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

/// One HTTPS GET over HTTP/1.1.
async fn https_get(
    uri: &hyper::Uri,
    ca_file: Option<&Path>,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let host = uri.host().ok_or("no host")?;
    let port = uri.port_u16().unwrap_or(443);
    let tcp =
        tokio::net::TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port))
            .await
            .map_err(|e| e.to_string())?;
    let tls = crate::tls::connector(ca_file)?
        .connect(crate::tls::server_name(host)?, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let authority = uri.authority().map_or(host, |a| a.as_str()).to_owned();
    let request = hyper::Request::get(uri.clone())
        .header(hyper::header::HOST, authority)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())
}

/// Follows `<issuer>/.well-known/openid-configuration` to its `jwks_uri` and fetches the keys
/// (`ca_file` as for [`get_json`]).
pub async fn fetch_jwks(issuer: &str, ca_file: Option<&Path>) -> Result<JwkSet, String> {
    let discovery: serde_json::Value = get_json(
        &format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        ),
        ca_file,
    )
    .await?;
    let jwks_uri = discovery["jwks_uri"]
        .as_str()
        .ok_or("discovery document has no jwks_uri")?;
    get_json(jwks_uri, ca_file).await
}

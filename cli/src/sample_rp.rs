//! `passage sample-rp`: a tiny web application that signs its users in through Passage's
//! browser flow, as any OpenID Connect relying party would — discovery, a redirect to the
//! authorization endpoint with `state`, `nonce` and PKCE (S256, as a public client), the code
//! exchanged at the token endpoint, the ID token verified against the JWKS. The demo serves
//! it; the browser tests drive it.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use aws_lc_rs::{
    digest::{SHA256, digest},
    rand::{SecureRandom, SystemRandom},
};
use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{StatusCode, Uri, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

/// Sign-ins begun and not finished yet, at most (older ones are forgotten first).
const MAX_PENDING: usize = 1024;

struct Rp {
    issuer: String,
    client_id: String,
    redirect_uri: String,
    /// The authorization and token endpoints, from discovery at the first sign-in (so the app
    /// may start before the provider).
    endpoints: tokio::sync::OnceCell<(String, String)>,
    /// state → (code_verifier, nonce), oldest first.
    pending: Mutex<Vec<(String, String, String)>>,
}

/// Serves the sample relying party on `listener` for `client_id` at `issuer` until the
/// process ends. Its redirect URI is `http://<listener address>/callback`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    issuer: String,
    client_id: String,
) -> Result<(), String> {
    let addr: SocketAddr = listener.local_addr().map_err(|e| e.to_string())?;
    let rp = Arc::new(Rp {
        issuer,
        client_id,
        redirect_uri: format!("http://{}/callback", redirect_host(addr)),
        endpoints: tokio::sync::OnceCell::new(),
        pending: Mutex::new(Vec::new()),
    });
    let router = Router::new()
        .route("/", get(home))
        .route("/login", get(login))
        .route("/callback", get(callback))
        .with_state(rp);
    axum::serve(listener, router)
        .await
        .map_err(|e| e.to_string())
}

/// The host part of the redirect URI: `localhost` for loopback, so that browsers keep the
/// provider's secure cookies on plain HTTP during development.
pub fn redirect_host(addr: SocketAddr) -> String {
    if addr.ip().is_loopback() {
        format!("localhost:{}", addr.port())
    } else {
        addr.to_string()
    }
}

impl Rp {
    /// The authorization and token endpoints the provider's discovery document names.
    async fn endpoints(&self) -> Result<&(String, String), String> {
        self.endpoints
            .get_or_try_init(|| async {
                let discovery: serde_json::Value = passage_gateway::client::get_json(
                    &format!("{}/.well-known/openid-configuration", self.issuer),
                    None,
                )
                .await?;
                let endpoint = |name: &str| {
                    discovery[name]
                        .as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| format!("the discovery document has no {name}"))
                };
                Ok((
                    endpoint("authorization_endpoint")?,
                    endpoint("token_endpoint")?,
                ))
            })
            .await
    }
}

async fn home() -> Html<&'static str> {
    Html(concat!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sample app</title></head>",
        "<body><main><h1>Sample app</h1><p>This application does not know your password.</p>",
        "<p><a id=\"signin\" href=\"/login\">Sign in with Passage</a></p></main></body></html>"
    ))
}

async fn login(State(rp): State<Arc<Rp>>) -> Response {
    let authorization_endpoint = match rp.endpoints().await {
        Ok((authorization, _)) => authorization.clone(),
        Err(err) => {
            return page(
                StatusCode::BAD_GATEWAY,
                &format!(
                    "<p id=\"failed\">Passage is not reachable: {}</p>",
                    passage_oidc::pages::escape(&err)
                ),
            );
        }
    };
    let (state, nonce, verifier) = (random(), random(), random());
    let challenge = URL_SAFE_NO_PAD.encode(digest(&SHA256, verifier.as_bytes()).as_ref());
    {
        let mut pending = rp.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() >= MAX_PENDING {
            pending.remove(0);
        }
        pending.push((state.clone(), verifier, nonce.clone()));
    }
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", &rp.client_id)
        .append_pair("redirect_uri", &rp.redirect_uri)
        .append_pair("scope", "openid profile email")
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .finish();
    // The state is also bound to this browser (a cookie), so that nobody can hand the app a
    // sign-in begun in another browser (login CSRF).
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::LOCATION,
                format!("{authorization_endpoint}?{query}"),
            ),
            (
                header::SET_COOKIE,
                format!("{STATE_COOKIE}={state}; HttpOnly; SameSite=Lax; Path=/; Max-Age=600"),
            ),
        ],
    )
        .into_response()
}

/// The cookie binding a sign-in's `state` to the browser that began it.
const STATE_COOKIE: &str = "sample_rp_state";

async fn callback(State(rp): State<Arc<Rp>>, headers: axum::http::HeaderMap, uri: Uri) -> Response {
    let params: HashMap<String, String> =
        form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let began_here = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .any(|(name, value)| {
            name == STATE_COOKIE && Some(value) == params.get("state").map(String::as_str)
        });
    if !began_here {
        return page(
            StatusCode::BAD_REQUEST,
            "<p id=\"failed\">Sign-in failed: this sign-in was not begun in this browser</p>",
        );
    }
    match finish(&rp, &params).await {
        Ok(claims) => page(
            StatusCode::OK,
            &format!(
                "<p id=\"signed-in\">Signed in as {} ({})</p><pre id=\"claims\">{}</pre>",
                passage_oidc::pages::escape(&claims.name),
                passage_oidc::pages::escape(&claims.upn),
                passage_oidc::pages::escape(
                    &serde_json::to_string_pretty(&claims).unwrap_or_default()
                )
            ),
        ),
        Err(err) => page(
            StatusCode::BAD_REQUEST,
            &format!(
                "<p id=\"failed\">Sign-in failed: {}</p>",
                passage_oidc::pages::escape(&err)
            ),
        ),
    }
}

async fn finish(
    rp: &Rp,
    params: &HashMap<String, String>,
) -> Result<passage_tokens::Claims, String> {
    if let Some(error) = params.get("error") {
        return Err(format!(
            "{error}: {}",
            params.get("error_description").map_or("", String::as_str)
        ));
    }
    // RFC 9207: the answer names the provider it comes from.
    if params.get("iss") != Some(&rp.issuer) {
        return Err("the answer does not come from the expected provider".into());
    }
    let state = params.get("state").ok_or("no state")?;
    let (verifier, nonce) = {
        let mut pending = rp.pending.lock().unwrap_or_else(|e| e.into_inner());
        let at = pending
            .iter()
            .position(|(s, ..)| s == state)
            .ok_or("unknown state: this sign-in was not begun here")?;
        let (_, verifier, nonce) = pending.remove(at);
        (verifier, nonce)
    };
    let code = params.get("code").ok_or("no code")?;
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "authorization_code")
        .append_pair("code", code)
        .append_pair("redirect_uri", &rp.redirect_uri)
        .append_pair("client_id", &rp.client_id)
        .append_pair("code_verifier", &verifier)
        .finish();
    let (_, token_endpoint) = rp.endpoints().await?;
    let request = hyper::Request::post(token_endpoint)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(form)))
        .map_err(|e| e.to_string())?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let tokens: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("token endpoint: {status} {tokens}"));
    }
    let id_token = tokens["id_token"].as_str().ok_or("no id_token")?;
    let jwks = passage_gateway::client::fetch_jwks(&rp.issuer, None).await?;
    let claims = passage_tokens::verify_id_token(id_token, &jwks, &rp.issuer, &rp.client_id)
        .map_err(|e| e.to_string())?;
    if claims.nonce.as_deref() != Some(nonce.as_str()) {
        return Err("the ID token's nonce is not this sign-in's".into());
    }
    Ok(claims)
}

fn page(status: StatusCode, body: &str) -> Response {
    (
        status,
        Html(format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sample app</title></head><body><main><h1>Sample app</h1>{body}<p><a href=\"/\">Back</a></p></main></body></html>"
        )),
    )
        .into_response()
}

fn random() -> String {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("system random source");
    URL_SAFE_NO_PAD.encode(bytes)
}

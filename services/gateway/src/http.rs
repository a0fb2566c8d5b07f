//! The HTTP listener: OIDC discovery, the JWKS, health, and the OpenID provider's routes
//! ([`crate::oidc`]), served within limits (header-read timeout, request timeout, connection
//! limit, body limit) so a slow or greedy client cannot hold the listener.

use std::{future::Future, sync::Arc, time::Duration};

use axum::{
    Extension, Json, Router,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use passage_tokens::TokenIssuer;
use tokio::sync::Semaphore;
use tower_http::{limit::RequestBodyLimitLayer, timeout::TimeoutLayer};

/// The HTTP routes: `/.well-known/openid-configuration`, `/.well-known/jwks.json`, `/healthz`
/// (liveness: the process answers), `/readyz` (readiness: a dispatcher and the store answer;
/// 503 with the reason otherwise), and with a `provider` the OpenID provider's.
///
/// With `key_sync` (signing keys in the store) the JWKS is served from a read of the store made
/// for the request, so every replica publishes a new key before any can sign with it.
pub fn router(
    issuer: Arc<TokenIssuer>,
    key_sync: Option<crate::signing_keys::KeySync>,
    readiness: Arc<crate::readiness::Readiness>,
    provider: Option<crate::oidc::Provider>,
) -> Router {
    let full_discovery = provider.is_some();
    let base = issuer_path(issuer.issuer());
    let issuer_routes = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move |state| discovery(state, full_discovery)),
        )
        .route(
            "/.well-known/jwks.json",
            get(move |state| jwks(state, key_sync.clone())),
        )
        .with_state(Arc::clone(&issuer));
    let issuer_routes = match provider {
        Some(provider) => issuer_routes.merge(provider.routes()),
        None => issuer_routes,
    };
    // Discovery, the JWKS and the provider live under the issuer's path (OpenID Connect
    // Discovery §4); health stays at the root, for probes.
    let router = if base.is_empty() {
        issuer_routes
    } else {
        Router::new().nest(&base, issuer_routes)
    };
    router.route("/healthz", get(|| async { "ok" })).route(
        "/readyz",
        get(move || {
            let readiness = Arc::clone(&readiness);
            async move {
                match readiness.state() {
                    Ok(()) => (StatusCode::OK, "ready".to_owned()),
                    Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
                }
            }
        }),
    )
}

/// The path of an issuer URL (`https://login.example.com/corp` → `/corp`), without a trailing
/// slash; empty when the issuer is a bare origin.
fn issuer_path(issuer: &str) -> String {
    let after_scheme = issuer.split_once("://").map_or(issuer, |(_, rest)| rest);
    match after_scheme.find('/') {
        Some(at) => after_scheme[at..].trim_end_matches('/').to_owned(),
        None => String::new(),
    }
}

/// The discovery document: complete with the OpenID provider; without it (no store), only
/// what verifying the gRPC API's tokens needs — no endpoint that would not answer.
async fn discovery(State(issuer): State<Arc<TokenIssuer>>, full: bool) -> impl IntoResponse {
    let document = if full {
        passage_oidc::discovery::document(issuer.issuer(), &crate::oidc::ACR_VALUES)
    } else {
        passage_oidc::discovery::verification_only(issuer.issuer(), &crate::oidc::ACR_VALUES)
    };
    public_json(document, 300)
}

async fn jwks(
    State(issuer): State<Arc<TokenIssuer>>,
    key_sync: Option<crate::signing_keys::KeySync>,
) -> impl IntoResponse {
    let jwks = match key_sync {
        Some(sync) => sync.fresh_jwks().await,
        None => issuer.jwks(),
    };
    // Relying parties may keep it a minute; they fetch it again sooner when a token names a
    // key they do not have (docs/connecting-an-application.md, key rotation).
    public_json(serde_json::to_value(jwks).unwrap_or_default(), 60)
}

/// A public document any web page may read (CORS), cached for `max_age_s`.
fn public_json(value: serde_json::Value, max_age_s: u32) -> axum::response::Response {
    let mut response = Json(value).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("public, max-age={max_age_s}")) {
        headers.insert(header::CACHE_CONTROL, value);
    }
    response
}

/// Limits on the HTTP listener, so a slow or greedy client cannot hold it.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Longest a client may take to send a request's headers; then the connection is closed.
    pub header_read_timeout: Duration,
    /// Longest a request may take, end to end (answered `408` past it).
    pub request_timeout: Duration,
    /// Most connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Largest request body accepted (`413` past it).
    pub max_body_bytes: usize,
}

/// Serves `router` on `listener` within `limits` until `shutdown` resolves, then lets the
/// requests in progress finish (at most `limits.request_timeout`).
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send,
) where
    L: axum::serve::Listener<Addr = std::net::SocketAddr>,
    L::Io: Send + 'static,
{
    let router = router.layer((
        RequestBodyLimitLayer::new(limits.max_body_bytes),
        TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, limits.request_timeout),
    ));
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            // Closing at once costs less than letting the connection wait for a slot.
            tracing::debug!("HTTP connection limit reached; closing a new connection");
            drop(io);
            continue;
        };
        // Handlers learn the TCP peer (the browser, or a reverse proxy) from an extension.
        let service =
            TowerToHyperService::new(router.clone().layer(Extension(crate::oidc::Peer(peer))));
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(TokioIo::new(io), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "HTTP connection ended");
            }
            drop(permit);
        });
    }
    let _ = tokio::time::timeout(limits.request_timeout, graceful.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    async fn status(router: &Router, path: &str) -> StatusCode {
        let request = axum::http::Request::get(path).body(Body::empty()).unwrap();
        router.clone().oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn discovery_and_keys_are_served_under_the_issuers_path() {
        let issuer = Arc::new(TokenIssuer::new(
            "https://login.example.com/corp/",
            passage_tokens::SigningKey::generate().unwrap(),
            Duration::from_secs(60),
        ));
        let router = router(issuer, None, crate::readiness::Readiness::new(), None);
        for path in [
            "/corp/.well-known/openid-configuration",
            "/corp/.well-known/jwks.json",
            "/healthz",
        ] {
            assert_eq!(status(&router, path).await, StatusCode::OK, "{path}");
        }
        assert_eq!(
            status(&router, "/.well-known/openid-configuration").await,
            StatusCode::NOT_FOUND
        );
        assert_eq!(issuer_path("https://login.example.com"), "");
        assert_eq!(issuer_path("http://localhost:8080/a/b"), "/a/b");
    }
}

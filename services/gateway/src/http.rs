//! OIDC discovery and JWKS over HTTP.

use std::sync::Arc;

use axum::{Json, Router, extract::State, response::IntoResponse, routing::get};
use passage_tokens::TokenIssuer;

/// The HTTP routes: `/.well-known/openid-configuration`, `/.well-known/jwks.json`, `/healthz`.
pub fn router(issuer: Arc<TokenIssuer>) -> Router {
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(issuer)
}

async fn discovery(State(issuer): State<Arc<TokenIssuer>>) -> impl IntoResponse {
    Json(issuer.discovery_document())
}

async fn jwks(State(issuer): State<Arc<TokenIssuer>>) -> impl IntoResponse {
    (
        [(axum::http::header::CACHE_CONTROL, "public, max-age=300")],
        Json(issuer.jwks()),
    )
}

//! The `/metrics` endpoint: plain HTTP on an admin address (`metrics_listen`), for Prometheus
//! or a ServiceMonitor to scrape. Keep it off the Internet: it tells an observer how busy the
//! service is and which agents exist.

use std::{future::Future, sync::Arc};

use axum::{Router, http::header, routing::get};
use prometheus_client::registry::Registry;

/// The exposition's content type (OpenMetrics 1.0, which carries exemplars).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /metrics` over `registry`.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let registry = Arc::clone(&registry);
            async move {
                (
                    [(header::CONTENT_TYPE, CONTENT_TYPE)],
                    crate::encode(&registry),
                )
            }
        }),
    )
}

/// Serves [`router`] on `listener` (bound by the service at start, so a taken port stops the
/// start) until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "metrics listening (GET /metrics)");
    axum::serve(listener, router(registry))
        .with_graceful_shutdown(shutdown)
        .await
}

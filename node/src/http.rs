//! The admin HTTP port: `/metrics` (Prometheus text), `/healthz` (the
//! process is alive) and `/readyz` (the node can serve: storage open and
//! accepting writes, its lease current).

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::broker::Broker;

async fn metrics(State(broker): State<Arc<Broker>>) -> impl IntoResponse {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        {
            // Deleted topics' series go with them.
            broker.metrics.log_size_bytes.clear();
            for t in broker.topics() {
                let size: i64 = t.partitions.iter().map(|p| p.size_bytes()).sum();
                broker.metrics.set_log_size(&t.record.name, size);
            }
            broker.metrics.render()
        },
    )
}

async fn ok() -> &'static str {
    "ok\n"
}

/// Ready to serve: storage accepts writes and the node's lease is current
/// (a fenced node may not lead). 503 with the reason otherwise.
async fn ready(State(broker): State<Arc<Broker>>) -> (StatusCode, String) {
    match broker.readiness() {
        Ok(()) => (StatusCode::OK, "ok\n".into()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

pub async fn serve(broker: Arc<Broker>, listener: TcpListener) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(ok))
        .route("/readyz", get(ready))
        .with_state(broker);
    axum::serve(listener, app).await
}

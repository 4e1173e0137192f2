//! The HTTP side: `/metrics` (Prometheus text), `/healthz` (the process is up) and `/readyz`
//! (the store answers and the plan is loaded).

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::ingest::Ingestor;
use crate::store::Store;

pub fn router(ingestor: Ingestor) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(ingestor)
}

async fn metrics(State(ingestor): State<Ingestor>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        ingestor.metrics().render(),
    )
}

async fn ready(State(ingestor): State<Ingestor>) -> impl IntoResponse {
    match ingestor.store().ping().await {
        Ok(()) => (
            StatusCode::OK,
            format!(
                "ready: plan {}, {} keys\n",
                ingestor.plan().id,
                ingestor.keys().len()
            ),
        ),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {error}\n"),
        ),
    }
}

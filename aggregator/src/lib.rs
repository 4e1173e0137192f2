//! duban-aggregator: the central service. It verifies signed reports, validates them against the
//! plan, reconciles duplicates and corrections, stores them, computes progress and sends deadline
//! alerts. docs/ARCHITECTURE.md maps the modules along the path a report takes.
pub mod admin;
pub mod alerting;
pub mod app;
pub mod clock;
pub mod codes;
pub mod config;
pub mod devca;
pub mod grpc;
pub mod http;
pub mod ingest;
pub mod keys;
pub mod metrics;
pub mod plan;
pub mod progress;
pub mod serve;
pub mod store;
pub mod supervision;
pub mod tls;
pub mod web;

/// Installs ring as the process-wide rustls provider (for the gRPC listener and the HTTP
/// clients of the alert sinks); a second call is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

//! duban-aggregator: the central service. It verifies signed reports, validates them against the
//! plan, reconciles duplicates and corrections, stores them and computes progress.
pub mod admin;
pub mod alerts;
pub mod amconfig;
pub mod clock;
pub mod config;
pub mod devca;
pub mod evaluate;
pub mod http;
pub mod ingest;
pub mod keys;
pub mod metrics;
pub mod notify;
pub mod plan;
pub mod progress;
pub mod serve;
pub mod server;
pub mod store;
pub mod tls;

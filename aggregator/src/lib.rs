//! duban-aggregator: the central service. It verifies signed reports, validates them against the
//! plan, reconciles duplicates and corrections, stores them and computes progress.
pub mod plan;
pub mod store;

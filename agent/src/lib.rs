//! duban-agent: the daemon that runs on district and department servers. It collects indicator
//! values and task progress from local sources, signs each report, keeps it in a durable outbox
//! and delivers it to the aggregator until acknowledged.
//!
//! Collection, the outbox and delivery arrive with issue 5; this crate now holds key management.

pub mod keygen;

//! duban-agent: the daemon that runs on district and department servers. It collects indicator
//! values and task progress from local sources, signs each report, keeps it in a durable outbox
//! and delivers it to the aggregator until acknowledged. See docs/AGENT.md.

pub mod answer;
pub mod check;
pub mod config;
pub mod daemon;
pub mod deliver;
pub mod keygen;
pub mod metrics;
pub mod outbox;
pub mod rotate;
pub mod schedule;
pub mod sources;
pub mod tls;

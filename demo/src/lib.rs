//! duban-demo: the whole system doing its job on the embedded Qingdao plan, replayed from its
//! start on a simulated clock. See README.md ("What the demo shows").

pub mod inbox;
pub mod options;
pub mod run;
pub mod scenario;
pub mod setup;
pub mod summary;
pub mod view;

use std::path::Path;

use anyhow::Context;

/// Logs (aggregator, agents, demo) go to `demo.log` in the demo directory, so that the terminal
/// shows only the view. `RUST_LOG` sets the level (default `info`).
pub fn init_log(path: &Path) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
    Ok(())
}

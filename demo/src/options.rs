//! What the demo was asked to do (its command-line flags, parsed).

use std::net::SocketAddr;
use std::path::PathBuf;

use jiff::civil::Date;

#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    pub fresh: bool,
    pub seed: u64,
    /// Simulated days per real second.
    pub speed: f64,
    pub until: Option<Date>,
    pub grpc_listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub keep_serving: bool,
    pub plain: bool,
    /// Further webhooks (Alertmanager's webhook format) that get every alert the units get.
    pub webhooks: Vec<String>,
}

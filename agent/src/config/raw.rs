//! The file as written: serde structures that refuse unknown keys, before any validation.

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) unit: String,
    pub(super) plan: String,
    pub(super) private_key: PathBuf,
    pub(super) aggregator: RawAggregator,
    pub(super) outbox: RawOutbox,
    pub(super) metrics: Option<RawMetrics>,
    #[serde(default)]
    pub(super) source: Vec<RawSource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAggregator {
    pub(super) endpoints: Vec<String>,
    pub(super) ca: Option<PathBuf>,
    pub(super) cert: Option<PathBuf>,
    pub(super) key: Option<PathBuf>,
    pub(super) server_name: Option<String>,
    #[serde(default)]
    pub(super) insecure_plaintext: bool,
    pub(super) timeout: Option<String>,
    pub(super) batch_max_reports: Option<usize>,
    pub(super) heartbeat: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutbox {
    pub(super) path: PathBuf,
    pub(super) max_bytes: Option<u64>,
    pub(super) max_age: Option<String>,
    pub(super) when_full: Option<WhenFull>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) listen: SocketAddr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub(super) name: String,
    pub(super) kind: SourceKindName,
    #[serde(default)]
    pub(super) items: Items,
    pub(super) every: Option<String>,
    pub(super) cron: Option<String>,
    pub(super) splay: Option<String>,
    pub(super) path: Option<PathBuf>,
    pub(super) command: Option<Vec<String>>,
    pub(super) timeout: Option<String>,
    pub(super) url: Option<String>,
    pub(super) query: Option<String>,
    pub(super) encoding: Option<String>,
    #[serde(default)]
    pub(super) fields: Fields,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum SourceKindName {
    Csv,
    Json,
    Command,
    Sql,
}

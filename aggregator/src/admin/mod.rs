//! The operator's commands: the key registry, development certificates, what has arrived, and
//! the plan's state. Each command returns text for the terminal (or JSON with `--json`), so
//! tests can check it directly; what another program needs (registering a key, writing a
//! development CA) is also a typed function of its own ([`register_key`], [`write_dev_ca`]).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use duban_proto::{KeyId, PublicKey};

use crate::clock::parse_time_ms;
use crate::plan::{Plan, show::table};
use crate::store::{Actor, AdminAction, AnyStore, NewKey, ReportFilter, Store, StoreError};

mod devca;
mod keys;
mod reports;
mod status;

pub use devca::{CRL_FILE, DevCaFiles, dev_ca, revoke_dev_cert, write_dev_ca};
pub use keys::{KeyRegistration, actor, admin_log, keys_add, keys_list, keys_revoke, register_key};
pub use reports::{reports_list, values_show};
pub use status::status;

/// Why an operator's command failed; each message names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("unit {unit:?} is not in plan {plan}; `duban-aggregator plan show` lists the units")]
    UnknownUnit { unit: String, plan: String },
    #[error("indicator {indicator:?} is not in plan {plan}")]
    UnknownIndicator { indicator: String, plan: String },
    #[error("{flag}: {message}")]
    Flag { flag: &'static str, message: String },
    #[error("no key {0} is registered; `duban-aggregator keys list` shows them")]
    NoSuchKey(KeyId),
    #[error(transparent)]
    Key(#[from] duban_proto::KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot create {path}: {source}")]
    Create {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the development CA: {0}")]
    Ca(#[from] rcgen::Error),
    #[error("JSON output: {0}")]
    Json(#[from] serde_json::Error),
}

fn time_text(ms: Option<i64>) -> String {
    match ms.map(jiff::Timestamp::from_millisecond) {
        Some(Ok(ts)) => ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Some(Err(_)) => "(invalid)".into(),
        None => "—".into(),
    }
}

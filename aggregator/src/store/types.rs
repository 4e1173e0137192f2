//! Plain data crossing the store boundary.

use duban_proto::KeyId;
use serde::Serialize;

/// A verified, validated report ready to be stored. `values` and `task_updates` hold only the
/// items that passed validation; `refused_count` says how many did not.
#[derive(Debug, Clone)]
pub struct NewReport {
    pub plan_id: String,
    pub unit_id: String,
    pub report_id: [u8; 16],
    pub key_id: KeyId,
    pub seq: u64,
    pub issued_at_ms: i64,
    pub received_at_ms: i64,
    pub period: String,
    pub revision: u32,
    pub payload: Vec<u8>,
    pub payload_type: String,
    pub signature: Vec<u8>,
    pub payload_sha256: [u8; 32],
    pub values: Vec<NewValue>,
    pub task_updates: Vec<NewTaskUpdate>,
    pub refused_count: u32,
}

#[derive(Debug, Clone)]
pub struct NewValue {
    pub indicator_id: String,
    pub value: f64,
    pub note: String,
}

#[derive(Debug, Clone)]
pub struct NewTaskUpdate {
    pub task_id: String,
    pub milestone_id: String,
    pub percent: f64,
    pub status: String,
    pub note: String,
}

/// What the store made of one report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Newly stored. `seq_gap` counts the seqs skipped since the key's previous highest;
    /// `changed` counts current values and task updates this report changed.
    Stored {
        report_pk: i64,
        seq_gap: u64,
        changed: u32,
    },
    /// Same report id, same payload bytes: nothing new stored.
    Duplicate,
    /// Same report id, different payload bytes (recorded as a security event).
    Conflict,
    /// This key's seq was already used by another report (recorded as a security event).
    Replay { existing_report_id: Vec<u8> },
}

#[derive(Debug, Clone)]
pub struct NewKey {
    pub key_id: KeyId,
    pub unit_id: String,
    pub public_key: [u8; 32],
    pub not_before_ms: Option<i64>,
    pub not_after_ms: Option<i64>,
    pub added_at_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyRow {
    #[serde(serialize_with = "hex_key_id")]
    pub key_id: KeyId,
    pub unit_id: String,
    #[serde(serialize_with = "hex_bytes")]
    pub public_key: [u8; 32],
    pub not_before_ms: Option<i64>,
    pub not_after_ms: Option<i64>,
    pub added_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
    pub max_seq: i64,
}

#[derive(Debug, Clone, Default)]
pub struct ReportFilter {
    pub unit_id: Option<String>,
    pub indicator_id: Option<String>,
    pub period: Option<String>,
    pub limit: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReportRow {
    pub report_pk: i64,
    pub plan_id: String,
    pub unit_id: String,
    #[serde(serialize_with = "hex_bytes")]
    pub report_id: Vec<u8>,
    #[serde(serialize_with = "hex_bytes")]
    pub key_id: Vec<u8>,
    pub seq: i64,
    pub issued_at_ms: i64,
    pub received_at_ms: i64,
    pub period: String,
    pub revision: i64,
    pub values_count: i64,
    pub task_updates_count: i64,
    pub refused_count: i64,
}

/// One value or task update as stored with its report (current or not): the evidence of what
/// each report carried.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredItem {
    pub report_pk: i64,
    pub unit_id: String,
    pub seq: i64,
    pub revision: i64,
    /// `value` or `task_update`.
    pub kind: String,
    /// The indicator id, or `task/milestone`.
    pub subject: String,
    pub period: String,
    /// The value, or the task update's percent.
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRow {
    pub at_ms: i64,
    pub plan_id: String,
    pub kind: String,
    pub subject: String,
    pub unit_id: String,
    pub period: String,
    pub old_value: Option<f64>,
    pub new_value: f64,
    pub old_report_pk: Option<i64>,
    pub new_report_pk: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEnvelope {
    pub payload: Vec<u8>,
    pub payload_type: String,
    pub key_id: Vec<u8>,
    pub signature: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecurityEvent {
    pub at_ms: i64,
    pub kind: String,
    pub unit_id: String,
    #[serde(serialize_with = "hex_bytes")]
    pub key_id: Vec<u8>,
    #[serde(serialize_with = "hex_bytes")]
    pub report_id: Vec<u8>,
    pub detail: String,
}

fn hex_bytes<S: serde::Serializer>(bytes: impl AsRef<[u8]>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(bytes))
}

fn hex_key_id<S: serde::Serializer>(key_id: &KeyId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&key_id.to_string())
}

/// Who made an administrative change: the OS user, on which host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Actor {
    pub os_user: String,
    pub host: String,
}

/// An administrative change, recorded with the change in one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdminAction {
    pub at_ms: i64,
    #[serde(flatten)]
    pub actor: Actor,
    /// `keys.add`, `keys.revoke`.
    pub action: String,
    /// What it changed: the key id.
    pub subject: String,
    pub unit_id: String,
    /// The rest, in words: validity window, the revocation time.
    pub detail: String,
}

/// See [`Store::write_marker`](super::Store::write_marker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteMarker {
    pub audit: i64,
    pub statements: i64,
    /// The highest report stored: current rows written after it carry a greater `report_pk`.
    pub reports: i64,
}

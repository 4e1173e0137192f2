//! The 督办 record: signed statements about alert cases, shared by both backends (sqlx `Any`).
//! The unique constraints `(unit_id, statement_id)` and `(key_id, seq)` decide what is new, a
//! resend, or a replay, as they do for reports.

use sqlx::{AnyPool, Row};

use super::StoreError;
pub use crate::progress::input::StatementRow;

/// A verified, authorised statement, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewStatement {
    pub plan_id: String,
    pub unit_id: String,
    pub statement_id: Vec<u8>,
    pub key_id: Vec<u8>,
    pub seq: i64,
    pub issued_at_ms: i64,
    pub received_at_ms: i64,
    pub case_id: String,
    /// `acknowledge`, `explain`, `request_extension`, `claim_done`, `grant_extension`,
    /// `refuse_extension`, `confirm_done` or `reject_done`.
    pub kind: String,
    pub date: String,
    pub note: String,
    pub reference: String,
    /// For a decision: the unit whose request or claim it decides.
    pub about_unit: String,
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
}

/// What storing a statement came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementOutcome {
    Stored,
    /// The same statement, byte for byte, was stored before.
    Duplicate,
    /// The statement id was used before with other content.
    IdConflict,
    /// Another statement holds this key's seq.
    SeqReplay,
}

pub(super) async fn add_statement(
    pool: &AnyPool,
    s: &NewStatement,
) -> Result<StatementOutcome, StoreError> {
    let inserted: Option<i64> = sqlx::query_scalar(
        "INSERT INTO statements (plan_id, unit_id, statement_id, key_id, seq, issued_at_ms, received_at_ms, case_id, kind, date, note, reference, about_unit, payload, signature)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
         ON CONFLICT DO NOTHING RETURNING pk",
    )
    .bind(s.plan_id.clone())
    .bind(s.unit_id.clone())
    .bind(s.statement_id.clone())
    .bind(s.key_id.clone())
    .bind(s.seq)
    .bind(s.issued_at_ms)
    .bind(s.received_at_ms)
    .bind(s.case_id.clone())
    .bind(s.kind.clone())
    .bind(s.date.clone())
    .bind(s.note.clone())
    .bind(s.reference.clone())
    .bind(s.about_unit.clone())
    .bind(s.payload.clone())
    .bind(s.signature.clone())
    .fetch_optional(pool)
    .await?;
    if inserted.is_some() {
        return Ok(StatementOutcome::Stored);
    }
    let earlier: Option<Vec<u8>> = sqlx::query_scalar(
        "SELECT payload FROM statements WHERE unit_id = $1 AND statement_id = $2",
    )
    .bind(s.unit_id.clone())
    .bind(s.statement_id.clone())
    .fetch_optional(pool)
    .await?;
    Ok(match earlier {
        Some(payload) if payload == s.payload => StatementOutcome::Duplicate,
        Some(_) => StatementOutcome::IdConflict,
        None => StatementOutcome::SeqReplay,
    })
}

/// The statements of a plan received at or before `until_ms`, oldest first.
pub(super) async fn statements(
    pool: &AnyPool,
    plan_id: &str,
    until_ms: i64,
) -> Result<Vec<StatementRow>, StoreError> {
    let rows = sqlx::query(
        "SELECT unit_id, seq, issued_at_ms, received_at_ms, case_id, kind, date, note, reference, about_unit
         FROM statements WHERE plan_id = $1 AND received_at_ms <= $2 ORDER BY received_at_ms, pk",
    )
    .bind(plan_id.to_owned())
    .bind(until_ms)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(StatementRow {
                unit_id: r.try_get("unit_id")?,
                seq: r.try_get("seq")?,
                issued_at_ms: r.try_get("issued_at_ms")?,
                received_at_ms: r.try_get("received_at_ms")?,
                case_id: r.try_get("case_id")?,
                kind: r.try_get("kind")?,
                date: r.try_get("date")?,
                note: r.try_get("note")?,
                reference: r.try_get("reference")?,
                about_unit: r.try_get("about_unit")?,
            })
        })
        .collect()
}

/// The highest statement seq stored under a key (0 when none).
pub(super) async fn statement_max_seq(pool: &AnyPool, key_id: &[u8]) -> Result<i64, StoreError> {
    let max: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM statements WHERE key_id = $1")
        .bind(key_id.to_vec())
        .fetch_one(pool)
        .await?;
    Ok(max.unwrap_or(0))
}

//! Reconciliation inside one transaction, shared by both backends (sqlx `Any`, `$n` params).
//!
//! For each report, in order:
//! 1. `INSERT .. ON CONFLICT DO NOTHING RETURNING report_pk`: the unique constraints decide.
//!    When nothing is inserted, look at what is there: the same `(unit_id, report_id)` with the
//!    same payload hash is a duplicate, with another hash a conflict; otherwise the
//!    `(key_id, seq)` was taken by another report: a replay. Conflicts and replays are written
//!    as security events.
//! 2. Advance the key's `max_seq` and report the gap.
//! 3. For each value and task update: keep history; replace the current row only when the new
//!    `(revision, issued_at_ms, seq)` is greater, and write an audit row when it does.
//!
//! On PostgreSQL, `FOR UPDATE` on the current row and the key row serialises concurrent
//! replicas touching the same key; on SQLite the single writer already does.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::StoreError;
use super::types::*;

/// The statements that differ between backends.
pub(super) struct Dialect {
    pub key_max_seq: &'static str,
    pub current_value: &'static str,
    pub current_task: &'static str,
}

pub(super) const SQLITE: Dialect = Dialect {
    key_max_seq: "SELECT max_seq FROM keys WHERE key_id = $1",
    current_value: "SELECT value, revision, issued_at_ms, seq, report_pk FROM current_values \
        WHERE plan_id = $1 AND indicator_id = $2 AND unit_id = $3 AND period = $4",
    current_task: "SELECT percent, revision, issued_at_ms, seq, report_pk FROM current_tasks \
        WHERE plan_id = $1 AND task_id = $2 AND milestone_id = $3 AND unit_id = $4 AND period = $5",
};

pub(super) const POSTGRES: Dialect = Dialect {
    key_max_seq: "SELECT max_seq FROM keys WHERE key_id = $1 FOR UPDATE",
    current_value: "SELECT value, revision, issued_at_ms, seq, report_pk FROM current_values \
        WHERE plan_id = $1 AND indicator_id = $2 AND unit_id = $3 AND period = $4 FOR UPDATE",
    current_task: "SELECT percent, revision, issued_at_ms, seq, report_pk FROM current_tasks \
        WHERE plan_id = $1 AND task_id = $2 AND milestone_id = $3 AND unit_id = $4 AND period = $5 \
        FOR UPDATE",
};

const INSERT_REPORT: &str = "INSERT INTO reports (plan_id, unit_id, report_id, key_id, seq, \
    issued_at_ms, received_at_ms, period, revision, payload, payload_type, signature, \
    payload_sha256, values_count, task_updates_count, refused_count) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
    ON CONFLICT DO NOTHING RETURNING report_pk";

/// The ordering key that decides which of two reports for one value wins.
type Rank = (i64, i64, i64);

fn rank(report: &NewReport) -> Rank {
    (
        i64::from(report.revision),
        report.issued_at_ms,
        seq_i64(report.seq),
    )
}

/// Seqs above i64::MAX cannot be stored; validation refuses them before this point.
fn seq_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

pub(super) async fn ingest_one(
    conn: &mut AnyConnection,
    dialect: &Dialect,
    report: &NewReport,
) -> Result<StoreOutcome, StoreError> {
    let inserted: Option<AnyRow> = sqlx::query(INSERT_REPORT)
        .bind(report.plan_id.clone())
        .bind(report.unit_id.clone())
        .bind(report.report_id.to_vec())
        .bind(report.key_id.as_bytes().to_vec())
        .bind(seq_i64(report.seq))
        .bind(report.issued_at_ms)
        .bind(report.received_at_ms)
        .bind(report.period.clone())
        .bind(i64::from(report.revision))
        .bind(report.payload.clone())
        .bind(report.payload_type.clone())
        .bind(report.signature.clone())
        .bind(report.payload_sha256.to_vec())
        .bind(report.values.len() as i64)
        .bind(report.task_updates.len() as i64)
        .bind(i64::from(report.refused_count))
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = inserted else {
        return classify_existing(conn, report).await;
    };
    let report_pk: i64 = row.try_get(0)?;
    let seq_gap = advance_seq(conn, dialect, report).await?;
    let mut changed = 0;
    for value in &report.values {
        changed += u32::from(store_value(conn, dialect, report, report_pk, value).await?);
    }
    for update in &report.task_updates {
        changed += u32::from(store_task(conn, dialect, report, report_pk, update).await?);
    }
    Ok(StoreOutcome::Stored {
        report_pk,
        seq_gap,
        changed,
    })
}

async fn classify_existing(
    conn: &mut AnyConnection,
    report: &NewReport,
) -> Result<StoreOutcome, StoreError> {
    let same_id: Option<AnyRow> =
        sqlx::query("SELECT payload_sha256 FROM reports WHERE unit_id = $1 AND report_id = $2")
            .bind(report.unit_id.clone())
            .bind(report.report_id.to_vec())
            .fetch_optional(&mut *conn)
            .await?;
    if let Some(row) = same_id {
        let hash: Vec<u8> = row.try_get(0)?;
        if hash == report.payload_sha256 {
            return Ok(StoreOutcome::Duplicate);
        }
        security_event(
            conn,
            report,
            "report_id_conflict",
            "same report id, different payload bytes",
        )
        .await?;
        return Ok(StoreOutcome::Conflict);
    }
    let same_seq: Option<AnyRow> =
        sqlx::query("SELECT report_id FROM reports WHERE key_id = $1 AND seq = $2")
            .bind(report.key_id.as_bytes().to_vec())
            .bind(seq_i64(report.seq))
            .fetch_optional(&mut *conn)
            .await?;
    match same_seq {
        Some(row) => {
            let existing_report_id: Vec<u8> = row.try_get(0)?;
            let detail = format!(
                "seq {} already used by report {}",
                report.seq,
                hex::encode(&existing_report_id)
            );
            security_event(conn, report, "seq_replay", &detail).await?;
            Ok(StoreOutcome::Replay { existing_report_id })
        }
        None => Err(StoreError::Corrupt {
            table: "reports",
            detail: "insert conflicted but no conflicting row was found".into(),
        }),
    }
}

async fn security_event(
    conn: &mut AnyConnection,
    report: &NewReport,
    kind: &str,
    detail: &str,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO security_events (at_ms, kind, unit_id, key_id, report_id, detail) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(report.received_at_ms)
        .bind(kind.to_owned())
        .bind(report.unit_id.clone())
        .bind(report.key_id.as_bytes().to_vec())
        .bind(report.report_id.to_vec())
        .bind(detail.to_owned())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn advance_seq(
    conn: &mut AnyConnection,
    dialect: &Dialect,
    report: &NewReport,
) -> Result<u64, StoreError> {
    let row: Option<AnyRow> = sqlx::query(dialect.key_max_seq)
        .bind(report.key_id.as_bytes().to_vec())
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else { return Ok(0) };
    let mut max_seq: i64 = row.try_get(0)?;
    let seq = seq_i64(report.seq);
    if seq <= max_seq {
        return Ok(0);
    }
    sqlx::query("UPDATE keys SET max_seq = $1 WHERE key_id = $2")
        .bind(seq)
        .bind(report.key_id.as_bytes().to_vec())
        .execute(&mut *conn)
        .await?;
    if max_seq == 0 {
        // A key's first report. After a rotation (`duban-agent rotate-key`) the agent's outbox
        // goes on counting where the unit's previous key stopped: the gap is counted from
        // there, not from 0.
        let previous: Option<i64> =
            sqlx::query_scalar("SELECT MAX(max_seq) FROM keys WHERE unit_id = $1 AND key_id <> $2")
                .bind(&report.unit_id)
                .bind(report.key_id.as_bytes().to_vec())
                .fetch_one(&mut *conn)
                .await?;
        max_seq = previous.unwrap_or(0).min(seq - 1);
    }
    Ok((seq - max_seq - 1) as u64)
}

/// What the current row (value or percent, rank, report_pk) means for a new report.
enum Current {
    /// None yet: insert.
    Absent,
    /// Older than the report: replace it (its value and report are kept for the audit row).
    Older { value: f64, report_pk: i64 },
    /// As new or newer: keep it.
    NotOlder,
}

fn compare(current: Option<AnyRow>, report: &NewReport) -> Result<Current, StoreError> {
    let Some(row) = current else {
        return Ok(Current::Absent);
    };
    let old_rank: Rank = (row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
    if rank(report) <= old_rank {
        return Ok(Current::NotOlder);
    }
    Ok(Current::Older {
        value: row.try_get(0)?,
        report_pk: row.try_get(4)?,
    })
}

/// Returns whether the current value changed.
async fn store_value(
    conn: &mut AnyConnection,
    dialect: &Dialect,
    report: &NewReport,
    report_pk: i64,
    value: &NewValue,
) -> Result<bool, StoreError> {
    sqlx::query("INSERT INTO value_history (report_pk, plan_id, indicator_id, unit_id, period, value, note) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(report_pk)
        .bind(report.plan_id.clone())
        .bind(value.indicator_id.clone())
        .bind(report.unit_id.clone())
        .bind(report.period.clone())
        .bind(value.value)
        .bind(value.note.clone())
        .execute(&mut *conn)
        .await?;
    let current: Option<AnyRow> = sqlx::query(dialect.current_value)
        .bind(report.plan_id.clone())
        .bind(value.indicator_id.clone())
        .bind(report.unit_id.clone())
        .bind(report.period.clone())
        .fetch_optional(&mut *conn)
        .await?;
    let old = match compare(current, report)? {
        Current::NotOlder => return Ok(false),
        Current::Absent => None,
        Current::Older { value, report_pk } => Some((value, report_pk)),
    };
    let (revision, issued_at_ms, seq) = rank(report);
    if old.is_none() {
        sqlx::query("INSERT INTO current_values (plan_id, indicator_id, unit_id, period, value, note, revision, issued_at_ms, seq, report_pk, updated_at_ms, first_received_at_ms, first_issued_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $8)")
            .bind(report.plan_id.clone())
            .bind(value.indicator_id.clone())
            .bind(report.unit_id.clone())
            .bind(report.period.clone())
            .bind(value.value)
            .bind(value.note.clone())
            .bind(revision)
            .bind(issued_at_ms)
            .bind(seq)
            .bind(report_pk)
            .bind(report.received_at_ms)
            .execute(&mut *conn)
            .await?;
    } else {
        sqlx::query("UPDATE current_values SET value = $5, note = $6, revision = $7, issued_at_ms = $8, seq = $9, report_pk = $10, updated_at_ms = $11 WHERE plan_id = $1 AND indicator_id = $2 AND unit_id = $3 AND period = $4")
            .bind(report.plan_id.clone())
            .bind(value.indicator_id.clone())
            .bind(report.unit_id.clone())
            .bind(report.period.clone())
            .bind(value.value)
            .bind(value.note.clone())
            .bind(revision)
            .bind(issued_at_ms)
            .bind(seq)
            .bind(report_pk)
            .bind(report.received_at_ms)
            .execute(&mut *conn)
            .await?;
    }
    audit(
        conn,
        report,
        "value",
        &value.indicator_id,
        old,
        value.value,
        report_pk,
    )
    .await?;
    Ok(true)
}

async fn store_task(
    conn: &mut AnyConnection,
    dialect: &Dialect,
    report: &NewReport,
    report_pk: i64,
    update: &NewTaskUpdate,
) -> Result<bool, StoreError> {
    sqlx::query("INSERT INTO task_history (report_pk, plan_id, task_id, milestone_id, unit_id, period, percent, status, note) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
        .bind(report_pk)
        .bind(report.plan_id.clone())
        .bind(update.task_id.clone())
        .bind(update.milestone_id.clone())
        .bind(report.unit_id.clone())
        .bind(report.period.clone())
        .bind(update.percent)
        .bind(update.status.clone())
        .bind(update.note.clone())
        .execute(&mut *conn)
        .await?;
    let current: Option<AnyRow> = sqlx::query(dialect.current_task)
        .bind(report.plan_id.clone())
        .bind(update.task_id.clone())
        .bind(update.milestone_id.clone())
        .bind(report.unit_id.clone())
        .bind(report.period.clone())
        .fetch_optional(&mut *conn)
        .await?;
    let old = match compare(current, report)? {
        Current::NotOlder => return Ok(false),
        Current::Absent => None,
        Current::Older { value, report_pk } => Some((value, report_pk)),
    };
    let (revision, issued_at_ms, seq) = rank(report);
    let sql = if old.is_none() {
        "INSERT INTO current_tasks (plan_id, task_id, milestone_id, unit_id, period, percent, status, note, revision, issued_at_ms, seq, report_pk, updated_at_ms, first_received_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13)"
    } else {
        "UPDATE current_tasks SET percent = $6, status = $7, note = $8, revision = $9, issued_at_ms = $10, seq = $11, report_pk = $12, updated_at_ms = $13 WHERE plan_id = $1 AND task_id = $2 AND milestone_id = $3 AND unit_id = $4 AND period = $5"
    };
    sqlx::query(sql)
        .bind(report.plan_id.clone())
        .bind(update.task_id.clone())
        .bind(update.milestone_id.clone())
        .bind(report.unit_id.clone())
        .bind(report.period.clone())
        .bind(update.percent)
        .bind(update.status.clone())
        .bind(update.note.clone())
        .bind(revision)
        .bind(issued_at_ms)
        .bind(seq)
        .bind(report_pk)
        .bind(report.received_at_ms)
        .execute(&mut *conn)
        .await?;
    let subject = format!("{}/{}", update.task_id, update.milestone_id);
    audit(
        conn,
        report,
        "task",
        &subject,
        old,
        update.percent,
        report_pk,
    )
    .await?;
    Ok(true)
}

async fn audit(
    conn: &mut AnyConnection,
    report: &NewReport,
    kind: &str,
    subject: &str,
    old: Option<(f64, i64)>,
    new_value: f64,
    report_pk: i64,
) -> Result<(), StoreError> {
    // sqlx 0.9.0's Any driver encodes a NULL f64 as a NULL f32, which poisons PostgreSQL's
    // cached statement for the next non-NULL f64; so a first value binds no NULL at all.
    let sql = match old {
        None => {
            "INSERT INTO audit (at_ms, plan_id, kind, subject, unit_id, period, new_value, new_report_pk) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        }
        Some(_) => {
            "INSERT INTO audit (at_ms, plan_id, kind, subject, unit_id, period, new_value, new_report_pk, old_value, old_report_pk) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        }
    };
    let mut query = sqlx::query(sql)
        .bind(report.received_at_ms)
        .bind(report.plan_id.clone())
        .bind(kind.to_owned())
        .bind(subject.to_owned())
        .bind(report.unit_id.clone())
        .bind(report.period.clone())
        .bind(new_value)
        .bind(report_pk);
    if let Some((old_value, old_report_pk)) = old {
        query = query.bind(old_value).bind(old_report_pk);
    }
    query.execute(&mut *conn).await?;
    Ok(())
}

//! The SQLite statements of a group: multi-row reads by row value (`(a, b) IN (VALUES ..)`)
//! and multi-row writes, with typed binds, split so that no statement exceeds [`MAX_BINDS`].

use std::collections::BTreeSet;

use duban_proto::KeyId;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use crate::store::StoreError;
use crate::store::decide::{Current, Decided, KeyState, Known};
use crate::store::types::NewReport;

/// Below SQLite's limit on bound parameters (32766 since 3.32).
const MAX_BINDS: usize = 32_000;

/// Rows per statement for a table of `columns` binds per row.
fn rows_per_statement(columns: usize) -> usize {
    MAX_BINDS / columns
}

fn key_id(bytes: Vec<u8>) -> Result<KeyId, StoreError> {
    KeyId::from_slice(&bytes).map_err(|_| StoreError::Corrupt {
        table: "keys",
        detail: format!("a key id of {} bytes", bytes.len()),
    })
}

/// Reads, in one statement per table (and per [`MAX_BINDS`]), what the database holds for
/// every key the group touches.
pub(super) async fn read_known(
    conn: &mut SqliteConnection,
    reports: &[&NewReport],
) -> Result<Known, StoreError> {
    let mut known = Known::default();
    for chunk in reports.chunks(rows_per_statement(2)) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT unit_id, report_id, payload_sha256 FROM reports WHERE (unit_id, report_id) IN (",
        );
        q.push_values(chunk, |mut b, r| {
            b.push_bind(r.unit_id.as_str())
                .push_bind(r.report_id.as_slice());
        });
        q.push(")");
        for row in q.build().fetch_all(&mut *conn).await? {
            let report_id: Vec<u8> = row.try_get(1)?;
            let hash: Vec<u8> = row.try_get(2)?;
            let (Ok(report_id), Ok(hash)) = (report_id.try_into(), hash.try_into()) else {
                return Err(StoreError::Corrupt {
                    table: "reports",
                    detail: "a report id or payload hash of the wrong length".into(),
                });
            };
            known
                .by_report_id
                .insert((row.try_get(0)?, report_id), hash);
        }

        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT key_id, seq, report_id FROM reports WHERE (key_id, seq) IN (",
        );
        q.push_values(chunk, |mut b, r| {
            b.push_bind(r.key_id.as_bytes().as_slice())
                .push_bind(crate::store::decide::seq_i64(r.seq));
        });
        q.push(")");
        for row in q.build().fetch_all(&mut *conn).await? {
            known
                .by_seq
                .insert((key_id(row.try_get(0)?)?, row.try_get(1)?), row.try_get(2)?);
        }
    }

    let units: BTreeSet<&str> = reports.iter().map(|r| r.unit_id.as_str()).collect();
    let keys: BTreeSet<&[u8]> = reports
        .iter()
        .map(|r| r.key_id.as_bytes().as_slice())
        .collect();
    let units: Vec<&str> = units.into_iter().collect();
    let keys: Vec<&[u8]> = keys.into_iter().collect();
    for chunk in units.chunks(MAX_BINDS) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT key_id, unit_id, max_seq FROM keys WHERE unit_id IN (",
        );
        let mut list = q.separated(", ");
        for unit in chunk {
            list.push_bind(*unit);
        }
        q.push(")");
        read_keys(conn, q, &mut known).await?;
    }
    for chunk in keys.chunks(MAX_BINDS) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT key_id, unit_id, max_seq FROM keys WHERE key_id IN (",
        );
        let mut list = q.separated(", ");
        for key in chunk {
            list.push_bind(*key);
        }
        q.push(")");
        read_keys(conn, q, &mut known).await?;
    }

    let values: Vec<_> = reports
        .iter()
        .flat_map(|r| r.values.iter().map(move |v| Known::value_key(r, v)))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    for chunk in values.chunks(rows_per_statement(4)) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT plan_id, indicator_id, unit_id, period, value, revision, issued_at_ms, seq, \
             report_pk FROM current_values WHERE (plan_id, indicator_id, unit_id, period) IN (",
        );
        q.push_values(chunk, |mut b, k| {
            b.push_bind(k.0.as_str())
                .push_bind(k.1.as_str())
                .push_bind(k.2.as_str())
                .push_bind(k.3.as_str());
        });
        q.push(")");
        for row in q.build().fetch_all(&mut *conn).await? {
            let key = (
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
            );
            known.values.insert(key, current(&row, 4)?);
        }
    }

    let tasks: Vec<_> = reports
        .iter()
        .flat_map(|r| r.task_updates.iter().map(move |t| Known::task_key(r, t)))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    for chunk in tasks.chunks(rows_per_statement(5)) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT plan_id, task_id, milestone_id, unit_id, period, percent, revision, \
             issued_at_ms, seq, report_pk FROM current_tasks \
             WHERE (plan_id, task_id, milestone_id, unit_id, period) IN (",
        );
        q.push_values(chunk, |mut b, k| {
            b.push_bind(k.0.as_str())
                .push_bind(k.1.as_str())
                .push_bind(k.2.as_str())
                .push_bind(k.3.as_str())
                .push_bind(k.4.as_str());
        });
        q.push(")");
        for row in q.build().fetch_all(&mut *conn).await? {
            let key = (
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
                row.try_get(4)?,
            );
            known.tasks.insert(key, current(&row, 5)?);
        }
    }
    Ok(known)
}

async fn read_keys(
    conn: &mut SqliteConnection,
    mut q: QueryBuilder<Sqlite>,
    known: &mut Known,
) -> Result<(), StoreError> {
    for row in q.build().fetch_all(&mut *conn).await? {
        known.keys.insert(
            key_id(row.try_get(0)?)?,
            KeyState {
                unit_id: row.try_get(1)?,
                max_seq: row.try_get(2)?,
            },
        );
    }
    Ok(())
}

/// Value (or percent), revision, issued_at_ms, seq, report_pk from column `at` on.
fn current(row: &sqlx::sqlite::SqliteRow, at: usize) -> Result<Current, StoreError> {
    Ok(Current {
        value: row.try_get(at)?,
        rank: (
            row.try_get(at + 1)?,
            row.try_get(at + 2)?,
            row.try_get(at + 3)?,
        ),
        report_pk: row.try_get(at + 4)?,
    })
}

/// Writes what [`decide`](crate::store::decide::decide) decided: reports first (history,
/// current rows and audit refer to them), then each table in one statement per chunk.
pub(super) async fn write(conn: &mut SqliteConnection, d: &Decided<'_>) -> Result<(), StoreError> {
    for chunk in d.reports.chunks(rows_per_statement(17)) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO reports (report_pk, plan_id, unit_id, report_id, key_id, seq, \
             issued_at_ms, received_at_ms, period, revision, payload, payload_type, signature, \
             payload_sha256, values_count, task_updates_count, refused_count) ",
        );
        q.push_values(chunk, |mut b, (pk, r)| {
            b.push_bind(*pk)
                .push_bind(r.plan_id.as_str())
                .push_bind(r.unit_id.as_str())
                .push_bind(r.report_id.as_slice())
                .push_bind(r.key_id.as_bytes().as_slice())
                .push_bind(crate::store::decide::seq_i64(r.seq))
                .push_bind(r.issued_at_ms)
                .push_bind(r.received_at_ms)
                .push_bind(r.period.as_str())
                .push_bind(i64::from(r.revision))
                .push_bind(r.payload.as_slice())
                .push_bind(r.payload_type.as_str())
                .push_bind(r.signature.as_slice())
                .push_bind(r.payload_sha256.as_slice())
                .push_bind(r.values.len() as i64)
                .push_bind(r.task_updates.len() as i64)
                .push_bind(i64::from(r.refused_count));
        });
        q.build().execute(&mut *conn).await?;
    }

    for chunk in d.value_history.chunks(rows_per_statement(7)) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO value_history (report_pk, plan_id, indicator_id, unit_id, period, value, note) ",
        );
        q.push_values(chunk, |mut b, (pk, r, v)| {
            b.push_bind(*pk)
                .push_bind(r.plan_id.as_str())
                .push_bind(v.indicator_id.as_str())
                .push_bind(r.unit_id.as_str())
                .push_bind(r.period.as_str())
                .push_bind(v.value)
                .push_bind(v.note.as_str());
        });
        q.build().execute(&mut *conn).await?;
    }

    for chunk in d.task_history.chunks(rows_per_statement(9)) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO task_history (report_pk, plan_id, task_id, milestone_id, unit_id, period, percent, status, note) ",
        );
        q.push_values(chunk, |mut b, (pk, r, t)| {
            b.push_bind(*pk)
                .push_bind(r.plan_id.as_str())
                .push_bind(t.task_id.as_str())
                .push_bind(t.milestone_id.as_str())
                .push_bind(r.unit_id.as_str())
                .push_bind(r.period.as_str())
                .push_bind(t.percent)
                .push_bind(t.status.as_str())
                .push_bind(t.note.as_str());
        });
        q.build().execute(&mut *conn).await?;
    }

    // One writer holds the database: an upsert is exact here (the row exists exactly when
    // `insert` is false), and first_received_at_ms / first_issued_at_ms are kept on update.
    for chunk in d.values.chunks(rows_per_statement(13)) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO current_values (plan_id, indicator_id, unit_id, period, value, note, \
             revision, issued_at_ms, seq, report_pk, updated_at_ms, first_received_at_ms, \
             first_issued_at_ms) ",
        );
        q.push_values(chunk, |mut b, w| {
            b.push_bind(w.report.plan_id.as_str())
                .push_bind(w.item.indicator_id.as_str())
                .push_bind(w.report.unit_id.as_str())
                .push_bind(w.report.period.as_str())
                .push_bind(w.item.value)
                .push_bind(w.item.note.as_str())
                .push_bind(i64::from(w.report.revision))
                .push_bind(w.report.issued_at_ms)
                .push_bind(crate::store::decide::seq_i64(w.report.seq))
                .push_bind(w.report_pk)
                .push_bind(w.report.received_at_ms)
                .push_bind(w.first_received_at_ms)
                .push_bind(w.first_issued_at_ms);
        });
        q.push(
            " ON CONFLICT (plan_id, indicator_id, unit_id, period) DO UPDATE SET \
             value = excluded.value, note = excluded.note, revision = excluded.revision, \
             issued_at_ms = excluded.issued_at_ms, seq = excluded.seq, \
             report_pk = excluded.report_pk, updated_at_ms = excluded.updated_at_ms",
        );
        q.build().execute(&mut *conn).await?;
    }

    for chunk in d.tasks.chunks(rows_per_statement(14)) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO current_tasks (plan_id, task_id, milestone_id, unit_id, period, percent, \
             status, note, revision, issued_at_ms, seq, report_pk, updated_at_ms, \
             first_received_at_ms) ",
        );
        q.push_values(chunk, |mut b, w| {
            b.push_bind(w.report.plan_id.as_str())
                .push_bind(w.item.task_id.as_str())
                .push_bind(w.item.milestone_id.as_str())
                .push_bind(w.report.unit_id.as_str())
                .push_bind(w.report.period.as_str())
                .push_bind(w.item.percent)
                .push_bind(w.item.status.as_str())
                .push_bind(w.item.note.as_str())
                .push_bind(i64::from(w.report.revision))
                .push_bind(w.report.issued_at_ms)
                .push_bind(crate::store::decide::seq_i64(w.report.seq))
                .push_bind(w.report_pk)
                .push_bind(w.report.received_at_ms)
                .push_bind(w.first_received_at_ms);
        });
        q.push(
            " ON CONFLICT (plan_id, task_id, milestone_id, unit_id, period) DO UPDATE SET \
             percent = excluded.percent, status = excluded.status, note = excluded.note, \
             revision = excluded.revision, issued_at_ms = excluded.issued_at_ms, \
             seq = excluded.seq, report_pk = excluded.report_pk, \
             updated_at_ms = excluded.updated_at_ms",
        );
        q.build().execute(&mut *conn).await?;
    }

    for chunk in d.audit.chunks(rows_per_statement(10)) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO audit (at_ms, plan_id, kind, subject, unit_id, period, new_value, \
             new_report_pk, old_value, old_report_pk) ",
        );
        q.push_values(chunk, |mut b, a| {
            b.push_bind(a.report.received_at_ms)
                .push_bind(a.report.plan_id.as_str())
                .push_bind(a.kind)
                .push_bind(a.subject.as_str())
                .push_bind(a.report.unit_id.as_str())
                .push_bind(a.report.period.as_str())
                .push_bind(a.new_value)
                .push_bind(a.report_pk)
                .push_bind(a.old.map(|o| o.0))
                .push_bind(a.old.map(|o| o.1));
        });
        q.build().execute(&mut *conn).await?;
    }

    for chunk in d.security.chunks(rows_per_statement(6)) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO security_events (at_ms, kind, unit_id, key_id, report_id, detail) ",
        );
        q.push_values(chunk, |mut b, e| {
            b.push_bind(e.report.received_at_ms)
                .push_bind(e.kind)
                .push_bind(e.report.unit_id.as_str())
                .push_bind(e.report.key_id.as_bytes().as_slice())
                .push_bind(e.report.report_id.as_slice())
                .push_bind(e.detail.as_str());
        });
        q.build().execute(&mut *conn).await?;
    }

    for chunk in d.key_seqs.chunks(rows_per_statement(2)) {
        let mut q = QueryBuilder::<Sqlite>::new("WITH v (key_id, max_seq) AS (");
        q.push_values(chunk, |mut b, (key, seq)| {
            b.push_bind(key.as_bytes().as_slice()).push_bind(*seq);
        });
        q.push(") UPDATE keys SET max_seq = v.max_seq FROM v WHERE keys.key_id = v.key_id");
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

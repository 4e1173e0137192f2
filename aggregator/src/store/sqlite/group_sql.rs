//! The SQLite statements of a group: multi-row reads by row value (`(a, b) IN (VALUES ..)`)
//! and multi-row writes, with typed binds, split so that no statement exceeds [`MAX_BINDS`].

use std::collections::BTreeSet;

use duban_proto::KeyId;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use crate::store::StoreError;
use crate::store::decide::{Current, Decided, KeyState, Known, TaskKey, ValueKey};
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
        for row in by_report_id(chunk).build().fetch_all(&mut *conn).await? {
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

        for row in by_seq(chunk).build().fetch_all(&mut *conn).await? {
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
        for row in current_values(chunk).build().fetch_all(&mut *conn).await? {
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
        for row in current_tasks(chunk).build().fetch_all(&mut *conn).await? {
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

// The keys of a group are a CTE joined to the table (`k CROSS JOIN t`, so SQLite loops over
// the keys and searches the table's unique index for each); `(a, b) IN (VALUES ..)` would scan
// the whole table. `tests::group_reads_search_indexes` holds every read to its index.

fn by_report_id(chunk: &[&NewReport]) -> QueryBuilder<Sqlite> {
    let mut q = QueryBuilder::<Sqlite>::new("WITH k (unit_id, report_id) AS (");
    q.push_values(chunk, |mut b, r| {
        b.push_bind(r.unit_id.as_str())
            .push_bind(r.report_id.as_slice());
    });
    q.push(
        ") SELECT r.unit_id, r.report_id, r.payload_sha256 FROM k CROSS JOIN reports r \
         ON r.unit_id = k.unit_id AND r.report_id = k.report_id",
    );
    q
}

fn by_seq(chunk: &[&NewReport]) -> QueryBuilder<Sqlite> {
    let mut q = QueryBuilder::<Sqlite>::new("WITH k (key_id, seq) AS (");
    q.push_values(chunk, |mut b, r| {
        b.push_bind(r.key_id.as_bytes().as_slice())
            .push_bind(crate::store::decide::seq_i64(r.seq));
    });
    q.push(
        ") SELECT r.key_id, r.seq, r.report_id FROM k CROSS JOIN reports r \
         ON r.key_id = k.key_id AND r.seq = k.seq",
    );
    q
}

fn current_values(chunk: &[ValueKey]) -> QueryBuilder<Sqlite> {
    let mut q = QueryBuilder::<Sqlite>::new("WITH k (plan_id, indicator_id, unit_id, period) AS (");
    q.push_values(chunk, |mut b, k| {
        b.push_bind(k.0.as_str())
            .push_bind(k.1.as_str())
            .push_bind(k.2.as_str())
            .push_bind(k.3.as_str());
    });
    q.push(
        ") SELECT c.plan_id, c.indicator_id, c.unit_id, c.period, c.value, c.revision, \
         c.issued_at_ms, c.seq, c.report_pk FROM k CROSS JOIN current_values c \
         ON c.plan_id = k.plan_id AND c.indicator_id = k.indicator_id \
         AND c.unit_id = k.unit_id AND c.period = k.period",
    );
    q
}

fn current_tasks(chunk: &[TaskKey]) -> QueryBuilder<Sqlite> {
    let mut q = QueryBuilder::<Sqlite>::new(
        "WITH k (plan_id, task_id, milestone_id, unit_id, period) AS (",
    );
    q.push_values(chunk, |mut b, k| {
        b.push_bind(k.0.as_str())
            .push_bind(k.1.as_str())
            .push_bind(k.2.as_str())
            .push_bind(k.3.as_str())
            .push_bind(k.4.as_str());
    });
    q.push(
        ") SELECT c.plan_id, c.task_id, c.milestone_id, c.unit_id, c.period, c.percent, \
         c.revision, c.issued_at_ms, c.seq, c.report_pk FROM k CROSS JOIN current_tasks c \
         ON c.plan_id = k.plan_id AND c.task_id = k.task_id \
         AND c.milestone_id = k.milestone_id AND c.unit_id = k.unit_id AND c.period = k.period",
    );
    q
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

#[cfg(test)]
mod tests {
    use sqlx::Connection;

    use super::*;

    /// Every read of a group searches its table's unique index: a plan that scans `reports`,
    /// `current_values`, `current_tasks` or `keys` would make each group cost as much as the
    /// whole table.
    /// A connection to a new store's file, migrated, for `EXPLAIN QUERY PLAN`.
    async fn migrated() -> (tempfile::TempDir, SqliteConnection) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("plan.db").display());
        drop(crate::store::SqliteStore::open(&url).await.unwrap());
        let conn = SqliteConnection::connect(&url).await.unwrap();
        (dir, conn)
    }

    #[tokio::test]
    async fn group_reads_search_indexes() {
        let (_dir, mut conn) = migrated().await;
        let report = NewReport {
            plan_id: "p".into(),
            unit_id: "u".into(),
            report_id: [1; 16],
            key_id: KeyId([2; 32]),
            seq: 1,
            issued_at_ms: 0,
            received_at_ms: 0,
            period: "2018".into(),
            revision: 0,
            payload: vec![],
            payload_type: String::new(),
            signature: vec![],
            payload_sha256: [0; 32],
            values: vec![],
            task_updates: vec![],
            refused_count: 0,
        };
        let reports = [&report, &report];
        let value: ValueKey = Default::default();
        let task: TaskKey = Default::default();
        let key = KeyId([2; 32]);
        let mut keys_update = QueryBuilder::<Sqlite>::new("WITH v (key_id, max_seq) AS (");
        keys_update.push_values([(key, 1i64)], |mut b, (k, s)| {
            b.push_bind(k.as_bytes().to_vec()).push_bind(s);
        });
        keys_update.push(
            ") UPDATE keys SET max_seq = (SELECT v.max_seq FROM v WHERE v.key_id = keys.key_id) \
             WHERE key_id IN (SELECT key_id FROM v)",
        );
        for (name, query) in [
            ("by_report_id", by_report_id(&reports)),
            ("by_seq", by_seq(&reports)),
            ("current_values", current_values(&[value.clone(), value])),
            ("current_tasks", current_tasks(&[task.clone(), task])),
            ("keys update", keys_update),
        ] {
            let sql = format!("EXPLAIN QUERY PLAN {}", query.sql().as_str());
            // The plan does not depend on the values bound: bind NULLs for every `?`.
            let holes = sql.matches('?').count();
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for _ in 0..holes {
                q = q.bind(None::<i64>);
            }
            let plan: Vec<String> = q
                .fetch_all(&mut conn)
                .await
                .unwrap()
                .iter()
                .map(|row| row.get::<String, _>(3))
                .collect();
            let scans: Vec<&String> = plan
                .iter()
                .filter(|step| {
                    step.starts_with("SCAN")
                        && !step.starts_with("SCAN k")
                        && !step.starts_with("SCAN v")
                        && !step.contains("CONSTANT ROW")
                })
                .collect();
            assert!(scans.is_empty(), "{name} scans a table: {plan:?}");
        }
    }

    #[tokio::test]
    async fn the_rows_changed_after_a_report_are_read_through_an_index() {
        let (_dir, mut conn) = migrated().await;
        for (table, sql) in [
            ("current_values", crate::store::queries::CHANGED_VALUES),
            ("current_tasks", crate::store::queries::CHANGED_TASKS),
        ] {
            let plan: Vec<String> =
                sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                    .bind("p")
                    .bind(0i64)
                    .fetch_all(&mut conn)
                    .await
                    .unwrap()
                    .iter()
                    .map(|row| row.get::<String, _>(3))
                    .collect();
            assert_eq!(
                plan,
                [format!(
                    "SEARCH {table} USING INDEX {table}_by_report (plan_id=? AND report_pk>?)"
                )],
                "{table}"
            );
        }
    }
}

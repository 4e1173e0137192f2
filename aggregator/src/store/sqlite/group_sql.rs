//! The SQLite statements of a group, through `rusqlite` on the writer's own thread: multi-row
//! reads (the group's keys as a CTE joined to each table's unique index) and multi-row writes,
//! one statement per table and per rung of [`LADDER`].
//!
//! A statement's text depends only on its table and its number of rows. The rows of a table
//! go in statements of the sizes of [`LADDER`], largest first, so that however the groups vary
//! in size the writer prepares each statement once and keeps it (`prepare_cached`): binding
//! and stepping a prepared statement is all a group pays. Each value is bound where SQLite
//! copies it, with no buffer of arguments in between.

use std::collections::BTreeSet;

use duban_proto::KeyId;
use rusqlite::types::ToSql;
use rusqlite::{CachedStatement, Connection, Row, Statement};

use super::corrupt_or;
use crate::store::StoreError;
use crate::store::decide::{Current, Decided, KeyState, Known, seq_i64};
use crate::store::types::NewReport;

/// Rows per statement, largest first. A table's `n` rows take at most three statements of
/// each size; at 17 columns the largest binds 4,352 values, far below SQLite's limit (32,766).
pub(super) const LADDER: [usize; 5] = [256, 64, 16, 4, 1];

/// Prepared statements the writer keeps: every [`Shape`] at every rung of [`LADDER`].
pub(super) const CACHED_STATEMENTS: usize = 128;

/// The text of a multi-row statement: `head`, then `row` once per row (comma-separated), then
/// `tail`.
pub(super) struct Shape {
    head: &'static str,
    row: &'static str,
    tail: &'static str,
}

impl Shape {
    pub(super) fn sql(&self, rows: usize) -> String {
        let mut sql = String::with_capacity(self.head.len() + rows * (self.row.len() + 2) + 256);
        sql.push_str(self.head);
        for i in 0..rows {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(self.row);
        }
        sql.push_str(self.tail);
        sql
    }
}

/// `rows` cut into the sizes of [`LADDER`], largest first.
fn rungs<T>(mut rows: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let size = LADDER.into_iter().find(|&size| size <= rows.len())?;
        let (chunk, rest) = rows.split_at(size);
        rows = rest;
        Some(chunk)
    })
}

/// Binds one statement's parameters in order.
struct Binds<'s, 'c> {
    statement: &'s mut Statement<'c>,
    at: usize,
}

impl Binds<'_, '_> {
    fn bind(&mut self, value: impl ToSql) -> rusqlite::Result<&mut Self> {
        self.at += 1;
        self.statement.raw_bind_parameter(self.at, value)?;
        Ok(self)
    }
}

/// Writes `rows` with `shape`, binding each row's columns with `bind`.
fn write<T>(
    conn: &Connection,
    shape: &Shape,
    rows: &[T],
    mut bind: impl FnMut(&mut Binds, &T) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    for chunk in rungs(rows) {
        bound(conn, shape, chunk, &mut bind)?.raw_execute()?;
    }
    Ok(())
}

/// `shape`'s statement for `chunk`, prepared (or taken from the cache) with every row bound.
fn bound<'c, T>(
    conn: &'c Connection,
    shape: &Shape,
    chunk: &[T],
    bind: &mut impl FnMut(&mut Binds, &T) -> rusqlite::Result<()>,
) -> rusqlite::Result<CachedStatement<'c>> {
    let mut statement = conn.prepare_cached(&shape.sql(chunk.len()))?;
    let mut binds = Binds {
        statement: &mut statement,
        at: 0,
    };
    for row in chunk {
        bind(&mut binds, row)?;
    }
    Ok(statement)
}

/// Reads with `shape` for `keys`, binding each key with `bind` and handing each row found to
/// `found`. A column that cannot be what its table holds is reported as a corrupt row of
/// `table`.
fn read<T>(
    conn: &Connection,
    table: &'static str,
    shape: &Shape,
    keys: &[T],
    mut bind: impl FnMut(&mut Binds, &T) -> rusqlite::Result<()>,
    mut found: impl FnMut(&Row) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    for chunk in rungs(keys) {
        let mut statement = bound(conn, shape, chunk, &mut bind)?;
        let mut rows = statement.raw_query();
        while let Some(row) = rows.next()? {
            found(row).map_err(|error| match error {
                StoreError::Sqlite(error) => corrupt_or(table, error),
                other => other,
            })?;
        }
    }
    Ok(())
}

fn key_id(bytes: Vec<u8>) -> Result<KeyId, StoreError> {
    KeyId::from_slice(&bytes).map_err(|_| StoreError::Corrupt {
        table: "keys",
        detail: format!("a key id of {} bytes", bytes.len()),
    })
}

// The keys of a group are a CTE joined to the table (`k CROSS JOIN t`, so SQLite loops over
// the keys and searches the table's unique index for each); `(a, b) IN (VALUES ..)` would scan
// the whole table. `tests::group_reads_search_indexes` holds every read to its index.

pub(super) const BY_REPORT_ID: Shape = Shape {
    head: "WITH k (unit_id, report_id) AS (VALUES ",
    row: "(?, ?)",
    tail: ") SELECT r.unit_id, r.report_id, r.payload_sha256 FROM k CROSS JOIN reports r \
           ON r.unit_id = k.unit_id AND r.report_id = k.report_id",
};

pub(super) const BY_SEQ: Shape = Shape {
    head: "WITH k (key_id, seq) AS (VALUES ",
    row: "(?, ?)",
    tail: ") SELECT r.key_id, r.seq, r.report_id FROM k CROSS JOIN reports r \
           ON r.key_id = k.key_id AND r.seq = k.seq",
};

pub(super) const KEYS_OF_UNITS: Shape = Shape {
    head: "SELECT key_id, unit_id, max_seq FROM keys WHERE unit_id IN (",
    row: "?",
    tail: ")",
};

pub(super) const KEYS_BY_ID: Shape = Shape {
    head: "SELECT key_id, unit_id, max_seq FROM keys WHERE key_id IN (",
    row: "?",
    tail: ")",
};

pub(super) const CURRENT_VALUES: Shape = Shape {
    head: "WITH k (plan_id, indicator_id, unit_id, period) AS (VALUES ",
    row: "(?, ?, ?, ?)",
    tail: ") SELECT c.plan_id, c.indicator_id, c.unit_id, c.period, c.value, c.revision, \
           c.issued_at_ms, c.seq, c.report_pk FROM k CROSS JOIN current_values c \
           ON c.plan_id = k.plan_id AND c.indicator_id = k.indicator_id \
           AND c.unit_id = k.unit_id AND c.period = k.period",
};

pub(super) const CURRENT_TASKS: Shape = Shape {
    head: "WITH k (plan_id, task_id, milestone_id, unit_id, period) AS (VALUES ",
    row: "(?, ?, ?, ?, ?)",
    tail: ") SELECT c.plan_id, c.task_id, c.milestone_id, c.unit_id, c.period, c.percent, \
           c.revision, c.issued_at_ms, c.seq, c.report_pk FROM k CROSS JOIN current_tasks c \
           ON c.plan_id = k.plan_id AND c.task_id = k.task_id \
           AND c.milestone_id = k.milestone_id AND c.unit_id = k.unit_id AND c.period = k.period",
};

/// Reads what the database holds for every key the group touches, one statement per table
/// (and per rung of [`LADDER`]).
pub(super) fn read_known(conn: &Connection, reports: &[&NewReport]) -> Result<Known, StoreError> {
    let mut known = Known::default();
    read(
        conn,
        "reports",
        &BY_REPORT_ID,
        reports,
        |b, r| {
            b.bind(r.unit_id.as_str())?
                .bind(r.report_id.as_slice())
                .map(drop)
        },
        |row| {
            let report_id: Vec<u8> = row.get(1)?;
            let hash: Vec<u8> = row.get(2)?;
            let (Ok(report_id), Ok(hash)) = (report_id.try_into(), hash.try_into()) else {
                return Err(StoreError::Corrupt {
                    table: "reports",
                    detail: "a report id or payload hash of the wrong length".into(),
                });
            };
            known.by_report_id.insert((row.get(0)?, report_id), hash);
            Ok(())
        },
    )?;
    read(
        conn,
        "reports",
        &BY_SEQ,
        reports,
        |b, r| {
            b.bind(r.key_id.as_bytes().as_slice())?
                .bind(seq_i64(r.seq))
                .map(drop)
        },
        |row| {
            known
                .by_seq
                .insert((key_id(row.get(0)?)?, row.get(1)?), row.get(2)?);
            Ok(())
        },
    )?;

    let units = distinct(reports.iter().map(|r| r.unit_id.as_str()));
    let keys = distinct(reports.iter().map(|r| r.key_id.as_bytes().as_slice()));
    let mut key_row = |row: &Row| -> Result<(), StoreError> {
        known.keys.insert(
            key_id(row.get(0)?)?,
            KeyState {
                unit_id: row.get(1)?,
                max_seq: row.get(2)?,
            },
        );
        Ok(())
    };
    read(
        conn,
        "keys",
        &KEYS_OF_UNITS,
        &units,
        |b, unit| b.bind(*unit).map(drop),
        &mut key_row,
    )?;
    read(
        conn,
        "keys",
        &KEYS_BY_ID,
        &keys,
        |b, key| b.bind(*key).map(drop),
        &mut key_row,
    )?;

    // Their names borrowed from the reports.
    let values = distinct(reports.iter().flat_map(|r| {
        r.values.iter().map(move |v| {
            (
                r.plan_id.as_str(),
                v.indicator_id.as_str(),
                r.unit_id.as_str(),
                r.period.as_str(),
            )
        })
    }));
    read(
        conn,
        "current_values",
        &CURRENT_VALUES,
        &values,
        |b, k| b.bind(k.0)?.bind(k.1)?.bind(k.2)?.bind(k.3).map(drop),
        |row| {
            let key = (row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?);
            known.values.insert(key, current(row, 4)?);
            Ok(())
        },
    )?;

    let tasks = distinct(reports.iter().flat_map(|r| {
        r.task_updates.iter().map(move |t| {
            (
                r.plan_id.as_str(),
                t.task_id.as_str(),
                t.milestone_id.as_str(),
                r.unit_id.as_str(),
                r.period.as_str(),
            )
        })
    }));
    read(
        conn,
        "current_tasks",
        &CURRENT_TASKS,
        &tasks,
        |b, k| {
            b.bind(k.0)?
                .bind(k.1)?
                .bind(k.2)?
                .bind(k.3)?
                .bind(k.4)
                .map(drop)
        },
        |row| {
            let key = (
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            );
            known.tasks.insert(key, current(row, 5)?);
            Ok(())
        },
    )?;
    Ok(known)
}

/// Each item once, in order.
fn distinct<T: Ord>(items: impl Iterator<Item = T>) -> Vec<T> {
    items.collect::<BTreeSet<_>>().into_iter().collect()
}

/// Value (or percent), revision, issued_at_ms, seq, report_pk from column `at` on.
fn current(row: &Row, at: usize) -> rusqlite::Result<Current> {
    Ok(Current {
        value: row.get(at)?,
        rank: (row.get(at + 1)?, row.get(at + 2)?, row.get(at + 3)?),
        report_pk: row.get(at + 4)?,
    })
}

/// The highest `report_pk` stored, 0 in an empty database.
pub(super) fn last_report_pk(conn: &Connection) -> Result<i64, StoreError> {
    let mut statement = conn.prepare_cached("SELECT COALESCE(MAX(report_pk), 0) FROM reports")?;
    statement
        .query_row([], |row| row.get(0))
        .map_err(|error| corrupt_or("reports", error))
}

const REPORTS: Shape = Shape {
    head: "INSERT INTO reports (report_pk, plan_id, unit_id, report_id, key_id, seq, \
           issued_at_ms, received_at_ms, period, revision, payload, payload_type, signature, \
           payload_sha256, values_count, task_updates_count, refused_count) VALUES ",
    row: "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    tail: "",
};

const VALUE_HISTORY: Shape = Shape {
    head: "INSERT INTO value_history (report_pk, plan_id, indicator_id, unit_id, period, value, \
           note) VALUES ",
    row: "(?, ?, ?, ?, ?, ?, ?)",
    tail: "",
};

const TASK_HISTORY: Shape = Shape {
    head: "INSERT INTO task_history (report_pk, plan_id, task_id, milestone_id, unit_id, \
           period, percent, status, note) VALUES ",
    row: "(?, ?, ?, ?, ?, ?, ?, ?, ?)",
    tail: "",
};

// One writer holds the database: an upsert is exact here (the row exists exactly when
// `insert` is false), and first_received_at_ms / first_issued_at_ms are kept on update.

const VALUES: Shape = Shape {
    head: "INSERT INTO current_values (plan_id, indicator_id, unit_id, period, value, note, \
           revision, issued_at_ms, seq, report_pk, updated_at_ms, first_received_at_ms, \
           first_issued_at_ms) VALUES ",
    row: "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    tail: " ON CONFLICT (plan_id, indicator_id, unit_id, period) DO UPDATE SET \
           value = excluded.value, note = excluded.note, revision = excluded.revision, \
           issued_at_ms = excluded.issued_at_ms, seq = excluded.seq, \
           report_pk = excluded.report_pk, updated_at_ms = excluded.updated_at_ms",
};

const TASKS: Shape = Shape {
    head: "INSERT INTO current_tasks (plan_id, task_id, milestone_id, unit_id, period, \
           percent, status, note, revision, issued_at_ms, seq, report_pk, updated_at_ms, \
           first_received_at_ms) VALUES ",
    row: "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    tail: " ON CONFLICT (plan_id, task_id, milestone_id, unit_id, period) DO UPDATE SET \
           percent = excluded.percent, status = excluded.status, note = excluded.note, \
           revision = excluded.revision, issued_at_ms = excluded.issued_at_ms, \
           seq = excluded.seq, report_pk = excluded.report_pk, \
           updated_at_ms = excluded.updated_at_ms",
};

const AUDIT: Shape = Shape {
    head: "INSERT INTO audit (at_ms, plan_id, kind, subject, unit_id, period, new_value, \
           new_report_pk, old_value, old_report_pk) VALUES ",
    row: "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    tail: "",
};

const SECURITY: Shape = Shape {
    head: "INSERT INTO security_events (at_ms, kind, unit_id, key_id, report_id, detail) \
           VALUES ",
    row: "(?, ?, ?, ?, ?, ?)",
    tail: "",
};

pub(super) const KEY_SEQS: Shape = Shape {
    head: "WITH v (key_id, max_seq) AS (VALUES ",
    row: "(?, ?)",
    tail: ") UPDATE keys SET max_seq = v.max_seq FROM v WHERE keys.key_id = v.key_id",
};

/// Writes what [`decide`](crate::store::decide::decide) decided: reports first (history,
/// current rows and audit refer to them), then each table.
pub(super) fn write_decided(conn: &Connection, d: &Decided<'_>) -> rusqlite::Result<()> {
    write(conn, &REPORTS, &d.reports, |b, (pk, r)| {
        b.bind(*pk)?
            .bind(r.plan_id.as_str())?
            .bind(r.unit_id.as_str())?
            .bind(r.report_id.as_slice())?
            .bind(r.key_id.as_bytes().as_slice())?
            .bind(seq_i64(r.seq))?
            .bind(r.issued_at_ms)?
            .bind(r.received_at_ms)?
            .bind(r.period.as_str())?
            .bind(i64::from(r.revision))?
            .bind(r.payload.as_slice())?
            .bind(r.payload_type.as_str())?
            .bind(r.signature.as_slice())?
            .bind(r.payload_sha256.as_slice())?
            .bind(r.values.len() as i64)?
            .bind(r.task_updates.len() as i64)?
            .bind(i64::from(r.refused_count))?;
        Ok(())
    })?;
    write(conn, &VALUE_HISTORY, &d.value_history, |b, (pk, r, v)| {
        b.bind(*pk)?
            .bind(r.plan_id.as_str())?
            .bind(v.indicator_id.as_str())?
            .bind(r.unit_id.as_str())?
            .bind(r.period.as_str())?
            .bind(v.value)?
            .bind(v.note.as_str())?;
        Ok(())
    })?;
    write(conn, &TASK_HISTORY, &d.task_history, |b, (pk, r, t)| {
        b.bind(*pk)?
            .bind(r.plan_id.as_str())?
            .bind(t.task_id.as_str())?
            .bind(t.milestone_id.as_str())?
            .bind(r.unit_id.as_str())?
            .bind(r.period.as_str())?
            .bind(t.percent)?
            .bind(t.status.as_str())?
            .bind(t.note.as_str())?;
        Ok(())
    })?;
    write(conn, &VALUES, &d.values, |b, w| {
        b.bind(w.report.plan_id.as_str())?
            .bind(w.item.indicator_id.as_str())?
            .bind(w.report.unit_id.as_str())?
            .bind(w.report.period.as_str())?
            .bind(w.item.value)?
            .bind(w.item.note.as_str())?
            .bind(i64::from(w.report.revision))?
            .bind(w.report.issued_at_ms)?
            .bind(seq_i64(w.report.seq))?
            .bind(w.report_pk)?
            .bind(w.report.received_at_ms)?
            .bind(w.first_received_at_ms)?
            .bind(w.first_issued_at_ms)?;
        Ok(())
    })?;
    write(conn, &TASKS, &d.tasks, |b, w| {
        b.bind(w.report.plan_id.as_str())?
            .bind(w.item.task_id.as_str())?
            .bind(w.item.milestone_id.as_str())?
            .bind(w.report.unit_id.as_str())?
            .bind(w.report.period.as_str())?
            .bind(w.item.percent)?
            .bind(w.item.status.as_str())?
            .bind(w.item.note.as_str())?
            .bind(i64::from(w.report.revision))?
            .bind(w.report.issued_at_ms)?
            .bind(seq_i64(w.report.seq))?
            .bind(w.report_pk)?
            .bind(w.report.received_at_ms)?
            .bind(w.first_received_at_ms)?;
        Ok(())
    })?;
    write(conn, &AUDIT, &d.audit, |b, a| {
        b.bind(a.report.received_at_ms)?
            .bind(a.report.plan_id.as_str())?
            .bind(a.kind)?
            .bind(a.subject.as_str())?
            .bind(a.report.unit_id.as_str())?
            .bind(a.report.period.as_str())?
            .bind(a.new_value)?
            .bind(a.report_pk)?
            .bind(a.old.map(|o| o.0))?
            .bind(a.old.map(|o| o.1))?;
        Ok(())
    })?;
    write(conn, &SECURITY, &d.security, |b, e| {
        b.bind(e.report.received_at_ms)?
            .bind(e.kind)?
            .bind(e.report.unit_id.as_str())?
            .bind(e.report.key_id.as_bytes().as_slice())?
            .bind(e.report.report_id.as_slice())?
            .bind(e.detail.as_str())?;
        Ok(())
    })?;
    write(conn, &KEY_SEQS, &d.key_seqs, |b, (key, seq)| {
        b.bind(key.as_bytes().as_slice())?.bind(*seq)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_go_in_statements_of_the_ladders_sizes_largest_first() {
        let sizes = |n: usize| -> Vec<usize> {
            let rows = vec![(); n];
            rungs(&rows).map(<[()]>::len).collect()
        };
        assert_eq!(sizes(0), Vec::<usize>::new());
        assert_eq!(sizes(1), [1]);
        assert_eq!(sizes(37), [16, 16, 4, 1]);
        assert_eq!(sizes(320), [256, 64]);
        assert_eq!(sizes(600), [256, 256, 64, 16, 4, 4]);
        for n in 0..1100 {
            let cut = sizes(n);
            assert_eq!(cut.iter().sum::<usize>(), n, "{n}");
            assert!(cut.is_sorted_by(|a, b| a >= b), "{n}: {cut:?}");
            for size in LADDER {
                assert!(
                    size == LADDER[0] || cut.iter().filter(|&&s| s == size).count() <= 3,
                    "{n}: {cut:?}"
                );
            }
        }
    }

    #[test]
    fn a_shape_repeats_its_row() {
        assert_eq!(
            KEYS_BY_ID.sql(3),
            "SELECT key_id, unit_id, max_seq FROM keys WHERE key_id IN (?, ?, ?)"
        );
        assert_eq!(
            BY_SEQ.sql(2),
            "WITH k (key_id, seq) AS (VALUES (?, ?), (?, ?)) SELECT r.key_id, r.seq, \
             r.report_id FROM k CROSS JOIN reports r ON r.key_id = k.key_id AND r.seq = k.seq"
        );
    }

    /// A new store's file, migrated, for `EXPLAIN QUERY PLAN`.
    async fn migrated() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.db");
        drop(
            crate::store::SqliteStore::open(&format!("sqlite://{}", path.display()))
                .await
                .unwrap(),
        );
        let conn = Connection::open(&path).unwrap();
        (dir, conn)
    }

    /// SQLite's plan of `sql`, every parameter NULL (the plan does not depend on the values).
    fn plan(conn: &Connection, sql: &str) -> Vec<String> {
        let mut statement = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let mut rows = statement.raw_query();
        let mut plan = Vec::new();
        while let Some(row) = rows.next().unwrap() {
            plan.push(row.get::<_, String>(3).unwrap());
        }
        plan
    }

    /// Every read of a group, and the update of the keys' seqs, searches its table's unique
    /// index: a plan that scans `reports`, `current_values`, `current_tasks` or `keys` would
    /// make each group cost as much as the whole table.
    #[tokio::test]
    async fn group_reads_search_indexes() {
        let (_dir, conn) = migrated().await;
        for (name, shape) in [
            ("by_report_id", &BY_REPORT_ID),
            ("by_seq", &BY_SEQ),
            ("keys of units", &KEYS_OF_UNITS),
            ("keys by id", &KEYS_BY_ID),
            ("current_values", &CURRENT_VALUES),
            ("current_tasks", &CURRENT_TASKS),
            ("keys update", &KEY_SEQS),
        ] {
            for rows in [1, 2, LADDER[0]] {
                let plan = plan(&conn, &shape.sql(rows));
                let scans: Vec<&String> = plan
                    .iter()
                    .filter(|step| {
                        step.starts_with("SCAN")
                            && !step.starts_with("SCAN k")
                            && !step.starts_with("SCAN v")
                            && !step.contains("CONSTANT ROW")
                    })
                    .collect();
                assert!(
                    scans.is_empty(),
                    "{name} ({rows} rows) scans a table: {plan:?}"
                );
                assert!(
                    plan.iter().any(|step| step.starts_with("SEARCH")),
                    "{name} ({rows} rows) searches no index: {plan:?}"
                );
            }
        }
    }

    /// The whole read of a plan's current values scans the table as stored, never an index
    /// that begins with the plan (it would look every row up in the table, out of order); one
    /// indicator's values are found by the key.
    #[tokio::test]
    async fn a_whole_plan_is_read_as_stored_and_one_indicator_by_the_key() {
        let (_dir, conn) = migrated().await;
        assert_eq!(
            plan(&conn, crate::store::queries::PLAN_VALUES_AS_STORED),
            ["SCAN current_values"]
        );
        // A large plan's two halves: each a search of the table by its rowid, no index.
        for (sql, range) in [
            (
                crate::store::queries::PLAN_VALUES_AS_STORED_BEFORE,
                "rowid<?",
            ),
            (crate::store::queries::PLAN_VALUES_AS_STORED_FROM, "rowid>?"),
        ] {
            assert_eq!(
                plan(&conn, sql),
                [format!(
                    "SEARCH current_values USING INTEGER PRIMARY KEY ({range})"
                )]
            );
        }
        let one = plan(&conn, crate::store::queries::INDICATOR_VALUES);
        assert!(
            matches!(&one[..], [step] if step.starts_with("SEARCH current_values USING INDEX sqlite_autoindex_current_values_1 (plan_id=? AND indicator_id=?")),
            "{one:?}"
        );
    }

    /// The rows changed after a report: the keys from the history by report, each
    /// looked up in the current rows by its key (not a walk of either table).
    #[tokio::test]
    async fn the_rows_changed_after_a_report_are_found_by_index_lookups() {
        let (_dir, conn) = migrated().await;
        for (history, current, key, sql) in [
            (
                "value_history",
                "current_values",
                "indicator_id=? AND unit_id=? AND period=?",
                crate::store::queries::CHANGED_VALUES,
            ),
            (
                "task_history",
                "current_tasks",
                "task_id=? AND milestone_id=? AND unit_id=? AND period=?",
                crate::store::queries::CHANGED_TASKS,
            ),
        ] {
            assert_eq!(
                plan(&conn, sql),
                [
                    "CO-ROUTINE h".to_owned(),
                    format!(
                        "SEARCH {history} USING INDEX sqlite_autoindex_{history}_1 (report_pk>?)"
                    ),
                    "USE TEMP B-TREE FOR DISTINCT".to_owned(),
                    "SCAN h".to_owned(),
                    format!(
                        "SEARCH {current} USING INDEX sqlite_autoindex_{current}_1 (plan_id=? AND {key})"
                    ),
                ],
                "{current}"
            );
        }
    }
}

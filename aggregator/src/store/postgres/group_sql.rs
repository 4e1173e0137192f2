//! The PostgreSQL statements of a group of ingest calls: its units and keys locked, each table
//! it touches read in one statement, and everything it writes in one more ([`WRITE`]), the rows
//! passed as typed arrays and spread by `UNNEST`.
//!
//! Between replicas: key rows and existing current rows are read `FOR UPDATE` (in key order,
//! so replicas lock alike); reports and new current rows are plain inserts, so a row another
//! replica committed meanwhile fails the transaction with a unique violation and the caller
//! retries it whole, reading what the other replica stored.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use duban_proto::KeyId;
use sqlx::{PgConnection, Row};

use crate::store::StoreError;
use crate::store::decide::{Current, CurrentWrite, Decided, KeyState, Known, seq_i64};
use crate::store::types::{NewReport, NewTaskUpdate, NewValue};

/// The stored reports of the group's (unit, report id) pairs.
pub(super) const BY_REPORT_ID: &str = "SELECT r.unit_id, r.report_id, r.payload_sha256 FROM reports r \
         JOIN UNNEST($1::text[], $2::bytea[]) AS k (unit_id, report_id) \
         ON r.unit_id = k.unit_id AND r.report_id = k.report_id";

/// The stored reports of the group's (key, seq) pairs.
pub(super) const BY_SEQ: &str = "SELECT r.key_id, r.seq, r.report_id FROM reports r \
         JOIN UNNEST($1::bytea[], $2::int8[]) AS k (key_id, seq) \
         ON r.key_id = k.key_id AND r.seq = k.seq";

/// The current values the group touches, locked in key order.
pub(super) const CURRENT_VALUES: &str = "SELECT c.plan_id, c.indicator_id, c.unit_id, c.period, c.value, c.revision, \
             c.issued_at_ms, c.seq, c.report_pk FROM current_values c \
             JOIN UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) \
                 AS k (plan_id, indicator_id, unit_id, period) \
             ON c.plan_id = k.plan_id AND c.indicator_id = k.indicator_id \
                 AND c.unit_id = k.unit_id AND c.period = k.period \
             ORDER BY c.plan_id, c.indicator_id, c.unit_id, c.period FOR UPDATE OF c";

/// The current task updates the group touches, locked in key order.
pub(super) const CURRENT_TASKS: &str = "SELECT c.plan_id, c.task_id, c.milestone_id, c.unit_id, c.period, c.percent, \
             c.revision, c.issued_at_ms, c.seq, c.report_pk FROM current_tasks c \
             JOIN UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) \
                 AS k (plan_id, task_id, milestone_id, unit_id, period) \
             ON c.plan_id = k.plan_id AND c.task_id = k.task_id \
                 AND c.milestone_id = k.milestone_id AND c.unit_id = k.unit_id \
                 AND c.period = k.period \
             ORDER BY c.plan_id, c.task_id, c.milestone_id, c.unit_id, c.period FOR UPDATE OF c";

/// One table's rows in the group's write ([`WRITE`]): a data-modifying statement whose rows are
/// `UNNEST` of typed arrays, one array per column.
struct Part {
    /// The statement up to `UNNEST(`.
    head: &'static str,
    /// Each array's element type, in bind order.
    types: &'static [&'static str],
    /// The statement after `UNNEST(..)`.
    tail: &'static str,
}

const REPORTS: Part = Part {
    head: "INSERT INTO reports (report_pk, plan_id, unit_id, report_id, key_id, seq, issued_at_ms, \
           received_at_ms, period, revision, payload, payload_type, signature, payload_sha256, \
           values_count, task_updates_count, refused_count) OVERRIDING SYSTEM VALUE \
           SELECT * FROM UNNEST(",
    types: &[
        "int8", "text", "text", "bytea", "bytea", "int8", "int8", "int8", "text", "int8", "bytea",
        "text", "bytea", "bytea", "int8", "int8", "int8",
    ],
    tail: ")",
};

const VALUE_HISTORY: Part = Part {
    head: "INSERT INTO value_history (report_pk, plan_id, indicator_id, unit_id, period, value, \
           note) SELECT * FROM UNNEST(",
    types: &["int8", "text", "text", "text", "text", "float8", "text"],
    tail: ")",
};

const TASK_HISTORY: Part = Part {
    head: "INSERT INTO task_history (report_pk, plan_id, task_id, milestone_id, unit_id, period, \
           percent, status, note) SELECT * FROM UNNEST(",
    types: &[
        "int8", "text", "text", "text", "text", "text", "float8", "text", "text",
    ],
    tail: ")",
};

/// The columns of a current value written, in bind order ([`bind_values`]).
const VALUE_TYPES: &[&str] = &[
    "text", "text", "text", "text", "float8", "text", "int8", "int8", "int8", "int8", "int8",
    "int8", "int8",
];

/// New current values. Another replica's insert of the same row meanwhile is a unique
/// violation: the group is retried, and reads the row.
const INSERT_VALUES: Part = Part {
    head: "INSERT INTO current_values (plan_id, indicator_id, unit_id, period, value, note, \
           revision, issued_at_ms, seq, report_pk, updated_at_ms, first_received_at_ms, \
           first_issued_at_ms) SELECT * FROM UNNEST(",
    types: VALUE_TYPES,
    tail: ")",
};

/// Current values replaced (locked since the group read them).
const UPDATE_VALUES: Part = Part {
    head: "UPDATE current_values c SET value = u.value, note = u.note, revision = u.revision, \
           issued_at_ms = u.issued_at_ms, seq = u.seq, report_pk = u.report_pk, \
           updated_at_ms = u.updated_at_ms FROM UNNEST(",
    types: VALUE_TYPES,
    tail: ") AS u (plan_id, indicator_id, unit_id, period, value, note, revision, issued_at_ms, \
           seq, report_pk, updated_at_ms, first_received_at_ms, first_issued_at_ms) \
           WHERE c.plan_id = u.plan_id AND c.indicator_id = u.indicator_id \
           AND c.unit_id = u.unit_id AND c.period = u.period",
};

/// The columns of a current task update written, in bind order ([`bind_tasks`]).
const TASK_TYPES: &[&str] = &[
    "text", "text", "text", "text", "text", "float8", "text", "text", "int8", "int8", "int8",
    "int8", "int8", "int8",
];

const INSERT_TASKS: Part = Part {
    head: "INSERT INTO current_tasks (plan_id, task_id, milestone_id, unit_id, period, percent, \
           status, note, revision, issued_at_ms, seq, report_pk, updated_at_ms, \
           first_received_at_ms) SELECT * FROM UNNEST(",
    types: TASK_TYPES,
    tail: ")",
};

const UPDATE_TASKS: Part = Part {
    head: "UPDATE current_tasks c SET percent = u.percent, status = u.status, note = u.note, \
           revision = u.revision, issued_at_ms = u.issued_at_ms, seq = u.seq, \
           report_pk = u.report_pk, updated_at_ms = u.updated_at_ms FROM UNNEST(",
    types: TASK_TYPES,
    tail: ") AS u (plan_id, task_id, milestone_id, unit_id, period, percent, status, note, \
           revision, issued_at_ms, seq, report_pk, updated_at_ms, first_received_at_ms) \
           WHERE c.plan_id = u.plan_id AND c.task_id = u.task_id \
           AND c.milestone_id = u.milestone_id AND c.unit_id = u.unit_id AND c.period = u.period",
};

/// Audit rows, numbered in the order they were decided.
const AUDIT: Part = Part {
    head: "INSERT INTO audit (at_ms, plan_id, kind, subject, unit_id, period, new_value, \
           new_report_pk, old_value, old_report_pk) SELECT at_ms, plan_id, kind, subject, \
           unit_id, period, new_value, new_report_pk, old_value, old_report_pk FROM UNNEST(",
    types: &[
        "int8", "text", "text", "text", "text", "text", "float8", "int8", "float8", "int8",
    ],
    tail: ") WITH ORDINALITY AS u (at_ms, plan_id, kind, subject, unit_id, period, new_value, \
           new_report_pk, old_value, old_report_pk, n) ORDER BY n",
};

const SECURITY_EVENTS: Part = Part {
    head: "INSERT INTO security_events (at_ms, kind, unit_id, key_id, report_id, detail) \
           SELECT at_ms, kind, unit_id, key_id, report_id, detail FROM UNNEST(",
    types: &["int8", "text", "text", "bytea", "bytea", "text"],
    tail: ") WITH ORDINALITY AS u (at_ms, kind, unit_id, key_id, report_id, detail, n) ORDER BY n",
};

/// The keys' highest seqs after the group (locked since the group read them).
const UPDATE_KEYS: Part = Part {
    head: "UPDATE keys SET max_seq = u.max_seq FROM UNNEST(",
    types: &["bytea", "int8"],
    tail: ") AS u (key_id, max_seq) WHERE keys.key_id = u.key_id",
};

/// What a group writes, in the order of [`write`]'s binds.
const PARTS: [&Part; 10] = [
    &REPORTS,
    &VALUE_HISTORY,
    &TASK_HISTORY,
    &INSERT_VALUES,
    &UPDATE_VALUES,
    &INSERT_TASKS,
    &UPDATE_TASKS,
    &AUDIT,
    &SECURITY_EVENTS,
    &UPDATE_KEYS,
];

/// Everything a group writes, in one statement (one round trip): each table's rows in a
/// data-modifying `WITH` query of its own, the last part the main statement. The parts run
/// on one snapshot and do not see each other's rows, which none needs (a group writes each
/// current row once, inserted or updated, never both); the foreign keys are checked at the
/// end of the statement, when every part's rows are in. A part whose arrays are empty writes
/// nothing.
pub(super) static WRITE: LazyLock<String> = LazyLock::new(|| {
    let mut next = 0;
    let statements: Vec<String> = PARTS
        .iter()
        .map(|part| {
            let arrays: Vec<String> = part
                .types
                .iter()
                .map(|ty| {
                    next += 1;
                    format!("${next}::{ty}[]")
                })
                .collect();
            format!("{}{}{}", part.head, arrays.join(", "), part.tail)
        })
        .collect();
    let (main, parts) = statements.split_last().expect("parts to write");
    let parts: Vec<String> = parts
        .iter()
        .enumerate()
        .map(|(n, part)| format!("w{n} AS ({part})"))
        .collect();
    format!("WITH {} {main}", parts.join(", "))
});

/// The group's statements whose plans must search indexes, for the test of their plans.
#[cfg(test)]
pub(super) fn lookups() -> [(&'static str, &'static str); 5] {
    [
        ("BY_REPORT_ID", BY_REPORT_ID),
        ("BY_SEQ", BY_SEQ),
        ("CURRENT_VALUES", CURRENT_VALUES),
        ("CURRENT_TASKS", CURRENT_TASKS),
        ("WRITE", WRITE.as_str()),
    ]
}

fn key_id(bytes: Vec<u8>) -> Result<KeyId, StoreError> {
    KeyId::from_slice(&bytes).map_err(|_| StoreError::Corrupt {
        table: "keys",
        detail: format!("a key id of {} bytes", bytes.len()),
    })
}

fn current(row: &sqlx::postgres::PgRow, at: usize) -> Result<Current, StoreError> {
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

pub(super) async fn read_known(
    conn: &mut PgConnection,
    reports: &[&NewReport],
) -> Result<Known, StoreError> {
    let mut known = Known::default();
    let units: Vec<String> = reports.iter().map(|r| r.unit_id.clone()).collect();
    let key_ids: Vec<Vec<u8>> = reports
        .iter()
        .map(|r| r.key_id.as_bytes().to_vec())
        .collect();
    // The units first, each under a transaction-scoped advisory lock taken in unit order:
    // replicas storing reports of the same unit take turns even when a key has no row to lock
    // (the store's conformance suite ingests without registering keys; under load its
    // two-replica race took a duplicate for a replay, the report ids read before the other
    // replica's commit and the seqs after).
    let mut distinct: Vec<&str> = units.iter().map(String::as_str).collect();
    distinct.sort_unstable();
    distinct.dedup();
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended(u, 7218)) \
         FROM UNNEST($1::text[]) AS u ORDER BY u",
    )
    .bind(&distinct)
    .execute(&mut *conn)
    .await?;
    // The keys next, locked: a replica storing reports of the same keys holds them until it
    // commits, so that every read below (each statement sees what was committed when it
    // began) sees all of its reports or none. Read the other way round, the report ids could
    // miss a report that the seqs then found, and a duplicate would be taken for a replay.
    let rows = sqlx::query(
        "SELECT key_id, unit_id, max_seq FROM keys \
         WHERE unit_id = ANY($1) OR key_id = ANY($2) ORDER BY key_id FOR UPDATE",
    )
    .bind(&units)
    .bind(&key_ids)
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        known.keys.insert(
            key_id(row.try_get(0)?)?,
            KeyState {
                unit_id: row.try_get(1)?,
                max_seq: row.try_get(2)?,
            },
        );
    }

    let report_ids: Vec<Vec<u8>> = reports.iter().map(|r| r.report_id.to_vec()).collect();
    let rows = sqlx::query(BY_REPORT_ID)
        .bind(&units)
        .bind(&report_ids)
        .fetch_all(&mut *conn)
        .await?;
    for row in rows {
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

    let seqs: Vec<i64> = reports.iter().map(|r| seq_i64(r.seq)).collect();
    let rows = sqlx::query(BY_SEQ)
        .bind(&key_ids)
        .bind(&seqs)
        .fetch_all(&mut *conn)
        .await?;
    for row in rows {
        known
            .by_seq
            .insert((key_id(row.try_get(0)?)?, row.try_get(1)?), row.try_get(2)?);
    }

    let values: BTreeSet<_> = reports
        .iter()
        .flat_map(|r| r.values.iter().map(move |v| Known::value_key(r, v)))
        .collect();
    if !values.is_empty() {
        let mut columns: [Vec<String>; 4] = Default::default();
        for (a, b, c, d) in values {
            columns[0].push(a);
            columns[1].push(b);
            columns[2].push(c);
            columns[3].push(d);
        }
        let rows = sqlx::query(CURRENT_VALUES)
            .bind(&columns[0])
            .bind(&columns[1])
            .bind(&columns[2])
            .bind(&columns[3])
            .fetch_all(&mut *conn)
            .await?;
        for row in rows {
            let key = (
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
            );
            known.values.insert(key, current(&row, 4)?);
        }
    }

    let tasks: BTreeSet<_> = reports
        .iter()
        .flat_map(|r| r.task_updates.iter().map(move |t| Known::task_key(r, t)))
        .collect();
    if !tasks.is_empty() {
        let mut columns: [Vec<String>; 5] = Default::default();
        for (a, b, c, d, e) in tasks {
            columns[0].push(a);
            columns[1].push(b);
            columns[2].push(c);
            columns[3].push(d);
            columns[4].push(e);
        }
        let rows = sqlx::query(CURRENT_TASKS)
            .bind(&columns[0])
            .bind(&columns[1])
            .bind(&columns[2])
            .bind(&columns[3])
            .bind(&columns[4])
            .fetch_all(&mut *conn)
            .await?;
        for row in rows {
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

/// Takes `n` values of the reports' identity sequence (one per report of the call; those of
/// duplicates stay unused, as a rolled-back insert's would).
pub(super) async fn reserve_pks(conn: &mut PgConnection, n: usize) -> Result<Vec<i64>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT nextval(pg_get_serial_sequence('reports', 'report_pk')) FROM generate_series(1, $1)",
    )
    .bind(n as i64)
    .fetch_all(&mut *conn)
    .await?)
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Writes what `decide` decided: [`WRITE`], its arrays bound part by part in the order of
/// [`PARTS`]. Nothing is sent when there is nothing to write (every call a duplicate).
pub(super) async fn write(conn: &mut PgConnection, d: &Decided<'_>) -> Result<(), StoreError> {
    if d.reports.is_empty() && d.security.is_empty() && d.key_seqs.is_empty() {
        return Ok(());
    }
    let rs = &d.reports;
    let query = sqlx::query(WRITE.as_str())
        .bind(column(rs, |(pk, _)| *pk))
        .bind(column(rs, |(_, r)| r.plan_id.as_str()))
        .bind(column(rs, |(_, r)| r.unit_id.as_str()))
        .bind(column(rs, |(_, r)| r.report_id.as_slice()))
        .bind(column(rs, |(_, r)| r.key_id.as_bytes().as_slice()))
        .bind(column(rs, |(_, r)| seq_i64(r.seq)))
        .bind(column(rs, |(_, r)| r.issued_at_ms))
        .bind(column(rs, |(_, r)| r.received_at_ms))
        .bind(column(rs, |(_, r)| r.period.as_str()))
        .bind(column(rs, |(_, r)| i64::from(r.revision)))
        .bind(column(rs, |(_, r)| r.payload.as_slice()))
        .bind(column(rs, |(_, r)| r.payload_type.as_str()))
        .bind(column(rs, |(_, r)| r.signature.as_slice()))
        .bind(column(rs, |(_, r)| r.payload_sha256.as_slice()))
        .bind(column(rs, |(_, r)| r.values.len() as i64))
        .bind(column(rs, |(_, r)| r.task_updates.len() as i64))
        .bind(column(rs, |(_, r)| i64::from(r.refused_count)));

    let h = &d.value_history;
    let query = query
        .bind(column(h, |(pk, _, _)| *pk))
        .bind(column(h, |(_, r, _)| r.plan_id.as_str()))
        .bind(column(h, |(_, _, v)| v.indicator_id.as_str()))
        .bind(column(h, |(_, r, _)| r.unit_id.as_str()))
        .bind(column(h, |(_, r, _)| r.period.as_str()))
        .bind(column(h, |(_, _, v)| v.value))
        .bind(column(h, |(_, _, v)| v.note.as_str()));

    let h = &d.task_history;
    let query = query
        .bind(column(h, |(pk, _, _)| *pk))
        .bind(column(h, |(_, r, _)| r.plan_id.as_str()))
        .bind(column(h, |(_, _, t)| t.task_id.as_str()))
        .bind(column(h, |(_, _, t)| t.milestone_id.as_str()))
        .bind(column(h, |(_, r, _)| r.unit_id.as_str()))
        .bind(column(h, |(_, r, _)| r.period.as_str()))
        .bind(column(h, |(_, _, t)| t.percent))
        .bind(column(h, |(_, _, t)| t.status.as_str()))
        .bind(column(h, |(_, _, t)| t.note.as_str()));

    let (inserted, updated): (Vec<_>, Vec<_>) = d.values.iter().partition(|w| w.insert);
    let query = bind_values(bind_values(query, &inserted), &updated);
    let (inserted, updated): (Vec<_>, Vec<_>) = d.tasks.iter().partition(|w| w.insert);
    let query = bind_tasks(bind_tasks(query, &inserted), &updated);

    let a = &d.audit;
    let query = query
        .bind(column(a, |x| x.report.received_at_ms))
        .bind(column(a, |x| x.report.plan_id.as_str()))
        .bind(column(a, |x| x.kind))
        .bind(column(a, |x| x.subject.as_str()))
        .bind(column(a, |x| x.report.unit_id.as_str()))
        .bind(column(a, |x| x.report.period.as_str()))
        .bind(column(a, |x| x.new_value))
        .bind(column(a, |x| x.report_pk))
        .bind(column(a, |x| x.old.map(|o| o.0)))
        .bind(column(a, |x| x.old.map(|o| o.1)));

    let e = &d.security;
    let query = query
        .bind(column(e, |x| x.report.received_at_ms))
        .bind(column(e, |x| x.kind))
        .bind(column(e, |x| x.report.unit_id.as_str()))
        .bind(column(e, |x| x.report.key_id.as_bytes().as_slice()))
        .bind(column(e, |x| x.report.report_id.as_slice()))
        .bind(column(e, |x| x.detail.as_str()));

    let k = &d.key_seqs;
    query
        .bind(column(k, |(key, _)| key.as_bytes().as_slice()))
        .bind(column(k, |(_, max_seq)| *max_seq))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The arrays of [`VALUE_TYPES`].
fn bind_values<'q>(query: PgQuery<'q>, rows: &[&'q CurrentWrite<'q, NewValue>]) -> PgQuery<'q> {
    let query = query
        .bind(column(rows, |w| w.report.plan_id.as_str()))
        .bind(column(rows, |w| w.item.indicator_id.as_str()))
        .bind(column(rows, |w| w.report.unit_id.as_str()))
        .bind(column(rows, |w| w.report.period.as_str()))
        .bind(column(rows, |w| w.item.value))
        .bind(column(rows, |w| w.item.note.as_str()));
    bind_current(query, rows).bind(column(rows, |w| w.first_issued_at_ms))
}

/// The arrays of [`TASK_TYPES`].
fn bind_tasks<'q>(query: PgQuery<'q>, rows: &[&'q CurrentWrite<'q, NewTaskUpdate>]) -> PgQuery<'q> {
    let query = query
        .bind(column(rows, |w| w.report.plan_id.as_str()))
        .bind(column(rows, |w| w.item.task_id.as_str()))
        .bind(column(rows, |w| w.item.milestone_id.as_str()))
        .bind(column(rows, |w| w.report.unit_id.as_str()))
        .bind(column(rows, |w| w.report.period.as_str()))
        .bind(column(rows, |w| w.item.percent))
        .bind(column(rows, |w| w.item.status.as_str()))
        .bind(column(rows, |w| w.item.note.as_str()));
    bind_current(query, rows)
}

/// The arrays that a current value and a current task update share, after their own columns:
/// revision, issued at, seq, report, updated at, first received at.
fn bind_current<'q, T>(query: PgQuery<'q>, rows: &[&'q CurrentWrite<'q, T>]) -> PgQuery<'q> {
    query
        .bind(column(rows, |w| i64::from(w.report.revision)))
        .bind(column(rows, |w| w.report.issued_at_ms))
        .bind(column(rows, |w| seq_i64(w.report.seq)))
        .bind(column(rows, |w| w.report_pk))
        .bind(column(rows, |w| w.report.received_at_ms))
        .bind(column(rows, |w| w.first_received_at_ms))
}

/// One array of a part: `cell` of each row.
fn column<'a, R, C>(rows: &'a [R], cell: impl Fn(&'a R) -> C) -> Vec<C> {
    rows.iter().map(cell).collect()
}

//! Reads and key administration, shared by both backends through sqlx `Any`.

use duban_proto::KeyId;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Row};

use super::StoreError;
use super::types::*;
use crate::progress::input::{Name, Names, TaskRow, ValueRow};

/// Adds a key, and records `action` (who did it) in the same transaction when given.
pub(super) async fn add_key(
    pool: &AnyPool,
    key: &NewKey,
    action: Option<&AdminAction>,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query("INSERT INTO keys (key_id, unit_id, public_key, not_before_ms, not_after_ms, added_at_ms) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING")
        .bind(key.key_id.as_bytes().to_vec())
        .bind(key.unit_id.clone())
        .bind(key.public_key.to_vec())
        .bind(key.not_before_ms)
        .bind(key.not_after_ms)
        .bind(key.added_at_ms)
        .execute(&mut *tx)
        .await?;
    if inserted.rows_affected() == 0 {
        return Err(StoreError::KeyExists(key.key_id));
    }
    if let Some(action) = action {
        record_admin_action(&mut tx, action).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Revokes a key from `at_ms` on, and records `action` in the same transaction when given.
/// False (and nothing recorded) when no such key exists.
pub(super) async fn revoke_key(
    pool: &AnyPool,
    key_id: KeyId,
    at_ms: i64,
    action: Option<&AdminAction>,
) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    let updated = sqlx::query(
        "UPDATE keys SET revoked_at_ms = COALESCE(revoked_at_ms, $1) WHERE key_id = $2",
    )
    .bind(at_ms)
    .bind(key_id.as_bytes().to_vec())
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() == 0 {
        return Ok(false);
    }
    if let Some(action) = action {
        record_admin_action(&mut tx, action).await?;
    }
    tx.commit().await?;
    Ok(true)
}

async fn record_admin_action(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    action: &AdminAction,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO admin_actions (at_ms, os_user, host, action, subject, unit_id, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(action.at_ms)
        .bind(action.actor.os_user.clone())
        .bind(action.actor.host.clone())
        .bind(action.action.clone())
        .bind(action.subject.clone())
        .bind(action.unit_id.clone())
        .bind(action.detail.clone())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Every recorded administrative change, oldest first.
pub(super) async fn admin_actions(pool: &AnyPool) -> Result<Vec<AdminAction>, StoreError> {
    let rows = sqlx::query("SELECT at_ms, os_user, host, action, subject, unit_id, detail FROM admin_actions ORDER BY pk")
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(AdminAction {
                at_ms: r.try_get("at_ms")?,
                actor: Actor {
                    os_user: r.try_get("os_user")?,
                    host: r.try_get("host")?,
                },
                action: r.try_get("action")?,
                subject: r.try_get("subject")?,
                unit_id: r.try_get("unit_id")?,
                detail: r.try_get("detail")?,
            })
        })
        .collect()
}

pub(super) async fn keys(pool: &AnyPool, unit_id: Option<&str>) -> Result<Vec<KeyRow>, StoreError> {
    let rows = sqlx::query("SELECT key_id, unit_id, public_key, not_before_ms, not_after_ms, added_at_ms, revoked_at_ms, max_seq FROM keys WHERE ($1 IS NULL OR unit_id = $1) ORDER BY unit_id, added_at_ms")
        .bind(unit_id.map(str::to_owned))
        .fetch_all(pool)
        .await?;
    rows.iter().map(key_row).collect()
}

fn key_row(row: &AnyRow) -> Result<KeyRow, StoreError> {
    let key_id: Vec<u8> = row.try_get("key_id")?;
    let public_key: Vec<u8> = row.try_get("public_key")?;
    let corrupt = |detail: &str| StoreError::Corrupt {
        table: "keys",
        detail: detail.to_owned(),
    };
    Ok(KeyRow {
        key_id: KeyId::from_slice(&key_id).map_err(|_| corrupt("key_id is not 32 bytes"))?,
        unit_id: row.try_get("unit_id")?,
        public_key: public_key
            .try_into()
            .map_err(|_| corrupt("public_key is not 32 bytes"))?,
        not_before_ms: row.try_get("not_before_ms")?,
        not_after_ms: row.try_get("not_after_ms")?,
        added_at_ms: row.try_get("added_at_ms")?,
        revoked_at_ms: row.try_get("revoked_at_ms")?,
        max_seq: row.try_get("max_seq")?,
    })
}

pub(super) async fn reports(
    pool: &AnyPool,
    filter: &ReportFilter,
) -> Result<Vec<ReportRow>, StoreError> {
    let rows = sqlx::query(
        "SELECT report_pk, plan_id, unit_id, report_id, key_id, seq, issued_at_ms, received_at_ms, period, revision, values_count, task_updates_count, refused_count FROM reports r \
         WHERE ($1 IS NULL OR unit_id = $1) AND ($2 IS NULL OR period = $2) \
         AND ($3 IS NULL OR EXISTS (SELECT 1 FROM value_history h WHERE h.report_pk = r.report_pk AND h.indicator_id = $3)) \
         ORDER BY report_pk DESC LIMIT $4",
    )
    .bind(filter.unit_id.clone())
    .bind(filter.period.clone())
    .bind(filter.indicator_id.clone())
    .bind(filter.limit.unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(ReportRow {
                report_pk: row.try_get("report_pk")?,
                plan_id: row.try_get("plan_id")?,
                unit_id: row.try_get("unit_id")?,
                report_id: row.try_get("report_id")?,
                key_id: row.try_get("key_id")?,
                seq: row.try_get("seq")?,
                issued_at_ms: row.try_get("issued_at_ms")?,
                received_at_ms: row.try_get("received_at_ms")?,
                period: row.try_get("period")?,
                revision: row.try_get("revision")?,
                values_count: row.try_get("values_count")?,
                task_updates_count: row.try_get("task_updates_count")?,
                refused_count: row.try_get("refused_count")?,
            })
        })
        .collect()
}

// Macros, not consts, so that each query stays one static string (`concat!`).
macro_rules! value_columns {
    () => {
        "plan_id, indicator_id, unit_id, period, value, note, revision, issued_at_ms, seq, report_pk, updated_at_ms, first_received_at_ms, COALESCE(first_issued_at_ms, issued_at_ms) AS first_issued_at_ms"
    };
}
macro_rules! task_columns {
    () => {
        "plan_id, task_id, milestone_id, unit_id, period, percent, status, note, revision, issued_at_ms, seq, report_pk, updated_at_ms, first_received_at_ms"
    };
}

/// A plan's current values, in no particular order: ordered by indicator, period and unit,
/// SQLite sorted them in a temporary B-tree (two thirds of the whole read's time on a large
/// plan); the readers sort them ([`in_order_of_places`]). SQLite reads a whole plan with
/// [`PLAN_VALUES_AS_STORED`] instead.
pub(super) const PLAN_VALUES: &str = concat!(
    "SELECT ",
    value_columns!(),
    " FROM current_values WHERE plan_id = $1"
);

/// One indicator's current values, found by the key (plan, indicator, unit, period). Not one
/// statement with the whole plan's (`$2 IS NULL OR indicator_id = $2`): planned for either, it
/// used no index for the indicator, and SQLite walked the whole plan by the index of the
/// current rows by report of that time (0.8 s for 120,000 rows on the 10,000-unit plan,
/// against milliseconds).
pub(super) const INDICATOR_VALUES: &str = concat!(
    "SELECT ",
    value_columns!(),
    " FROM current_values WHERE plan_id = $1 AND indicator_id = $2"
);

/// A whole plan's current values on SQLite, as the table stores them (`NOT INDEXED`: a scan of
/// the table). By an index that begins with the plan (its key) SQLite walks the index and
/// looks each row up in the table, out of the table's order. On the 10,000-unit plan with a
/// third of its rows rewritten, 8.0 s by the index of the current rows by report (until
/// migration 0007) against 2.2 s for the scan (docs/PERFORMANCE.md, "The whole read").
pub(super) const PLAN_VALUES_AS_STORED: &str = concat!(
    "SELECT ",
    value_columns!(),
    " FROM current_values NOT INDEXED WHERE plan_id = $1"
);

/// [`PLAN_VALUES_AS_STORED`] for the rows before a rowid (`$2`), and from it: the two halves
/// of a large plan, read at once (`sqlite.rs`, `BulkReader::whole_plan`). Each a search of
/// the table by its rowid, no other index.
pub(super) const PLAN_VALUES_AS_STORED_BEFORE: &str = concat!(
    "SELECT ",
    value_columns!(),
    " FROM current_values NOT INDEXED WHERE plan_id = $1 AND rowid < $2"
);
pub(super) const PLAN_VALUES_AS_STORED_FROM: &str = concat!(
    "SELECT ",
    value_columns!(),
    " FROM current_values NOT INDEXED WHERE plan_id = $1 AND rowid >= $2"
);

/// Where a row goes in the snapshot's order, and where it is: the numbers its indicator,
/// period and unit got from their [`Names`] as the rows were read, and its index.
pub(super) type Place = (u32, u32, u32, u32);

/// A plan's current values as a backend's whole read takes them in, row by row in any order:
/// each distinct indicator, unit and period allocated once and numbered as it comes, so that
/// [`ValuesRead::in_snapshot_order`] sorts the rows by those numbers
/// ([`in_order_of_places`]) without looking their names up again.
pub(super) struct ValuesRead {
    plan: Name,
    /// The indicators', the units', the periods'.
    names: [Names; 3],
    places: Vec<Place>,
    values: Vec<ValueRow>,
}

impl ValuesRead {
    /// For the rows of `plan_id` (whose name they all share).
    pub(super) fn new(plan_id: &str) -> Self {
        ValuesRead {
            plan: Name::from(plan_id),
            names: Default::default(),
            places: Vec::new(),
            values: Vec::new(),
        }
    }

    /// Takes in one row: its indicator, unit and period, and the row `make` builds with the
    /// shared names `(plan_id, indicator_id, unit_id, period)`.
    pub(super) fn push<E>(
        &mut self,
        [indicator_id, unit_id, period]: [&str; 3],
        make: impl FnOnce((Name, Name, Name, Name)) -> Result<ValueRow, E>,
    ) -> Result<(), E> {
        let [indicators, units, periods] = &mut self.names;
        let (indicator_id, indicator) = indicators.numbered(indicator_id);
        let (unit_id, unit) = units.numbered(unit_id);
        let (period, period_number) = periods.numbered(period);
        let at = u32::try_from(self.values.len()).expect("fewer than 2^32 rows");
        self.values
            .push(make((self.plan.clone(), indicator_id, unit_id, period))?);
        self.places.push((indicator, period_number, unit, at));
        Ok(())
    }

    /// Takes in the rows `other` read (of the same plan, from the same snapshot) after these:
    /// its names numbered among these, each of its rows given the names this read holds.
    pub(super) fn append(&mut self, other: ValuesRead) {
        let ValuesRead {
            names,
            places,
            values,
            ..
        } = other;
        // Each of `other`'s numbers, as this read's name and number.
        let [indicators, units, periods] = names;
        let [our_indicators, our_units, our_periods] = &mut self.names;
        let renumber = |theirs: Names, ours: &mut Names| -> Vec<(Name, u32)> {
            theirs
                .by_number()
                .iter()
                .map(|name| ours.numbered(name))
                .collect()
        };
        let indicators = renumber(indicators, our_indicators);
        let units = renumber(units, our_units);
        let periods = renumber(periods, our_periods);
        let after = u32::try_from(self.values.len()).expect("fewer than 2^32 rows");
        self.values.reserve(values.len());
        self.places.reserve(places.len());
        for ((indicator, period, unit, at), row) in places.into_iter().zip(values) {
            let (indicator, period, unit) = (
                &indicators[indicator as usize],
                &periods[period as usize],
                &units[unit as usize],
            );
            self.values.push(ValueRow {
                plan_id: self.plan.clone(),
                indicator_id: indicator.0.clone(),
                unit_id: unit.0.clone(),
                period: period.0.clone(),
                ..row
            });
            let at = after.checked_add(at).expect("fewer than 2^32 rows");
            self.places.push((indicator.1, period.1, unit.1, at));
        }
    }

    /// The rows taken in, in the snapshot's order: by indicator, period and unit.
    pub(super) fn in_snapshot_order(self) -> Vec<ValueRow> {
        let ValuesRead {
            names: [indicators, units, periods],
            places,
            mut values,
            ..
        } = self;
        in_order_of_places(&mut values, places, [&indicators, &periods, &units]);
        values
    }
}

/// Puts a plan's current values, read in any order, in the snapshot's: by indicator, period
/// and unit, each by its bytes. Each distinct indicator, period and unit is numbered and ranked
/// once ([`in_order_of_places`]), so that millions of rows are sorted by three integers each,
/// not by three strings. A plan's keys are unique. The readers number the names as they read
/// them and call [`in_order_of_places`] themselves; this is its test's way in.
#[cfg(test)]
fn in_snapshot_order(values: &mut [ValueRow]) {
    let in_order = values.is_sorted_by(|a, b| {
        (&a.indicator_id, &a.period, &a.unit_id) < (&b.indicator_id, &b.period, &b.unit_id)
    });
    if in_order {
        return;
    }
    let [mut indicators, mut periods, mut units] = <[Names; 3]>::default();
    let places = values
        .iter()
        .zip(0..)
        .map(|(v, at)| {
            (
                indicators.numbered(&v.indicator_id).1,
                periods.numbered(&v.period).1,
                units.numbered(&v.unit_id).1,
                at,
            )
        })
        .collect();
    in_order_of_places(values, places, [&indicators, &periods, &units]);
}

/// Puts each row where its [`Place`] says, `places[i]` being row i's, its numbers those of
/// `names` (the indicators', the periods', the units'): each number ranked by its name's bytes,
/// the places sorted by the ranks, then each row moved once (the permutation's cycles walked,
/// as `slice::sort_by_cached_key` does), not the rows themselves sorted (a row is about 150
/// bytes, a place 16).
pub(super) fn in_order_of_places(
    values: &mut [ValueRow],
    mut places: Vec<Place>,
    names: [&Names; 3],
) {
    assert_eq!(values.len(), places.len(), "a place for each row");
    let [indicators, periods, units] = names.map(Names::ranks);
    for place in &mut places {
        place.0 = indicators[place.0 as usize];
        place.1 = periods[place.1 as usize];
        place.2 = units[place.2 as usize];
    }
    places.sort_unstable();
    for i in 0..places.len() {
        // The row to go to i was at places[i].3, or, if that is before i, moved since from
        // there to where the places it went through say.
        let mut from = places[i].3 as usize;
        while from < i {
            from = places[from].3 as usize;
        }
        places[i].3 = u32::try_from(from).expect("fewer than 2^32 rows");
        values.swap(i, from);
    }
}

pub(super) async fn current_tasks(
    pool: &AnyPool,
    plan_id: &str,
) -> Result<Vec<TaskRow>, StoreError> {
    sqlx::query(concat!(
        "SELECT ",
        task_columns!(),
        " FROM current_tasks WHERE plan_id = $1 ORDER BY task_id, milestone_id, period, unit_id"
    ))
    .bind(plan_id.to_owned())
    .fetch_all(pool)
    .await?
    .iter()
    .map(task_row)
    .collect()
}

/// The current values and task updates last written by a report stored after `$2` (every
/// write of a current row sets its `report_pk` to the report that wrote it): the keys that the
/// reports after `$2` carried, from their history (its primary key begins with the report),
/// each looked up by its key in the current rows, the history first. Until migration 0007 they were
/// found through an index of the current rows by report; every write changes that column, so
/// on PostgreSQL that index kept each update of a current row from being heap-only
/// (docs/PERFORMANCE.md, "Ingest").
///
/// SQLite: a `CROSS JOIN`, whose order SQLite keeps.
pub(super) const CHANGED_VALUES: &str = concat!(
    "SELECT ",
    value_columns!(),
    " FROM (SELECT DISTINCT indicator_id AS h_indicator, unit_id AS h_unit, period AS h_period \
     FROM value_history WHERE plan_id = $1 AND report_pk > $2) AS h \
     CROSS JOIN current_values WHERE plan_id = $1 AND indicator_id = h_indicator \
     AND unit_id = h_unit AND period = h_period AND report_pk > $2"
);
pub(super) const CHANGED_TASKS: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM (SELECT DISTINCT task_id AS h_task, milestone_id AS h_milestone, unit_id AS h_unit, \
     period AS h_period FROM task_history WHERE plan_id = $1 AND report_pk > $2) AS h \
     CROSS JOIN current_tasks WHERE plan_id = $1 AND task_id = h_task \
     AND milestone_id = h_milestone AND unit_id = h_unit AND period = h_period AND report_pk > $2"
);
/// [`CHANGED_VALUES`] on PostgreSQL: each lookup a `LATERAL` subquery that cannot be merged
/// into the join (`OFFSET 0`), so that it is planned as a search of the key. As a join, the
/// generic plan kept by a prepared statement (made on small tables) read every current row of
/// the plan for each key, the key a filter on them.
pub(super) const CHANGED_VALUES_PG: &str = concat!(
    "SELECT c.* FROM (SELECT DISTINCT indicator_id, unit_id, period FROM value_history \
     WHERE plan_id = $1 AND report_pk > $2) AS h CROSS JOIN LATERAL (SELECT ",
    value_columns!(),
    " FROM current_values WHERE plan_id = $1 AND indicator_id = h.indicator_id \
     AND unit_id = h.unit_id AND period = h.period AND report_pk > $2 OFFSET 0) AS c"
);
/// [`CHANGED_TASKS`] on PostgreSQL, as [`CHANGED_VALUES_PG`].
pub(super) const CHANGED_TASKS_PG: &str = concat!(
    "SELECT c.* FROM (SELECT DISTINCT task_id, milestone_id, unit_id, period FROM task_history \
     WHERE plan_id = $1 AND report_pk > $2) AS h CROSS JOIN LATERAL (SELECT ",
    task_columns!(),
    " FROM current_tasks WHERE plan_id = $1 AND task_id = h.task_id \
     AND milestone_id = h.milestone_id AND unit_id = h.unit_id AND period = h.period \
     AND report_pk > $2 OFFSET 0) AS c"
);

/// The rows changed after `report_pk` on `conn`, by `values_sql` and `tasks_sql`
/// ([`CHANGED_VALUES`] and [`CHANGED_TASKS`], or their PostgreSQL forms).
pub(super) async fn changed_after(
    conn: &mut AnyConnection,
    [values_sql, tasks_sql]: [&'static str; 2],
    plan_id: &str,
    report_pk: i64,
) -> Result<(Vec<ValueRow>, Vec<TaskRow>), StoreError> {
    let mut names = Names::default();
    let values = sqlx::query(values_sql)
        .bind(plan_id.to_owned())
        .bind(report_pk)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| value_row(row, &mut names))
        .collect::<Result<_, _>>()?;
    let tasks = sqlx::query(tasks_sql)
        .bind(plan_id.to_owned())
        .bind(report_pk)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(task_row)
        .collect::<Result<_, _>>()?;
    Ok((values, tasks))
}

/// The text of column `column` of `row`, one [`Name`] for equal texts through `names`.
fn name(row: &AnyRow, column: &str, names: &mut Names) -> Result<Name, StoreError> {
    Ok(names.get(row.try_get::<&str, _>(column)?))
}

fn value_row(row: &AnyRow, names: &mut Names) -> Result<ValueRow, StoreError> {
    Ok(ValueRow {
        plan_id: name(row, "plan_id", names)?,
        indicator_id: name(row, "indicator_id", names)?,
        unit_id: name(row, "unit_id", names)?,
        period: name(row, "period", names)?,
        value: row.try_get("value")?,
        note: row.try_get("note")?,
        revision: row.try_get("revision")?,
        issued_at_ms: row.try_get("issued_at_ms")?,
        seq: row.try_get("seq")?,
        report_pk: row.try_get("report_pk")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
        first_received_at_ms: row.try_get("first_received_at_ms")?,
        first_issued_at_ms: row.try_get("first_issued_at_ms")?,
    })
}

fn task_row(row: &AnyRow) -> Result<TaskRow, StoreError> {
    Ok(TaskRow {
        plan_id: row.try_get("plan_id")?,
        task_id: row.try_get("task_id")?,
        milestone_id: row.try_get("milestone_id")?,
        unit_id: row.try_get("unit_id")?,
        period: row.try_get("period")?,
        percent: row.try_get("percent")?,
        status: row.try_get("status")?,
        note: row.try_get("note")?,
        revision: row.try_get("revision")?,
        issued_at_ms: row.try_get("issued_at_ms")?,
        seq: row.try_get("seq")?,
        report_pk: row.try_get("report_pk")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
        first_received_at_ms: row.try_get("first_received_at_ms")?,
    })
}

pub(super) async fn audit(pool: &AnyPool, plan_id: &str) -> Result<Vec<AuditRow>, StoreError> {
    let rows = sqlx::query("SELECT at_ms, plan_id, kind, subject, unit_id, period, old_value, new_value, old_report_pk, new_report_pk FROM audit WHERE plan_id = $1 ORDER BY audit_pk")
        .bind(plan_id.to_owned())
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|row| {
            Ok(AuditRow {
                at_ms: row.try_get("at_ms")?,
                plan_id: row.try_get("plan_id")?,
                kind: row.try_get("kind")?,
                subject: row.try_get("subject")?,
                unit_id: row.try_get("unit_id")?,
                period: row.try_get("period")?,
                old_value: row.try_get("old_value")?,
                new_value: row.try_get("new_value")?,
                old_report_pk: row.try_get("old_report_pk")?,
                new_report_pk: row.try_get("new_report_pk")?,
            })
        })
        .collect()
}

pub(super) async fn stored_items(
    pool: &AnyPool,
    plan_id: &str,
) -> Result<Vec<StoredItem>, StoreError> {
    let rows = sqlx::query(
        "SELECT r.report_pk AS report_pk, r.unit_id AS unit_id, r.seq AS seq, r.revision AS revision, 'value' AS kind, h.indicator_id AS subject, h.period, h.value \
         FROM value_history h JOIN reports r ON r.report_pk = h.report_pk WHERE h.plan_id = $1 \
         UNION ALL \
         SELECT r.report_pk, r.unit_id, r.seq, r.revision, 'task_update' AS kind, h.task_id || '/' || h.milestone_id AS subject, h.period, h.percent AS value \
         FROM task_history h JOIN reports r ON r.report_pk = h.report_pk WHERE h.plan_id = $1 \
         ORDER BY 1, 5, 6",
    )
    .bind(plan_id.to_owned())
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(StoredItem {
                report_pk: row.try_get("report_pk")?,
                unit_id: row.try_get("unit_id")?,
                seq: row.try_get("seq")?,
                revision: row.try_get("revision")?,
                kind: row.try_get("kind")?,
                subject: row.try_get("subject")?,
                period: row.try_get("period")?,
                value: row.try_get("value")?,
            })
        })
        .collect()
}

pub(super) async fn envelope(
    pool: &AnyPool,
    unit_id: &str,
    report_id: &[u8],
) -> Result<Option<StoredEnvelope>, StoreError> {
    let row = sqlx::query("SELECT payload, payload_type, key_id, signature FROM reports WHERE unit_id = $1 AND report_id = $2")
        .bind(unit_id.to_owned())
        .bind(report_id.to_vec())
        .fetch_optional(pool)
        .await?;
    row.map(|row| {
        Ok(StoredEnvelope {
            payload: row.try_get("payload")?,
            payload_type: row.try_get("payload_type")?,
            key_id: row.try_get("key_id")?,
            signature: row.try_get("signature")?,
        })
    })
    .transpose()
}

pub(super) async fn security_events(pool: &AnyPool) -> Result<Vec<SecurityEvent>, StoreError> {
    let rows = sqlx::query("SELECT at_ms, kind, unit_id, key_id, report_id, detail FROM security_events ORDER BY event_pk")
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|row| {
            Ok(SecurityEvent {
                at_ms: row.try_get("at_ms")?,
                kind: row.try_get("kind")?,
                unit_id: row.try_get("unit_id")?,
                key_id: row.try_get("key_id")?,
                report_id: row.try_get("report_id")?,
                detail: row.try_get("detail")?,
            })
        })
        .collect()
}

pub(super) async fn write_marker(pool: &AnyPool) -> Result<WriteMarker, StoreError> {
    let row = sqlx::query(
        "SELECT (SELECT COALESCE(MAX(audit_pk), 0) FROM audit), \
         (SELECT COALESCE(MAX(pk), 0) FROM statements), \
         (SELECT COALESCE(MAX(report_pk), 0) FROM reports)",
    )
    .fetch_one(pool)
    .await?;
    Ok(WriteMarker {
        audit: row.try_get(0)?,
        statements: row.try_get(1)?,
        reports: row.try_get(2)?,
    })
}

pub(super) async fn ping(pool: &AnyPool) -> Result<(), StoreError> {
    sqlx::query("SELECT 1").fetch_one(pool).await?;
    Ok(())
}

/// Every value and task update received at or before `as_of_ms`, reconciled as the store
/// reconciles (the greatest `(revision, issued_at_ms, seq)` wins; first received is the
/// earliest receipt): the current values and tasks as they stood at that time.
pub(super) async fn received_by(
    pool: &AnyPool,
    plan_id: &str,
    as_of_ms: i64,
) -> Result<(Vec<ValueRow>, Vec<TaskRow>), StoreError> {
    let rows = sqlx::query("SELECT h.plan_id, h.indicator_id, h.unit_id, h.period, h.value, h.note, r.revision, r.issued_at_ms, r.seq, r.report_pk, r.received_at_ms FROM value_history h JOIN reports r ON r.report_pk = h.report_pk WHERE h.plan_id = $1 AND r.received_at_ms <= $2 ORDER BY r.received_at_ms, r.report_pk")
        .bind(plan_id.to_owned())
        .bind(as_of_ms)
        .fetch_all(pool)
        .await?;
    let mut values = Vec::with_capacity(rows.len());
    let mut names = Names::default();
    for row in &rows {
        let received: i64 = row.try_get("received_at_ms")?;
        let issued: i64 = row.try_get("issued_at_ms")?;
        let v = ValueRow {
            plan_id: name(row, "plan_id", &mut names)?,
            indicator_id: name(row, "indicator_id", &mut names)?,
            unit_id: name(row, "unit_id", &mut names)?,
            period: name(row, "period", &mut names)?,
            value: row.try_get("value")?,
            note: row.try_get("note")?,
            revision: row.try_get("revision")?,
            issued_at_ms: issued,
            seq: row.try_get("seq")?,
            report_pk: row.try_get("report_pk")?,
            updated_at_ms: received,
            first_received_at_ms: received,
            first_issued_at_ms: issued,
        };
        let key = (v.indicator_id.clone(), v.unit_id.clone(), v.period.clone());
        values.push((key, v));
    }
    let values = latest_wins(
        values,
        |v| (v.revision, v.issued_at_ms, v.seq),
        |first, winner| ValueRow {
            first_received_at_ms: first.first_received_at_ms,
            first_issued_at_ms: first.first_issued_at_ms,
            ..winner
        },
    );
    let rows = sqlx::query("SELECT h.plan_id, h.task_id, h.milestone_id, h.unit_id, h.period, h.percent, h.status, h.note, r.revision, r.issued_at_ms, r.seq, r.report_pk, r.received_at_ms FROM task_history h JOIN reports r ON r.report_pk = h.report_pk WHERE h.plan_id = $1 AND r.received_at_ms <= $2 ORDER BY r.received_at_ms, r.report_pk")
        .bind(plan_id.to_owned())
        .bind(as_of_ms)
        .fetch_all(pool)
        .await?;
    let mut tasks = Vec::with_capacity(rows.len());
    for row in &rows {
        let received: i64 = row.try_get("received_at_ms")?;
        let t = TaskRow {
            plan_id: row.try_get("plan_id")?,
            task_id: row.try_get("task_id")?,
            milestone_id: row.try_get("milestone_id")?,
            unit_id: row.try_get("unit_id")?,
            period: row.try_get("period")?,
            percent: row.try_get("percent")?,
            status: row.try_get("status")?,
            note: row.try_get("note")?,
            revision: row.try_get("revision")?,
            issued_at_ms: row.try_get("issued_at_ms")?,
            seq: row.try_get("seq")?,
            report_pk: row.try_get("report_pk")?,
            updated_at_ms: received,
            first_received_at_ms: received,
        };
        let key = (
            t.task_id.clone(),
            t.milestone_id.clone(),
            t.unit_id.clone(),
            t.period.clone(),
        );
        tasks.push((key, t));
    }
    let tasks = latest_wins(
        tasks,
        |t| (t.revision, t.issued_at_ms, t.seq),
        |first, winner| TaskRow {
            first_received_at_ms: first.first_received_at_ms,
            ..winner
        },
    );
    Ok((values, tasks))
}

/// Per key, the row of greatest `rank` among `rows` (taken in the order received); `merge`
/// carries what the first row received knew (its receipt) over to a later winner.
fn latest_wins<K: Ord, T>(
    rows: Vec<(K, T)>,
    rank: impl Fn(&T) -> (i64, i64, i64),
    merge: impl Fn(&T, T) -> T,
) -> Vec<T> {
    let mut current: std::collections::BTreeMap<K, T> = std::collections::BTreeMap::new();
    for (key, candidate) in rows {
        match current.get_mut(&key) {
            None => {
                current.insert(key, candidate);
            }
            Some(held) if rank(&candidate) > rank(held) => {
                *held = merge(held, candidate);
            }
            Some(_) => {}
        }
    }
    current.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(indicator: &str, unit: &str, period: &str) -> ValueRow {
        ValueRow {
            plan_id: "p".into(),
            indicator_id: indicator.into(),
            unit_id: unit.into(),
            period: period.into(),
            value: 1.0,
            note: String::new(),
            revision: 0,
            issued_at_ms: 0,
            seq: 1,
            report_pk: 1,
            updated_at_ms: 0,
            first_received_at_ms: 0,
            first_issued_at_ms: 0,
        }
    }

    fn keys(values: &[ValueRow]) -> Vec<(&str, &str, &str)> {
        values
            .iter()
            .map(|v| (&*v.indicator_id, &*v.period, &*v.unit_id))
            .collect()
    }

    #[test]
    fn values_in_any_order_end_in_the_snapshots_order() {
        // Byte order: "u10" before "u2", "区" after every ASCII name.
        let rows = [
            ("a", "u1", "2025-01"),
            ("a", "u10", "2025-02"),
            ("a", "u2", "2025-01"),
            ("a", "区", "2025-02"),
            ("b", "u1", "2025-02"),
            ("b", "u2", "2025-01"),
        ];
        let expected = vec![
            ("a", "2025-01", "u1"),
            ("a", "2025-01", "u2"),
            ("a", "2025-02", "u10"),
            ("a", "2025-02", "区"),
            ("b", "2025-01", "u2"),
            ("b", "2025-02", "u1"),
        ];
        use rand::{SeedableRng, seq::SliceRandom};
        let mut random = rand::rngs::StdRng::seed_from_u64(17);
        let mut orders = vec![rows.to_vec(), rows.iter().rev().copied().collect()];
        for _ in 0..50 {
            let mut order = rows.to_vec();
            order.shuffle(&mut random);
            orders.push(order);
        }
        for order in orders {
            // Each name its own allocation, and equal names sharing one, as the reads give them.
            let mut apart: Vec<ValueRow> = order.iter().map(|&(i, u, p)| value(i, u, p)).collect();
            let mut names = Names::default();
            let mut shared: Vec<ValueRow> = order
                .iter()
                .map(|&(i, u, p)| ValueRow {
                    indicator_id: names.get(i),
                    unit_id: names.get(u),
                    period: names.get(p),
                    ..value(i, u, p)
                })
                .collect();
            let addresses = |rows: &[ValueRow]| -> std::collections::HashSet<*const u8> {
                rows.iter()
                    .filter(|v| v.indicator_id == "a")
                    .map(|v| v.indicator_id.as_ptr())
                    .collect()
            };
            assert_eq!(addresses(&shared).len(), 1);
            assert_eq!(addresses(&apart).len(), 4);
            in_snapshot_order(&mut apart);
            in_snapshot_order(&mut shared);
            assert_eq!(keys(&apart), expected, "read as {order:?}");
            assert_eq!(keys(&shared), expected, "read as {order:?}, names shared");
        }
    }
}

//! PostgreSQL backend for scale-out: several aggregator replicas share one database, and the
//! unique constraints there decide what is stored.
//!
//! Ingest calls are committed in groups (see [`group`]) by [`WRITERS`] writer tasks, each with
//! its own queue; a call goes to the writer of its unit, so that within one replica two
//! transactions never wait for each other's locks. A group is one transaction: its units and
//! keys locked, every table it touches read in one statement, [`decide`] in memory, and every
//! table written in one statement together (`UNNEST` of typed arrays, through a typed `PgPool`;
//! see `group_sql`).

mod group_sql;

use std::str::FromStr;

use sqlx::any::AnyPoolOptions;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AnyPool, Connection, PgPool, Row};
use tokio::sync::mpsc;

use super::decide::decide;
use super::group::{self, Commit};
use super::types::*;
use super::{AlertChanges, SqlBackend, StoreError, WantedAlert, queries};
use crate::progress::input::{TaskRow, ValueRow};

/// Advisory lock keys are derived from the schema, so that deployments (and test schemas)
/// sharing one database do not contend; replicas of one deployment share a schema.
const NOTIFIER_LOCK: &str =
    "SELECT pg_try_advisory_lock(hashtext(current_schema() || ':duban-notifier'))";
const ALERT_SYNC_LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtext(current_schema() || ':duban-alert-sync'))";

/// How many transactions of one replica store reports at once (each a group of calls): two,
/// so that one group is read and decided while the other's commit is flushed. One and four
/// did less on two cores, three no more (docs/PERFORMANCE.md, "Ingest").
const WRITERS: usize = 2;

#[derive(Clone)]
pub struct PgStore {
    pool: AnyPool,
    /// The whole reads of the current values, typed (see [`SqlBackend::read_current_values`]);
    /// connected when first used.
    bulk: PgPool,
    /// The writers' queues, by unit (empty when opened read-only).
    writers: Vec<mpsc::Sender<group::Job>>,
    /// A connection of its own that holds the notifier advisory lock once taken.
    notifier: std::sync::Arc<tokio::sync::Mutex<Option<sqlx::pool::PoolConnection<sqlx::Any>>>>,
}

impl PgStore {
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, 16).await
    }

    pub async fn open_with(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let pool = connect(url, max_connections).await?;
        let mut conn = pool.acquire().await?;
        sqlx::migrate!("migrations/postgres")
            .run(&mut *conn)
            .await?;
        drop(conn);
        // The ingest path's typed pool (array binds for `UNNEST`).
        let typed = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(writer_options(url)?)
            .await?;
        let writers = (0..WRITERS)
            .map(|_| {
                let (writer, jobs) = mpsc::channel(group::QUEUE);
                tokio::spawn(group::write_loop(Writer(typed.clone()), jobs));
                writer
            })
            .collect();
        Ok(PgStore {
            pool,
            bulk: bulk_pool(url)?,
            writers,
            notifier: Default::default(),
        })
    }

    /// Connects without migrating, after checking that the schema is this program's.
    pub async fn open_read_only(url: &str) -> Result<Self, StoreError> {
        let pool = connect(url, 4).await?;
        super::check_schema(&pool, &sqlx::migrate!("migrations/postgres"), url).await?;
        Ok(PgStore {
            pool,
            bulk: bulk_pool(url)?,
            writers: Vec::new(),
            notifier: Default::default(),
        })
    }
}

/// A pool, after one direct connection has shown the server answers: a wrong host, port,
/// database or user fails at once with the server's own words, instead of a pool timeout.
async fn connect(url: &str, max_connections: u32) -> Result<AnyPool, StoreError> {
    sqlx::any::install_default_drivers();
    let first = tokio::time::timeout(CONNECT_TIMEOUT, sqlx::AnyConnection::connect(url)).await;
    let connect_error = |message: String| StoreError::Connect {
        url: super::redact(url),
        message,
    };
    match first {
        Err(_) => {
            return Err(connect_error(format!(
                "no answer within {} s",
                CONNECT_TIMEOUT.as_secs()
            )));
        }
        Ok(Err(sqlx::Error::Database(e))) => return Err(connect_error(e.message().to_owned())),
        Ok(Err(sqlx::Error::Io(e))) => return Err(connect_error(e.to_string())),
        Ok(Err(other)) => return Err(connect_error(other.to_string())),
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
        }
    }
    Ok(AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect(url)
        .await?)
}

/// The writers' sessions. Every statement of a group finds its rows by a unique key, so they
/// plan nothing but index lookups: a prepared statement's generic plan, made while the tables
/// were still empty, otherwise kept scanning the whole of `reports` and `current_values` for
/// each group as they grew (docs/PERFORMANCE.md, "Ingest").
fn writer_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    Ok(PgConnectOptions::from_str(url)?.options(INDEX_LOOKUPS_ONLY))
}

/// The planner's settings for statements that find their rows by unique keys: no sequential
/// scans, no hash or merge joins (a nested loop of index lookups).
const INDEX_LOOKUPS_ONLY: [(&str, &str); 3] = [
    ("enable_seqscan", "off"),
    ("enable_hashjoin", "off"),
    ("enable_mergejoin", "off"),
];

/// [`INDEX_LOOKUPS_ONLY`] for the rest of a transaction.
fn index_lookups_only_local() -> String {
    INDEX_LOOKUPS_ONLY
        .iter()
        .map(|(name, value)| format!("SET LOCAL {name} = {value};"))
        .collect()
}

/// The pool of the whole reads, connected at the first read, with the planner's defaults (a
/// whole plan is a sequential scan, not the writers' index lookups). The views make one read
/// at a time; the web view's past states and the CLI make theirs besides.
fn bulk_pool(url: &str) -> Result<PgPool, StoreError> {
    Ok(PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy_with(PgConnectOptions::from_str(url)?))
}

/// How long the first connection at start may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a call waits for a connection once serving: with the server down or restarting,
/// calls are answered UNAVAILABLE after this (and agents retry), not held until the caller's
/// own deadline (found by the fault harness's postgres-restart scenario: held 10 s, agents with
/// a shorter timeout saw only their own deadline).
const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// A writer task's handle on the typed pool.
struct Writer(PgPool);

impl Writer {
    async fn commit_once(&self, reports: &[&NewReport]) -> Result<Vec<StoreOutcome>, StoreError> {
        let mut tx = self.0.begin().await?;
        let mut known = group_sql::read_known(&mut tx, reports).await?;
        let mut pks = group_sql::reserve_pks(&mut tx, reports.len())
            .await?
            .into_iter();
        let decided = decide(reports.iter().copied(), &mut known, || {
            pks.next().expect("one report_pk reserved per report")
        });
        group_sql::write(&mut tx, &decided).await?;
        tx.commit().await?;
        Ok(decided.outcomes)
    }
}

impl Commit for Writer {
    async fn commit(&mut self, reports: &[&NewReport]) -> Result<Vec<StoreOutcome>, StoreError> {
        // Two replicas can race on the same current-value row (a unique violation) or lock
        // rows in opposite orders (a deadlock); the transaction is then retried whole, and the
        // constraints classify what the other replica committed meanwhile.
        let mut attempt = 0;
        loop {
            match self.commit_once(reports).await {
                Err(StoreError::Database(sqlx::Error::Database(e)))
                    if attempt < 3
                        && matches!(e.code().as_deref(), Some("23505" | "40P01" | "40001")) =>
                {
                    attempt += 1;
                    tracing::debug!(code = ?e.code(), attempt, "retrying an ingest transaction that raced another replica");
                }
                other => return other,
            }
        }
    }
}

/// The writer of a call: by its first report's unit (a call's reports are one unit's when the
/// client certificate names it).
fn writer_of(unit_id: &str, writers: usize) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(unit_id);
    (hash % writers as u64) as usize
}

impl SqlBackend for PgStore {
    fn read_pool(&self) -> &AnyPool {
        &self.pool
    }
    /// Sequences hand out ids before commit, to replicas writing at once.
    fn ids_follow_commits(&self) -> bool {
        false
    }
    /// Each key's lookup a subquery of its own ([`queries::CHANGED_VALUES_PG`]), in a
    /// transaction planned for index lookups only ([`INDEX_LOOKUPS_ONLY`]): the statements are
    /// prepared, and a generic plan made while the tables were small (or had no statistics:
    /// this machine's PostgreSQL runs without autovacuum) is kept as they grow.
    async fn changed_after(
        &self,
        plan_id: &str,
        report_pk: i64,
    ) -> Result<(Vec<ValueRow>, Vec<TaskRow>), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(index_lookups_only_local()))
            .execute(&mut *tx)
            .await?;
        let sql = [queries::CHANGED_VALUES_PG, queries::CHANGED_TASKS_PG];
        let changed = queries::changed_after(&mut tx, sql, plan_id, report_pk).await?;
        tx.commit().await?;
        Ok(changed)
    }
    /// Through a typed connection, each row decoded from PostgreSQL's binary format as it
    /// arrives, then put in the snapshot's order ([`queries::ValuesRead`]), as SQLite's whole
    /// read does. Through sqlx's
    /// `Any` driver, each row was first converted into an `AnyRow` (docs/PERFORMANCE.md,
    /// "The whole read on PostgreSQL").
    async fn read_current_values(
        &self,
        plan_id: &str,
        indicator_id: Option<&str>,
    ) -> Result<Vec<ValueRow>, StoreError> {
        use tokio_stream::StreamExt as _;
        let query = match indicator_id {
            None => sqlx::query(queries::PLAN_VALUES).bind(plan_id),
            Some(indicator_id) => sqlx::query(queries::INDICATOR_VALUES)
                .bind(plan_id)
                .bind(indicator_id),
        };
        let mut read = queries::ValuesRead::new(plan_id);
        let mut rows = query.fetch(&self.bulk);
        while let Some(row) = rows.next().await {
            let row = row?;
            let name = |column: usize| row.try_get::<&str, _>(column);
            read.push(
                [name(1)?, name(2)?, name(3)?],
                |(plan_id, indicator_id, unit_id, period)| -> Result<ValueRow, sqlx::Error> {
                    Ok(ValueRow {
                        plan_id,
                        indicator_id,
                        unit_id,
                        period,
                        value: row.try_get(4)?,
                        note: row.try_get(5)?,
                        revision: row.try_get(6)?,
                        issued_at_ms: row.try_get(7)?,
                        seq: row.try_get(8)?,
                        report_pk: row.try_get(9)?,
                        updated_at_ms: row.try_get(10)?,
                        first_received_at_ms: row.try_get(11)?,
                        first_issued_at_ms: row.try_get(12)?,
                    })
                },
            )?;
        }
        // The connection back to the pool before the rows are sorted.
        drop(rows);
        Ok(read.in_snapshot_order())
    }
    async fn ingest(&self, reports: Vec<NewReport>) -> Result<Vec<StoreOutcome>, StoreError> {
        let Some(first) = reports.first() else {
            return Ok(Vec::new());
        };
        if self.writers.is_empty() {
            return Err(StoreError::ReadOnly);
        }
        let writer = &self.writers[writer_of(&first.unit_id, self.writers.len())];
        group::submit(writer, reports).await
    }
    async fn sync_alerts(
        &self,
        plan_id: &str,
        wanted: Vec<WantedAlert>,
        now_ms: i64,
    ) -> Result<AlertChanges, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        // One replica at a time rewrites alert state; the others wait their turn.
        sqlx::query(ALERT_SYNC_LOCK).execute(&mut *tx).await?;
        let changes = super::alerts::sync(&mut tx, plan_id, &wanted, now_ms).await?;
        tx.commit().await?;
        Ok(changes)
    }
    async fn is_notifier(&self) -> Result<bool, StoreError> {
        let mut held = self.notifier.lock().await;
        if let Some(conn) = held.as_mut() {
            if sqlx::query("SELECT 1").execute(&mut **conn).await.is_ok() {
                return Ok(true);
            }
            *held = None; // the connection died, and the lock with it
        }
        let mut conn = self.pool.acquire().await?;
        let got: bool = sqlx::query(NOTIFIER_LOCK)
            .fetch_one(&mut *conn)
            .await?
            .try_get(0)?;
        if got {
            *held = Some(conn);
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection, Executor, PgConnection};

    use super::*;

    /// A schema of the test server, migrated, dropped by [`TestSchema::drop`].
    struct TestSchema {
        admin: PgConnection,
        url: String,
        name: String,
    }

    impl TestSchema {
        async fn drop(mut self) {
            let drop_schema = format!("DROP SCHEMA {} CASCADE", self.name);
            self.admin
                .execute(sqlx::AssertSqlSafe(drop_schema))
                .await
                .unwrap();
        }
    }

    /// A new schema named after `tag`, migrated, on the test server for `test`. None when
    /// there is no server (the test says why).
    async fn migrated(test: &str, tag: &str) -> Option<TestSchema> {
        let base = duban_testkit::postgres_url(test)?;
        let schema = format!("duban_{tag}_{}", std::process::id());
        let mut admin = PgConnection::connect(&base).await.unwrap();
        let reset = format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}");
        admin.execute(sqlx::AssertSqlSafe(reset)).await.unwrap();
        let separator = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{separator}options=-c%20search_path%3D{schema}");
        drop(PgStore::open_with(&url, 2).await.unwrap());
        Some(TestSchema {
            admin,
            url,
            name: schema,
        })
    }

    /// The plan of the prepared statement `name` of `sql` (every parameter NULL), planned
    /// generic on `conn` (set to `plan_cache_mode = force_generic_plan`).
    async fn generic_plan(conn: &mut PgConnection, name: &str, sql: &str, params: usize) -> String {
        let prepare = format!("PREPARE {name} AS {sql}");
        conn.execute(sqlx::AssertSqlSafe(prepare)).await.unwrap();
        let params = vec!["NULL"; params].join(", ");
        let explain = format!("EXPLAIN EXECUTE {name}({params})");
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(explain))
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        plan.join("\n")
    }

    /// The group's lookups, planned as a prepared statement's generic plan on empty tables (the
    /// plan a writer keeps once the tables grow), search indexes only.
    #[tokio::test]
    async fn group_lookups_search_indexes_even_planned_on_empty_tables() {
        let Some(schema) = migrated(
            "group_lookups_search_indexes_even_planned_on_empty_tables",
            "plans",
        )
        .await
        else {
            return;
        };
        let mut conn = PgConnection::connect_with(&writer_options(&schema.url).unwrap())
            .await
            .unwrap();
        conn.execute("SET plan_cache_mode = force_generic_plan")
            .await
            .unwrap();
        for (name, sql) in group_sql::lookups() {
            let params = (1..)
                .take_while(|n| sql.contains(&format!("${n}::")))
                .count();
            let plan = generic_plan(&mut conn, name, sql, params).await;
            assert!(!plan.contains("Seq Scan"), "{name}:\n{plan}");
            assert!(plan.contains("Index"), "{name}:\n{plan}");
            if name == "WRITE" {
                // Each row the group's write updates found by its table's primary key.
                for table in ["current_values", "current_tasks", "keys"] {
                    let by_key = format!("Index Scan using {table}_pkey on {table} ");
                    assert!(plan.contains(&by_key), "{name}, {table}:\n{plan}");
                }
            }
        }
        schema.drop().await;
    }

    /// The rows changed after a report, planned as `changed_after` plans them (in a
    /// transaction set to index lookups only) and as the generic plan a prepared statement
    /// keeps, are found by index lookups, the history by report and each current row by its
    /// key: on empty tables without statistics (a new database; this machine's PostgreSQL runs
    /// without autovacuum), and on analysed tables where one plan holds every row.
    #[tokio::test]
    async fn the_rows_changed_after_a_report_are_found_by_index_lookups() {
        let Some(schema) = migrated(
            "the_rows_changed_after_a_report_are_found_by_index_lookups",
            "changed",
        )
        .await
        else {
            return;
        };
        let mut conn = PgConnection::connect(&schema.url).await.unwrap();
        for state in ["empty", "analysed"] {
            if state == "analysed" {
                // Rows without their reports (no foreign-key checks in this session).
                conn.execute(
                    "SET session_replication_role = replica; \
                     INSERT INTO value_history SELECT g, 'p', 'i' || g % 50, 'u' || g / 50, \
                     '2020-01', 1, '' FROM generate_series(1, 20000) AS g; \
                     INSERT INTO current_values (plan_id, indicator_id, unit_id, period, value, \
                     note, revision, issued_at_ms, seq, report_pk, updated_at_ms, \
                     first_received_at_ms) SELECT plan_id, indicator_id, unit_id, period, value, \
                     note, 1, 1, 1, report_pk, 1, 1 FROM value_history; \
                     INSERT INTO task_history SELECT g, 'p', 't' || g % 50, 'm', 'u' || g / 50, \
                     '2020-01', 50, 'on_track', '' FROM generate_series(1, 20000) AS g; \
                     INSERT INTO current_tasks (plan_id, task_id, milestone_id, unit_id, period, \
                     percent, status, note, revision, issued_at_ms, seq, report_pk, \
                     updated_at_ms, first_received_at_ms) SELECT plan_id, task_id, \
                     milestone_id, unit_id, period, percent, status, note, 1, 1, 1, report_pk, \
                     1, 1 FROM task_history; \
                     ANALYZE",
                )
                .await
                .unwrap();
            }
            let mut tx = conn.begin().await.unwrap();
            tx.execute(sqlx::AssertSqlSafe(index_lookups_only_local()))
                .await
                .unwrap();
            tx.execute("SET LOCAL plan_cache_mode = force_generic_plan")
                .await
                .unwrap();
            for (name, sql, history) in [
                (
                    "changed_values",
                    queries::CHANGED_VALUES_PG,
                    "value_history",
                ),
                ("changed_tasks", queries::CHANGED_TASKS_PG, "task_history"),
            ] {
                let plan = generic_plan(&mut tx, &format!("{name}_{state}"), sql, 2).await;
                let context = format!("{name}, {state}:\n{plan}");
                assert!(!plan.contains("Seq Scan"), "{context}");
                // The history searched by report, each current row by its whole key (not read
                // for the plan and filtered).
                assert!(
                    plan.lines()
                        .any(|line| line.contains("Index Cond") && line.contains("report_pk > $2")),
                    "{context}"
                );
                let by_key = format!("(period = {history}.period))");
                assert!(
                    plan.lines()
                        .any(|line| line.contains("Index Cond") && line.contains(&by_key)),
                    "{context}"
                );
                assert!(!plan.contains("Join Filter"), "{context}");
            }
            tx.rollback().await.unwrap();
        }
        schema.drop().await;
    }
}

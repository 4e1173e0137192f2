//! SQLite backend: one writer with group commit, a small pool of readers.
//!
//! The database is in WAL mode with `synchronous=FULL`, so a commit is on disk when it returns.
//! Every ingest goes over a channel to a single writer, on a thread of its own with its own
//! `rusqlite` connection, which commits the calls that have queued up together (see [`group`])
//! in one `BEGIN IMMEDIATE` transaction: concurrent callers share one fsync. Inside, the group
//! is set-based: one read per table of every row the group touches, [`decide`] in memory, one
//! multi-row write per table, each statement prepared once and kept (see `group_sql`). Callers
//! are answered only after the commit. The other SQL (migrations, reads, keys, statements,
//! alerts) goes through sqlx.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use rusqlite::types::ValueRef;
use sqlx::any::AnyPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{AnyConnection, AnyPool, ConnectOptions, Connection, Executor, SqliteConnection};
use tokio::sync::mpsc;

use super::SqlBackend;
use super::decide::decide;
use super::group::{self, Commit};
use super::types::*;
use super::{AlertChanges, StoreError, WantedAlert, queries};
use crate::progress::input::{TaskRow, ValueRow};

mod group_sql;

#[derive(Clone)]
pub struct SqliteStore {
    /// `None` when opened read-only.
    writer: Option<mpsc::Sender<group::Job>>,
    readers: AnyPool,
    bulk: std::sync::Arc<BulkReader>,
    path: PathBuf,
}

/// The whole reads of the current values: millions of rows on a large plan, the first view
/// after a start reading them all. Through `rusqlite` on a blocking thread, each row decoded
/// where SQLite steps it: through sqlx, every column of every row was copied once more
/// (`sqlite3_value_dup`) and every row handed from its worker thread to the reader, most of
/// the read's time (docs/PERFORMANCE.md, "The whole read"). A plan in a large table is read in
/// two halves at once, on two connections, from one snapshot ([`BulkReader::whole_plan`]).
/// Reads through read-only connections; one kept between reads, others opened while it is in
/// use.
struct BulkReader {
    path: PathBuf,
    /// Whether a whole read may take the write lock for a moment, to begin its two halves
    /// from one snapshot: the store's own file, not one opened read-only.
    may_lock: bool,
    /// [`SPLIT_FROM_ROWS`], smaller in tests.
    split_from: i64,
    idle: std::sync::Mutex<Option<rusqlite::Connection>>,
}

/// A plan is read in two halves at once when its table spans this many rowids or more:
/// below it, a second connection and thread are not worth their start.
const SPLIT_FROM_ROWS: i64 = 100_000;

impl BulkReader {
    fn new(path: &Path, may_lock: bool) -> Result<Self, StoreError> {
        let connection = Self::connect(path)?;
        Ok(BulkReader {
            path: path.to_owned(),
            may_lock,
            split_from: SPLIT_FROM_ROWS,
            idle: std::sync::Mutex::new(Some(connection)),
        })
    }

    fn connect(path: &Path) -> Result<rusqlite::Connection, rusqlite::Error> {
        use rusqlite::OpenFlags;
        let connection = rusqlite::Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // As the other readers: a checkpoint or recovery in progress is waited for.
        connection.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(connection)
    }

    /// [`queries::PLAN_VALUES_AS_STORED`] for a whole plan ([`Self::whole_plan`]),
    /// [`queries::INDICATOR_VALUES`] for one indicator, in the snapshot's order
    /// ([`queries::ValuesRead`]: each distinct name allocated once, from the text SQLite holds
    /// for the row).
    fn current_values(
        &self,
        plan_id: &str,
        indicator_id: Option<&str>,
    ) -> Result<Vec<ValueRow>, StoreError> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).take();
        let connection = match idle {
            Some(connection) => connection,
            None => Self::connect(&self.path)?,
        };
        let read = match indicator_id {
            None => self
                .whole_plan(&connection, plan_id)
                .map(|(read, _halves)| read),
            Some(indicator_id) => {
                let key = (plan_id, indicator_id);
                read_values(&connection, plan_id, queries::INDICATOR_VALUES, key)
            }
        };
        *self.idle.lock().unwrap_or_else(|e| e.into_inner()) = Some(connection);
        Ok(read
            .map_err(|error| corrupt_or("current_values", error))?
            .in_snapshot_order())
    }

    /// A whole plan's values, and whether they were read in two halves. When the table is
    /// large (spans [`SPLIT_FROM_ROWS`] rowids, whatever plans it holds), in two halves at
    /// once, each on its own connection and thread, split by rowid (each a scan of its part of
    /// the table as stored, [`queries::PLAN_VALUES_AS_STORED_BEFORE`] and `_FROM`): stepping
    /// and decoding the rows is most of the read, and a start has both cores for it. The two
    /// must read one snapshot, or a row rewritten between their beginnings could be read twice
    /// or not at all, so each connection begins its read transaction (`BEGIN` and a read of
    /// the schema, which fixes what a WAL reader sees) while a third connection holds the
    /// write lock (`BEGIN IMMEDIATE`, rolled back as soon as both have begun: the writer waits
    /// that moment, through its busy timeout). Where that lock cannot be had (a store opened
    /// read-only, the file not writable, a writer that leaves no gap for 500 ms), or a second
    /// connection cannot be opened, on one connection.
    fn whole_plan(
        &self,
        first: &rusqlite::Connection,
        plan_id: &str,
    ) -> rusqlite::Result<(queries::ValuesRead, bool)> {
        let whole = || {
            read_values(first, plan_id, queries::PLAN_VALUES_AS_STORED, [plan_id])
                .map(|read| (read, false))
        };
        let (low, high): (Option<i64>, Option<i64>) = first.query_row(
            "SELECT min(rowid), max(rowid) FROM current_values",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        let split = match (low, high) {
            (Some(low), Some(high)) if high.saturating_sub(low) >= self.split_from => {
                low.midpoint(high)
            }
            _ => return whole(),
        };
        let Ok(second) = Self::connect(&self.path) else {
            return whole();
        };
        let Some(lock) = self.write_lock() else {
            return whole();
        };
        // The first connection goes back to be kept, so its read transaction must end (or
        // every later read would see this snapshot); the second's ends as it is closed.
        let earlier = ReadTransaction::begin(first);
        let later = second
            .execute_batch("BEGIN")
            .and_then(|()| second.execute_batch(FIRST_READ));
        drop(lock);
        let _earlier = earlier?;
        later?;
        std::thread::scope(|scope| {
            let later = scope.spawn(move || {
                let sql = queries::PLAN_VALUES_AS_STORED_FROM;
                read_values(&second, plan_id, sql, (plan_id, split))
            });
            let sql = queries::PLAN_VALUES_AS_STORED_BEFORE;
            let earlier = read_values(first, plan_id, sql, (plan_id, split));
            let later = later
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            let mut read = earlier?;
            read.append(later?);
            Ok((read, true))
        })
    }

    /// A connection of its own holding the database's write lock, for [`Self::whole_plan`];
    /// dropping it rolls back (nothing was written). `None` when it cannot be had.
    fn write_lock(&self) -> Option<rusqlite::Connection> {
        use rusqlite::OpenFlags;
        if !self.may_lock {
            return None;
        }
        let lock = || -> rusqlite::Result<rusqlite::Connection> {
            let connection = rusqlite::Connection::open_with_flags(
                &self.path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            // Not the readers' 10 s: a writer committing back to back leaves few gaps, and
            // one connection reads as well as two waiting.
            connection.busy_timeout(std::time::Duration::from_millis(500))?;
            connection.execute_batch("BEGIN IMMEDIATE")?;
            Ok(connection)
        };
        lock()
            .inspect_err(|error| {
                tracing::debug!(%error, "the whole read on one connection: no write lock");
            })
            .ok()
    }
}

/// A read transaction begun by [`BulkReader::whole_plan`] (`BEGIN` and a first read), ended
/// when dropped: a read-only transaction has nothing to commit, so it is rolled back.
struct ReadTransaction<'c>(&'c rusqlite::Connection);

/// A first read, of the schema: in a transaction begun with `BEGIN`, it fixes the snapshot
/// the transaction's reads see.
const FIRST_READ: &str = "SELECT count(*) FROM sqlite_schema";

impl<'c> ReadTransaction<'c> {
    fn begin(connection: &'c rusqlite::Connection) -> rusqlite::Result<Self> {
        connection.execute_batch("BEGIN")?;
        let transaction = ReadTransaction(connection);
        connection.execute_batch(FIRST_READ)?;
        Ok(transaction)
    }
}

impl Drop for ReadTransaction<'_> {
    fn drop(&mut self) {
        if !self.0.is_autocommit()
            && let Err(error) = self.0.execute_batch("ROLLBACK")
        {
            tracing::warn!(%error, "ending the whole read's transaction");
        }
    }
}

/// Every row `sql` returns for `params` (rows of `plan_id`), taken into a
/// [`queries::ValuesRead`].
fn read_values(
    connection: &rusqlite::Connection,
    plan_id: &str,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<queries::ValuesRead> {
    let mut read = queries::ValuesRead::new(plan_id);
    let mut statement = connection.prepare(sql)?;
    let mut rows = statement.query(params)?;
    while let Some(row) = rows.next()? {
        let name = |column: usize| -> rusqlite::Result<&str> {
            match row.get_ref(column)? {
                ValueRef::Text(text) => std::str::from_utf8(text).map_err(|error| {
                    rusqlite::Error::FromSqlConversionFailure(
                        column,
                        rusqlite::types::Type::Text,
                        Box::new(error),
                    )
                }),
                // As `Row::get` says it, naming the column.
                other => Err(rusqlite::Error::InvalidColumnType(
                    column,
                    row.as_ref().column_name(column)?.to_owned(),
                    other.data_type(),
                )),
            }
        };
        read.push(
            [name(1)?, name(2)?, name(3)?],
            |(plan_id, indicator_id, unit_id, period)| -> rusqlite::Result<ValueRow> {
                Ok(ValueRow {
                    plan_id,
                    indicator_id,
                    unit_id,
                    period,
                    value: row.get(4)?,
                    note: row.get(5)?,
                    revision: row.get(6)?,
                    issued_at_ms: row.get(7)?,
                    seq: row.get(8)?,
                    report_pk: row.get(9)?,
                    updated_at_ms: row.get(10)?,
                    first_received_at_ms: row.get(11)?,
                    first_issued_at_ms: row.get(12)?,
                })
            },
        )?;
    }
    Ok(read)
}

/// A column of the wrong type or size, read through `rusqlite`, is a corrupt row of `table`;
/// other errors are left as they are.
fn corrupt_or(table: &'static str, error: rusqlite::Error) -> StoreError {
    match error {
        rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => StoreError::Corrupt {
            table,
            detail: error.to_string(),
        },
        other => other.into(),
    }
}

impl SqliteStore {
    /// Opens `sqlite://PATH` (or `sqlite:PATH`), creating the file and its directory if
    /// missing, and brings the schema up to date.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let path = path_of(url)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Database(sqlx::Error::Configuration(
                    format!("cannot create directory {}: {e}", dir.display()).into(),
                ))
            })?;
        }
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut conn = connect_to_migrate(&url)
            .await
            .map_err(|e| damaged_or(e, &path))?;
        check_integrity(&mut conn, &path).await?;
        sqlx::migrate!("migrations/sqlite").run(&mut conn).await?;
        conn.close().await?;
        let readers = AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(|conn, _| Box::pin(async move { pragmas(conn).await }))
            .connect(&url)
            .await?;
        let bulk = std::sync::Arc::new(BulkReader::new(&path, true)?);
        let (writer, jobs) = mpsc::channel(group::QUEUE);
        Writer::start(&path, jobs)?;
        Ok(SqliteStore {
            writer: Some(writer),
            readers,
            bulk,
            path,
        })
    }

    /// Opens an existing database file read-only (`mode=ro`): nothing is created or migrated.
    pub async fn open_read_only(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let path = path_of(url)?;
        if !path.is_file() {
            return Err(StoreError::Missing(path.display().to_string()));
        }
        let url = format!("sqlite://{}?mode=ro", path.display());
        let readers = AnyPoolOptions::new()
            .max_connections(2)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        super::check_schema(&readers, &sqlx::migrate!("migrations/sqlite"), &url).await?;
        Ok(SqliteStore {
            writer: None,
            readers,
            bulk: std::sync::Arc::new(BulkReader::new(&path, false)?),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn path_of(url: &str) -> Result<PathBuf, StoreError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| StoreError::UnsupportedUrl(url.to_owned()))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path.starts_with(':') {
        return Err(StoreError::UnsupportedUrl(url.to_owned()));
    }
    Ok(PathBuf::from(path))
}

async fn pragmas(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    conn.execute(
        "PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON",
    )
    .await?;
    Ok(())
}

/// A connection refused because the file is damaged (SQLITE_CORRUPT, SQLITE_NOTADB, with
/// their extended codes) is said to be so; other errors are left as they are.
fn damaged_or(error: StoreError, path: &Path) -> StoreError {
    match &error {
        StoreError::Database(sqlx::Error::Database(e))
            if e.code()
                .and_then(|c| c.parse::<i32>().ok())
                .is_some_and(|c| matches!(c & 0xff, 11 | 26)) =>
        {
            StoreError::Damaged {
                path: path.display().to_string(),
                detail: e.message().to_owned(),
            }
        }
        _ => error,
    }
}

/// Refuses a damaged file before anything is read from it or written to it: `PRAGMA
/// quick_check` reads every page and checks each b-tree (not that indexes match their tables,
/// which `integrity_check` would, at several times the cost).
pub(super) async fn check_integrity(
    conn: &mut SqliteConnection,
    path: &Path,
) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let found: Vec<String> = sqlx::query_scalar("PRAGMA quick_check(20)")
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| StoreError::Damaged {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
    tracing::debug!(
        seconds = started.elapsed().as_secs_f64(),
        "database pages checked (quick_check)"
    );
    if found.len() == 1 && found[0] == "ok" {
        return Ok(());
    }
    Err(StoreError::Damaged {
        path: path.display().to_string(),
        detail: found.join("; "),
    })
}

/// The connection that creates and migrates the file, before the writer takes it over.
async fn connect_to_migrate(url: &str) -> Result<SqliteConnection, StoreError> {
    let options = SqliteConnectOptions::from_str(url)?
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(std::time::Duration::from_secs(10))
        .foreign_keys(true)
        .disable_statement_logging();
    Ok(options.connect().await?)
}

/// The writer's connection; one transaction per group (see [`group`]).
struct Writer(rusqlite::Connection);

impl Writer {
    /// Opens the writer's connection and starts its thread, which commits `jobs` group by
    /// group until every sender is gone. The thread runs [`group::write_loop`] itself, so a
    /// group's statements are plain calls into SQLite: no hand-off to another thread per
    /// statement, nothing copied between the caller's values and SQLite's.
    fn start(path: &Path, jobs: mpsc::Receiver<group::Job>) -> Result<(), StoreError> {
        let connection = rusqlite::Connection::open(path)?;
        connection.busy_timeout(std::time::Duration::from_secs(10))?;
        connection.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON",
        )?;
        // A multi-row statement that may fail half-way keeps a statement journal; in memory,
        // not in a temporary file written for every group (measured: docs/PERFORMANCE.md).
        connection.pragma_update(None, "temp_store", "MEMORY")?;
        // SQLite's default page cache (2 MB), not a larger one: at the commit of a transaction
        // in which a b-tree split renumbered pages, SQLite walks its whole cache (8 % of the
        // writer's samples with 64 MiB: docs/PERFORMANCE.md, "Ingest"); pages not in it are
        // read from the operating system's page cache.
        connection.set_prepared_statement_cache_capacity(group_sql::CACHED_STATEMENTS);
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("duban-sqlite-writer".into())
            .spawn(move || runtime.block_on(group::write_loop(Writer(connection), jobs)))
            .map_err(|error| {
                StoreError::Database(sqlx::Error::Configuration(
                    format!("cannot start the SQLite writer's thread: {error}").into(),
                ))
            })?;
        Ok(())
    }
}

impl Commit for Writer {
    /// One transaction: read what the group touches, decide, write each table in one
    /// statement (per rung of `group_sql::LADDER`), commit once. Dropped uncommitted, the
    /// transaction rolls back.
    async fn commit(&mut self, reports: &[&NewReport]) -> Result<Vec<StoreOutcome>, StoreError> {
        let transaction = self
            .0
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut known = group_sql::read_known(&transaction, reports)?;
        let mut next_pk = group_sql::last_report_pk(&transaction)?;
        let decided = decide(reports.iter().copied(), &mut known, || {
            next_pk += 1;
            next_pk
        });
        group_sql::write_decided(&transaction, &decided)?;
        transaction.commit()?;
        Ok(decided.outcomes)
    }
}

impl SqlBackend for SqliteStore {
    fn read_pool(&self) -> &AnyPool {
        &self.readers
    }
    /// SQLite lets one transaction write at a time, and ids are taken inside it.
    fn ids_follow_commits(&self) -> bool {
        true
    }
    async fn ingest(&self, reports: Vec<NewReport>) -> Result<Vec<StoreOutcome>, StoreError> {
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        group::submit(self.writer.as_ref().ok_or(StoreError::ReadOnly)?, reports).await
    }
    async fn sync_alerts(
        &self,
        plan_id: &str,
        wanted: Vec<WantedAlert>,
        now_ms: i64,
    ) -> Result<AlertChanges, StoreError> {
        // Alert state is small and written rarely: its own IMMEDIATE transaction on a reader
        // connection, waiting on the writer through busy_timeout.
        let mut conn = self.readers.acquire().await?;
        conn.execute("BEGIN IMMEDIATE").await?;
        match super::alerts::sync(&mut conn, plan_id, &wanted, now_ms).await {
            Ok(changes) => {
                conn.execute("COMMIT").await?;
                Ok(changes)
            }
            Err(error) => {
                let _ = conn.execute("ROLLBACK").await;
                Err(error)
            }
        }
    }
    async fn is_notifier(&self) -> Result<bool, StoreError> {
        Ok(true)
    }
    async fn read_current_values(
        &self,
        plan_id: &str,
        indicator_id: Option<&str>,
    ) -> Result<Vec<crate::progress::input::ValueRow>, StoreError> {
        let (bulk, plan_id, indicator_id) = (
            self.bulk.clone(),
            plan_id.to_owned(),
            indicator_id.map(str::to_owned),
        );
        let read = tokio::task::spawn_blocking(move || {
            bulk.current_values(&plan_id, indicator_id.as_deref())
        });
        match read.await {
            Ok(values) => values,
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }
    async fn changed_after(
        &self,
        plan_id: &str,
        report_pk: i64,
    ) -> Result<(Vec<ValueRow>, Vec<TaskRow>), StoreError> {
        let mut conn = self.readers.acquire().await?;
        let sql = [queries::CHANGED_VALUES, queries::CHANGED_TASKS];
        queries::changed_after(&mut conn, sql, plan_id, report_pk).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        if self.writer.as_ref().is_some_and(|w| w.is_closed()) {
            return Err(StoreError::WriterGone);
        }
        queries::ping(&self.readers).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_file() {
        assert_eq!(
            path_of("sqlite://./duban-data/duban.db").unwrap(),
            PathBuf::from("./duban-data/duban.db")
        );
        assert_eq!(
            path_of("sqlite:///var/lib/duban/duban.db?mode=rwc").unwrap(),
            PathBuf::from("/var/lib/duban/duban.db")
        );
        assert!(path_of("sqlite::memory:").is_err());
        assert!(path_of("mysql://x").is_err());
    }

    /// Inserts a current value as any writer could have left it, `value` as SQL.
    fn insert_value(path: &Path, unit_id: &str, value: &str) {
        let db = rusqlite::Connection::open(path).unwrap();
        db.execute_batch(&format!(
            "PRAGMA foreign_keys = OFF; INSERT INTO current_values (plan_id, indicator_id, unit_id, period, value, note, revision, \
             issued_at_ms, seq, report_pk, updated_at_ms, first_received_at_ms) \
             VALUES ('p', 'i1', '{unit_id}', '2020', {value}, '', 1, 10, 1, 7, 20, 20)"
        ))
        .unwrap();
    }

    /// A plan read in two halves at once while a writer rewrites every row in each commit:
    /// each read sees every key once, all from one commit, never the halves of two.
    #[tokio::test]
    async fn a_whole_plan_read_in_two_halves_is_one_snapshot() {
        const ROWS: usize = 2_000;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("duban.db");
        let _store = SqliteStore::open(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute_batch("PRAGMA foreign_keys = OFF; BEGIN")
            .unwrap();
        // Stored out of the keys' order (7919 is prime to ROWS), so that each half's rows are
        // put in order and the halves among each other.
        for unit in (0..ROWS).map(|i| i * 7919 % ROWS) {
            db.execute(
                "INSERT INTO current_values (plan_id, indicator_id, unit_id, period, value, \
                 note, revision, issued_at_ms, seq, report_pk, updated_at_ms, \
                 first_received_at_ms) VALUES ('p', 'i1', ?1, '2020', 0, '', 1, 10, 1, 7, 20, 20)",
                [format!("u{unit:04}")],
            )
            .unwrap();
        }
        db.execute_batch("COMMIT").unwrap();
        let reader = BulkReader {
            split_from: 2,
            ..BulkReader::new(&path, true).unwrap()
        };
        assert!(reader.write_lock().is_some(), "the halves' lock can be had");

        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = std::thread::spawn({
            let stop = stop.clone();
            move || {
                db.execute_batch("PRAGMA synchronous = OFF").unwrap();
                db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    db.execute_batch(
                        "BEGIN IMMEDIATE; UPDATE current_values SET value = value + 1; COMMIT",
                    )
                    .unwrap();
                    // A writer's pace, not a wait for anything: back to back, its commits
                    // would leave the reads' lock (polled by SQLite's busy handler) no gap.
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        });
        // 300 reads in halves at least (the lock missed, a read is made on one connection),
        // and until they have seen 20 of the writer's commits, so that it committed while they
        // ran. (Begun apart, the halves held two commits within a few hundred reads.)
        let units: Vec<String> = (0..ROWS).map(|unit| format!("u{unit:04}")).collect();
        let mut seen = std::collections::BTreeSet::new();
        let connection = BulkReader::connect(&path).unwrap();
        let mut halves = 0;
        for _ in 0..100_000 {
            let (read, in_halves) = reader.whole_plan(&connection, "p").unwrap();
            halves += usize::from(in_halves);
            let values = read.in_snapshot_order();
            let read: Vec<&str> = values.iter().map(|v| v.unit_id.as_str()).collect();
            assert_eq!(read, units, "every key once, in order");
            let shared = |name: fn(&ValueRow) -> &str| {
                values
                    .iter()
                    .all(|v| std::ptr::eq(name(v), name(&values[0])))
            };
            assert!(shared(|v| &v.plan_id), "one plan name for both halves");
            assert!(
                shared(|v| &v.indicator_id),
                "one indicator name for both halves"
            );
            let commit = values[0].value;
            let other = values.iter().find(|v| v.value != commit);
            assert!(
                other.is_none(),
                "one read holds rows of two commits: {commit} and {:?}",
                other.map(|v| v.value)
            );
            seen.insert(commit as u64);
            if halves >= 300 && seen.len() >= 20 {
                break;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        assert!(seen.len() >= 20, "the writer's commits seen: {seen:?}");
        assert!(halves >= 300, "{halves} reads in halves");
        // The kept connection's transaction ended with the read: it sees a later commit.
        assert!(connection.is_autocommit());
    }

    #[tokio::test]
    async fn the_whole_read_sees_later_commits_and_names_a_corrupt_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("duban.db");
        let store = SqliteStore::open(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        assert!(
            store
                .read_current_values("p", None)
                .await
                .unwrap()
                .is_empty()
        );

        // The connection kept from the first read holds no snapshot: a later commit is read.
        insert_value(&path, "u2", "2.5");
        insert_value(&path, "u1", "1");
        let values = store.read_current_values("p", None).await.unwrap();
        let read: Vec<_> = values
            .iter()
            .map(|v| (v.unit_id.as_str(), v.value))
            .collect();
        assert_eq!(read, [("u1", 1.0), ("u2", 2.5)]);
        assert_eq!(
            values[0].first_issued_at_ms, 10,
            "COALESCEd from issued_at_ms"
        );
        assert!(
            store
                .read_current_values("q", None)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store
                .read_current_values("p", Some("i2"))
                .await
                .unwrap()
                .len(),
            0
        );

        insert_value(&path, "u3", "'many'");
        match store.read_current_values("p", Some("i1")).await {
            Err(StoreError::Corrupt { table, detail }) => {
                assert_eq!(table, "current_values");
                assert!(detail.contains("value"), "{detail}");
            }
            other => panic!("expected a corrupt row, got {other:?}"),
        }

        // A name that is not text (a blob), read where names are shared.
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute_batch(
            "DELETE FROM current_values WHERE unit_id = 'u3'; \
             UPDATE current_values SET unit_id = X'7531' WHERE unit_id = 'u1'",
        )
        .unwrap();
        match store.read_current_values("p", None).await {
            Err(StoreError::Corrupt { table, detail }) => {
                assert_eq!(table, "current_values");
                assert!(detail.contains("unit_id"), "{detail}");
            }
            other => panic!("expected a corrupt row, got {other:?}"),
        }
    }
}

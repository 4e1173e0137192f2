//! `duban-aggregator archive`: one plan's whole record exported into a SQLite file of this
//! program's schema, verified, and only then (with `--delete`, for a closed plan) removed from
//! the database.
//!
//! - The archive is a new file (never an existing one) with the schema of the migrations, so
//!   every tool that reads a duban database reads it (`reports list`, `export`, `serve`).
//! - It holds the plan's rows of every table that records the plan (reports with their
//!   original bytes and signatures, value and task history, current values and tasks, the
//!   audit trail, alerts, statements) and every registered key, without which the signatures
//!   could not be checked again.
//! - The database is read in one snapshot; the file is written in one transaction, synced,
//!   closed, opened again and checked (`PRAGMA integrity_check`), and each table's row count
//!   and content hash read from it must equal the snapshot's.
//! - `--delete` then removes the plan's rows in one transaction that first reads them again
//!   under a lock against writers: if anything changed since the export, nothing is deleted.

use std::io::Write;
use std::path::Path;
use std::str::FromStr;

use sqlx::postgres::PgConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
// The SQL built here names only this program's tables and the columns SQLite lists for them,
// and a plan id checked to be letters, digits, '-', '_' and '.': no outside text reaches it.
use sqlx::{AssertSqlSafe, Connection, Row, SqliteConnection};
use tokio_stream::{Stream, StreamExt};

use super::copy::{self, Column, Kind, RowsHash, TableCopy};
use super::{StoreError, redact};

/// The tables that record a plan (each has `plan_id`), parents before children.
pub const PLAN_TABLES: [&str; 8] = [
    "reports",
    "value_history",
    "current_values",
    "task_history",
    "current_tasks",
    "audit",
    "alerts",
    "statements",
];

/// Copied whole: the public keys that verify the archived reports' signatures.
const KEYS: &str = "keys";

/// What was archived, and how many rows were deleted afterwards (with `--delete`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archived {
    pub tables: Vec<TableCopy>,
    pub deleted: Option<u64>,
}

fn archive_error(message: String) -> StoreError {
    StoreError::Schema(message)
}

enum Source {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

impl Source {
    async fn connect(url: &str, read_only: bool) -> Result<Source, StoreError> {
        // The schema must be this program's; it is read here, never migrated.
        match super::AnyStore::open_read_only(url).await? {
            super::AnyStore::Sqlite(store) => {
                let path = store.path().to_owned();
                drop(store);
                let options =
                    SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
                        .read_only(read_only)
                        .busy_timeout(std::time::Duration::from_secs(30));
                let mut conn = SqliteConnection::connect_with(&options).await?;
                super::sqlite::check_integrity(&mut conn, &path).await?;
                Ok(Source::Sqlite(conn))
            }
            super::AnyStore::Postgres(store) => {
                drop(store);
                let conn = PgConnection::connect(url)
                    .await
                    .map_err(|e| StoreError::Connect {
                        url: redact(url),
                        message: e.to_string(),
                    })?;
                Ok(Source::Postgres(conn))
            }
        }
    }

    async fn execute(&mut self, sql: &'static str) -> Result<(), StoreError> {
        match self {
            Source::Sqlite(c) => sqlx::raw_sql(sql).execute(c).await.map(drop),
            Source::Postgres(c) => sqlx::raw_sql(sql).execute(c).await.map(drop),
        }?;
        Ok(())
    }

    /// The content hash of `select`'s rows, each also written into `archive` when given.
    async fn rows(
        &mut self,
        select: String,
        columns: &[Column],
        archive: Option<(&mut SqliteConnection, &str)>,
    ) -> Result<RowsHash, StoreError> {
        match self {
            Source::Sqlite(c) => {
                drain(
                    sqlx::query(AssertSqlSafe(select)).fetch(c),
                    columns,
                    archive,
                )
                .await
            }
            Source::Postgres(c) => {
                drain(
                    sqlx::query(AssertSqlSafe(select)).fetch(c),
                    columns,
                    archive,
                )
                .await
            }
        }
    }
}

/// Hashes a stream of rows, writing them in batches into `archive` when given.
async fn drain<R, S>(
    mut rows: S,
    columns: &[Column],
    mut archive: Option<(&mut SqliteConnection, &str)>,
) -> Result<RowsHash, StoreError>
where
    S: Stream<Item = Result<R, sqlx::Error>> + Unpin,
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<f64>: sqlx::Decode<'r, R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<Vec<u8>>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let mut hash = RowsHash::default();
    let mut batch = Vec::with_capacity(copy::BATCH_ROWS);
    while let Some(row) = rows.next().await {
        let values = copy::values(&row?, columns)?;
        hash.add(&values);
        if archive.is_some() {
            batch.push(values);
        }
        if batch.len() == copy::BATCH_ROWS
            && let Some((conn, table)) = archive.as_mut()
        {
            write(conn, table, columns, &batch).await?;
            batch.clear();
        }
    }
    if let Some((conn, table)) = archive.as_mut()
        && !batch.is_empty()
    {
        write(conn, table, columns, &batch).await?;
    }
    Ok(hash)
}

async fn write(
    conn: &mut SqliteConnection,
    table: &str,
    columns: &[Column],
    rows: &[Vec<copy::Value>],
) -> Result<(), StoreError> {
    copy::insert_query::<sqlx::Sqlite>(table, "", columns, rows)
        .build()
        .execute(conn)
        .await?;
    Ok(())
}

/// The archive's columns of `table` (this program's SQLite schema), in order.
async fn columns(archive: &mut SqliteConnection, table: &str) -> Result<Vec<Column>, StoreError> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT name, type FROM pragma_table_info(?) ORDER BY cid")
            .bind(table)
            .fetch_all(&mut *archive)
            .await?;
    copy::typed_columns(
        table,
        "the archive",
        rows,
        "archive",
        |declared| match declared.to_ascii_uppercase().as_str() {
            "INTEGER" => Some(Kind::Int),
            "REAL" => Some(Kind::Float),
            "TEXT" => Some(Kind::Text),
            "BLOB" => Some(Kind::Bytes),
            _ => None,
        },
    )
}

fn select(table: &str, columns: &[Column], plan_id: &str) -> String {
    let all = copy::select(table, columns);
    if table == KEYS {
        all
    } else {
        format!("{all} WHERE plan_id = '{plan_id}'")
    }
}

/// Archives plan `plan_id` of `database_url` into the new SQLite file `out`; with `delete`,
/// then removes the plan's rows from the database. The caller decides whether the plan is
/// closed. Prints a line per table on `progress`.
pub async fn archive_plan(
    database_url: &str,
    plan_id: &str,
    out: &Path,
    delete: bool,
    progress: &mut dyn Write,
) -> Result<Archived, StoreError> {
    let mut archived = export_plan(database_url, plan_id, out, progress).await?;
    if delete {
        archived.deleted =
            Some(delete_archived(database_url, plan_id, out, &archived, progress).await?);
    }
    Ok(archived)
}

/// Writes plan `plan_id` of `database_url` into the new SQLite file `out` and verifies it
/// there; on any failure the file is removed. Deletes nothing.
pub async fn export_plan(
    database_url: &str,
    plan_id: &str,
    out: &Path,
    progress: &mut dyn Write,
) -> Result<Archived, StoreError> {
    check_plan_id(plan_id)?;
    if out.exists() {
        return Err(archive_error(format!(
            "{} exists: archive writes a new file only, and nothing was written",
            out.display()
        )));
    }
    let mut source = Source::connect(database_url, true).await?;
    match export(&mut source, plan_id, out, progress).await {
        Ok(tables) => Ok(Archived {
            tables,
            deleted: None,
        }),
        Err(error) => {
            // A half-written archive must not be mistaken for one: remove it.
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", out.display()));
            }
            Err(error)
        }
    }
}

/// Deletes plan `plan_id`'s rows from `database_url`, in one transaction, after reading them
/// again under a lock against writers and finding them equal to what `archived` (the result
/// of [`export_plan`] into `out`) holds; otherwise deletes nothing. Returns the rows deleted.
pub async fn delete_archived(
    database_url: &str,
    plan_id: &str,
    out: &Path,
    archived: &Archived,
    progress: &mut dyn Write,
) -> Result<u64, StoreError> {
    check_plan_id(plan_id)?;
    let mut source = Source::connect(database_url, false).await?;
    delete_plan(&mut source, plan_id, out, &archived.tables, progress).await
}

fn check_plan_id(plan_id: &str) -> Result<(), StoreError> {
    if plan_id.is_empty()
        || !plan_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(archive_error(format!(
            "plan id {plan_id:?}: archive takes ids of letters, digits, '-', '_' and '.'"
        )));
    }
    Ok(())
}

async fn export(
    source: &mut Source,
    plan_id: &str,
    out: &Path,
    progress: &mut dyn Write,
) -> Result<Vec<TableCopy>, StoreError> {
    // The archive: a new file with the schema (one file: no write-ahead log beside it),
    // written in one transaction.
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", out.display()))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Delete)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Full);
    let mut archive = SqliteConnection::connect_with(&options).await?;
    sqlx::migrate!("migrations/sqlite")
        .run(&mut archive)
        .await?;

    match source {
        Source::Sqlite(_) => source.execute("BEGIN").await?,
        Source::Postgres(_) => {
            source
                .execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await?
        }
    }
    let mut tx = archive.begin().await?;
    let mut sent = Vec::new();
    for table in [KEYS].iter().chain(PLAN_TABLES.iter()) {
        let columns = columns(&mut tx, table).await?;
        let hash = source
            .rows(
                select(table, &columns, plan_id),
                &columns,
                Some((&mut tx, table)),
            )
            .await?;
        sent.push((*table, columns, hash));
    }
    tx.commit().await?;
    source.execute("COMMIT").await?;
    archive.close().await?;

    // Verified from the file as it is on disk, through a new connection.
    let options =
        SqliteConnectOptions::from_str(&format!("sqlite://{}", out.display()))?.read_only(true);
    let mut reread = SqliteConnection::connect_with(&options).await?;
    super::sqlite::check_integrity(&mut reread, out).await?;
    let mut tables = Vec::new();
    for (table, columns, hash) in sent {
        let rows = sqlx::query(AssertSqlSafe(copy::select(table, &columns))).fetch(&mut reread);
        let stored = drain(rows, &columns, None).await?;
        if stored != hash {
            return Err(archive_error(format!(
                "{table}: the archive differs from the database ({} rows, hash {} read; {} rows, hash {} in the file); the file was removed",
                hash.rows,
                hash.hex(),
                stored.rows,
                stored.hex()
            )));
        }
        let _ = writeln!(
            progress,
            "{table}: {} rows archived and verified",
            hash.rows
        );
        tables.push(TableCopy {
            table,
            rows: hash.rows,
            hash: hash.hex(),
        });
    }
    reread.close().await?;
    Ok(tables)
}

async fn delete_plan(
    source: &mut Source,
    plan_id: &str,
    out: &Path,
    archived: &[TableCopy],
    progress: &mut dyn Write,
) -> Result<u64, StoreError> {
    // Writers wait while the rows are read again and deleted.
    match source {
        Source::Sqlite(_) => source.execute("BEGIN IMMEDIATE").await?,
        Source::Postgres(_) => {
            source
                .execute(
                    "BEGIN; LOCK TABLE reports, value_history, current_values, task_history, \
                     current_tasks, audit, alerts, statements IN EXCLUSIVE MODE",
                )
                .await?
        }
    }
    let mut archive = SqliteConnection::connect_with(
        &SqliteConnectOptions::from_str(&format!("sqlite://{}", out.display()))?.read_only(true),
    )
    .await?;
    let mut deleted = 0;
    for table in PLAN_TABLES {
        let columns = columns(&mut archive, table).await?;
        let now = source
            .rows(select(table, &columns, plan_id), &columns, None)
            .await?;
        let then = archived
            .iter()
            .find(|t| t.table == table)
            .expect("every plan table was archived");
        if now.hex() != then.hash || now.rows != then.rows {
            source.execute("ROLLBACK").await?;
            return Err(archive_error(format!(
                "{table}: the plan's rows changed after the export ({} rows then, {} now); nothing was deleted. The archive {} is complete for what it holds; archive again into a new file",
                then.rows,
                now.rows,
                out.display()
            )));
        }
        deleted += now.rows;
    }
    for table in PLAN_TABLES.iter().rev() {
        let sql = format!("DELETE FROM {table} WHERE plan_id = '{plan_id}'");
        match source {
            Source::Sqlite(c) => sqlx::query(AssertSqlSafe(sql)).execute(c).await.map(drop),
            Source::Postgres(c) => sqlx::query(AssertSqlSafe(sql)).execute(c).await.map(drop),
        }?;
    }
    source.execute("COMMIT").await?;
    let _ = writeln!(
        progress,
        "deleted {deleted} rows of plan {plan_id}, each of them in {}",
        out.display()
    );
    Ok(deleted)
}

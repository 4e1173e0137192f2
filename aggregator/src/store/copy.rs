//! `duban-aggregator migrate --from sqlite://… --to postgres://…`: every table of a SQLite
//! database copied into an empty PostgreSQL database in one consistent pass, then verified.
//!
//! - The source is read inside one read transaction, so a running aggregator may keep writing
//!   to it: what is copied is the database as it was at one instant.
//! - The target gets the schema first (the migrations), then must be empty: a table with a row
//!   in it stops the command before anything is written.
//! - Every row goes across as it is: reports with their original bytes and signatures,
//!   history, current values, the audit trail, keys with their seq counters (so agents carry on
//!   where they were), alert state, statements, presence, settings and the admin log. Identity
//!   columns keep their numbers, and their sequences continue after the highest.
//! - All of it is written in one PostgreSQL transaction and committed only after each table's
//!   row count and content hash, read back from the target, equal the source's; otherwise
//!   nothing is committed and the target stays empty.

use std::io::Write;
use std::path::Path;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnectOptions;
// The SQL built here names only the tables of [`TABLES`] and the columns PostgreSQL lists for
// them in information_schema (this program's own schema): no outside text reaches it.
use sqlx::{AssertSqlSafe, Connection, QueryBuilder, Row, SqliteConnection};
use tokio_stream::StreamExt;

use super::{StoreError, redact};

/// The tables, parents before children (reports before the history that refers to them).
pub const TABLES: [&str; 14] = [
    "keys",
    "reports",
    "value_history",
    "current_values",
    "task_history",
    "current_tasks",
    "audit",
    "security_events",
    "alerts",
    "agents",
    "centre_uptime",
    "settings",
    "statements",
    "admin_actions",
];

/// Rows per INSERT (under PostgreSQL's 65,535 binds for the widest table).
pub(super) const BATCH_ROWS: usize = 1_000;

/// What was copied, table by table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub tables: Vec<TableCopy>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCopy {
    pub table: &'static str,
    pub rows: u64,
    /// The content hash both sides agreed on (hex): SHA-256 of each row, added up, so that
    /// row order does not matter.
    pub hash: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Int,
    Float,
    Text,
    Bytes,
}

#[derive(Debug, Clone)]
pub(super) struct Column {
    pub(super) name: String,
    pub(super) kind: Kind,
}

/// One value as both databases hold it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
}

impl Value {
    fn hash_into(&self, hasher: &mut Sha256) {
        match self {
            Value::Null => hasher.update([0]),
            Value::Int(v) => {
                hasher.update([1]);
                hasher.update(v.to_le_bytes());
            }
            Value::Float(v) => {
                hasher.update([2]);
                hasher.update(v.to_bits().to_le_bytes());
            }
            Value::Text(v) => {
                hasher.update([3]);
                hasher.update((v.len() as u64).to_le_bytes());
                hasher.update(v.as_bytes());
            }
            Value::Bytes(v) => {
                hasher.update([4]);
                hasher.update((v.len() as u64).to_le_bytes());
                hasher.update(v);
            }
        }
    }
}

/// The sum of the rows' SHA-256 digests (as four 64-bit lanes, wrapping): the same for the
/// same rows in any order.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct RowsHash {
    pub(super) rows: u64,
    lanes: [u64; 4],
}

impl RowsHash {
    pub(super) fn add(&mut self, row: &[Value]) {
        let mut hasher = Sha256::new();
        for value in row {
            value.hash_into(&mut hasher);
        }
        let digest = hasher.finalize();
        for (lane, chunk) in self.lanes.iter_mut().zip(digest.chunks_exact(8)) {
            *lane = lane.wrapping_add(u64::from_le_bytes(chunk.try_into().unwrap()));
        }
        self.rows += 1;
    }

    pub(super) fn hex(&self) -> String {
        self.lanes.iter().map(|l| format!("{l:016x}")).collect()
    }
}

fn copy_error(message: String) -> StoreError {
    StoreError::Schema(message)
}

/// Copies `from` (sqlite://PATH) into `to` (postgres://…), which must be empty; prints a line
/// per table on `progress`.
pub async fn sqlite_to_postgres(
    from: &str,
    to: &str,
    progress: &mut dyn Write,
) -> Result<Copied, StoreError> {
    if !from.starts_with("sqlite:")
        || !(to.starts_with("postgres:") || to.starts_with("postgresql:"))
    {
        return Err(copy_error(format!(
            "migrate --from must be a sqlite:// URL and --to a postgres:// URL (got {} and {})",
            redact(from),
            redact(to)
        )));
    }
    // The source: its schema must be this program's (it is read, never migrated here).
    let source_store = super::SqliteStore::open_read_only(from).await?;
    let path = source_store.path().to_owned();
    drop(source_store);
    // The target: created or brought up to date, then it must be empty.
    drop(super::PgStore::open(to).await?);

    let mut source = open_source(&path).await?;
    let mut target = PgConnection::connect(to)
        .await
        .map_err(|e| StoreError::Connect {
            url: redact(to),
            message: e.to_string(),
        })?;
    // A table of a newer schema that this list does not name would be left behind: refuse.
    let mut present: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' \
           AND table_name <> '_sqlx_migrations'",
    )
    .fetch_all(&mut target)
    .await?;
    present.sort();
    let mut known: Vec<String> = TABLES.iter().map(|t| t.to_string()).collect();
    known.sort();
    if present != known {
        return Err(copy_error(format!(
            "the target's tables ({}) are not the ones migrate copies ({})",
            present.join(", "),
            known.join(", ")
        )));
    }
    let mut not_empty = Vec::new();
    for table in TABLES {
        let rows: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&mut target)
            .await?;
        if rows > 0 {
            not_empty.push(format!("{table} ({rows} rows)"));
        }
    }
    if !not_empty.is_empty() {
        return Err(copy_error(format!(
            "{} is not empty: {}; migrate copies only into an empty database, and nothing was written",
            redact(to),
            not_empty.join(", ")
        )));
    }

    // One snapshot of the source; one transaction on the target.
    sqlx::query("BEGIN").execute(&mut source).await?;
    let mut tx = target.begin().await?;
    let mut copied = Copied { tables: Vec::new() };
    for table in TABLES {
        let columns = columns(&mut tx, table).await?;
        let sent = copy_table(&mut source, &mut tx, table, &columns).await?;
        let stored = read_back(&mut tx, table, &columns).await?;
        if stored != sent {
            return Err(copy_error(format!(
                "{table}: the copy differs from the source ({} rows, hash {} read; {} rows, hash {} written); nothing was committed",
                sent.rows,
                sent.hex(),
                stored.rows,
                stored.hex()
            )));
        }
        let _ = writeln!(progress, "{table}: {} rows copied and verified", sent.rows);
        copied.tables.push(TableCopy {
            table,
            rows: sent.rows,
            hash: sent.hex(),
        });
    }
    continue_sequences(&mut tx).await?;
    tx.commit().await?;
    sqlx::query("COMMIT").execute(&mut source).await?;
    Ok(copied)
}

async fn open_source(path: &Path) -> Result<SqliteConnection, StoreError> {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
        .read_only(true)
        .busy_timeout(std::time::Duration::from_secs(10));
    let mut conn = SqliteConnection::connect_with(&options).await?;
    super::sqlite::check_integrity(&mut conn, path).await?;
    Ok(conn)
}

/// The target's columns of `table`, in order, with the kind each holds.
async fn columns(target: &mut PgConnection, table: &str) -> Result<Vec<Column>, StoreError> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(&mut *target)
    .await?;
    typed_columns(
        table,
        "the target",
        rows,
        "migrate",
        |data_type| match data_type {
            "bigint" | "integer" | "smallint" => Some(Kind::Int),
            "double precision" | "real" => Some(Kind::Float),
            "text" | "character varying" => Some(Kind::Text),
            "bytea" => Some(Kind::Bytes),
            _ => None,
        },
    )
}

/// `(name, type)` rows of `table` in `database` as columns, each of the kind `kind_of` gives
/// its type; a table without columns, or a type `command` does not copy, is an error.
pub(super) fn typed_columns(
    table: &str,
    database: &str,
    rows: Vec<(String, String)>,
    command: &str,
    kind_of: impl Fn(&str) -> Option<Kind>,
) -> Result<Vec<Column>, StoreError> {
    if rows.is_empty() {
        return Err(copy_error(format!("{database} has no table {table}")));
    }
    rows.into_iter()
        .map(|(name, data_type)| match kind_of(&data_type) {
            Some(kind) => Ok(Column { name, kind }),
            None => Err(copy_error(format!(
                "{table}.{name}: column type {data_type} is not one {command} copies"
            ))),
        })
        .collect()
}

pub(super) fn select(table: &str, columns: &[Column]) -> String {
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    format!("SELECT {} FROM {table}", names.join(", "))
}

/// One row's values, read by the kind of each column (from either database). Floats are read
/// unchecked: SQLite keeps a REAL that happens to be whole as it was written.
pub(super) fn values<R: Row>(row: &R, columns: &[Column]) -> Result<Vec<Value>, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<f64>: sqlx::Decode<'r, R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<Vec<u8>>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    columns
        .iter()
        .enumerate()
        .map(|(i, column)| {
            Ok(match column.kind {
                Kind::Int => row.try_get::<Option<i64>, _>(i)?.map(Value::Int),
                Kind::Float => row
                    .try_get_unchecked::<Option<f64>, _>(i)?
                    .map(Value::Float),
                Kind::Text => row.try_get::<Option<String>, _>(i)?.map(Value::Text),
                Kind::Bytes => row.try_get::<Option<Vec<u8>>, _>(i)?.map(Value::Bytes),
            }
            .unwrap_or(Value::Null))
        })
        .collect()
}

async fn copy_table(
    source: &mut SqliteConnection,
    target: &mut PgConnection,
    table: &str,
    columns: &[Column],
) -> Result<RowsHash, StoreError> {
    let mut hash = RowsHash::default();
    let mut batch: Vec<Vec<Value>> = Vec::with_capacity(BATCH_ROWS);
    let query = select(table, columns);
    let mut rows = sqlx::query(AssertSqlSafe(query)).fetch(&mut *source);
    while let Some(row) = rows.next().await {
        let values = values(&row?, columns)?;
        hash.add(&values);
        batch.push(values);
        if batch.len() == BATCH_ROWS {
            insert(target, table, columns, &batch).await?;
            batch.clear();
        }
    }
    drop(rows);
    if !batch.is_empty() {
        insert(target, table, columns, &batch).await?;
    }
    Ok(hash)
}

async fn insert(
    target: &mut PgConnection,
    table: &str,
    columns: &[Column],
    rows: &[Vec<Value>],
) -> Result<(), StoreError> {
    insert_query::<sqlx::Postgres>(table, "OVERRIDING SYSTEM VALUE", columns, rows)
        .build()
        .execute(&mut *target)
        .await?;
    Ok(())
}

/// `INSERT INTO table (columns) <extra> VALUES (…), (…)` with every value of `rows` bound,
/// NULLs typed by their column.
pub(super) fn insert_query<DB: sqlx::Database>(
    table: &str,
    extra: &str,
    columns: &[Column],
    rows: &[Vec<Value>],
) -> QueryBuilder<DB>
where
    for<'t> i64: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> f64: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> Vec<u8>: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> Option<i64>: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> Option<f64>: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> Option<String>: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> Option<Vec<u8>>: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    let mut query = QueryBuilder::new(format!(
        "INSERT INTO {table} ({}) {extra} ",
        names.join(", ")
    ));
    query.push_values(rows, |mut b, row| {
        for (value, column) in row.iter().zip(columns) {
            match (value, column.kind) {
                (Value::Null, Kind::Int) => b.push_bind(None::<i64>),
                (Value::Null, Kind::Float) => b.push_bind(None::<f64>),
                (Value::Null, Kind::Text) => b.push_bind(None::<String>),
                (Value::Null, Kind::Bytes) => b.push_bind(None::<Vec<u8>>),
                (Value::Int(v), _) => b.push_bind(*v),
                (Value::Float(v), _) => b.push_bind(*v),
                (Value::Text(v), _) => b.push_bind(v.clone()),
                (Value::Bytes(v), _) => b.push_bind(v.clone()),
            };
        }
    });
    query
}

async fn read_back(
    target: &mut PgConnection,
    table: &str,
    columns: &[Column],
) -> Result<RowsHash, StoreError> {
    let mut hash = RowsHash::default();
    let query = select(table, columns);
    let mut rows = sqlx::query(AssertSqlSafe(query)).fetch(&mut *target);
    while let Some(row) = rows.next().await {
        hash.add(&values(&row?, columns)?);
    }
    Ok(hash)
}

/// Identity and serial columns continue after the highest number copied.
async fn continue_sequences(target: &mut PgConnection) -> Result<(), StoreError> {
    let generated: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns \
         WHERE table_schema = current_schema() \
           AND (is_identity = 'YES' OR column_default LIKE 'nextval(%')",
    )
    .fetch_all(&mut *target)
    .await?;
    for (table, column) in generated {
        if !TABLES.contains(&table.as_str()) {
            continue;
        }
        sqlx::query(AssertSqlSafe(format!(
            "SELECT setval(pg_get_serial_sequence('{table}', '{column}'), \
             COALESCE((SELECT max({column}) FROM {table}), 0) + 1, false)"
        )))
        .execute(&mut *target)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rows_hash_ignores_order_and_sees_every_value() {
        let a = [Value::Int(1), Value::Text("青岛".into())];
        let b = [Value::Null, Value::Bytes(vec![0, 1])];
        let (mut one, mut two) = (RowsHash::default(), RowsHash::default());
        one.add(&a);
        one.add(&b);
        two.add(&b);
        two.add(&a);
        assert_eq!(one, two);
        let mut three = RowsHash::default();
        three.add(&a);
        three.add(&[Value::Null, Value::Bytes(vec![0, 2])]);
        assert_ne!(one, three);
        // A text and the same bytes are different values; so are 1 and 1.0.
        let (mut text, mut bytes) = (RowsHash::default(), RowsHash::default());
        text.add(&[Value::Text("a".into())]);
        bytes.add(&[Value::Bytes(b"a".to_vec())]);
        assert_ne!(text, bytes);
        let (mut int, mut float) = (RowsHash::default(), RowsHash::default());
        int.add(&[Value::Int(1)]);
        float.add(&[Value::Float(1.0)]);
        assert_ne!(int, float);
    }
}

//! Opening the file: the pool, the integrity checks, and what is carried over from a file
//! that had to be moved aside.

use super::*;

/// Holds `<path>.lock` locked (an advisory lock, released when the file is dropped) while
/// the outbox is opened: created, migrated, checked, or moved aside. Two processes opening a
/// new outbox at once (the daemon starting while an operator runs `outbox stats`) each saw
/// the other's half-made file, took it for a corrupt one and moved it aside (found by the
/// fault harness's sigterm scenario).
pub(super) async fn lock(path: &Path) -> Result<std::fs::File, OutboxError> {
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    let shown = lock_path.clone();
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        file.lock()?;
        Ok(file)
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
    .map_err(|e: std::io::Error| OutboxError::Lock {
        path: shown,
        message: e.to_string(),
    })
}

pub(super) async fn open_pool(path: &Path) -> Result<SqlitePool, OutboxError> {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(2)
        .after_release(|conn, _| Box::pin(release_unless_in_transaction(conn)))
        .connect_with(options)
        .await?;
    sqlx::migrate!().run(&pool).await?;
    // Read something from every table: a damaged file often opens, then fails here.
    sqlx::query("SELECT (SELECT count(*) FROM outbox) + (SELECT count(*) FROM dead_letters) + (SELECT count(*) FROM pending_items) + (SELECT count(*) FROM refusals) + (SELECT count(*) FROM refused_items) + (SELECT value FROM meta WHERE key = 'next_seq') + (SELECT value FROM meta WHERE key = 'synced')").fetch_one(&pool).await?;
    let check: String = sqlx::query_scalar("PRAGMA quick_check")
        .fetch_one(&pool)
        .await?;
    if check != "ok" {
        return Err(OutboxError::Database(sqlx::Error::Protocol(format!(
            "integrity check failed: {check}"
        ))));
    }
    Ok(pool)
}

/// Keeps a connection in the pool only if it is out of every transaction. A COMMIT that fails
/// because the disk is full (or on an I/O error) ends the transaction inside SQLite, but sqlx
/// still counts it open: its rollback then fails too, and every later `BEGIN` on that
/// connection was refused ("attempted to call begin_with at non-zero transaction depth"), so
/// an agent whose disk had been full never collected or delivered again (found by the fault
/// harness's agent-disk-full scenario). Such a connection is closed; the pool opens another.
async fn release_unless_in_transaction(conn: &mut SqliteConnection) -> Result<bool, sqlx::Error> {
    // The rollback a dropped transaction asked for runs before the ping answers.
    conn.ping().await?;
    if conn.is_in_transaction() {
        tracing::warn!("an outbox connection was left inside a failed transaction; closing it");
        return Ok(false);
    }
    Ok(true)
}

/// Reads what it can from a moved-aside outbox into the fresh one: the seq counter, the
/// revisions per period, the waiting reports and dead letters (envelopes byte for byte, under
/// their own seqs). Each part is tried on its own; what cannot be read is skipped.
pub(super) async fn salvage(old: &Path, fresh: &SqlitePool) -> Salvaged {
    let mut salvaged = Salvaged::default();
    let Ok(options) = SqliteConnectOptions::from_str(&format!("sqlite://{}", old.display()))
        .map(|o| o.read_only(true))
    else {
        return salvaged;
    };
    let Ok(mut conn) = SqliteConnection::connect_with(&options).await else {
        return salvaged;
    };
    // An outbox from before `synced` existed had a meaningful counter; one that was itself new
    // and never heard from the centre knew nothing.
    let old_synced: Option<i64> = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'synced'")
        .fetch_optional(&mut conn)
        .await
        .ok()
        .flatten();
    let next_seq: Option<i64> = sqlx::query_scalar(
        "SELECT MAX(n) FROM (SELECT value AS n FROM meta WHERE key = 'next_seq' \
         UNION ALL SELECT MAX(seq) + 1 FROM outbox UNION ALL SELECT MAX(seq) + 1 FROM dead_letters)",
    )
    .fetch_one(&mut conn)
    .await
    .ok()
    .flatten()
    .filter(|_| old_synced != Some(0));
    if let Some(next) = next_seq
        && sqlx::query("UPDATE meta SET value = MAX(value, $1) WHERE key = 'next_seq'")
            .bind(next)
            .execute(fresh)
            .await
            .is_ok()
    {
        salvaged.next_seq = Some(next);
    }
    if let Ok(rows) = sqlx::query("SELECT period, next_revision FROM period_revision")
        .fetch_all(&mut conn)
        .await
    {
        for row in rows {
            let (Ok(period), Ok(next)) = (row.try_get::<String, _>(0), row.try_get::<i64, _>(1))
            else {
                continue;
            };
            if sqlx::query("INSERT INTO period_revision (period, next_revision) VALUES ($1, $2) ON CONFLICT (period) DO UPDATE SET next_revision = MAX(next_revision, excluded.next_revision)")
                .bind(period)
                .bind(next)
                .execute(fresh)
                .await
                .is_ok()
            {
                salvaged.revisions += 1;
            }
        }
    }
    for (table, counter) in [("outbox", 0), ("dead_letters", 1)] {
        let columns = if table == "outbox" {
            "seq, report_id, period, envelope, bytes, created_at_ms"
        } else {
            "seq, report_id, period, envelope, bytes, created_at_ms, failed_at_ms, reason, message"
        };
        let Ok(rows) = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {columns} FROM {table}"
        )))
        .fetch_all(&mut conn)
        .await
        else {
            continue;
        };
        let placeholders = (1..=columns.split(',').count())
            .map(|n| format!("${n}"))
            .collect::<Vec<_>>()
            .join(", ");
        for row in rows {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT OR IGNORE INTO {table} ({columns}) VALUES ({placeholders})"
            )));
            let (Ok(seq), Ok(report_id), Ok(period), Ok(envelope), Ok(bytes), Ok(created)) = (
                row.try_get::<i64, _>(0),
                row.try_get::<Vec<u8>, _>(1),
                row.try_get::<String, _>(2),
                row.try_get::<Vec<u8>, _>(3),
                row.try_get::<i64, _>(4),
                row.try_get::<i64, _>(5),
            ) else {
                continue;
            };
            query = query
                .bind(seq)
                .bind(report_id)
                .bind(period)
                .bind(envelope)
                .bind(bytes)
                .bind(created);
            if table == "dead_letters" {
                let (Ok(failed), Ok(reason), Ok(message)) = (
                    row.try_get::<i64, _>(6),
                    row.try_get::<String, _>(7),
                    row.try_get::<String, _>(8),
                ) else {
                    continue;
                };
                query = query.bind(failed).bind(reason).bind(message);
            }
            if query.execute(fresh).await.is_ok() {
                if counter == 0 {
                    salvaged.reports += 1;
                } else {
                    salvaged.dead_letters += 1;
                }
            }
        }
    }
    // Provisional reports carried over keep their place before any built from now on.
    let _ = sqlx::query("UPDATE meta SET value = MAX(value, (SELECT COALESCE(-MIN(seq), 0) + 1 FROM outbox)) WHERE key = 'next_draft'")
        .execute(fresh)
        .await;
    if salvaged.next_seq.is_some() {
        // The counter continues the old one: nothing the old outbox signed is reused.
        let _ = sqlx::query("UPDATE meta SET value = 1 WHERE key = 'synced'")
            .execute(fresh)
            .await;
    }
    let _ = conn.close().await;
    salvaged
}

/// `(waiting reports, dead letters)` of the outbox at `path`, read without changing or
/// creating anything; zeros when it cannot be read.
pub async fn peek_counts(path: &Path) -> (u64, u64) {
    let read = async {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .read_only(true);
        let mut conn = SqliteConnection::connect_with(&options).await?;
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM outbox), (SELECT count(*) FROM dead_letters)",
        )
        .fetch_one(&mut conn)
        .await?;
        let counts: (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        let _ = conn.close().await;
        Ok::<_, sqlx::Error>(counts)
    };
    if !path.is_file() {
        return (0, 0);
    }
    match read.await {
        Ok((reports, dead)) => (reports.max(0) as u64, dead.max(0) as u64),
        Err(_) => (0, 0),
    }
}

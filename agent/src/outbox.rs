//! The durable outbox (SQLite, WAL, `synchronous=FULL`).
//!
//! Invariants:
//! - A report is signed inside the transaction that allocates its `seq` and stores it, so a
//!   committed row is exactly what will be sent, byte for byte, however often.
//! - `seq` comes from the `meta` row and only grows, across restarts and crashes: a crash
//!   before commit loses the allocation and the report together. A seq is never reused, even
//!   when the outbox file is lost: a new outbox carries the counters over from the file it
//!   replaces where that can be read; otherwise it is not `synced`, and the reports it builds
//!   are provisional (negative seqs, never sent) until it has learnt from the centre the highest
//!   seq stored under its key and the highest revision per period
//!   ([`Outbox::apply_centre_state`]), which gives them their real seqs, in the order they
//!   were built, and signs them for good. A provisional report has never left the agent, so
//!   re-signing it breaks no promise of byte-identical resends.
//! - Rows leave only by [`Outbox::ack`] (the aggregator stored or already had them), by
//!   [`Outbox::dead_letter`] (a permanent refusal: kept and shown), by [`Outbox::rebuild`] (the
//!   same items re-signed under a new seq, when the old one was taken or the identity changed),
//!   or by the `drop_oldest` policy when configured (counted).
//! - Change detection compares an item with what waits in the outbox for it, else with what
//!   the centre last accepted: an item whose report never arrived (held, then re-signed; or
//!   dead-lettered) is not taken for sent. An item the centre refused is not built again while
//!   it is unchanged (it would be refused again); once it changes at the source, or the
//!   refusals are discarded or retried, it is.
//! - Every transaction that writes begins IMMEDIATE: it waits for the write lock up front
//!   (busy timeout) rather than failing when a read would have to become a write while
//!   another connection writes.
//! - A file that is not a usable outbox is renamed aside with a loud error and a fresh one is
//!   started, so that the agent does not crash-loop; the old file is kept for inspection, and
//!   what can still be read from it (the counters, the waiting reports) is carried over.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use duban_proto::{KeyId, SigningKey, envelope, pb};
use prost::Message;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Connection, Row, SqliteConnection};

use crate::config::{OutboxConfig, WhenFull};
use crate::sources::Item;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("outbox migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "outbox is full ({bytes} of {max_bytes} bytes); new collection refused, nothing stored was dropped"
    )]
    Full { bytes: u64, max_bytes: u64 },
    #[error("cannot move the corrupt outbox {path} aside: {message}")]
    MoveAside { path: PathBuf, message: String },
}

/// The identity reports are signed with: the key, the unit and the plan (audience).
#[derive(Clone, Copy)]
pub struct Signer<'a> {
    pub key: &'a SigningKey,
    pub unit: &'a str,
    pub audience: &'a str,
}

/// One stored report ready to send.
#[derive(Debug, Clone)]
pub struct Pending {
    pub seq: i64,
    pub report_id: Vec<u8>,
    pub envelope: pb::SignedReport,
    pub bytes: i64,
    pub attempts: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub reports: i64,
    pub bytes: i64,
    pub oldest_created_at_ms: Option<i64>,
    pub dead_letters: i64,
    pub next_seq: i64,
    /// Whether the seq counter is known to be ahead of the centre's (see the module docs).
    pub synced: bool,
    /// Reports waiting for the centre's counters before they get their seq (new outbox).
    pub provisional: i64,
}

/// An item the centre refused, as `outbox dead` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RefusedItem {
    /// Increases with every refusal recorded.
    pub id: i64,
    pub seq: i64,
    pub period: String,
    /// `value <indicator>`, `task <task>/<milestone>`, or `report` for the report as a whole.
    pub item: String,
    pub code: String,
    pub message: String,
    pub at_ms: i64,
    /// Whether the report sits in the dead letters (else the centre stored its other items).
    pub in_dead_letter: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    pub seq: i64,
    pub period: String,
    #[serde(serialize_with = "hex_bytes")]
    pub report_id: Vec<u8>,
    pub created_at_ms: i64,
    pub failed_at_ms: i64,
    pub reason: String,
    pub message: String,
    /// The unit, plan and key the report was signed for.
    pub unit: String,
    pub audience: String,
    pub key_id: String,
    /// The refused items, with their codes and the centre's messages.
    pub refusals: Vec<RefusedItem>,
}

fn hex_bytes<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(bytes))
}

/// What [`Outbox::enqueue`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// `(seq, period)` of each report built.
    pub reports: Vec<(i64, String)>,
    /// Items left out because they had not changed since they were last queued or accepted.
    pub unchanged: usize,
    /// Items left out because the centre refused them as they are (`outbox dead` shows why).
    pub refused_before: usize,
    /// Reports deleted under `when_full = "drop_oldest"` to make room.
    pub dropped: u64,
}

/// What an acknowledgement says about one stored report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub seq: i64,
    /// Items the centre refused inside the stored report: `(kind, index, code, message)`,
    /// `kind` being "value" or "task".
    pub refused: Vec<(&'static str, u32, String, String)>,
}

/// What could be carried over from an outbox file that was moved aside.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Salvaged {
    pub next_seq: Option<i64>,
    pub reports: u64,
    pub dead_letters: u64,
    pub revisions: u64,
}

/// The outbox as opened: where a corrupt file went, and what was carried over from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Opened {
    pub moved_to: Option<PathBuf>,
    pub salvaged: Option<Salvaged>,
}

#[derive(Clone)]
pub struct Outbox {
    pool: SqlitePool,
    config: OutboxConfig,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Outbox({})", self.config.path.display())
    }
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

async fn open_pool(path: &Path) -> Result<SqlitePool, OutboxError> {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(2)
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

/// Reads what it can from a moved-aside outbox into the fresh one: the seq counter, the
/// revisions per period, the waiting reports and dead letters (envelopes byte for byte, under
/// their own seqs). Each part is tried on its own; what cannot be read is skipped.
async fn salvage(old: &Path, fresh: &SqlitePool) -> Salvaged {
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

impl Outbox {
    /// Opens the outbox; a corrupt or unreadable file is moved aside (`<path>.corrupt-<ms>`),
    /// a fresh outbox started and what can be read from the old file carried over.
    pub async fn open(config: &OutboxConfig) -> Result<(Self, Opened), OutboxError> {
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| OutboxError::MoveAside {
                path: dir.to_owned(),
                message: format!("cannot create the outbox directory: {e}"),
            })?;
        }
        match open_pool(&config.path).await {
            Ok(pool) => Ok((
                Outbox {
                    pool,
                    config: config.clone(),
                },
                Opened::default(),
            )),
            Err(error @ (OutboxError::Database(_) | OutboxError::Migrate(_))) => {
                let aside =
                    PathBuf::from(format!("{}.corrupt-{}", config.path.display(), now_ms()));
                tracing::error!(path = %config.path.display(), moved_to = %aside.display(), %error, "OUTBOX IS CORRUPT OR UNREADABLE: moving it aside and starting a fresh one; what can still be read from it is carried over, and the file is kept");
                std::fs::rename(&config.path, &aside).map_err(|e| OutboxError::MoveAside {
                    path: config.path.clone(),
                    message: e.to_string(),
                })?;
                for suffix in ["-wal", "-shm"] {
                    let side = PathBuf::from(format!("{}{suffix}", config.path.display()));
                    if side.exists() {
                        let _ = std::fs::rename(&side, format!("{}{suffix}", aside.display()));
                    }
                }
                let pool = open_pool(&config.path).await?;
                let salvaged = salvage(&aside, &pool).await;
                match salvaged.next_seq {
                    Some(next_seq) => {
                        tracing::warn!(
                            next_seq,
                            reports = salvaged.reports,
                            dead_letters = salvaged.dead_letters,
                            "carried over from the moved-aside outbox: the seq counter continues, waiting reports are kept"
                        )
                    }
                    None => tracing::error!(
                        "nothing could be read from the moved-aside outbox: this agent signs nothing until the centre has told it the highest seq of its key (it asks at once when it reaches the centre)"
                    ),
                }
                Ok((
                    Outbox {
                        pool,
                        config: config.clone(),
                    },
                    Opened {
                        moved_to: Some(aside),
                        salvaged: Some(salvaged),
                    },
                ))
            }
            Err(other) => Err(other),
        }
    }

    /// Whether the seq counter is known to be ahead of the centre's (see the module docs).
    pub async fn is_synced(&self) -> Result<bool, OutboxError> {
        let synced: i64 = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'synced'")
            .fetch_one(&self.pool)
            .await?;
        Ok(synced == 1)
    }

    /// Raises the seq counter above `max_seq` (the highest the centre stores under this key)
    /// and each period's revision above the centre's, marks the outbox synced, and gives the
    /// provisional reports their real seqs, in the order they were built. Returns the next
    /// seq and how many provisional reports were signed for good.
    pub async fn apply_centre_state(
        &self,
        max_seq: u64,
        revisions: &[(String, u32)],
        signer: Signer<'_>,
    ) -> Result<(i64, usize), OutboxError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let floor = i64::try_from(max_seq).unwrap_or(i64::MAX - 1) + 1;
        sqlx::query("UPDATE meta SET value = MAX(value, $1) WHERE key = 'next_seq'")
            .bind(floor)
            .execute(&mut *tx)
            .await?;
        for (period, revision) in revisions {
            sqlx::query("INSERT INTO period_revision (period, next_revision) VALUES ($1, $2) ON CONFLICT (period) DO UPDATE SET next_revision = MAX(next_revision, excluded.next_revision)")
                .bind(period)
                .bind(i64::from(*revision) + 1)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE meta SET value = 1 WHERE key = 'synced'")
            .execute(&mut *tx)
            .await?;
        let drafts: Vec<i64> =
            sqlx::query_scalar("SELECT seq FROM outbox WHERE seq < 0 ORDER BY seq DESC")
                .fetch_all(&mut *tx)
                .await?;
        for draft in &drafts {
            self.rebuild_in(&mut tx, *draft, signer).await?;
        }
        let next: i64 = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'next_seq'")
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((next, drafts.len()))
    }

    /// Builds, signs and commits one report per period for the items that changed (all items
    /// with `force`), issued at `issued_at_ms` (provisional reports in a new outbox; see the
    /// module docs). Nothing is sent here.
    pub async fn enqueue(
        &self,
        signer: Signer<'_>,
        items: &[Item],
        force: bool,
        issued_at_ms: i64,
    ) -> Result<Enqueued, OutboxError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let mut changed: Vec<&Item> = Vec::new();
        let mut unchanged = 0;
        let mut refused_before = 0;
        for item in items {
            let (kind, subject, fingerprint) = identity(item);
            let period = item.period().to_string();
            // The newest queued fingerprint, else the last accepted one.
            let last: Option<String> = sqlx::query_scalar(
                "SELECT COALESCE((SELECT fingerprint FROM pending_items WHERE kind = $1 AND subject = $2 AND period = $3 ORDER BY rowid DESC LIMIT 1), \
                 (SELECT fingerprint FROM last_sent WHERE kind = $1 AND subject = $2 AND period = $3))",
            )
            .bind(kind)
            .bind(&subject)
            .bind(&period)
            .fetch_one(&mut *tx)
            .await?;
            if !force && last.as_deref() == Some(fingerprint.as_str()) {
                unchanged += 1;
                continue;
            }
            let refused: Option<String> = sqlx::query_scalar(
                "SELECT fingerprint FROM refused_items WHERE kind = $1 AND subject = $2 AND period = $3",
            )
            .bind(kind)
            .bind(&subject)
            .bind(&period)
            .fetch_optional(&mut *tx)
            .await?;
            if !force && refused.as_deref() == Some(fingerprint.as_str()) {
                refused_before += 1;
            } else {
                changed.push(item);
            }
        }
        let mut by_period: std::collections::BTreeMap<String, Vec<&Item>> = Default::default();
        for item in changed {
            by_period
                .entry(item.period().to_string())
                .or_default()
                .push(item);
        }
        let mut reports = Vec::new();
        let mut dropped = 0;
        for (period, items) in by_period {
            let (seq, more) = self
                .insert_report(&mut tx, signer, &period, &items, issued_at_ms, now_ms())
                .await?;
            dropped += more;
            reports.push((seq, period));
        }
        tx.commit().await?;
        Ok(Enqueued {
            reports,
            unchanged,
            refused_before,
            dropped,
        })
    }

    /// Allocates a seq and a revision, signs one report of `items` and stores it with its
    /// pending items; in a new outbox (not synced), a provisional report under the next
    /// negative seq, with seq 0 and revision 0 inside. Returns the seq and how many old
    /// reports `drop_oldest` deleted.
    async fn insert_report(
        &self,
        tx: &mut SqliteConnection,
        signer: Signer<'_>,
        period: &str,
        items: &[&Item],
        issued_at_ms: i64,
        created_at_ms: i64,
    ) -> Result<(i64, u64), OutboxError> {
        let synced: i64 = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'synced'")
            .fetch_one(&mut *tx)
            .await?;
        let (seq, signed_seq, revision) = if synced == 1 {
            let seq: i64 = sqlx::query_scalar(
                "UPDATE meta SET value = value + 1 WHERE key = 'next_seq' RETURNING value - 1",
            )
            .fetch_one(&mut *tx)
            .await?;
            let revision: i64 = sqlx::query_scalar("INSERT INTO period_revision (period, next_revision) VALUES ($1, 1) ON CONFLICT (period) DO UPDATE SET next_revision = next_revision + 1 RETURNING next_revision - 1")
                .bind(period)
                .fetch_one(&mut *tx)
                .await?;
            (seq, seq, revision)
        } else {
            let draft: i64 = sqlx::query_scalar(
                "UPDATE meta SET value = value + 1 WHERE key = 'next_draft' RETURNING value - 1",
            )
            .fetch_one(&mut *tx)
            .await?;
            (-draft, 0, 0)
        };
        let report = build_report(signer, signed_seq, period, revision, issued_at_ms, items);
        let signed = envelope::bind_and_sign(signer.key, report);
        let bytes = signed.encode_to_vec();
        let dropped = self.make_room(&mut *tx, bytes.len() as u64).await?;
        sqlx::query("INSERT INTO outbox (seq, report_id, period, envelope, bytes, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(seq)
            .bind(decode_report(&signed.payload).map(|r| r.report_id).unwrap_or_default())
            .bind(period)
            .bind(&bytes)
            .bind(bytes.len() as i64)
            .bind(created_at_ms)
            .execute(&mut *tx)
            .await?;
        let (mut values, mut tasks) = (0, 0);
        for item in items {
            let (kind, subject, fingerprint) = identity(item);
            let counter = if kind == "value" {
                &mut values
            } else {
                &mut tasks
            };
            sqlx::query("INSERT OR REPLACE INTO pending_items (seq, kind, subject, period, fingerprint, item_index) VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(seq)
                .bind(kind)
                .bind(&subject)
                .bind(period)
                .bind(&fingerprint)
                .bind(*counter)
                .execute(&mut *tx)
                .await?;
            *counter += 1;
        }
        Ok((seq, dropped))
    }

    /// Enforces the byte and age limits before `incoming` more bytes are stored.
    async fn make_room(
        &self,
        tx: &mut SqliteConnection,
        incoming: u64,
    ) -> Result<u64, OutboxError> {
        let max_bytes = self.config.max_bytes;
        let mut dropped = 0;
        if self.config.when_full == WhenFull::DropOldest {
            let cutoff = now_ms() - self.config.max_age.as_millis() as i64;
            sqlx::query("DELETE FROM pending_items WHERE seq IN (SELECT seq FROM outbox WHERE created_at_ms < $1)")
                .bind(cutoff)
                .execute(&mut *tx)
                .await?;
            dropped += sqlx::query("DELETE FROM outbox WHERE created_at_ms < $1")
                .bind(cutoff)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        loop {
            let bytes: i64 = sqlx::query_scalar("SELECT COALESCE(SUM(bytes), 0) FROM outbox")
                .fetch_one(&mut *tx)
                .await?;
            let bytes = bytes as u64;
            if bytes + incoming <= max_bytes {
                return Ok(dropped);
            }
            match self.config.when_full {
                WhenFull::Refuse => return Err(OutboxError::Full { bytes, max_bytes }),
                WhenFull::DropOldest => {
                    // The oldest report: signed ones in seq order come before provisional
                    // ones (-1, -2, … in the order they were built).
                    let oldest: Option<i64> = sqlx::query_scalar(
                        "SELECT seq FROM outbox ORDER BY seq < 0, abs(seq) LIMIT 1",
                    )
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some(oldest) = oldest else {
                        return Err(OutboxError::Full { bytes, max_bytes });
                    };
                    sqlx::query("DELETE FROM pending_items WHERE seq = $1")
                        .bind(oldest)
                        .execute(&mut *tx)
                        .await?;
                    let deleted = sqlx::query("DELETE FROM outbox WHERE seq = $1")
                        .bind(oldest)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    dropped += deleted;
                }
            }
        }
    }

    /// The oldest reports ready to send, in seq order (provisional ones are not).
    pub async fn pending(&self, limit: usize) -> Result<Vec<Pending>, OutboxError> {
        let rows = sqlx::query(
            "SELECT seq, report_id, envelope, bytes, attempts FROM outbox WHERE seq > 0 ORDER BY seq LIMIT $1",
        )
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(pending_row).collect()
    }

    /// Removes acknowledged reports. Their items become the accepted fingerprints, except the
    /// items the centre refused, which are recorded with their code and message.
    pub async fn ack(&self, acks: &[Ack]) -> Result<(), OutboxError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        for ack in acks {
            let period: Option<String> =
                sqlx::query_scalar("SELECT period FROM outbox WHERE seq = $1")
                    .bind(ack.seq)
                    .fetch_optional(&mut *tx)
                    .await?;
            for (kind, index, code, message) in &ack.refused {
                let item = item_name(&mut tx, ack.seq, kind, *index).await?;
                sqlx::query(
                    "INSERT OR REPLACE INTO refused_items (kind, subject, period, fingerprint) SELECT kind, subject, period, fingerprint FROM pending_items WHERE seq = $1 AND kind = $2 AND item_index = $3",
                )
                .bind(ack.seq)
                .bind(*kind)
                .bind(i64::from(*index))
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "DELETE FROM pending_items WHERE seq = $1 AND kind = $2 AND item_index = $3",
                )
                .bind(ack.seq)
                .bind(*kind)
                .bind(i64::from(*index))
                .execute(&mut *tx)
                .await?;
                record_refusal(
                    &mut tx,
                    ack.seq,
                    period.as_deref().unwrap_or_default(),
                    &item,
                    code,
                    message,
                    false,
                )
                .await?;
            }
            sqlx::query("INSERT INTO last_sent (kind, subject, period, fingerprint) SELECT kind, subject, period, fingerprint FROM pending_items WHERE seq = $1 ON CONFLICT (kind, subject, period) DO UPDATE SET fingerprint = excluded.fingerprint")
                .bind(ack.seq)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM pending_items WHERE seq = $1")
                .bind(ack.seq)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM outbox WHERE seq = $1")
                .bind(ack.seq)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn note_attempt(&self, seqs: &[i64], error: &str) -> Result<(), OutboxError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        for seq in seqs {
            sqlx::query(
                "UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE seq = $1",
            )
            .bind(seq)
            .bind(error)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Moves a permanently refused report to the dead letters, where it is kept and shown with
    /// its refused items (`(kind, index, code, message)`). Its items are remembered as refused:
    /// not built again while unchanged.
    pub async fn dead_letter(
        &self,
        seq: i64,
        reason: &str,
        message: &str,
        refused: &[(&'static str, u32, String, String)],
    ) -> Result<(), OutboxError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let period: String = sqlx::query_scalar("SELECT period FROM outbox WHERE seq = $1")
            .bind(seq)
            .fetch_optional(&mut *tx)
            .await?
            .unwrap_or_default();
        if refused.is_empty() {
            record_refusal(&mut tx, seq, &period, "report", reason, message, true).await?;
        }
        for (kind, index, code, message) in refused {
            let item = item_name(&mut tx, seq, kind, *index).await?;
            record_refusal(&mut tx, seq, &period, &item, code, message, true).await?;
        }
        // Refused as they are: its items are not built again until they change.
        sqlx::query("INSERT OR REPLACE INTO refused_items (kind, subject, period, fingerprint) SELECT kind, subject, period, fingerprint FROM pending_items WHERE seq = $1")
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT OR REPLACE INTO dead_letters (seq, report_id, period, envelope, bytes, created_at_ms, failed_at_ms, reason, message) SELECT seq, report_id, period, envelope, bytes, created_at_ms, $2, $3, $4 FROM outbox WHERE seq = $1")
            .bind(seq)
            .bind(now_ms())
            .bind(reason)
            .bind(message)
            .execute(&mut *tx)
            .await?;
        for table in ["pending_items", "outbox"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE seq = $1"
            )))
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, OutboxError> {
        let rows = sqlx::query("SELECT seq, period, report_id, envelope, created_at_ms, failed_at_ms, reason, message FROM dead_letters ORDER BY seq").fetch_all(&self.pool).await?;
        let refusals = self.refusals().await?;
        rows.iter()
            .map(|r| {
                let seq: i64 = r.try_get("seq")?;
                let (unit, audience, key_id) =
                    envelope_identity(&r.try_get::<Vec<u8>, _>("envelope")?);
                Ok(DeadLetter {
                    seq,
                    period: r.try_get("period")?,
                    report_id: r.try_get("report_id")?,
                    created_at_ms: r.try_get("created_at_ms")?,
                    failed_at_ms: r.try_get("failed_at_ms")?,
                    reason: r.try_get("reason")?,
                    message: r.try_get("message")?,
                    unit,
                    audience,
                    key_id,
                    refusals: refusals
                        .iter()
                        .filter(|f| f.in_dead_letter && f.seq == seq)
                        .cloned()
                        .collect(),
                })
            })
            .collect()
    }

    /// Every refused item on record, oldest first.
    pub async fn refusals(&self) -> Result<Vec<RefusedItem>, OutboxError> {
        let rows = sqlx::query("SELECT refusal_pk, seq, period, item, code, message, at_ms, in_dead_letter FROM refusals ORDER BY refusal_pk")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(RefusedItem {
                    id: r.try_get("refusal_pk")?,
                    seq: r.try_get("seq")?,
                    period: r.try_get("period")?,
                    item: r.try_get("item")?,
                    code: r.try_get("code")?,
                    message: r.try_get("message")?,
                    at_ms: r.try_get("at_ms")?,
                    in_dead_letter: r.try_get::<i64, _>("in_dead_letter")? == 1,
                })
            })
            .collect()
    }

    /// Puts back in the outbox, unchanged, every dead letter signed for `signer`'s unit, plan
    /// and key. Returns how many were put back and the dead letters left because they were
    /// signed for another identity (resending them would be refused again).
    pub async fn retry_dead(&self, signer: Signer<'_>) -> Result<(u64, Vec<i64>), OutboxError> {
        let key_id = signer.key.key_id().to_string();
        let mut moved = 0;
        let mut other_identity = Vec::new();
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let rows = sqlx::query("SELECT seq, envelope FROM dead_letters ORDER BY seq")
            .fetch_all(&mut *tx)
            .await?;
        for row in rows {
            let seq: i64 = row.try_get(0)?;
            let (unit, audience, key) = envelope_identity(&row.try_get::<Vec<u8>, _>(1)?);
            if unit != signer.unit || audience != signer.audience || key != key_id {
                other_identity.push(seq);
                continue;
            }
            moved += sqlx::query("INSERT OR IGNORE INTO outbox (seq, report_id, period, envelope, bytes, created_at_ms) SELECT seq, report_id, period, envelope, bytes, created_at_ms FROM dead_letters WHERE seq = $1")
                .bind(seq)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            for sql in [
                "DELETE FROM dead_letters WHERE seq = $1",
                "DELETE FROM refusals WHERE seq = $1",
            ] {
                sqlx::query(sql).bind(seq).execute(&mut *tx).await?;
            }
        }
        if moved > 0 {
            // The centre was fixed: what it refused may pass now.
            sqlx::query("DELETE FROM refused_items")
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok((moved, other_identity))
    }

    /// Deletes every dead letter and every recorded refusal. Their items were already
    /// forgotten by change detection: the next collection builds what the sources still hold.
    pub async fn discard_dead(&self) -> Result<u64, OutboxError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let deleted = sqlx::query("DELETE FROM dead_letters")
            .execute(&mut *tx)
            .await?
            .rows_affected();
        for table in ["refusals", "refused_items"] {
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(deleted)
    }

    /// Re-signs the items of the waiting report `seq` as a new report (a new seq, report id and
    /// revision, the same `issued_at`) under `signer`, and removes the old one. For a report
    /// whose seq the centre already holds under another report, or one signed for another
    /// unit, plan or key than the configuration now names. Returns the new seq, or `None` when
    /// `seq` is not waiting.
    pub async fn rebuild(&self, seq: i64, signer: Signer<'_>) -> Result<Option<i64>, OutboxError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let new_seq = self.rebuild_in(&mut tx, seq, signer).await?;
        tx.commit().await?;
        Ok(new_seq)
    }

    async fn rebuild_in(
        &self,
        tx: &mut SqliteConnection,
        seq: i64,
        signer: Signer<'_>,
    ) -> Result<Option<i64>, OutboxError> {
        let row = sqlx::query("SELECT envelope, created_at_ms FROM outbox WHERE seq = $1")
            .bind(seq)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let created_at_ms: i64 = row.try_get(1)?;
        let Some(report) = pb::SignedReport::decode(row.try_get::<Vec<u8>, _>(0)?.as_slice())
            .ok()
            .and_then(|e| decode_report(&e.payload))
        else {
            return Ok(None);
        };
        let items = items_of(&report);
        let refs: Vec<&Item> = items.iter().collect();
        for table in ["pending_items", "outbox"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE seq = $1"
            )))
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        }
        let (new_seq, _) = self
            .insert_report(
                &mut *tx,
                signer,
                &report.period,
                &refs,
                report.issued_at_ms,
                created_at_ms,
            )
            .await?;
        Ok(Some(new_seq))
    }

    /// The waiting reports signed for another unit, plan or key than `signer`'s.
    pub async fn signed_for_others(&self, signer: Signer<'_>) -> Result<Vec<i64>, OutboxError> {
        let key_id = signer.key.key_id().to_string();
        let rows = sqlx::query("SELECT seq, envelope FROM outbox WHERE seq > 0 ORDER BY seq")
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::new();
        for row in rows {
            let (unit, audience, key) = envelope_identity(&row.try_get::<Vec<u8>, _>(1)?);
            if unit != signer.unit || audience != signer.audience || key != key_id {
                out.push(row.try_get(0)?);
            }
        }
        Ok(out)
    }

    pub async fn stats(&self) -> Result<Stats, OutboxError> {
        let row = sqlx::query("SELECT (SELECT count(*) FROM outbox), (SELECT COALESCE(SUM(bytes), 0) FROM outbox), (SELECT MIN(created_at_ms) FROM outbox), (SELECT count(*) FROM dead_letters), (SELECT value FROM meta WHERE key = 'next_seq'), (SELECT value FROM meta WHERE key = 'synced'), (SELECT count(*) FROM outbox WHERE seq < 0)")
            .fetch_one(&self.pool)
            .await?;
        Ok(Stats {
            reports: row.try_get(0)?,
            bytes: row.try_get(1)?,
            oldest_created_at_ms: row.try_get(2)?,
            dead_letters: row.try_get(3)?,
            next_seq: row.try_get(4)?,
            synced: row.try_get::<i64, _>(5)? == 1,
            provisional: row.try_get(6)?,
        })
    }

    pub fn path(&self) -> &Path {
        &self.config.path
    }

    /// Closes the file: every connection is finished when this returns.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

async fn record_refusal(
    tx: &mut SqliteConnection,
    seq: i64,
    period: &str,
    item: &str,
    code: &str,
    message: &str,
    in_dead_letter: bool,
) -> Result<(), OutboxError> {
    sqlx::query("INSERT INTO refusals (seq, period, item, code, message, at_ms, in_dead_letter) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(seq)
        .bind(period)
        .bind(item)
        .bind(code)
        .bind(message)
        .bind(now_ms())
        .bind(i64::from(in_dead_letter))
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// "value <indicator>" or "task <task>/<milestone>" for the item at `index` of report `seq`.
async fn item_name(
    tx: &mut SqliteConnection,
    seq: i64,
    kind: &str,
    index: u32,
) -> Result<String, OutboxError> {
    let subject: Option<String> = sqlx::query_scalar(
        "SELECT subject FROM pending_items WHERE seq = $1 AND kind = $2 AND item_index = $3",
    )
    .bind(seq)
    .bind(kind)
    .bind(i64::from(index))
    .fetch_optional(&mut *tx)
    .await?;
    Ok(match subject {
        Some(subject) => format!("{kind} {subject}"),
        None => format!("{kind} #{index}"),
    })
}

fn pending_row(row: &SqliteRow) -> Result<Pending, OutboxError> {
    let bytes: Vec<u8> = row.try_get("envelope")?;
    let envelope = pb::SignedReport::decode(bytes.as_slice())
        .map_err(|e| OutboxError::Database(sqlx::Error::Decode(Box::new(e))))?;
    Ok(Pending {
        seq: row.try_get("seq")?,
        report_id: row.try_get("report_id")?,
        envelope,
        bytes: row.try_get("bytes")?,
        attempts: row.try_get("attempts")?,
    })
}

/// The report inside a payload this agent signed (it decodes its own bytes, never a peer's).
fn decode_report(payload: &[u8]) -> Option<pb::Report> {
    pb::Report::decode(payload).ok()
}

/// `(unit, audience, key id)` a stored envelope was signed for.
fn envelope_identity(bytes: &[u8]) -> (String, String, String) {
    let envelope = pb::SignedReport::decode(bytes).unwrap_or_default();
    let report = decode_report(&envelope.payload).unwrap_or_default();
    let key_id = KeyId::from_slice(&envelope.key_id)
        .map(|k| k.to_string())
        .unwrap_or_default();
    (report.unit_id, report.audience, key_id)
}

/// The items of a report, as a source would have given them.
pub fn items_of(report: &pb::Report) -> Vec<Item> {
    let Ok(period) = report.period.parse() else {
        return Vec::new();
    };
    let values = report.values.iter().map(|v| Item::Value {
        indicator: v.indicator_id.clone(),
        period,
        value: v.value,
        note: v.note.clone(),
    });
    let tasks = report.task_updates.iter().map(|t| Item::Task {
        task: t.task_id.clone(),
        milestone: t.milestone_id.clone(),
        period,
        percent: t.percent_complete,
        status: t.status(),
        note: t.note.clone(),
    });
    values.chain(tasks).collect()
}

/// `(kind, subject, fingerprint)`: what identifies an item and what would make it "changed".
fn identity(item: &Item) -> (&'static str, String, String) {
    match item {
        Item::Value {
            indicator,
            value,
            note,
            ..
        } => ("value", indicator.clone(), format!("{value:?}|{note}")),
        Item::Task {
            task,
            milestone,
            percent,
            status,
            note,
            ..
        } => (
            "task",
            format!("{task}/{milestone}"),
            format!("{percent:?}|{}|{note}", status.as_str_name()),
        ),
    }
}

fn build_report(
    signer: Signer<'_>,
    seq: i64,
    period: &str,
    revision: i64,
    issued_at_ms: i64,
    items: &[&Item],
) -> pb::Report {
    let mut report = pb::Report {
        report_id: rand::random::<[u8; 16]>().to_vec(),
        unit_id: signer.unit.to_owned(),
        key_id: Vec::new(),
        seq: seq as u64,
        issued_at_ms,
        audience: signer.audience.to_owned(),
        period: period.to_owned(),
        values: Vec::new(),
        task_updates: Vec::new(),
        revision: revision.clamp(0, i64::from(u32::MAX)) as u32,
    };
    for item in items {
        match item {
            Item::Value {
                indicator,
                value,
                note,
                ..
            } => report.values.push(pb::IndicatorValue {
                indicator_id: indicator.clone(),
                value: *value,
                note: note.clone(),
            }),
            Item::Task {
                task,
                milestone,
                percent,
                status,
                note,
                ..
            } => report.task_updates.push(pb::TaskUpdate {
                task_id: task.clone(),
                milestone_id: milestone.clone(),
                percent_complete: *percent,
                status: *status as i32,
                note: note.clone(),
            }),
        }
    }
    report
}

#[cfg(test)]
mod tests;

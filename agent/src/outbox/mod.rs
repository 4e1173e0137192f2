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
use duban_host::clock::Clock;
use std::sync::Arc;

mod build;
mod open;
mod sent;
mod statements;

pub use build::items_of;
use build::*;
pub use open::peek_counts;
use open::*;
pub use statements::{StatementDraft, StoredStatement};

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
    #[error("cannot lock {path} while opening the outbox: {message}")]
    Lock { path: PathBuf, message: String },
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
    /// When reports are issued and stored, and how old they are against `max_age`.
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Outbox({})", self.config.path.display())
    }
}

impl Outbox {
    /// Opens the outbox; a corrupt or unreadable file is moved aside (`<path>.corrupt-<ms>`),
    /// a fresh outbox started and what can be read from the old file carried over.
    pub async fn open(
        config: &OutboxConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<(Self, Opened), OutboxError> {
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| OutboxError::MoveAside {
                path: dir.to_owned(),
                message: format!("cannot create the outbox directory: {e}"),
            })?;
        }
        let _opening = open::lock(&config.path).await?;
        match open_pool(&config.path).await {
            Ok(pool) => Ok((
                Outbox {
                    pool,
                    config: config.clone(),
                    clock,
                },
                Opened::default(),
            )),
            Err(error @ (OutboxError::Database(_) | OutboxError::Migrate(_))) => {
                let aside = PathBuf::from(format!(
                    "{}.corrupt-{}",
                    config.path.display(),
                    clock.now_ms()
                ));
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
                        clock,
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
            self.rebuild_in(&mut tx, *draft, signer, None).await?;
        }
        let next: i64 = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'next_seq'")
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((next, drafts.len()))
    }

    pub async fn stats(&self) -> Result<Stats, OutboxError> {
        let row = sqlx::query("SELECT (SELECT value FROM meta WHERE key = 'outbox_reports'), (SELECT value FROM meta WHERE key = 'outbox_bytes'), (SELECT MIN(created_at_ms) FROM outbox), (SELECT count(*) FROM dead_letters), (SELECT value FROM meta WHERE key = 'next_seq'), (SELECT value FROM meta WHERE key = 'synced'), (SELECT count(*) FROM outbox WHERE seq < 0)")
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

    /// The clock the outbox stamps reports with.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    pub fn path(&self) -> &Path {
        &self.config.path
    }

    /// Closes the file: every connection is finished when this returns.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests;

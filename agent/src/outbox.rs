//! The durable outbox (SQLite, WAL, `synchronous=FULL`).
//!
//! Invariants:
//! - A report is signed inside the transaction that allocates its `seq` and stores it, so a
//!   committed row is exactly what will be sent, byte for byte, however often.
//! - `seq` comes from the `meta` row and only grows, across restarts and crashes: a crash
//!   before commit loses the allocation and the report together.
//! - Rows leave only by [`Outbox::ack`] (the aggregator stored or already had them), by
//!   [`Outbox::dead_letter`] (a permanent refusal: kept and shown), or by the `drop_oldest`
//!   policy when configured (counted).
//! - A file that is not a usable outbox is renamed aside with a loud error and a fresh one is
//!   started, so that the agent does not crash-loop; the old file is kept for inspection.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use duban_proto::{SigningKey, envelope, pb};
use prost::Message;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Connection, Row};

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
}

fn hex_bytes<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(bytes))
}

/// What [`Outbox::enqueue`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// `(seq, period)` of each report built.
    pub reports: Vec<(i64, String)>,
    /// Items left out because they had not changed since they were last enqueued.
    pub unchanged: usize,
    /// Reports deleted under `when_full = "drop_oldest"` to make room.
    pub dropped: u64,
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
    sqlx::query("SELECT (SELECT count(*) FROM outbox) + (SELECT count(*) FROM dead_letters) + (SELECT value FROM meta WHERE key = 'next_seq')").fetch_one(&pool).await?;
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

impl Outbox {
    /// Opens the outbox; a corrupt or unreadable file is moved aside (`<path>.corrupt-<ms>`)
    /// and a fresh outbox started. Returns the path it was moved to, if it was.
    pub async fn open(config: &OutboxConfig) -> Result<(Self, Option<PathBuf>), OutboxError> {
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
                None,
            )),
            Err(error @ (OutboxError::Database(_) | OutboxError::Migrate(_))) => {
                let aside =
                    PathBuf::from(format!("{}.corrupt-{}", config.path.display(), now_ms()));
                tracing::error!(path = %config.path.display(), moved_to = %aside.display(), %error, "OUTBOX IS CORRUPT OR UNREADABLE: moving it aside and starting a fresh one; reports in it were NOT sent and are kept in the moved file");
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
                Ok((
                    Outbox {
                        pool,
                        config: config.clone(),
                    },
                    Some(aside),
                ))
            }
            Err(other) => Err(other),
        }
    }

    /// Builds, signs and commits one report per period for the items that changed (all items
    /// with `force`), issued now. Nothing is sent here.
    pub async fn enqueue(
        &self,
        key: &SigningKey,
        unit: &str,
        audience: &str,
        items: &[Item],
        force: bool,
    ) -> Result<Enqueued, OutboxError> {
        self.enqueue_at(key, unit, audience, items, force, now_ms())
            .await
    }

    /// [`Outbox::enqueue`] with the reports' `issued_at` given: the agent passes its clock,
    /// which is the system clock except in the demo's simulated time.
    pub async fn enqueue_at(
        &self,
        key: &SigningKey,
        unit: &str,
        audience: &str,
        items: &[Item],
        force: bool,
        issued_at_ms: i64,
    ) -> Result<Enqueued, OutboxError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let mut changed: Vec<&Item> = Vec::new();
        let mut unchanged = 0;
        for item in items {
            let (kind, subject, fingerprint) = identity(item);
            let period = item.period().to_string();
            let last: Option<String> = sqlx::query_scalar("SELECT fingerprint FROM last_sent WHERE kind = $1 AND subject = $2 AND period = $3")
                .bind(kind)
                .bind(&subject)
                .bind(&period)
                .fetch_optional(&mut *tx)
                .await?;
            if !force && last.as_deref() == Some(fingerprint.as_str()) {
                unchanged += 1;
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
            let seq: i64 = sqlx::query_scalar(
                "UPDATE meta SET value = value + 1 WHERE key = 'next_seq' RETURNING value - 1",
            )
            .fetch_one(&mut *tx)
            .await?;
            let revision: i64 = sqlx::query_scalar("INSERT INTO period_revision (period, next_revision) VALUES ($1, 1) ON CONFLICT (period) DO UPDATE SET next_revision = next_revision + 1 RETURNING next_revision - 1")
                .bind(&period)
                .fetch_one(&mut *tx)
                .await?;
            let report = build_report(unit, audience, seq, &period, revision, issued_at_ms, &items);
            let signed = envelope::bind_and_sign(key, report);
            let bytes = signed.encode_to_vec();
            dropped += self.make_room(&mut tx, bytes.len() as u64).await?;
            sqlx::query("INSERT INTO outbox (seq, report_id, period, envelope, bytes, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(seq)
                .bind(decode_report_id(&signed))
                .bind(&period)
                .bind(&bytes)
                .bind(bytes.len() as i64)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
            for item in items {
                let (kind, subject, fingerprint) = identity(item);
                sqlx::query("INSERT INTO last_sent (kind, subject, period, fingerprint) VALUES ($1, $2, $3, $4) ON CONFLICT (kind, subject, period) DO UPDATE SET fingerprint = excluded.fingerprint")
                    .bind(kind)
                    .bind(&subject)
                    .bind(&period)
                    .bind(&fingerprint)
                    .execute(&mut *tx)
                    .await?;
            }
            reports.push((seq, period));
        }
        tx.commit().await?;
        Ok(Enqueued {
            reports,
            unchanged,
            dropped,
        })
    }

    /// Enforces the byte and age limits before `incoming` more bytes are stored.
    async fn make_room(
        &self,
        tx: &mut sqlx::SqliteConnection,
        incoming: u64,
    ) -> Result<u64, OutboxError> {
        let max_bytes = self.config.max_bytes;
        let mut dropped = 0;
        if self.config.when_full == WhenFull::DropOldest {
            let cutoff = now_ms() - self.config.max_age.as_millis() as i64;
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
                    let deleted =
                        sqlx::query("DELETE FROM outbox WHERE seq = (SELECT MIN(seq) FROM outbox)")
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                    if deleted == 0 {
                        return Err(OutboxError::Full { bytes, max_bytes });
                    }
                    dropped += deleted;
                }
            }
        }
    }

    /// The oldest reports, in seq order.
    pub async fn pending(&self, limit: usize) -> Result<Vec<Pending>, OutboxError> {
        let rows = sqlx::query(
            "SELECT seq, report_id, envelope, bytes, attempts FROM outbox ORDER BY seq LIMIT $1",
        )
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(pending_row).collect()
    }

    pub async fn ack(&self, seqs: &[i64]) -> Result<(), OutboxError> {
        let mut tx = self.pool.begin().await?;
        for seq in seqs {
            sqlx::query("DELETE FROM outbox WHERE seq = $1")
                .bind(seq)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn note_attempt(&self, seqs: &[i64], error: &str) -> Result<(), OutboxError> {
        let mut tx = self.pool.begin().await?;
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

    /// Moves a permanently refused report to the dead letters, where it is kept and shown.
    pub async fn dead_letter(
        &self,
        seq: i64,
        reason: &str,
        message: &str,
    ) -> Result<(), OutboxError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT OR REPLACE INTO dead_letters (seq, report_id, period, envelope, bytes, created_at_ms, failed_at_ms, reason, message) SELECT seq, report_id, period, envelope, bytes, created_at_ms, $2, $3, $4 FROM outbox WHERE seq = $1")
            .bind(seq)
            .bind(now_ms())
            .bind(reason)
            .bind(message)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM outbox WHERE seq = $1")
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, OutboxError> {
        let rows = sqlx::query("SELECT seq, period, report_id, created_at_ms, failed_at_ms, reason, message FROM dead_letters ORDER BY seq").fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(DeadLetter {
                    seq: r.try_get("seq")?,
                    period: r.try_get("period")?,
                    report_id: r.try_get("report_id")?,
                    created_at_ms: r.try_get("created_at_ms")?,
                    failed_at_ms: r.try_get("failed_at_ms")?,
                    reason: r.try_get("reason")?,
                    message: r.try_get("message")?,
                })
            })
            .collect()
    }

    /// Puts every dead letter back in the outbox, unchanged, for another try.
    pub async fn retry_dead(&self) -> Result<u64, OutboxError> {
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query("INSERT OR IGNORE INTO outbox (seq, report_id, period, envelope, bytes, created_at_ms) SELECT seq, report_id, period, envelope, bytes, created_at_ms FROM dead_letters")
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM dead_letters")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(moved)
    }

    pub async fn stats(&self) -> Result<Stats, OutboxError> {
        let row = sqlx::query("SELECT (SELECT count(*) FROM outbox), (SELECT COALESCE(SUM(bytes), 0) FROM outbox), (SELECT MIN(created_at_ms) FROM outbox), (SELECT count(*) FROM dead_letters), (SELECT value FROM meta WHERE key = 'next_seq')")
            .fetch_one(&self.pool)
            .await?;
        Ok(Stats {
            reports: row.try_get(0)?,
            bytes: row.try_get(1)?,
            oldest_created_at_ms: row.try_get(2)?,
            dead_letters: row.try_get(3)?,
            next_seq: row.try_get(4)?,
        })
    }

    pub fn path(&self) -> &Path {
        &self.config.path
    }
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

fn decode_report_id(signed: &pb::SignedReport) -> Vec<u8> {
    pb::Report::decode(signed.payload.as_slice())
        .map(|r| r.report_id)
        .unwrap_or_default()
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
    unit: &str,
    audience: &str,
    seq: i64,
    period: &str,
    revision: i64,
    issued_at_ms: i64,
    items: &[&Item],
) -> pb::Report {
    let mut report = pb::Report {
        report_id: rand::random::<[u8; 16]>().to_vec(),
        unit_id: unit.to_owned(),
        key_id: Vec::new(),
        seq: seq as u64,
        issued_at_ms,
        audience: audience.to_owned(),
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
mod tests {
    use super::*;

    fn config(dir: &Path, max_bytes: u64, when_full: WhenFull) -> OutboxConfig {
        OutboxConfig {
            path: dir.join("outbox.db"),
            max_bytes,
            max_age: Duration::from_secs(86_400),
            when_full,
        }
    }

    fn value(period: &str, value: f64) -> Item {
        Item::Value {
            indicator: "pct-applications".into(),
            period: period.parse().unwrap(),
            value,
            note: "x".repeat(300),
        }
    }

    #[tokio::test]
    async fn seq_rises_across_reopening_and_unchanged_items_build_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate();
        let (outbox, moved) = Outbox::open(&config(dir.path(), 1 << 20, WhenFull::Refuse))
            .await
            .unwrap();
        assert!(moved.is_none());
        let first = outbox
            .enqueue(
                &key,
                "laoshan",
                "qingdao-ip-2017",
                &[value("2018Q1", 1.0), value("2018Q2", 2.0)],
                false,
            )
            .await
            .unwrap();
        assert_eq!(
            first.reports,
            [(1, "2018Q1".to_owned()), (2, "2018Q2".to_owned())]
        );
        let same = outbox
            .enqueue(
                &key,
                "laoshan",
                "qingdao-ip-2017",
                &[value("2018Q1", 1.0)],
                false,
            )
            .await
            .unwrap();
        assert_eq!((same.reports.len(), same.unchanged), (0, 1));
        drop(outbox);
        let (outbox, _) = Outbox::open(&config(dir.path(), 1 << 20, WhenFull::Refuse))
            .await
            .unwrap();
        let changed = outbox
            .enqueue(
                &key,
                "laoshan",
                "qingdao-ip-2017",
                &[value("2018Q1", 1.5)],
                false,
            )
            .await
            .unwrap();
        assert_eq!(changed.reports, [(3, "2018Q1".to_owned())]);
        let pending = outbox.pending(10).await.unwrap();
        let revisions: Vec<u32> = pending
            .iter()
            .map(|p| {
                pb::Report::decode(p.envelope.payload.as_slice())
                    .unwrap()
                    .revision
            })
            .collect();
        assert_eq!(
            revisions,
            [0, 0, 1],
            "the correction of 2018Q1 carries a higher revision"
        );
        // What is stored verifies, byte for byte, as signed.
        for p in &pending {
            envelope::verify(&p.envelope, key.public_key()).unwrap();
        }
    }

    #[tokio::test]
    async fn when_full_refuse_keeps_everything_and_drop_oldest_makes_room() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate();
        let (outbox, _) = Outbox::open(&config(dir.path(), 1500, WhenFull::Refuse))
            .await
            .unwrap();
        let quarters = ["2018Q1", "2018Q2", "2018Q3", "2018Q4", "2019Q1", "2019Q2"];
        let mut stored = 0;
        let mut refused = false;
        for (i, q) in quarters.iter().enumerate() {
            match outbox
                .enqueue(
                    &key,
                    "laoshan",
                    "qingdao-ip-2017",
                    &[value(q, i as f64)],
                    false,
                )
                .await
            {
                Ok(done) => stored += done.reports.len(),
                Err(OutboxError::Full { .. }) => refused = true,
                Err(other) => panic!("{other}"),
            }
        }
        assert!(refused, "the limit was reached");
        let stats = outbox.stats().await.unwrap();
        assert_eq!(stats.reports as usize, stored, "nothing stored was dropped");
        assert!(stats.bytes <= 1500);

        let dir = tempfile::tempdir().unwrap();
        let (outbox, _) = Outbox::open(&config(dir.path(), 1500, WhenFull::DropOldest))
            .await
            .unwrap();
        let mut dropped = 0;
        for (i, q) in quarters.iter().enumerate() {
            dropped += outbox
                .enqueue(
                    &key,
                    "laoshan",
                    "qingdao-ip-2017",
                    &[value(q, i as f64)],
                    false,
                )
                .await
                .unwrap()
                .dropped;
        }
        assert!(dropped > 0);
        let pending = outbox.pending(10).await.unwrap();
        assert_eq!(pending.last().unwrap().seq, 6, "the newest is kept");
        assert_eq!(
            pending.first().unwrap().seq,
            1 + dropped as i64,
            "the oldest went first"
        );
    }

    #[tokio::test]
    async fn dead_letters_are_kept_and_can_be_retried() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate();
        let (outbox, _) = Outbox::open(&config(dir.path(), 1 << 20, WhenFull::Refuse))
            .await
            .unwrap();
        outbox
            .enqueue(
                &key,
                "laoshan",
                "qingdao-ip-2017",
                &[value("2018Q1", 1.0), value("2018Q2", 2.0)],
                false,
            )
            .await
            .unwrap();
        outbox
            .dead_letter(1, "REASON_NOTHING_VALID", "all refused")
            .await
            .unwrap();
        let dead = outbox.dead_letters().await.unwrap();
        assert_eq!(
            (dead.len(), dead[0].seq, dead[0].reason.as_str()),
            (1, 1, "REASON_NOTHING_VALID")
        );
        assert_eq!(
            outbox.pending(10).await.unwrap().len(),
            1,
            "the report behind it still waits to go"
        );
        assert_eq!(outbox.retry_dead().await.unwrap(), 1);
        assert_eq!(
            outbox
                .pending(10)
                .await
                .unwrap()
                .iter()
                .map(|p| p.seq)
                .collect::<Vec<_>>(),
            [1, 2]
        );
    }
}

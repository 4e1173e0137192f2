//! Building reports: change detection, seq and revision allocation, signing, the size and
//! age limits; re-signing under a new seq.

use super::*;

/// Waiting reports read at once when their signatures' identity is checked at start.
pub const IDENTITY_PAGE: i64 = 1000;

impl Outbox {
    /// Builds, signs and commits one report per period for the items that changed (all items
    /// with `force`), issued now by the outbox's clock (provisional reports in a new outbox; see the
    /// module docs). Nothing is sent here.
    pub async fn enqueue(
        &self,
        signer: Signer<'_>,
        items: &[Item],
        force: bool,
    ) -> Result<Enqueued, OutboxError> {
        let now = self.clock.now_ms();
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let mut changed: Vec<&Item> = Vec::new();
        let mut unchanged = 0;
        let mut refused_before = 0;
        for item in items {
            let (kind, subject, fingerprint) = identity(item);
            let period = item.period().to_string();
            // The newest of the last queued fingerprint and the last accepted one, by revision:
            // a queued report older than one the centre accepted since (stuck, refused for
            // now) does not count. A provisional report (negative seq) is the newest.
            let last: Option<String> = sqlx::query_scalar(
                "SELECT fingerprint FROM ( \
                   SELECT fingerprint, CASE WHEN seq < 0 THEN 9223372036854775807 ELSE revision END AS newness, 1 AS queued \
                     FROM (SELECT fingerprint, seq, revision FROM pending_items WHERE kind = $1 AND subject = $2 AND period = $3 ORDER BY rowid DESC LIMIT 1) \
                   UNION ALL \
                   SELECT fingerprint, revision, 0 FROM last_sent WHERE kind = $1 AND subject = $2 AND period = $3) \
                 ORDER BY newness DESC, queued DESC LIMIT 1",
            )
            .bind(kind)
            .bind(&subject)
            .bind(&period)
            .fetch_optional(&mut *tx)
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
                .insert_report(&mut tx, signer, &period, &items, (now, None), now)
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
    pub(super) async fn insert_report(
        &self,
        tx: &mut SqliteConnection,
        signer: Signer<'_>,
        period: &str,
        items: &[&Item],
        (issued_at_ms, keep_revision): (i64, Option<i64>),
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
            let revision: i64 = match keep_revision {
                Some(revision) => revision,
                None => sqlx::query_scalar("INSERT INTO period_revision (period, next_revision) VALUES ($1, 1) ON CONFLICT (period) DO UPDATE SET next_revision = next_revision + 1 RETURNING next_revision - 1")
                    .bind(period)
                    .fetch_one(&mut *tx)
                    .await?,
            };
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
            sqlx::query("INSERT OR REPLACE INTO pending_items (seq, kind, subject, period, fingerprint, item_index, revision) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                .bind(seq)
                .bind(kind)
                .bind(&subject)
                .bind(period)
                .bind(&fingerprint)
                .bind(*counter)
                .bind(revision)
                .execute(&mut *tx)
                .await?;
            *counter += 1;
        }
        Ok((seq, dropped))
    }

    /// Enforces the byte and age limits before `incoming` more bytes are stored.
    pub(super) async fn make_room(
        &self,
        tx: &mut SqliteConnection,
        incoming: u64,
    ) -> Result<u64, OutboxError> {
        let max_bytes = self.config.max_bytes;
        let mut dropped = 0;
        if self.config.when_full == WhenFull::DropOldest {
            let cutoff = self.clock.now_ms() - self.config.max_age.as_millis() as i64;
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
            let bytes: i64 =
                sqlx::query_scalar("SELECT value FROM meta WHERE key = 'outbox_bytes'")
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

    /// Re-signs the items of the waiting report `seq` as a new report (a new seq, report id and
    /// revision, the same `issued_at`) under `signer`, and removes the old one. For a report
    /// whose seq the centre already holds under another report, or one signed for another
    /// unit, plan or key than the configuration now names. Returns the new seq, or `None` when
    /// `seq` is not waiting.
    pub async fn rebuild(&self, seq: i64, signer: Signer<'_>) -> Result<Option<i64>, OutboxError> {
        self.rebuild_stamped(seq, signer, None).await
    }

    /// As [`Outbox::rebuild`], issued now, with its own revision: for a report signed while
    /// this agent's clock was ahead, which the centre refuses as issued in the future until
    /// that time comes. It is the same report issued again, not a correction: a later report
    /// for its period, accepted meanwhile, stays current at the centre.
    pub async fn restamp(&self, seq: i64, signer: Signer<'_>) -> Result<Option<i64>, OutboxError> {
        let now = self.clock.now_ms();
        self.rebuild_stamped(seq, signer, Some(now)).await
    }

    async fn rebuild_stamped(
        &self,
        seq: i64,
        signer: Signer<'_>,
        issued_at_ms: Option<i64>,
    ) -> Result<Option<i64>, OutboxError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let new_seq = self.rebuild_in(&mut tx, seq, signer, issued_at_ms).await?;
        tx.commit().await?;
        Ok(new_seq)
    }

    /// Re-signs `seq` inside `tx`: issued at `issued_at_ms` with the old report's revision,
    /// else at the old report's time with a new revision.
    pub(super) async fn rebuild_in(
        &self,
        tx: &mut SqliteConnection,
        seq: i64,
        signer: Signer<'_>,
        issued_at_ms: Option<i64>,
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
                match issued_at_ms {
                    Some(now) => (now, Some(i64::from(report.revision))),
                    None => (report.issued_at_ms, None),
                },
                created_at_ms,
            )
            .await?;
        Ok(Some(new_seq))
    }

    /// The waiting reports signed for another unit, plan or key than `signer`'s (read
    /// [`IDENTITY_PAGE`] at a time); a report of
    /// the same unit and plan signed by one of the `also` key ids (the key a rotation replaced)
    /// is not one of them.
    pub async fn signed_for_others(
        &self,
        signer: Signer<'_>,
        also: &[String],
    ) -> Result<Vec<i64>, OutboxError> {
        let key_id = signer.key.key_id().to_string();
        let mut out = Vec::new();
        // A page at a time: a backlog of 100,000 reports read at once held every envelope in
        // memory together (about 60 MB) at each start.
        let mut after = 0i64;
        loop {
            let rows = sqlx::query(
                "SELECT seq, envelope FROM outbox WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(after)
            .bind(IDENTITY_PAGE)
            .fetch_all(&self.pool)
            .await?;
            for row in &rows {
                let seq: i64 = row.try_get(0)?;
                let (unit, audience, key) = envelope_identity(&row.try_get::<Vec<u8>, _>(1)?);
                if unit != signer.unit
                    || audience != signer.audience
                    || (key != key_id && !also.contains(&key))
                {
                    out.push(seq);
                }
                after = seq;
            }
            if rows.len() < IDENTITY_PAGE as usize {
                return Ok(out);
            }
        }
    }
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
pub(super) fn identity(item: &Item) -> (&'static str, String, String) {
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

pub(super) fn build_report(
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

/// The report inside a payload this agent signed (it decodes its own bytes, never a peer's).
pub(super) fn decode_report(payload: &[u8]) -> Option<pb::Report> {
    pb::Report::decode(payload).ok()
}

/// `(unit, audience, key id)` a stored envelope was signed for.
pub(super) fn envelope_identity(bytes: &[u8]) -> (String, String, String) {
    let envelope = pb::SignedReport::decode(bytes).unwrap_or_default();
    let report = decode_report(&envelope.payload).unwrap_or_default();
    let key_id = KeyId::from_slice(&envelope.key_id)
        .map(|k| k.to_string())
        .unwrap_or_default();
    (report.unit_id, report.audience, key_id)
}

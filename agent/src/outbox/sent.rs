//! What delivery needs: the reports to send, acknowledgements, attempts, dead letters and
//! refusals.

use super::*;

/// Reports acknowledged per statement (SQLite allows 32,766 bound values).
const ACK_CHUNK: usize = 500;

impl Outbox {
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
    /// items the centre refused, which are recorded with their code and message. A batch is
    /// acknowledged with a few statements whatever its size (the refused items aside).
    pub async fn ack(&self, acks: &[Ack]) -> Result<(), OutboxError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        for ack in acks.iter().filter(|ack| !ack.refused.is_empty()) {
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
                    Refused {
                        seq: ack.seq,
                        period: period.as_deref().unwrap_or_default(),
                        item: &item,
                        code,
                        message,
                        in_dead_letter: false,
                        at_ms: self.clock.now_ms(),
                    },
                )
                .await?;
            }
        }
        // In seq order across chunks too: see below.
        let mut acks: Vec<&Ack> = acks.iter().collect();
        acks.sort_by_key(|ack| ack.seq);
        for chunk in acks.chunks(ACK_CHUNK) {
            let seqs = (1..=chunk.len())
                .map(|n| format!("${n}"))
                .collect::<Vec<_>>()
                .join(", ");
            // In seq order, so that of two acknowledged reports carrying the same item the
            // later one's fingerprint is the one remembered; and an older report (a lower
            // revision) acknowledged after a newer one (it was refused for a while) does not
            // replace the newer's.
            for sql in [
                format!(
                    "INSERT INTO last_sent (kind, subject, period, fingerprint, revision) SELECT kind, subject, period, fingerprint, revision FROM pending_items WHERE seq IN ({seqs}) ORDER BY seq ON CONFLICT (kind, subject, period) DO UPDATE SET fingerprint = excluded.fingerprint, revision = excluded.revision WHERE excluded.revision >= last_sent.revision"
                ),
                format!("DELETE FROM pending_items WHERE seq IN ({seqs})"),
                format!("DELETE FROM outbox WHERE seq IN ({seqs})"),
            ] {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                for ack in chunk {
                    query = query.bind(ack.seq);
                }
                query.execute(&mut *tx).await?;
            }
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
        let now = self.clock.now_ms();
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let period: String = sqlx::query_scalar("SELECT period FROM outbox WHERE seq = $1")
            .bind(seq)
            .fetch_optional(&mut *tx)
            .await?
            .unwrap_or_default();
        if refused.is_empty() {
            let refused = Refused {
                seq,
                period: &period,
                item: "report",
                code: reason,
                message,
                in_dead_letter: true,
                at_ms: now,
            };
            record_refusal(&mut tx, refused).await?;
        }
        for (kind, index, code, message) in refused {
            let item = item_name(&mut tx, seq, kind, *index).await?;
            let refused = Refused {
                seq,
                period: &period,
                item: &item,
                code,
                message,
                in_dead_letter: true,
                at_ms: now,
            };
            record_refusal(&mut tx, refused).await?;
        }
        // Refused as they are: its items are not built again until they change.
        sqlx::query("INSERT OR REPLACE INTO refused_items (kind, subject, period, fingerprint) SELECT kind, subject, period, fingerprint FROM pending_items WHERE seq = $1")
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT OR REPLACE INTO dead_letters (seq, report_id, period, envelope, bytes, created_at_ms, failed_at_ms, reason, message) SELECT seq, report_id, period, envelope, bytes, created_at_ms, $2, $3, $4 FROM outbox WHERE seq = $1")
            .bind(seq)
            .bind(now)
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
}

/// One refusal of the centre, as recorded for `outbox dead`.
pub(super) struct Refused<'a> {
    pub seq: i64,
    pub period: &'a str,
    pub item: &'a str,
    pub code: &'a str,
    pub message: &'a str,
    pub in_dead_letter: bool,
    pub at_ms: i64,
}

pub(super) async fn record_refusal(
    tx: &mut SqliteConnection,
    r: Refused<'_>,
) -> Result<(), OutboxError> {
    sqlx::query("INSERT INTO refusals (seq, period, item, code, message, at_ms, in_dead_letter) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(r.seq)
        .bind(r.period)
        .bind(r.item)
        .bind(r.code)
        .bind(r.message)
        .bind(r.at_ms)
        .bind(i64::from(r.in_dead_letter))
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// "value <indicator>" or "task <task>/<milestone>" for the item at `index` of report `seq`.
pub(super) async fn item_name(
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

pub(super) fn pending_row(row: &SqliteRow) -> Result<Pending, OutboxError> {
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

//! Filing the centre's answers to a batch: acknowledgements, refusals kept as dead letters,
//! holds for identity problems, retries for "not yet", and reports re-signed after a seq replay.

use super::*;

/// "value <indicator>" or "task <task>/<milestone>" of a refusal, from the report sent.
pub(super) fn item_label(report: &pb::Report, refusal: &pb::Refusal) -> String {
    let index = refusal.index as usize;
    match refusal.kind() {
        pb::ItemKind::TaskUpdate => report
            .task_updates
            .get(index)
            .map(|t| format!("task {}/{}", t.task_id, t.milestone_id)),
        _ => report
            .values
            .get(index)
            .map(|v| format!("value {}", v.indicator_id)),
    }
    .unwrap_or_else(|| format!("item #{index}"))
}

pub(super) fn refused_items(result: &pb::SubmitResult) -> Vec<(&'static str, u32, String, String)> {
    result
        .refusals
        .iter()
        .map(|r| {
            let kind = match r.kind() {
                pb::ItemKind::TaskUpdate => "task",
                _ => "value",
            };
            let code = r.code().as_str_name();
            let code = code.strip_prefix("REFUSAL_").unwrap_or(code).to_owned();
            (kind, r.index, code, r.message.clone())
        })
        .collect()
}

/// How far behind a refused report's issue time this agent's clock must be for the report to
/// count as signed while the clock was ahead (and be signed again, issued now).
const CLOCK_PUT_BACK_MS: i64 = 60_000;

impl Deliverer {
    pub(super) async fn file_results(
        &mut self,
        pending: &[crate::outbox::Pending],
        results: Vec<pb::SubmitResult>,
    ) -> Result<Step, DeliverError> {
        self.metrics
            .last_success_timestamp_seconds
            .set(jiff::Timestamp::now().as_second());
        let mut acks = Vec::new();
        let mut dead = 0;
        let mut retry = false;
        let mut hold: Option<String> = None;
        let mut replays = Vec::new();
        let mut resign = Vec::new();
        let mut restamp = Vec::new();
        for (row, result) in pending.iter().zip(&results) {
            let report = pb::Report::decode(row.envelope.payload.as_slice()).unwrap_or_default();
            for refusal in &result.refusals {
                self.metrics
                    .items_refused
                    .with_label_values(&[refusal
                        .code()
                        .as_str_name()
                        .strip_prefix("REFUSAL_")
                        .unwrap_or_default()])
                    .inc();
                tracing::warn!(seq = row.seq, period = %report.period, item = %item_label(&report, refusal), code = refusal.code().as_str_name(), message = %refusal.message, "the centre refused an item");
            }
            let reason = result.reason();
            match result.outcome() {
                pb::Outcome::Accepted | pb::Outcome::Duplicate | pb::Outcome::Partial => {
                    let label = match result.outcome() {
                        pb::Outcome::Accepted => "accepted",
                        pb::Outcome::Duplicate => "duplicate",
                        _ => "partial",
                    };
                    self.metrics.sent.with_label_values(&[label]).inc();
                    acks.push(Ack {
                        seq: row.seq,
                        refused: refused_items(result),
                    });
                }
                // Signed by a key the agent no longer uses (a rotation), which the centre has
                // revoked or which expired since: signed again with the current key.
                _ if matches!(
                    reason,
                    pb::ReasonCode::ReasonKeyRevoked | pb::ReasonCode::ReasonKeyExpired
                ) && row.envelope.key_id
                    != self.identity.key.current().key_id().as_bytes().to_vec() =>
                {
                    resign.push(row.seq)
                }
                _ if IDENTITY_REASONS.contains(&reason) => {
                    self.metrics
                        .failed
                        .with_label_values(&["held_identity"])
                        .inc();
                    self.outbox
                        .note_attempt(&[row.seq], &result.message)
                        .await?;
                    hold.get_or_insert_with(|| {
                        format!(
                            "the centre refuses this agent's reports: {}: {}",
                            duban_proto::reasons::name(reason),
                            result.message
                        )
                    });
                }
                // Signed while this agent's clock was ahead, which has been put right since:
                // the report claims a time not come yet and would wait for it; signed again,
                // issued now.
                _ if reason == pb::ReasonCode::ReasonIssuedInFuture
                    && report.issued_at_ms > self.clock.now_ms() + CLOCK_PUT_BACK_MS =>
                {
                    restamp.push(row.seq)
                }
                _ if duban_proto::reasons::is_retryable(reason) => {
                    self.metrics
                        .failed
                        .with_label_values(&["rejected_retryable"])
                        .inc();
                    tracing::warn!(seq = row.seq, reason = duban_proto::reasons::name(reason), message = %result.message, "refused for now; will retry");
                    self.outbox
                        .note_attempt(&[row.seq], &result.message)
                        .await?;
                    retry = true;
                }
                _ if reason == pb::ReasonCode::ReasonSeqReplay => replays.push(row.seq),
                _ => {
                    self.metrics
                        .failed
                        .with_label_values(&["rejected_permanent"])
                        .inc();
                    tracing::error!(seq = row.seq, period = %report.period, reason = duban_proto::reasons::name(reason), message = %result.message, "refused permanently; moved to dead letters (duban-agent outbox dead)");
                    self.outbox
                        .dead_letter(
                            row.seq,
                            duban_proto::reasons::name(reason),
                            &result.message,
                            &refused_items(result),
                        )
                        .await?;
                    dead += 1;
                }
            }
        }
        if results.len() < pending.len() {
            tracing::error!(
                sent = pending.len(),
                answered = results.len(),
                "the aggregator answered fewer results than reports; the rest stay in the outbox"
            );
        }
        self.outbox.ack(&acks).await?;
        self.batch = self.max_batch;
        if !replays.is_empty() {
            dead += self.rebuild_replays(&replays).await?;
        }
        for &seq in &restamp {
            let new_seq = self
                .outbox
                .restamp(seq, self.identity.signer(&self.identity.key.current()))
                .await?;
            tracing::warn!(
                old_seq = seq,
                ?new_seq,
                "signed while this agent's clock was ahead (refused ISSUED_IN_FUTURE); signed again, issued now"
            );
        }
        for &seq in &resign {
            let new_seq = self
                .outbox
                .rebuild(seq, self.identity.signer(&self.identity.key.current()))
                .await?;
            tracing::info!(
                old_seq = seq,
                ?new_seq,
                "signed with a previous key the centre no longer accepts; signed again with the current key"
            );
        }
        if let Some(why) = hold {
            return Ok(Step::Wait(self.hold(why)));
        }
        self.release();
        if retry {
            return Ok(Step::Wait(self.backoff(BACKOFF_CAP)));
        }
        self.attempt = 0;
        Ok(Step::Progress {
            acked: acks.len(),
            dead,
        })
    }

    /// Re-signs reports whose seq the centre already holds: the counters are raised by a
    /// Hello first, so the new seqs are beyond the centre's. A replay of a seq above what the
    /// centre says it holds cannot be explained, and goes to the dead letters. Returns how
    /// many were dead-lettered.
    pub(super) async fn rebuild_replays(&mut self, seqs: &[i64]) -> Result<usize, DeliverError> {
        let max_seq = match self.hello().await? {
            HelloOutcome::Known(result) => result.max_seq,
            _ => {
                tracing::warn!(
                    "a seq was replayed but the centre's counters could not be read; retrying later"
                );
                return Ok(0);
            }
        };
        let mut dead = 0;
        for &seq in seqs {
            if u64::try_from(seq).is_ok_and(|s| s <= max_seq) {
                let new_seq = self
                    .outbox
                    .rebuild(seq, self.identity.signer(&self.identity.key.current()))
                    .await?;
                tracing::warn!(
                    old_seq = seq,
                    ?new_seq,
                    centre_max_seq = max_seq,
                    "the centre already holds this seq under another report (a lost outbox?); re-signed under a new seq"
                );
            } else {
                self.outbox
                    .dead_letter(
                        seq,
                        "SEQ_REPLAY",
                        "the centre holds this seq under another report, beyond the highest seq it reports for this key",
                        &[],
                    )
                    .await?;
                dead += 1;
            }
        }
        Ok(dead)
    }
}

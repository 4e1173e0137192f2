//! The ingest path: verify, validate, reconcile, in the order docs/PROTOCOL.md fixes.
//!
//! For every envelope: size caps, payload type, key known and usable, the signature over the
//! received bytes (batched across the calls in flight, with `verify_strict`'s answers: see
//! [`verifier`]), decode, binding checks (key and unit against the registry and the TLS
//! identity, audience, `issued_at` not in the future), then validation against the plan item
//! by item. What survives goes to the store in one call, which classifies duplicates,
//! conflicts and replays. Only a store failure fails the whole call (gRPC `UNAVAILABLE`);
//! everything else is a per-report result.

mod hello;
pub mod respond;
pub mod validate;
mod verifier;

use std::sync::Arc;
use std::time::Instant;

use duban_proto::envelope::{self, PendingSignature, VerifyError};
use duban_proto::{KeyId, pb};
use sha2::{Digest, Sha256};

pub use crate::codes::*;
pub use hello::HelloAnswer;

use crate::app::App;
use crate::clock::Clock;
use crate::keys::{KeyRegistry, RegisteredKey};
use crate::metrics::Metrics;
use crate::plan::Plan;
use crate::store::{AnyStore, NewReport, Store, StoreError, StoreOutcome};

/// How far ahead of the server clock `issued_at_ms` may be.
pub const MAX_FUTURE_MS: i64 = 5 * 60 * 1000;

#[derive(Clone)]
pub struct Ingestor {
    inner: Arc<Inner>,
}

struct Inner {
    plan: Arc<Plan>,
    keys: Arc<KeyRegistry>,
    store: AnyStore,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    verifier: verifier::Verifier,
    /// The progress view shared with `/metrics` and the alert evaluator (for `OpenAlerts`).
    views: Arc<crate::app::ViewCache>,
}

impl std::fmt::Debug for Ingestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ingestor(plan {})", self.inner.plan.id)
    }
}

/// One envelope after the checks that need no database.
enum Prepared {
    Ready {
        report: Box<NewReport>,
        refusals: Vec<Refusal>,
    },
    Done(ReportResult),
}

impl Ingestor {
    pub fn new(app: &App) -> Self {
        Ingestor {
            inner: Arc::new(Inner {
                plan: app.plan.clone(),
                keys: app.keys.clone(),
                store: app.store.clone(),
                clock: app.clock.clone(),
                metrics: app.metrics.clone(),
                verifier: verifier::Verifier::new(app.metrics.clone()),
                views: app.views.clone(),
            }),
        }
    }

    /// Answers an agent's Hello (see [`hello`]): whether its reports would be accepted, and the
    /// state the centre holds for its key. Only a store failure is an error.
    pub async fn hello(
        &self,
        signed: pb::SignedReport,
        tls_unit: Option<String>,
    ) -> Result<HelloAnswer, StoreError> {
        let answer = self.inner.hello(&signed, tls_unit.as_deref()).await?;
        if answer.known {
            self.inner.metrics.hellos.with_label_values(&["ok"]).inc();
        } else {
            self.inner
                .metrics
                .hellos
                .with_label_values(&["problem"])
                .inc();
            let problems: Vec<String> = answer
                .problems
                .iter()
                .map(|(reason, message)| format!("{}: {message}", reason.name()))
                .collect();
            tracing::warn!(key_unit = %answer.key_unit, certificate_unit = tls_unit.as_deref().unwrap_or("-"), key_id = %hex::encode(&signed.key_id), ?problems, "an agent's Hello found problems: its reports would be refused");
        }
        Ok(answer)
    }

    /// Records one signed statement about an alert case (see [`respond`]). Only a store
    /// failure is an error.
    pub async fn respond(
        &self,
        signed: pb::SignedReport,
        tls_unit: Option<String>,
    ) -> Result<ReportResult, StoreError> {
        let (result, kind) = self.inner.respond(&signed, tls_unit.as_deref()).await?;
        let label = match result.outcome {
            Outcome::Accepted | Outcome::Partial => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::Rejected(reason) => reason.name(),
        };
        self.inner
            .metrics
            .statements
            .with_label_values(&[kind, label])
            .inc();
        if let Outcome::Rejected(reason) = result.outcome {
            tracing::warn!(reason = reason.name(), kind, key_id = %hex::encode(&signed.key_id), message = %result.message, "statement refused");
        }
        Ok(result)
    }

    /// The open alert cases that concern the caller of `OpenAlerts`.
    pub async fn open_alerts(
        &self,
        signed: pb::SignedReport,
        tls_unit: Option<String>,
    ) -> Result<respond::CaseList, StoreError> {
        self.inner.open_alerts(&signed, tls_unit.as_deref()).await
    }

    /// Handles one call's envelopes. `tls_unit` is the unit named by the client certificate
    /// when TLS is on. One result per envelope, in order.
    pub async fn submit(
        &self,
        envelopes: Vec<pb::SignedReport>,
        tls_unit: Option<String>,
    ) -> Result<Vec<ReportResult>, StoreError> {
        let started = Instant::now();
        let metrics = &self.inner.metrics;
        metrics.received.inc_by(envelopes.len() as u64);
        // Who sent each envelope, for the log lines of refusals (the key id as sent).
        let senders: Vec<Vec<u8>> = envelopes.iter().map(|e| e.key_id.clone()).collect();
        let prepared = self
            .inner
            .prepare_all(&envelopes, tls_unit.as_deref())
            .await;

        let mut ready = Vec::new();
        let mut refusals_of_ready = Vec::new();
        let mut results: Vec<Option<ReportResult>> = Vec::with_capacity(prepared.len());
        for item in prepared {
            match item {
                Prepared::Ready { report, refusals } => {
                    ready.push(*report);
                    refusals_of_ready.push(refusals);
                    results.push(None);
                }
                Prepared::Done(result) => results.push(Some(result)),
            }
        }

        // What `finish` needs of each report, kept so that the reports themselves (payloads
        // included) move into the store without a copy.
        let identities: Vec<Identity> = ready.iter().map(Identity::of).collect();
        let store_started = Instant::now();
        let outcomes = match self.inner.store.ingest(ready).await {
            Ok(outcomes) => outcomes,
            Err(error) => {
                metrics.store_errors.inc();
                tracing::error!(%error, "store failed; answering UNAVAILABLE");
                return Err(error);
            }
        };
        metrics
            .store_seconds
            .observe(store_started.elapsed().as_secs_f64());

        let mut stored = identities.into_iter().zip(refusals_of_ready).zip(outcomes);
        let results: Vec<ReportResult> = results
            .into_iter()
            .map(|slot| {
                slot.unwrap_or_else(|| {
                    let ((report, refusals), outcome) =
                        stored.next().expect("one outcome per ready report");
                    self.inner.finish(report, refusals, outcome)
                })
            })
            .collect();
        for (result, key_id) in results.iter().zip(&senders) {
            self.inner.count(result, key_id, tls_unit.as_deref());
        }
        metrics
            .ingest_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(results)
    }
}

pub(crate) fn verify_reason(error: &VerifyError) -> Reason {
    match error {
        VerifyError::PayloadTooLarge { .. } => Reason::PayloadTooLarge,
        VerifyError::PayloadTypeTooLong { .. } | VerifyError::WrongPayloadType { .. } => {
            Reason::BadPayloadType
        }
        VerifyError::BadKeyIdLength { .. } | VerifyError::KeyIdMismatch { .. } => Reason::BadKeyId,
        VerifyError::BadSignatureLength { .. } | VerifyError::BadSignature => Reason::BadSignature,
        VerifyError::MalformedPayload(_) => Reason::MalformedPayload,
    }
}

/// What a signed payload (a report, a statement) says about who signed it, for whom and when.
pub(crate) struct Binding<'a> {
    /// "report" or "statement", for the messages.
    pub what: &'static str,
    pub key_id: &'a [u8],
    pub unit_id: &'a str,
    pub audience: &'a str,
    pub issued_at_ms: i64,
    pub seq: u64,
}

impl Inner {
    /// The binding checks of docs/PROTOCOL.md, in order: the payload names the envelope's key,
    /// the key's unit and the client certificate's unit, this plan, a time not ahead of the
    /// centre's clock, and a seq in range.
    pub(crate) fn check_binding(
        &self,
        b: &Binding<'_>,
        key_id: &KeyId,
        key_unit: &str,
        tls_unit: Option<&str>,
        now: i64,
    ) -> Result<(), (Reason, String)> {
        let what = b.what;
        if b.key_id != key_id.as_bytes() {
            return Err((
                Reason::KeyMismatch,
                format!("the signed {what} names another key than the envelope"),
            ));
        }
        if b.unit_id != key_unit {
            return Err((
                Reason::UnitMismatch,
                format!(
                    "{what} is from unit {:?} but key {key_id} belongs to {key_unit:?}",
                    b.unit_id
                ),
            ));
        }
        if let Some(tls_unit) = tls_unit.filter(|u| *u != b.unit_id) {
            return Err((
                Reason::UnitMismatch,
                format!(
                    "{what} is from unit {:?} but the client certificate names {tls_unit:?}",
                    b.unit_id
                ),
            ));
        }
        if b.audience != self.plan.id {
            return Err((
                Reason::WrongAudience,
                format!(
                    "audience {:?} is not this deployment's plan {:?}",
                    b.audience, self.plan.id
                ),
            ));
        }
        if b.issued_at_ms > now.saturating_add(MAX_FUTURE_MS) {
            return Err((
                Reason::IssuedInFuture,
                format!(
                    "issued_at_ms {} is more than 5 minutes ahead of the server clock ({now})",
                    b.issued_at_ms
                ),
            ));
        }
        if b.seq == 0 || b.seq > i64::MAX as u64 {
            return Err((
                Reason::MalformedPayload,
                format!("seq {} is outside 1 .. 2^63-1", b.seq),
            ));
        }
        Ok(())
    }

    /// Checks a call's envelopes: the cheap checks and the key of each, then every signature
    /// in one batch (shared with the other calls in flight, see [`verifier`]), then decoding,
    /// binding and validation of those whose signature verified. One answer per envelope.
    async fn prepare_all(
        &self,
        envelopes: &[pb::SignedReport],
        tls_unit: Option<&str>,
    ) -> Vec<Prepared> {
        let now = self.clock.now_ms();
        let looked: Vec<Result<Found, Failure>> =
            envelopes.iter().map(|e| self.lookup(e, now)).collect();
        let pending: Vec<PendingSignature> = looked
            .iter()
            .zip(envelopes)
            .filter_map(|(found, signed)| {
                let found = found.as_ref().ok()?;
                Some(PendingSignature {
                    message: envelope::signed_message(signed),
                    signature: found.signature,
                    key: found.key.public_key.clone(),
                })
            })
            .collect();
        let mut verdicts = self.verifier.verify(pending).await.into_iter();
        looked
            .into_iter()
            .zip(envelopes)
            .map(|(found, signed)| {
                let checked = found.and_then(|Found { key_id, key, .. }| {
                    if verdicts.next() != Some(true) {
                        self.metrics.signature_failures.inc();
                        let error = VerifyError::BadSignature;
                        return Err((Vec::new(), verify_reason(&error), error.to_string()));
                    }
                    self.check_verified(signed, key_id, &key, tls_unit, now)
                });
                match checked {
                    Ok(ready) => ready,
                    Err((report_id, reason, message)) => {
                        Prepared::Done(ReportResult::rejected(report_id, reason, message))
                    }
                }
            })
            .collect()
    }

    /// The checks before the signature: sizes and payload type, then the key, registered and
    /// usable now.
    fn lookup(&self, signed: &pb::SignedReport, now: i64) -> Result<Found, Failure> {
        let fail = |reason, message: String| (Vec::new(), reason, message);
        let key_id =
            envelope::precheck(signed).map_err(|e| fail(verify_reason(&e), e.to_string()))?;
        let key = self.keys.lookup(&key_id).ok_or_else(|| {
            fail(
                Reason::UnknownKey,
                format!("key {key_id} is not registered"),
            )
        })?;
        key.check_usable(now).map_err(|reason| {
            fail(
                reason,
                format!("key {key_id} of unit {:?}: {}", key.unit_id, reason.name()),
            )
        })?;
        let signature = signed.signature.as_slice().try_into().map_err(|_| {
            let error = VerifyError::BadSignatureLength {
                len: signed.signature.len(),
            };
            fail(verify_reason(&error), error.to_string())
        })?;
        Ok(Found {
            key_id,
            key,
            signature,
        })
    }

    /// The checks after the signature verified: decoding, binding, validation.
    fn check_verified(
        &self,
        signed: &pb::SignedReport,
        key_id: KeyId,
        key: &RegisteredKey,
        tls_unit: Option<&str>,
        now: i64,
    ) -> Result<Prepared, Failure> {
        let fail = |reason, message: String| (Vec::new(), reason, message);
        self.metrics.payloads_decoded.inc();
        let report =
            envelope::decode_payload(signed).map_err(|e| fail(verify_reason(&e), e.to_string()))?;
        let report_id = report.report_id.clone();
        let fail = |reason, message: String| (report_id.clone(), reason, message);
        let report_id16: [u8; 16] = report.report_id.as_slice().try_into().map_err(|_| {
            fail(
                Reason::BadReportId,
                format!(
                    "report_id is {} bytes; it must be 16",
                    report.report_id.len()
                ),
            )
        })?;
        self.check_binding(
            &Binding {
                what: "report",
                key_id: &report.key_id,
                unit_id: &report.unit_id,
                audience: &report.audience,
                issued_at_ms: report.issued_at_ms,
                seq: report.seq,
            },
            &key_id,
            &key.unit_id,
            tls_unit,
            now,
        )
        .map_err(|(reason, message)| fail(reason, message))?;
        let period = validate::check_report_fields(&self.plan, &report)
            .map_err(|(reason, message)| fail(reason, message))?;
        let validated = validate::validate_items(&self.plan, &report.unit_id, &period, &report);
        if validated.values.is_empty() && validated.task_updates.is_empty() {
            let message = if validated.refusals.is_empty() {
                "the report has no values and no task updates".to_owned()
            } else {
                format!("all {} items were refused", validated.refusals.len())
            };
            return Ok(Prepared::Done(ReportResult {
                report_id,
                outcome: Outcome::Rejected(Reason::NothingValid),
                message,
                refusals: validated.refusals,
            }));
        }
        let new = NewReport {
            plan_id: self.plan.id.clone(),
            unit_id: report.unit_id.clone(),
            report_id: report_id16,
            key_id,
            seq: report.seq,
            issued_at_ms: report.issued_at_ms,
            received_at_ms: now,
            period: period.to_string(),
            revision: report.revision,
            payload: signed.payload.clone(),
            payload_type: signed.payload_type.clone(),
            signature: signed.signature.clone(),
            payload_sha256: Sha256::digest(&signed.payload).into(),
            values: validated.values,
            task_updates: validated.task_updates,
            refused_count: validated.refusals.len() as u32,
        };
        Ok(Prepared::Ready {
            report: Box::new(new),
            refusals: validated.refusals,
        })
    }

    fn finish(
        &self,
        report: Identity,
        refusals: Vec<Refusal>,
        outcome: StoreOutcome,
    ) -> ReportResult {
        let report_id = report.report_id.to_vec();
        match outcome {
            StoreOutcome::Stored { seq_gap, .. } => {
                if seq_gap > 0 {
                    self.metrics.seq_gaps.inc_by(seq_gap);
                    tracing::info!(unit = %report.unit_id, key_id = %report.key_id, seq = report.seq, gap = seq_gap, "seq gap");
                }
                let outcome = if refusals.is_empty() {
                    Outcome::Accepted
                } else {
                    Outcome::Partial
                };
                let message = if refusals.is_empty() {
                    "stored".to_owned()
                } else {
                    format!("stored; {} items refused", refusals.len())
                };
                ReportResult {
                    report_id,
                    outcome,
                    message,
                    refusals,
                }
            }
            StoreOutcome::Duplicate => ReportResult {
                report_id,
                outcome: Outcome::Duplicate,
                message: "already stored with the same bytes".into(),
                refusals,
            },
            StoreOutcome::Conflict => {
                self.metrics
                    .security_events
                    .with_label_values(&["report_id_conflict"])
                    .inc();
                tracing::warn!(unit = %report.unit_id, key_id = %report.key_id, report_id = %hex::encode(report.report_id), "security event: report id reused with different bytes");
                ReportResult::rejected(
                    report_id,
                    Reason::ReportIdConflict,
                    "this report id was stored with different bytes",
                )
            }
            StoreOutcome::Replay { existing_report_id } => {
                self.metrics
                    .security_events
                    .with_label_values(&["seq_replay"])
                    .inc();
                tracing::warn!(unit = %report.unit_id, key_id = %report.key_id, seq = report.seq, "security event: seq replayed under another report id");
                ReportResult::rejected(
                    report_id,
                    Reason::SeqReplay,
                    format!(
                        "seq {} of this key was used by report {}",
                        report.seq,
                        hex::encode(existing_report_id)
                    ),
                )
            }
        }
    }

    /// The unit a key is registered to, for log lines ("?" when unknown).
    fn unit_of_key(&self, key_id: &[u8]) -> String {
        KeyId::from_slice(key_id)
            .ok()
            .and_then(|id| self.keys.lookup(&id))
            .map(|k| k.unit_id)
            .unwrap_or_else(|| "?".to_owned())
    }

    fn count(&self, result: &ReportResult, key_id: &[u8], tls_unit: Option<&str>) {
        let m = &self.metrics;
        match result.outcome {
            Outcome::Accepted => m.accepted.inc(),
            Outcome::Partial => m.partial.inc(),
            Outcome::Duplicate => m.duplicate.inc(),
            Outcome::Rejected(reason) => {
                m.rejected.with_label_values(&[reason.name()]).inc();
                let items: Vec<String> = result
                    .refusals
                    .iter()
                    .map(|r| format!("#{} {}: {}", r.index, r.code.name(), r.message))
                    .collect();
                tracing::info!(reason = reason.name(), key_unit = %self.unit_of_key(key_id), certificate_unit = tls_unit.unwrap_or("-"), key_id = %hex::encode(key_id), report_id = %hex::encode(&result.report_id), message = %result.message, items = ?items, "report rejected");
            }
        }
        if result.outcome == Outcome::Partial {
            for r in &result.refusals {
                tracing::info!(key_unit = %self.unit_of_key(key_id), report_id = %hex::encode(&result.report_id), index = r.index, code = r.code.name(), message = %r.message, "item refused in a stored report");
            }
        }
        if result.outcome != Outcome::Duplicate {
            for refusal in &result.refusals {
                let kind = match refusal.kind {
                    ItemKind::Value => "value",
                    ItemKind::TaskUpdate => "task_update",
                };
                m.refused_items
                    .with_label_values(&[kind, refusal.code.name()])
                    .inc();
            }
        }
    }
}

/// An envelope's key, found registered and usable, and its signature.
struct Found {
    key_id: KeyId,
    key: RegisteredKey,
    signature: [u8; envelope::SIGNATURE_LEN],
}

/// Why an envelope was refused: its report id (empty before decoding), reason and message.
type Failure = (Vec<u8>, Reason, String);

/// The fields of a stored report that its result and the logs need.
struct Identity {
    report_id: [u8; 16],
    unit_id: String,
    key_id: KeyId,
    seq: u64,
}

impl Identity {
    fn of(report: &NewReport) -> Self {
        Identity {
            report_id: report.report_id,
            unit_id: report.unit_id.clone(),
            key_id: report.key_id,
            seq: report.seq,
        }
    }
}

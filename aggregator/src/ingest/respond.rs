//! A statement about an alert case (`Respond`): checked like a report, then against the record.
//!
//! Order: size caps and payload type, the key known and usable, `verify_strict`, decode; the
//! binding checks of reports (statement id, then `Inner::check_binding`: key, unit of the key
//! and of the certificate, audience, clock, seq), the unit in the plan; the statement's own fields (kind, dates, texts); then who may say it:
//! the case must have been alerted (`UNKNOWN_ALERT`), an answer must come from a unit the alert
//! was sent to (`NOT_A_RECIPIENT`), a decision from the supervising office
//! (`NOT_THE_OFFICE`) about an open request or claim (`NOTHING_TO_DECIDE`). Only then is it
//! stored, where `(unit, statement_id)` and `(key, seq)` decide new, duplicate and replay.

use duban_proto::envelope::{self, RESPONSE_PAYLOAD_TYPE};
use duban_proto::pb;
use pb::StatementKind as K;

use super::{Binding, Inner, Outcome, Reason, ReportResult, verify_reason};
use crate::alerting::rules::case_of;
use crate::progress::cases::{self, Case};
use crate::store::{NewStatement, StatementOutcome, Store, StoreError};

/// Longest `note`, and longest `reference`, in bytes.
pub const MAX_NOTE: usize = 1024;
pub const MAX_REFERENCE: usize = 256;

/// The stored name of a kind.
pub fn kind_name(kind: K) -> Option<&'static str> {
    Some(match kind {
        K::Unspecified => return None,
        K::Acknowledge => cases::ACKNOWLEDGE,
        K::Explain => cases::EXPLAIN,
        K::RequestExtension => cases::REQUEST_EXTENSION,
        K::ClaimDone => cases::CLAIM_DONE,
        K::GrantExtension => cases::GRANT_EXTENSION,
        K::RefuseExtension => cases::REFUSE_EXTENSION,
        K::ConfirmDone => cases::CONFIRM_DONE,
        K::RejectDone => cases::REJECT_DONE,
    })
}

type Refused = (Reason, String);

impl Inner {
    pub(super) async fn respond(
        &self,
        signed: &pb::SignedReport,
        tls_unit: Option<&str>,
    ) -> Result<(ReportResult, &'static str), StoreError> {
        let now = self.clock.now_ms();
        let statement = match self.check_statement(signed, tls_unit, now) {
            Ok(s) => s,
            Err((id, (reason, message))) => {
                return Ok((ReportResult::rejected(id, reason, message), "unspecified"));
            }
        };
        let id = statement.statement_id.clone();
        let kind = kind_name(statement.kind()).expect("checked");
        let about_unit = match self.authorise(&statement, kind, now).await? {
            Ok(about) => about,
            Err((reason, message)) => {
                return Ok((ReportResult::rejected(id, reason, message), kind));
            }
        };
        let new = NewStatement {
            plan_id: self.plan.id.clone(),
            unit_id: statement.unit_id.clone(),
            statement_id: id.clone(),
            key_id: statement.key_id.clone(),
            seq: statement.seq as i64,
            issued_at_ms: statement.issued_at_ms,
            received_at_ms: now,
            case_id: statement.case_id.clone(),
            kind: kind.to_owned(),
            date: statement.date.clone(),
            note: statement.note.clone(),
            reference: statement.reference.clone(),
            about_unit,
            payload: signed.payload.clone(),
            signature: signed.signature.clone(),
        };
        let result = match self.store.add_statement(&new).await? {
            StatementOutcome::Stored => ReportResult {
                report_id: id,
                outcome: Outcome::Accepted,
                message: format!("{kind} on {} recorded", new.case_id),
                refusals: Vec::new(),
            },
            StatementOutcome::Duplicate => ReportResult {
                report_id: id,
                outcome: Outcome::Duplicate,
                message: "already recorded".into(),
                refusals: Vec::new(),
            },
            StatementOutcome::IdConflict => ReportResult::rejected(
                id,
                Reason::ReportIdConflict,
                "this statement id was recorded before with other content",
            ),
            StatementOutcome::SeqReplay => ReportResult::rejected(
                id,
                Reason::SeqReplay,
                format!(
                    "seq {} of this key is already used by another statement",
                    new.seq
                ),
            ),
        };
        Ok((result, kind))
    }

    /// Everything that needs no database, in the order of the module doc.
    fn check_statement(
        &self,
        signed: &pb::SignedReport,
        tls_unit: Option<&str>,
        now: i64,
    ) -> Result<pb::Statement, (Vec<u8>, Refused)> {
        let fail = |reason, message: String| (Vec::new(), (reason, message));
        let key_id = envelope::precheck_as(signed, RESPONSE_PAYLOAD_TYPE)
            .map_err(|e| fail(verify_reason(&e), e.to_string()))?;
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
        if let Err(error) = envelope::verify_signature(signed, &key.public_key) {
            self.metrics.signature_failures.inc();
            return Err(fail(verify_reason(&error), error.to_string()));
        }
        self.metrics.payloads_decoded.inc();
        let s = envelope::decode_statement(signed)
            .map_err(|e| fail(verify_reason(&e), e.to_string()))?;
        let id = s.statement_id.clone();
        let fail = |reason, message: String| (id.clone(), (reason, message));
        if s.statement_id.len() != 16 {
            return Err(fail(
                Reason::BadReportId,
                format!(
                    "statement_id is {} bytes; it must be 16",
                    s.statement_id.len()
                ),
            ));
        }
        self.check_binding(
            &Binding {
                what: "statement",
                key_id: &s.key_id,
                unit_id: &s.unit_id,
                audience: &s.audience,
                issued_at_ms: s.issued_at_ms,
                seq: s.seq,
            },
            &key_id,
            &key.unit_id,
            tls_unit,
            now,
        )
        .map_err(|(reason, message)| fail(reason, message))?;
        if self.plan.unit(&s.unit_id).is_none() {
            return Err(fail(
                Reason::UnknownUnit,
                format!("unit {:?} is not in plan {}", s.unit_id, self.plan.id),
            ));
        }
        self.check_fields(&s, now)
            .map_err(|(reason, message)| fail(reason, message))?;
        Ok(s)
    }

    /// The kind, the dates and the texts each kind needs.
    fn check_fields(&self, s: &pb::Statement, now: i64) -> Result<(), Refused> {
        let bad = |message: String| Err((Reason::BadStatement, message));
        let Some(kind) = kind_name(s.kind()) else {
            return bad(format!("kind {} is not a statement kind", s.kind));
        };
        if s.note.len() > MAX_NOTE {
            return bad(format!(
                "note is {} bytes; at most {MAX_NOTE}",
                s.note.len()
            ));
        }
        if s.reference.len() > MAX_REFERENCE {
            return bad(format!(
                "reference is {} bytes; at most {MAX_REFERENCE}",
                s.reference.len()
            ));
        }
        if s.case_id.is_empty() || s.case_id.len() > 256 {
            return bad("case_id must name the alert case (its `case` annotation)".into());
        }
        let needs_note = matches!(kind, cases::EXPLAIN | cases::REQUEST_EXTENSION);
        if needs_note && s.note.trim().is_empty() {
            return bad(format!(
                "{kind} needs a note: the reason (and the measures taken)"
            ));
        }
        if kind == cases::CLAIM_DONE && s.reference.trim().is_empty() {
            return bad("claim_done needs a reference: a document number, a URL or a note".into());
        }
        let needs_date = matches!(kind, cases::EXPLAIN | cases::REQUEST_EXTENSION);
        if needs_date || !s.date.is_empty() {
            let today = crate::progress::date_of_ms(now, &self.plan.tz);
            match s.date.parse::<jiff::civil::Date>() {
                Err(_) => {
                    return Err((
                        Reason::BadDate,
                        format!("{kind} needs a date YYYY-MM-DD, got {:?}", s.date),
                    ));
                }
                Ok(date) if date < today => {
                    return Err((
                        Reason::BadDate,
                        format!(
                            "{} is in the past (today is {today} in {})",
                            s.date, self.plan.time_zone
                        ),
                    ));
                }
                Ok(_) => {}
            }
        }
        Ok(())
    }

    /// Who may say what: the case alerted, an answer from a recipient, a decision from the
    /// office about something open. Returns the unit a decision is about.
    async fn authorise(
        &self,
        s: &pb::Statement,
        kind: &str,
        now: i64,
    ) -> Result<Result<String, Refused>, StoreError> {
        let alerts = self.store.alerts(&self.plan.id, 0).await?;
        let recipients: Vec<String> = alerts
            .iter()
            .filter(|a| case_of(&a.labels) == s.case_id)
            .filter_map(|a| a.labels.get("recipient").cloned())
            .collect();
        if recipients.is_empty() {
            return Ok(Err((
                Reason::UnknownAlert,
                format!(
                    "no alert of case {:?} was ever sent; `duban-agent alerts` lists the cases",
                    s.case_id
                ),
            )));
        }
        if !cases::DECISIONS.contains(&kind) {
            if !recipients.contains(&s.unit_id) {
                return Ok(Err((
                    Reason::NotARecipient,
                    format!(
                        "the alerts of case {:?} were sent to {}, not to {:?}: only they may answer",
                        s.case_id,
                        dedup(recipients).join(", "),
                        s.unit_id
                    ),
                )));
            }
            return Ok(Ok(String::new()));
        }
        let office = self.plan.supervision.office.as_deref();
        if office != Some(s.unit_id.as_str()) {
            return Ok(Err((
                Reason::NotTheOffice,
                match office {
                    Some(office) => format!(
                        "only the supervising office ({office}) may {kind}, not {:?}",
                        s.unit_id
                    ),
                    None => format!(
                        "plan {} names no supervising office ([supervision] office): nobody may {kind}",
                        self.plan.id
                    ),
                },
            )));
        }
        let record = self.store.statements(&self.plan.id, now).await?;
        let mut case = Case::default();
        for row in record.iter().filter(|r| r.case_id == s.case_id) {
            case.apply(row);
        }
        if !case.can_decide(kind) {
            return Ok(Err((
                Reason::NothingToDecide,
                format!(
                    "case {:?} has no open {}: nothing to {kind}",
                    s.case_id,
                    if matches!(kind, cases::GRANT_EXTENSION | cases::REFUSE_EXTENSION) {
                        "extension request"
                    } else {
                        "done claim"
                    }
                ),
            )));
        }
        let about = match kind {
            cases::GRANT_EXTENSION | cases::REFUSE_EXTENSION => case.extension_requested,
            _ => case.done_claimed,
        };
        Ok(Ok(about.map(|p| p.unit).unwrap_or_default()))
    }
}

fn dedup(mut units: Vec<String>) -> Vec<String> {
    units.sort_unstable();
    units.dedup();
    units
}

/// One case of the open-alerts list, before it becomes a wire message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaseView {
    pub case_id: String,
    pub alertname: String,
    pub severity: String,
    pub summary: String,
    pub deadline: String,
    pub original_deadline: String,
    pub escalation_level: u32,
    pub recipients: Vec<String>,
    pub record: Vec<String>,
    pub open: bool,
}

/// The answer to `OpenAlerts`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaseList {
    pub unit_id: String,
    pub office: bool,
    pub cases: Vec<CaseView>,
    /// Why the caller was not recognised (then `cases` is empty).
    pub problems: Vec<String>,
}

impl Inner {
    /// The open alert cases that concern the caller (all of them for the office), with their
    /// record. The caller proves who it is with a signed Hello.
    pub(super) async fn open_alerts(
        &self,
        signed: &pb::SignedReport,
        tls_unit: Option<&str>,
    ) -> Result<CaseList, StoreError> {
        let hello = self.hello(signed, tls_unit).await?;
        if !hello.known {
            return Ok(CaseList {
                problems: hello
                    .problems
                    .into_iter()
                    .map(|(r, m)| format!("{}: {m}", r.name()))
                    .collect(),
                ..Default::default()
            });
        }
        let unit = hello.key_unit;
        let office = self.plan.supervision.office.as_deref() == Some(unit.as_str());
        let now = self.clock.now_ms();
        let alerts = self.store.alerts(&self.plan.id, now).await?;
        let view = self
            .views
            .view(
                &self.store,
                &self.plan,
                &self.metrics,
                now,
                crate::app::VIEW_CLOCK_MS,
            )
            .await?;
        let progress = &view.progress;
        let mut by_case: std::collections::BTreeMap<String, CaseView> = Default::default();
        for alert in alerts.iter().filter(|a| a.ends_at_ms.is_none()) {
            let case_id = case_of(&alert.labels);
            let label = |k: &str| alert.labels.get(k).cloned().unwrap_or_default();
            let view = by_case.entry(case_id.clone()).or_insert_with(|| CaseView {
                case_id: case_id.clone(),
                alertname: label("alertname"),
                severity: label("severity"),
                summary: alert
                    .annotations
                    .get("summary")
                    .cloned()
                    .unwrap_or_default(),
                escalation_level: label("escalation_level").parse().unwrap_or(1),
                open: true,
                ..Default::default()
            });
            view.recipients.push(label("recipient"));
        }
        let date = |ms: i64| crate::progress::date_of_ms(ms - 1, &self.plan.tz).to_string();
        by_case.retain(|_, v| office || v.recipients.contains(&unit));
        // The obligation behind each report case, found in one pass over the plan's.
        let mut obligations: std::collections::HashMap<String, &crate::progress::Obligation> =
            Default::default();
        if by_case.keys().any(|id| id.starts_with("report/")) {
            for o in progress.obligations.iter() {
                let id = cases::report_case(&o.indicator, &o.period, &o.unit);
                if by_case.contains_key(&id) {
                    obligations.entry(id).or_insert(o);
                }
            }
        }
        let mut cases: Vec<CaseView> = by_case
            .into_values()
            .map(|mut v| {
                v.recipients = dedup(std::mem::take(&mut v.recipients));
                if let Some(o) = obligations.get(&v.case_id) {
                    v.deadline = date(o.due_ms);
                    v.original_deadline = date(o.original_due_ms.unwrap_or(o.due_ms));
                } else if let Some(m) = progress
                    .milestones
                    .iter()
                    .find(|m| cases::milestone_case(&m.task, &m.milestone) == v.case_id)
                {
                    v.deadline = date(m.deadline_ms);
                    v.original_deadline = date(m.original_deadline_ms.unwrap_or(m.deadline_ms));
                }
                if let Some(case) = progress.cases.get(&v.case_id) {
                    v.record = case
                        .record
                        .iter()
                        .map(|r| record_line(r, &self.plan.tz))
                        .collect();
                }
                v
            })
            .collect();
        cases.sort_by(|a, b| a.case_id.cmp(&b.case_id));
        Ok(CaseList {
            unit_id: unit,
            office,
            cases,
            problems: Vec::new(),
        })
    }
}

/// "2018-05-02 laoshan request_extension 2018-06-30: 原因", one line of a case's record.
pub fn record_line(r: &crate::store::StatementRow, tz: &jiff::tz::TimeZone) -> String {
    let mut line = format!(
        "{} {} {}",
        crate::progress::date_of_ms(r.received_at_ms, tz),
        r.unit_id,
        r.kind
    );
    if !r.about_unit.is_empty() {
        line.push_str(&format!(" ({})", r.about_unit));
    }
    if !r.date.is_empty() {
        line.push_str(&format!(" {}", r.date));
    }
    for text in [&r.reference, &r.note] {
        if !text.is_empty() {
            line.push_str(&format!(": {text}"));
        }
    }
    line
}

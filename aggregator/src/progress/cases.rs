//! The 督办 record of each alert case, folded from the signed statements in the order received:
//! who acknowledged and when, the extension asked for and the one granted, the done claim and
//! its confirmation. The engine applies it (a granted date moves the deadline of that
//! obligation or milestone; a confirmed claim makes a milestone done from the claim), the
//! alert rules read it (acknowledged, escalation), and the ingest path asks it whether a
//! decision has anything to decide.
//!
//! Case ids name the subject of an alert, the same for every recipient and severity:
//! `report/<indicator>/<period>/<unit>`, `milestone/<task>/<milestone>`,
//! `indicator/<indicator>`.

use std::collections::BTreeMap;

use jiff::civil::Date;
use serde::Serialize;

pub use super::input::StatementRow;

/// Statement kinds, as stored and as the CLI spells them.
pub const ACKNOWLEDGE: &str = "acknowledge";
pub const EXPLAIN: &str = "explain";
pub const REQUEST_EXTENSION: &str = "request_extension";
pub const CLAIM_DONE: &str = "claim_done";
pub const GRANT_EXTENSION: &str = "grant_extension";
pub const REFUSE_EXTENSION: &str = "refuse_extension";
pub const CONFIRM_DONE: &str = "confirm_done";
pub const REJECT_DONE: &str = "reject_done";

/// Every kind, in the wire enum's order.
pub const KINDS: [&str; 8] = [
    ACKNOWLEDGE,
    EXPLAIN,
    REQUEST_EXTENSION,
    CLAIM_DONE,
    GRANT_EXTENSION,
    REFUSE_EXTENSION,
    CONFIRM_DONE,
    REJECT_DONE,
];

/// The kinds only the supervising office may state.
pub const DECISIONS: [&str; 4] = [GRANT_EXTENSION, REFUSE_EXTENSION, CONFIRM_DONE, REJECT_DONE];

pub fn report_case(indicator: &str, period: &str, unit: &str) -> String {
    format!("report/{indicator}/{period}/{unit}")
}
pub fn milestone_case(task: &str, milestone: &str) -> String {
    format!("milestone/{task}/{milestone}")
}
pub fn indicator_case(indicator: &str) -> String {
    format!("indicator/{indicator}")
}

/// A request or claim waiting for the office.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pending {
    pub unit: String,
    pub at_ms: i64,
    /// The date asked for (extension) or empty (claim).
    pub date: String,
    /// The reason (extension) or the reference (claim).
    pub text: String,
}

/// One case's record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Case {
    /// `(unit, received_at_ms)` of each acknowledgement, oldest first.
    pub acknowledged: Vec<(String, i64)>,
    /// The first answer of any kind from a recipient, `received_at_ms`.
    pub first_answer_ms: Option<i64>,
    /// The last explanation: its date (expected finish) and text.
    pub explained: Option<Pending>,
    pub extension_requested: Option<Pending>,
    /// The deadline granted last, in force.
    pub extended_to: Option<Date>,
    pub extended_at_ms: Option<i64>,
    pub done_claimed: Option<Pending>,
    /// When the confirmed claim was made: the milestone counts as done from then.
    pub done_confirmed_ms: Option<i64>,
    pub extensions_requested: u32,
    pub extensions_granted: u32,
    pub extensions_refused: u32,
    pub claims_confirmed: u32,
    pub claims_rejected: u32,
    /// Every statement about the case, oldest first.
    pub record: Vec<StatementRow>,
}

/// Folds statements (in the order received) into their cases.
pub fn cases(statements: &[StatementRow]) -> BTreeMap<String, Case> {
    cases_by(statements, i64::MAX)
}

/// [`cases`] from the statements received by `now_ms` only (a reused snapshot may hold
/// statements received after the instant progress is computed for).
pub fn cases_by(statements: &[StatementRow], now_ms: i64) -> BTreeMap<String, Case> {
    let mut out: BTreeMap<String, Case> = BTreeMap::new();
    for s in statements.iter().filter(|s| s.received_at_ms <= now_ms) {
        let case = out.entry(s.case_id.clone()).or_default();
        case.apply(s);
    }
    out
}

impl Case {
    /// What one statement changes. Decisions that find nothing to decide change nothing (the
    /// ingest path refuses them before they are stored).
    pub fn apply(&mut self, s: &StatementRow) {
        let pending = || Pending {
            unit: s.unit_id.clone(),
            at_ms: s.received_at_ms,
            date: s.date.clone(),
            text: if s.kind == CLAIM_DONE {
                s.reference.clone()
            } else {
                s.note.clone()
            },
        };
        if !DECISIONS.contains(&s.kind.as_str()) && self.first_answer_ms.is_none() {
            self.first_answer_ms = Some(s.received_at_ms);
        }
        match s.kind.as_str() {
            ACKNOWLEDGE => self
                .acknowledged
                .push((s.unit_id.clone(), s.received_at_ms)),
            EXPLAIN => self.explained = Some(pending()),
            REQUEST_EXTENSION => {
                self.extension_requested = Some(pending());
                self.extensions_requested += 1;
            }
            CLAIM_DONE => {
                self.done_claimed = Some(pending());
                self.done_confirmed_ms = None;
            }
            GRANT_EXTENSION => {
                if let Some(asked) = self.extension_requested.take() {
                    // The office may grant another date than the one asked for.
                    let date = if s.date.is_empty() {
                        asked.date
                    } else {
                        s.date.clone()
                    };
                    self.extended_to = date.parse().ok();
                    self.extended_at_ms = Some(s.received_at_ms);
                    self.extensions_granted += 1;
                }
            }
            REFUSE_EXTENSION if self.extension_requested.take().is_some() => {
                self.extensions_refused += 1;
            }
            CONFIRM_DONE => {
                if let Some(claim) = self.done_claimed.take() {
                    self.done_confirmed_ms = Some(claim.at_ms);
                    self.claims_confirmed += 1;
                }
            }
            REJECT_DONE if self.done_claimed.take().is_some() => {
                self.claims_rejected += 1;
            }
            _ => {}
        }
        self.record.push(s.clone());
    }

    /// Whether `kind`, a decision, has something to decide.
    pub fn can_decide(&self, kind: &str) -> bool {
        match kind {
            GRANT_EXTENSION | REFUSE_EXTENSION => self.extension_requested.is_some(),
            CONFIRM_DONE | REJECT_DONE => self.done_claimed.is_some(),
            _ => false,
        }
    }

    /// The last acknowledgement, if any.
    pub fn last_ack(&self) -> Option<&(String, i64)> {
        self.acknowledged.last()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(unit: &str, kind: &str, at_ms: i64, date: &str) -> StatementRow {
        StatementRow {
            unit_id: unit.into(),
            seq: at_ms,
            issued_at_ms: at_ms,
            received_at_ms: at_ms,
            case_id: "milestone/t1/m1".into(),
            kind: kind.into(),
            date: date.into(),
            note: "原因".into(),
            reference: "青知办〔2018〕3号".into(),
            about_unit: String::new(),
        }
    }

    #[test]
    fn a_granted_extension_sets_the_date_and_a_refused_one_changes_nothing() {
        let all = cases(&[
            said("u", ACKNOWLEDGE, 1, ""),
            said("u", REQUEST_EXTENSION, 2, "2020-06-30"),
            said("office", REFUSE_EXTENSION, 3, ""),
            said("u", REQUEST_EXTENSION, 4, "2020-05-31"),
            said("office", GRANT_EXTENSION, 5, ""),
        ]);
        let case = &all["milestone/t1/m1"];
        assert_eq!(case.first_answer_ms, Some(1));
        assert_eq!(case.acknowledged, [("u".to_owned(), 1)]);
        assert_eq!(case.extended_to, Some(jiff::civil::date(2020, 5, 31)));
        assert_eq!(
            (
                case.extensions_requested,
                case.extensions_granted,
                case.extensions_refused
            ),
            (2, 1, 1)
        );
        assert!(!case.can_decide(GRANT_EXTENSION), "nothing is pending");
        assert_eq!(case.record.len(), 5);
    }

    #[test]
    fn a_confirmed_claim_counts_from_the_claim_and_a_rejected_one_is_gone() {
        let mut case = Case::default();
        case.apply(&said("u", CLAIM_DONE, 10, ""));
        assert!(case.can_decide(CONFIRM_DONE));
        case.apply(&said("office", REJECT_DONE, 11, ""));
        assert_eq!(
            (case.done_claimed.clone(), case.done_confirmed_ms),
            (None, None)
        );
        case.apply(&said("u", CLAIM_DONE, 20, ""));
        case.apply(&said("office", CONFIRM_DONE, 30, ""));
        assert_eq!(case.done_confirmed_ms, Some(20));
        assert_eq!((case.claims_confirmed, case.claims_rejected), (1, 1));
        // A decision is not an answer: the first answer is the unit's.
        assert_eq!(case.first_answer_ms, Some(10));
    }
}

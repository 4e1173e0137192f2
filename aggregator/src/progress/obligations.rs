//! Reporting obligations: who owes which report by when, whether it came on time, and how an
//! outage of the centre extends a deadline.

use super::*;

/// After an outage of the centre that covered a deadline, how long units have to deliver what
/// they signed before the deadline.
pub const OUTAGE_GRACE_MS: i64 = DAY_MS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ObligationStatus {
    NotDue,
    OnTime,
    Late,
    Overdue,
}

#[derive(Debug, Clone, Serialize)]
pub struct Obligation {
    pub unit: Name,
    pub indicator: Name,
    pub period: Name,
    pub due_ms: i64,
    /// The plan's deadline, when the office granted this unit another (`due_ms`).
    pub original_due_ms: Option<i64>,
    /// When the centre was down at `due_ms`: the end of that outage plus the grace period.
    /// Reports signed before `due_ms` and received by then are on time, and a missing report
    /// is not overdue before it.
    pub extended_to_ms: Option<i64>,
    pub status: ObligationStatus,
    pub received_ms: Option<i64>,
}

impl Obligation {
    /// The deadline after which a missing report is overdue.
    pub fn overdue_after_ms(&self) -> i64 {
        self.extended_to_ms.unwrap_or(self.due_ms)
    }
}

/// The status of one obligation: `received` is (first received, first signed).
pub fn obligation_status(
    due_ms: i64,
    extended_to_ms: Option<i64>,
    received: Option<(i64, i64)>,
    now_ms: i64,
) -> ObligationStatus {
    match (received, extended_to_ms) {
        (Some((at, _)), _) if at < due_ms => ObligationStatus::OnTime,
        (Some((at, signed)), Some(until)) if signed < due_ms && at <= until => {
            ObligationStatus::OnTime
        }
        (Some(_), _) => ObligationStatus::Late,
        (None, until) if now_ms < until.unwrap_or(due_ms) => ObligationStatus::NotDue,
        (None, _) => ObligationStatus::Overdue,
    }
}

/// The outage-extended deadline for `due_ms`, when an outage covers it.
pub fn extended_deadline(outages: &[Outage], due_ms: i64) -> Option<i64> {
    outages
        .iter()
        .find(|o| o.from_ms <= due_ms && due_ms < o.to_ms)
        .map(|o| o.to_ms + OUTAGE_GRACE_MS)
}

/// The periods of `kind` that overlap the plan window, in order.
pub fn plan_periods(plan: &Plan, kind: PeriodType) -> Vec<Period> {
    let mut period = Period::containing(kind, plan.window.start);
    let mut out = Vec::new();
    while period.first_day() <= plan.window.end {
        out.push(period);
        period = period.next();
    }
    out
}

/// When a report for `period` of `indicator` is due: the end of the period's last day plus
/// `timely_days` days, midnight in the plan's time zone.
pub fn due_ms(plan: &Plan, indicator: &Indicator, period: &Period) -> i64 {
    let last = period.last_day();
    let due_date = last
        .checked_add(jiff::Span::new().days(i64::from(indicator.timely_days)))
        .unwrap_or(last);
    end_of_day_ms(due_date, &plan.tz)
}

//! Progress, completeness, timeliness and deadlines: pure functions of (plan, stored values,
//! now), with `now` injected and dates read in the plan's time zone.
//!
//! Semantics (docs/PROGRESS.md gives the same in prose):
//! - A reporting obligation is one reporter × indicator × period overlapping the plan. It is due
//!   at the end of the period's last day plus `timely_days` days (midnight, plan time zone). A
//!   value first received before that instant is on time, after it late; with nothing received
//!   the obligation is not due before the deadline and overdue after it.
//! - The centre's own outages do not count against units: when the centre was down at a
//!   deadline, a report signed before it and received by the end of the outage plus
//!   [`OUTAGE_GRACE_MS`] is on time, and a missing one is not overdue before then.
//! - Completeness = received / expected and timeliness = on time / expected (as DHIS2 defines
//!   them), where expected counts the obligations already due.
//! - An indicator's city value per period is the authoritative reporter's figure when present,
//!   else the sum over reporters; across periods: `sum` and `latest` take the latest period,
//!   `cumulative` adds every period, `annual_average` annualises the mean per-period value, and
//!   `ratio` divides the latest values of two indicators (no value when the denominator is
//!   missing or zero). The expected value runs in a straight line from the baseline at the plan
//!   start to the target at the target date.
//! - A milestone is lagging when its reported percent trails the elapsed fraction of its window
//!   by more than its tolerance, overdue when its window has closed and it is not done.

pub mod input;
mod time;

pub use time::{DAY_MS, date_of_ms, end_of_day_ms, start_of_day_ms};

use std::collections::{BTreeMap, HashMap};

use duban_proto::period::{Period, PeriodType};
use serde::Serialize;

use crate::plan::{Aggregation, Comparator, Indicator, Plan};
pub use input::{Outage, TaskRow, ValueRow};

/// After an outage of the centre that covered a deadline, how long units have to deliver what
/// they signed before the deadline.
pub const OUTAGE_GRACE_MS: i64 = DAY_MS;

/// The stored state the engine reads.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub values: Vec<ValueRow>,
    pub tasks: Vec<TaskRow>,
    /// When the centre was not serving (see `store::Outage`), oldest first.
    pub outages: Vec<Outage>,
}

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
    pub unit: String,
    pub indicator: String,
    pub period: String,
    pub due_ms: i64,
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

/// Received and on-time counts against what was expected by now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Rates {
    pub expected: u32,
    pub received: u32,
    pub on_time: u32,
}

impl Rates {
    pub fn completeness(&self) -> Option<f64> {
        (self.expected > 0).then(|| f64::from(self.received) / f64::from(self.expected))
    }
    pub fn timeliness(&self) -> Option<f64> {
        (self.expected > 0).then(|| f64::from(self.on_time) / f64::from(self.expected))
    }
    fn add(&mut self, obligation: &Obligation) {
        if obligation.status == ObligationStatus::NotDue {
            return;
        }
        self.expected += 1;
        match obligation.status {
            ObligationStatus::OnTime => {
                self.received += 1;
                self.on_time += 1;
            }
            ObligationStatus::Late => self.received += 1,
            _ => {}
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IndicatorStatus {
    NoData,
    /// A value without a target (an input such as the population): nothing to judge.
    NoTarget,
    Met,
    OnTrack,
    Lagging,
    Late,
}

impl IndicatorStatus {
    pub const ALL: [IndicatorStatus; 6] = [
        IndicatorStatus::Met,
        IndicatorStatus::OnTrack,
        IndicatorStatus::Lagging,
        IndicatorStatus::Late,
        IndicatorStatus::NoData,
        IndicatorStatus::NoTarget,
    ];
    pub fn name(self) -> &'static str {
        match self {
            IndicatorStatus::NoData => "no_data",
            IndicatorStatus::NoTarget => "no_target",
            IndicatorStatus::Met => "met",
            IndicatorStatus::OnTrack => "on_track",
            IndicatorStatus::Lagging => "lagging",
            IndicatorStatus::Late => "late",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct IndicatorProgress {
    pub indicator: String,
    pub value: Option<f64>,
    pub target: Option<f64>,
    pub baseline: Option<f64>,
    /// The straight path from baseline to target, at now.
    pub expected: Option<f64>,
    /// The path at the end of the latest period the value describes: what `status` judged the
    /// value against (a quarter not yet reported does not count against it).
    pub judged_expected: Option<f64>,
    /// The end of the latest period the value describes, in ms.
    pub value_as_of_ms: Option<i64>,
    pub progress_ratio: Option<f64>,
    pub status: IndicatorStatus,
    /// Authoritative total minus the sum of the other reporters, for the latest period where
    /// both exist.
    pub source_gap: Option<f64>,
    pub rates: Rates,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MilestoneStatus {
    NotStarted,
    OnTrack,
    Lagging,
    Overdue,
    Done,
}

impl MilestoneStatus {
    pub const ALL: [MilestoneStatus; 5] = [
        MilestoneStatus::NotStarted,
        MilestoneStatus::OnTrack,
        MilestoneStatus::Lagging,
        MilestoneStatus::Overdue,
        MilestoneStatus::Done,
    ];
    pub fn name(self) -> &'static str {
        match self {
            MilestoneStatus::NotStarted => "not_started",
            MilestoneStatus::OnTrack => "on_track",
            MilestoneStatus::Lagging => "lagging",
            MilestoneStatus::Overdue => "overdue",
            MilestoneStatus::Done => "done",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MilestoneProgress {
    pub task: String,
    pub milestone: String,
    pub start_ms: i64,
    pub deadline_ms: i64,
    /// Mean of each reporting unit's latest percent; `None` without any update.
    pub percent: Option<f64>,
    pub elapsed: f64,
    pub status: MilestoneStatus,
    /// Days since the window closed (0 when it has not).
    pub days_overdue: i64,
}

/// Everything the engine computes for one instant.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub now_ms: i64,
    pub obligations: Vec<Obligation>,
    pub indicators: Vec<IndicatorProgress>,
    pub milestones: Vec<MilestoneProgress>,
    pub by_unit: BTreeMap<String, Rates>,
    pub by_lead_unit: BTreeMap<String, Rates>,
    pub last_report_ms: BTreeMap<String, i64>,
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

pub fn compute(plan: &Plan, snapshot: &Snapshot, now_ms: i64) -> Progress {
    let mut values: HashMap<(&str, &str, &str), &ValueRow> = HashMap::new();
    let mut last_report_ms: BTreeMap<String, i64> = BTreeMap::new();
    for v in &snapshot.values {
        values.insert(
            (
                v.indicator_id.as_str(),
                v.unit_id.as_str(),
                v.period.as_str(),
            ),
            v,
        );
        let last = last_report_ms
            .entry(v.unit_id.clone())
            .or_insert(v.updated_at_ms);
        *last = (*last).max(v.updated_at_ms);
    }
    for t in &snapshot.tasks {
        let last = last_report_ms
            .entry(t.unit_id.clone())
            .or_insert(t.updated_at_ms);
        *last = (*last).max(t.updated_at_ms);
    }

    let mut obligations = Vec::new();
    let mut by_unit: BTreeMap<String, Rates> = BTreeMap::new();
    let mut by_lead_unit: BTreeMap<String, Rates> = BTreeMap::new();
    let mut indicators = Vec::new();
    for indicator in &plan.indicators {
        let mut rates = Rates::default();
        let periods = plan_periods(plan, indicator.period);
        for period in &periods {
            let period_text = period.to_string();
            let due = due_ms(plan, indicator, period);
            let extended_to_ms = extended_deadline(&snapshot.outages, due);
            for unit in &indicator.reporter_units {
                let received = values
                    .get(&(indicator.id.as_str(), unit.as_str(), period_text.as_str()))
                    .map(|v| (v.first_received_at_ms, v.first_issued_at_ms));
                let obligation = Obligation {
                    unit: unit.clone(),
                    indicator: indicator.id.clone(),
                    period: period_text.clone(),
                    due_ms: due,
                    extended_to_ms,
                    status: obligation_status(due, extended_to_ms, received, now_ms),
                    received_ms: received.map(|(at, _)| at),
                };
                rates.add(&obligation);
                by_unit.entry(unit.clone()).or_default().add(&obligation);
                for lead in &indicator.lead_units {
                    by_lead_unit
                        .entry(lead.clone())
                        .or_default()
                        .add(&obligation);
                }
                obligations.push(obligation);
            }
        }
        indicators.push(indicator_progress(plan, indicator, &values, now_ms, rates));
    }
    let milestones = plan
        .tasks
        .iter()
        .flat_map(|task| task.milestones.iter().map(move |m| (task, m)))
        .map(|(task, milestone)| {
            let start_ms = start_of_day_ms(milestone.window.start, &plan.tz);
            let deadline_ms = end_of_day_ms(milestone.window.end, &plan.tz);
            let mut latest: HashMap<&str, &TaskRow> = HashMap::new();
            for row in snapshot
                .tasks
                .iter()
                .filter(|r| r.task_id == task.id && r.milestone_id == milestone.id)
            {
                let entry = latest.entry(row.unit_id.as_str()).or_insert(row);
                if (row.period.as_str(), row.revision, row.issued_at_ms)
                    > (entry.period.as_str(), entry.revision, entry.issued_at_ms)
                {
                    *entry = row;
                }
            }
            // A unit that reports the milestone done has done its part, whatever percent
            // it gave with it.
            let percent = (!latest.is_empty()).then(|| {
                latest
                    .values()
                    .map(|r| if r.status == "done" { 100.0 } else { r.percent })
                    .sum::<f64>()
                    / latest.len() as f64
            });
            milestone_progress(
                task.id.clone(),
                milestone.id.clone(),
                start_ms,
                deadline_ms,
                percent,
                milestone.tolerance,
                now_ms,
            )
        })
        .collect();
    Progress {
        now_ms,
        obligations,
        indicators,
        milestones,
        by_unit,
        by_lead_unit,
        last_report_ms,
    }
}

/// The status of one milestone at `now_ms`.
pub fn milestone_progress(
    task: String,
    milestone: String,
    start_ms: i64,
    deadline_ms: i64,
    percent: Option<f64>,
    tolerance: f64,
    now_ms: i64,
) -> MilestoneProgress {
    let span = (deadline_ms - start_ms).max(1) as f64;
    let elapsed = ((now_ms - start_ms) as f64 / span).clamp(0.0, 1.0);
    let done = percent.is_some_and(|p| p >= 100.0);
    let status = if done {
        MilestoneStatus::Done
    } else if now_ms >= deadline_ms {
        MilestoneStatus::Overdue
    } else if now_ms < start_ms {
        MilestoneStatus::NotStarted
    } else if percent.unwrap_or(0.0) / 100.0 < elapsed - tolerance {
        MilestoneStatus::Lagging
    } else {
        MilestoneStatus::OnTrack
    };
    let days_overdue = if status == MilestoneStatus::Overdue {
        (now_ms - deadline_ms) / DAY_MS
    } else {
        0
    };
    MilestoneProgress {
        task,
        milestone,
        start_ms,
        deadline_ms,
        percent,
        elapsed,
        status,
        days_overdue,
    }
}

/// City value per period of one indicator: the authoritative figure, else the reporters' sum;
/// and whether the period is complete (the authoritative figure, or every reporter, is in).
fn city_values_with_completeness(
    indicator: &Indicator,
    values: &HashMap<(&str, &str, &str), &ValueRow>,
) -> BTreeMap<Period, (f64, bool)> {
    let mut per_period: BTreeMap<Period, (Option<f64>, f64, usize)> = BTreeMap::new();
    for ((id, unit, period), row) in values {
        if *id != indicator.id {
            continue;
        }
        let Ok(period) = period.parse::<Period>() else {
            continue;
        };
        let entry = per_period.entry(period).or_insert((None, 0.0, 0));
        if indicator.authoritative.as_deref() == Some(*unit) {
            entry.0 = Some(row.value);
        } else if indicator.reporter_units.iter().any(|u| u == unit) {
            entry.1 += row.value;
            entry.2 += 1;
        }
    }
    let others = indicator
        .reporter_units
        .iter()
        .filter(|u| indicator.authoritative.as_deref() != Some(u.as_str()))
        .count();
    per_period
        .into_iter()
        .filter_map(|(p, (auth, sum, n))| match auth {
            Some(v) => Some((p, (v, true))),
            None if n > 0 => Some((p, (sum, n >= others))),
            None => None,
        })
        .collect()
}

/// The periods a value is computed from: the complete ones, or, until one is complete, all.
/// A period that only some districts have reported yet would understate a sum.
fn settled(all: &BTreeMap<Period, (f64, bool)>) -> BTreeMap<Period, f64> {
    let any_complete = all.values().any(|(_, complete)| *complete);
    all.iter()
        .filter(|(_, (_, complete))| *complete || !any_complete)
        .map(|(p, (v, _))| (*p, *v))
        .collect()
}

/// City value per period of one indicator: the authoritative figure, else the reporters' sum.
fn city_values(
    indicator: &Indicator,
    values: &HashMap<(&str, &str, &str), &ValueRow>,
) -> BTreeMap<Period, f64> {
    city_values_with_completeness(indicator, values)
        .into_iter()
        .map(|(p, (v, _))| (p, v))
        .collect()
}

/// How many periods of `kind` make a year.
pub fn periods_per_year(kind: PeriodType) -> f64 {
    match kind {
        PeriodType::Month => 12.0,
        PeriodType::Quarter => 4.0,
        PeriodType::HalfYear => 2.0,
        PeriodType::Year => 1.0,
    }
}

/// The aggregated city value of an indicator from the values received so far.
pub fn aggregate(
    plan: &Plan,
    indicator: &Indicator,
    values: &HashMap<(&str, &str, &str), &ValueRow>,
) -> Option<f64> {
    let per_period = city_values_with_completeness(indicator, values);
    let settled = settled(&per_period);
    match &indicator.aggregation {
        Aggregation::Sum | Aggregation::Latest => settled.values().next_back().copied(),
        Aggregation::Cumulative => (!per_period.is_empty()).then(|| {
            per_period
                .iter()
                .filter(|(p, _)| plan.period_in_plan(p))
                .map(|(_, (v, _))| v)
                .sum()
        }),
        Aggregation::AnnualAverage => (!settled.is_empty()).then(|| {
            settled.values().sum::<f64>() / settled.len() as f64
                * periods_per_year(indicator.period)
        }),
        Aggregation::Ratio {
            numerator,
            denominator,
            scale,
        } => {
            let part = |id: &str| plan.indicator(id).and_then(|i| aggregate(plan, i, values));
            match (part(numerator), part(denominator)) {
                (Some(n), Some(d)) if d != 0.0 && d.is_finite() => Some(n / d * scale),
                _ => None,
            }
        }
    }
}

/// The end of the latest period the indicator's value is computed from (for a ratio, the
/// older of its two inputs'), in ms.
fn data_as_of_ms(
    plan: &Plan,
    indicator: &Indicator,
    values: &HashMap<(&str, &str, &str), &ValueRow>,
) -> Option<i64> {
    match &indicator.aggregation {
        Aggregation::Ratio {
            numerator,
            denominator,
            ..
        } => {
            let part = |id: &str| {
                plan.indicator(id)
                    .and_then(|i| data_as_of_ms(plan, i, values))
            };
            Some(part(numerator)?.min(part(denominator)?))
        }
        _ => settled(&city_values_with_completeness(indicator, values))
            .keys()
            .next_back()
            .map(|p| end_of_day_ms(p.last_day(), &plan.tz)),
    }
}

fn baseline(
    plan: &Plan,
    indicator: &Indicator,
    values: &HashMap<(&str, &str, &str), &ValueRow>,
) -> Option<f64> {
    if let Some(b) = indicator.baseline {
        return Some(b);
    }
    match &indicator.aggregation {
        Aggregation::Cumulative => Some(0.0),
        Aggregation::Ratio { .. } => None,
        _ => {
            let first = Period::containing(indicator.period, plan.window.start);
            city_values(indicator, values)
                .get(&first)
                .map(|v| match indicator.aggregation {
                    Aggregation::AnnualAverage => v * periods_per_year(indicator.period),
                    _ => *v,
                })
        }
    }
}

fn indicator_progress(
    plan: &Plan,
    indicator: &Indicator,
    values: &HashMap<(&str, &str, &str), &ValueRow>,
    now_ms: i64,
    rates: Rates,
) -> IndicatorProgress {
    let value = aggregate(plan, indicator, values);
    let baseline = baseline(plan, indicator, values);
    let target = indicator.target.as_ref();
    let start_ms = start_of_day_ms(plan.window.start, &plan.tz);
    // The straight line from the baseline at the plan start to the target at its date.
    let path_at = |at_ms: i64| match (target, baseline) {
        (Some(t), Some(b)) => {
            let end_ms = end_of_day_ms(t.date, &plan.tz);
            let fraction =
                ((at_ms - start_ms) as f64 / (end_ms - start_ms).max(1) as f64).clamp(0.0, 1.0);
            Some(b + (t.value - b) * fraction)
        }
        _ => None,
    };
    let expected = path_at(now_ms);
    let progress_ratio = match (target, value) {
        (Some(t), Some(v)) => {
            let b = baseline.unwrap_or(0.0);
            let span = t.value - b;
            Some(if span.abs() < f64::EPSILON {
                if t.is_met_by(v, indicator.tolerance) {
                    1.0
                } else {
                    0.0
                }
            } else {
                ((v - b) / span).clamp(0.0, 1.0)
            })
        }
        _ => None,
    };
    // The value describes the end of its latest reported period, not today: it is held
    // against the path at that date, so that a report not yet due does not look like a lag.
    let value_as_of_ms = data_as_of_ms(plan, indicator, values);
    let judged = match value_as_of_ms {
        Some(as_of) => path_at(as_of.min(now_ms)),
        None => expected,
    };
    let status = match (target, value) {
        (None, _) => IndicatorStatus::NoTarget,
        (_, None) => IndicatorStatus::NoData,
        (Some(t), Some(v)) => {
            let deadline_ms = end_of_day_ms(t.date, &plan.tz);
            let lower_is_better = matches!(t.comparator, Comparator::AtMost | Comparator::LessThan);
            if t.is_met_by(v, indicator.tolerance) {
                IndicatorStatus::Met
            } else if now_ms >= deadline_ms {
                IndicatorStatus::Late
            } else {
                match judged {
                    Some(e) if !lower_is_better && v < e - e.abs() * indicator.tolerance => {
                        IndicatorStatus::Lagging
                    }
                    Some(e) if lower_is_better && v > e + e.abs() * indicator.tolerance => {
                        IndicatorStatus::Lagging
                    }
                    _ => IndicatorStatus::OnTrack,
                }
            }
        }
    };
    let source_gap = indicator.authoritative.as_ref().and_then(|auth| {
        let mut by_period: BTreeMap<Period, (Option<f64>, Option<f64>)> = BTreeMap::new();
        for ((id, unit, period), row) in values {
            if *id != indicator.id {
                continue;
            }
            let Ok(period) = period.parse::<Period>() else {
                continue;
            };
            let entry = by_period.entry(period).or_default();
            if *unit == auth {
                entry.0 = Some(row.value);
            } else {
                entry.1 = Some(entry.1.unwrap_or(0.0) + row.value);
            }
        }
        by_period
            .values()
            .rev()
            .find_map(|(a, s)| Some((*a)? - (*s)?))
    });
    IndicatorProgress {
        indicator: indicator.id.clone(),
        value,
        target: target.map(|t| t.value),
        baseline,
        expected,
        judged_expected: judged,
        value_as_of_ms,
        progress_ratio,
        status,
        source_gap,
        rates,
    }
}

#[cfg(test)]
mod tests;

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
//! - Nothing is behind a plan before it exists: deadlines before the end of the plan's issue
//!   day move to it, milestone windows are measured from the issue day, and an indicator is
//!   not lagging or late before it.
//! - `about` and `between` targets are met by any value at or above their range (with a note
//!   when above it); a ratio's baseline is its inputs' baselines divided.

pub mod cases;
pub mod input;
mod time;

pub use time::{DAY_MS, date_of_ms, end_of_day_ms, start_of_day_ms};

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;

use duban_proto::period::{Period, PeriodType};
use serde::Serialize;

use crate::plan::{Aggregation, Comparator, Indicator, Plan};
pub use input::{Name, Names, Outage, StatementRow, TaskRow, ValueRow};

mod indicators;
mod milestones;
mod obligations;
mod update;

pub use indicators::*;
pub use milestones::*;
pub use obligations::*;
use update::Kept;
pub use update::{Changes, Computation, update};

/// The stored state the engine reads.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub values: Vec<ValueRow>,
    pub tasks: Vec<TaskRow>,
    /// When the centre was not serving (see `store::Outage`), oldest first.
    pub outages: Vec<Outage>,
    /// The 督办 statements, in the order received.
    pub statements: Vec<StatementRow>,
    /// Whether `values` and `tasks` are known to be in key order with one row per key, as
    /// [`Snapshot::in_key_order`] and [`Snapshot::apply_changes`] leave them (so that neither
    /// is checked at every write or computation). Rows changed any other way must come with
    /// `Order::default()` again.
    pub order: Order,
}

/// See [`Snapshot::order`]; the default is "not known".
#[derive(Debug, Default, Clone, Copy)]
pub struct Order {
    sorted: bool,
}

impl Snapshot {
    /// Takes in the current rows that changed since the snapshot was read (see
    /// `Store::changed_after`): a row replaces the one of its key, or joins the rest. Costs
    /// a binary search per changed row, and one pass over the rows when keys are new. Returns
    /// what changed, for [`update`].
    pub fn apply_changes(&mut self, values: Vec<ValueRow>, tasks: Vec<TaskRow>) -> Changes {
        let changes = Changes::of(&values, &tasks);
        let sorted = self.order.sorted;
        input::upsert_sorted(&mut self.values, values, sorted, |a, b| {
            value_key(a).cmp(&value_key(b))
        });
        input::upsert_sorted(&mut self.tasks, tasks, sorted, |a, b| {
            task_key(a).cmp(&task_key(b))
        });
        self.order.sorted = true;
        changes
    }

    /// The rows read whole from the store: `values` in key order, one per key (the store's
    /// primary key), as `Store::current_values` returns them; `tasks` put in key order here
    /// (a database's collation may sort text otherwise). Known to be in order, so that the
    /// first [`Snapshot::apply_changes`] does not walk millions of rows to find out.
    pub fn in_key_order(
        values: Vec<ValueRow>,
        mut tasks: Vec<TaskRow>,
        outages: Vec<Outage>,
        statements: Vec<StatementRow>,
    ) -> Snapshot {
        debug_assert!(values.is_sorted_by(|a, b| value_key(a) < value_key(b)));
        input::in_key_order(&mut tasks, |a, b| task_key(a).cmp(&task_key(b)));
        Snapshot {
            values,
            tasks,
            outages,
            statements,
            order: Order { sorted: true },
        }
    }
}

/// A current value's key, in the order of [`Snapshot::values`]: each part by its bytes.
fn value_key(v: &ValueRow) -> (&str, &str, &str) {
    (&v.indicator_id, &v.period, &v.unit_id)
}

/// A task update's key, in the order of [`Snapshot::tasks`].
fn task_key(t: &TaskRow) -> (&str, &str, &str, &str) {
    (&t.task_id, &t.milestone_id, &t.period, &t.unit_id)
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
        self.count(obligation.status, 1);
    }

    /// Counts what `other` counted.
    fn merge(&mut self, other: Rates) {
        self.expected += other.expected;
        self.received += other.received;
        self.on_time += other.on_time;
    }

    /// Takes back what [`Rates::add`] counted for an obligation of `status`.
    fn remove(&mut self, status: ObligationStatus) {
        self.count(status, u32::wrapping_neg(1));
    }

    fn count(&mut self, status: ObligationStatus, one: u32) {
        if status == ObligationStatus::NotDue {
            return;
        }
        self.expected = self.expected.wrapping_add(one);
        match status {
            ObligationStatus::OnTime => {
                self.received = self.received.wrapping_add(one);
                self.on_time = self.on_time.wrapping_add(one);
            }
            ObligationStatus::Late => self.received = self.received.wrapping_add(one),
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
    /// A remark on the status, e.g. a value above an `about` range, which counts as met.
    pub note: Option<String>,
    /// The city value of every period received (see [`series`]), oldest first: what the
    /// charts draw.
    pub series: Vec<SeriesPoint>,
}

/// One period's city value, with the straight path's value at the period's end.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesPoint {
    pub period: String,
    pub end_ms: i64,
    pub value: f64,
    pub expected: Option<f64>,
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
    /// The plan's deadline, when the office granted another (`deadline_ms`).
    pub original_deadline_ms: Option<i64>,
    /// A unit claims it done and the office has not decided yet.
    pub claimed: bool,
}

/// Everything the engine computes for one instant.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub now_ms: i64,
    /// Shared between the progress of views that did not change them: a copy of a progress
    /// (see [`update`]) copies them only when a changed value touches them.
    #[serde(serialize_with = "serialize_shared")]
    pub obligations: Arc<Vec<Obligation>>,
    pub indicators: Vec<IndicatorProgress>,
    pub milestones: Vec<MilestoneProgress>,
    pub by_unit: BTreeMap<String, Rates>,
    pub by_lead_unit: BTreeMap<String, Rates>,
    /// Each unit's latest `updated_at_ms` over its current values (one per key: a row
    /// replaced by a later one of its key does not count) and its task updates.
    pub last_report_ms: BTreeMap<String, i64>,
    /// The 督办 record per case id (see [`cases`]).
    pub cases: BTreeMap<String, cases::Case>,
    /// What [`update`] starts from.
    #[serde(skip)]
    kept: Kept,
}

/// What is shared serialized as itself.
fn serialize_shared<T: Serialize, S: serde::Serializer>(
    shared: &Arc<T>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    T::serialize(shared, serializer)
}

/// [`Progress`] without its obligations (one per reporter × indicator × period, millions in a
/// large plan), for `/api/v1/progress?obligations=false`: every other field as it is.
#[derive(Debug, Serialize)]
pub struct ProgressSummary<'a> {
    pub now_ms: i64,
    pub indicators: &'a [IndicatorProgress],
    pub milestones: &'a [MilestoneProgress],
    pub by_unit: &'a BTreeMap<String, Rates>,
    pub by_lead_unit: &'a BTreeMap<String, Rates>,
    pub last_report_ms: &'a BTreeMap<String, i64>,
    pub cases: &'a BTreeMap<String, cases::Case>,
}

impl Progress {
    pub fn summary(&self) -> ProgressSummary<'_> {
        let Progress {
            now_ms,
            obligations: _,
            indicators,
            milestones,
            by_unit,
            by_lead_unit,
            last_report_ms,
            cases,
            kept: _,
        } = self;
        ProgressSummary {
            now_ms: *now_ms,
            indicators,
            milestones,
            by_unit,
            by_lead_unit,
            last_report_ms,
            cases,
        }
    }
}

/// A reporting unit's counts in [`compute`].
struct Tally<'a> {
    unit: &'a str,
    rates: Rates,
    /// The latest `updated_at_ms` of the values its obligations hold.
    last_report_ms: Option<i64>,
}

pub fn compute<'a>(plan: &'a Plan, snapshot: &'a Snapshot, now_ms: i64) -> Progress {
    let cases = cases::cases_by(&snapshot.statements, now_ms);
    // The deadline granted for a case, at the end of that day.
    let granted = |case: &str| {
        cases
            .get(case)
            .and_then(|c| c.extended_to)
            .map(|d| end_of_day_ms(d, &plan.tz))
    };
    let values = Values::new(&snapshot.values, snapshot.order.sorted);
    let periods: Vec<Vec<Period>> = plan
        .indicators
        .iter()
        .map(|indicator| plan_periods(plan, indicator.period))
        .collect();
    let mut obligations = Vec::with_capacity(
        plan.indicators
            .iter()
            .zip(&periods)
            .map(|(indicator, periods)| indicator.reporter_units.len() * periods.len())
            .sum(),
    );
    let mut blocks = Vec::with_capacity(plan.indicators.len());
    let mut next_due_ms = i64::MAX;
    // Each unit's name made once, and its rates and last report counted in a slot found once
    // per indicator (not looked up by name per obligation); then put under the names, sorted.
    let mut names: FastMap<&str, (Name, usize)> = FastMap::default();
    let mut tallies: Vec<Tally> = Vec::new();
    // The last report of the rows no reporter's obligation holds, and of the task updates.
    let mut last_elsewhere: FastMap<&str, i64> = FastMap::default();
    let mut note = |unit: &'a str, at: i64| {
        let last = last_elsewhere.entry(unit).or_insert(at);
        *last = (*last).max(at);
    };
    // The runs of `values` the obligations hold.
    let mut held: Vec<Range<usize>> = Vec::new();
    let mut by_lead_unit: FastMap<&str, Rates> = FastMap::default();
    let mut indicators = Vec::new();
    // Which reporter each of a period's rows belongs to (reused between periods).
    let mut found: Vec<Option<&ValueRow>> = Vec::new();
    for (indicator, periods) in plan.indicators.iter().zip(&periods) {
        let mut rates = Rates::default();
        let block = update::Block {
            start: obligations.len(),
            units: indicator.reporter_units.len(),
            periods: periods.iter().map(Period::to_string).collect(),
        };
        let reporters: Vec<(Name, usize)> = if periods.is_empty() {
            Vec::new()
        } else {
            (indicator.reporter_units.iter())
                .map(|unit| {
                    let (name, slot) = names.entry(unit).or_insert_with(|| {
                        tallies.push(Tally {
                            unit,
                            rates: Rates::default(),
                            last_report_ms: None,
                        });
                        (Name::from(unit.as_str()), tallies.len() - 1)
                    });
                    (name.clone(), *slot)
                })
                .collect()
        };
        // The reporters in the byte order of their names, the order of a period's rows, so
        // that each period's rows are matched to them in one merge.
        let mut in_row_order: Vec<usize> = (0..indicator.reporter_units.len()).collect();
        in_row_order.sort_by_key(|&u| indicator.reporter_units[u].as_str());
        let indicator_name = Name::from(indicator.id.as_str());
        for (period, period_text) in periods.iter().zip(&block.periods) {
            // Nothing is overdue before the plan was issued.
            let original_due = due_ms(plan, indicator, period).max(issued_end_ms(plan));
            let period_name = Name::from(period_text.as_str());
            let run = values.run_of(&indicator.id, period_text);
            let rows = &values.rows()[run.clone()];
            held.push(run);
            found.clear();
            found.resize(indicator.reporter_units.len(), None);
            // `rows[next]` is the first row not passed yet, and `matched` whether a reporter
            // holds it; a row passed unmatched belongs to no reporter.
            let (mut next, mut matched) = (0, false);
            for &u in &in_row_order {
                let unit = indicator.reporter_units[u].as_str();
                while let Some(row) = rows.get(next).filter(|row| row.unit_id.as_str() < unit) {
                    if !matched {
                        note(&row.unit_id, row.updated_at_ms);
                    }
                    (next, matched) = (next + 1, false);
                }
                found[u] = rows.get(next).filter(|row| row.unit_id == unit).copied();
                matched |= found[u].is_some();
            }
            for row in rows.iter().skip(next + usize::from(matched)) {
                note(&row.unit_id, row.updated_at_ms);
            }
            for (u, unit) in indicator.reporter_units.iter().enumerate() {
                // A deadline the office extended for this unit is the granted date.
                let granted_due = if cases.is_empty() {
                    None
                } else {
                    granted(&cases::report_case(&indicator.id, period_text, unit))
                };
                let due = granted_due.unwrap_or(original_due);
                let extended_to_ms = extended_deadline(&snapshot.outages, due);
                let received = found[u].map(|v| (v.first_received_at_ms, v.first_issued_at_ms));
                let (unit_name, slot) = &reporters[u];
                let tally = &mut tallies[*slot];
                if let Some(row) = found[u] {
                    let last = tally.last_report_ms.get_or_insert(row.updated_at_ms);
                    *last = (*last).max(row.updated_at_ms);
                }
                let obligation = Obligation {
                    unit: unit_name.clone(),
                    indicator: indicator_name.clone(),
                    period: period_name.clone(),
                    due_ms: due,
                    original_due_ms: granted_due.map(|_| original_due),
                    extended_to_ms,
                    status: obligation_status(due, extended_to_ms, received, now_ms),
                    received_ms: received.map(|(at, _)| at),
                };
                if received.is_none() && obligation.overdue_after_ms() > now_ms {
                    next_due_ms = next_due_ms.min(obligation.overdue_after_ms());
                }
                rates.add(&obligation);
                tally.rates.add(&obligation);
                obligations.push(obligation);
            }
        }
        // A lead unit counts every obligation of its indicators: the indicator's own rates.
        if !reporters.is_empty() {
            for lead in &indicator.lead_units {
                by_lead_unit.entry(lead).or_default().merge(rates);
            }
        }
        blocks.push(block);
        indicators.push(indicator_progress(plan, indicator, &values, now_ms, rates));
    }
    // The rows between the runs held, and the task updates.
    held.sort_by_key(|run| run.start);
    let mut from = 0;
    for run in held
        .iter()
        .chain([&(values.rows().len()..values.rows().len())])
    {
        for row in values.rows().get(from..run.start).unwrap_or_default() {
            note(&row.unit_id, row.updated_at_ms);
        }
        from = from.max(run.end);
    }
    for task in &snapshot.tasks {
        note(&task.unit_id, task.updated_at_ms);
    }
    let mut last_report_ms = owned(last_elsewhere);
    let mut by_unit = BTreeMap::new();
    for tally in tallies {
        if let Some(at) = tally.last_report_ms {
            let last = last_report_ms.entry(tally.unit.to_owned()).or_insert(at);
            *last = (*last).max(at);
        }
        by_unit.insert(tally.unit.to_owned(), tally.rates);
    }
    let milestones = milestones(plan, &snapshot.tasks, &cases, now_ms);
    // Every indicator's sums, for the next update (a ratio's own are never asked for above).
    for indicator in &plan.indicators {
        values.sums(indicator);
    }
    let kept = Kept {
        incremental: values.canonical_periods,
        blocks,
        next_due_ms,
        outages: snapshot.outages.clone(),
        sums: values.into_sums(),
    };
    Progress {
        now_ms,
        obligations: Arc::new(obligations),
        indicators,
        milestones,
        by_unit,
        by_lead_unit: owned(by_lead_unit),
        last_report_ms,
        cases,
        kept,
    }
}

/// Every milestone's progress from the task updates, with the office's decisions in `cases`.
fn milestones(
    plan: &Plan,
    tasks: &[TaskRow],
    cases: &BTreeMap<String, cases::Case>,
    now_ms: i64,
) -> Vec<MilestoneProgress> {
    let granted = |case: &str| {
        cases
            .get(case)
            .and_then(|c| c.extended_to)
            .map(|d| end_of_day_ms(d, &plan.tz))
    };
    // Each milestone's task updates, found in one pass (not one pass per milestone).
    let mut task_rows: HashMap<(&str, &str), Vec<&TaskRow>> = HashMap::new();
    for row in tasks {
        task_rows
            .entry((row.task_id.as_str(), row.milestone_id.as_str()))
            .or_default()
            .push(row);
    }
    plan.tasks
        .iter()
        .flat_map(|task| task.milestones.iter().map(move |m| (task, m)))
        .map(|(task, milestone)| {
            // A window that began before the plan was issued is measured from the issue date:
            // nothing lags or is overdue before the plan exists.
            let issued_start = plan
                .issued
                .map_or(i64::MIN, |d| start_of_day_ms(d, &plan.tz));
            let start_ms = start_of_day_ms(milestone.window.start, &plan.tz).max(issued_start);
            let original_deadline =
                end_of_day_ms(milestone.window.end, &plan.tz).max(issued_end_ms(plan));
            let case_id = cases::milestone_case(&task.id, &milestone.id);
            let case = cases.get(&case_id);
            let granted_deadline = granted(&case_id);
            let deadline_ms = granted_deadline.unwrap_or(original_deadline);
            let mut latest: HashMap<&str, &TaskRow> = HashMap::new();
            let rows = task_rows.get(&(task.id.as_str(), milestone.id.as_str()));
            for &row in rows.into_iter().flatten() {
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
            // A done claim the office confirmed makes the milestone done (from the claim).
            let confirmed = case.and_then(|c| c.done_confirmed_ms).is_some();
            let percent = if confirmed { Some(100.0) } else { percent };
            MilestoneProgress {
                original_deadline_ms: granted_deadline.map(|_| original_deadline),
                claimed: case.is_some_and(|c| c.done_claimed.is_some()),
                ..milestone_progress(
                    task.id.clone(),
                    milestone.id.clone(),
                    start_ms,
                    deadline_ms,
                    percent,
                    milestone.tolerance,
                    now_ms,
                )
            }
        })
        .collect()
}

/// `map` under owned names, in their order.
fn owned<T>(map: FastMap<&str, T>) -> BTreeMap<String, T> {
    map.into_iter()
        .map(|(name, v)| (name.to_owned(), v))
        .collect()
}

/// The end of the day the plan was issued (`i64::MIN` when the plan gives no date).
pub fn issued_end_ms(plan: &Plan) -> i64 {
    plan.issued.map_or(i64::MIN, |d| end_of_day_ms(d, &plan.tz))
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod update_tests;

//! What the demo's units report and when: values along growth curves from a seeded generator,
//! monthly task progress, and the units and tasks that misbehave on purpose so that every
//! alert kind fires.
//!
//! Everything here is a pure function of (plan, seed); the same seed gives the same run.

use std::collections::{BTreeMap, BTreeSet};

use duban_aggregator::plan::{Aggregation, Comparator, Indicator, Plan};
use duban_aggregator::progress::{self, DAY_MS};
use duban_proto::pb::TaskStatus;
use duban_proto::period::{Period, PeriodType};
use jiff::ToSpan;
use jiff::civil::Date;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// A row a unit's local system gains (or changes) on a given day: what its agent will collect.
pub use duban_agent::sources::Item as Row;

/// Who misbehaves, chosen from the seed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Roles {
    /// Units that report every period after its deadline.
    pub late_units: Vec<String>,
    /// (unit, indicator, period) obligations that are never reported.
    pub missed: Vec<(String, String, String)>,
    /// Indicators whose values stall well below the path.
    pub lagging_indicators: Vec<String>,
    /// Tasks that fall behind on their first milestone and catch up at its end.
    pub lagging_tasks: Vec<String>,
    /// A task whose first milestone stalls and is never finished.
    pub stalled_task: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    /// Rows appearing per day, per unit.
    pub days: BTreeMap<Date, BTreeMap<String, Vec<Row>>>,
    /// Every unit that has something to report: one agent each.
    pub units: Vec<String>,
    pub roles: Roles,
}

fn day_of_ms(plan: &Plan, ms: i64) -> Date {
    progress::date_of_ms(ms, &plan.tz)
}

/// The fraction of the way from the plan's start to `target_date` at the end of `day`.
fn fraction(plan: &Plan, day: Date, target_date: Date) -> f64 {
    let span = (target_date - plan.window.start).get_days().max(1) as f64;
    (((day - plan.window.start).get_days() + 1) as f64 / span).clamp(0.0, 1.0)
}

/// Whole numbers for counts (家, 件, 个, 人) and large figures; two decimals otherwise.
fn round_for(indicator: &Indicator, goal: f64, value: f64) -> f64 {
    let counted = ["家", "件", "个", "人"].contains(&indicator.measure.as_str());
    if counted || goal.abs() >= 20.0 {
        value.round()
    } else {
        (value * 100.0).round() / 100.0
    }
}

/// What an indicator with a target is steered towards: a little past the target.
fn goal_of(indicator: &Indicator) -> Option<(f64, bool)> {
    let target = indicator.target.as_ref()?;
    Some(match target.comparator {
        Comparator::AtLeast | Comparator::MoreThan => (target.value * 1.06, false),
        Comparator::AtMost | Comparator::LessThan => (target.value * 0.94, true),
        Comparator::About => (target.value, false),
        Comparator::Between => (target.value_max.unwrap_or(target.value), false),
    })
}

/// The city's value of `indicator` for `period`, before it is split between reporters.
/// `ratio_input` carries the path of a ratio this indicator is an input of.
fn city_value(
    plan: &Plan,
    indicator: &Indicator,
    period: &Period,
    lag: f64,
    ratio_input: Option<&RatioInput>,
    rng: &mut StdRng,
) -> f64 {
    let end = period.last_day().min(plan.window.end);
    let noise = |rng: &mut StdRng, spread: f64| 1.0 + rng.gen_range(-spread..=spread);
    if let Some(input) = ratio_input {
        let years = (end - plan.window.start).get_days() as f64 / 365.25;
        let population = input.population * (1.0 + 0.008 * years);
        return match input.role {
            RatioRole::Denominator => population.round(),
            RatioRole::Numerator => {
                let f = fraction(plan, end, input.target_date);
                let ratio = input.start + (input.goal - input.start) * f * lag;
                (ratio * population / input.scale * noise(rng, 0.005)).round()
            }
        };
    }
    let Some((goal, falling)) = goal_of(indicator) else {
        // An input nobody steers: a slow, steady rise.
        let years = (end - plan.window.start).get_days() as f64 / 365.25;
        return round_for(
            indicator,
            100.0,
            100.0 * (1.0 + 0.05 * years) * noise(rng, 0.01),
        );
    };
    let target_date = indicator
        .target
        .as_ref()
        .map_or(plan.window.end, |t| t.date);
    let f = fraction(plan, end, target_date) * lag;
    let start = if falling { goal * 1.5 } else { goal * 0.62 };
    let value = match indicator.aggregation {
        Aggregation::Cumulative => {
            // This period's share of the whole plan, so that the sum reaches the goal.
            let first = period.first_day().max(plan.window.start);
            let days = ((end - first).get_days() + 1).max(0) as f64;
            let total = ((plan.window.end - plan.window.start).get_days() + 1) as f64;
            goal * 1.04 * lag * days / total * noise(rng, 0.08)
        }
        Aggregation::AnnualAverage => {
            (start + (goal - start) * f) / progress::periods_per_year(indicator.period)
                * noise(rng, 0.05)
        }
        _ => (start + (goal - start) * f) * noise(rng, 0.02),
    };
    let value = value.max(indicator.min);
    let value = indicator.max.map_or(value, |max| value.min(max));
    round_for(indicator, goal, value)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RatioRole {
    Numerator,
    Denominator,
}

#[derive(Debug, Clone)]
struct RatioInput {
    role: RatioRole,
    /// The denominator's level: a city of about 9.3 million people for a population
    /// floor of a million (Qingdao had 929 万 residents in 2017).
    population: f64,
    start: f64,
    goal: f64,
    scale: f64,
    target_date: Date,
}

fn ratio_inputs(plan: &Plan) -> BTreeMap<String, RatioInput> {
    let mut out = BTreeMap::new();
    for indicator in &plan.indicators {
        let Aggregation::Ratio {
            numerator,
            denominator,
            scale,
        } = &indicator.aggregation
        else {
            continue;
        };
        let (Some((goal, _)), Some(target)) = (goal_of(indicator), indicator.target.as_ref())
        else {
            continue;
        };
        let population = plan
            .indicator(denominator)
            .map_or(1.0e6, |d| d.min.max(1.0))
            * 9.29;
        for (id, role) in [
            (numerator, RatioRole::Numerator),
            (denominator, RatioRole::Denominator),
        ] {
            out.insert(
                id.clone(),
                RatioInput {
                    role,
                    population,
                    start: goal * 0.66,
                    goal,
                    scale: *scale,
                    target_date: target.date,
                },
            );
        }
    }
    out
}

/// Splits `total` into `n` positive parts with seeded weights.
fn split(total: f64, n: usize, rng: &mut StdRng) -> Vec<f64> {
    let weights: Vec<f64> = (0..n).map(|_| rng.gen_range(0.5..1.5)).collect();
    let sum: f64 = weights.iter().sum();
    weights.iter().map(|w| total * w / sum).collect()
}

/// The unit that reports a task's progress: its first lead unit, else its first responsible
/// unit (where the document names no lead).
pub fn task_reporter(plan: &Plan, task: &duban_aggregator::plan::Task) -> Option<String> {
    plan.expand_parties(&task.lead_units)
        .into_iter()
        .chain(plan.expand_parties(&task.responsible_units))
        .find(|id| plan.unit(id).is_some())
}

impl Scenario {
    pub fn generate(plan: &Plan, seed: u64) -> Scenario {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut days: BTreeMap<Date, BTreeMap<String, Vec<Row>>> = BTreeMap::new();
        let mut units = BTreeSet::new();
        let mut roles = Roles::default();

        // Who misbehaves. Late and missing units are drawn from those reporting the most.
        let mut load: BTreeMap<&str, usize> = BTreeMap::new();
        for indicator in &plan.indicators {
            for unit in &indicator.reporter_units {
                *load.entry(unit.as_str()).or_default() += 1;
            }
        }
        let mut busy: Vec<&str> = load
            .iter()
            .filter(|(_, n)| **n >= 2)
            .map(|(u, _)| *u)
            .collect();
        busy.shuffle(&mut rng);
        roles.late_units = busy.iter().take(2).map(|u| u.to_string()).collect();
        let misser = busy.get(2).map(|u| u.to_string());
        let mut candidates: Vec<&Indicator> = plan
            .indicators
            .iter()
            .filter(|i| {
                i.target.is_some()
                    && !i.reporter_units.is_empty()
                    && matches!(i.period, PeriodType::Quarter | PeriodType::HalfYear)
            })
            .collect();
        candidates.shuffle(&mut rng);
        roles.lagging_indicators = candidates.iter().take(2).map(|i| i.id.clone()).collect();
        // Misbehaving tasks are drawn from those whose first milestone ends within the plan's
        // first year, so that a short run sees them fall behind and go overdue.
        let first_year = plan.window.start.saturating_add(1.year());
        let mut tasks: Vec<&duban_aggregator::plan::Task> = plan
            .tasks
            .iter()
            .filter(|t| {
                t.milestones.first().is_some_and(|m| {
                    m.window.end < first_year && m.window.start >= plan.window.start
                }) && task_reporter(plan, t).is_some()
            })
            .collect();
        tasks.shuffle(&mut rng);
        // The stalled one ends its first milestone within half a year, so that even a run of
        // a year sees it go overdue.
        let half_year = plan.window.start.saturating_add(6.months());
        let stalled = tasks
            .iter()
            .position(|t| t.milestones[0].window.end <= half_year)
            .unwrap_or(0);
        if !tasks.is_empty() {
            roles.stalled_task = Some(tasks.remove(stalled).id.clone());
        }
        roles.lagging_tasks = tasks.iter().take(2).map(|t| t.id.clone()).collect();

        let ratio = ratio_inputs(plan);
        for indicator in &plan.indicators {
            if indicator.reporter_units.is_empty() {
                continue;
            }
            let lag = if roles.lagging_indicators.contains(&indicator.id) {
                0.25
            } else {
                1.0
            };
            let periods = progress::plan_periods(plan, indicator.period);
            for (n, period) in periods.iter().enumerate() {
                let city = city_value(
                    plan,
                    indicator,
                    period,
                    lag,
                    ratio.get(&indicator.id),
                    &mut rng,
                );
                let authoritative = indicator.authoritative.as_deref();
                let others: Vec<&String> = indicator
                    .reporter_units
                    .iter()
                    .filter(|u| Some(u.as_str()) != authoritative)
                    .collect();
                // District figures add up to a little less than the department's total.
                let parts_total = if authoritative.is_some() {
                    city * rng.gen_range(0.96..0.995)
                } else {
                    city
                };
                let parts = split(parts_total, others.len(), &mut rng);
                let goal = goal_of(indicator).map_or(city, |(g, _)| g);
                let mut shares: Vec<(String, f64)> = others
                    .iter()
                    .zip(parts)
                    .map(|(u, v)| ((*u).clone(), round_for(indicator, goal, v)))
                    .collect();
                if let Some(auth) = authoritative {
                    shares.push((auth.to_owned(), city));
                }
                let due = day_of_ms(plan, progress::due_ms(plan, indicator, period));
                let period_end = period.last_day();
                for (unit, value) in shares {
                    units.insert(unit.clone());
                    if misser.as_deref() == Some(unit.as_str()) && n < 2 && roles.missed.len() < 2 {
                        roles
                            .missed
                            .push((unit.clone(), indicator.id.clone(), period.to_string()));
                        continue;
                    }
                    let timely = i64::from(indicator.timely_days).max(2);
                    let day = if roles.late_units.contains(&unit) {
                        due.saturating_add(rng.gen_range(8..40).days())
                    } else {
                        period_end.saturating_add(rng.gen_range(2..=(timely * 2 / 3).max(3)).days())
                    };
                    days.entry(day)
                        .or_default()
                        .entry(unit)
                        .or_default()
                        .push(Row::Value {
                            indicator: indicator.id.clone(),
                            period: *period,
                            value,
                            note: String::new(),
                        });
                }
            }
        }

        for task in &plan.tasks {
            let Some(unit) = task_reporter(plan, task) else {
                continue;
            };
            units.insert(unit.clone());
            let stalled = roles.stalled_task.as_deref() == Some(task.id.as_str());
            let lagging = roles.lagging_tasks.contains(&task.id);
            for (m, milestone) in task.milestones.iter().enumerate() {
                let (start, end) = (milestone.window.start, milestone.window.end);
                let span = ((end - start).get_days() + 1).max(1) as f64;
                let mut month = Period::containing(PeriodType::Month, start.max(plan.window.start));
                while month.first_day() <= end && month.first_day() <= plan.window.end {
                    let month_end = month.last_day().min(end);
                    let elapsed = ((month_end - start).get_days() + 1) as f64 / span;
                    let percent = if stalled && m == 0 {
                        (elapsed * 45.0).min(40.0)
                    } else if lagging && m == 0 && month_end < end {
                        elapsed * 45.0
                    } else if month_end >= end {
                        100.0
                    } else {
                        (elapsed * 100.0 * rng.gen_range(1.0..1.1)).min(95.0)
                    };
                    // Mid-month, the month's progress as planned by its end (or the
                    // milestone's): a finished milestone is reported before its deadline.
                    let day = month
                        .first_day()
                        .saturating_add(rng.gen_range(7..=13).days())
                        .max(start)
                        .min(month_end);
                    days.entry(day)
                        .or_default()
                        .entry(unit.clone())
                        .or_default()
                        .push(Row::Task {
                            task: task.id.clone(),
                            milestone: milestone.id.clone(),
                            period: month,
                            percent: percent.round(),
                            status: if percent >= 100.0 {
                                TaskStatus::Done
                            } else {
                                TaskStatus::InProgress
                            },
                            note: String::new(),
                        });
                    month = month.next();
                }
            }
        }
        Scenario {
            days,
            units: units.into_iter().collect(),
            roles,
        }
    }
}

/// Milliseconds of noon on `day` in the plan's time zone: the simulated moment of a day's work.
pub fn noon_ms(plan: &Plan, day: Date) -> i64 {
    progress::start_of_day_ms(day, &plan.tz) + DAY_MS / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        duban_aggregator::plan::embedded().plan
    }

    #[test]
    fn the_same_seed_gives_the_same_scenario_and_another_seed_another() {
        let plan = plan();
        let a = Scenario::generate(&plan, 7);
        let b = Scenario::generate(&plan, 7);
        let c = Scenario::generate(&plan, 8);
        assert_eq!(a.days, b.days);
        assert_ne!(a.days, c.days);
    }

    #[test]
    fn every_reporter_and_every_misbehaviour_is_cast() {
        let plan = plan();
        let scenario = Scenario::generate(&plan, 2017);
        for unit in plan.reporting_units() {
            assert!(
                scenario.units.contains(&unit.id),
                "{} has no agent",
                unit.id
            );
        }
        assert_eq!(scenario.roles.late_units.len(), 2);
        assert_eq!(scenario.roles.missed.len(), 2);
        assert_eq!(scenario.roles.lagging_indicators.len(), 2);
        assert_eq!(scenario.roles.lagging_tasks.len(), 2);
        assert!(scenario.roles.stalled_task.is_some());
    }

    #[test]
    fn every_generated_row_passes_the_aggregators_validation() {
        let plan = plan();
        let scenario = Scenario::generate(&plan, 2017);
        for units in scenario.days.values() {
            for (unit, rows) in units {
                for row in rows {
                    match row {
                        Row::Value {
                            indicator,
                            value,
                            period,
                            ..
                        } => {
                            let i = plan.indicator(indicator).unwrap();
                            assert!(plan.period_in_plan(period), "{indicator} {period}");
                            assert_eq!(period.kind, i.period, "{indicator} {period}");
                            assert!(plan.is_reporter(unit, i), "{unit} reports {indicator}");
                            assert!(i.accepts_value(*value), "{indicator} = {value}");
                        }
                        Row::Task {
                            task,
                            milestone,
                            percent,
                            period,
                            ..
                        } => {
                            let t = plan.task(task).unwrap();
                            assert!(plan.period_in_plan(period), "{task} {milestone} {period}");
                            assert!(t.milestones.iter().any(|m| &m.id == milestone));
                            assert!(plan.is_task_party(unit, t), "{unit} on {task}");
                            assert!((0.0..=100.0).contains(percent));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_late_unit_reports_after_the_deadline_and_a_punctual_one_before() {
        let plan = plan();
        let scenario = Scenario::generate(&plan, 2017);
        let late = &scenario.roles.late_units[0];
        let mut seen_late = 0;
        let mut seen_punctual = 0;
        for (day, units) in &scenario.days {
            for (unit, rows) in units {
                for row in rows {
                    if let Row::Value {
                        indicator, period, ..
                    } = row
                    {
                        let i = plan.indicator(indicator).unwrap();
                        let due = progress::due_ms(&plan, i, period);
                        let at = noon_ms(&plan, *day);
                        if unit == late {
                            assert!(at > due, "{unit} {indicator} {period} on {day}");
                            seen_late += 1;
                        } else if !scenario.roles.late_units.contains(unit) {
                            assert!(at < due, "{unit} {indicator} {period} on {day}");
                            seen_punctual += 1;
                        }
                    }
                }
            }
        }
        assert!(seen_late > 0 && seen_punctual > 0);
    }
}

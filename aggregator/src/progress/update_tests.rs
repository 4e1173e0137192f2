//! `update` against `compute`: after any sequence of writes and clock moves, the progress
//! updated step by step is the progress computed whole on the same snapshot, field for field.

use proptest::prelude::*;

use super::tests::{ms, qingdao};
use super::*;

/// A value first signed a minute before it was received.
fn row(indicator: &str, unit: &str, period: &str, value: f64, at_ms: i64) -> ValueRow {
    ValueRow {
        first_issued_at_ms: at_ms - 60_000,
        ..super::tests::value(indicator, unit, period, value, at_ms)
    }
}

fn task(unit: &str, percent: f64, at_ms: i64) -> TaskRow {
    let plan = qingdao();
    let task = &plan.tasks[0];
    TaskRow {
        plan_id: "qingdao".into(),
        task_id: task.id.clone(),
        milestone_id: task.milestones[0].id.clone(),
        unit_id: unit.into(),
        period: "2018Q1".into(),
        percent,
        status: "in_progress".into(),
        note: String::new(),
        revision: 0,
        issued_at_ms: at_ms,
        seq: 1,
        report_pk: 1,
        updated_at_ms: at_ms,
        first_received_at_ms: at_ms,
    }
}

/// The first indicator with reporters, its first reporter and its first period.
fn first_obligation(plan: &Plan) -> (&Indicator, &String, String) {
    let indicator = plan
        .indicators
        .iter()
        .find(|i| !i.reporter_units.is_empty())
        .unwrap();
    let period = plan_periods(plan, indicator.period)[0].to_string();
    (indicator, &indicator.reporter_units[0], period)
}

/// Every field the engine computes, as the API serves it.
fn json(progress: &Progress) -> serde_json::Value {
    serde_json::to_value(progress).unwrap()
}

/// `update`, checked against `compute` on the same snapshot; says how it was made.
fn updated(
    plan: &Plan,
    snapshot: &Snapshot,
    previous: Progress,
    changes: &Changes,
    now_ms: i64,
) -> (Progress, Computation) {
    let (progress, how) = update(plan, snapshot, previous, changes, now_ms);
    assert_eq!(json(&progress), json(&compute(plan, snapshot, now_ms)));
    (progress, how)
}

/// One write: value rows (indicator, unit, period as indexes into what the plan offers, and a
/// value), task rows, then the clock moved on by some minutes.
#[derive(Debug, Clone)]
struct Step {
    values: Vec<(usize, usize, usize, i32)>,
    /// Every reporter of one indicator and period at once, as a reporting round.
    round: Option<(usize, usize, i32)>,
    tasks: Vec<(usize, u8)>,
    minutes: u32,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let value = (0..64usize, 0..16usize, 0..32usize, -50..5000i32);
    let step = (
        prop::collection::vec(value, 0..6),
        prop::option::of((0..64usize, 0..32usize, -50..5000i32)),
        prop::collection::vec((0..16usize, 0..=100u8), 0..2),
        // Mostly minutes; now and then months, across deadlines.
        prop_oneof![4 => 0..600u32, 1 => 0..200_000u32],
    )
        .prop_map(|(values, round, tasks, minutes)| Step {
            values,
            round,
            tasks,
            minutes,
        });
    prop::collection::vec(step, 1..12)
}

/// The rows of one step: indicators of the plan (and one it does not have), its reporters and
/// other units, its periods and ones outside it; values with fractions, so that the order in
/// which they are summed shows.
fn rows_of(plan: &Plan, step: &Step, at_ms: i64) -> (Vec<ValueRow>, Vec<TaskRow>) {
    let units: Vec<&str> = plan
        .units
        .iter()
        .map(|u| u.id.as_str())
        .chain(["nowhere"])
        .collect();
    let round = step.round.into_iter().flat_map(|(i, p, v)| {
        let reporters = plan
            .indicators
            .get(i % plan.indicators.len())
            .map_or(0, |i| i.reporter_units.len());
        (0..reporters).map(move |u| (i % plan.indicators.len(), u, p, v + u as i32))
    });
    let values = step
        .values
        .iter()
        .copied()
        .chain(round)
        .map(|(i, u, p, v)| {
            let (indicator, periods) = match plan.indicators.get(i % (plan.indicators.len() + 1)) {
                Some(indicator) => (
                    indicator.id.as_str(),
                    plan_periods(plan, indicator.period)
                        .iter()
                        .map(Period::to_string)
                        .chain(["2016".to_string()])
                        .collect::<Vec<_>>(),
                ),
                None => ("not-in-plan", vec!["2018Q1".to_string()]),
            };
            // Reporters first, so that most rows count.
            let unit = match plan.indicators.get(i % (plan.indicators.len() + 1)) {
                Some(indicator)
                    if (u < 12 || step.round.is_some()) && !indicator.reporter_units.is_empty() =>
                {
                    indicator.reporter_units[u % indicator.reporter_units.len()].as_str()
                }
                _ => units[u % units.len()],
            };
            let period = &periods[p % periods.len()];
            row(indicator, unit, period, f64::from(v) / 7.0, at_ms)
        })
        .collect();
    let tasks = step
        .tasks
        .iter()
        .map(|&(u, percent)| task(units[u % units.len()], f64::from(percent), at_ms))
        .collect();
    (values, tasks)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn progress_updated_with_each_write_equals_progress_computed_whole(steps in steps()) {
        let plan = qingdao();
        let mut now = ms("2018-01-20T00:00:00Z");
        let mut snapshot = Snapshot::default();
        let mut progress = compute(&plan, &snapshot, now);
        for step in &steps {
            now += i64::from(step.minutes) * 60_000;
            let (values, tasks) = rows_of(&plan, step, now);
            let changes = snapshot.apply_changes(values, tasks);
            let (updated, _) = update(&plan, &snapshot, progress, &changes, now);
            prop_assert_eq!(json(&updated), json(&compute(&plan, &snapshot, now)));
            progress = updated;
        }
    }
}

#[test]
fn a_write_updates_the_progress_and_only_a_deadline_new_statement_or_outage_computes_it_whole() {
    let plan = qingdao();
    let (indicator, unit, period) = first_obligation(&plan);
    let now = ms("2018-01-20T00:00:00Z");
    let mut snapshot = Snapshot::default();
    let progress = compute(&plan, &snapshot, now);
    let next_due = progress.kept.next_due_ms;
    assert!(next_due > now);

    // One value: updated, and what it changed shows.
    let changes =
        snapshot.apply_changes(vec![row(&indicator.id, unit, &period, 12.5, now)], vec![]);
    let (progress, how) = updated(&plan, &snapshot, progress, &changes, now + 1_000);
    assert_eq!(how, Computation::Updated);
    let o = progress
        .obligations
        .iter()
        .find(|o| o.indicator == indicator.id && o.unit == *unit && o.period == period)
        .unwrap();
    assert_eq!(o.received_ms, Some(now));

    // Only the clock moved, short of the next deadline: updated.
    let (progress, how) = updated(
        &plan,
        &snapshot,
        progress,
        &Changes::default(),
        next_due - 1,
    );
    assert_eq!(how, Computation::Updated);

    // At the deadline an obligation not received becomes overdue: whole.
    let (progress, how) = updated(&plan, &snapshot, progress, &Changes::default(), next_due);
    assert_eq!(how, Computation::Whole);
    assert!(
        progress
            .obligations
            .iter()
            .any(|o| o.status == ObligationStatus::Overdue)
    );

    // An outage: whole.
    snapshot.outages = vec![Outage {
        from_ms: next_due - 5_000,
        to_ms: next_due + 5_000,
    }];
    let (progress, how) = updated(
        &plan,
        &snapshot,
        progress,
        &Changes::default(),
        next_due + 1,
    );
    assert_eq!(how, Computation::Whole);

    // A statement received: whole.
    snapshot.statements = vec![StatementRow {
        unit_id: unit.clone(),
        seq: 1,
        issued_at_ms: next_due,
        received_at_ms: next_due + 2,
        case_id: cases::report_case(&indicator.id, &period, unit),
        kind: cases::REQUEST_EXTENSION.into(),
        date: "2019-01-01".into(),
        note: "需要更多时间".into(),
        reference: String::new(),
        about_unit: String::new(),
    }];
    let (progress, how) = updated(
        &plan,
        &snapshot,
        progress,
        &Changes::default(),
        next_due + 2,
    );
    assert_eq!(how, Computation::Whole);

    // The clock going back: whole.
    let (_, how) = update(&plan, &snapshot, progress, &Changes::default(), next_due);
    assert_eq!(how, Computation::Whole);
}

#[test]
fn a_progress_held_elsewhere_keeps_its_obligations_and_shares_them_while_unchanged() {
    let plan = qingdao();
    let (indicator, unit, period) = first_obligation(&plan);
    let now = ms("2018-01-20T00:00:00Z");
    let mut snapshot = Snapshot::default();
    let held = compute(&plan, &snapshot, now);

    // Only the clock moved: the copy's obligations are the held ones, not copied.
    let (later, how) = updated(&plan, &snapshot, held.clone(), &Changes::default(), now + 1);
    assert_eq!(how, Computation::Updated);
    assert!(Arc::ptr_eq(&later.obligations, &held.obligations));

    // A value received: the copy's obligations are copied and changed; the held ones not.
    let changes =
        snapshot.apply_changes(vec![row(&indicator.id, unit, &period, 12.5, now)], vec![]);
    let (changed, how) = updated(&plan, &snapshot, held.clone(), &changes, now + 2);
    assert_eq!(how, Computation::Updated);
    assert!(!Arc::ptr_eq(&changed.obligations, &held.obligations));
    let received = |progress: &Progress| {
        progress
            .obligations
            .iter()
            .find(|o| o.indicator == indicator.id && o.unit == *unit && o.period == period)
            .unwrap()
            .received_ms
    };
    assert_eq!(received(&changed), Some(now));
    assert_eq!(received(&held), None);
}

#[test]
fn a_snapshot_read_whole_puts_its_tasks_in_key_order_and_takes_changes_in_place() {
    let plan = qingdao();
    let indicator = plan
        .indicators
        .iter()
        .find(|i| i.reporter_units.len() > 1)
        .unwrap();
    let period = plan_periods(&plan, indicator.period)[0].to_string();
    let now = ms("2018-01-20T00:00:00Z");
    let mut values: Vec<ValueRow> = indicator
        .reporter_units
        .iter()
        .map(|unit| row(&indicator.id, unit, &period, 1.0, now))
        .collect();
    values.sort_by(|a, b| value_key(a).cmp(&value_key(b)));
    // Tasks as a database's collation may give them: not by their bytes.
    let tasks = vec![
        task("b", 10.0, now),
        task("B", 20.0, now),
        task("a", 30.0, now),
    ];
    let mut snapshot = Snapshot::in_key_order(values.clone(), tasks, vec![], vec![]);
    let units: Vec<&str> = snapshot.tasks.iter().map(|t| t.unit_id.as_str()).collect();
    assert_eq!(units, ["B", "a", "b"]);

    // A correction and a new row land where a snapshot sorting as it goes puts them.
    let unit = &indicator.reporter_units[1];
    let changed = (
        vec![row(&indicator.id, unit, &period, 9.0, now + 1)],
        vec![task("a", 40.0, now + 1), task("A", 50.0, now + 1)],
    );
    snapshot.apply_changes(changed.0.clone(), changed.1.clone());
    let mut sorting = Snapshot {
        values,
        tasks: vec![
            task("b", 10.0, now),
            task("B", 20.0, now),
            task("a", 30.0, now),
        ],
        ..Snapshot::default()
    };
    sorting.apply_changes(changed.0, changed.1);
    assert_eq!(snapshot.values, sorting.values);
    assert_eq!(snapshot.tasks, sorting.tasks);
    let percents: Vec<(&str, f64)> = snapshot
        .tasks
        .iter()
        .map(|t| (t.unit_id.as_str(), t.percent))
        .collect();
    assert_eq!(
        percents,
        [("A", 50.0), ("B", 20.0), ("a", 40.0), ("b", 10.0)]
    );
}

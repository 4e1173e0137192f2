//! Validation of a decoded report against the plan: pure, item by item. A bad item is refused
//! on its own (with its index, a code and a message); the rest of the report stands.

use std::collections::HashSet;

use duban_proto::pb;

use crate::codes::{ItemKind, Reason, Refusal, RefusalCode};
use crate::plan::{Period, Plan};
use crate::store::{NewTaskUpdate, NewValue};

pub const MAX_NOTE_BYTES: usize = 1024;
pub const MAX_ITEMS: usize = 1000;
/// The longest indicator, task or milestone id read; a longer one is refused without being
/// echoed back.
pub const MAX_ID_BYTES: usize = 128;

/// The items of a report that passed, and the refusals of those that did not.
#[derive(Debug, Default)]
pub struct Validated {
    pub values: Vec<NewValue>,
    pub task_updates: Vec<NewTaskUpdate>,
    pub refusals: Vec<Refusal>,
}

/// Checks the whole-report fields that must hold before any item is looked at.
pub fn check_report_fields(plan: &Plan, report: &pb::Report) -> Result<Period, (Reason, String)> {
    if plan.unit(&report.unit_id).is_none() {
        return Err((
            Reason::UnknownUnit,
            format!("unit {:?} is not in plan {}", report.unit_id, plan.id),
        ));
    }
    let period: Period = report
        .period
        .parse()
        .map_err(|e| (Reason::BadPeriod, format!("{e}")))?;
    if report.values.len() > MAX_ITEMS || report.task_updates.len() > MAX_ITEMS {
        return Err((
            Reason::TooManyItems,
            format!(
                "{} values and {} task updates: at most {MAX_ITEMS} of each per report; split them over several reports",
                report.values.len(),
                report.task_updates.len()
            ),
        ));
    }
    Ok(period)
}

pub fn validate_items(
    plan: &Plan,
    unit_id: &str,
    period: &Period,
    report: &pb::Report,
) -> Validated {
    let mut out = Validated::default();
    let mut seen_indicators = HashSet::new();
    for (index, item) in report.values.iter().enumerate() {
        let refuse = |code, message: String| Refusal {
            kind: ItemKind::Value,
            index: index as u32,
            code,
            message,
        };
        match check_value(plan, unit_id, period, item, &mut seen_indicators) {
            Ok(()) => out.values.push(NewValue {
                indicator_id: item.indicator_id.clone(),
                value: item.value,
                note: item.note.clone(),
            }),
            Err((code, message)) => out.refusals.push(refuse(code, message)),
        }
    }
    let mut seen_milestones = HashSet::new();
    for (index, item) in report.task_updates.iter().enumerate() {
        let refuse = |code, message: String| Refusal {
            kind: ItemKind::TaskUpdate,
            index: index as u32,
            code,
            message,
        };
        match check_task_update(plan, unit_id, period, item, &mut seen_milestones) {
            Ok(()) => out.task_updates.push(NewTaskUpdate {
                task_id: item.task_id.clone(),
                milestone_id: item.milestone_id.clone(),
                percent: item.percent_complete,
                status: status_name(item.status).to_owned(),
                note: item.note.clone(),
            }),
            Err((code, message)) => out.refusals.push(refuse(code, message)),
        }
    }
    out
}

/// An id over [`MAX_ID_BYTES`] is refused on its own code, with only its start echoed.
fn id_fits(what: &str, id: &str) -> Result<(), (RefusalCode, String)> {
    if id.len() <= MAX_ID_BYTES {
        return Ok(());
    }
    let start: String = id.chars().take(16).collect();
    Err((
        RefusalCode::IdTooLong,
        format!(
            "{what} id {start:?}… is {} bytes; at most {MAX_ID_BYTES}",
            id.len()
        ),
    ))
}

fn check_value<'a>(
    plan: &Plan,
    unit_id: &str,
    period: &Period,
    item: &'a pb::IndicatorValue,
    seen: &mut HashSet<&'a str>,
) -> Result<(), (RefusalCode, String)> {
    let id = item.indicator_id.as_str();
    id_fits("indicator", id)?;
    let Some(indicator) = plan.indicator(id) else {
        return Err((
            RefusalCode::UnknownIndicator,
            format!("indicator {id:?} is not in the plan"),
        ));
    };
    if !plan.is_reporter(unit_id, indicator) {
        return Err((
            RefusalCode::NotAReporter,
            format!("unit {unit_id:?} is not a reporter of {id:?}"),
        ));
    }
    if period.kind != indicator.period {
        return Err((
            RefusalCode::PeriodTypeMismatch,
            format!(
                "{id:?} is reported per {}, not per {}",
                indicator.period, period.kind
            ),
        ));
    }
    if !plan.period_in_plan(period) {
        return Err((
            RefusalCode::PeriodOutsidePlan,
            format!(
                "period {period} lies outside the plan ({} .. {})",
                plan.window.start, plan.window.end
            ),
        ));
    }
    if !item.value.is_finite() {
        return Err((
            RefusalCode::ValueNotFinite,
            format!("{id:?}: value {} is not a finite number", item.value),
        ));
    }
    if !indicator.accepts_value(item.value) {
        let max = indicator
            .max
            .map(|m| m.to_string())
            .unwrap_or_else(|| "∞".into());
        return Err((
            RefusalCode::ValueOutOfRange,
            format!(
                "{id:?}: value {} is outside {} .. {max}",
                item.value, indicator.min
            ),
        ));
    }
    if item.note.len() > MAX_NOTE_BYTES {
        return Err((
            RefusalCode::NoteTooLong,
            format!(
                "note is {} bytes; the limit is {MAX_NOTE_BYTES}",
                item.note.len()
            ),
        ));
    }
    if !seen.insert(id) {
        return Err((
            RefusalCode::DuplicateEntry,
            format!("{id:?} appears more than once; the first is kept"),
        ));
    }
    Ok(())
}

fn check_task_update<'a>(
    plan: &Plan,
    unit_id: &str,
    period: &Period,
    item: &'a pb::TaskUpdate,
    seen: &mut HashSet<(&'a str, &'a str)>,
) -> Result<(), (RefusalCode, String)> {
    id_fits("task", &item.task_id)?;
    id_fits("milestone", &item.milestone_id)?;
    let Some(task) = plan.task(&item.task_id) else {
        return Err((
            RefusalCode::UnknownTask,
            format!("task {:?} is not in the plan", item.task_id),
        ));
    };
    if !task.milestones.iter().any(|m| m.id == item.milestone_id) {
        return Err((
            RefusalCode::UnknownMilestone,
            format!(
                "task {:?} has no milestone {:?}",
                task.id, item.milestone_id
            ),
        ));
    }
    if !plan.is_task_party(unit_id, task) {
        return Err((
            RefusalCode::NotResponsible,
            format!(
                "unit {unit_id:?} is neither lead nor responsible for task {:?}",
                task.id
            ),
        ));
    }
    if !plan.period_in_plan(period) {
        return Err((
            RefusalCode::PeriodOutsidePlan,
            format!("period {period} lies outside the plan"),
        ));
    }
    let percent = item.percent_complete;
    if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
        return Err((
            RefusalCode::PercentOutOfRange,
            format!("percent {percent} is not within 0 .. 100"),
        ));
    }
    if item.note.len() > MAX_NOTE_BYTES {
        return Err((
            RefusalCode::NoteTooLong,
            format!(
                "note is {} bytes; the limit is {MAX_NOTE_BYTES}",
                item.note.len()
            ),
        ));
    }
    if !seen.insert((&item.task_id, &item.milestone_id)) {
        return Err((
            RefusalCode::DuplicateEntry,
            format!(
                "task {:?} milestone {:?} appears more than once; the first is kept",
                task.id, item.milestone_id
            ),
        ));
    }
    Ok(())
}

pub fn status_name(status: i32) -> &'static str {
    match pb::TaskStatus::try_from(status) {
        Ok(pb::TaskStatus::NotStarted) => "not_started",
        Ok(pb::TaskStatus::InProgress) => "in_progress",
        Ok(pb::TaskStatus::Blocked) => "blocked",
        Ok(pb::TaskStatus::Done) => "done",
        _ => "unspecified",
    }
}

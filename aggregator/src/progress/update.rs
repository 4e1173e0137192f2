//! Progress after a write, from the progress before it: the work is linear in what changed
//! (the obligations of the changed values, the sums of their indicators' changed periods), not
//! in what the plan holds, and the result is the one [`compute`] gives on the same snapshot.
//!
//! An obligation's status moves with the clock only when an obligation not received falls due
//! (`Kept::next_due_ms`); until then it moves only with its own value. Indicators are judged
//! again at every update (their path to the target moves with the clock), from their per-period
//! sums, which are summed again only for the periods whose values changed. Milestones, cases
//! and the reporters' last report are small and recomputed. A new statement, a changed outage,
//! or a clock past the next deadline changes deadlines or statuses across the plan: the
//! progress is then computed whole.

use std::sync::Arc;

use super::indicators::{PeriodSum, PeriodSums, reporter_set};
use super::*;

/// What [`update`] needs of the computation it starts from.
#[derive(Debug, Clone, Default)]
pub(super) struct Kept {
    /// Whether the snapshot's periods were all canonical text (see `Values::canonical_periods`).
    pub incremental: bool,
    /// Per indicator of the plan, in order: where its obligations are.
    pub blocks: Vec<Block>,
    /// The earliest instant after `now_ms` at which an obligation not received falls due.
    pub next_due_ms: i64,
    /// The outages the obligations were computed with.
    pub outages: Vec<Outage>,
    /// Each indicator's values summed per period.
    pub sums: FastMap<String, Arc<PeriodSums>>,
}

/// An indicator's obligations: from `start`, one run of `units` (its reporters, in order) per
/// period of `periods`.
#[derive(Debug, Clone)]
pub(super) struct Block {
    pub start: usize,
    pub units: usize,
    pub periods: Vec<String>,
}

/// How [`update`] arrived at its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Computation {
    /// From the progress before, with what changed.
    Updated,
    /// Whole, as [`compute`] does.
    Whole,
}

impl Computation {
    pub fn name(self) -> &'static str {
        match self {
            Computation::Updated => "updated",
            Computation::Whole => "whole",
        }
    }
}

/// What [`Snapshot::apply_changes`] took in, for [`update`]: the keys of the changed values
/// with when each was first received and signed, and each changed row's unit and time.
/// Made only there (or empty), so that a snapshot given with changes is one they went into,
/// sorted as the sums below need.
#[derive(Debug, Default)]
pub struct Changes {
    values: Vec<(Name, Name, Name, (i64, i64))>,
    reported: Vec<(Name, i64)>,
}

impl Changes {
    pub(super) fn of(values: &[ValueRow], tasks: &[TaskRow]) -> Self {
        Changes {
            values: values
                .iter()
                .map(|v| {
                    (
                        v.indicator_id.clone(),
                        v.unit_id.clone(),
                        v.period.clone(),
                        (v.first_received_at_ms, v.first_issued_at_ms),
                    )
                })
                .collect(),
            reported: values
                .iter()
                .map(|v| (v.unit_id.clone(), v.updated_at_ms))
                .chain(
                    tasks
                        .iter()
                        .map(|t| (Name::from(t.unit_id.as_str()), t.updated_at_ms)),
                )
                .collect(),
        }
    }
}

/// The progress at `now_ms` of `snapshot`, which is the snapshot `previous` was computed on
/// with `changes` taken in since ([`Snapshot::apply_changes`]; none when only the clock
/// moved): `previous` updated where it can be, else computed whole. Either way it equals
/// `compute(plan, snapshot, now_ms)`.
pub fn update(
    plan: &Plan,
    snapshot: &Snapshot,
    previous: Progress,
    changes: &Changes,
    now_ms: i64,
) -> (Progress, Computation) {
    let kept = &previous.kept;
    let cases = cases::cases_by(&snapshot.statements, now_ms);
    let incremental = kept.incremental
        && kept.blocks.len() == plan.indicators.len()
        && (previous.now_ms..kept.next_due_ms).contains(&now_ms)
        && kept.outages == snapshot.outages
        && cases == previous.cases
        && changes.values.iter().all(|(_, _, period, _)| {
            period
                .parse::<Period>()
                .is_ok_and(|p| *period == p.to_string())
        });
    if !incremental {
        return (compute(plan, snapshot, now_ms), Computation::Whole);
    }
    let mut progress = previous;
    let Progress {
        obligations,
        indicators,
        by_unit,
        by_lead_unit,
        last_report_ms,
        kept,
        ..
    } = &mut progress;

    for (unit, at) in &changes.reported {
        let at = *at;
        let last = last_report_ms.entry(unit.to_string()).or_insert(at);
        *last = (*last).max(at);
    }

    let position: FastMap<&str, usize> = plan
        .indicators
        .iter()
        .enumerate()
        .map(|(i, indicator)| (indicator.id.as_str(), i))
        .collect();
    // Built for the indicators touched: their reporters' places, and which periods changed.
    let mut places: FastMap<usize, FastMap<&str, usize>> = FastMap::default();
    let mut periods: std::collections::BTreeSet<(usize, Name)> = Default::default();
    for (indicator_id, unit, period, received) in &changes.values {
        let Some(&i) = position.get(indicator_id.as_str()) else {
            continue;
        };
        let indicator = &plan.indicators[i];
        periods.insert((i, period.clone()));
        let block = &kept.blocks[i];
        let Some(p) = block.periods.iter().position(|text| period == text) else {
            continue;
        };
        let place = places.entry(i).or_insert_with(|| {
            let mut place = FastMap::default();
            // The first of a unit listed twice, as the search by name would find.
            for (u, name) in indicator.reporter_units.iter().enumerate().rev() {
                place.insert(name.as_str(), u);
            }
            place
        });
        let Some(&u) = place.get(unit.as_str()) else {
            continue;
        };
        // Every obligation of this unit and period (a unit listed twice has two).
        let run = block.start + p * block.units..block.start + (p + 1) * block.units;
        // Copied here, and only here, when another progress shares them.
        for o in Arc::make_mut(obligations)[run]
            .iter_mut()
            .skip(u)
            .filter(|o| o.unit == *unit)
        {
            let status = obligation_status(o.due_ms, o.extended_to_ms, Some(*received), now_ms);
            let recount = |rates: &mut Rates| {
                rates.remove(o.status);
                rates.count(status, 1);
            };
            recount(&mut indicators[i].rates);
            by_unit.get_mut(unit.as_str()).map(recount);
            for lead in &indicator.lead_units {
                by_lead_unit.get_mut(lead).map(recount);
            }
            o.status = status;
            o.received_ms = Some(received.0);
        }
    }

    // The changed periods summed again, from their rows (one run of the sorted snapshot).
    for (i, period_text) in periods {
        let indicator = &plan.indicators[i];
        let Ok(period) = period_text.parse::<Period>() else {
            continue;
        };
        fn key(v: &ValueRow) -> (&str, &str) {
            (v.indicator_id.as_str(), v.period.as_str())
        }
        let wanted = (indicator.id.as_str(), period_text.as_str());
        let from = snapshot.values.partition_point(|v| key(v) < wanted);
        let to = from + snapshot.values[from..].partition_point(|v| key(v) == wanted);
        let rows = &snapshot.values[from..to];
        let sums = kept.sums.entry(indicator.id.clone()).or_default();
        let sums = Arc::make_mut(sums);
        if rows.is_empty() {
            sums.remove(&period);
        } else {
            sums.insert(
                period,
                PeriodSum::of(indicator, &reporter_set(indicator), rows.iter()),
            );
        }
    }

    let values = Values::summed(kept.sums.clone());
    for (i, indicator) in plan.indicators.iter().enumerate() {
        let rates = indicators[i].rates;
        indicators[i] = indicator_progress(plan, indicator, &values, now_ms, rates);
    }
    progress.milestones = milestones(plan, &snapshot.tasks, &progress.cases, now_ms);
    progress.now_ms = now_ms;
    (progress, Computation::Updated)
}

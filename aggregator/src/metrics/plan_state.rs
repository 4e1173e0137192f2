//! Plan state as Prometheus text, built at each scrape from a progress computation, the open
//! alerts and the agents' heartbeats: one series per indicator (and per state for state sets),
//! per milestone × lead unit × state, per unit and lead unit; no per-report or per-period series.

use std::collections::HashMap;

use prometheus::{Encoder, GaugeVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::codes::{ALERT_NAMES, SEVERITIES};
use crate::plan::Plan;
use crate::progress::{self, IndicatorStatus, MilestoneStatus, Progress};
use crate::store::{AgentRow, AlertRow};

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

/// The most plan-state series a scrape of `plan` may carry (docs/OPERATIONS.md, "Cardinality
/// budget"): linear in the plan's size, so that a label that leaks per period or per report
/// shows. Per indicator 16 and one per lead unit; per milestone its deadline and five states
/// per lead unit; per unit 17 (its own figures, its figures as a lead unit, its 督办 record);
/// 100 for alerts and the rest. A scrape above it still exports everything, with a warning in
/// the log ([`check_budget`]).
pub fn series_budget(plan: &Plan) -> usize {
    let leads = |ids: &[String]| plan.expand_parties(ids).len().max(1);
    let indicators: usize = plan
        .indicators
        .iter()
        .map(|i| 16 + leads(&i.lead_units))
        .sum();
    let milestones: usize = plan
        .tasks
        .iter()
        .flat_map(|t| {
            t.milestones.iter().map(|m| {
                let own = if m.lead_units.is_empty() {
                    &t.lead_units
                } else {
                    &m.lead_units
                };
                1 + 5 * leads(own)
            })
        })
        .sum();
    100 + indicators + milestones + 17 * plan.units.len()
}

/// Warns (once a process) when the plan-state `text` of one scrape carries more series than
/// [`series_budget`] allows.
pub fn check_budget(plan: &Plan, text: &str) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    let series = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    let budget = series_budget(plan);
    if series > budget {
        WARNED.call_once(|| {
            tracing::warn!(
                series,
                budget,
                "plan-state metrics exceed their series budget (docs/OPERATIONS.md, \"Cardinality budget\"): a label grows with periods or reports"
            )
        });
    }
}

/// Plan state as Prometheus text: built from a progress computation and the open alerts.
/// Cardinality: one series per indicator (and per state for state sets), per milestone × lead
/// unit × state, per unit and lead unit; no per-report or per-period series.
pub fn plan_metrics(
    plan: &Plan,
    progress: &Progress,
    alerts: &[AlertRow],
    agents: &[AgentRow],
) -> String {
    let registry = Registry::new();
    let p = plan.id.as_str();
    let value = gauge(
        &registry,
        "duban_indicator_value",
        "Aggregated city value of an indicator.",
        &["plan", "indicator"],
    );
    let target = gauge(
        &registry,
        "duban_indicator_target",
        "Target of an indicator.",
        &["plan", "indicator"],
    );
    let expected = gauge(
        &registry,
        "duban_indicator_expected",
        "Expected value by now on the straight path from baseline to target.",
        &["plan", "indicator"],
    );
    let ratio = gauge(
        &registry,
        "duban_indicator_progress_ratio",
        "Progress from baseline to target, 0 to 1.",
        &["plan", "indicator"],
    );
    let status = gauge(
        &registry,
        "duban_indicator_status",
        "Indicator status as a state set (1 for the current state).",
        &["plan", "indicator", "status"],
    );
    let info = gauge(
        &registry,
        "duban_indicator_info",
        "Indicator metadata; always 1.",
        &["plan", "indicator", "name", "measure", "lead_unit"],
    );
    let gap = gauge(
        &registry,
        "duban_indicator_source_gap",
        "Authoritative total minus the sum of the other reporters (latest period).",
        &["plan", "indicator"],
    );
    let target_ts = gauge(
        &registry,
        "duban_indicator_target_timestamp_seconds",
        "When an indicator's target is due.",
        &["plan", "indicator"],
    );
    let completeness_i = gauge(
        &registry,
        "duban_indicator_completeness_ratio",
        "Reports received / expected so far, per indicator.",
        &["plan", "indicator"],
    );
    let timeliness_i = gauge(
        &registry,
        "duban_indicator_timeliness_ratio",
        "Reports on time / expected so far, per indicator.",
        &["plan", "indicator"],
    );
    let task_status = gauge(
        &registry,
        "duban_task_status",
        "Milestone status as a state set (1 for the current state).",
        &["plan", "task", "milestone", "lead_unit", "status"],
    );
    let deadline = gauge(
        &registry,
        "duban_milestone_deadline_timestamp_seconds",
        "When a milestone's window closes.",
        &["plan", "task", "milestone"],
    );
    let last = gauge(
        &registry,
        "duban_unit_last_report_timestamp_seconds",
        "When a unit's last accepted value or task update arrived.",
        &["plan", "unit"],
    );
    let heartbeat = gauge(
        &registry,
        "duban_unit_last_heartbeat_timestamp_seconds",
        "When an agent of the unit last said Hello (its heartbeat; 0: never).",
        &["plan", "unit"],
    );
    let completeness_u = gauge(
        &registry,
        "duban_unit_completeness_ratio",
        "Reports received / expected so far, per unit.",
        &["plan", "unit"],
    );
    let timeliness_u = gauge(
        &registry,
        "duban_unit_timeliness_ratio",
        "Reports on time / expected so far, per unit.",
        &["plan", "unit"],
    );
    let completeness_l = gauge(
        &registry,
        "duban_lead_unit_completeness_ratio",
        "Reports received / expected so far for the indicators a unit leads.",
        &["plan", "lead_unit"],
    );
    let timeliness_l = gauge(
        &registry,
        "duban_lead_unit_timeliness_ratio",
        "Reports on time / expected so far for the indicators a unit leads.",
        &["plan", "lead_unit"],
    );
    let overdue = gauge(
        &registry,
        "duban_reports_overdue",
        "Reporting obligations overdue now, per unit.",
        &["plan", "unit"],
    );
    let active = IntGaugeVec::new(
        Opts::new("duban_alerts_active", "Open alerts by name and severity."),
        &["plan", "alertname", "severity"],
    )
    .expect("valid metric");
    registry
        .register(Box::new(active.clone()))
        .expect("unique metric");

    for i in &progress.indicators {
        let Some(indicator) = plan.indicator(&i.indicator) else {
            continue;
        };
        let id = i.indicator.as_str();
        if let Some(v) = i.value {
            value.with_label_values(&[p, id]).set(v);
        }
        if let Some(t) = &indicator.target {
            target.with_label_values(&[p, id]).set(t.value);
            target_ts
                .with_label_values(&[p, id])
                .set(progress::end_of_day_ms(t.date, &plan.tz) as f64 / 1000.0);
        }
        if let Some(e) = i.expected {
            expected.with_label_values(&[p, id]).set(e);
        }
        if let Some(r) = i.progress_ratio {
            ratio.with_label_values(&[p, id]).set(r);
        }
        if let Some(g) = i.source_gap {
            gap.with_label_values(&[p, id]).set(g);
        }
        for s in IndicatorStatus::ALL {
            status
                .with_label_values(&[p, id, s.name()])
                .set(if s == i.status { 1.0 } else { 0.0 });
        }
        let leads = if indicator.lead_units.is_empty() {
            vec!["none".to_owned()]
        } else {
            plan.expand_parties(&indicator.lead_units)
        };
        for lead in &leads {
            info.with_label_values(&[p, id, &indicator.name, &indicator.measure, lead])
                .set(1.0);
        }
        if let (Some(c), Some(t)) = (i.rates.completeness(), i.rates.timeliness()) {
            completeness_i.with_label_values(&[p, id]).set(c);
            timeliness_i.with_label_values(&[p, id]).set(t);
        }
    }
    for m in &progress.milestones {
        let Some(task) = plan.task(&m.task) else {
            continue;
        };
        let leads = if task.lead_units.is_empty() {
            vec!["none".to_owned()]
        } else {
            plan.expand_parties(&task.lead_units)
        };
        for lead in &leads {
            for s in MilestoneStatus::ALL {
                task_status
                    .with_label_values(&[p, &m.task, &m.milestone, lead, s.name()])
                    .set(if s == m.status { 1.0 } else { 0.0 });
            }
        }
        deadline
            .with_label_values(&[p, &m.task, &m.milestone])
            .set(m.deadline_ms as f64 / 1000.0);
    }
    // Per unit in one pass each, so that a scrape is linear in the plan's size.
    let mut overdue_by_unit: HashMap<&str, usize> = HashMap::new();
    for o in progress.obligations.iter() {
        if o.status == progress::ObligationStatus::Overdue {
            *overdue_by_unit.entry(o.unit.as_str()).or_default() += 1;
        }
    }
    let mut seen_by_unit: HashMap<&str, i64> = HashMap::new();
    for a in agents {
        let seen = seen_by_unit
            .entry(a.unit_id.as_str())
            .or_insert(a.last_seen_ms);
        *seen = (*seen).max(a.last_seen_ms);
    }
    for unit in plan.reporting_units() {
        let at = progress.last_report_ms.get(&unit.id).copied().unwrap_or(0);
        last.with_label_values(&[p, &unit.id])
            .set(at as f64 / 1000.0);
        let seen = seen_by_unit.get(unit.id.as_str()).copied().unwrap_or(0);
        heartbeat
            .with_label_values(&[p, &unit.id])
            .set(seen as f64 / 1000.0);
        let rates = progress.by_unit.get(&unit.id).copied().unwrap_or_default();
        completeness_u
            .with_label_values(&[p, &unit.id])
            .set(rates.completeness().unwrap_or(1.0));
        timeliness_u
            .with_label_values(&[p, &unit.id])
            .set(rates.timeliness().unwrap_or(1.0));
        let count = overdue_by_unit.get(unit.id.as_str()).copied().unwrap_or(0);
        overdue.with_label_values(&[p, &unit.id]).set(count as f64);
    }
    for (lead, rates) in &progress.by_lead_unit {
        for unit in plan.expand_parties(std::slice::from_ref(lead)) {
            completeness_l
                .with_label_values(&[p, &unit])
                .set(rates.completeness().unwrap_or(1.0));
            timeliness_l
                .with_label_values(&[p, &unit])
                .set(rates.timeliness().unwrap_or(1.0));
        }
    }
    for name in ALERT_NAMES {
        for severity in SEVERITIES {
            active.with_label_values(&[p, name, severity]).set(0);
        }
    }
    for alert in alerts.iter().filter(|a| a.ends_at_ms.is_none()) {
        let name = alert
            .labels
            .get("alertname")
            .map(String::as_str)
            .unwrap_or("unknown");
        let severity = alert
            .labels
            .get("severity")
            .map(String::as_str)
            .unwrap_or("unknown");
        active.with_label_values(&[p, name, severity]).inc();
    }
    let mut buffer = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buffer)
        .expect("text encoding");
    String::from_utf8(buffer).expect("prometheus text is UTF-8")
}

/// Each alerted unit's 督办 record (see [`crate::supervision`]) as gauges: one series per unit
/// and figure, only for units alerts were sent to.
pub fn supervision_metrics(plan: &Plan, record: &crate::supervision::Record) -> String {
    let registry = Registry::new();
    let p = plan.id.as_str();
    let cases = gauge(
        &registry,
        "duban_supervision_cases",
        "督办: alert cases sent to a unit, by state: alerted (all), answered, overdue (an overdue alert open now).",
        &["plan", "unit", "state"],
    );
    let first_answer = gauge(
        &registry,
        "duban_supervision_first_answer_median_seconds",
        "督办: median time from a case's first alert to the unit's first answer (absent before any answer).",
        &["plan", "unit"],
    );
    let extensions = gauge(
        &registry,
        "duban_supervision_extensions",
        "督办: extensions a unit asked for, and the office's decisions on them: requested, granted, refused.",
        &["plan", "unit", "decision"],
    );
    let claims = gauge(
        &registry,
        "duban_supervision_done_claims",
        "督办: a unit's done claims the office decided: confirmed, rejected.",
        &["plan", "unit", "decision"],
    );
    let level = gauge(
        &registry,
        "duban_supervision_escalation_level_max",
        "督办: the highest escalation level a unit's cases reached (1: none escalated).",
        &["plan", "unit"],
    );
    for u in &record.units {
        let unit = u.unit.as_str();
        for (state, n) in [
            ("alerted", u.alerted),
            ("answered", u.answered),
            ("overdue", u.overdue_now),
        ] {
            cases.with_label_values(&[p, unit, state]).set(f64::from(n));
        }
        if let Some(ms) = u.median_first_answer_ms {
            first_answer
                .with_label_values(&[p, unit])
                .set(ms as f64 / 1000.0);
        }
        for (decision, n) in [
            ("requested", u.extensions_requested),
            ("granted", u.extensions_granted),
            ("refused", u.extensions_refused),
        ] {
            extensions
                .with_label_values(&[p, unit, decision])
                .set(f64::from(n));
        }
        for (decision, n) in [
            ("confirmed", u.claims_confirmed),
            ("rejected", u.claims_rejected),
        ] {
            claims
                .with_label_values(&[p, unit, decision])
                .set(f64::from(n));
        }
        level
            .with_label_values(&[p, unit])
            .set(f64::from(u.max_escalation_level));
    }
    let mut buffer = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buffer)
        .expect("text encoding");
    String::from_utf8(buffer).expect("prometheus text is UTF-8")
}

//! Deadline alerts for lead units, derived from [`crate::progress::Progress`].
//!
//! Every alert carries `alertname`, `severity`, `lead_unit` and `plan`, plus the `unit`,
//! `indicator` or `task` (and `milestone`) concerned. An alert concerning several lead units is
//! one alert per lead unit, so that each lead unit's receiver gets its own. Where the plan names
//! no lead unit (按职责分工负责), the alert goes to each responsible unit instead, marked
//! `lead_unit_source="responsible"`; no lead unit is invented.
//!
//! Severity: `ReportDueSoon` is `info`; the others are `warning`, and `critical` once
//! `critical_after_days` have passed since the deadline (or, for an indicator, once its target
//! date has passed unmet).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::plan::Plan;
use crate::progress::{DAY_MS, IndicatorStatus, MilestoneStatus, ObligationStatus, Progress};

pub const ALERT_NAMES: [&str; 5] = [
    "ReportDueSoon",
    "ReportOverdue",
    "IndicatorLagging",
    "TaskLagging",
    "TaskOverdue",
];
pub const SEVERITIES: [&str; 3] = ["info", "warning", "critical"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertPolicy {
    /// `ReportDueSoon` fires this many days before a report is due.
    pub due_soon_days: i64,
    /// Overdue alerts become critical this many days after the deadline.
    pub critical_after_days: i64,
}

impl Default for AlertPolicy {
    fn default() -> Self {
        AlertPolicy {
            due_soon_days: 7,
            critical_after_days: 30,
        }
    }
}

/// One alert as it should be at the time of evaluation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl Alert {
    /// The identity of an alert: its label set minus `severity`, which may escalate.
    pub fn key(&self) -> String {
        self.labels
            .iter()
            .filter(|(k, _)| k.as_str() != "severity")
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn name(&self) -> &str {
        self.labels
            .get("alertname")
            .map(String::as_str)
            .unwrap_or_default()
    }

    pub fn lead_unit(&self) -> &str {
        self.labels
            .get("lead_unit")
            .map(String::as_str)
            .unwrap_or_default()
    }
}

fn severity(days_late: i64, policy: &AlertPolicy) -> &'static str {
    if days_late >= policy.critical_after_days {
        "critical"
    } else {
        "warning"
    }
}

/// Who receives an alert: the lead units, or where none is named, the responsible units.
fn recipients(lead: &[String], responsible: &[String], plan: &Plan) -> Vec<(String, &'static str)> {
    if !lead.is_empty() {
        return plan
            .expand_parties(lead)
            .into_iter()
            .map(|u| (u, "lead"))
            .collect();
    }
    plan.expand_parties(responsible)
        .into_iter()
        .map(|u| (u, "responsible"))
        .collect()
}

fn date_text(ms: i64, plan: &Plan) -> String {
    crate::progress::date_of_ms(ms - 1, &plan.tz).to_string()
}

/// Every alert that should be active at `progress.now_ms`.
pub fn evaluate(plan: &Plan, progress: &Progress, policy: &AlertPolicy) -> Vec<Alert> {
    let now = progress.now_ms;
    let mut out = Vec::new();
    let mut push = |name: &str,
                    severity: &str,
                    lead: (String, &'static str),
                    subject: &[(&str, &str)],
                    summary: String,
                    description: String| {
        let mut labels: BTreeMap<String, String> = [
            ("alertname", name),
            ("severity", severity),
            ("plan", plan.id.as_str()),
            ("lead_unit", lead.0.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        if lead.1 == "responsible" {
            labels.insert("lead_unit_source".into(), "responsible".into());
        }
        for (k, v) in subject {
            labels.insert((*k).to_owned(), (*v).to_owned());
        }
        let annotations = [
            ("summary".to_owned(), summary),
            ("description".to_owned(), description),
        ]
        .into_iter()
        .collect();
        out.push(Alert {
            labels,
            annotations,
        });
    };

    for o in &progress.obligations {
        let Some(indicator) = plan.indicator(&o.indicator) else {
            continue;
        };
        let unit_name = plan.party_name(&o.unit);
        let due = date_text(o.due_ms, plan);
        let soon = o.status == ObligationStatus::NotDue
            && o.due_ms - now <= policy.due_soon_days * DAY_MS
            && o.due_ms > now;
        let overdue = o.status == ObligationStatus::Overdue;
        if !soon && !overdue {
            continue;
        }
        for lead in recipients(&indicator.lead_units, &[], plan) {
            let subject = [
                ("unit", o.unit.as_str()),
                ("indicator", o.indicator.as_str()),
                ("period", o.period.as_str()),
            ];
            if soon {
                push(
                    "ReportDueSoon",
                    "info",
                    lead,
                    &subject,
                    format!(
                        "{unit_name} 的 {} ({}) 报告将于 {due} 到期",
                        indicator.name, o.period
                    ),
                    format!(
                        "{} of {} for {} is due by {due} (end of day, {}).",
                        indicator.id, o.unit, o.period, plan.time_zone
                    ),
                );
            } else {
                let days = (now - o.due_ms) / DAY_MS;
                push(
                    "ReportOverdue",
                    severity(days, policy),
                    lead,
                    &subject,
                    format!(
                        "{unit_name} 的 {} ({}) 报告已逾期 {days} 天",
                        indicator.name, o.period
                    ),
                    format!(
                        "{} of {} for {} was due by {due}; nothing has been received.",
                        indicator.id, o.unit, o.period
                    ),
                );
            }
        }
    }

    for p in &progress.indicators {
        if !matches!(p.status, IndicatorStatus::Lagging | IndicatorStatus::Late) {
            continue;
        }
        let Some(indicator) = plan.indicator(&p.indicator) else {
            continue;
        };
        let severity = if p.status == IndicatorStatus::Late {
            "critical"
        } else {
            "warning"
        };
        let fmt = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "—".into());
        for lead in recipients(&indicator.lead_units, &[], plan) {
            push(
                "IndicatorLagging",
                severity,
                lead,
                &[("indicator", p.indicator.as_str())],
                format!(
                    "{} 落后于进度: {} (应达 {}, 目标 {})",
                    indicator.name,
                    fmt(p.value),
                    fmt(p.expected),
                    fmt(p.target)
                ),
                format!(
                    "{} is {}: value {}, expected by now {}, target {} {}.",
                    p.indicator,
                    p.status.name(),
                    fmt(p.value),
                    fmt(p.expected),
                    fmt(p.target),
                    indicator.measure
                ),
            );
        }
    }

    for m in &progress.milestones {
        let (name, severity) = match m.status {
            MilestoneStatus::Lagging => ("TaskLagging", "warning"),
            MilestoneStatus::Overdue => ("TaskOverdue", severity(m.days_overdue, policy)),
            _ => continue,
        };
        let Some(task) = plan.task(&m.task) else {
            continue;
        };
        let percent = m
            .percent
            .map(|p| format!("{p:.0}%"))
            .unwrap_or_else(|| "no update".into());
        let deadline = date_text(m.deadline_ms, plan);
        for lead in recipients(&task.lead_units, &task.responsible_units, plan) {
            push(
                name,
                severity,
                lead,
                &[
                    ("task", m.task.as_str()),
                    ("milestone", m.milestone.as_str()),
                ],
                format!(
                    "{} {} ({}) {}: {percent}, 截止 {deadline}",
                    task.section,
                    task.title,
                    m.milestone,
                    if name == "TaskOverdue" {
                        "已逾期"
                    } else {
                        "进度落后"
                    }
                ),
                format!(
                    "Task {} milestone {} is {} at {percent}; window ends {deadline}.",
                    m.task,
                    m.milestone,
                    m.status.name()
                ),
            );
        }
    }
    out.sort_by_key(|a| a.key());
    out.dedup_by(|a, b| a.key() == b.key());
    out
}

//! Deadline alerts, derived from [`crate::progress::Progress`].
//!
//! Every alert carries `alertname`, `severity`, `plan`, `lead_unit`, `recipient` and `role`,
//! plus the `unit`, `indicator`, `period`, `task` or `milestone` concerned. `recipient` is the
//! unit that receives the alert and the label Alertmanager routes on; an alert for several
//! recipients is one alert per recipient, so that each gets its own:
//! - report alerts (`ReportDueSoon`, `ReportOverdue`) go to the unit that owes the report
//!   (`role="reporter"`, 催报) and, as a copy, to each lead unit of the indicator
//!   (`role="lead"`);
//! - indicator and task alerts go to each lead unit (`role="lead"`; for a milestone taken from
//!   a track phase, that phase's lead); where the plan names no lead unit (按职责分工负责) to
//!   each responsible unit instead (`role="responsible"`, `lead_unit="none"`), and where it
//!   names neither, to the supervising office (`role="office"`); no lead unit is invented.
//!
//! `lead_unit` names the lead unit concerned: the recipient itself for `role="lead"`, the
//! subject's lead units (comma-separated where several) for `role="reporter"`.
//!
//! Severity: `ReportDueSoon` is `info`; the others are `warning`, and `critical` once
//! `critical_after_days` have passed since the deadline (or, for an indicator, once its target
//! date has passed unmet).
//!
//! Not alerted: deadlines before the go-live time (they are history, shown in `status` and the
//! API but never sent), and alerts matching a mute.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::plan::Plan;
use crate::progress::{
    DAY_MS, IndicatorStatus, MilestoneStatus, ObligationStatus, Progress, cases,
};

pub use crate::codes::{ALERT_NAMES, SEVERITIES};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertPolicy {
    /// `ReportDueSoon` fires this many days before a report is due.
    pub due_soon_days: i64,
    /// Overdue alerts become critical this many days after the deadline.
    pub critical_after_days: i64,
    /// Deadlines before this instant are not alerted (`None`: every deadline is).
    pub go_live_ms: Option<i64>,
    /// Alerts matching any of these are not sent.
    pub mutes: Vec<Mute>,
}

impl Default for AlertPolicy {
    fn default() -> Self {
        AlertPolicy {
            due_soon_days: 7,
            critical_after_days: 30,
            go_live_ms: None,
            mutes: Vec::new(),
        }
    }
}

/// Silences the alerts whose labels match every field given (at least one is).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Mute {
    pub alertname: Option<String>,
    /// Matches the `recipient`, `unit` or `lead_unit` label.
    pub unit: Option<String>,
    pub plan: Option<String>,
    /// The mute ends at this instant (`None`: until removed from the configuration).
    pub until_ms: Option<i64>,
    pub reason: String,
}

impl Mute {
    pub fn matches(&self, alert: &Alert, now_ms: i64) -> bool {
        if self.until_ms.is_some_and(|until| now_ms >= until) {
            return false;
        }
        let label = |name: &str| alert.labels.get(name).map(String::as_str);
        let unit_matches = |unit: &str| {
            label("recipient") == Some(unit)
                || label("unit") == Some(unit)
                || label("lead_unit").is_some_and(|l| l.split(',').any(|u| u == unit))
        };
        self.alertname
            .as_deref()
            .is_none_or(|n| label("alertname") == Some(n))
            && self
                .plan
                .as_deref()
                .is_none_or(|p| label("plan") == Some(p))
            && self.unit.as_deref().is_none_or(unit_matches)
    }
}

/// What one evaluation decided.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Evaluated {
    /// The alerts to fire or keep firing.
    pub alerts: Vec<Alert>,
    /// Alerts left out because a mute matched.
    pub muted: usize,
    /// Deadlines passed before the go-live time: shown, not alerted.
    pub before_go_live: usize,
}

/// One alert as it should be at the time of evaluation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl Alert {
    /// The identity of an alert: its label set minus `severity` and `escalation_level`, which
    /// rise with time.
    pub fn key(&self) -> String {
        self.labels
            .iter()
            .filter(|(k, _)| k.as_str() != "severity" && k.as_str() != "escalation_level")
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

    /// The unit that receives this alert (the label Alertmanager routes on).
    pub fn recipient(&self) -> &str {
        self.labels
            .get("recipient")
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

/// Who receives an alert about a subject: each lead unit; where none is named, each
/// responsible unit; where there is none either, the supervising office. `(recipient, role)`.
fn owners(lead: &[String], responsible: &[String], plan: &Plan) -> Vec<(String, &'static str)> {
    if !lead.is_empty() {
        return plan
            .expand_parties(lead)
            .into_iter()
            .map(|u| (u, "lead"))
            .collect();
    }
    if !responsible.is_empty() {
        return plan
            .expand_parties(responsible)
            .into_iter()
            .map(|u| (u, "responsible"))
            .collect();
    }
    plan.supervision
        .office
        .iter()
        .map(|o| (o.clone(), "office"))
        .collect()
}

fn date_text(ms: i64, plan: &Plan) -> String {
    crate::progress::date_of_ms(ms - 1, &plan.tz).to_string()
}

/// "已逾期 N 天", or "已逾期不足 1 天" on the first day.
fn overdue_text(days: i64) -> String {
    if days >= 1 {
        format!("已逾期 {days} 天")
    } else {
        "已逾期不足 1 天".to_owned()
    }
}

/// Every alert that should be active at `progress.now_ms`, after go-live and mutes.
pub fn derive(plan: &Plan, progress: &Progress, policy: &AlertPolicy) -> Evaluated {
    let now = progress.now_ms;
    let go_live = policy.go_live_ms.unwrap_or(i64::MIN);
    let mut before_go_live = 0;
    let mut out = Vec::new();
    let mut push = |name: &str,
                    severity: &str,
                    (recipient, role): (String, &'static str),
                    lead_unit: &str,
                    subject: &[(&str, &str)],
                    summary: String,
                    description: String,
                    days_late: Option<i64>| {
        let mut labels: BTreeMap<String, String> = [
            ("alertname", name),
            ("severity", severity),
            ("plan", plan.id.as_str()),
            ("lead_unit", lead_unit),
            ("recipient", recipient.as_str()),
            ("role", role),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        for (k, v) in subject {
            labels.insert((*k).to_owned(), (*v).to_owned());
        }
        // Past the deadline the case climbs the plan's escalation ladder.
        let level = days_late.map_or(1, |d| plan.supervision.level_after(d));
        labels.insert("escalation_level".to_owned(), level.to_string());
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

    for o in progress.obligations.iter() {
        let deadline = o.overdue_after_ms();
        let soon = o.status == ObligationStatus::NotDue
            && deadline - now <= policy.due_soon_days * DAY_MS
            && deadline > now;
        let overdue = o.status == ObligationStatus::Overdue;
        if !soon && !overdue {
            continue;
        }
        let Some(indicator) = plan.indicator(&o.indicator) else {
            continue;
        };
        if o.due_ms < go_live {
            before_go_live += 1;
            continue;
        }
        let unit_name = plan.party_name(&o.unit);
        let due = date_text(deadline, plan);
        // Copies go to the lead units; where the document names none, to the office.
        let leads = if indicator.lead_units.is_empty() {
            plan.supervision.office.iter().cloned().collect()
        } else {
            plan.expand_parties(&indicator.lead_units)
        };
        let copy_role = if indicator.lead_units.is_empty() {
            "office"
        } else {
            "lead"
        };
        let mut recipients = vec![(o.unit.to_string(), "reporter")];
        recipients.extend(
            leads
                .iter()
                .filter(|lead| o.unit != **lead)
                .map(|lead| (lead.clone(), copy_role)),
        );
        let all_leads = if indicator.lead_units.is_empty() {
            "none".to_owned()
        } else {
            leads.join(",")
        };
        let subject = [
            ("unit", o.unit.as_str()),
            ("indicator", o.indicator.as_str()),
            ("period", o.period.as_str()),
        ];
        for recipient in recipients {
            let lead_unit = if recipient.1 == "lead" {
                recipient.0.clone()
            } else {
                all_leads.clone()
            };
            if soon {
                push(
                    "ReportDueSoon",
                    "info",
                    recipient,
                    &lead_unit,
                    &subject,
                    format!(
                        "{unit_name} 的 {} ({}) 报告将于 {due} 到期",
                        indicator.name, o.period
                    ),
                    format!(
                        "{} of {} for {} is due by {due} (end of day, {}).",
                        indicator.id, o.unit, o.period, plan.time_zone
                    ),
                    None,
                );
            } else {
                let days = (now - deadline) / DAY_MS;
                push(
                    "ReportOverdue",
                    severity(days, policy),
                    recipient,
                    &lead_unit,
                    &subject,
                    format!(
                        "{unit_name} 的 {} ({}) 报告{}",
                        indicator.name,
                        o.period,
                        overdue_text(days)
                    ),
                    format!(
                        "{} of {} for {} was due by {due}; nothing has been received.",
                        indicator.id, o.unit, o.period
                    ),
                    Some(days),
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
        if p.status == IndicatorStatus::Late
            && indicator
                .target
                .as_ref()
                .is_some_and(|t| crate::progress::end_of_day_ms(t.date, &plan.tz) < go_live)
        {
            before_go_live += 1;
            continue;
        }
        let severity = if p.status == IndicatorStatus::Late {
            "critical"
        } else {
            "warning"
        };
        let fmt = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "—".into());
        // A target date passed unmet escalates like an overdue report.
        let late_days = (p.status == IndicatorStatus::Late)
            .then(|| {
                indicator
                    .target
                    .as_ref()
                    .map(|t| (now - crate::progress::end_of_day_ms(t.date, &plan.tz)) / DAY_MS)
            })
            .flatten();
        for recipient in owners(&indicator.lead_units, &[], plan) {
            let lead_unit = recipient.0.clone();
            push(
                "IndicatorLagging",
                severity,
                recipient,
                &lead_unit,
                &[("indicator", p.indicator.as_str())],
                format!(
                    "{} 落后于进度: {} (应达 {}, 目标 {})",
                    indicator.name,
                    fmt(p.value),
                    fmt(p.judged_expected),
                    fmt(p.target)
                ),
                format!(
                    "{} is {}: value {}, expected {} at the end of the period it describes, target {} {}.",
                    p.indicator,
                    p.status.name(),
                    fmt(p.value),
                    fmt(p.judged_expected),
                    fmt(p.target),
                    indicator.measure
                ),
                late_days,
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
        if name == "TaskOverdue" && m.deadline_ms < go_live {
            before_go_live += 1;
            continue;
        }
        let percent = m
            .percent
            .map(|p| format!("{p:.0}%"))
            .unwrap_or_else(|| "no update".into());
        let deadline = date_text(m.deadline_ms, plan);
        let milestone_leads = task
            .milestones
            .iter()
            .find(|x| x.id == m.milestone)
            .map(|x| x.lead_units.as_slice())
            .filter(|l| !l.is_empty())
            .unwrap_or(&task.lead_units);
        for recipient in owners(milestone_leads, &task.responsible_units, plan) {
            let lead_unit = if recipient.1 == "lead" {
                recipient.0.clone()
            } else {
                "none".to_owned()
            };
            push(
                name,
                severity,
                recipient,
                &lead_unit,
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
                (name == "TaskOverdue").then_some(m.days_overdue),
            );
        }
    }
    let mut out = supervise(plan, progress, out);
    out.sort_by_key(|a| a.key());
    out.dedup_by(|a, b| a.key() == b.key());
    let before = out.len();
    out.retain(|alert| !policy.mutes.iter().any(|m| m.matches(alert, now)));
    Evaluated {
        muted: before - out.len(),
        alerts: out,
        before_go_live,
    }
}

/// The case an alert is about (see [`crate::progress::cases`]): the same for each recipient.
pub fn case_of(labels: &BTreeMap<String, String>) -> String {
    let label = |k: &str| labels.get(k).map(String::as_str).unwrap_or_default();
    match label("alertname") {
        "ReportDueSoon" | "ReportOverdue" => {
            cases::report_case(label("indicator"), label("period"), label("unit"))
        }
        "TaskLagging" | "TaskOverdue" => cases::milestone_case(label("task"), label("milestone")),
        _ => cases::indicator_case(label("indicator")),
    }
}

/// The 督办 layer over the derived alerts: each names its case (annotation `case`); an
/// acknowledged one says by whom and when, and is quiet until `quiet_until` (re-sends pause);
/// at escalation level 2 and above each rung's units up to that level receive it too
/// (`role="escalation"`).
fn supervise(plan: &Plan, progress: &Progress, alerts: Vec<Alert>) -> Vec<Alert> {
    let quiet_ms = plan.supervision.quiet_days * DAY_MS;
    let mut told: std::collections::HashSet<(String, String)> = alerts
        .iter()
        .map(|a| (case_of(&a.labels), a.recipient().to_owned()))
        .collect();
    let mut out = Vec::with_capacity(alerts.len());
    for mut alert in alerts {
        let case = case_of(&alert.labels);
        if let Some((unit, at_ms)) = progress.cases.get(&case).and_then(|c| c.last_ack()) {
            let at = jiff::Timestamp::from_millisecond(*at_ms)
                .map(|t| {
                    t.to_zoned(plan.tz.clone())
                        .strftime("%Y-%m-%d %H:%M")
                        .to_string()
                })
                .unwrap_or_default();
            alert
                .annotations
                .insert("acknowledged".to_owned(), format!("{unit} {at}"));
            if let Ok(until) = jiff::Timestamp::from_millisecond(at_ms + quiet_ms) {
                alert
                    .annotations
                    .insert("quiet_until".to_owned(), until.to_string());
            }
        }
        alert.annotations.insert("case".to_owned(), case.clone());
        let level: u32 = alert
            .labels
            .get("escalation_level")
            .and_then(|l| l.parse().ok())
            .unwrap_or(1);
        for rung in plan.supervision.ladder.iter().filter(|r| r.level <= level) {
            for unit in plan.expand_parties(&rung.to) {
                if !told.insert((case.clone(), unit.clone())) {
                    continue;
                }
                let mut copy = alert.clone();
                copy.labels.insert("recipient".to_owned(), unit);
                copy.labels
                    .insert("role".to_owned(), "escalation".to_owned());
                out.push(copy);
            }
        }
        out.push(alert);
    }
    out
}

/// Whether an alert is in the quiet period of an acknowledgement at `now_ms`.
pub fn is_quiet(annotations: &BTreeMap<String, String>, now_ms: i64) -> bool {
    annotations
        .get("quiet_until")
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .is_some_and(|until| now_ms < until.as_millisecond())
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;

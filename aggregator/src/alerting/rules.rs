//! Deadline alerts, derived from [`crate::progress::Progress`].
//!
//! Every alert carries `alertname`, `severity`, `plan`, `lead_unit`, `recipient` and `role`,
//! plus the `unit`, `indicator`, `period`, `task` or `milestone` concerned. `recipient` is the
//! unit that receives the alert and the label Alertmanager routes on; an alert for several
//! recipients is one alert per recipient, so that each gets its own:
//! - report alerts (`ReportDueSoon`, `ReportOverdue`) go to the unit that owes the report
//!   (`role="reporter"`, 催报) and, as a copy, to each lead unit of the indicator
//!   (`role="lead"`);
//! - indicator and task alerts go to each lead unit (`role="lead"`); where the plan names no
//!   lead unit (按职责分工负责) to each responsible unit instead (`role="responsible"`,
//!   `lead_unit="none"`); no lead unit is invented.
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
use crate::progress::{DAY_MS, IndicatorStatus, MilestoneStatus, ObligationStatus, Progress};

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

/// Who receives an alert about a subject: each lead unit, or where none is named, each
/// responsible unit. `(recipient, role)`.
fn owners(lead: &[String], responsible: &[String], plan: &Plan) -> Vec<(String, &'static str)> {
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
                    description: String| {
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
        let deadline = o.overdue_after_ms();
        let soon = o.status == ObligationStatus::NotDue
            && deadline - now <= policy.due_soon_days * DAY_MS
            && deadline > now;
        let overdue = o.status == ObligationStatus::Overdue;
        if !soon && !overdue {
            continue;
        }
        if o.due_ms < go_live {
            before_go_live += 1;
            continue;
        }
        let unit_name = plan.party_name(&o.unit);
        let due = date_text(deadline, plan);
        let leads = plan.expand_parties(&indicator.lead_units);
        let mut recipients = vec![(o.unit.clone(), "reporter")];
        recipients.extend(
            leads
                .iter()
                .filter(|lead| **lead != o.unit)
                .map(|lead| (lead.clone(), "lead")),
        );
        let all_leads = if leads.is_empty() {
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
        for recipient in owners(&task.lead_units, &task.responsible_units, plan) {
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
            );
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> i64 {
        text.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    fn alerts_at(now: &str, policy: &AlertPolicy) -> Evaluated {
        let plan = crate::plan::embedded().plan;
        let progress = crate::progress::compute(&plan, &Default::default(), at(now));
        derive(&plan, &progress, policy)
    }

    #[test]
    fn deadlines_before_the_go_live_are_counted_not_alerted() {
        let all = alerts_at("2018-08-01T00:00:00Z", &AlertPolicy::default());
        assert_eq!(all.before_go_live, 0);
        let live = alerts_at(
            "2018-08-01T00:00:00Z",
            &AlertPolicy {
                go_live_ms: Some(at("2018-06-01T00:00:00Z")),
                ..Default::default()
            },
        );
        assert!(live.before_go_live > 0);
        assert!(live.alerts.len() < all.alerts.len());
        // Reports due before June are not alerted; one due after is (2018Q2, due 2018-07-30).
        let period = |a: &Alert| a.labels.get("period").cloned().unwrap_or_default();
        assert!(!live.alerts.iter().any(|a| period(a) == "2018Q1"));
        assert!(live.alerts.iter().any(|a| period(a) == "2018Q2"));
        // Lagging is about now, whatever the go-live.
        assert!(live.alerts.iter().any(|a| a.name() == "TaskLagging"));
    }

    #[test]
    fn a_report_alert_goes_to_the_unit_that_owes_it_and_to_its_lead_unit() {
        let all = alerts_at("2018-08-01T00:00:00Z", &AlertPolicy::default());
        let copies: Vec<(&str, &str)> = all
            .alerts
            .iter()
            .filter(|a| {
                a.name() == "ReportOverdue"
                    && a.labels["unit"] == "laoshan"
                    && a.labels["indicator"] == "pct-applications"
                    && a.labels["period"] == "2018Q1"
            })
            .map(|a| (a.recipient(), a.labels["role"].as_str()))
            .collect();
        assert_eq!(copies, [("laoshan", "reporter"), ("science-tech", "lead")]);
        // A unit that reports what it leads gets one alert, not two.
        let own: Vec<&Alert> = all
            .alerts
            .iter()
            .filter(|a| {
                a.name() == "ReportOverdue"
                    && a.labels["unit"] == "science-tech"
                    && a.labels["period"] == "2018Q1"
                    && a.labels["indicator"] == "pct-applications"
            })
            .collect();
        assert_eq!(own.len(), 1);
    }

    #[test]
    fn mutes_match_their_labels_until_they_end() {
        let now = "2018-08-01T00:00:00Z";
        let muted = |mute: Mute| {
            alerts_at(
                now,
                &AlertPolicy {
                    mutes: vec![mute],
                    ..Default::default()
                },
            )
        };
        let all = alerts_at(now, &AlertPolicy::default());
        let laoshan = muted(Mute {
            unit: Some("laoshan".into()),
            ..Default::default()
        });
        assert!(laoshan.muted > 0);
        assert_eq!(laoshan.muted + laoshan.alerts.len(), all.alerts.len());
        assert!(laoshan.alerts.iter().all(|a| a.recipient() != "laoshan"
            && a.labels.get("unit").map(String::as_str) != Some("laoshan")));
        let lagging = muted(Mute {
            alertname: Some("TaskLagging".into()),
            ..Default::default()
        });
        assert!(lagging.alerts.iter().all(|a| a.name() != "TaskLagging"));
        let other_plan = muted(Mute {
            plan: Some("another-plan".into()),
            ..Default::default()
        });
        assert_eq!(other_plan.muted, 0);
        let ended = muted(Mute {
            unit: Some("laoshan".into()),
            until_ms: Some(at("2018-07-01T00:00:00Z")),
            ..Default::default()
        });
        assert_eq!(ended.muted, 0, "a mute that has ended mutes nothing");
    }

    /// Alerts at `now_ms` with nothing received, and the deadline of laoshan's 2018Q1 PCT
    /// applications report.
    fn evaluated_at_ms(now_ms: i64) -> (Evaluated, i64) {
        let plan = crate::plan::embedded().plan;
        let progress = crate::progress::compute(&plan, &Default::default(), now_ms);
        let deadline = progress
            .obligations
            .iter()
            .find(|o| {
                o.unit == "laoshan" && o.indicator == "pct-applications" && o.period == "2018Q1"
            })
            .expect("laoshan reports pct-applications for 2018Q1")
            .overdue_after_ms();
        (derive(&plan, &progress, &AlertPolicy::default()), deadline)
    }

    /// (alertname, severity) of laoshan's own alerts about its 2018Q1 PCT report.
    fn laoshan_q1(evaluated: &Evaluated) -> Vec<(String, String)> {
        evaluated
            .alerts
            .iter()
            .filter(|a| {
                a.recipient() == "laoshan"
                    && a.labels.get("indicator").map(String::as_str) == Some("pct-applications")
                    && a.labels.get("period").map(String::as_str) == Some("2018Q1")
            })
            .map(|a| (a.name().to_owned(), a.labels["severity"].clone()))
            .collect()
    }

    fn pair(name: &str, severity: &str) -> Vec<(String, String)> {
        vec![(name.to_owned(), severity.to_owned())]
    }

    #[test]
    fn due_soon_opens_due_soon_days_before_the_deadline_and_overdue_starts_at_it() {
        let (_, deadline) = evaluated_at_ms(at("2018-04-01T00:00:00Z"));
        let week = 7 * DAY_MS;
        let cases = [
            (deadline - week - 1, vec![]),
            (deadline - week, pair("ReportDueSoon", "info")),
            (deadline - 1, pair("ReportDueSoon", "info")),
            (deadline, pair("ReportOverdue", "warning")),
        ];
        for (now, expected) in cases {
            let (evaluated, _) = evaluated_at_ms(now);
            assert_eq!(
                laoshan_q1(&evaluated),
                expected,
                "at deadline {:+} ms",
                now - deadline
            );
        }
        let (evaluated, _) = evaluated_at_ms(deadline);
        let summary = &evaluated
            .alerts
            .iter()
            .find(|a| {
                a.recipient() == "laoshan"
                    && a.name() == "ReportOverdue"
                    && a.labels.get("period").map(String::as_str) == Some("2018Q1")
                    && a.labels.get("indicator").map(String::as_str) == Some("pct-applications")
            })
            .unwrap()
            .annotations["summary"];
        assert!(summary.contains("已逾期不足 1 天"), "{summary}");
    }

    #[test]
    fn overdue_alerts_become_critical_after_critical_after_days() {
        let (_, deadline) = evaluated_at_ms(at("2018-04-01T00:00:00Z"));
        let days = AlertPolicy::default().critical_after_days;
        let (warning, _) = evaluated_at_ms(deadline + days * DAY_MS - 1);
        assert_eq!(laoshan_q1(&warning), pair("ReportOverdue", "warning"));
        let (critical, _) = evaluated_at_ms(deadline + days * DAY_MS);
        assert_eq!(laoshan_q1(&critical), pair("ReportOverdue", "critical"));

        // Milestones escalate the same way, counted from their own deadline.
        let plan = crate::plan::embedded().plan;
        let progress =
            crate::progress::compute(&plan, &Default::default(), at("2018-04-01T00:00:00Z"));
        let milestone = progress
            .milestones
            .iter()
            .filter(|m| m.deadline_ms > at("2018-04-01T00:00:00Z"))
            .min_by_key(|m| m.deadline_ms)
            .expect("a milestone ahead");
        let severity_at = |now: i64| {
            let progress = crate::progress::compute(&plan, &Default::default(), now);
            derive(&plan, &progress, &AlertPolicy::default())
                .alerts
                .iter()
                .filter(|a| {
                    a.name() == "TaskOverdue"
                        && a.labels["task"] == milestone.task
                        && a.labels["milestone"] == milestone.milestone
                })
                .map(|a| a.labels["severity"].clone())
                .collect::<Vec<_>>()
        };
        let before = severity_at(milestone.deadline_ms + days * DAY_MS - DAY_MS);
        assert!(
            !before.is_empty() && before.iter().all(|s| s == "warning"),
            "{before:?}"
        );
        let after = severity_at(milestone.deadline_ms + days * DAY_MS + DAY_MS);
        assert!(
            !after.is_empty() && after.iter().all(|s| s == "critical"),
            "{after:?}"
        );
    }

    #[test]
    fn a_task_without_a_lead_unit_alerts_each_responsible_unit_and_invents_no_lead() {
        let plan = crate::plan::embedded().plan;
        let task = plan
            .tasks
            .iter()
            .find(|t| t.lead_units.is_empty() && !t.milestones.is_empty())
            .expect("the plan has tasks 按职责分工负责");
        let now = at("2020-12-31T00:00:00Z");
        let progress = crate::progress::compute(&plan, &Default::default(), now);
        let evaluated = derive(&plan, &progress, &AlertPolicy::default());
        let about: Vec<&Alert> = evaluated
            .alerts
            .iter()
            .filter(|a| a.labels.get("task") == Some(&task.id))
            .collect();
        assert!(
            !about.is_empty(),
            "task {} is overdue by the end of 2020",
            task.id
        );
        let mut recipients: Vec<&str> = about.iter().map(|a| a.recipient()).collect();
        recipients.sort_unstable();
        recipients.dedup();
        let mut responsible = plan.expand_parties(&task.responsible_units);
        responsible.sort_unstable();
        assert_eq!(recipients, responsible);
        for alert in about {
            assert_eq!(alert.labels["role"], "responsible");
            assert_eq!(alert.lead_unit(), "none");
        }
    }
}

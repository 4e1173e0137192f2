//! The demo's outcome: counts scraped from the aggregator's /metrics, the checks of the hard
//! parts, the indicator table and the alerts the inboxes received, as printed and as
//! `summary.json`.

use crate::inbox::Inbox;
use crate::options::Options;
use duban_aggregator::alerting::rules::ALERT_NAMES;
use duban_aggregator::plan::Plan;
use duban_aggregator::progress::Progress;
use jiff::civil::Date;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Report outcomes as the aggregator counts them (`duban_reports_*_total`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Counts {
    pub accepted: u64,
    pub duplicate: u64,
    pub partial: u64,
    pub refused: u64,
}

impl Counts {
    pub fn plus(&self, other: &Counts) -> Counts {
        Counts {
            accepted: self.accepted + other.accepted,
            duplicate: self.duplicate + other.duplicate,
            partial: self.partial + other.partial,
            refused: self.refused + other.refused,
        }
    }
}

fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Reads the outcome counters from the aggregator's `/metrics`, as Prometheus would.
pub async fn scrape(client: &reqwest::Client, http: SocketAddr) -> Option<Counts> {
    let text = client
        .get(format!("http://{http}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(Counts {
        accepted: metric_sum(&text, "duban_reports_accepted_total"),
        duplicate: metric_sum(&text, "duban_reports_duplicate_total"),
        partial: metric_sum(&text, "duban_reports_partial_total"),
        refused: metric_sum(&text, "duban_reports_rejected_total"),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// "passed", "failed" or "not reached" (the run stopped before the event's day).
    pub status: &'static str,
    pub detail: String,
}

impl Check {
    pub fn passed(detail: impl Into<String>) -> Self {
        Check {
            status: "passed",
            detail: detail.into(),
        }
    }
    pub fn failed(detail: impl Into<String>) -> Self {
        Check {
            status: "failed",
            detail: detail.into(),
        }
    }
    pub fn not_reached(detail: impl Into<String>) -> Self {
        Check {
            status: "not reached",
            detail: format!("not reached before --until: {}", detail.into()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct IndicatorLine {
    pub indicator: String,
    pub name: String,
    pub value: Option<f64>,
    /// The expected value the status was judged against: the straight path at the end of the
    /// period the value describes (not today's path, which a report not due yet lags behind).
    pub expected: Option<f64>,
    pub target: Option<f64>,
    pub status: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub plan: String,
    pub seed: u64,
    pub from: Date,
    pub until: Date,
    pub seconds: f64,
    pub reports: Counts,
    pub reports_collected: usize,
    pub reports_stored: usize,
    /// Alert notifications received (status firing), per recipient unit and alert name.
    pub alerts_by_recipient: BTreeMap<String, BTreeMap<String, u64>>,
    pub alerts_fired: BTreeMap<String, u64>,
    /// Resolution notifications received, per alert name.
    pub alerts_resolved: BTreeMap<String, u64>,
    pub indicators: Vec<IndicatorLine>,
    pub checks: BTreeMap<String, Check>,
    /// Each alerted unit's 督办 record at the end (as `duban-aggregator supervision report`).
    pub supervision: duban_aggregator::supervision::Record,
    pub ok: bool,
}

pub struct SummaryInput<'a> {
    pub plan: &'a Plan,
    pub options: &'a Options,
    pub until: Date,
    pub elapsed: Duration,
    pub counts: Counts,
    pub stored: usize,
    pub enqueued: usize,
    pub progress: &'a Progress,
    pub inbox: &'a Inbox,
    pub checks: Vec<(&'static str, Check)>,
    pub supervision: duban_aggregator::supervision::Record,
    pub total_days: i64,
}

pub fn indicator_lines(plan: &Plan, progress: &Progress) -> Vec<IndicatorLine> {
    progress
        .indicators
        .iter()
        .map(|i| IndicatorLine {
            indicator: i.indicator.clone(),
            name: plan
                .indicator(&i.indicator)
                .map(|x| x.name.clone())
                .unwrap_or_default(),
            value: i.value,
            expected: i.judged_expected,
            target: i.target,
            status: i.status.name().to_owned(),
        })
        .collect()
}

/// Every alert kind has fired after a simulated year of any seed's scenario (the stalled task's
/// first milestone ends within half a year; reports fall due within seven months).
const DAYS_FOR_EVERY_ALERT: i64 = 365;

pub fn summarize(input: SummaryInput<'_>) -> Summary {
    let received = input.inbox.lock().expect("inbox lock").clone();
    let mut by_recipient: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut fired: BTreeMap<String, u64> = ALERT_NAMES.iter().map(|n| (n.to_string(), 0)).collect();
    let mut resolved: BTreeMap<String, u64> =
        ALERT_NAMES.iter().map(|n| (n.to_string(), 0)).collect();
    for alert in &received {
        if alert.status != "firing" {
            *resolved.entry(alert.alertname.clone()).or_default() += 1;
            continue;
        }
        *by_recipient
            .entry(alert.recipient.clone())
            .or_default()
            .entry(alert.alertname.clone())
            .or_default() += 1;
        *fired.entry(alert.alertname.clone()).or_default() += 1;
    }
    let missing: Vec<&str> = fired
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(name, _)| name.as_str())
        .collect();
    let every_alert = if missing.is_empty() {
        Check::passed(format!(
            "{} notifications to {} units: {}",
            fired.values().sum::<u64>(),
            by_recipient.len(),
            fired
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    } else if input.total_days < DAYS_FOR_EVERY_ALERT {
        Check::not_reached(format!(
            "{} never fired; run at least {DAYS_FOR_EVERY_ALERT} simulated days",
            missing.join(", ")
        ))
    } else {
        Check::failed(format!("{} never fired", missing.join(", ")))
    };
    let mut checks: BTreeMap<String, Check> = BTreeMap::new();
    checks.insert("every alert kind fired".into(), every_alert);
    for (name, check) in input.checks {
        checks.insert(name.into(), check);
    }
    let ok = checks.values().all(|c| c.status != "failed");
    Summary {
        plan: input.plan.id.clone(),
        seed: input.options.seed,
        from: input.plan.window.start,
        until: input.until,
        seconds: input.elapsed.as_secs_f64(),
        reports: input.counts,
        reports_collected: input.enqueued,
        reports_stored: input.stored,
        alerts_by_recipient: by_recipient,
        alerts_fired: fired,
        alerts_resolved: resolved,
        indicators: indicator_lines(input.plan, input.progress),
        checks,
        supervision: input.supervision,
        ok,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_summed_over_their_series_and_nothing_else() {
        let text = "# HELP duban_reports_accepted_total x\n\
                    duban_reports_accepted_total 7\n\
                    duban_reports_rejected_total{reason=\"BAD_SIGNATURE\"} 1\n\
                    duban_reports_rejected_total{reason=\"UNIT_MISMATCH\"} 2\n\
                    duban_reports_accepted_total_other 100\n";
        assert_eq!(metric_sum(text, "duban_reports_accepted_total"), 7);
        assert_eq!(metric_sum(text, "duban_reports_rejected_total"), 3);
        assert_eq!(metric_sum(text, "duban_reports_duplicate_total"), 0);
    }
}

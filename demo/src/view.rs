//! What the demo shows: a live view redrawn in place on a terminal, plain progress lines
//! otherwise (CI logs), and the final summary (also written as `summary.json`).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duban_aggregator::alerting::rules::ALERT_NAMES;
use duban_aggregator::plan::Plan;
use duban_aggregator::plan::show::table;
use duban_aggregator::progress::Progress;
use jiff::civil::Date;
use serde::Serialize;
use unicode_width::UnicodeWidthChar;

use crate::run::{Inbox, Options, Received};
use crate::scenario::Scenario;
use crate::setup::Layout;

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
    pub total_days: i64,
}

fn indicator_lines(plan: &Plan, progress: &Progress) -> Vec<IndicatorLine> {
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
        ok,
    }
}

fn number(v: Option<f64>) -> String {
    match v {
        None => "—".into(),
        Some(v) if v.abs() >= 1000.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned(),
    }
}

/// The indicator table: an indicator without a target shows its value only.
fn indicator_table(lines: &[IndicatorLine]) -> Vec<String> {
    let mut rows = vec![vec![
        "indicator".to_owned(),
        "value".to_owned(),
        "expected*".to_owned(),
        "target".to_owned(),
        "status".to_owned(),
    ]];
    rows.extend(lines.iter().map(|l| {
        let judged = l.target.is_some();
        vec![
            l.name.clone(),
            number(l.value),
            if judged {
                number(l.expected)
            } else {
                String::new()
            },
            if judged {
                number(l.target)
            } else {
                String::new()
            },
            if judged {
                l.status.clone()
            } else {
                String::new()
            },
        ]
    }));
    let mut out: Vec<String> = table(&rows, 2).lines().map(str::to_owned).collect();
    out.push(
        "  * expected: the straight path from baseline to target at the end of the period the value describes, which the status judges it against"
            .to_owned(),
    );
    out
}

/// `line` cut to `width` terminal columns (a CJK character takes two).
fn fit(line: &str, width: usize) -> String {
    let mut used = 0;
    let mut out = String::new();
    for c in line.chars() {
        let w = c.width().unwrap_or(0);
        if used + w > width {
            break;
        }
        used += w;
        out.push(c);
    }
    out
}

/// The terminal's size in columns and rows, when standard output is one.
fn terminal_size() -> Option<(usize, usize)> {
    let (terminal_size::Width(w), terminal_size::Height(h)) =
        terminal_size::terminal_size_of(std::io::stdout())?;
    Some((usize::from(w), usize::from(h)))
}

/// The smallest terminal the live view is drawn on; anything smaller gets plain lines.
const MIN_COLUMNS: usize = 100;

pub struct View {
    plan: Arc<Plan>,
    tty: bool,
    start: Date,
    until: Date,
    speed: f64,
    grpc: SocketAddr,
    http: SocketAddr,
    dir: String,
    agents: usize,
    aggregator_up: bool,
    events: Vec<String>,
    printed_alerts: usize,
    last_month: Option<(i16, i8)>,
    last_draw: Option<Instant>,
    drawn_lines: usize,
    counts: Counts,
    waiting: u64,
    indicators: Vec<IndicatorLine>,
}

impl View {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        plan: Arc<Plan>,
        plain: bool,
        start: Date,
        until: Date,
        speed: f64,
        grpc: SocketAddr,
        http: SocketAddr,
        layout: &Layout,
        scenario: &Scenario,
    ) -> Self {
        View {
            plan,
            tty: !plain && std::io::stdout().is_terminal(),
            start,
            until,
            speed,
            grpc,
            http,
            dir: layout.root.display().to_string(),
            agents: scenario.units.len(),
            aggregator_up: true,
            events: Vec::new(),
            printed_alerts: 0,
            last_month: None,
            last_draw: None,
            drawn_lines: 0,
            counts: Counts::default(),
            waiting: 0,
            indicators: Vec::new(),
        }
        .with_roles(scenario)
    }

    fn with_roles(mut self, scenario: &Scenario) -> Self {
        let names = |ids: &[String]| {
            ids.iter()
                .map(|id| format!("{} ({id})", self.plan.party_name(id)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let roles = &scenario.roles;
        self.events.push(format!(
            "cast: late reporters {}; missing reports {}; lagging indicators {}; lagging tasks {}; stalled task {}",
            names(&roles.late_units),
            roles
                .missed
                .iter()
                .map(|(u, i, p)| format!("{u}/{i}/{p}"))
                .collect::<Vec<_>>()
                .join(", "),
            roles.lagging_indicators.join(", "),
            roles.lagging_tasks.join(", "),
            roles.stalled_task.as_deref().unwrap_or("none"),
        ));
        self
    }

    fn print(&self, line: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    pub fn header(&mut self) {
        let lines = [
            format!(
                "duban demo: {} ({}), simulated {} .. {} at {} days per second",
                self.plan.name, self.plan.id, self.start, self.until, self.speed
            ),
            format!(
                "aggregator: gRPC {} (mTLS), metrics http://{}/metrics, SQLite; {} agents, one per reporting unit",
                self.grpc, self.http, self.agents
            ),
            format!(
                "directory: {} (keys, certificates, agent.toml and outbox per agent, demo.log)",
                self.dir
            ),
        ];
        for line in &lines {
            self.print(line);
        }
        if !self.tty {
            let cast = self.events.first().cloned().unwrap_or_default();
            self.print(&cast);
        }
    }

    pub fn set_aggregator_up(&mut self, up: bool) {
        self.aggregator_up = up;
    }

    /// Switches to plain lines (the terminal is too small for the live view).
    fn go_plain(&mut self, why: &str) {
        if self.tty {
            self.tty = false;
            if self.drawn_lines > 0 {
                let mut out = std::io::stdout().lock();
                let _ = write!(out, "\x1b[{}A\x1b[J", self.drawn_lines);
                let _ = out.flush();
                self.drawn_lines = 0;
            }
            self.print(&format!("({why}: plain lines instead of the live view)"));
        }
    }

    pub fn event(&mut self, day: Date, text: &str) {
        let line = format!("{day} ▸ {text}");
        if !self.tty {
            self.print(&line);
        }
        self.events.push(line);
    }

    fn alert_line(plan: &Plan, a: &Received) -> String {
        let role = match a.role.as_str() {
            "reporter" => "owes the report",
            "lead" => "lead unit",
            _ => "responsible",
        };
        format!(
            "{} {} {} [{}] → {} ({}, {role}): {}",
            a.day,
            if a.status == "firing" {
                "ALERT"
            } else {
                "RESOLVED"
            },
            a.alertname,
            a.severity,
            plan.party_name(&a.recipient),
            a.recipient,
            a.summary
        )
    }

    pub fn is_tty(&self) -> bool {
        self.tty
    }

    /// After each simulated day; `refreshed` carries new figures when they were read.
    pub fn day(
        &mut self,
        day: Date,
        refreshed: Option<(Counts, u64, Option<Progress>)>,
        inbox: &Inbox,
    ) {
        if let Some((counts, waiting, progress)) = refreshed {
            self.counts = counts;
            self.waiting = waiting;
            if let Some(p) = progress {
                self.indicators = indicator_lines(&self.plan, &p);
            }
        }
        let received = inbox.lock().expect("inbox lock");
        if self.tty {
            if self
                .last_draw
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(150))
                || day == self.until
            {
                self.draw(day, &received);
                self.last_draw = Some(Instant::now());
            }
            return;
        }
        // Plain: every alert as it fires and as it resolves, a line a month, the indicator
        // table every half year.
        for a in &received[self.printed_alerts..] {
            self.print(&Self::alert_line(&self.plan, a));
        }
        self.printed_alerts = received.len();
        let month = (day.year(), day.month());
        if self.last_month != Some(month) && day.day() == 1 || day == self.until {
            self.last_month = Some(month);
            self.print(&self.status_line(day, &received));
            if day.day() == 1 && (day.month() == 1 || day.month() == 7) {
                for line in indicator_table(&self.indicators) {
                    self.print(&line);
                }
            }
        }
    }

    fn status_line(&self, day: Date, received: &[Received]) -> String {
        let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
        for i in &self.indicators {
            *by_status.entry(i.status.as_str()).or_default() += 1;
        }
        let firing = received.iter().filter(|a| a.status == "firing").count();
        format!(
            "{day} | aggregator {} | reports accepted {} duplicate {} refused {} | {} waiting in outboxes | alerts sent {} | indicators {}",
            if self.aggregator_up { "up" } else { "DOWN" },
            self.counts.accepted,
            self.counts.duplicate,
            self.counts.refused,
            self.waiting,
            firing,
            by_status
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    fn draw(&mut self, day: Date, received: &[Received]) {
        let Some((columns, rows)) = terminal_size() else {
            return self.go_plain("the terminal size is unknown");
        };
        if columns < MIN_COLUMNS {
            return self.go_plain(&format!(
                "the terminal is {columns} columns wide, the live view needs {MIN_COLUMNS}"
            ));
        }
        let total = (self.until - self.start).get_days().max(1) as f64;
        let done = ((day - self.start).get_days() as f64 / total).clamp(0.0, 1.0);
        let bar = 30;
        let filled = (done * bar as f64).round() as usize;
        let mut lines = vec![
            format!(
                "simulated {day}  [{}{}] {:>3.0}%",
                "#".repeat(filled),
                "-".repeat(bar - filled),
                done * 100.0
            ),
            self.status_line(day, received),
            String::new(),
        ];
        lines.extend(indicator_table(&self.indicators));
        lines.push(String::new());
        lines.push("latest alerts and resolutions, to the units concerned:".into());
        for a in received.iter().rev().take(6).rev() {
            lines.push(format!("  {}", Self::alert_line(&self.plan, a)));
        }
        lines.push("events:".into());
        for e in self.events.iter().rev().take(5).rev() {
            lines.push(format!("  {e}"));
        }
        if lines.len() >= rows {
            return self.go_plain(&format!(
                "the terminal has {rows} rows, the live view needs {}",
                lines.len() + 1
            ));
        }
        // Every line fits the width, so that none wraps and the redraw moves up exactly as
        // many rows as it wrote.
        let lines: Vec<String> = lines.iter().map(|l| fit(l, columns - 1)).collect();
        let mut out = std::io::stdout().lock();
        if self.drawn_lines > 0 {
            let _ = write!(out, "\x1b[{}A\x1b[J", self.drawn_lines);
        }
        for line in &lines {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
        self.drawn_lines = lines.len();
    }

    pub fn summary(&mut self, summary: &Summary) {
        let mut lines = vec![
            String::new(),
            format!(
                "SUMMARY: {} .. {}, seed {}, {:.0} s",
                summary.from, summary.until, summary.seed, summary.seconds
            ),
            format!(
                "reports: accepted {}, duplicate {}, partial {}, refused {}; collected by agents {}, stored by the aggregator {}",
                summary.reports.accepted,
                summary.reports.duplicate,
                summary.reports.partial,
                summary.reports.refused,
                summary.reports_collected,
                summary.reports_stored
            ),
            "alerts received, per unit (as lead unit, or owing a report):".into(),
        ];
        for (unit, kinds) in &summary.alerts_by_recipient {
            lines.push(format!(
                "  {} ({unit}): {}",
                self.plan.party_name(unit),
                kinds
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        lines.push("indicators at the end:".into());
        lines.extend(indicator_table(&summary.indicators));
        lines.push("checks:".into());
        for (name, check) in &summary.checks {
            lines.push(format!("  [{}] {name}: {}", check.status, check.detail));
        }
        lines.push(format!(
            "{}; summary.json and demo.log are in {}",
            if summary.ok {
                "demo OK"
            } else {
                "demo FAILED: a check above failed"
            },
            self.dir
        ));
        for line in &lines {
            self.print(line);
        }
    }

    pub fn keep_serving(&self, grpc: SocketAddr, http: SocketAddr) {
        self.print(&format!(
            "still serving (--keep-serving): gRPC {grpc}, metrics http://{http}/metrics, progress http://{http}/api/v1/progress; Ctrl-C to stop"
        ));
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

    #[test]
    fn lines_are_cut_to_the_width_in_terminal_columns() {
        assert_eq!(fit("abcdef", 4), "abcd");
        // A CJK character is two columns: it does not fit in the last one.
        assert_eq!(fit("ab市科技局", 5), "ab市");
        assert_eq!(fit("ab", 10), "ab");
    }

    #[test]
    fn an_indicator_without_a_target_shows_its_value_only() {
        let lines = indicator_table(&[
            IndicatorLine {
                indicator: "resident-population".into(),
                name: "常住人口".into(),
                value: Some(920.0),
                expected: None,
                target: None,
                status: "no_target".into(),
            },
            IndicatorLine {
                indicator: "pct".into(),
                name: "PCT".into(),
                value: Some(2045.0),
                expected: Some(2000.0),
                target: Some(3600.0),
                status: "on_track".into(),
            },
        ]);
        assert_eq!(lines[1].trim_end(), "  常住人口   920");
        assert!(
            lines[2].contains("2045") && lines[2].contains("2000") && lines[2].contains("on_track")
        );
        assert!(lines.last().unwrap().contains("* expected"));
    }
}

//! What the demo shows: a live view redrawn in place on a terminal, plain progress lines
//! otherwise (CI logs), and the final summary (also written as `summary.json`).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duban_aggregator::plan::Plan;
use duban_aggregator::plan::show::table;
use duban_aggregator::progress::Progress;
use jiff::civil::Date;
use unicode_width::UnicodeWidthChar;

use crate::inbox::{Inbox, Received};
use crate::scenario::Scenario;
use crate::setup::Layout;

pub use crate::summary::{
    Check, Counts, IndicatorLine, Summary, SummaryInput, indicator_lines, scrape, summarize,
};

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
                "web view (the plan office's pages, in Chinese): http://{}/ — open it while the demo runs, or after it with --keep-serving",
                self.http
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
            "office" => "supervising office",
            "escalation" => "escalated to it",
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
        let answered: Vec<_> = summary
            .supervision
            .units
            .iter()
            .filter(|u| {
                u.answered > 0
                    || u.extensions_granted
                        + u.extensions_refused
                        + u.claims_confirmed
                        + u.claims_rejected
                        > 0
            })
            .collect();
        lines.push(format!(
            "督办: {} units alerted, {} answered; the units that answered (duban-aggregator supervision report prints all):",
            summary.supervision.units.len(),
            answered.len()
        ));
        for u in answered {
            lines.push(format!(
                "  {} ({}): {} cases, {} answered, first answer {}, extensions {} asked / {} granted / {} refused, done claims {} confirmed / {} rejected, {} overdue, level {}",
                u.name,
                u.unit,
                u.alerted,
                u.answered,
                duban_aggregator::supervision::days_text(u.median_first_answer_ms),
                u.extensions_requested,
                u.extensions_granted,
                u.extensions_refused,
                u.claims_confirmed,
                u.claims_rejected,
                u.overdue_now,
                u.max_escalation_level
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
            "still serving (--keep-serving): web view http://{http}/, gRPC {grpc}, metrics http://{http}/metrics, progress http://{http}/api/v1/progress; Ctrl-C to stop"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

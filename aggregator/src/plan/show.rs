//! What `duban-aggregator plan show` prints: a terminal view with Chinese text aligned by display
//! width, and a stable JSON document (`format: "duban.plan.v1"`, documented in docs/PLAN.md).

use std::fmt::Write;

use serde::Serialize;
use unicode_width::UnicodeWidthStr;

use super::model::*;

/// The JSON form of a plan. Field names are stable; new fields may be added.
#[derive(Debug, Serialize)]
pub struct PlanJson<'a> {
    pub format: &'static str,
    pub plan: PlanMetaJson<'a>,
    pub phases: &'a [Phase],
    pub units: &'a [Unit],
    pub groups: &'a [Group],
    pub indicators: &'a [Indicator],
    pub tasks: &'a [Task],
    pub tracks: &'a [Track],
    pub supervision: &'a Supervision,
}

#[derive(Debug, Serialize)]
pub struct PlanMetaJson<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub document: Option<&'a str>,
    pub issued: Option<jiff::civil::Date>,
    pub time_zone: &'a str,
    pub start: jiff::civil::Date,
    pub end: jiff::civil::Date,
    pub default_tolerance: f64,
}

pub fn to_json(plan: &Plan) -> PlanJson<'_> {
    PlanJson {
        format: "duban.plan.v1",
        plan: PlanMetaJson {
            id: &plan.id,
            name: &plan.name,
            document: plan.document.as_deref(),
            issued: plan.issued,
            time_zone: &plan.time_zone,
            start: plan.window.start,
            end: plan.window.end,
            default_tolerance: plan.default_tolerance,
        },
        phases: &plan.phases,
        units: &plan.units,
        groups: &plan.groups,
        indicators: &plan.indicators,
        tasks: &plan.tasks,
        tracks: &plan.tracks,
        supervision: &plan.supervision,
    }
}

/// Pads each column to its widest cell, measured in terminal columns (a CJK character is two).
pub fn table(rows: &[Vec<String>], indent: usize) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.width())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = " ".repeat(indent);
        for (c, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < row.len() {
                line.push_str(&" ".repeat(widths[c] - cell.width() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn names(plan: &Plan, ids: &[String]) -> String {
    if ids.is_empty() {
        return "—".into();
    }
    ids.iter()
        .map(|id| plan.party_name(id))
        .collect::<Vec<_>>()
        .join("、")
}

fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

fn target_text(indicator: &Indicator) -> String {
    match &indicator.target {
        None => "(input, no target)".into(),
        Some(t) => {
            let value = match t.value_max {
                Some(max) => format!("{}–{}", number(t.value), number(max)),
                None => number(t.value),
            };
            format!(
                "{} {} {} by {}",
                t.comparator.symbol(),
                value,
                indicator.measure,
                t.date
            )
        }
    }
}

fn aggregation_text(aggregation: &Aggregation) -> String {
    match aggregation {
        Aggregation::Sum => "sum".into(),
        Aggregation::Latest => "latest".into(),
        Aggregation::Cumulative => "cumulative".into(),
        Aggregation::AnnualAverage => "annual_average".into(),
        Aggregation::Ratio {
            numerator,
            denominator,
            scale,
        } => {
            format!("ratio {numerator} / {denominator} × {}", number(*scale))
        }
    }
}

/// The terminal view of a plan.
pub fn render(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "PLAN {}  {}{}",
        plan.id,
        plan.name,
        plan.document
            .as_ref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "  window {} .. {}, time zone {}, {} units, {} indicators, {} tasks, {} tracks\n",
        plan.window.start,
        plan.window.end,
        plan.time_zone,
        plan.units.len(),
        plan.indicators.len(),
        plan.tasks.len(),
        plan.tracks.len()
    );

    let _ = writeln!(out, "PHASES");
    let mut rows = vec![vec![
        "section".into(),
        "name".into(),
        "window".into(),
        String::new(),
    ]];
    for p in &plan.phases {
        rows.push(vec![
            p.section.clone(),
            p.name.clone(),
            format!("{} .. {}", p.window.start, p.window.end),
            if p.concurrent {
                "(runs inside another phase)".into()
            } else {
                String::new()
            },
        ]);
    }
    out.push_str(&table(&rows, 2));

    let _ = writeln!(
        out,
        "\nUNITS (the id is what agent.toml's `unit`, `keys add --unit` and certificates' SAN URI name)"
    );
    let mut rows = vec![
        ["id", "name", "kind", "reports", "leads"]
            .map(String::from)
            .to_vec(),
    ];
    for u in &plan.units {
        let reports = plan
            .indicators
            .iter()
            .filter(|i| plan.is_reporter(&u.id, i))
            .count();
        let leads = plan
            .indicators
            .iter()
            .filter(|i| plan.expand_parties(&i.lead_units).contains(&u.id))
            .count()
            + plan
                .tasks
                .iter()
                .filter(|t| plan.expand_parties(&t.lead_units).contains(&u.id))
                .count();
        let count = |n: usize, what: &str| match n {
            0 => "—".to_owned(),
            n => format!("{n} {what}"),
        };
        rows.push(vec![
            u.id.clone(),
            u.name.clone(),
            format!("{:?}", u.kind).to_lowercase(),
            count(reports, "indicators"),
            count(leads, "indicators/tasks"),
        ]);
    }
    out.push_str(&table(&rows, 2));
    if !plan.groups.is_empty() {
        let _ = writeln!(out, "\nGROUPS");
        let mut rows = vec![["id", "name", "members"].map(String::from).to_vec()];
        for g in &plan.groups {
            rows.push(vec![g.id.clone(), g.name.clone(), g.members.join(", ")]);
        }
        out.push_str(&table(&rows, 2));
    }

    let _ = writeln!(out, "\nINDICATORS");
    let mut rows = vec![
        [
            "section",
            "id",
            "name",
            "target",
            "period",
            "aggregation",
            "reporters",
            "lead units",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for i in &plan.indicators {
        rows.push(vec![
            i.section.clone().unwrap_or_default(),
            i.id.clone(),
            i.name.clone(),
            target_text(i),
            format!("{} +{}d", i.period, i.timely_days),
            aggregation_text(&i.aggregation),
            if i.reporters.is_empty() {
                "(derived)".into()
            } else {
                names(plan, &i.reporters)
            },
            names(plan, &i.lead_units),
        ]);
    }
    out.push_str(&table(&rows, 2));

    let _ = writeln!(out, "\nTASKS");
    for t in &plan.tasks {
        let _ = writeln!(out, "  {}  {}  [{}]", t.section, t.title, t.id);
        let lead = if t.lead_units.is_empty() {
            if t.by_division_of_duties {
                "— (按职责分工负责: the document names no lead unit)".into()
            } else {
                "— (the document names no lead unit)".into()
            }
        } else {
            names(plan, &t.lead_units)
        };
        let mut rows = vec![
            vec!["牵头单位 lead".into(), lead],
            vec![
                "责任单位 responsible".into(),
                names(plan, &t.responsible_units),
            ],
        ];
        for m in &t.milestones {
            rows.push(vec![
                format!("milestone {}", m.id),
                format!("{} .. {}  {}", m.window.start, m.window.end, m.name),
            ]);
        }
        out.push_str(&table(&rows, 6));
    }

    let _ = writeln!(out, "\nTRACKS");
    for t in &plan.tracks {
        let _ = writeln!(out, "  {}  {}  [{}]", t.section, t.title, t.id);
        let rows: Vec<Vec<String>> = t
            .phases
            .iter()
            .map(|p| {
                let goals = p
                    .goals
                    .iter()
                    .map(|g| {
                        let value = match g.target_max {
                            Some(max) => format!("{}–{}", number(g.target), number(max)),
                            None => number(g.target),
                        };
                        format!(
                            "{} {} {}",
                            g.indicator.as_deref().unwrap_or("goal"),
                            g.comparator.symbol(),
                            value
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                vec![
                    format!("phase {}", p.id),
                    format!(
                        "{} .. {}",
                        p.start
                            .map(|d| d.to_string())
                            .unwrap_or_else(|| "(no start)".into()),
                        p.end
                    ),
                    p.name.clone(),
                    goals,
                ]
            })
            .collect();
        out.push_str(&table(&rows, 6));
    }

    let s = &plan.supervision;
    let _ = writeln!(out, "\nSUPERVISION (督办)");
    let _ = writeln!(
        out,
        "  office      {}",
        s.office
            .as_deref()
            .map(|o| format!("{} [{o}]", plan.party_name(o)))
            .unwrap_or_else(|| "none: nobody may decide".into())
    );
    let _ = writeln!(
        out,
        "  quiet       {} day(s) after an acknowledgement",
        s.quiet_days
    );
    let _ = writeln!(
        out,
        "  level 1     the alert's own recipients, at the deadline"
    );
    for l in &s.ladder {
        let to: Vec<String> =
            l.to.iter()
                .map(|p| format!("{} [{p}]", plan.party_name(p)))
                .collect();
        let _ = writeln!(
            out,
            "  level {}     {} day(s) past the deadline, unresolved: {}",
            l.level,
            l.after_days,
            to.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_by_display_width() {
        let rows = vec![
            vec!["市科技局".to_string(), "x".to_string()],
            vec!["ab".to_string(), "y".to_string()],
        ];
        let text = table(&rows, 0);
        let lines: Vec<&str> = text.lines().collect();
        // "市科技局" is 8 columns wide, so the second column starts at column 10 in both rows.
        assert_eq!(lines[0], "市科技局  x");
        assert_eq!(lines[1], "ab        y");
    }
}

//! The plan pages: the overview (总览), one page per indicator, and the tasks (重点任务).

use std::collections::BTreeMap;

use maud::{Markup, html};

use super::chart::indicator_svg;
use super::data::{self, Data};
use super::layout::{Ctx, Nav, badge, num_cell, number, page, percent, svg};
use crate::progress::{IndicatorProgress, MilestoneStatus, ObligationStatus, date_of_ms};

fn target_text(ctx: &Ctx, id: &str) -> String {
    let Some(indicator) = ctx.plan.indicator(id) else {
        return String::new();
    };
    match &indicator.target {
        Some(t) => format!(
            "{} {}{} {} ({})",
            t.comparator.symbol(),
            number(Some(t.value)),
            t.value_max
                .map(|m| format!("–{}", number(Some(m))))
                .unwrap_or_default(),
            indicator.measure,
            t.date
        ),
        None => "—".into(),
    }
}

pub fn overview(ctx: &Ctx, data: &Data) -> Markup {
    let plan = ctx.plan;
    let today = date_of_ms(ctx.as_of_ms, &plan.tz);
    let phases: Vec<_> = plan
        .phases
        .iter()
        .filter(|p| p.window.contains(today))
        .collect();
    let mut by_status: BTreeMap<&str, u32> = BTreeMap::new();
    for m in &data.progress.milestones {
        *by_status.entry(m.status.name()).or_default() += 1;
    }
    let cases = data::histories(data);
    let levels: Vec<u32> = (1..=plan
        .supervision
        .ladder
        .iter()
        .map(|l| l.level)
        .max()
        .unwrap_or(1))
        .collect();
    let mut open: BTreeMap<(String, u32), u32> = BTreeMap::new();
    for c in cases.iter().filter(|c| c.open) {
        *open
            .entry((c.severity.clone(), c.escalation_level))
            .or_default() += 1;
    }
    let severities = ["critical", "warning", "info"];
    page(
        ctx,
        ctx.t("总览", "Overview"),
        Nav::Overview,
        "/api/v1/progress",
        html! {
            h1 { (plan.name) }
            p.lead {
                @if let Some(doc) = &plan.document { (doc) " · " }
                (ctx.t("规划期", "Plan window")) " " (plan.window.start) " — " (plan.window.end)
                " · " (ctx.t("截至", "as of")) " " (today)
            }
            p {
                (ctx.t("当前阶段", "Current phase")) ": "
                @if phases.is_empty() { (ctx.t("不在任何阶段内", "outside every phase")) }
                @for (k, p) in phases.iter().enumerate() {
                    @if k > 0 { "; " }
                    (p.section) " " (p.name) " (" (p.window.start) " — " (p.window.end) ")"
                }
            }
            section aria-labelledby="h-indicators" {
                h2 #h-indicators { (ctx.t("主要指标", "Indicators")) " " (ctx.export_links("indicators")) }
                table.sortable #indicators {
                    thead { tr {
                        th scope="col" { (ctx.t("指标", "Indicator")) }
                        th scope="col" { (ctx.t("当前值", "Value")) }
                        th scope="col" { (ctx.t("目标", "Target")) }
                        th scope="col" { (ctx.t("应达值", "Expected now")) }
                        th scope="col" { (ctx.t("状态", "Status")) }
                        th scope="col" { (ctx.t("走势", "Trend")) }
                        th scope="col" { (ctx.t("完整率", "Completeness")) }
                        th scope="col" { (ctx.t("及时率", "Timeliness")) }
                    } }
                    tbody {
                        @for i in &data.progress.indicators {
                            (indicator_row(ctx, i))
                        }
                    }
                }
            }
            div.cols {
                section aria-labelledby="h-tasks" {
                    h2 #h-tasks { (ctx.t("重点任务节点", "Task milestones")) }
                    table #task-counts {
                        thead { tr {
                            th scope="col" { (ctx.t("状态", "Status")) }
                            th scope="col" { (ctx.t("节点数", "Milestones")) }
                        } }
                        tbody {
                            @for s in MilestoneStatus::ALL {
                                tr data-status=(s.name()) {
                                    th scope="row" { (badge(ctx.lang, s.name())) }
                                    (num_cell(Some(f64::from(by_status.get(s.name()).copied().unwrap_or(0)))))
                                }
                            }
                        }
                    }
                    p { a href=(ctx.href("/tasks")) { (ctx.t("全部重点任务", "All tasks")) " →" } }
                }
                section aria-labelledby="h-alerts" {
                    h2 #h-alerts { (ctx.t("未解除的督办提醒", "Open alerts")) }
                    table #open-alerts {
                        thead { tr {
                            th scope="col" { (ctx.t("严重程度", "Severity")) }
                            @for l in &levels {
                                th scope="col" { (ctx.t("督办级别", "Level")) " " (l) }
                            }
                        } }
                        tbody {
                            @for s in severities {
                                tr data-severity=(s) {
                                    th scope="row" { (badge(ctx.lang, s)) }
                                    @for l in &levels {
                                        (num_cell(Some(f64::from(open.get(&(s.to_owned(), *l)).copied().unwrap_or(0)))))
                                    }
                                }
                            }
                        }
                    }
                    p { a href=(ctx.href("/alerts")) { (ctx.t("督办记录", "Alerts and the 督办 record")) " →" } }
                }
            }
        },
    )
}

fn indicator_row(ctx: &Ctx, i: &IndicatorProgress) -> Markup {
    let name = ctx
        .plan
        .indicator(&i.indicator)
        .map_or(i.indicator.as_str(), |x| x.name.as_str());
    let chart = indicator_svg(ctx.plan, i, 160, 48, false);
    html! {
        tr data-indicator=(i.indicator) {
            th scope="row" { a href=(ctx.href(&format!("/indicators/{}", i.indicator))) { (name) } }
            (num_cell(i.value))
            td { (target_text(ctx, &i.indicator)) }
            (num_cell(i.expected))
            td data-value=(i.status.name()) { (badge(ctx.lang, i.status.name())) }
            td.spark {
                @if !chart.is_empty() {
                    figure.chart data-points=(i.series.len()) role="img" aria-label={ (name) " " (ctx.t("走势", "trend")) } { (svg(chart)) }
                }
            }
            td.num data-value=[i.rates.completeness().map(|v| v.to_string())] { (percent(i.rates.completeness())) }
            td.num data-value=[i.rates.timeliness().map(|v| v.to_string())] { (percent(i.rates.timeliness())) }
        }
    }
}

pub fn indicator(ctx: &Ctx, data: &Data, id: &str) -> Option<Markup> {
    let plan = ctx.plan;
    let indicator = plan.indicator(id)?;
    let progress = data
        .progress
        .indicators
        .iter()
        .find(|i| i.indicator == id)?;
    let chart = indicator_svg(plan, progress, 760, 320, true);
    let obligations: Vec<_> = data
        .progress
        .obligations
        .iter()
        .filter(|o| o.indicator == id && o.status != ObligationStatus::NotDue)
        .collect();
    let mut periods: Vec<&str> = obligations.iter().map(|o| o.period.as_str()).collect();
    periods.dedup();
    let values = data.values_by_key();
    let value_of = |unit: &str, period: &str| values.get(&(id, unit, period)).copied();
    let corrections: Vec<_> = data
        .audit
        .iter()
        .filter(|a| a.kind == "value" && a.subject == id)
        .collect();
    // Department against districts, where the authoritative figure and the others both exist.
    let gaps: Vec<(String, f64, f64)> = match &indicator.authoritative {
        Some(auth) => periods
            .iter()
            .filter_map(|p| {
                let a = value_of(auth, p)?.value;
                let others: Vec<f64> = indicator
                    .reporter_units
                    .iter()
                    .filter(|u| *u != auth)
                    .filter_map(|u| value_of(u, p).map(|v| v.value))
                    .collect();
                (!others.is_empty()).then(|| ((*p).to_owned(), a, others.iter().sum()))
            })
            .collect(),
        None => Vec::new(),
    };
    Some(page(
        ctx,
        &indicator.name,
        Nav::Overview,
        "/api/v1/progress",
        html! {
            h1 { (indicator.name) }
            @if let Some(text) = &indicator.text { p.lead { (text) } }
            dl.facts {
                dt { (ctx.t("当前值", "Value")) } dd #value data-value=[progress.value.map(|v| v.to_string())] { (number(progress.value)) " " (indicator.measure) }
                dt { (ctx.t("目标", "Target")) } dd { (target_text(ctx, id)) }
                dt { (ctx.t("基期值", "Baseline")) } dd { (number(progress.baseline)) }
                dt { (ctx.t("应达值", "Expected now")) } dd { (number(progress.expected)) }
                dt { (ctx.t("状态", "Status")) } dd { (badge(ctx.lang, progress.status.name())) @if let Some(n) = &progress.note { " " (n) } }
                dt { (ctx.t("牵头单位", "Lead units")) } dd { (ctx.unit_links(&indicator.lead_units)) }
                dt { (ctx.t("完整率 / 及时率", "Completeness / timeliness")) } dd { (percent(progress.rates.completeness())) " / " (percent(progress.rates.timeliness())) }
            }
            figure.chart.big #chart data-points=(progress.series.len()) role="img" aria-label={ (indicator.name) " " (ctx.t("走势", "trend")) } {
                @if chart.is_empty() { p { (ctx.t("暂无数据", "No data yet")) } } @else { (svg(chart)) }
                figcaption {
                    span.key.value { "●" } " " (ctx.t("全市各期数值", "City value per period")) "  "
                    span.key.path { "—" } " " (ctx.t("从基期到目标的直线进度", "Straight path from baseline to target"))
                }
            }
            section aria-labelledby="h-series" {
                h2 #h-series { (ctx.t("各期全市数值", "City value per period")) }
                table.sortable #series {
                    thead { tr {
                        th scope="col" { (ctx.t("期间", "Period")) }
                        th scope="col" { (ctx.t("全市数值", "City value")) }
                        th scope="col" { (ctx.t("应达值", "Expected")) }
                    } }
                    tbody {
                        @for p in &progress.series {
                            tr { th scope="row" { (p.period) } (num_cell(Some(p.value))) (num_cell(p.expected)) }
                        }
                    }
                }
            }
            section aria-labelledby="h-reporters" {
                h2 #h-reporters { (ctx.t("各单位报送", "Each reporter's figures")) " " (ctx.export_links("indicators")) }
                table.sortable #reporters {
                    thead { tr {
                        th scope="col" { (ctx.t("期间", "Period")) }
                        th scope="col" { (ctx.t("单位", "Unit")) }
                        th scope="col" { (ctx.t("数值", "Value")) }
                        th scope="col" { (ctx.t("报送截止", "Due")) }
                        th scope="col" { (ctx.t("首次接收", "First received")) }
                        th scope="col" { (ctx.t("报送状态", "Status")) }
                    } }
                    tbody {
                        @for o in &obligations {
                            @let status = match o.status { ObligationStatus::OnTime => "on_time", ObligationStatus::Late => "late", ObligationStatus::Overdue => "overdue", ObligationStatus::NotDue => "not_due" };
                            tr data-status=(status) {
                                th scope="row" { (o.period) }
                                td { (ctx.unit_link(&o.unit)) }
                                (num_cell(value_of(&o.unit, &o.period).map(|v| v.value)))
                                td { (ctx.date(o.due_ms)) }
                                td { @if let Some(at) = o.received_ms { (ctx.minute(at)) } @else { "—" } }
                                td { (badge(ctx.lang, status)) }
                            }
                        }
                    }
                }
            }
            @if !gaps.is_empty() {
                section aria-labelledby="h-gap" {
                    h2 #h-gap { (ctx.t("部门与区市数据差异", "Department against districts")) }
                    table #gaps {
                        thead { tr {
                            th scope="col" { (ctx.t("期间", "Period")) }
                            th scope="col" { (ctx.t("部门合计", "Department total")) }
                            th scope="col" { (ctx.t("区市合计", "Districts' sum")) }
                            th scope="col" { (ctx.t("差额", "Gap")) }
                        } }
                        tbody {
                            @for (p, a, s) in &gaps {
                                tr { th scope="row" { (p) } (num_cell(Some(*a))) (num_cell(Some(*s))) (num_cell(Some(a - s))) }
                            }
                        }
                    }
                }
            }
            section aria-labelledby="h-corrections" {
                h2 #h-corrections { (ctx.t("更正记录", "Corrections")) }
                @if corrections.is_empty() {
                    p { (ctx.t("无更正。", "No corrections.")) }
                } @else {
                    table #corrections {
                        thead { tr {
                            th scope="col" { (ctx.t("时间", "When")) }
                            th scope="col" { (ctx.t("单位", "Unit")) }
                            th scope="col" { (ctx.t("期间", "Period")) }
                            th scope="col" { (ctx.t("原值", "Old")) }
                            th scope="col" { (ctx.t("新值", "New")) }
                        } }
                        tbody {
                            @for a in &corrections {
                                tr { td { (ctx.minute(a.at_ms)) } td { (ctx.unit_link(&a.unit_id)) } td { (a.period) } (num_cell(a.old_value)) (num_cell(Some(a.new_value))) }
                            }
                        }
                    }
                }
            }
        },
    ))
}

/// A milestone's three latest updates, newest first.
fn latest_updates<'a>(
    data: &'a Data,
    task: &str,
    milestone: &str,
) -> Vec<&'a crate::progress::TaskRow> {
    let mut updates: Vec<_> = data
        .snapshot
        .tasks
        .iter()
        .filter(|r| r.task_id == task && r.milestone_id == milestone)
        .collect();
    updates.sort_by_key(|r| std::cmp::Reverse(r.updated_at_ms));
    updates.truncate(3);
    updates
}

/// A task's section group: `二(一)1` belongs to `二(一)`.
fn group_of(section: &str) -> &str {
    section
        .find(')')
        .map_or(section, |end| &section[..end + ')'.len_utf8()])
}

pub fn tasks(ctx: &Ctx, data: &Data) -> Markup {
    let plan = ctx.plan;
    let mut groups: Vec<(&str, Vec<&crate::plan::Task>)> = Vec::new();
    for task in &plan.tasks {
        let group = group_of(&task.section);
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, tasks)) => tasks.push(task),
            None => groups.push((group, vec![task])),
        }
    }
    page(
        ctx,
        ctx.t("重点任务", "Tasks"),
        Nav::Tasks,
        "/api/v1/progress",
        html! {
            h1 { (ctx.t("重点任务", "Tasks")) " " (ctx.export_links("tasks")) }
            nav.toc aria-label=(ctx.t("目录", "Contents")) {
                @for (k, (g, _)) in groups.iter().enumerate() { a href={ "#g-" (k + 1) } { (g) } " " }
            }
            @for (k, (group, tasks)) in groups.iter().enumerate() {
                section.group #{ "g-" (k + 1) } {
                    h2 { (group) }
                    @for task in tasks {
                        article.task #{ "task-" (task.id) } {
                            h3 { (task.section) " " (task.title) }
                            p.parties {
                                (ctx.t("牵头单位", "Lead")) ": "
                                @if task.lead_units.is_empty() { (ctx.t("按职责分工负责", "by division of duties")) } @else { (ctx.unit_links(&task.lead_units)) }
                                @if !task.responsible_units.is_empty() {
                                    " · " (ctx.t("责任单位", "Responsible")) ": " (ctx.unit_links(&task.responsible_units))
                                }
                            }
                            table.milestones {
                                thead { tr {
                                    th scope="col" { (ctx.t("节点", "Milestone")) }
                                    th scope="col" { (ctx.t("时间窗口", "Window")) }
                                    th scope="col" { (ctx.t("进度", "Percent")) }
                                    th scope="col" { (ctx.t("状态", "Status")) }
                                    th scope="col" { (ctx.t("最新进展", "Latest updates")) }
                                } }
                                tbody {
                                    @for m in task.milestones.iter() {
                                        @if let Some(p) = data.progress.milestones.iter().find(|p| p.task == task.id && p.milestone == m.id) {
                                            tr data-milestone={ (task.id) "/" (m.id) } data-status=(p.status.name()) {
                                                th scope="row" { (m.name) }
                                                td {
                                                    (ctx.date(p.start_ms)) " — " (ctx.date(p.deadline_ms))
                                                    @if let Some(orig) = p.original_deadline_ms {
                                                        br; small { (ctx.t("准予延期, 原定", "extension granted; was")) " " (ctx.date(orig)) }
                                                    }
                                                }
                                                td.num data-value=[p.percent.map(|v| v.to_string())] { @if let Some(v) = p.percent { (format!("{v:.0}%")) } @else { "—" } }
                                                td {
                                                    (badge(ctx.lang, p.status.name()))
                                                    @if p.claimed { " " small { (ctx.t("已报办结, 待确认", "done claimed, awaiting the office")) } }
                                                }
                                                td {
                                                    @for r in latest_updates(data, &task.id, &m.id) {
                                                        div.update {
                                                            (ctx.unit_link(&r.unit_id)) " " (r.period) " " (format!("{:.0}%", r.percent))
                                                            @if !r.note.is_empty() { " — " (r.note) }
                                                        }
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

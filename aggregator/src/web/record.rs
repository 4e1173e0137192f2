//! The 督办 pages: one page per lead unit, every alert with its history, the printable
//! 督办通报, and who has reported (报送情况).

use maud::{Markup, html};

use super::data::{self, CaseHistory, Data};
use super::layout::{Ctx, Nav, badge, num_cell, page, percent};
use crate::supervision::{UnitRecord, days_text};

fn history(ctx: &Ctx, case: &CaseHistory) -> Markup {
    html! {
        ol.events {
            @for e in &case.events {
                li data-kind=(e.kind) {
                    time { (ctx.minute(e.at_ms)) } " "
                    strong { (ctx.lang.word(&e.kind)) }
                    @if !e.unit.is_empty() { " " (ctx.unit_link(&e.unit)) }
                    @let detail = e.detail_text(ctx.plan, ctx.lang);
                    @if !detail.is_empty() { " — " (detail) }
                }
            }
        }
    }
}

/// The cases with their histories, folded (`open_history`: unfolded).
fn cases_table(ctx: &Ctx, cases: &[&CaseHistory], id: &str, open_history: bool) -> Markup {
    html! {
        table.sortable.cases #(id) {
            thead { tr {
                th scope="col" { (ctx.t("督办事项", "Case")) }
                th scope="col" { (ctx.t("提醒", "Alert")) }
                th scope="col" { (ctx.t("严重程度", "Severity")) }
                th scope="col" { (ctx.t("督办级别", "Level")) }
                th scope="col" { (ctx.t("状态", "State")) }
                th scope="col" { (ctx.t("经过", "History")) }
            } }
            tbody {
                @for c in cases {
                    tr data-case=(c.case) data-open=(c.open) {
                        th scope="row" { (data::case_subject(ctx.plan, &c.case)) br; small.id { (c.case) } }
                        td { (ctx.lang.word(&c.alertname)) }
                        td data-value=(c.severity) { (badge(ctx.lang, &c.severity)) }
                        (num_cell(Some(f64::from(c.escalation_level))))
                        td { @if c.open { (ctx.t("未解除", "open")) } @else { (ctx.t("已解除", "resolved")) } }
                        td {
                            details open[open_history] {
                                summary { (c.events.len()) " " (ctx.t("项", "events")) }
                                (history(ctx, c))
                            }
                        }
                    }
                }
            }
        }
    }
}

fn record_table(ctx: &Ctx, units: &[&UnitRecord], id: &str) -> Markup {
    html! {
        table.sortable #(id) {
            thead { tr {
                th scope="col" { (ctx.t("单位", "Unit")) }
                th scope="col" { (ctx.t("督办事项", "Cases")) }
                th scope="col" { (ctx.t("已反馈", "Answered")) }
                th scope="col" { (ctx.t("首次反馈(中位)", "First answer (median)")) }
                th scope="col" { (ctx.t("申请延期", "Extensions asked")) }
                th scope="col" { (ctx.t("准予", "Granted")) }
                th scope="col" { (ctx.t("不予", "Refused")) }
                th scope="col" { (ctx.t("办结确认", "Done confirmed")) }
                th scope="col" { (ctx.t("办结退回", "Done rejected")) }
                th scope="col" { (ctx.t("逾期未办", "Overdue now")) }
                th scope="col" { (ctx.t("最高督办级别", "Highest level")) }
            } }
            tbody {
                @for u in units {
                    tr data-unit=(u.unit) {
                        th scope="row" { (ctx.unit_link(&u.unit)) }
                        (num_cell(Some(f64::from(u.alerted))))
                        (num_cell(Some(f64::from(u.answered))))
                        td.num data-value=[u.median_first_answer_ms.map(|v| v.to_string())] { (days_text(u.median_first_answer_ms)) }
                        (num_cell(Some(f64::from(u.extensions_requested))))
                        (num_cell(Some(f64::from(u.extensions_granted))))
                        (num_cell(Some(f64::from(u.extensions_refused))))
                        (num_cell(Some(f64::from(u.claims_confirmed))))
                        (num_cell(Some(f64::from(u.claims_rejected))))
                        (num_cell(Some(f64::from(u.overdue_now))))
                        (num_cell(Some(f64::from(u.max_escalation_level))))
                    }
                }
            }
        }
    }
}

pub fn unit(ctx: &Ctx, data: &Data, id: &str) -> Option<Markup> {
    let plan = ctx.plan;
    let known = plan.unit(id).is_some()
        || data.record.units.iter().any(|u| u.unit == id)
        || plan.group(id).is_some();
    if !known {
        return None;
    }
    let leads = |units: &[String]| {
        plan.expand_parties(units).iter().any(|u| u == id) || units.iter().any(|u| u == id)
    };
    let indicators: Vec<_> = plan
        .indicators
        .iter()
        .filter(|i| leads(&i.lead_units))
        .collect();
    let reports: Vec<_> = plan
        .indicators
        .iter()
        .filter(|i| i.reporter_units.iter().any(|u| u == id))
        .collect();
    let led: Vec<_> = plan.tasks.iter().filter(|t| leads(&t.lead_units)).collect();
    let responsible: Vec<_> = plan
        .tasks
        .iter()
        .filter(|t| !leads(&t.lead_units) && leads(&t.responsible_units))
        .collect();
    let cases = data::histories(data);
    let mine: Vec<&CaseHistory> = cases
        .iter()
        .filter(|c| c.open && data::case_units(c).contains(id))
        .collect();
    let record: Vec<&UnitRecord> = data.record.units.iter().filter(|u| u.unit == id).collect();
    let own = data.progress.by_unit.get(id).copied();
    let as_lead = data.progress.by_lead_unit.get(id).copied();
    let name = plan.party_name(id);
    Some(page(
        ctx,
        name,
        Nav::None,
        "/api/v1/supervision",
        html! {
            h1 { (name) }
            section aria-labelledby="h-open" {
                h2 #h-open { (ctx.t("未解除的督办提醒", "Open alerts")) }
                @if mine.is_empty() { p { (ctx.t("无。", "None.")) } } @else { (cases_table(ctx, &mine, "unit-cases", true)) }
            }
            section aria-labelledby="h-record" {
                h2 #h-record { (ctx.t("督办记录", "督办 record")) }
                @if record.is_empty() { p { (ctx.t("截至该日未收到督办提醒。", "No alerts sent to it by then.")) } } @else { (record_table(ctx, &record, "unit-record")) }
            }
            section aria-labelledby="h-rates" {
                h2 #h-rates { (ctx.t("报送完整率与及时率", "Reporting completeness and timeliness")) }
                table #unit-rates {
                    thead { tr {
                        th scope="col" { }
                        th scope="col" { (ctx.t("应报", "Expected")) }
                        th scope="col" { (ctx.t("已报", "Received")) }
                        th scope="col" { (ctx.t("按时", "On time")) }
                        th scope="col" { (ctx.t("完整率", "Completeness")) }
                        th scope="col" { (ctx.t("及时率", "Timeliness")) }
                    } }
                    tbody {
                        @for (label, rates) in [(ctx.t("本单位报送", "Its own reports"), own), (ctx.t("牵头指标的全部报送", "All reports of what it leads"), as_lead)] {
                            @if let Some(r) = rates {
                                tr {
                                    th scope="row" { (label) }
                                    (num_cell(Some(f64::from(r.expected))))
                                    (num_cell(Some(f64::from(r.received))))
                                    (num_cell(Some(f64::from(r.on_time))))
                                    td.num { (percent(r.completeness())) }
                                    td.num { (percent(r.timeliness())) }
                                }
                            }
                        }
                    }
                }
            }
            section aria-labelledby="h-leads" {
                h2 #h-leads { (ctx.t("牵头与负责", "What it leads and is responsible for")) }
                @if !indicators.is_empty() {
                    h3 { (ctx.t("牵头指标", "Indicators it leads")) }
                    ul.two { @for i in &indicators { li { a href=(ctx.href(&format!("/indicators/{}", i.id))) { (i.name) } } } }
                }
                @if !reports.is_empty() {
                    h3 { (ctx.t("报送指标", "Indicators it reports")) }
                    ul.two { @for i in &reports { li { a href=(ctx.href(&format!("/indicators/{}", i.id))) { (i.name) } } } }
                }
                @if !led.is_empty() {
                    h3 { (ctx.t("牵头任务", "Tasks it leads")) }
                    ul.two { @for t in &led { li { a href={ (ctx.href("/tasks")) "#task-" (t.id) } { (t.section) " " (t.title) } } } }
                }
                @if !responsible.is_empty() {
                    h3 { (ctx.t("负责任务", "Tasks it is responsible for")) }
                    ul.two { @for t in &responsible { li { a href={ (ctx.href("/tasks")) "#task-" (t.id) } { (t.section) " " (t.title) } } } }
                }
                @if indicators.is_empty() && reports.is_empty() && led.is_empty() && responsible.is_empty() {
                    p { (ctx.t("规划中未列明。", "Nothing in the plan.")) }
                }
            }
        },
    ))
}

pub fn alerts(ctx: &Ctx, data: &Data) -> Markup {
    let cases = data::histories(data);
    let open: Vec<&CaseHistory> = cases.iter().filter(|c| c.open).collect();
    let closed: Vec<&CaseHistory> = cases.iter().filter(|c| !c.open).collect();
    let units: Vec<&UnitRecord> = data.record.units.iter().collect();
    page(
        ctx,
        ctx.t("督办记录", "Alerts and the 督办 record"),
        Nav::Alerts,
        "/api/v1/cases",
        html! {
            h1 { (ctx.t("督办记录", "Alerts and the 督办 record")) }
            p {
                a.button href=(ctx.href("/alerts/report")) { (ctx.t("督办通报 (可打印)", "督办通报 (printable)")) }
                " " (ctx.export_links("alerts"))
            }
            section aria-labelledby="h-record" {
                h2 #h-record { (ctx.t("各单位督办统计", "Each unit's 督办 record")) " " (ctx.export_links("report")) }
                @if units.is_empty() { p { (ctx.t("截至该日未发出督办提醒。", "No alerts by then.")) } } @else { (record_table(ctx, &units, "record")) }
            }
            section aria-labelledby="h-open" {
                h2 #h-open { (ctx.t("未解除", "Open")) " (" (open.len()) ")" }
                (cases_table(ctx, &open, "open-cases", false))
            }
            section aria-labelledby="h-closed" {
                h2 #h-closed { (ctx.t("已解除", "Resolved")) " (" (closed.len()) ")" }
                (cases_table(ctx, &closed, "resolved-cases", false))
            }
        },
    )
}

/// The 督办通报: the summary, then one section per unit, each starting a new A4 page.
pub fn report(ctx: &Ctx, data: &Data, since_ms: Option<i64>) -> Markup {
    let plan = ctx.plan;
    let office = plan
        .supervision
        .office
        .as_deref()
        .map_or(ctx.t("督办单位", "The supervising office"), |o| {
            plan.party_name(o)
        });
    let cases = data::histories(data);
    let mut units: Vec<&UnitRecord> = data.record.units.iter().collect();
    units.sort_by_key(|u| {
        (
            std::cmp::Reverse(u.overdue_now),
            std::cmp::Reverse(u.max_escalation_level),
            u.answered,
            u.unit.clone(),
        )
    });
    let total = |f: fn(&UnitRecord) -> u32| data.record.units.iter().map(f).sum::<u32>();
    page(
        ctx,
        ctx.t("督办通报", "督办通报"),
        Nav::Alerts,
        "/api/v1/supervision",
        html! {
            article.report {
                header.report-head {
                    h1 { (plan.name) " " (ctx.t("督办通报", "督办通报 (supervision report)")) }
                    p {
                        (office) " · "
                        @if let Some(since) = since_ms { (ctx.date(since)) " — " }
                        (ctx.t("截至", "as of")) " " (ctx.date(data.as_of_ms))
                    }
                    form.noprint method="get" action="/alerts/report" {
                        @if ctx.lang == super::lang::Lang::En { input type="hidden" name="lang" value="en"; }
                        label for="since" { (ctx.t("起始日期", "From")) } " "
                        input #since type="date" name="since" value=[since_ms.map(|ms| ctx.date(ms))];
                        " "
                        label for="report_as_of" { (ctx.t("截至", "to")) } " "
                        input #report_as_of type="date" name="as_of" value=(ctx.date(data.as_of_ms));
                        " "
                        button type="submit" { (ctx.t("生成通报", "Make the report")) }
                    }
                    @let since_text = since_ms.map(|ms| ctx.date(ms)).unwrap_or_default();
                    @let extra: Vec<(&str, &str)> = if since_ms.is_some() { vec![("since", since_text.as_str())] } else { Vec::new() };
                    p.noprint { (ctx.export_links_with("report", &extra)) " · " (ctx.t("用浏览器打印本页 (A4)。", "Print this page from the browser (A4).")) }
                }
                @if units.is_empty() {
                    p { (ctx.t("截至该日未发出督办提醒。", "No alerts by then.")) }
                } @else {
                    (record_table(ctx, &units, "report-summary"))
                    p.total {
                        (ctx.t("合计", "In all")) ": "
                        (ctx.t("督办事项", "cases")) " " (total(|u| u.alerted)) ", "
                        (ctx.t("已反馈", "answered")) " " (total(|u| u.answered)) ", "
                        (ctx.t("逾期未办", "overdue")) " " (total(|u| u.overdue_now)) "; "
                        (ctx.t("申请延期", "extensions asked")) " " (total(|u| u.extensions_requested))
                        " (" (ctx.t("准予", "granted")) " " (total(|u| u.extensions_granted)) ", "
                        (ctx.t("不予", "refused")) " " (total(|u| u.extensions_refused)) ")."
                    }
                    @for u in &units {
                        @let theirs: Vec<&CaseHistory> = cases.iter().filter(|c| c.recipients.contains(&u.unit)).collect();
                        section.unit-report data-unit=(u.unit) aria-labelledby={ "r-" (u.unit) } {
                            h2 #{ "r-" (u.unit) } { (ctx.t("督办通报", "Report")) " · " (u.name) }
                            p {
                                (ctx.t("督办事项", "Cases")) " " (u.alerted) ", "
                                (ctx.t("已反馈", "answered")) " " (u.answered) ", "
                                (ctx.t("首次反馈(中位)", "median first answer")) " " (days_text(u.median_first_answer_ms)) ", "
                                (ctx.t("逾期未办", "overdue now")) " " (u.overdue_now) ", "
                                (ctx.t("最高督办级别", "highest level")) " " (u.max_escalation_level) "."
                            }
                            table.print-cases {
                                thead { tr {
                                    th scope="col" { (ctx.t("督办事项", "Case")) }
                                    th scope="col" { (ctx.t("状态", "State")) }
                                    th scope="col" { (ctx.t("经过", "History")) }
                                } }
                                tbody {
                                    @for c in &theirs {
                                        tr {
                                            th scope="row" { (data::case_subject(plan, &c.case)) br; small { (ctx.lang.word(&c.alertname)) } }
                                            td { @if c.open { (ctx.t("未解除", "open")) } @else { (ctx.t("已解除", "resolved")) } }
                                            td { (history(ctx, c)) }
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

pub fn units(ctx: &Ctx, data: &Data) -> Markup {
    let rows = data::reporting(ctx.plan, data);
    page(
        ctx,
        ctx.t("报送情况", "Reporting"),
        Nav::Units,
        "/api/v1/reporting",
        html! {
            h1 { (ctx.t("报送情况", "Who has reported")) " " (ctx.export_links("units")) }
            p.lead { (ctx.t("应报、已报与按时只计已到截止日期的报送义务。", "Expected, received and on time count only the obligations already due.")) }
            table.sortable #units {
                thead { tr {
                    th scope="col" { (ctx.t("单位", "Unit")) }
                    th scope="col" { (ctx.t("最近报送", "Last report")) }
                    th scope="col" { (ctx.t("最近联系", "Last seen")) }
                    th scope="col" { (ctx.t("应报", "Expected")) }
                    th scope="col" { (ctx.t("已报", "Received")) }
                    th scope="col" { (ctx.t("完整率", "Completeness")) }
                    th scope="col" { (ctx.t("及时率", "Timeliness")) }
                    th scope="col" { (ctx.t("逾期未报", "Overdue")) }
                    th scope="col" { (ctx.t("序号缺口", "Seq gaps")) }
                    th scope="col" { (ctx.t("被拒条目", "Refused items")) }
                } }
                tbody {
                    @for u in &rows {
                        tr data-unit=(u.unit) {
                            th scope="row" { (ctx.unit_link(&u.unit)) }
                            td { @if let Some(at) = u.last_report_ms { (ctx.minute(at)) } @else { "—" } }
                            td { @if let Some(at) = u.last_seen_ms { (ctx.minute(at)) } @else { "—" } }
                            (num_cell(Some(f64::from(u.rates.expected))))
                            (num_cell(Some(f64::from(u.rates.received))))
                            td.num data-value=[u.completeness.map(|v| v.to_string())] { (percent(u.completeness)) }
                            td.num data-value=[u.timeliness.map(|v| v.to_string())] { (percent(u.timeliness)) }
                            td.num data-value=(u.overdue.len()) title=(u.overdue.join("; ")) { (u.overdue.len()) }
                            (num_cell(Some(u.seq_gaps as f64)))
                            (num_cell(Some(u.refused_items as f64)))
                        }
                    }
                }
            }
        },
    )
}

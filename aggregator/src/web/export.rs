//! Exports for the plan office's spreadsheets, the same from the web view and from
//! `duban-aggregator export`: indicators by period and reporter, tasks and milestones, alerts
//! with their history, the 督办通报, and each reporting unit's record. CSV (UTF-8 with a byte
//! order mark, so that Excel reads the Chinese) or Excel `.xlsx`. Headers are Chinese with the
//! column id beside them (`数值 (value)`); numbers are numbers and dates are dates.

use super::data::{self, Data};
use super::lang::Lang;
use crate::plan::Plan;
use crate::progress::{ObligationStatus, date_of_ms};

/// The tables, by the names the CLI and the URLs use.
pub const TABLES: [&str; 5] = ["indicators", "tasks", "alerts", "report", "units"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Xlsx,
}

impl Format {
    pub fn parse(text: &str) -> Option<Format> {
        match text {
            "csv" => Some(Format::Csv),
            "xlsx" => Some(Format::Xlsx),
            _ => None,
        }
    }
    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Xlsx => "xlsx",
        }
    }
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Xlsx => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(String),
    Number(f64),
    /// A calendar day.
    Date(jiff::civil::Date),
    /// An instant, shown to the minute in the plan's time zone.
    Time(i64),
    Empty,
}

impl Cell {
    fn text(text: impl Into<String>) -> Cell {
        Cell::Text(text.into())
    }
    fn number(value: Option<f64>) -> Cell {
        value.map_or(Cell::Empty, Cell::Number)
    }
    fn time(ms: Option<i64>) -> Cell {
        ms.map_or(Cell::Empty, Cell::Time)
    }
}

/// A table: its name, sheet title, columns (Chinese, id) and rows.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: &'static str,
    pub title: &'static str,
    pub columns: Vec<(&'static str, &'static str)>,
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    pub fn headers(&self) -> Vec<String> {
        self.columns
            .iter()
            .map(|(zh, id)| format!("{zh} ({id})"))
            .collect()
    }
}

/// The table called `name` (one of [`TABLES`]) at the data's `as_of`.
pub fn table(plan: &Plan, data: &Data, name: &str) -> Option<Table> {
    Some(match name {
        "indicators" => indicators(plan, data),
        "tasks" => tasks(plan, data),
        "alerts" => alerts(plan, data),
        "report" => report(data),
        "units" => units(plan, data),
        _ => return None,
    })
}

fn names(plan: &Plan, ids: &[String]) -> String {
    ids.iter()
        .map(|u| plan.party_name(u))
        .collect::<Vec<_>>()
        .join("、")
}

fn indicators(plan: &Plan, data: &Data) -> Table {
    let zh = Lang::Zh;
    let values = data.values_by_key();
    let rows = data
        .progress
        .obligations
        .iter()
        .filter_map(|o| {
            let value = values
                .get(&(o.indicator.as_str(), o.unit.as_str(), o.period.as_str()))
                .copied();
            if value.is_none() && o.status == ObligationStatus::NotDue {
                return None;
            }
            let indicator = plan.indicator(&o.indicator)?;
            let status = match o.status {
                ObligationStatus::NotDue => "not_due",
                ObligationStatus::OnTime => "on_time",
                ObligationStatus::Late => "late",
                ObligationStatus::Overdue => "overdue",
            };
            Some(vec![
                Cell::text(o.indicator.as_str()),
                Cell::text(&indicator.name),
                Cell::text(o.period.as_str()),
                Cell::text(o.unit.as_str()),
                Cell::text(plan.party_name(&o.unit)),
                Cell::number(value.map(|v| v.value)),
                Cell::text(&indicator.measure),
                Cell::number(value.map(|v| v.revision as f64)),
                Cell::Date(date_of_ms(o.due_ms, &plan.tz)),
                Cell::time(o.received_ms),
                Cell::text(zh.word(status)),
                Cell::text(value.map_or("", |v| v.note.as_str())),
            ])
        })
        .collect();
    Table {
        name: "indicators",
        title: "指标报送",
        columns: vec![
            ("指标编号", "indicator"),
            ("指标", "indicator_name"),
            ("期间", "period"),
            ("单位编号", "unit"),
            ("报送单位", "unit_name"),
            ("数值", "value"),
            ("计量单位", "measure"),
            ("修订", "revision"),
            ("报送截止", "due"),
            ("首次接收", "first_received"),
            ("报送状态", "status"),
            ("备注", "note"),
        ],
        rows,
    }
}

fn tasks(plan: &Plan, data: &Data) -> Table {
    let zh = Lang::Zh;
    let rows = data
        .progress
        .milestones
        .iter()
        .filter_map(|m| {
            let task = plan.task(&m.task)?;
            let milestone = task.milestones.iter().find(|x| x.id == m.milestone)?;
            let latest = data
                .snapshot
                .tasks
                .iter()
                .filter(|r| r.task_id == m.task && r.milestone_id == m.milestone)
                .max_by_key(|r| r.updated_at_ms);
            Some(vec![
                Cell::text(&task.id),
                Cell::text(&task.section),
                Cell::text(&task.title),
                Cell::text(&m.milestone),
                Cell::text(&milestone.name),
                Cell::Date(date_of_ms(m.start_ms, &plan.tz)),
                Cell::Date(date_of_ms(m.deadline_ms, &plan.tz)),
                m.original_deadline_ms
                    .map_or(Cell::Empty, |d| Cell::Date(date_of_ms(d, &plan.tz))),
                Cell::number(m.percent),
                Cell::text(zh.word(m.status.name())),
                Cell::text(names(plan, &task.lead_units)),
                Cell::text(names(plan, &task.responsible_units)),
                Cell::text(latest.map_or(String::new(), |r| {
                    format!("{} {}", plan.party_name(&r.unit_id), r.note)
                })),
            ])
        })
        .collect();
    Table {
        name: "tasks",
        title: "重点任务",
        columns: vec![
            ("任务编号", "task"),
            ("部分", "section"),
            ("任务", "title"),
            ("节点编号", "milestone"),
            ("节点", "milestone_name"),
            ("开始", "start"),
            ("截止", "deadline"),
            ("原定截止", "original_deadline"),
            ("进度(%)", "percent"),
            ("状态", "status"),
            ("牵头单位", "lead_units"),
            ("责任单位", "responsible_units"),
            ("最新进展", "latest_update"),
        ],
        rows,
    }
}

fn alerts(plan: &Plan, data: &Data) -> Table {
    let zh = Lang::Zh;
    let mut rows = Vec::new();
    for case in data::histories(data) {
        let subject = data::case_subject(plan, &case.case);
        for event in &case.events {
            rows.push(vec![
                Cell::text(&case.case),
                Cell::text(&subject),
                Cell::text(zh.word(&case.alertname)),
                Cell::text(zh.word(&case.severity)),
                Cell::Time(event.at_ms),
                Cell::text(zh.word(&event.kind)),
                Cell::text(&event.unit),
                Cell::text(if event.unit.is_empty() {
                    ""
                } else {
                    plan.party_name(&event.unit)
                }),
                Cell::text(event.detail_text(plan, zh)),
                Cell::Number(f64::from(case.escalation_level)),
                Cell::text(if case.open { "未解除" } else { "已解除" }),
            ]);
        }
    }
    Table {
        name: "alerts",
        title: "督办提醒",
        columns: vec![
            ("事项编号", "case"),
            ("督办事项", "subject"),
            ("提醒", "alertname"),
            ("严重程度", "severity"),
            ("时间", "at"),
            ("经过", "event"),
            ("单位编号", "unit"),
            ("单位", "unit_name"),
            ("说明", "detail"),
            ("督办级别", "escalation_level"),
            ("状态", "state"),
        ],
        rows,
    }
}

fn report(data: &Data) -> Table {
    let rows = data
        .record
        .units
        .iter()
        .map(|u| {
            vec![
                Cell::text(&u.unit),
                Cell::text(&u.name),
                Cell::Number(f64::from(u.alerted)),
                Cell::Number(f64::from(u.answered)),
                Cell::number(
                    u.median_first_answer_ms
                        .map(|ms| ms as f64 / crate::progress::DAY_MS as f64),
                ),
                Cell::Number(f64::from(u.extensions_requested)),
                Cell::Number(f64::from(u.extensions_granted)),
                Cell::Number(f64::from(u.extensions_refused)),
                Cell::Number(f64::from(u.claims_confirmed)),
                Cell::Number(f64::from(u.claims_rejected)),
                Cell::Number(f64::from(u.overdue_now)),
                Cell::Number(f64::from(u.max_escalation_level)),
            ]
        })
        .collect();
    Table {
        name: "report",
        title: "督办通报",
        columns: vec![
            ("单位编号", "unit"),
            ("单位", "name"),
            ("督办事项", "alerted"),
            ("已反馈", "answered"),
            ("首次反馈中位(天)", "median_first_answer_days"),
            ("申请延期", "extensions_requested"),
            ("准予延期", "extensions_granted"),
            ("不予延期", "extensions_refused"),
            ("办结确认", "claims_confirmed"),
            ("办结退回", "claims_rejected"),
            ("逾期未办", "overdue_now"),
            ("最高督办级别", "max_escalation_level"),
        ],
        rows,
    }
}

fn units(plan: &Plan, data: &Data) -> Table {
    let rows = data::reporting(plan, data)
        .into_iter()
        .map(|u| {
            vec![
                Cell::text(&u.unit),
                Cell::text(&u.name),
                Cell::time(u.last_report_ms),
                Cell::time(u.last_seen_ms),
                Cell::Number(f64::from(u.rates.expected)),
                Cell::Number(f64::from(u.rates.received)),
                Cell::Number(f64::from(u.rates.on_time)),
                Cell::number(u.completeness),
                Cell::number(u.timeliness),
                Cell::Number(u.overdue.len() as f64),
                Cell::text(u.overdue.join("; ")),
                Cell::Number(f64::from(u.reports)),
                Cell::Number(u.seq_gaps as f64),
                Cell::Number(u.refused_items as f64),
            ]
        })
        .collect();
    Table {
        name: "units",
        title: "报送情况",
        columns: vec![
            ("单位编号", "unit"),
            ("单位", "name"),
            ("最近报送", "last_report"),
            ("最近联系", "last_seen"),
            ("应报", "expected"),
            ("已报", "received"),
            ("按时", "on_time"),
            ("完整率", "completeness"),
            ("及时率", "timeliness"),
            ("逾期未报", "overdue"),
            ("逾期事项", "overdue_items"),
            ("报告数", "reports"),
            ("序号缺口", "seq_gaps"),
            ("被拒条目", "refused_items"),
        ],
        rows,
    }
}

/// The minute of an instant in the plan's time zone, `YYYY-MM-DD HH:MM`.
pub fn minute_text(ms: i64, tz: &jiff::tz::TimeZone) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| {
            t.to_zoned(tz.clone())
                .strftime("%Y-%m-%d %H:%M")
                .to_string()
        })
        .unwrap_or_default()
}

/// The table as CSV: a byte order mark, the headers, one line per row.
pub fn csv(table: &Table, tz: &jiff::tz::TimeZone) -> Result<Vec<u8>, csv::Error> {
    let mut out = csv::Writer::from_writer(b"\xEF\xBB\xBF".to_vec());
    out.write_record(table.headers())?;
    for row in &table.rows {
        out.write_record(row.iter().map(|cell| match cell {
            Cell::Text(t) => t.clone(),
            Cell::Number(n) => n.to_string(),
            Cell::Date(d) => d.to_string(),
            Cell::Time(ms) => minute_text(*ms, tz),
            Cell::Empty => String::new(),
        }))?;
    }
    out.into_inner().map_err(|e| e.into_error().into())
}

/// The table as an Excel workbook with one sheet, its header row frozen.
pub fn xlsx(table: &Table, tz: &jiff::tz::TimeZone) -> Result<Vec<u8>, rust_xlsxwriter::XlsxError> {
    use rust_xlsxwriter::{ExcelDateTime, Format, Workbook};
    let mut workbook = Workbook::new();
    let sheet = workbook.add_worksheet();
    sheet.set_name(table.title)?;
    let bold = Format::new().set_bold();
    let day = Format::new().set_num_format("yyyy-mm-dd");
    let minute = Format::new().set_num_format("yyyy-mm-dd hh:mm");
    for (col, header) in table.headers().iter().enumerate() {
        sheet.write_string_with_format(0, col as u16, header, &bold)?;
    }
    for (r, row) in table.rows.iter().enumerate() {
        let r = r as u32 + 1;
        for (c, cell) in row.iter().enumerate() {
            let c = c as u16;
            match cell {
                Cell::Text(t) => {
                    sheet.write_string(r, c, t)?;
                }
                Cell::Number(n) => {
                    sheet.write_number(r, c, *n)?;
                }
                Cell::Date(d) => {
                    let date =
                        ExcelDateTime::from_ymd(d.year() as u16, d.month() as u8, d.day() as u8)?;
                    sheet.write_datetime_with_format(r, c, &date, &day)?;
                }
                Cell::Time(ms) => {
                    let Ok(at) = jiff::Timestamp::from_millisecond(*ms) else {
                        continue;
                    };
                    let at = at.to_zoned(tz.clone());
                    let time = ExcelDateTime::from_ymd(
                        at.year() as u16,
                        at.month() as u8,
                        at.day() as u8,
                    )?
                    .and_hms(at.hour() as u16, at.minute() as u8, 0)?;
                    sheet.write_datetime_with_format(r, c, &time, &minute)?;
                }
                Cell::Empty => {}
            }
        }
    }
    sheet.set_freeze_panes(1, 0)?;
    sheet.autofit();
    workbook.save_to_buffer()
}

/// The table in `format`.
pub fn render(table: &Table, format: Format, tz: &jiff::tz::TimeZone) -> anyhow::Result<Vec<u8>> {
    Ok(match format {
        Format::Csv => csv(table, tz)?,
        Format::Xlsx => xlsx(table, tz)?,
    })
}

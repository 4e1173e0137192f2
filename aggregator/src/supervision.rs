//! 督办 statistics: for each unit that alerts are sent to (its lead units, and the responsible
//! units or the office where the plan names no lead), its record over the alerts and the
//! statements received up to a time: cases alerted and answered, the median time to the first
//! answer, extensions asked for, granted and refused, done claims confirmed and rejected, cases
//! overdue now, and the highest escalation reached. The same record feeds `status`,
//! `/api/v1/supervision`, the metrics and the printable 督办通报.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

use crate::alerting::rules::case_of;
use crate::plan::Plan;
use crate::progress::cases::{self, DECISIONS};
use crate::progress::{DAY_MS, date_of_ms};
use crate::store::{AlertRow, StatementRow};

/// One unit's 督办 record.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UnitRecord {
    pub unit: String,
    pub name: String,
    /// Alert cases sent to the unit (as the unit that owes a report, lead, responsible unit or
    /// office; not escalation copies).
    pub alerted: u32,
    /// Of those, the cases the unit answered (any statement).
    pub answered: u32,
    /// Median time from the case's first alert to the unit's first answer.
    pub median_first_answer_ms: Option<i64>,
    pub extensions_requested: u32,
    pub extensions_granted: u32,
    pub extensions_refused: u32,
    pub claims_confirmed: u32,
    pub claims_rejected: u32,
    /// Cases with an overdue alert open at the time.
    pub overdue_now: u32,
    /// The highest escalation level any of its cases reached (1 when none escalated).
    pub max_escalation_level: u32,
}

/// The record of every unit, at `as_of_ms`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Record {
    pub plan: String,
    pub as_of_ms: i64,
    pub units: Vec<UnitRecord>,
}

const OVERDUE: [&str; 2] = ["ReportOverdue", "TaskOverdue"];

/// Folds alerts (open and resolved) and statements into each unit's record at `as_of_ms`.
pub fn record(
    plan: &Plan,
    alerts: &[AlertRow],
    statements: &[StatementRow],
    as_of_ms: i64,
) -> Record {
    #[derive(Default)]
    struct Acc {
        first_alert: BTreeMap<String, i64>,
        overdue: BTreeSet<String>,
        level: u32,
    }
    let mut acc: BTreeMap<String, Acc> = BTreeMap::new();
    for a in alerts.iter().filter(|a| a.starts_at_ms <= as_of_ms) {
        let label = |k: &str| a.labels.get(k).map(String::as_str).unwrap_or_default();
        if label("role") == "escalation" || label("recipient").is_empty() {
            continue;
        }
        let unit = acc.entry(label("recipient").to_owned()).or_default();
        let case = case_of(&a.labels);
        let first = unit
            .first_alert
            .entry(case.clone())
            .or_insert(a.starts_at_ms);
        *first = (*first).min(a.starts_at_ms);
        let open = a.ends_at_ms.is_none_or(|end| end > as_of_ms);
        if open && OVERDUE.contains(&label("alertname")) {
            unit.overdue.insert(case);
        }
        unit.level = unit
            .level
            .max(label("escalation_level").parse().unwrap_or(1));
    }
    let statements: Vec<&StatementRow> = statements
        .iter()
        .filter(|s| s.received_at_ms <= as_of_ms)
        .collect();
    let units = acc
        .into_iter()
        .map(|(unit, a)| {
            let mine = |s: &&&StatementRow| s.unit_id == unit;
            let about_me = |s: &&&StatementRow| s.about_unit == unit;
            let count = |kind: &str, by: &dyn Fn(&&&StatementRow) -> bool| {
                statements
                    .iter()
                    .filter(by)
                    .filter(|s| s.kind == kind)
                    .count() as u32
            };
            let mut waits: Vec<i64> = a
                .first_alert
                .iter()
                .filter_map(|(case, alerted_at)| {
                    statements
                        .iter()
                        .filter(|s| {
                            s.unit_id == unit
                                && &s.case_id == case
                                && !DECISIONS.contains(&s.kind.as_str())
                        })
                        .map(|s| s.received_at_ms)
                        .min()
                        .map(|answered| (answered - alerted_at).max(0))
                })
                .collect();
            waits.sort_unstable();
            UnitRecord {
                name: plan.party_name(&unit).to_owned(),
                alerted: a.first_alert.len() as u32,
                answered: waits.len() as u32,
                median_first_answer_ms: median(&waits),
                extensions_requested: count(cases::REQUEST_EXTENSION, &mine),
                extensions_granted: count(cases::GRANT_EXTENSION, &about_me),
                extensions_refused: count(cases::REFUSE_EXTENSION, &about_me),
                claims_confirmed: count(cases::CONFIRM_DONE, &about_me),
                claims_rejected: count(cases::REJECT_DONE, &about_me),
                overdue_now: a.overdue.len() as u32,
                max_escalation_level: a.level.max(1),
                unit,
            }
        })
        .collect();
    Record {
        plan: plan.id.clone(),
        as_of_ms,
        units,
    }
}

fn median(sorted: &[i64]) -> Option<i64> {
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[n / 2]),
        n => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2),
    }
}

/// "2.5 天", or "—" without an answer.
pub fn days_text(ms: Option<i64>) -> String {
    ms.map(|ms| format!("{:.1} 天", ms as f64 / DAY_MS as f64))
        .unwrap_or_else(|| "—".into())
}

/// The printable 督办通报: each unit's record in the office's terms, worst first (most cases
/// overdue, then highest escalation, then fewest answered).
pub fn report_text(plan: &Plan, record: &Record) -> String {
    let mut out = String::new();
    let office = plan
        .supervision
        .office
        .as_deref()
        .map_or("督办单位", |o| plan.party_name(o));
    let _ = writeln!(out, "{} 督办通报", plan.name);
    let _ = writeln!(
        out,
        "{office} · 截至 {} ({})\n",
        date_of_ms(record.as_of_ms, &plan.tz),
        plan.id
    );
    if record.units.is_empty() {
        let _ = writeln!(out, "截至该日未发出督办提醒。");
        return out;
    }
    let mut units: Vec<&UnitRecord> = record.units.iter().collect();
    units.sort_by_key(|u| {
        (
            std::cmp::Reverse(u.overdue_now),
            std::cmp::Reverse(u.max_escalation_level),
            u.answered,
            u.unit.clone(),
        )
    });
    let header = [
        "单位",
        "督办事项",
        "已反馈",
        "首次反馈(中位)",
        "申请延期",
        "准予",
        "不予",
        "办结确认",
        "办结退回",
        "逾期未办",
        "最高督办级别",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for u in &units {
        rows.push(vec![
            u.name.clone(),
            u.alerted.to_string(),
            u.answered.to_string(),
            days_text(u.median_first_answer_ms),
            u.extensions_requested.to_string(),
            u.extensions_granted.to_string(),
            u.extensions_refused.to_string(),
            u.claims_confirmed.to_string(),
            u.claims_rejected.to_string(),
            u.overdue_now.to_string(),
            u.max_escalation_level.to_string(),
        ]);
    }
    for row in rows {
        let _ = writeln!(out, "{}", row.join(" | "));
    }
    let total = |f: fn(&UnitRecord) -> u32| record.units.iter().map(f).sum::<u32>();
    let _ = writeln!(
        out,
        "\n合计: 督办事项 {} 件, 已反馈 {} 件, 逾期未办 {} 件; 申请延期 {} 次 (准予 {}, 不予 {}); 办结确认 {} 件, 退回 {} 件。",
        total(|u| u.alerted),
        total(|u| u.answered),
        total(|u| u.overdue_now),
        total(|u| u.extensions_requested),
        total(|u| u.extensions_granted),
        total(|u| u.extensions_refused),
        total(|u| u.claims_confirmed),
        total(|u| u.claims_rejected),
    );
    out
}

/// The record at `as_of_ms` from what `store` holds.
pub async fn record_at(
    store: &crate::store::AnyStore,
    plan: &Plan,
    as_of_ms: i64,
) -> Result<Record, crate::store::StoreError> {
    use crate::store::Store;
    let alerts = store.alerts(&plan.id, 0).await?;
    let statements = store.statements(&plan.id, as_of_ms).await?;
    Ok(record(plan, &alerts, &statements, as_of_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(
        recipient: &str,
        role: &str,
        name: &str,
        start: i64,
        end: Option<i64>,
        level: &str,
    ) -> AlertRow {
        let labels: BTreeMap<String, String> = [
            ("alertname", name),
            ("recipient", recipient),
            ("role", role),
            ("unit", "laoshan"),
            ("indicator", "pct-applications"),
            ("period", "2018Q1"),
            ("escalation_level", level),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        AlertRow {
            key: format!("{labels:?}"),
            labels,
            annotations: Default::default(),
            starts_at_ms: start,
            ends_at_ms: end,
        }
    }

    fn said(unit: &str, kind: &str, at: i64, about: &str) -> StatementRow {
        StatementRow {
            unit_id: unit.into(),
            seq: at,
            issued_at_ms: at,
            received_at_ms: at,
            case_id: "report/pct-applications/2018Q1/laoshan".into(),
            kind: kind.into(),
            date: String::new(),
            note: String::new(),
            reference: String::new(),
            about_unit: about.into(),
        }
    }

    #[test]
    fn a_units_record_counts_its_cases_answers_decisions_and_escalation() {
        let plan = crate::plan::embedded().plan;
        let alerts = [
            alert("laoshan", "reporter", "ReportOverdue", 0, None, "3"),
            alert("science-tech", "lead", "ReportOverdue", 0, None, "3"),
            // An escalation copy is not the office's own case.
            alert("ip-office", "escalation", "ReportOverdue", 0, None, "3"),
        ];
        let statements = [
            said("laoshan", cases::ACKNOWLEDGE, 2 * DAY_MS, ""),
            said("laoshan", cases::REQUEST_EXTENSION, 3 * DAY_MS, ""),
            said("ip-office", cases::REFUSE_EXTENSION, 4 * DAY_MS, "laoshan"),
            said("laoshan", cases::REQUEST_EXTENSION, 5 * DAY_MS, ""),
            said("ip-office", cases::GRANT_EXTENSION, 6 * DAY_MS, "laoshan"),
        ];
        let r = record(&plan, &alerts, &statements, 10 * DAY_MS);
        let units: Vec<&str> = r.units.iter().map(|u| u.unit.as_str()).collect();
        assert_eq!(units, ["laoshan", "science-tech"]);
        let laoshan = &r.units[0];
        assert_eq!((laoshan.alerted, laoshan.answered), (1, 1));
        assert_eq!(laoshan.median_first_answer_ms, Some(2 * DAY_MS));
        assert_eq!(
            (
                laoshan.extensions_requested,
                laoshan.extensions_granted,
                laoshan.extensions_refused
            ),
            (2, 1, 1)
        );
        assert_eq!((laoshan.overdue_now, laoshan.max_escalation_level), (1, 3));
        let lead = &r.units[1];
        assert_eq!(
            (lead.alerted, lead.answered, lead.median_first_answer_ms),
            (1, 0, None)
        );
        // Earlier, only what had happened by then counts.
        let early = record(&plan, &alerts, &statements, 3 * DAY_MS);
        assert_eq!(early.units[0].extensions_requested, 1);
        assert_eq!(early.units[0].extensions_granted, 0);
        // A resolved alert is not overdue after it resolved.
        let resolved = [alert(
            "laoshan",
            "reporter",
            "ReportOverdue",
            0,
            Some(7 * DAY_MS),
            "2",
        )];
        assert_eq!(
            record(&plan, &resolved, &[], 8 * DAY_MS).units[0].overdue_now,
            0
        );
        assert_eq!(
            record(&plan, &resolved, &[], 6 * DAY_MS).units[0].overdue_now,
            1
        );
        let text = report_text(&plan, &r);
        assert!(
            text.contains("督办通报") && text.contains("崂山区"),
            "{text}"
        );
        assert!(text.contains("合计: 督办事项 2 件, 已反馈 1 件"), "{text}");
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[1, 3, 10]), Some(3));
        assert_eq!(median(&[1, 3, 5, 10]), Some(4));
    }
}

//! What the plan office's pages and the exports read, loaded once per request at one `as_of`:
//! the engine's progress, the alerts and statements folded into each case's history, and each
//! reporting unit's record of reports.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::plan::Plan;
use crate::progress::cases::DECISIONS;
use crate::progress::{ObligationStatus, Progress, Rates, Snapshot, ValueRow};
use crate::store::{
    AgentRow, AlertRow, AnyStore, AuditRow, ReportFilter, ReportRow, Store, StoreError,
};
use crate::supervision::Record;

/// Everything one page or export shows, as it stood at `as_of_ms`.
#[derive(Debug, Clone)]
pub struct Data {
    pub as_of_ms: i64,
    pub snapshot: Snapshot,
    pub progress: Progress,
    /// Alerts fired by `as_of_ms` (open or resolved), as stored.
    pub alerts: Vec<AlertRow>,
    pub record: Record,
    /// Corrections recorded by `as_of_ms`, oldest first.
    pub audit: Vec<AuditRow>,
    /// Reports received by `as_of_ms`, for this plan.
    pub reports: Vec<ReportRow>,
    pub agents: Vec<AgentRow>,
}

/// Loads the state at `as_of_ms`. With `history`, only what had been received by then (a true
/// history, as `/api/v1/progress?as_of=` answers); without, what is stored now.
pub async fn load(
    store: &AnyStore,
    plan: &Plan,
    as_of_ms: i64,
    history: bool,
) -> Result<Data, StoreError> {
    let snapshot = if history {
        crate::store::snapshot_as_of(store, plan, as_of_ms).await?
    } else {
        crate::store::snapshot(store, plan, as_of_ms).await?
    };
    let progress = crate::progress::compute(plan, &snapshot, as_of_ms);
    let mut alerts = store.alerts(&plan.id, 0).await?;
    alerts.retain(|a| a.starts_at_ms <= as_of_ms);
    let record = crate::supervision::record(plan, &alerts, &snapshot.statements, as_of_ms);
    let mut audit = store.audit(&plan.id).await?;
    audit.retain(|a| a.at_ms <= as_of_ms);
    let mut reports = store.reports(&ReportFilter::default()).await?;
    reports.retain(|r| r.plan_id == plan.id && r.received_at_ms <= as_of_ms);
    let mut agents = store.agents().await?;
    agents.retain(|a| a.first_seen_ms <= as_of_ms);
    Ok(Data {
        as_of_ms,
        snapshot,
        progress,
        alerts,
        record,
        audit,
        reports,
        agents,
    })
}

impl Data {
    /// The value each unit gave for each indicator and period, to look up by that key.
    pub fn values_by_key(&self) -> HashMap<(&str, &str, &str), &ValueRow> {
        self.snapshot
            .values
            .iter()
            .map(|v| {
                (
                    (
                        v.indicator_id.as_str(),
                        v.unit_id.as_str(),
                        v.period.as_str(),
                    ),
                    v,
                )
            })
            .collect()
    }

    /// Only the alerts fired from `since_ms` on and the statements received since: the
    /// 督办通报 of a period rather than of the whole plan so far.
    pub fn since(mut self, plan: &Plan, since_ms: i64) -> Data {
        self.alerts.retain(|a| a.starts_at_ms >= since_ms);
        self.snapshot
            .statements
            .retain(|s| s.received_at_ms >= since_ms);
        self.record = crate::supervision::record(
            plan,
            &self.alerts,
            &self.snapshot.statements,
            self.as_of_ms,
        );
        self
    }
}

/// One step in a case's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub at_ms: i64,
    /// `fired`, `notified`, `escalated`, `resolved`, or a statement kind
    /// (`acknowledge`, `explain`, `request_extension`, `grant_extension`, ...).
    pub kind: String,
    /// Who was notified, who said it, or who the escalation went to.
    pub unit: String,
    /// The unit an office decision is about.
    pub about: String,
    /// `alertname severity` (fired, notified), the level (escalated), or a statement's date,
    /// note and reference joined by ` · `.
    pub detail: String,
}

impl Event {
    /// The detail in words: alert names, severities and units named in `lang`.
    pub fn detail_text(&self, plan: &Plan, lang: super::lang::Lang) -> String {
        let mut parts: Vec<String> = Vec::new();
        match self.kind.as_str() {
            "fired" | "notified" => {
                parts.extend(self.detail.split(' ').map(|w| lang.word(w)));
                return parts.join(" ");
            }
            "escalated" => return format!("{} {}", lang.t("级别", "level"), self.detail),
            _ => {}
        }
        if !self.about.is_empty() {
            parts.push(format!(
                "{} {}",
                lang.t("关于", "about"),
                plan.party_name(&self.about)
            ));
        }
        if !self.detail.is_empty() {
            parts.push(self.detail.clone());
        }
        parts.join(" · ")
    }
}

/// One alert case (see `progress::cases`) with everything that happened to it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseHistory {
    pub case: String,
    pub alertname: String,
    pub severity: String,
    /// Lead unit or units, as the alert names them.
    pub lead_unit: String,
    /// The units the alert went to (not escalation copies).
    pub recipients: Vec<String>,
    pub first_ms: i64,
    /// Still firing at `as_of`.
    pub open: bool,
    pub escalation_level: u32,
    pub events: Vec<Event>,
}

/// Every case alerted by `as_of_ms`, newest first, each with its events in time order.
pub fn histories(data: &Data) -> Vec<CaseHistory> {
    let as_of = data.as_of_ms;
    let mut by_case: BTreeMap<String, CaseHistory> = BTreeMap::new();
    // The last end of each case's alerts: when it resolved, if none is open.
    let mut ended: BTreeMap<String, i64> = BTreeMap::new();
    for a in &data.alerts {
        let label = |k: &str| a.labels.get(k).cloned().unwrap_or_default();
        let case_id = crate::alerting::rules::case_of(&a.labels);
        let case = by_case
            .entry(case_id.clone())
            .or_insert_with(|| CaseHistory {
                case: case_id,
                alertname: label("alertname"),
                severity: label("severity"),
                lead_unit: label("lead_unit"),
                recipients: Vec::new(),
                first_ms: a.starts_at_ms,
                open: false,
                escalation_level: 1,
                events: Vec::new(),
            });
        let open = a.ends_at_ms.is_none_or(|end| end > as_of);
        if let Some(end) = a.ends_at_ms {
            let last = ended.entry(case.case.clone()).or_insert(end);
            *last = (*last).max(end);
        }
        if a.starts_at_ms >= case.first_ms || open {
            case.alertname = label("alertname");
            case.severity = label("severity");
        }
        case.first_ms = case.first_ms.min(a.starts_at_ms);
        case.open |= open;
        case.escalation_level = case
            .escalation_level
            .max(label("escalation_level").parse().unwrap_or(1));
        let recipient = label("recipient");
        if label("role") == "escalation" {
            case.events.push(Event {
                at_ms: a.starts_at_ms,
                kind: "escalated".into(),
                unit: recipient,
                about: String::new(),
                detail: label("escalation_level"),
            });
        } else {
            let detail = format!("{} {}", label("alertname"), label("severity"));
            if !case
                .events
                .iter()
                .any(|e| e.kind == "fired" && e.detail == detail)
            {
                case.events.push(Event {
                    at_ms: a.starts_at_ms,
                    kind: "fired".into(),
                    unit: String::new(),
                    about: String::new(),
                    detail: detail.clone(),
                });
            }
            if !case.recipients.contains(&recipient) {
                case.recipients.push(recipient.clone());
            }
            case.events.push(Event {
                at_ms: a.starts_at_ms,
                kind: "notified".into(),
                unit: recipient,
                about: String::new(),
                detail,
            });
        }
    }
    // A case is resolved when its last alert ended.
    for case in by_case.values_mut() {
        if case.open {
            continue;
        }
        if let Some(&at_ms) = ended.get(&case.case) {
            case.events.push(Event {
                at_ms,
                kind: "resolved".into(),
                unit: String::new(),
                about: String::new(),
                detail: String::new(),
            });
        }
    }
    for s in &data.snapshot.statements {
        let Some(case) = by_case.get_mut(&s.case_id) else {
            continue;
        };
        let detail: Vec<&str> = [&s.date, &s.note, &s.reference]
            .into_iter()
            .filter(|part| !part.is_empty())
            .map(String::as_str)
            .collect();
        case.events.push(Event {
            at_ms: s.received_at_ms,
            kind: s.kind.clone(),
            unit: s.unit_id.clone(),
            about: if DECISIONS.contains(&s.kind.as_str()) {
                s.about_unit.clone()
            } else {
                String::new()
            },
            detail: detail.join(" · "),
        });
    }
    let mut cases: Vec<CaseHistory> = by_case.into_values().collect();
    for case in &mut cases {
        case.events.sort_by_key(|e| e.at_ms);
    }
    cases.sort_by_key(|c| (std::cmp::Reverse(c.first_ms), c.case.clone()));
    cases
}

/// The units a case concerns: its recipients and the unit that owes the report.
pub fn case_units(case: &CaseHistory) -> BTreeSet<String> {
    let mut units: BTreeSet<String> = case.recipients.iter().cloned().collect();
    if let Some(unit) = case
        .case
        .strip_prefix("report/")
        .and_then(|r| r.rsplit('/').next())
    {
        units.insert(unit.to_owned());
    }
    units
}

/// One reporting unit's record: who has not reported, and what arrived wrong.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnitReporting {
    pub unit: String,
    pub name: String,
    /// The last value or task update received from the unit.
    pub last_report_ms: Option<i64>,
    /// The last time its agent said Hello.
    pub last_seen_ms: Option<i64>,
    pub rates: Rates,
    pub completeness: Option<f64>,
    pub timeliness: Option<f64>,
    /// Obligations past their deadline with nothing received: `indicator period`.
    pub overdue: Vec<String>,
    pub reports: u32,
    /// Seqs never received below each key's highest (reports lost or never sent).
    pub seq_gaps: u64,
    /// Items the centre refused from reports it stored.
    pub refused_items: i64,
}

/// Every unit that owes reports, in the plan's order.
pub fn reporting(plan: &Plan, data: &Data) -> Vec<UnitReporting> {
    let progress = &data.progress;
    // Grouped by unit in one pass each, so that the page is linear in the plan's size.
    let mut reports: HashMap<&str, Vec<&ReportRow>> = HashMap::new();
    for r in &data.reports {
        reports.entry(r.unit_id.as_str()).or_default().push(r);
    }
    let mut overdue: HashMap<&str, Vec<String>> = HashMap::new();
    for o in progress.obligations.iter() {
        if o.status == ObligationStatus::Overdue {
            overdue
                .entry(o.unit.as_str())
                .or_default()
                .push(format!("{} {}", o.indicator, o.period));
        }
    }
    let mut seen: HashMap<&str, i64> = HashMap::new();
    for a in &data.agents {
        let at = a.last_seen_ms.min(data.as_of_ms);
        let last = seen.entry(a.unit_id.as_str()).or_insert(at);
        *last = (*last).max(at);
    }
    plan.reporting_units()
        .into_iter()
        .map(|unit| {
            let rates = progress.by_unit.get(&unit.id).copied().unwrap_or_default();
            let mine: Vec<&ReportRow> = reports.remove(unit.id.as_str()).unwrap_or_default();
            let mut seqs: BTreeMap<&[u8], BTreeSet<i64>> = BTreeMap::new();
            for r in mine.iter().filter(|r| r.seq > 0) {
                seqs.entry(r.key_id.as_slice()).or_default().insert(r.seq);
            }
            // Each key counts from where the unit's previous key stopped (after a rotation the
            // agent goes on counting), as the store counts `duban_seq_gaps_total`.
            let mut keys: Vec<&BTreeSet<i64>> = seqs.values().collect();
            keys.sort_by_key(|s| s.first().copied());
            let mut baseline = 0i64;
            let mut seq_gaps = 0u64;
            for s in keys {
                let (first, last) = (*s.first().unwrap_or(&0), *s.last().unwrap_or(&0));
                let start = if baseline < first { baseline } else { 0 };
                seq_gaps += ((last - start) as u64).saturating_sub(s.len() as u64);
                baseline = baseline.max(last);
            }
            UnitReporting {
                unit: unit.id.clone(),
                name: unit.name.clone(),
                last_report_ms: progress.last_report_ms.get(&unit.id).copied(),
                last_seen_ms: seen.get(unit.id.as_str()).copied(),
                completeness: rates.completeness(),
                timeliness: rates.timeliness(),
                rates,
                overdue: overdue.remove(unit.id.as_str()).unwrap_or_default(),
                reports: mine.len() as u32,
                seq_gaps,
                refused_items: mine.iter().map(|r| r.refused_count).sum(),
            }
        })
        .collect()
}

/// A case id in words: the indicator, period and unit, or the task and milestone.
pub fn case_subject(plan: &Plan, case: &str) -> String {
    let parts: Vec<&str> = case.split('/').collect();
    let indicator = |id: &str| plan.indicator(id).map_or(id.to_owned(), |i| i.name.clone());
    match parts.as_slice() {
        ["report", ind, period, unit] => {
            format!("{} · {period} · {}", indicator(ind), plan.party_name(unit))
        }
        ["milestone", task, milestone] => match plan.task(task) {
            Some(t) => {
                let m = t
                    .milestones
                    .iter()
                    .find(|m| m.id == *milestone)
                    .map_or(*milestone, |m| m.name.as_str());
                format!("{} {} · {m}", t.section, t.title)
            }
            None => case.to_owned(),
        },
        ["indicator", ind] => indicator(ind),
        _ => case.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::DAY_MS;
    use crate::progress::cases::{ACKNOWLEDGE, REFUSE_EXTENSION, REQUEST_EXTENSION};
    use crate::store::StatementRow;

    const CASE: &str = "report/pct-applications/2018Q1/laoshan";

    fn alert(recipient: &str, role: &str, start: i64, end: Option<i64>, level: &str) -> AlertRow {
        let labels: BTreeMap<String, String> = [
            ("alertname", "ReportOverdue"),
            ("severity", "critical"),
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
            key: format!("{recipient}{role}"),
            labels,
            annotations: Default::default(),
            starts_at_ms: start,
            ends_at_ms: end,
        }
    }

    fn said(unit: &str, kind: &str, at: i64, about: &str, note: &str) -> StatementRow {
        StatementRow {
            unit_id: unit.into(),
            seq: at,
            issued_at_ms: at,
            received_at_ms: at,
            case_id: CASE.into(),
            kind: kind.into(),
            date: String::new(),
            note: note.into(),
            reference: String::new(),
            about_unit: about.into(),
        }
    }

    fn data(alerts: Vec<AlertRow>, statements: Vec<StatementRow>, as_of_ms: i64) -> Data {
        let plan = crate::plan::embedded().plan;
        let snapshot = Snapshot {
            statements,
            ..Default::default()
        };
        Data {
            as_of_ms,
            progress: crate::progress::compute(&plan, &snapshot, as_of_ms),
            record: crate::supervision::record(&plan, &alerts, &snapshot.statements, as_of_ms),
            snapshot,
            alerts,
            audit: Vec::new(),
            reports: Vec::new(),
            agents: Vec::new(),
        }
    }

    #[test]
    fn a_case_history_runs_from_the_alert_through_the_answers_to_its_resolution() {
        let plan = crate::plan::embedded().plan;
        let alerts = vec![
            alert("laoshan", "reporter", DAY_MS, Some(9 * DAY_MS), "3"),
            alert("science-tech", "lead", DAY_MS, Some(9 * DAY_MS), "3"),
            alert("ip-office", "escalation", 8 * DAY_MS, Some(9 * DAY_MS), "3"),
        ];
        let statements = vec![
            said("laoshan", ACKNOWLEDGE, 2 * DAY_MS, "", ""),
            said("laoshan", REQUEST_EXTENSION, 3 * DAY_MS, "", "人手不足"),
            said(
                "ip-office",
                REFUSE_EXTENSION,
                4 * DAY_MS,
                "laoshan",
                "理由不充分",
            ),
        ];
        let cases = histories(&data(alerts.clone(), statements.clone(), 10 * DAY_MS));
        assert_eq!(cases.len(), 1);
        let case = &cases[0];
        assert_eq!(case.case, CASE);
        assert!(!case.open);
        assert_eq!(case.escalation_level, 3);
        let kinds: Vec<(&str, &str)> = case
            .events
            .iter()
            .map(|e| (e.kind.as_str(), e.unit.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("fired", ""),
                ("notified", "laoshan"),
                ("notified", "science-tech"),
                ("acknowledge", "laoshan"),
                ("request_extension", "laoshan"),
                ("refuse_extension", "ip-office"),
                ("escalated", "ip-office"),
                ("resolved", ""),
            ]
        );
        let refusal = &case.events[5];
        let zh = super::super::lang::Lang::Zh;
        assert_eq!(refusal.detail_text(&plan, zh), "关于 崂山区 · 理由不充分");
        assert_eq!(case.events[1].detail_text(&plan, zh), "报送逾期 严重");
        assert_eq!(
            case_units(case).into_iter().collect::<Vec<_>>(),
            ["laoshan", "science-tech"]
        );
        // Earlier, the case is open and only what had been said by then is in it.
        let early = data(
            alerts
                .into_iter()
                .filter(|a| a.starts_at_ms <= 3 * DAY_MS)
                .collect(),
            statements
                .into_iter()
                .filter(|s| s.received_at_ms <= 3 * DAY_MS)
                .collect(),
            3 * DAY_MS,
        );
        let cases = histories(&early);
        assert!(cases[0].open);
        assert_eq!(cases[0].events.len(), 5, "{:?}", cases[0].events);
        // The 督办通报 of a later period has none of it.
        let later = early.since(&plan, 5 * DAY_MS);
        assert!(histories(&later).is_empty());
        assert!(later.record.units.is_empty());
    }
}

//! What the plan office's pages and the exports read, loaded once per request at one `as_of`:
//! the engine's progress, the alerts and statements folded into each case's history, and each
//! reporting unit's record of reports.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::plan::Plan;
use crate::progress::cases::DECISIONS;
use crate::progress::{ObligationStatus, Progress, Rates, Snapshot};
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
    /// The alert name and severity, the escalation level, a statement's date and note.
    pub detail: String,
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
                detail,
            });
        }
    }
    // A case is resolved when its last alert ended.
    for case in by_case.values_mut() {
        if case.open {
            continue;
        }
        let ended = data
            .alerts
            .iter()
            .filter(|a| crate::alerting::rules::case_of(&a.labels) == case.case)
            .filter_map(|a| a.ends_at_ms)
            .max();
        if let Some(at_ms) = ended {
            case.events.push(Event {
                at_ms,
                kind: "resolved".into(),
                unit: String::new(),
                detail: String::new(),
            });
        }
    }
    for s in &data.snapshot.statements {
        let Some(case) = by_case.get_mut(&s.case_id) else {
            continue;
        };
        let mut detail: Vec<&str> = Vec::new();
        if DECISIONS.contains(&s.kind.as_str()) && !s.about_unit.is_empty() {
            detail.push(&s.about_unit);
        }
        for part in [&s.date, &s.note, &s.reference] {
            if !part.is_empty() {
                detail.push(part);
            }
        }
        case.events.push(Event {
            at_ms: s.received_at_ms,
            kind: s.kind.clone(),
            unit: s.unit_id.clone(),
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
    plan.reporting_units()
        .into_iter()
        .map(|unit| {
            let rates = progress.by_unit.get(&unit.id).copied().unwrap_or_default();
            let mine: Vec<&ReportRow> = data
                .reports
                .iter()
                .filter(|r| r.unit_id == unit.id)
                .collect();
            let mut seqs: BTreeMap<&[u8], BTreeSet<i64>> = BTreeMap::new();
            for r in mine.iter().filter(|r| r.seq > 0) {
                seqs.entry(r.key_id.as_slice()).or_default().insert(r.seq);
            }
            let seq_gaps = seqs
                .values()
                .map(|s| (s.last().copied().unwrap_or(0) as u64).saturating_sub(s.len() as u64))
                .sum();
            UnitReporting {
                unit: unit.id.clone(),
                name: unit.name.clone(),
                last_report_ms: progress.last_report_ms.get(&unit.id).copied(),
                last_seen_ms: data
                    .agents
                    .iter()
                    .filter(|a| a.unit_id == unit.id)
                    .map(|a| a.last_seen_ms.min(data.as_of_ms))
                    .max(),
                completeness: rates.completeness(),
                timeliness: rates.timeliness(),
                rates,
                overdue: progress
                    .obligations
                    .iter()
                    .filter(|o| o.unit == unit.id && o.status == ObligationStatus::Overdue)
                    .map(|o| format!("{} {}", o.indicator, o.period))
                    .collect(),
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

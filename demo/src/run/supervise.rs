//! The 督办 loop in the demo: on one simulated day, units answer the alerts they received and
//! the supervising office decides, through the same code as `duban-agent respond` and
//! `decide` (signed statements, the outbox, the real aggregator). One unit acknowledges, one
//! explains, one asks for an extension that the office grants (its alert resolves), one for an
//! extension that is refused (its case stays at the top of the ladder), one claims a milestone
//! done and the office confirms it (the milestone is done), one claims and is rejected.

use super::*;
use duban_agent::answer::{Said, say};
use duban_agent::outbox::StatementDraft;
use duban_aggregator::alerting::rules::case_of;
use duban_aggregator::store::AlertRow;
use pb::StatementKind as K;

/// What was said, and the cases whose effects are checked after the day's evaluation.
#[derive(Debug, Default)]
pub(super) struct Answers {
    pub(super) said: usize,
    pub(super) recorded: usize,
    pub(super) lines: Vec<String>,
    pub(super) granted: Option<String>,
    pub(super) refused: Option<String>,
    pub(super) confirmed: Option<String>,
    pub(super) rejected: Option<String>,
    pub(super) refused_level_before: u32,
    pub(super) acknowledged: Option<String>,
    pub(super) explained: Option<String>,
}

fn label<'a>(a: &'a AlertRow, k: &str) -> &'a str {
    a.labels.get(k).map(String::as_str).unwrap_or_default()
}

/// Open cases of `alertname` whose alerts went to a unit that can answer (a unit with an agent
/// in the demo), in `roles`, each with that unit and its escalation level, in case order.
fn answerable(
    open: &[AlertRow],
    alertname: &str,
    roles: &[&str],
    can_answer: &dyn Fn(&str) -> bool,
) -> Vec<(String, String, u32)> {
    let mut out: BTreeMap<String, (String, u32)> = BTreeMap::new();
    for a in open
        .iter()
        .filter(|a| label(a, "alertname") == alertname && roles.contains(&label(a, "role")))
    {
        let unit = label(a, "recipient");
        if can_answer(unit) {
            let level = label(a, "escalation_level").parse().unwrap_or(1);
            out.entry(case_of(&a.labels))
                .or_insert_with(|| (unit.to_owned(), level));
        }
    }
    out.into_iter().map(|(c, (u, l))| (c, u, l)).collect()
}

/// The alerts open at `now_ms`.
async fn open_alerts(plan: &Plan, store: &AnyStore, now_ms: i64) -> anyhow::Result<Vec<AlertRow>> {
    Ok(store
        .alerts(&plan.id, now_ms)
        .await?
        .into_iter()
        .filter(|a| a.ends_at_ms.is_none())
        .collect())
}

/// The roles of a unit an alert is about (not an escalation copy).
const OWN: [&str; 4] = ["reporter", "lead", "responsible", "office"];

/// Whether the open alerts offer a case for every statement: two overdue reports (a refusal,
/// a grant), two milestones behind, one of them overdue (a confirmed and a rejected claim),
/// answerable by units with an agent.
pub(super) async fn enough_cases(
    plan: &Plan,
    store: &AnyStore,
    can_answer: &dyn Fn(&str) -> bool,
    now_ms: i64,
) -> anyhow::Result<bool> {
    let open = open_alerts(plan, store, now_ms).await?;
    let reports = answerable(&open, "ReportOverdue", &["reporter"], can_answer).len();
    let overdue = answerable(&open, "TaskOverdue", &OWN, can_answer).len();
    let lagging = answerable(&open, "TaskLagging", &OWN, can_answer).len();
    // A milestone already overdue is the one claimed and confirmed: confirming one that has
    // not yet fallen due would keep TaskOverdue from ever firing in a short run.
    Ok(reports >= 2 && overdue >= 1 && overdue + lagging >= 2)
}

/// Answers and decides on the day `today` (the aggregator is up).
pub(super) async fn answer_and_decide(
    plan: &Plan,
    store: &AnyStore,
    agents: &BTreeMap<String, DemoAgent>,
    responders: &BTreeMap<String, Agent>,
    today: Date,
    now_ms: i64,
) -> anyhow::Result<Answers> {
    let open = open_alerts(plan, store, now_ms).await?;
    let office = plan
        .supervision
        .office
        .as_deref()
        .and_then(|o| {
            responders
                .get(o)
                .or_else(|| agents.get(o).map(|d| &d.agent))
        })
        .context("the supervising office has no agent")?;
    let can_answer = |unit: &str| agents.contains_key(unit) || responders.contains_key(unit);
    let agent_of = |unit: &str| -> &Agent {
        agents
            .get(unit)
            .map(|d| &d.agent)
            .unwrap_or_else(|| &responders[unit])
    };
    let mut reports = answerable(&open, "ReportOverdue", &["reporter"], &can_answer);
    // The refusal goes to the case longest overdue: it stays at the top of the ladder.
    reports.sort_by_key(|(case, _, level)| (std::cmp::Reverse(*level), case.clone()));
    let overdue_milestones = answerable(&open, "TaskOverdue", &OWN, &can_answer);
    let mut milestones = overdue_milestones.clone();
    milestones.extend(answerable(&open, "TaskLagging", &OWN, &can_answer));
    let mut everything = Vec::new();
    for name in duban_aggregator::codes::ALERT_NAMES {
        everything.extend(answerable(&open, name, &OWN, &can_answer));
    }
    let later = |days: i64| today.saturating_add(days.days()).to_string();
    let mut out = Answers::default();
    let mut used: BTreeSet<String> = BTreeSet::new();
    let mut pick = |from: &[(String, String, u32)]| -> Option<(String, String)> {
        let (case, unit, _) = from.iter().find(|(c, _, _)| !used.contains(c))?;
        used.insert(case.clone());
        Some((case.clone(), unit.clone()))
    };
    let refuse = pick(&reports);
    out.refused_level_before = reports.first().map_or(0, |(_, _, level)| *level);
    let grant = pick(&reports).or_else(|| pick(&overdue_milestones));
    let confirm = pick(&milestones);
    let reject = pick(&milestones);
    let ack = pick(&everything);
    let explain = pick(&everything);
    let draft = |case: &str, kind, date: String, note: &str, reference: &str| StatementDraft {
        case_id: case.to_owned(),
        kind,
        date,
        note: note.to_owned(),
        reference: reference.to_owned(),
    };
    // A unit asks (an extension, or to have its claim of done accepted), the office decides.
    let asked_and_decided = [
        (
            refuse,
            K::RequestExtension,
            later(60),
            "人手不足, 申请延期",
            "",
            K::RefuseExtension,
            "理由不充分, 不予延期",
        ),
        (
            grant,
            K::RequestExtension,
            later(90),
            "数据需重新核对",
            "",
            K::GrantExtension,
            "同意延期",
        ),
        (
            confirm,
            K::ClaimDone,
            String::new(),
            "",
            "青知办〔2018〕7号",
            K::ConfirmDone,
            "已核实",
        ),
        (
            reject,
            K::ClaimDone,
            String::new(),
            "",
            "工作总结",
            K::RejectDone,
            "材料不全, 退回",
        ),
    ];
    for (picked, ask, date, note, reference, decision, why) in asked_and_decided {
        let Some((case, unit)) = picked else {
            continue;
        };
        if state(
            &mut out,
            agent_of(&unit),
            draft(&case, ask, date, note, reference),
        )
        .await?
            && state(
                &mut out,
                office,
                draft(&case, decision, String::new(), why, ""),
            )
            .await?
        {
            *match decision {
                K::RefuseExtension => &mut out.refused,
                K::GrantExtension => &mut out.granted,
                K::ConfirmDone => &mut out.confirmed,
                _ => &mut out.rejected,
            } = Some(case);
        }
    }
    // Answers that need no decision.
    let answered = [
        (ack, K::Acknowledge, String::new(), ""),
        (
            explain,
            K::Explain,
            later(30),
            "统计口径调整, 正在重新核对, 三十日内补报",
        ),
    ];
    for (picked, kind, date, note) in answered {
        let Some((case, unit)) = picked else {
            continue;
        };
        state(
            &mut out,
            agent_of(&unit),
            draft(&case, kind, date, note, ""),
        )
        .await?;
        *match kind {
            K::Acknowledge => &mut out.acknowledged,
            _ => &mut out.explained,
        } = Some(case);
    }
    Ok(out)
}

/// Signs, stores and sends one statement as `agent`; counts it and its outcome in `out`.
async fn state(out: &mut Answers, agent: &Agent, draft: StatementDraft) -> anyhow::Result<bool> {
    let (case, kind) = (draft.case_id.clone(), draft.kind);
    let (_, said) = say(agent, draft).await?;
    out.said += 1;
    let unit = &agent.config().unit;
    let name = kind
        .as_str_name()
        .trim_start_matches("STATEMENT_KIND_")
        .to_lowercase();
    out.lines.push(match &said {
        Said::Recorded(_) => {
            out.recorded += 1;
            format!("{unit} {name} {case}: recorded")
        }
        Said::Refused(reason, message) => {
            format!("{unit} {name} {case}: REFUSED {reason}: {message}")
        }
        Said::Waiting(why) => format!("{unit} {name} {case}: not answered ({why})"),
    });
    Ok(matches!(said, Said::Recorded(_)))
}

/// After the day's evaluation: what each decision did to the alerts.
pub(super) async fn check_effects(
    plan: &Plan,
    store: &AnyStore,
    said: &Answers,
    now_ms: i64,
) -> anyhow::Result<Check> {
    let open = open_alerts(plan, store, now_ms).await?;
    let of = |case: &Option<String>| -> Vec<&AlertRow> {
        case.as_ref().map_or(Vec::new(), |c| {
            open.iter().filter(|a| &case_of(&a.labels) == c).collect()
        })
    };
    let overdue = |alerts: &[&AlertRow]| {
        alerts
            .iter()
            .any(|a| matches!(label(a, "alertname"), "ReportOverdue" | "TaskOverdue"))
    };
    let mut problems = Vec::new();
    if said.recorded != said.said {
        problems.push(format!(
            "{} of {} statements recorded",
            said.recorded, said.said
        ));
    }
    if overdue(&of(&said.granted)) {
        problems.push("the granted case is still overdue".to_owned());
    }
    if !of(&said.confirmed).is_empty() {
        problems.push("the confirmed milestone is still alerted".to_owned());
    }
    if said.rejected.is_some() && of(&said.rejected).is_empty() {
        problems.push("the rejected claim's milestone is no longer alerted".to_owned());
    }
    let refused_level = of(&said.refused)
        .iter()
        .filter_map(|a| label(a, "escalation_level").parse::<u32>().ok())
        .max();
    // A refusal changes nothing: still overdue, and no lower on the ladder than before.
    if said.refused.is_some()
        && (!overdue(&of(&said.refused)) || refused_level < Some(said.refused_level_before))
    {
        problems.push(format!(
            "the refused case is at level {refused_level:?}, was {}",
            said.refused_level_before
        ));
    }
    let missing: Vec<&str> = [
        ("granted", &said.granted),
        ("refused", &said.refused),
        ("confirmed", &said.confirmed),
        ("rejected", &said.rejected),
        ("acknowledged", &said.acknowledged),
        ("explained", &said.explained),
    ]
    .iter()
    .filter(|(_, c)| c.is_none())
    .map(|(n, _)| *n)
    .collect();
    let text = format!(
        "{} statements, {} recorded; acknowledged ({}), explained ({}); extension granted ({}) no longer overdue, refused ({}) still overdue at level {}; done claim confirmed ({}), rejected ({}){}",
        said.said,
        said.recorded,
        said.acknowledged.as_deref().unwrap_or("—"),
        said.explained.as_deref().unwrap_or("—"),
        said.granted.as_deref().unwrap_or("—"),
        said.refused.as_deref().unwrap_or("—"),
        refused_level.map_or("—".to_owned(), |l| l.to_string()),
        said.confirmed.as_deref().unwrap_or("—"),
        said.rejected.as_deref().unwrap_or("—"),
        if missing.is_empty() {
            String::new()
        } else {
            format!("; no open case for: {}", missing.join(", "))
        }
    );
    Ok(if !problems.is_empty() {
        Check::failed(format!("{text}: {}", problems.join("; ")))
    } else if !missing.is_empty() {
        Check::not_reached(text)
    } else {
        Check::passed(text)
    })
}

/// At the end: how far up the ladder the refused case climbed (a refusal changes nothing, so
/// an unanswered case keeps climbing to the top).
pub(super) async fn check_climb(
    plan: &Plan,
    store: &AnyStore,
    said: &Answers,
) -> anyhow::Result<Check> {
    let Some(case) = &said.refused else {
        return Ok(Check::not_reached("no extension was refused"));
    };
    let top = plan
        .supervision
        .ladder
        .iter()
        .map(|l| l.level)
        .max()
        .unwrap_or(1);
    let alerts = store.alerts(&plan.id, 0).await?;
    let of_case: Vec<&AlertRow> = alerts
        .iter()
        .filter(|a| &case_of(&a.labels) == case)
        .collect();
    let reached = of_case
        .iter()
        .filter_map(|a| label(a, "escalation_level").parse::<u32>().ok())
        .max()
        .unwrap_or(1);
    let open = of_case.iter().any(|a| a.ends_at_ms.is_none());
    let text = format!(
        "{case}: refused, then level {reached} of {top}{}",
        if open {
            ", still open"
        } else {
            ", resolved (its report arrived)"
        }
    );
    Ok(if reached == top {
        Check::passed(text)
    } else {
        Check::not_reached(text)
    })
}

//! `status`: the plan's state at a time, for the terminal or as JSON.

use super::*;

/// The terminal (or JSON) view of the plan's state at `now_ms`.
pub async fn status(
    store: &AnyStore,
    plan: &Plan,
    now_ms: i64,
    policy: &crate::alerting::rules::AlertPolicy,
    json: bool,
) -> Result<String, AdminError> {
    use crate::progress::{IndicatorStatus, MilestoneStatus};
    // Only what had been received by then: a true history at any --as-of.
    let progress = crate::store::progress_as_of(store, plan, now_ms).await?;
    let supervision = crate::supervision::record_at(store, plan, now_ms).await?;
    let evaluated = crate::alerting::rules::derive(plan, &progress, policy);
    let agents = store.agents().await?;
    let outages = store.outages(now_ms).await?;
    if json {
        return Ok(serde_json::to_string_pretty(&serde_json::json!({
            "plan": plan.id,
            "as_of_ms": now_ms,
            "go_live_ms": policy.go_live_ms,
            "progress": progress,
            "alerts": evaluated.alerts,
            "alerts_muted": evaluated.muted,
            "deadlines_before_go_live": evaluated.before_go_live,
            "agents": agents,
            "centre_outages": outages,
            "supervision": supervision,
        }))? + "\n");
    }
    let alerts = evaluated.alerts;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {} — as of {}\n",
        plan.id,
        plan.name,
        crate::progress::date_of_ms(now_ms, &plan.tz)
    );
    let number = |v: Option<f64>| {
        v.map(|v| {
            if v.abs() >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        })
        .unwrap_or_else(|| "—".into())
    };
    let bar = |ratio: Option<f64>| {
        let filled = (ratio.unwrap_or(0.0) * 20.0).round() as usize;
        format!(
            "[{}{}]",
            "#".repeat(filled.min(20)),
            ".".repeat(20 - filled.min(20))
        )
    };
    let _ = writeln!(out, "INDICATORS");
    let mut rows = vec![
        [
            "indicator",
            "value",
            "target",
            "expected",
            "progress",
            "status",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for i in &progress.indicators {
        let Some(indicator) = plan.indicator(&i.indicator) else {
            continue;
        };
        if indicator.target.is_none() {
            continue;
        }
        rows.push(vec![
            indicator.name.clone(),
            number(i.value),
            format!("{} {}", number(i.target), indicator.measure),
            number(i.judged_expected),
            bar(i.progress_ratio),
            i.status.name().to_owned(),
        ]);
    }
    out.push_str(&table(&rows, 2));
    let _ = writeln!(out, "\nTASKS LAGGING OR OVERDUE");
    let mut rows = vec![
        ["task", "milestone", "status", "percent", "lead units"]
            .map(String::from)
            .to_vec(),
    ];
    for m in progress.milestones.iter().filter(|m| {
        matches!(
            m.status,
            MilestoneStatus::Lagging | MilestoneStatus::Overdue
        )
    }) {
        let Some(task) = plan.task(&m.task) else {
            continue;
        };
        let leads = if task.lead_units.is_empty() {
            "— (按职责分工负责)".to_owned()
        } else {
            task.lead_units
                .iter()
                .map(|u| plan.party_name(u))
                .collect::<Vec<_>>()
                .join("、")
        };
        rows.push(vec![
            format!("{} {}", task.section, task.title),
            m.milestone.clone(),
            m.status.name().to_owned(),
            m.percent
                .map(|p| format!("{p:.0}%"))
                .unwrap_or_else(|| "—".into()),
            leads,
        ]);
    }
    out.push_str(&table(&rows, 2));
    let _ = writeln!(
        out,
        "\nREPORTING BY UNIT (completeness / timeliness of reports due so far)"
    );
    let mut rows = vec![
        [
            "unit",
            "expected",
            "received",
            "on time",
            "completeness",
            "timeliness",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for (unit, rates) in &progress.by_unit {
        let pct = |r: Option<f64>| {
            r.map(|r| format!("{:.0}%", r * 100.0))
                .unwrap_or_else(|| "—".into())
        };
        rows.push(vec![
            format!("{} {}", unit, plan.party_name(unit)),
            rates.expected.to_string(),
            rates.received.to_string(),
            rates.on_time.to_string(),
            pct(rates.completeness()),
            pct(rates.timeliness()),
        ]);
    }
    out.push_str(&table(&rows, 2));
    let _ = writeln!(
        out,
        "  (expected: the straight path from baseline to target at the end of the period the value describes, which the status is judged against)"
    );
    let _ = writeln!(out, "\nAGENTS (last heartbeat)");
    let mut rows = vec![
        [
            "unit",
            "key",
            "last seen",
            "version",
            "waiting",
            "dead letters",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for a in &agents {
        rows.push(vec![
            format!("{} {}", a.unit_id, plan.party_name(&a.unit_id)),
            a.key_id.chars().take(12).collect(),
            time_text(Some(a.last_seen_ms)),
            a.agent_version.clone(),
            a.outbox_reports.to_string(),
            a.dead_letters.to_string(),
        ]);
    }
    out.push_str(&table(&rows, 2));
    if !outages.is_empty() {
        let _ = writeln!(
            out,
            "\nCENTRE OUTAGES ({}; reports signed before a deadline inside one count on time if they arrive within a day after it)",
            outages.len()
        );
        for o in outages.iter().rev().take(10) {
            let _ = writeln!(
                out,
                "  {} .. {}",
                time_text(Some(o.from_ms)),
                time_text(Some(o.to_ms))
            );
        }
    }
    let _ = writeln!(out, "\nACTIVE ALERTS ({})", alerts.len());
    if let Some(go_live) = policy.go_live_ms {
        let _ = writeln!(
            out,
            "  go-live {}: {} deadline(s) missed before it are shown above, not alerted",
            crate::progress::date_of_ms(go_live, &plan.tz),
            evaluated.before_go_live
        );
    }
    if evaluated.muted > 0 {
        let _ = writeln!(
            out,
            "  {} alert(s) muted by [[alerts.mute]]",
            evaluated.muted
        );
    }
    let rank = |severity: &str| match severity {
        "critical" => 0u8,
        "warning" => 1,
        _ => 2,
    };
    let mut counts: BTreeMap<(u8, String, String), usize> = BTreeMap::new();
    let mut by_recipient: BTreeMap<String, usize> = BTreeMap::new();
    for a in &alerts {
        let severity = a.labels.get("severity").cloned().unwrap_or_default();
        *counts
            .entry((rank(&severity), a.name().to_owned(), severity))
            .or_default() += 1;
        *by_recipient
            .entry(plan.party_name(a.recipient()).to_owned())
            .or_default() += 1;
    }
    let mut rows = vec![["alert", "severity", "count"].map(String::from).to_vec()];
    rows.extend(
        counts
            .iter()
            .map(|((_, name, severity), n)| vec![name.clone(), severity.clone(), n.to_string()]),
    );
    out.push_str(&table(&rows, 2));
    let mut leads: Vec<(&String, &usize)> = by_recipient.iter().collect();
    leads.sort_by(|a, b| b.1.cmp(a.1));
    let _ = writeln!(
        out,
        "  by recipient: {}",
        leads
            .iter()
            .map(|(u, n)| format!("{u} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut worst: Vec<&crate::alerting::rules::Alert> = alerts
        .iter()
        .filter(|a| a.name() != "ReportDueSoon")
        .collect();
    worst.sort_by_key(|a| {
        (
            rank(
                a.labels
                    .get("severity")
                    .map(String::as_str)
                    .unwrap_or_default(),
            ),
            a.name().to_owned(),
        )
    });
    let _ = writeln!(
        out,
        "\n  most severe ({} of {}; --json lists all):",
        worst.len().min(20),
        worst.len()
    );
    let mut rows = vec![
        ["alert", "severity", "recipient", "summary"]
            .map(String::from)
            .to_vec(),
    ];
    for a in worst.iter().take(20) {
        rows.push(vec![
            a.name().to_owned(),
            a.labels.get("severity").cloned().unwrap_or_default(),
            plan.party_name(a.recipient()).to_owned(),
            a.annotations.get("summary").cloned().unwrap_or_default(),
        ]);
    }
    out.push_str(&table(&rows, 2));
    let lagging = progress
        .indicators
        .iter()
        .filter(|i| i.status == IndicatorStatus::Lagging)
        .count();
    let _ = writeln!(out, "\n{lagging} indicator(s) lagging");
    let _ = writeln!(
        out,
        "\n督办 (alert cases per unit; `duban-aggregator supervision report` prints the 督办通报)"
    );
    let mut units: Vec<&crate::supervision::UnitRecord> = supervision.units.iter().collect();
    units.sort_by_key(|u| (std::cmp::Reverse(u.overdue_now), u.unit.clone()));
    let mut rows = vec![
        [
            "unit",
            "alerted",
            "answered",
            "first answer",
            "extensions",
            "overdue",
            "level",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for u in units.iter().take(20) {
        rows.push(vec![
            u.name.clone(),
            u.alerted.to_string(),
            u.answered.to_string(),
            crate::supervision::days_text(u.median_first_answer_ms),
            format!(
                "{} asked, {} granted, {} refused",
                u.extensions_requested, u.extensions_granted, u.extensions_refused
            ),
            u.overdue_now.to_string(),
            u.max_escalation_level.to_string(),
        ]);
    }
    if units.is_empty() {
        let _ = writeln!(out, "  no alert sent by then");
    } else {
        out.push_str(&table(&rows, 2));
    }
    Ok(out)
}

//! The operator's commands against the store: key registry, and what has arrived.
//! Each returns text for the terminal (or JSON with `--json`), so tests can check it directly.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use anyhow::{Context, bail};
use duban_proto::{KeyId, PublicKey};

use crate::clock::parse_time_ms;
use crate::plan::{Plan, show::table};
use crate::store::{AnyStore, NewKey, ReportFilter, Store};

fn time_text(ms: Option<i64>) -> String {
    match ms.map(jiff::Timestamp::from_millisecond) {
        Some(Ok(ts)) => ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Some(Err(_)) => "(invalid)".into(),
        None => "—".into(),
    }
}

pub async fn keys_add(
    store: &AnyStore,
    plan: &Plan,
    unit: &str,
    public_key_file: &Path,
    not_before: Option<&str>,
    not_after: Option<&str>,
    now_ms: i64,
) -> anyhow::Result<String> {
    if plan.unit(unit).is_none() {
        bail!(
            "unit {unit:?} is not in plan {}; `duban-aggregator plan show` lists the units",
            plan.id
        );
    }
    let key = PublicKey::read_spki_pem_file(public_key_file)?;
    let not_before_ms = not_before
        .map(parse_time_ms)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--not-before: {e}"))?;
    let not_after_ms = not_after
        .map(parse_time_ms)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--not-after: {e}"))?;
    if let (Some(a), Some(b)) = (not_before_ms, not_after_ms)
        && b <= a
    {
        bail!("--not-after must be later than --not-before");
    }
    store
        .add_key(NewKey {
            key_id: key.key_id(),
            unit_id: unit.to_owned(),
            public_key: *key.raw(),
            not_before_ms,
            not_after_ms,
            added_at_ms: now_ms,
        })
        .await?;
    Ok(format!(
        "added key {} for unit {unit} ({})\n",
        key.key_id(),
        plan.party_name(unit)
    ))
}

pub async fn keys_list(store: &AnyStore, unit: Option<&str>, json: bool) -> anyhow::Result<String> {
    let keys = store.keys(unit).await?;
    if json {
        return Ok(serde_json::to_string_pretty(&keys)? + "\n");
    }
    let mut rows = vec![
        [
            "key id",
            "unit",
            "added",
            "not before",
            "not after",
            "revoked",
            "max seq",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for k in &keys {
        rows.push(vec![
            k.key_id.to_string(),
            k.unit_id.clone(),
            time_text(Some(k.added_at_ms)),
            time_text(k.not_before_ms),
            time_text(k.not_after_ms),
            time_text(k.revoked_at_ms),
            k.max_seq.to_string(),
        ]);
    }
    let mut out = table(&rows, 0);
    let _ = writeln!(
        out,
        "{} key{}",
        keys.len(),
        if keys.len() == 1 { "" } else { "s" }
    );
    Ok(out)
}

pub async fn keys_revoke(store: &AnyStore, key_id: &str, now_ms: i64) -> anyhow::Result<String> {
    let key_id = KeyId::from_hex(key_id)?;
    if !store.revoke_key(key_id, now_ms).await? {
        bail!("no key {key_id} is registered; `duban-aggregator keys list` shows them");
    }
    Ok(format!(
        "revoked key {key_id}: reports signed with it are refused from now on (running servers within seconds)\n"
    ))
}

pub async fn reports_list(
    store: &AnyStore,
    filter: &ReportFilter,
    json: bool,
) -> anyhow::Result<String> {
    let reports = store.reports(filter).await?;
    if json {
        return Ok(serde_json::to_string_pretty(&reports)? + "\n");
    }
    let mut rows = vec![
        [
            "#",
            "unit",
            "period",
            "rev",
            "seq",
            "issued",
            "received",
            "values",
            "tasks",
            "refused",
            "report id",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for r in &reports {
        rows.push(vec![
            r.report_pk.to_string(),
            r.unit_id.clone(),
            r.period.clone(),
            r.revision.to_string(),
            r.seq.to_string(),
            time_text(Some(r.issued_at_ms)),
            time_text(Some(r.received_at_ms)),
            r.values_count.to_string(),
            r.task_updates_count.to_string(),
            r.refused_count.to_string(),
            hex::encode(&r.report_id),
        ]);
    }
    let mut out = table(&rows, 0);
    let _ = writeln!(
        out,
        "{} report{}",
        reports.len(),
        if reports.len() == 1 { "" } else { "s" }
    );
    Ok(out)
}

pub async fn values_show(
    store: &AnyStore,
    plan: &Plan,
    indicator: Option<&str>,
    json: bool,
) -> anyhow::Result<String> {
    if let Some(id) = indicator
        && plan.indicator(id).is_none()
    {
        bail!("indicator {id:?} is not in plan {}", plan.id);
    }
    let values = store.current_values(&plan.id, indicator).await?;
    if json {
        return Ok(serde_json::to_string_pretty(&values)? + "\n");
    }
    let mut rows = vec![
        [
            "indicator",
            "unit",
            "period",
            "value",
            "measure",
            "rev",
            "updated",
            "note",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for v in &values {
        let measure = plan
            .indicator(&v.indicator_id)
            .map(|i| i.measure.clone())
            .unwrap_or_default();
        rows.push(vec![
            v.indicator_id.clone(),
            v.unit_id.clone(),
            v.period.clone(),
            v.value.to_string(),
            measure,
            v.revision.to_string(),
            time_text(Some(v.updated_at_ms)),
            v.note.clone(),
        ]);
    }
    let mut out = table(&rows, 0);
    let _ = writeln!(
        out,
        "{} current value{}",
        values.len(),
        if values.len() == 1 { "" } else { "s" }
    );
    Ok(out)
}

/// Writes a development CA and certificates into `dir` (see [`crate::devca`]): `ca.crt`,
/// `ca.key`, `server.crt`, `server.key`, and `units/<unit>.crt` / `.key` for each unit. An
/// existing CA in `dir` is reused; existing files are never overwritten.
pub fn dev_ca(
    dir: &Path,
    plan: &Plan,
    units: &[String],
    server_names: &[String],
) -> anyhow::Result<String> {
    use crate::devca::DevCa;
    for unit in units {
        if plan.unit(unit).is_none() {
            bail!("unit {unit:?} is not in plan {}", plan.id);
        }
    }
    std::fs::create_dir_all(dir.join("units"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let (ca_cert, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let mut out = String::new();
    let ca = if ca_cert.exists() && ca_key.exists() {
        let _ = writeln!(out, "reusing the CA in {}", dir.display());
        DevCa::from_pem(
            &std::fs::read_to_string(&ca_cert)?,
            &std::fs::read_to_string(&ca_key)?,
        )?
    } else {
        let ca = DevCa::generate()?;
        write_new(&ca_cert, ca.cert_pem(), 0o644)?;
        write_new(&ca_key, ca.key_pem(), 0o600)?;
        let _ = writeln!(
            out,
            "wrote {} (the CA agents and the aggregator trust)",
            ca_cert.display()
        );
        ca
    };
    let issue =
        |name: &str, issued: crate::devca::Issued, out: &mut String| -> anyhow::Result<()> {
            let (cert, key) = (
                dir.join(format!("{name}.crt")),
                dir.join(format!("{name}.key")),
            );
            if cert.exists() || key.exists() {
                let _ = writeln!(out, "kept existing {}", cert.display());
                return Ok(());
            }
            write_new(&cert, &issued.cert_pem, 0o644)?;
            write_new(&key, &issued.key_pem, 0o600)?;
            let _ = writeln!(out, "wrote {}", cert.display());
            Ok(())
        };
    let names: Vec<&str> = server_names.iter().map(String::as_str).collect();
    issue("server", ca.issue_server(&names)?, &mut out)?;
    for unit in units {
        issue(&format!("units/{unit}"), ca.issue_unit(unit)?, &mut out)?;
    }
    Ok(out)
}

fn write_new(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// The terminal (or JSON) view of the plan's state at `now_ms`.
pub async fn status(
    store: &AnyStore,
    plan: &Plan,
    now_ms: i64,
    policy: &crate::alerting::rules::AlertPolicy,
    json: bool,
) -> anyhow::Result<String> {
    use crate::progress::{IndicatorStatus, MilestoneStatus};
    let progress = crate::store::progress_at(store, plan, now_ms).await?;
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
    Ok(out)
}

//! `duban-aggregator plan alertmanager-config`: an Alertmanager configuration generated from
//! the plan. Plan alerts are routed on their `recipient` label to a receiver `unit-<unit>` for
//! every unit that can receive one (reporting units, lead units, and the responsible units of
//! tasks whose document names no lead unit); duban's own health alerts (`Duban*`) go to the
//! receiver `duban-ops`. Each rung of the plan's escalation ladder has a receiver of its own,
//! `escalation-level-<n>`, that also gets (`continue: true`) every alert at that level, for the
//! supervising body's own channel; the units the rung names are recipients as well, through
//! their `unit-<unit>` routes.
//!
//! Receivers written by hand (real webhook URLs, e-mail, WeChat) live in a file of their own
//! (`--receivers`, e.g. deploy/alertmanager/receivers.yml): a YAML document with a `receivers`
//! list in Alertmanager's syntax. The generated configuration uses each hand-written receiver
//! in place of its placeholder, so regenerating never loses them. A hand-written receiver whose
//! name the plan does not route to is an error (a typo would otherwise never receive anything).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use crate::plan::Plan;

/// The receiver of duban's own health alerts.
pub const OPS_RECEIVER: &str = "duban-ops";

/// The receiver a unit's plan alerts are routed to.
pub fn unit_receiver(unit: &str) -> String {
    format!("unit-{unit}")
}

/// The receiver of the alerts at escalation level `level` (2 and above).
pub fn level_receiver(level: u32) -> String {
    format!("escalation-level-{level}")
}

/// Every unit id an alert's `recipient` label can name, in plan order.
pub fn alert_recipients(plan: &Plan) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    let mut add = |list: Vec<String>| {
        for id in list {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    };
    for indicator in &plan.indicators {
        add(plan.expand_parties(&indicator.lead_units));
        add(indicator.reporter_units.clone());
    }
    for task in &plan.tasks {
        if task.lead_units.is_empty() {
            add(plan.expand_parties(&task.responsible_units));
        } else {
            add(plan.expand_parties(&task.lead_units));
        }
        for milestone in &task.milestones {
            add(plan.expand_parties(&milestone.lead_units));
        }
    }
    // Where the plan names no one, and up the ladder.
    add(plan.supervision.office.iter().cloned().collect());
    for rung in &plan.supervision.ladder {
        add(plan.expand_parties(&rung.to));
    }
    let order = |id: &String| {
        plan.units
            .iter()
            .position(|u| &u.id == id)
            .unwrap_or(usize::MAX)
    };
    ids.sort_by_key(order);
    ids
}

/// Receivers written by hand, by name, each as the YAML mapping Alertmanager reads.
#[derive(Debug, Clone, Default)]
pub struct HandWritten {
    receivers: BTreeMap<String, yaml_serde::Value>,
}

impl HandWritten {
    /// Reads a YAML file holding `receivers: [ { name: ..., ... }, ... ]`.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            receivers: Vec<yaml_serde::Value>,
        }
        let file: File = yaml_serde::from_str(text).map_err(|e| e.to_string())?;
        let mut receivers = BTreeMap::new();
        for (n, receiver) in file.receivers.into_iter().enumerate() {
            let name = receiver
                .get("name")
                .and_then(|v| v.as_str())
                .ok_or_else(|| format!("receivers[{n}]: expected a `name`"))?
                .to_owned();
            if receivers.insert(name.clone(), receiver).is_some() {
                return Err(format!("receivers[{n}]: {name:?} is defined twice"));
            }
        }
        Ok(HandWritten { receivers })
    }
}

/// The YAML. `webhook_base` is the placeholder each receiver without a hand-written definition
/// posts to (`<base>/<unit>`, `<base>/ops`).
pub fn render(plan: &Plan, webhook_base: &str, hand: &HandWritten) -> Result<String, String> {
    let base = webhook_base.trim_end_matches('/');
    let recipients = alert_recipients(plan);
    let levels: Vec<u32> = plan.supervision.ladder.iter().map(|r| r.level).collect();
    let routed: Vec<String> = std::iter::once(OPS_RECEIVER.to_owned())
        .chain(levels.iter().map(|l| level_receiver(*l)))
        .chain(recipients.iter().map(|u| unit_receiver(u)))
        .collect();
    if let Some(unknown) = hand.receivers.keys().find(|n| !routed.contains(n)) {
        return Err(format!(
            "the hand-written receiver {unknown:?} is not routed to: receivers are {OPS_RECEIVER}, escalation-level-<n> for the plan's escalation levels ({}) and unit-<unit> for the units of plan {} ({})",
            levels
                .iter()
                .map(|l| l.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            plan.id,
            recipients
                .iter()
                .map(|u| unit_receiver(u))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Alertmanager configuration for duban plan {} ({}).",
        plan.id, plan.name
    );
    let _ = writeln!(
        out,
        "# Generated by `duban-aggregator plan alertmanager-config`; do not edit: edit the receivers file"
    );
    let _ = writeln!(
        out,
        "# (--receivers) and regenerate. Plan alerts are routed on their recipient label to unit-<unit>;"
    );
    let _ = writeln!(
        out,
        "# duban's own health alerts (Duban*) go to {OPS_RECEIVER}. A receiver marked \"placeholder\" has no"
    );
    let _ = writeln!(
        out,
        "# hand-written definition yet: its webhook URL stands for the unit's real endpoint."
    );
    let _ = writeln!(out, "global:\n  resolve_timeout: 5m\n");
    let _ = writeln!(
        out,
        "route:\n  receiver: duban-unrouted\n  group_by: [alertname, recipient]\n  group_wait: 30s\n  group_interval: 5m\n  repeat_interval: 12h\n  routes:"
    );
    let _ = writeln!(
        out,
        "    - receiver: {OPS_RECEIVER}\n      group_by: [alertname, instance]\n      matchers:\n        - alertname=~\"Duban.*\""
    );
    for level in &levels {
        let _ = writeln!(
            out,
            "    - receiver: {}\n      group_by: [alertname, escalation_level]\n      continue: true\n      matchers:\n        - escalation_level=\"{level}\"\n        - role!=\"escalation\"",
            level_receiver(*level)
        );
    }
    for unit in &recipients {
        let _ = writeln!(
            out,
            "    - receiver: {}\n      matchers:\n        - recipient=\"{unit}\"",
            unit_receiver(unit)
        );
    }
    let _ = writeln!(
        out,
        "\n# While the aggregator is down, reports cannot arrive: do not tell units they are overdue."
    );
    let _ = writeln!(
        out,
        "inhibit_rules:\n  - source_matchers:\n      - alertname=\"DubanAggregatorDown\"\n    target_matchers:\n      - alertname=~\"ReportOverdue|ReportDueSoon\"\n"
    );
    let _ = writeln!(
        out,
        "receivers:\n  # Alerts with neither a recipient nor a Duban* name (none are expected).\n  - name: duban-unrouted"
    );
    let mut receiver = |name: &str, comment: &str, placeholder: &str| match hand.receivers.get(name)
    {
        Some(definition) => {
            let _ = writeln!(out, "  # {comment} (hand-written)");
            let yaml = yaml_serde::to_string(definition).expect("a YAML value serializes");
            for (n, line) in yaml.lines().enumerate() {
                let prefix = if n == 0 { "  - " } else { "    " };
                let _ = writeln!(out, "{prefix}{line}");
            }
        }
        None => {
            let _ = writeln!(
                out,
                "  - name: {name}  # {comment}\n    webhook_configs:\n      - url: {placeholder}  # placeholder\n        send_resolved: true"
            );
        }
    };
    receiver(OPS_RECEIVER, "duban's operators", &format!("{base}/ops"));
    for level in &levels {
        receiver(
            &level_receiver(*level),
            &format!("督办 escalation level {level}"),
            &format!("{base}/escalation-level-{level}"),
        );
    }
    for unit in &recipients {
        receiver(
            &unit_receiver(unit),
            plan.party_name(unit),
            &format!("{base}/{unit}"),
        );
    }
    Ok(out)
}

/// The default placeholder base for receivers' webhooks.
pub const DEFAULT_WEBHOOK_BASE: &str = "http://127.0.0.1:9099/duban";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_written_receivers_replace_placeholders_and_typos_are_refused() {
        let plan = crate::plan::embedded().plan;
        let hand = HandWritten::parse(
            "receivers:\n  - name: duban-ops\n    email_configs:\n      - to: ops@city.example\n  - name: unit-laoshan\n    webhook_configs:\n      - url: https://laoshan.example/duban\n",
        )
        .unwrap();
        let text = render(&plan, DEFAULT_WEBHOOK_BASE, &hand).unwrap();
        assert!(
            text.contains("  - name: duban-ops\n    email_configs:\n    - to: ops@city.example"),
            "{text}"
        );
        assert!(text.contains("https://laoshan.example/duban"), "{text}");
        assert!(
            !text.contains(&format!("{DEFAULT_WEBHOOK_BASE}/laoshan")),
            "{text}"
        );
        assert!(text.contains(&format!("{DEFAULT_WEBHOOK_BASE}/shinan  # placeholder")));
        let typo = HandWritten::parse("receivers:\n  - name: unit-laosan\n").unwrap();
        let error = render(&plan, DEFAULT_WEBHOOK_BASE, &typo).unwrap_err();
        assert!(
            error.contains("\"unit-laosan\" is not routed to"),
            "{error}"
        );
        assert!(
            HandWritten::parse("receivers:\n  - webhook_configs: []\n")
                .unwrap_err()
                .contains("receivers[0]: expected a `name`")
        );
    }
}

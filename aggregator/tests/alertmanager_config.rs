//! deploy/alertmanager/alertmanager.yml is what `plan alertmanager-config --receivers
//! deploy/alertmanager/receivers.yml` generates, it passes `amtool check-config`, every unit
//! that can receive a plan alert is routed by its `recipient` label to its own receiver
//! `unit-<unit>`, duban's own health alerts reach `duban-ops`, and the hand-written receivers
//! are the ones in use (`amtool config routes test`).

use std::process::Command;

const COMMITTED: &str = include_str!("../../deploy/alertmanager/alertmanager.yml");
const RECEIVERS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/alertmanager/receivers.yml"
);

fn amtool_available() -> bool {
    duban_testkit::program("amtool checks", "amtool", "prometheus-alertmanager")
}

#[test]
fn the_committed_config_is_what_the_plan_and_the_receivers_generate() {
    let out = Command::new(env!("CARGO_BIN_EXE_duban-aggregator"))
        .args(["plan", "alertmanager-config", "--receivers", RECEIVERS])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        generated, COMMITTED,
        "regenerate: duban-aggregator plan alertmanager-config --receivers deploy/alertmanager/receivers.yml > deploy/alertmanager/alertmanager.yml"
    );
    assert!(generated.contains("https://oncall.city.example/hooks/duban"));
    assert!(generated.contains("https://science-tech.city.example/duban/alerts"));
}

#[test]
fn a_misspelt_hand_written_receiver_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("receivers.yml");
    std::fs::write(
        &file,
        "receivers:\n  - name: unit-sciencetech\n    webhook_configs:\n      - url: http://x.example/\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_duban-aggregator"))
        .args(["plan", "alertmanager-config", "--receivers"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the hand-written receiver \"unit-sciencetech\" is not routed to"),
        "{stderr}"
    );
}

fn route(file: &str, labels: &[String]) -> String {
    let routed = Command::new("amtool")
        .args(["config", "routes", "test", &format!("--config.file={file}")])
        .args(labels)
        .output()
        .unwrap();
    String::from_utf8_lossy(&routed.stdout).trim().to_owned()
}

#[test]
fn amtool_accepts_it_and_routes_every_recipient_and_the_health_alerts() {
    if !amtool_available() {
        return;
    }
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/alertmanager/alertmanager.yml"
    );
    let check = Command::new("amtool")
        .args(["check-config", file])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let plan = duban_aggregator::plan::embedded().plan;
    let recipients = duban_aggregator::alerting::amconfig::alert_recipients(&plan);
    // Lead units, a responsible unit of a task without a lead, and districts that report.
    for unit in [
        "science-tech",
        "customs",
        "human-resources",
        "statistics",
        "laoshan",
        "jimo",
    ] {
        assert!(
            recipients.iter().any(|r| r == unit),
            "{unit} receives alerts"
        );
    }
    for unit in &recipients {
        for alertname in ["ReportOverdue", "TaskOverdue"] {
            assert_eq!(
                route(
                    file,
                    &[
                        format!("recipient={unit}"),
                        format!("alertname={alertname}")
                    ]
                ),
                format!("unit-{unit}"),
                "{unit} {alertname}"
            );
        }
    }
    for alertname in [
        "DubanAggregatorDown",
        "DubanAgentDown",
        "DubanAlertNotificationsFailing",
    ] {
        assert_eq!(
            route(
                file,
                &[format!("alertname={alertname}"), "severity=critical".into()]
            ),
            "duban-ops",
            "{alertname}"
        );
    }
    // The escalation ladder: each level's receiver also gets the case's alerts at that level
    // (not the copies to the rungs' units, which reach those units' own receivers).
    assert!(
        !plan.supervision.ladder.is_empty(),
        "the Qingdao plan has a ladder"
    );
    for rung in &plan.supervision.ladder {
        for role in ["reporter", "lead", "responsible", "office"] {
            assert_eq!(
                route(
                    file,
                    &[
                        "recipient=laoshan".into(),
                        "alertname=ReportOverdue".into(),
                        format!("role={role}"),
                        format!("escalation_level={}", rung.level)
                    ]
                ),
                format!("escalation-level-{},unit-laoshan", rung.level),
                "level {} {role}",
                rung.level
            );
        }
        for unit in plan.expand_parties(&rung.to) {
            assert!(recipients.contains(&unit), "{unit} of level {}", rung.level);
            assert_eq!(
                route(
                    file,
                    &[
                        format!("recipient={unit}"),
                        "alertname=TaskOverdue".into(),
                        "role=escalation".into(),
                        format!("escalation_level={}", rung.level)
                    ]
                ),
                format!("unit-{unit}"),
                "the copy to {unit}"
            );
        }
    }
    // Level 1 is the lead units' own: no escalation receiver.
    assert_eq!(
        route(
            file,
            &[
                "recipient=laoshan".into(),
                "alertname=ReportOverdue".into(),
                "role=reporter".into(),
                "escalation_level=1".into()
            ]
        ),
        "unit-laoshan"
    );
}

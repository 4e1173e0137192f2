//! deploy/alertmanager/alertmanager.yml is what `plan alertmanager-config` generates, it passes
//! `amtool check-config`, and every unit that can receive a plan alert is routed to its own
//! receiver `lead-<unit>` (`amtool config routes test`).

use std::process::Command;

const COMMITTED: &str = include_str!("../../deploy/alertmanager/alertmanager.yml");

fn amtool_available() -> bool {
    match Command::new("amtool").arg("--version").output() {
        Ok(out) if out.status.success() => true,
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but amtool is missing (Debian package prometheus-alertmanager)"
            );
            eprintln!(
                "SKIPPED amtool checks: amtool is not installed (Debian package prometheus-alertmanager)"
            );
            false
        }
    }
}

#[test]
fn the_committed_config_is_what_the_plan_generates() {
    let out = Command::new(env!("CARGO_BIN_EXE_duban-aggregator"))
        .args(["plan", "alertmanager-config"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        COMMITTED,
        "regenerate: duban-aggregator plan alertmanager-config > deploy/alertmanager/alertmanager.yml"
    );
}

#[test]
fn amtool_accepts_it_and_routes_every_lead_unit_to_its_receiver() {
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
    let recipients = duban_aggregator::amconfig::alert_recipients(&plan);
    for lead in ["science-tech", "customs", "human-resources", "statistics"] {
        assert!(
            recipients.iter().any(|r| r == lead),
            "{lead} receives alerts"
        );
    }
    for unit in &recipients {
        for alertname in ["ReportOverdue", "TaskOverdue"] {
            let routed = Command::new("amtool")
                .args([
                    "config",
                    "routes",
                    "test",
                    &format!("--config.file={file}"),
                    &format!("lead_unit={unit}"),
                    &format!("alertname={alertname}"),
                ])
                .output()
                .unwrap();
            let receiver = String::from_utf8_lossy(&routed.stdout).trim().to_owned();
            assert_eq!(
                receiver,
                format!("lead-{unit}"),
                "{unit} {alertname}: {}",
                String::from_utf8_lossy(&routed.stderr)
            );
        }
    }
}

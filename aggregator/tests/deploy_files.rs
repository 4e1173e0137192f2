//! The shipped Prometheus files pass promtool (config, rules, and the rules' unit tests), and the
//! Grafana dashboards are well-formed with a datasource variable and a lead_unit variable.

use std::process::Command;

const PROMETHEUS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus");
const DASHBOARDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/dashboards");

fn promtool(args: &[&str]) -> Option<String> {
    if !duban_testkit::program(&format!("promtool {args:?}"), "promtool", "prometheus") {
        return None;
    }
    let out = Command::new("promtool")
        .args(args)
        .current_dir(PROMETHEUS_DIR)
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    Some(text)
}

#[test]
fn prometheus_config_and_rules_pass_promtool_and_their_unit_tests() {
    let Some(config) = promtool(&["check", "config", "prometheus.yml"]) else {
        return;
    };
    assert!(config.contains("SUCCESS"), "{config}");
    promtool(&["check", "rules", "duban-rules.yml"]);
    let tested = promtool(&["test", "rules", "duban-rules.test.yml"]).unwrap();
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every alerting rule is exercised by the unit tests.
    let rules = std::fs::read_to_string(format!("{PROMETHEUS_DIR}/duban-rules.yml")).unwrap();
    let tests = std::fs::read_to_string(format!("{PROMETHEUS_DIR}/duban-rules.test.yml")).unwrap();
    for line in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
    {
        let name = line.trim();
        assert!(
            tests.contains(&format!("alertname: {name}")),
            "no unit test for {name}"
        );
    }
}

#[test]
fn dashboards_use_the_datasource_variable_and_offer_lead_units() {
    for name in ["plan-overview", "ingest-and-agents"] {
        let text = std::fs::read_to_string(format!("{DASHBOARDS}/{name}.json")).unwrap();
        let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
        let variables = dashboard["templating"]["list"].as_array().unwrap();
        assert!(
            variables
                .iter()
                .any(|v| v["name"] == "datasource" && v["type"] == "datasource"),
            "{name}: datasource variable"
        );
        if name == "plan-overview" {
            let lead = variables
                .iter()
                .find(|v| v["name"] == "lead_unit")
                .expect("lead_unit variable");
            assert!(
                lead.to_string()
                    .contains("label_values(duban_indicator_info, lead_unit)"),
                "{lead}"
            );
        }
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                assert_eq!(
                    target["datasource"]["uid"], "${datasource}",
                    "{name}: {}",
                    panel["title"]
                );
            }
        }
    }
}

#[test]
fn the_license_and_both_systemd_units_are_shipped() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let license = std::fs::read_to_string(format!("{root}/LICENSE")).unwrap();
    assert!(
        license.contains("Apache License") && license.contains("Version 2.0, January 2004"),
        "LICENSE is the Apache License 2.0, as Cargo.toml says"
    );
    let cargo = std::fs::read_to_string(format!("{root}/Cargo.toml")).unwrap();
    assert!(cargo.contains("license = \"Apache-2.0\""));
    for (unit, exec) in [
        (
            "duban-aggregator.service",
            "ExecStart=/usr/bin/duban-aggregator serve --config /etc/duban/aggregator.toml",
        ),
        (
            "duban-agent.service",
            "ExecStart=/usr/bin/duban-agent run --config /etc/duban/agent.toml",
        ),
    ] {
        let text = std::fs::read_to_string(format!("{root}/deploy/systemd/{unit}")).unwrap();
        for line in [
            exec,
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "StateDirectory=",
            "Restart=on-failure",
        ] {
            assert!(text.contains(line), "{unit} lacks {line}");
        }
    }
}

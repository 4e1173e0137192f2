//! `duban-aggregator plan check` and `plan show` as an operator runs them.

use std::process::{Command, Output};

fn aggregator(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_duban-aggregator"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn check_of_the_embedded_plan_exits_zero_and_prints_the_overlap_warning() {
    let out = aggregator(&["plan", "check"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("plan qingdao-ip-2017 is valid"), "{stdout}");
    assert!(
        stdout.contains("27 tasks") && stdout.contains("8 tracks"),
        "{stdout}"
    );
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("三(八)"), "{stderr}");
}

#[test]
fn check_of_a_broken_file_exits_one_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.toml");
    let broken = duban_aggregator::plan::EMBEDDED_PLAN.replacen(
        r#"lead_units = ["organization-staffing", "science-tech", "finance"]"#,
        r#"lead_units = ["organization-staffing", "science-and-tech", "finance"]"#,
        1,
    );
    assert_ne!(broken, duban_aggregator::plan::EMBEDDED_PLAN);
    std::fs::write(&path, &broken).unwrap();
    let line = broken
        .lines()
        .position(|l| l.contains("science-and-tech"))
        .unwrap()
        + 1;
    let out = aggregator(&["plan", "check", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "error: {}:{line}: task \"2-1-1\".lead_units[1]: unit or group \"science-and-tech\" is not defined",
        path.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
}

#[test]
fn check_of_a_missing_file_is_a_clear_error() {
    let out = aggregator(&["plan", "check", "/nonexistent/plan.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/plan.toml") && stderr.contains("cannot read the plan file"),
        "{stderr}"
    );
}

#[test]
fn show_prints_an_aligned_table_with_chinese_names() {
    let out = aggregator(&["plan", "show"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("每万人有效发明专利拥有量"), "{text}");
    assert!(
        text.contains("牵头单位 lead         市编委办、市科技局、市财政局"),
        "{text}"
    );
    // In the phase table the window column starts at the same display column in every row.
    use unicode_width::UnicodeWidthStr;
    let columns: Vec<usize> = text
        .lines()
        .filter(|l| l.contains("阶段  20"))
        .map(|l| l[..l.find("20").unwrap()].width())
        .collect();
    assert_eq!(columns.len(), 4, "{text}");
    assert!(columns.windows(2).all(|w| w[0] == w[1]), "{columns:?}");
}

#[test]
fn show_json_is_stable_and_complete() {
    let out = aggregator(&["plan", "show", "--json"]);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["format"], "duban.plan.v1");
    assert_eq!(json["plan"]["id"], "qingdao-ip-2017");
    assert_eq!(json["plan"]["start"], "2017-07-01");
    assert_eq!(json["plan"]["end"], "2020-06-30");
    for list in ["phases", "units", "groups", "indicators", "tasks", "tracks"] {
        assert!(!json[list].as_array().unwrap().is_empty(), "{list}");
    }
}

#[test]
fn show_lists_every_unit_with_the_id_configurations_use() {
    let out = aggregator(&["plan", "show"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let units = stdout
        .split("\nUNITS")
        .nth(1)
        .and_then(|rest| rest.split("\nINDICATORS").next())
        .expect("a UNITS section");
    assert!(units.contains("agent.toml's `unit`"), "{units}");
    let plan = duban_aggregator::plan::embedded().plan;
    for unit in &plan.units {
        assert!(
            units
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{} ", unit.id))
                    && l.contains(&unit.name)),
            "{} ({}) missing:\n{units}",
            unit.id,
            unit.name
        );
    }
}

//! Bad plan files: each mistake gives one clear error naming the file, line and key, and the
//! loader never panics on arbitrary input.

use duban_aggregator::plan::{self, Diagnostic};
use proptest::prelude::*;

/// A small valid plan; each test breaks one thing in it.
const BASE: &str = r#"
[plan]
id = "tiny"
name = "小计划"
start = "2018-01"
end = "2019-12"

[[unit]]
id = "sci"
name = "市科技局"
kind = "department"

[[unit]]
id = "north"
name = "市北区"
kind = "district"

[[group]]
id = "districts"
name = "各区"
members = ["north"]

[[indicator]]
id = "patents"
name = "有效发明专利拥有量"
measure = "件"
period = "year"
timely_days = 30
reporters = ["sci"]
lead_units = ["sci"]
aggregation = "latest"

[[indicator]]
id = "population"
name = "常住人口"
measure = "人"
period = "year"
timely_days = 30
reporters = ["sci"]
lead_units = ["sci"]
aggregation = "latest"

[[indicator]]
id = "per-10k"
name = "每万人有效发明专利拥有量"
measure = "件/万人"
comparator = ">="
target = 25
target_date = "2019-12"
period = "year"
timely_days = 30
lead_units = ["sci"]
aggregation = "ratio"
numerator = "patents"
denominator = "population"
scale = 10000

[[task]]
id = "t1"
section = "二(一)1"
title = "任务"
lead_units = ["sci"]
responsible_units = ["districts"]

[[task.milestone]]
id = "m1"
name = "阶段"
start = "2018-01"
end = "2018-12"
"#;

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle} not in text"))
        + 1
}

fn only_error(text: &str) -> Diagnostic {
    let errors = plan::load_str(text, "bad.toml")
        .expect_err("plan should not load")
        .errors;
    assert_eq!(
        errors.len(),
        1,
        "expected exactly one error, got {errors:#?}"
    );
    errors.into_iter().next().unwrap()
}

fn replace(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from} not in BASE");
    BASE.replacen(from, to, 1)
}

#[test]
fn the_base_plan_is_valid() {
    let loaded = plan::load_str(BASE, "base.toml").unwrap();
    assert!(loaded.warnings.is_empty());
    assert_eq!(loaded.plan.indicators.len(), 3);
}

#[test]
fn a_unit_referenced_but_not_defined() {
    let text = replace(
        r#"responsible_units = ["districts"]"#,
        r#"responsible_units = ["districts", "south"]"#,
    );
    let error = only_error(&text);
    assert_eq!(error.key, r#"task "t1".responsible_units[1]"#);
    assert!(
        error.message.contains(r#""south" is not defined"#),
        "{error}"
    );
    assert_eq!(error.line, Some(line_of(&text, "responsible_units")));
    assert!(error.to_string().starts_with(&format!(
        "bad.toml:{}:",
        line_of(&text, "responsible_units")
    )));
}

#[test]
fn duplicate_ids() {
    let text = replace(r#"id = "north""#, r#"id = "sci""#);
    let error = only_error(&text.replace(r#"members = ["north"]"#, r#"members = ["sci"]"#));
    assert_eq!(error.key, r#"unit "sci".id"#);
    assert!(
        error
            .message
            .contains(r#"duplicate unit or group id "sci""#),
        "{error}"
    );

    let text = replace(r#"id = "population""#, r#"id = "patents""#).replace(
        r#"denominator = "population""#,
        r#"denominator = "patents""#,
    );
    let errors = plan::load_str(&text, "bad.toml").unwrap_err().errors;
    assert!(
        errors
            .iter()
            .any(|e| e.message.contains(r#"duplicate indicator id "patents""#)),
        "{errors:#?}"
    );
}

#[test]
fn a_milestone_that_ends_before_it_starts() {
    let text = replace(r#"end = "2018-12""#, r#"end = "2017-12""#);
    let error = only_error(&text);
    assert_eq!(error.key, r#"task "t1".milestone "m1".end"#);
    assert!(
        error
            .message
            .contains("ends (2017-12) before it starts (2018-01)"),
        "{error}"
    );
    assert_eq!(error.line, Some(line_of(&text, r#"end = "2017-12""#)));
}

#[test]
fn a_target_that_is_not_a_number() {
    let text = replace("target = 25", r#"target = "25 件""#);
    let error = only_error(&text);
    assert_eq!(error.key, "target");
    assert_eq!(error.line, Some(line_of(&text, "target = \"25")));
    assert!(error.message.contains("invalid type"), "{error}");
}

#[test]
fn an_unknown_aggregation() {
    let text = replace(r#"aggregation = "ratio""#, r#"aggregation = "median""#);
    let error = only_error(&text);
    assert_eq!(error.key, "aggregation");
    assert_eq!(error.line, Some(line_of(&text, "median")));
    assert!(
        error.message.contains("median") && error.message.contains("annual_average"),
        "{error}"
    );
}

#[test]
fn a_ratio_naming_a_missing_indicator() {
    let text = replace(r#"denominator = "population""#, r#"denominator = "people""#);
    let error = only_error(&text);
    assert_eq!(error.key, r#"indicator "per-10k".denominator"#);
    assert!(
        error
            .message
            .contains(r#"indicator "people" is not defined"#),
        "{error}"
    );
    assert_eq!(error.line, Some(line_of(&text, "people")));
}

#[test]
fn a_reporter_group_that_is_empty() {
    let text = replace(r#"members = ["north"]"#, "members = []").replacen(
        r#"reporters = ["sci"]"#,
        r#"reporters = ["districts"]"#,
        1,
    );
    let error = only_error(&text);
    assert_eq!(error.key, r#"indicator "patents".reporters[0]"#);
    assert!(
        error.message.contains(r#"group "districts" is empty"#),
        "{error}"
    );
}

#[test]
fn unknown_keys_are_refused() {
    let text = replace(
        r#"measure = "件/万人""#,
        "measure = \"件/万人\"\nweight = 3",
    );
    let error = only_error(&text);
    assert_eq!(error.key, "weight");
    assert_eq!(error.line, Some(line_of(&text, "weight")));
    assert!(error.message.contains("unknown field `weight`"), "{error}");

    let text = format!("{BASE}\n[extras]\nx = 1\n");
    let error = only_error(&text);
    assert!(error.message.contains("unknown field `extras`"), "{error}");
}

#[test]
fn more_mistakes_are_named() {
    let cases = [
        (
            replace(r#"period = "year""#, r#"period = "week""#),
            "period",
            "week",
        ),
        (
            replace(r#"kind = "district""#, r#"kind = "county""#),
            "kind",
            "county",
        ),
        (
            replace(r#"start = "2018-01""#, r#"start = "2018-13""#),
            "plan.start",
            "not a date",
        ),
        (
            replace(r#"id = "tiny""#, r#"id = "Tiny Plan""#),
            "plan.id",
            "must be",
        ),
        (
            replace("comparator = \">=\"", "comparator = \"between\""),
            r#"indicator "per-10k".target_max"#,
            "needs target_max",
        ),
        (
            replace("target_date = \"2019-12\"\n", ""),
            r#"indicator "per-10k".target_date"#,
            "needs a target_date",
        ),
        (
            replace("[plan]\n", "[plan]\ntime_zone = \"Mars/Olympus\"\n"),
            "plan.time_zone",
            "IANA",
        ),
        (
            replace(
                "reporters = [\"sci\"]\nlead_units = [\"sci\"]\naggregation = \"latest\"",
                "lead_units = [\"sci\"]\naggregation = \"latest\"",
            ),
            r#"indicator "patents".reporters"#,
            "at least one",
        ),
    ];
    for (text, key, fragment) in cases {
        let error = only_error(&text);
        assert_eq!(error.key, key, "{error}");
        assert!(error.message.contains(fragment), "{error}");
        assert!(error.line.is_some(), "{error}");
    }
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        let _ = plan::load_str(&text, "fuzz.toml");
    }

    #[test]
    fn damaged_real_plans_never_panic(start in 0usize..40_000, len in 0usize..200, insert in "\\PC{0,20}") {
        let source = plan::EMBEDDED_PLAN;
        let mut start = start.min(source.len());
        while !source.is_char_boundary(start) { start -= 1; }
        let mut end = (start + len).min(source.len());
        while !source.is_char_boundary(end) { end -= 1; }
        let damaged = format!("{}{}{}", &source[..start], insert, &source[end..]);
        if let Err(errors) = plan::load_str(&damaged, "damaged.toml") {
            prop_assert!(!errors.errors.is_empty());
            for error in &errors.errors {
                prop_assert!(!error.message.is_empty());
            }
        }
    }
}

const LADDER: &str = r#"
[supervision]
office = "sci"
quiet_days = 3

[[supervision.escalation]]
level = 2
after_days = 7
to = ["sci"]

[[supervision.escalation]]
level = 3
after_days = 30
to = ["districts"]
"#;

#[test]
fn a_supervision_ladder_is_read_with_its_defaults_where_it_says_nothing() {
    let plan = plan::load_str(&format!("{BASE}{LADDER}"), "ok.toml")
        .unwrap()
        .plan;
    assert_eq!(plan.supervision.office.as_deref(), Some("sci"));
    assert_eq!(plan.supervision.quiet_days, 3);
    let levels: Vec<(u32, i64)> = plan
        .supervision
        .ladder
        .iter()
        .map(|l| (l.level, l.after_days))
        .collect();
    assert_eq!(levels, [(2, 7), (3, 30)]);
    // Level 1 before 7 days late, 2 from day 7, 3 from day 30.
    assert_eq!(plan.supervision.level_after(6), 1);
    assert_eq!(plan.supervision.level_after(7), 2);
    assert_eq!(plan.supervision.level_after(45), 3);
    // Without [supervision]: no office, no ladder, the default quiet period.
    let plain = plan::load_str(BASE, "base.toml").unwrap().plan;
    assert_eq!(plain.supervision.office, None);
    assert!(plain.supervision.ladder.is_empty());
    assert_eq!(plain.supervision.level_after(400), 1);
    assert_eq!(
        plain.supervision.quiet_days,
        duban_aggregator::plan::DEFAULT_QUIET_DAYS
    );
}

#[test]
fn a_supervision_office_that_is_not_a_unit() {
    let text = format!(
        "{BASE}{}",
        LADDER.replace(r#"office = "sci""#, r#"office = "mayor""#)
    );
    let error = only_error(&text);
    assert_eq!(error.key, "supervision.office");
    assert!(
        error.message.contains(r#"unit "mayor" is not defined"#),
        "{error}"
    );
    assert_eq!(error.line, Some(line_of(&text, r#"office = "mayor""#)));
}

#[test]
fn an_escalation_ladder_must_climb() {
    let text = format!(
        "{BASE}{}",
        LADDER.replace("after_days = 30", "after_days = 5")
    );
    let error = only_error(&text);
    assert_eq!(error.key, "supervision.escalation[1].after_days");
    assert!(
        error
            .message
            .contains("more days than the rung below (7), got 5"),
        "{error}"
    );
    assert_eq!(error.line, Some(line_of(&text, "after_days = 5")));

    let text = format!("{BASE}{}", LADDER.replace("level = 3", "level = 4"));
    let error = only_error(&text);
    assert_eq!(error.key, "supervision.escalation[1].level");
    assert!(error.message.contains("expected level 3"), "{error}");

    let text = format!(
        "{BASE}{}",
        LADDER.replace(r#"to = ["districts"]"#, "to = []")
    );
    let error = only_error(&text);
    assert_eq!(error.key, "supervision.escalation[1].to");

    let text = format!(
        "{BASE}{}",
        LADDER.replace("quiet_days = 3", "quiet_days = -1")
    );
    let error = only_error(&text);
    assert_eq!(error.key, "supervision.quiet_days");
    assert!(error.message.contains("0 to 365 days, got -1"), "{error}");
}

#[test]
fn a_milestone_from_a_phase_needs_a_track() {
    let text = replace(
        r#"end = "2018-12""#,
        "end = \"2018-12\"\nfrom_phase = \"1\"",
    );
    let error = only_error(&text);
    assert_eq!(error.key, r#"task "t1".milestone "m1".from_phase"#);
    assert!(error.message.contains("the task has no track"), "{error}");
}

#[test]
fn a_unit_named_again_through_a_group_reports_once_in_the_order_first_named() {
    let text = BASE.replacen(
        r#"reporters = ["sci"]"#,
        r#"reporters = ["north", "districts", "sci"]"#,
        1,
    );
    let loaded = plan::load_str(&text, "repeats.toml");
    let reporters = match &loaded {
        Ok(loaded) => &loaded.plan.indicator("patents").unwrap().reporter_units,
        Err(errors) => panic!("{errors:?}"),
    };
    assert_eq!(reporters, &["north", "sci"]);
}

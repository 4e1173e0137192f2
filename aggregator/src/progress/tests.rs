use super::*;
use crate::plan;

pub(super) fn qingdao() -> Plan {
    plan::embedded().plan
}

/// A small plan with a monthly indicator, to pin deadlines exactly.
fn monthly_plan() -> Plan {
    let text = r#"
[plan]
id = "t"
name = "t"
start = "2020-01"
end = "2020-12"

[[unit]]
id = "u"
name = "单位"
kind = "district"

[[indicator]]
id = "m"
name = "月度指标"
measure = "件"
comparator = ">="
target = 120
baseline = 0
target_date = "2020-12"
period = "month"
timely_days = 0
reporters = ["u"]
lead_units = ["u"]
aggregation = "cumulative"

[[indicator]]
id = "num"
name = "分子"
measure = "件"
period = "year"
timely_days = 30
reporters = ["u"]
lead_units = ["u"]
aggregation = "latest"

[[indicator]]
id = "den"
name = "分母"
measure = "人"
period = "year"
timely_days = 30
reporters = ["u"]
lead_units = ["u"]
aggregation = "latest"
min = 0

[[indicator]]
id = "per-10k"
name = "每万人"
measure = "件/万人"
comparator = ">="
target = 25
target_date = "2020-12"
period = "year"
timely_days = 30
lead_units = ["u"]
aggregation = "ratio"
numerator = "num"
denominator = "den"
scale = 10000

[[task]]
id = "t1"
section = "二(一)1"
title = "任务"
lead_units = ["u"]

[[task.milestone]]
id = "m1"
name = "阶段"
start = "2020-03"
end = "2020-04"
tolerance = 0.1
"#;
    plan::load_str(text, "t.toml").unwrap().plan
}

pub(super) fn value(
    indicator: &str,
    unit: &str,
    period: &str,
    value: f64,
    received_ms: i64,
) -> ValueRow {
    ValueRow {
        plan_id: "t".into(),
        indicator_id: indicator.into(),
        unit_id: unit.into(),
        period: period.into(),
        value,
        note: String::new(),
        revision: 0,
        issued_at_ms: received_ms,
        seq: 1,
        report_pk: 1,
        updated_at_ms: received_ms,
        first_received_at_ms: received_ms,
        first_issued_at_ms: received_ms,
    }
}

pub(super) fn ms(text: &str) -> i64 {
    text.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

#[test]
fn a_february_period_is_due_at_midnight_after_its_last_day_in_the_plan_time_zone() {
    let plan = monthly_plan();
    let indicator = plan.indicator("m").unwrap();
    let feb: Period = "2020-02".parse().unwrap();
    // 2020 is a leap year: February ends on the 29th; midnight in Asia/Shanghai is 16:00 UTC.
    assert_eq!(due_ms(&plan, indicator, &feb), ms("2020-02-29T16:00:00Z"));
    let feb19: Period = "2019-02".parse().unwrap();
    assert_eq!(due_ms(&plan, indicator, &feb19), ms("2019-02-28T16:00:00Z"));
}

#[test]
fn a_report_one_second_before_its_deadline_is_on_time_and_one_second_after_is_late() {
    let plan = monthly_plan();
    let due = ms("2020-02-29T16:00:00Z");
    let now = ms("2020-06-01T00:00:00Z");
    for (received, expected) in [
        (due - 1000, ObligationStatus::OnTime),
        (due + 1000, ObligationStatus::Late),
    ] {
        let snapshot = Snapshot {
            values: vec![value("m", "u", "2020-02", 10.0, received)],
            ..Default::default()
        };
        let progress = compute(&plan, &snapshot, now);
        let feb = progress
            .obligations
            .iter()
            .find(|o| o.indicator == "m" && o.period == "2020-02")
            .unwrap();
        assert_eq!(feb.status, expected, "received {received} vs due {due}");
    }
    // Nothing received: not due one second before, overdue one second after.
    let empty = Snapshot::default();
    let before = compute(&plan, &empty, due - 1000);
    let after = compute(&plan, &empty, due + 1000);
    let status = |p: &Progress| {
        p.obligations
            .iter()
            .find(|o| o.indicator == "m" && o.period == "2020-02")
            .unwrap()
            .status
    };
    assert_eq!(status(&before), ObligationStatus::NotDue);
    assert_eq!(status(&after), ObligationStatus::Overdue);
}

#[test]
fn an_outage_of_the_centre_at_a_deadline_does_not_make_units_late_or_overdue() {
    let plan = monthly_plan();
    let due = ms("2020-02-29T16:00:00Z");
    let outage = Outage {
        from_ms: due - 3 * DAY_MS,
        to_ms: due + 5 * DAY_MS,
    };
    let grace_end = outage.to_ms + OUTAGE_GRACE_MS;
    let now = ms("2020-06-01T00:00:00Z");
    let status_of = |signed: i64, received: i64, outages: Vec<Outage>| {
        let mut row = value("m", "u", "2020-02", 10.0, received);
        row.first_issued_at_ms = signed;
        let progress = compute(
            &plan,
            &Snapshot {
                values: vec![row],
                outages,
                ..Default::default()
            },
            now,
        );
        let feb = progress
            .obligations
            .iter()
            .find(|o| o.indicator == "m" && o.period == "2020-02")
            .unwrap()
            .clone();
        (feb.status, feb.extended_to_ms)
    };
    // Signed before the deadline, delivered once the centre was back: on time.
    assert_eq!(
        status_of(due - 1000, outage.to_ms + 60_000, vec![outage]),
        (ObligationStatus::OnTime, Some(grace_end))
    );
    assert_eq!(
        status_of(due - 1000, grace_end, vec![outage]).0,
        ObligationStatus::OnTime
    );
    // Signed after the deadline, or delivered after the grace period: late.
    assert_eq!(
        status_of(due + 1000, outage.to_ms + 60_000, vec![outage]).0,
        ObligationStatus::Late
    );
    assert_eq!(
        status_of(due - 1000, grace_end + 1, vec![outage]).0,
        ObligationStatus::Late
    );
    // Without an outage the same report is late: the rule cannot be bought by backdating.
    assert_eq!(
        status_of(due - 1000, outage.to_ms + 60_000, vec![]),
        (ObligationStatus::Late, None)
    );
    // An outage that does not cover the deadline changes nothing.
    let earlier = Outage {
        from_ms: due - 10 * DAY_MS,
        to_ms: due - 9 * DAY_MS,
    };
    assert_eq!(
        status_of(due - 1000, due + 1000, vec![earlier]),
        (ObligationStatus::Late, None)
    );
    // Nothing received: not due until the grace period after the outage has passed.
    let missing = |at: i64| {
        compute(
            &plan,
            &Snapshot {
                outages: vec![outage],
                ..Default::default()
            },
            at,
        )
        .obligations
        .iter()
        .find(|o| o.indicator == "m" && o.period == "2020-02")
        .unwrap()
        .status
    };
    assert_eq!(missing(outage.to_ms + 1000), ObligationStatus::NotDue);
    assert_eq!(missing(grace_end - 1), ObligationStatus::NotDue);
    assert_eq!(missing(grace_end + 1), ObligationStatus::Overdue);
}

#[test]
fn completeness_and_timeliness_count_only_what_is_due() {
    let plan = monthly_plan();
    let now = ms("2020-04-15T00:00:00Z"); // Jan, Feb, Mar of "m" are due; April is not.
    let values = vec![
        value("m", "u", "2020-01", 10.0, ms("2020-01-20T00:00:00Z")),
        value("m", "u", "2020-02", 10.0, ms("2020-03-05T00:00:00Z")),
    ];
    let progress = compute(
        &plan,
        &Snapshot {
            values,
            ..Default::default()
        },
        now,
    );
    let m = progress
        .indicators
        .iter()
        .find(|i| i.indicator == "m")
        .unwrap();
    assert_eq!(
        m.rates,
        Rates {
            expected: 3,
            received: 2,
            on_time: 1
        }
    );
    assert_eq!(m.rates.completeness(), Some(2.0 / 3.0));
    assert_eq!(m.rates.timeliness(), Some(1.0 / 3.0));
    assert_eq!(m.value, Some(20.0), "cumulative adds the months");
}

#[test]
fn a_ratio_with_a_missing_or_zero_denominator_has_no_value() {
    let plan = monthly_plan();
    let now = ms("2020-06-01T00:00:00Z");
    let per_10k = |values: Vec<ValueRow>| {
        compute(
            &plan,
            &Snapshot {
                values,
                ..Default::default()
            },
            now,
        )
        .indicators
        .into_iter()
        .find(|i| i.indicator == "per-10k")
        .unwrap()
    };
    let missing = per_10k(vec![value("num", "u", "2020", 100.0, now)]);
    assert_eq!(
        (missing.value, missing.status),
        (None, IndicatorStatus::NoData)
    );
    let zero = per_10k(vec![
        value("num", "u", "2020", 100.0, now),
        value("den", "u", "2020", 0.0, now),
    ]);
    assert_eq!(zero.value, None, "no value, not infinity");
    let real = per_10k(vec![
        value("num", "u", "2020", 100.0, now),
        value("den", "u", "2020", 40_000.0, now),
    ]);
    assert_eq!(real.value, Some(25.0));
    assert_eq!(real.status, IndicatorStatus::Met);
}

#[test]
fn a_milestone_with_no_updates_moves_from_not_started_to_lagging_to_overdue() {
    let plan = monthly_plan();
    let at = |t: &str| {
        compute(&plan, &Snapshot::default(), ms(t))
            .milestones
            .into_iter()
            .next()
            .unwrap()
    };
    assert_eq!(
        at("2020-02-15T00:00:00Z").status,
        MilestoneStatus::NotStarted
    );
    assert_eq!(
        at("2020-03-02T00:00:00Z").status,
        MilestoneStatus::OnTrack,
        "inside the tolerance at the start"
    );
    assert_eq!(at("2020-04-01T00:00:00Z").status, MilestoneStatus::Lagging);
    let late = at("2020-05-11T00:00:00Z");
    assert_eq!(late.status, MilestoneStatus::Overdue);
    assert_eq!(late.days_overdue, 10);
    assert_eq!(late.percent, None);
}

#[test]
fn an_indicator_below_its_path_lags_and_one_past_its_date_is_late() {
    let plan = monthly_plan();
    let values = vec![value("m", "u", "2020-01", 1.0, ms("2020-01-20T00:00:00Z"))];
    let at = |t: &str| {
        compute(
            &plan,
            &Snapshot {
                values: values.clone(),
                ..Default::default()
            },
            ms(t),
        )
        .indicators
        .into_iter()
        .find(|i| i.indicator == "m")
        .unwrap()
    };
    let june = at("2020-07-01T00:00:00Z");
    assert!(
        june.expected.unwrap() > 55.0 && june.expected.unwrap() < 65.0,
        "{:?}",
        june.expected
    );
    assert_eq!(june.status, IndicatorStatus::Lagging);
    assert_eq!(at("2021-01-05T00:00:00Z").status, IndicatorStatus::Late);
}

#[test]
fn the_overlapping_phases_of_three_eight_are_evaluated_each_on_its_own_window() {
    let plan = qingdao();
    let task = plan
        .tasks
        .iter()
        .find(|t| t.track.as_deref() == Some("3-8"))
        .expect("the task implemented by 三(八)");
    let at = |t: &str| {
        let progress = compute(&plan, &Snapshot::default(), ms(t));
        progress
            .milestones
            .into_iter()
            .filter(|m| m.task == task.id)
            .collect::<Vec<MilestoneProgress>>()
    };
    let phase = |all: &[MilestoneProgress], id: &str| {
        all.iter()
            .find(|m| m.milestone == id)
            .cloned()
            .unwrap_or_else(|| panic!("milestone {id}"))
    };
    // Before the plan was issued (2017-08-09) nothing is overdue or lagging, although m1's
    // window (…2017-07) closed and m2's (2017-01..12) is half gone.
    let before = at("2017-07-15T00:00:00Z");
    assert!(before.len() >= 3);
    assert!(
        before.iter().all(|m| matches!(
            m.status,
            MilestoneStatus::NotStarted | MilestoneStatus::OnTrack
        )),
        "{before:#?}"
    );
    // Both start at the issue date; m1 is due at its end, m2 at the end of 2017.
    let issued = ms("2017-08-09T00:00:00+08:00");
    assert_eq!(phase(&before, "m1").start_ms, issued);
    assert_eq!(phase(&before, "m2").start_ms, issued);
    assert_eq!(
        phase(&before, "m1").deadline_ms,
        ms("2017-08-10T00:00:00+08:00")
    );
    // On the day after the issue date m2 has barely begun: it does not lag without an update.
    let first = at("2017-08-10T12:00:00+08:00");
    assert_ne!(phase(&first, "m2").status, MilestoneStatus::Lagging);
    // In October each phase is judged on its own window: m1 is overdue, m2 running.
    let october = at("2017-10-15T00:00:00Z");
    assert_eq!(phase(&october, "m1").status, MilestoneStatus::Overdue);
    let m2 = phase(&october, "m2");
    assert!(
        m2.start_ms <= ms("2017-10-15T00:00:00Z") && ms("2017-10-15T00:00:00Z") < m2.deadline_ms
    );
    assert_ne!(m2.status, MilestoneStatus::Overdue, "{m2:#?}");
}

#[test]
fn a_ratio_starts_from_the_baselines_of_its_inputs_and_can_lag() {
    let plan = monthly_plan();
    let values = vec![
        value("num", "u", "2020", 100.0, ms("2020-03-01T00:00:00Z")),
        value("den", "u", "2020", 100_000.0, ms("2020-03-01T00:00:00Z")),
    ];
    let progress = compute(
        &plan,
        &Snapshot {
            values,
            ..Default::default()
        },
        ms("2020-09-01T00:00:00Z"),
    );
    let ratio = progress
        .indicators
        .iter()
        .find(|i| i.indicator == "per-10k")
        .unwrap();
    // 100 / 100 000 × 10 000 = 10 at the start; the line to 25 passes 17.5 mid-year.
    assert_eq!(ratio.baseline, Some(10.0));
    assert_eq!(ratio.value, Some(10.0));
    assert!(ratio.expected.unwrap() > 17.0, "{:?}", ratio.expected);
    assert_eq!(ratio.status, IndicatorStatus::Lagging);
}

#[test]
fn no_report_is_overdue_before_the_plan_was_issued() {
    // The monthly indicator's 2020-01 and 2020-02 are due at the end of their months; a plan
    // issued on 2020-03-10 makes them due at the end of that day instead.
    let mut plan = monthly_plan();
    plan.issued = Some(jiff::civil::date(2020, 3, 10));
    let overdue = |now: &str| -> Vec<(String, i64)> {
        compute(&plan, &Snapshot::default(), ms(now))
            .obligations
            .iter()
            .filter(|o| o.indicator == "m" && o.status == ObligationStatus::Overdue)
            .map(|o| (o.period.to_string(), o.due_ms))
            .collect()
    };
    assert_eq!(overdue("2020-03-05T00:00:00Z"), []);
    let issued_end = ms("2020-03-11T00:00:00+08:00");
    assert_eq!(
        overdue("2020-03-12T00:00:00Z"),
        [
            ("2020-01".to_owned(), issued_end),
            ("2020-02".to_owned(), issued_end)
        ]
    );
}

#[test]
fn a_ratio_of_quarterly_and_yearly_inputs_has_a_point_per_quarter() {
    let plan = qingdao();
    let at = ms("2018-06-01T00:00:00Z");
    let values = vec![
        value(
            "valid-invention-patents",
            "science-tech",
            "2017Q3",
            16_000.0,
            at,
        ),
        value(
            "valid-invention-patents",
            "science-tech",
            "2017Q4",
            17_000.0,
            at,
        ),
        value(
            "valid-invention-patents",
            "science-tech",
            "2018Q1",
            18_000.0,
            at,
        ),
        value("resident-population", "statistics", "2017", 9_000_000.0, at),
    ];
    let progress = compute(
        &plan,
        &Snapshot {
            values,
            ..Default::default()
        },
        at,
    );
    let ratio = progress
        .indicators
        .iter()
        .find(|i| i.indicator == "invention-patents-per-10k")
        .unwrap();
    let series: Vec<(&str, f64)> = ratio
        .series
        .iter()
        .map(|p| (p.period.as_str(), (p.value * 100.0).round() / 100.0))
        .collect();
    // 2017's population serves the quarters before it ended (the earliest there is) and after.
    assert_eq!(
        series,
        [("2017Q3", 17.78), ("2017Q4", 18.89), ("2018Q1", 20.0)]
    );
    assert!(ratio.series.iter().all(|p| p.expected.is_some()));
}

#[test]
fn the_summary_is_the_progress_without_its_obligations_field_for_field() {
    let plan = qingdao();
    let snapshot = Snapshot {
        values: vec![value(
            "pct-applications",
            "laoshan",
            "2018Q1",
            120.0,
            ms("2018-04-05T00:00:00Z"),
        )],
        ..Default::default()
    };
    let progress = compute(&plan, &snapshot, ms("2018-06-01T00:00:00Z"));
    let mut full = serde_json::to_value(&progress).unwrap();
    let obligations = full.as_object_mut().unwrap().remove("obligations").unwrap();
    assert!(!obligations.as_array().unwrap().is_empty());
    assert_eq!(serde_json::to_value(progress.summary()).unwrap(), full);
}

/// A plan whose reporters are not listed in the order of their names, for the merge of a
/// period's rows with them.
fn three_unit_plan() -> Plan {
    let text = r#"
[plan]
id = "t"
name = "t"
start = "2020-01"
end = "2020-06"

[[unit]]
id = "z"
name = "乙"
kind = "district"

[[unit]]
id = "a"
name = "甲"
kind = "district"

[[unit]]
id = "m"
name = "丙"
kind = "district"

[[indicator]]
id = "q"
name = "月度指标"
measure = "件"
period = "month"
timely_days = 0
reporters = ["z", "a", "m"]
lead_units = ["a", "z"]
aggregation = "sum"

[[indicator]]
id = "y"
name = "年度指标"
measure = "件"
period = "year"
timely_days = 0
reporters = ["m"]
lead_units = ["m"]
aggregation = "latest"
"#;
    plan::load_str(text, "t.toml").unwrap().plan
}

#[test]
fn obligations_rates_and_last_reports_count_every_row_once_whatever_its_order() {
    let plan = three_unit_plan();
    let at = |day: u32| ms(&format!("2020-03-{day:02}T00:00:00Z"));
    let mut rows = vec![
        value("q", "z", "2020-02", 1.0, at(1)),
        value("q", "b", "2020-02", 2.0, at(9)), // no reporter of "q"
        value("q", "a", "2019-12", 3.0, at(8)), // before the plan
        value("zz", "a", "2020-01", 4.0, at(7)), // no indicator of the plan
        value("q", "m", "2020-02", 5.0, at(2)),
        value("q", "z", "2020-01", 6.0, at(3)),
        value("y", "m", "2020", 7.0, at(4)),
        // The same key twice: the later given wins, though the earlier is stamped later.
        value("q", "a", "2020-02", 8.0, at(13)),
        value("q", "a", "2020-02", 9.0, at(6)),
        value("q", "0", "2020-01", 1.0, at(10)), // no reporter, before every reporter's name
    ];
    rows.push(value("q", "zz", "2020-02", 1.0, at(11))); // no reporter, after them
    let task = TaskRow {
        plan_id: "t".into(),
        task_id: "t1".into(),
        milestone_id: "m1".into(),
        unit_id: "task-only".into(),
        period: "2020-03".into(),
        percent: 10.0,
        status: "in_progress".into(),
        note: String::new(),
        revision: 0,
        issued_at_ms: at(12),
        seq: 1,
        report_pk: 1,
        updated_at_ms: at(12),
        first_received_at_ms: at(12),
    };
    let now = ms("2020-04-15T00:00:00Z");
    let given = Snapshot {
        values: rows.clone(),
        tasks: vec![task.clone()],
        ..Default::default()
    };
    // The same rows as the store reads them: in key order, one per key.
    let mut read: Vec<ValueRow> = Vec::new();
    for row in &rows {
        read.retain(|r| value_key(r) != value_key(row));
        read.push(row.clone());
    }
    read.sort_by(|a, b| value_key(a).cmp(&value_key(b)));
    let kept = read.clone();
    let read = Snapshot::in_key_order(read, vec![task.clone()], Vec::new(), Vec::new());

    // What each count must be, counted the plain way: a unit's last report over the rows kept
    // (a row replaced by a later one of its key is no longer a current value).
    let mut last_report: BTreeMap<String, i64> = BTreeMap::new();
    for (unit, at) in (kept.iter().map(|r| (r.unit_id.as_str(), r.updated_at_ms)))
        .chain([(task.unit_id.as_str(), task.updated_at_ms)])
    {
        let last = last_report.entry(unit.to_owned()).or_insert(at);
        *last = (*last).max(at);
    }
    for snapshot in [&given, &read] {
        let progress = compute(&plan, snapshot, now);
        assert_eq!(progress.last_report_ms, last_report);
        let mut by_unit: BTreeMap<String, Rates> = BTreeMap::new();
        let mut by_lead_unit: BTreeMap<String, Rates> = BTreeMap::new();
        for o in progress.obligations.iter() {
            let received = rows
                .iter()
                .rfind(|r| {
                    (&*r.indicator_id, &*r.unit_id, &*r.period)
                        == (&o.indicator, &o.unit, &o.period)
                })
                .map(|r| r.first_received_at_ms);
            assert_eq!(o.received_ms, received, "{o:?}");
            by_unit.entry(o.unit.to_string()).or_default().add(o);
            for lead in &plan.indicator(&o.indicator).unwrap().lead_units {
                by_lead_unit.entry(lead.clone()).or_default().add(o);
            }
        }
        assert_eq!(progress.by_unit, by_unit);
        assert_eq!(progress.by_lead_unit, by_lead_unit);
        let q = &progress.indicators[0];
        assert_eq!(q.indicator, "q");
        // Every period received (December's before the plan too): January z's 6 ("0", no
        // reporter, left out); February z 1 + a 9 (the later) + m 5.
        let series: Vec<(&str, f64)> = (q.series.iter())
            .map(|p| (p.period.as_str(), p.value))
            .collect();
        assert_eq!(
            series,
            [("2019-12", 3.0), ("2020-01", 6.0), ("2020-02", 15.0)]
        );
    }
    assert_eq!(
        last_report.get("a"),
        Some(&at(8)),
        "a row before the plan still counts as a report, a replaced one does not"
    );
}

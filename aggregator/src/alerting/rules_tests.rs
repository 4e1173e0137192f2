//! Tests of [`super`]: who receives which alert, when, at what severity.
use super::*;

fn at(text: &str) -> i64 {
    text.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

fn alerts_at(now: &str, policy: &AlertPolicy) -> Evaluated {
    let plan = crate::plan::embedded().plan;
    let progress = crate::progress::compute(&plan, &Default::default(), at(now));
    derive(&plan, &progress, policy)
}

#[test]
fn deadlines_before_the_go_live_are_counted_not_alerted() {
    let all = alerts_at("2018-08-01T00:00:00Z", &AlertPolicy::default());
    assert_eq!(all.before_go_live, 0);
    let live = alerts_at(
        "2018-08-01T00:00:00Z",
        &AlertPolicy {
            go_live_ms: Some(at("2018-06-01T00:00:00Z")),
            ..Default::default()
        },
    );
    assert!(live.before_go_live > 0);
    assert!(live.alerts.len() < all.alerts.len());
    // Reports due before June are not alerted; one due after is (2018Q2, due 2018-07-30).
    let period = |a: &Alert| a.labels.get("period").cloned().unwrap_or_default();
    assert!(!live.alerts.iter().any(|a| period(a) == "2018Q1"));
    assert!(live.alerts.iter().any(|a| period(a) == "2018Q2"));
    // Lagging is about now, whatever the go-live.
    assert!(live.alerts.iter().any(|a| a.name() == "TaskLagging"));
}

#[test]
fn a_report_alert_goes_to_the_unit_that_owes_it_and_to_its_lead_unit() {
    let all = alerts_at("2018-08-01T00:00:00Z", &AlertPolicy::default());
    let copies: Vec<(&str, &str)> = all
        .alerts
        .iter()
        .filter(|a| {
            a.name() == "ReportOverdue"
                && a.labels["unit"] == "laoshan"
                && a.labels["indicator"] == "pct-applications"
                && a.labels["period"] == "2018Q1"
                && a.labels["role"] != "escalation"
        })
        .map(|a| (a.recipient(), a.labels["role"].as_str()))
        .collect();
    assert_eq!(copies, [("laoshan", "reporter"), ("science-tech", "lead")]);
    // A unit that reports what it leads gets one alert, not two.
    let own: Vec<&Alert> = all
        .alerts
        .iter()
        .filter(|a| {
            a.name() == "ReportOverdue"
                && a.labels["unit"] == "science-tech"
                && a.labels["period"] == "2018Q1"
                && a.labels["indicator"] == "pct-applications"
                && a.labels["role"] != "escalation"
        })
        .collect();
    assert_eq!(own.len(), 1);
}

#[test]
fn mutes_match_their_labels_until_they_end() {
    let now = "2018-08-01T00:00:00Z";
    let muted = |mute: Mute| {
        alerts_at(
            now,
            &AlertPolicy {
                mutes: vec![mute],
                ..Default::default()
            },
        )
    };
    let all = alerts_at(now, &AlertPolicy::default());
    let laoshan = muted(Mute {
        unit: Some("laoshan".into()),
        ..Default::default()
    });
    assert!(laoshan.muted > 0);
    assert_eq!(laoshan.muted + laoshan.alerts.len(), all.alerts.len());
    assert!(laoshan.alerts.iter().all(|a| a.recipient() != "laoshan"
        && a.labels.get("unit").map(String::as_str) != Some("laoshan")));
    let lagging = muted(Mute {
        alertname: Some("TaskLagging".into()),
        ..Default::default()
    });
    assert!(lagging.alerts.iter().all(|a| a.name() != "TaskLagging"));
    let other_plan = muted(Mute {
        plan: Some("another-plan".into()),
        ..Default::default()
    });
    assert_eq!(other_plan.muted, 0);
    let ended = muted(Mute {
        unit: Some("laoshan".into()),
        until_ms: Some(at("2018-07-01T00:00:00Z")),
        ..Default::default()
    });
    assert_eq!(ended.muted, 0, "a mute that has ended mutes nothing");
}

/// Alerts at `now_ms` with nothing received, and the deadline of laoshan's 2018Q1 PCT
/// applications report.
fn evaluated_at_ms(now_ms: i64) -> (Evaluated, i64) {
    let plan = crate::plan::embedded().plan;
    let progress = crate::progress::compute(&plan, &Default::default(), now_ms);
    let deadline = progress
        .obligations
        .iter()
        .find(|o| o.unit == "laoshan" && o.indicator == "pct-applications" && o.period == "2018Q1")
        .expect("laoshan reports pct-applications for 2018Q1")
        .overdue_after_ms();
    (derive(&plan, &progress, &AlertPolicy::default()), deadline)
}

/// (alertname, severity) of laoshan's own alerts about its 2018Q1 PCT report.
fn laoshan_q1(evaluated: &Evaluated) -> Vec<(String, String)> {
    evaluated
        .alerts
        .iter()
        .filter(|a| {
            a.recipient() == "laoshan"
                && a.labels.get("indicator").map(String::as_str) == Some("pct-applications")
                && a.labels.get("period").map(String::as_str) == Some("2018Q1")
        })
        .map(|a| (a.name().to_owned(), a.labels["severity"].clone()))
        .collect()
}

fn pair(name: &str, severity: &str) -> Vec<(String, String)> {
    vec![(name.to_owned(), severity.to_owned())]
}

#[test]
fn due_soon_opens_due_soon_days_before_the_deadline_and_overdue_starts_at_it() {
    let (_, deadline) = evaluated_at_ms(at("2018-04-01T00:00:00Z"));
    let week = 7 * DAY_MS;
    let cases = [
        (deadline - week - 1, vec![]),
        (deadline - week, pair("ReportDueSoon", "info")),
        (deadline - 1, pair("ReportDueSoon", "info")),
        (deadline, pair("ReportOverdue", "warning")),
    ];
    for (now, expected) in cases {
        let (evaluated, _) = evaluated_at_ms(now);
        assert_eq!(
            laoshan_q1(&evaluated),
            expected,
            "at deadline {:+} ms",
            now - deadline
        );
    }
    let (evaluated, _) = evaluated_at_ms(deadline);
    let summary = &evaluated
        .alerts
        .iter()
        .find(|a| {
            a.recipient() == "laoshan"
                && a.name() == "ReportOverdue"
                && a.labels.get("period").map(String::as_str) == Some("2018Q1")
                && a.labels.get("indicator").map(String::as_str) == Some("pct-applications")
        })
        .unwrap()
        .annotations["summary"];
    assert!(summary.contains("已逾期不足 1 天"), "{summary}");
}

#[test]
fn overdue_alerts_become_critical_after_critical_after_days() {
    let (_, deadline) = evaluated_at_ms(at("2018-04-01T00:00:00Z"));
    let days = AlertPolicy::default().critical_after_days;
    let (warning, _) = evaluated_at_ms(deadline + days * DAY_MS - 1);
    assert_eq!(laoshan_q1(&warning), pair("ReportOverdue", "warning"));
    let (critical, _) = evaluated_at_ms(deadline + days * DAY_MS);
    assert_eq!(laoshan_q1(&critical), pair("ReportOverdue", "critical"));

    // Milestones escalate the same way, counted from their own deadline.
    let plan = crate::plan::embedded().plan;
    let progress = crate::progress::compute(&plan, &Default::default(), at("2018-04-01T00:00:00Z"));
    let milestone = progress
        .milestones
        .iter()
        .filter(|m| m.deadline_ms > at("2018-04-01T00:00:00Z"))
        .min_by_key(|m| m.deadline_ms)
        .expect("a milestone ahead");
    let severity_at = |now: i64| {
        let progress = crate::progress::compute(&plan, &Default::default(), now);
        derive(&plan, &progress, &AlertPolicy::default())
            .alerts
            .iter()
            .filter(|a| {
                a.name() == "TaskOverdue"
                    && a.labels["task"] == milestone.task
                    && a.labels["milestone"] == milestone.milestone
            })
            .map(|a| a.labels["severity"].clone())
            .collect::<Vec<_>>()
    };
    let before = severity_at(milestone.deadline_ms + days * DAY_MS - DAY_MS);
    assert!(
        !before.is_empty() && before.iter().all(|s| s == "warning"),
        "{before:?}"
    );
    let after = severity_at(milestone.deadline_ms + days * DAY_MS + DAY_MS);
    assert!(
        !after.is_empty() && after.iter().all(|s| s == "critical"),
        "{after:?}"
    );
}

#[test]
fn a_task_without_a_lead_unit_alerts_each_responsible_unit_and_invents_no_lead() {
    let plan = crate::plan::embedded().plan;
    let task = plan
        .tasks
        .iter()
        .find(|t| t.lead_units.is_empty() && !t.milestones.is_empty())
        .expect("the plan has tasks 按职责分工负责");
    let now = at("2020-12-31T00:00:00Z");
    let progress = crate::progress::compute(&plan, &Default::default(), now);
    let evaluated = derive(&plan, &progress, &AlertPolicy::default());
    let about: Vec<&Alert> = evaluated
        .alerts
        .iter()
        .filter(|a| a.labels.get("task") == Some(&task.id) && a.labels["role"] != "escalation")
        .collect();
    assert!(
        !about.is_empty(),
        "task {} is overdue by the end of 2020",
        task.id
    );
    let mut recipients: Vec<&str> = about.iter().map(|a| a.recipient()).collect();
    recipients.sort_unstable();
    recipients.dedup();
    let mut responsible = plan.expand_parties(&task.responsible_units);
    responsible.sort_unstable();
    assert_eq!(recipients, responsible);
    for alert in about {
        assert_eq!(alert.labels["role"], "responsible");
        assert_eq!(alert.lead_unit(), "none");
    }
}

fn lip_agencies_at(value: f64, now: &str) -> (Evaluated, crate::progress::IndicatorProgress) {
    let plan = crate::plan::embedded().plan;
    let received = at("2018-12-20T00:00:00Z");
    let row = crate::progress::ValueRow {
        plan_id: plan.id.as_str().into(),
        indicator_id: "lip-service-agencies".into(),
        unit_id: "laoshan".into(),
        period: "2018Q4".into(),
        value,
        note: String::new(),
        revision: 0,
        issued_at_ms: received,
        seq: 1,
        report_pk: 1,
        updated_at_ms: received,
        first_received_at_ms: received,
        first_issued_at_ms: received,
    };
    let snapshot = crate::progress::Snapshot {
        values: vec![row],
        ..Default::default()
    };
    let progress = crate::progress::compute(&plan, &snapshot, at(now));
    let indicator = progress
        .indicators
        .iter()
        .find(|i| i.indicator == "lip-service-agencies")
        .cloned()
        .unwrap();
    (derive(&plan, &progress, &AlertPolicy::default()), indicator)
}

#[test]
fn overshooting_an_about_target_is_met_with_a_note_and_not_alerted() {
    // 三(八): 服务机构达到150家左右, by 2018-12. 170 is above "about 150": met, not late.
    let (evaluated, progress) = lip_agencies_at(170.0, "2019-02-01T00:00:00Z");
    assert_eq!(progress.status, crate::progress::IndicatorStatus::Met);
    let note = progress.note.expect("a note says why 170 counts as met");
    assert!(note.contains("above the plan's range"), "{note}");
    assert!(
        !evaluated
            .alerts
            .iter()
            .any(
                |a| a.labels.get("indicator").map(String::as_str) == Some("lip-service-agencies")
                    && a.name() == "IndicatorLagging"
            ),
        "no indicator alert for an overshoot"
    );
    // 100 is short of it: late, and, the document naming no lead, the office is told.
    let (evaluated, progress) = lip_agencies_at(100.0, "2019-02-01T00:00:00Z");
    assert_eq!(progress.status, crate::progress::IndicatorStatus::Late);
    assert_eq!(progress.note, None);
    let recipients: Vec<(&str, &str)> = evaluated
        .alerts
        .iter()
        .filter(|a| {
            a.labels.get("indicator").map(String::as_str) == Some("lip-service-agencies")
                && a.name() == "IndicatorLagging"
                && a.labels["role"] != "escalation"
        })
        .map(|a| (a.recipient(), a.labels["role"].as_str()))
        .collect();
    assert_eq!(recipients, [("ip-office", "office")]);
}

#[test]
fn a_report_of_an_indicator_without_a_lead_is_copied_to_the_office() {
    let all = alerts_at("2018-08-01T00:00:00Z", &AlertPolicy::default());
    let mut copies: Vec<(&str, &str, &str)> = all
        .alerts
        .iter()
        .filter(|a| {
            a.name() == "ReportOverdue"
                && a.labels["indicator"] == "lip-service-agencies"
                && a.labels["period"] == "2018Q1"
                && a.labels["role"] != "escalation"
        })
        .map(|a| (a.recipient(), a.labels["role"].as_str(), a.lead_unit()))
        .collect();
    copies.sort_unstable();
    assert_eq!(
        copies,
        [
            ("ip-office", "office", "none"),
            ("laoshan", "reporter", "none")
        ]
    );
}

#[test]
fn a_milestone_taken_from_a_track_phase_alerts_that_phases_lead() {
    // 二(一)1's milestones come from 三(一), which the office leads 会同 its partners.
    let all = alerts_at("2018-03-01T00:00:00Z", &AlertPolicy::default());
    let recipients: Vec<(&str, &str)> = all
        .alerts
        .iter()
        .filter(|a| {
            a.labels.get("task").map(String::as_str) == Some("2-1-1")
                && a.labels["role"] != "escalation"
        })
        .map(|a| (a.recipient(), a.labels["role"].as_str()))
        .collect();
    assert!(!recipients.is_empty(), "2-1-1 m1 (…2017-12) is overdue");
    assert!(
        recipients.iter().all(|r| *r == ("ip-office", "lead")),
        "{recipients:?}"
    );
}

fn said(unit: &str, kind: &str, case: &str, at: &str, date: &str) -> crate::progress::StatementRow {
    crate::progress::StatementRow {
        unit_id: unit.into(),
        seq: 1,
        issued_at_ms: self::at(at),
        received_at_ms: self::at(at),
        case_id: case.into(),
        kind: kind.into(),
        date: date.into(),
        note: "原因".into(),
        reference: String::new(),
        about_unit: String::new(),
    }
}

/// The alerts about laoshan's 2018Q1 PCT report at `now`, given the record.
fn laoshan_q1_case(now: &str, statements: Vec<crate::progress::StatementRow>) -> Vec<Alert> {
    let plan = crate::plan::embedded().plan;
    let snapshot = crate::progress::Snapshot {
        statements,
        ..Default::default()
    };
    let progress = crate::progress::compute(&plan, &snapshot, at(now));
    derive(&plan, &progress, &AlertPolicy::default())
        .alerts
        .into_iter()
        .filter(|a| {
            a.annotations.get("case").map(String::as_str)
                == Some("report/pct-applications/2018Q1/laoshan")
        })
        .collect()
}

fn level_and_recipients(alerts: &[Alert]) -> (String, Vec<(String, String)>) {
    let mut recipients: Vec<(String, String)> = alerts
        .iter()
        .map(|a| (a.recipient().to_owned(), a.labels["role"].clone()))
        .collect();
    recipients.sort();
    let levels: std::collections::BTreeSet<&str> = alerts
        .iter()
        .map(|a| a.labels["escalation_level"].as_str())
        .collect();
    assert_eq!(levels.len(), 1, "one level per case: {levels:?}");
    (levels.into_iter().next().unwrap().to_owned(), recipients)
}

#[test]
fn an_unanswered_case_climbs_the_ladder_and_each_level_adds_its_receivers() {
    // 2018Q1 was due at the end of 2018-04-30 (30 days after the quarter), Qingdao time.
    let (level, who) = level_and_recipients(&laoshan_q1_case("2018-05-03T00:00:00Z", vec![]));
    assert_eq!(level, "1");
    assert_eq!(
        who,
        [
            ("laoshan".into(), "reporter".into()),
            ("science-tech".into(), "lead".into())
        ]
    );
    // 7 days late: level 2 adds the office.
    let (level, who) = level_and_recipients(&laoshan_q1_case("2018-05-08T00:00:00Z", vec![]));
    assert_eq!(level, "2");
    assert!(
        who.contains(&("ip-office".into(), "escalation".into())),
        "{who:?}"
    );
    assert!(!who.iter().any(|(u, _)| u == "ip-leading-group"), "{who:?}");
    // 30 days late: level 3 adds the leading group, and the office stays.
    let (level, who) = level_and_recipients(&laoshan_q1_case("2018-06-01T00:00:00Z", vec![]));
    assert_eq!(level, "3");
    assert!(
        who.contains(&("ip-office".into(), "escalation".into())),
        "{who:?}"
    );
    assert!(
        who.contains(&("ip-leading-group".into(), "escalation".into())),
        "{who:?}"
    );
    // The level does not make it another alert: keys stay as the case climbs.
    let keys = |now: &str| -> Vec<String> {
        laoshan_q1_case(now, vec![])
            .iter()
            .filter(|a| a.labels["role"] != "escalation")
            .map(Alert::key)
            .collect()
    };
    assert_eq!(keys("2018-05-03T00:00:00Z"), keys("2018-06-01T00:00:00Z"));
}

#[test]
fn a_granted_extension_resolves_the_overdue_alert_and_resets_the_ladder() {
    let case = "report/pct-applications/2018Q1/laoshan";
    let asked = said(
        "laoshan",
        "request_extension",
        case,
        "2018-05-20T00:00:00Z",
        "2018-06-30",
    );
    // Asked but not granted: still overdue, at level 2.
    let (level, _) = level_and_recipients(&laoshan_q1_case(
        "2018-05-25T00:00:00Z",
        vec![asked.clone()],
    ));
    assert_eq!(level, "2");
    // Refused: nothing changes.
    let refused = said(
        "ip-office",
        "refuse_extension",
        case,
        "2018-05-21T00:00:00Z",
        "",
    );
    let alerts = laoshan_q1_case("2018-05-25T00:00:00Z", vec![asked.clone(), refused]);
    assert!(alerts.iter().any(|a| a.name() == "ReportOverdue"));
    // Granted: due 2018-06-30, so on 2018-06-01 nothing is overdue; the due-soon notice comes
    // a week before the new date, at level 1.
    let granted = said(
        "ip-office",
        "grant_extension",
        case,
        "2018-05-21T00:00:00Z",
        "",
    );
    let alerts = laoshan_q1_case("2018-06-01T00:00:00Z", vec![asked.clone(), granted.clone()]);
    assert!(alerts.is_empty(), "{alerts:#?}");
    let alerts = laoshan_q1_case("2018-06-26T00:00:00Z", vec![asked.clone(), granted.clone()]);
    assert!(
        alerts.iter().all(|a| a.name() == "ReportDueSoon"),
        "{alerts:#?}"
    );
    // Past the granted date it is overdue again, counted from the new date: level 1.
    let (level, _) = level_and_recipients(&laoshan_q1_case(
        "2018-07-02T00:00:00Z",
        vec![asked, granted],
    ));
    assert_eq!(level, "1");
}

#[test]
fn an_acknowledged_alert_says_who_and_is_quiet_for_the_quiet_period() {
    let case = "report/pct-applications/2018Q1/laoshan";
    let ack = said("laoshan", "acknowledge", case, "2018-05-02T02:00:00Z", "");
    let alerts = laoshan_q1_case("2018-05-03T00:00:00Z", vec![ack]);
    assert!(!alerts.is_empty());
    for alert in &alerts {
        assert_eq!(
            alert.annotations["acknowledged"],
            "laoshan 2018-05-02 10:00"
        );
        // Quiet for the plan's 3 days.
        assert!(is_quiet(&alert.annotations, at("2018-05-05T01:59:00Z")));
        assert!(!is_quiet(&alert.annotations, at("2018-05-05T02:00:00Z")));
    }
    // Without an acknowledgement nothing is quiet.
    let plain = laoshan_q1_case("2018-05-03T00:00:00Z", vec![]);
    assert!(
        plain
            .iter()
            .all(|a| !is_quiet(&a.annotations, at("2018-05-03T00:00:00Z")))
    );
}

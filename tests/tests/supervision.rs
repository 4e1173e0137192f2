//! The 督办 loop across real processes: a running aggregator raises alerts on the Qingdao plan
//! (real time, long past its deadlines); units answer with `duban-agent respond`, the
//! supervising office (市知识产权工作领导小组办公室, ip-office) decides with `duban-agent
//! decide`, and each kind of statement has its effect, each refusal its reason.

use std::time::Duration;

use duban_e2e::{
    AgentSetup, AggregatorProcess, Background, World, binary, http_get, ok, require_program, run,
    wait_until,
};

const LAOSHAN_Q1: &str = "report/pct-applications/2018Q1/laoshan";
const SHIBEI_Q1: &str = "report/pct-applications/2018Q1/shibei";
const MILESTONE_M1: &str = "milestone/2-1-1/m1";
const MILESTONE_M2: &str = "milestone/2-1-1/m2";

fn alerts(aggregator: &AggregatorProcess) -> Vec<serde_json::Value> {
    let api: serde_json::Value =
        serde_json::from_str(&http_get(&aggregator.http.to_string(), "/api/v1/alerts"))
            .unwrap_or_default();
    api["alerts"].as_array().cloned().unwrap_or_default()
}

/// The open alerts of `case`, by the `case` annotation the rules give every alert.
fn of_case(aggregator: &AggregatorProcess, case: &str) -> Vec<serde_json::Value> {
    alerts(aggregator)
        .into_iter()
        .filter(|a| a["annotations"]["case"] == case && a["ends_at_ms"].is_null())
        .collect()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a statement command that the centre must refuse with `reason`.
fn refused(agent: &AgentSetup, args: &[&str], reason: &str) -> String {
    let out = agent.run(args);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains(&format!("REFUSED: {reason}: ")), "{said}");
    said
}

/// A real Alertmanager that receives duban's alerts and silences (routed to nobody).
fn alertmanager(dir: &std::path::Path) -> Background {
    let config = dir.join("alertmanager.yml");
    std::fs::write(
        &config,
        "route:\n  receiver: nobody\nreceivers:\n  - name: nobody\n",
    )
    .unwrap();
    let args: Vec<String> = vec![
        format!("--config.file={}", config.display()),
        format!("--storage.path={}", dir.join("am").display()),
        "--web.listen-address=127.0.0.1:0".into(),
        "--cluster.listen-address=".into(),
    ];
    Background::start("prometheus-alertmanager", &args, "Listening on")
}

#[test]
fn units_answer_alerts_and_the_office_decides_with_every_effect_and_every_refusal() {
    if !require_program("prometheus-alertmanager", "prometheus-alertmanager") {
        return;
    }
    let w = World::new();
    let am = alertmanager(w.root.path());
    let am_url = format!("http://{}", am.listening_on());
    let aggregator = AggregatorProcess::start(&[
        "--database-url",
        &w.url,
        "--insecure-plaintext",
        "--evaluate-every-seconds",
        "1",
        "--go-live",
        "2017-07-01",
        "--alertmanager",
        &am_url,
    ]);
    let endpoint = format!("http://{}", aggregator.grpc);
    let agent = |unit: &str| AgentSetup::new(w.root.path(), &w.url, unit, &endpoint, "");
    let (laoshan, shibei, office) = (agent("laoshan"), agent("shibei"), agent("ip-office"));

    wait_until(
        Duration::from_secs(30),
        "laoshan's 2018Q1 overdue alert",
        || {
            !of_case(&aggregator, LAOSHAN_Q1).is_empty()
                && !of_case(&aggregator, MILESTONE_M1).is_empty()
        },
    );
    // Years past the deadline: level 3, told to the office and the leading group too.
    let first = of_case(&aggregator, LAOSHAN_Q1);
    assert!(
        first.iter().all(|a| a["labels"]["escalation_level"] == "3"),
        "{first:#?}"
    );
    let told: Vec<&str> = first
        .iter()
        .map(|a| a["labels"]["recipient"].as_str().unwrap())
        .collect();
    for unit in ["laoshan", "science-tech", "ip-office", "ip-leading-group"] {
        assert!(told.contains(&unit), "{unit} not told: {told:?}");
    }

    // The unit sees its cases; the office sees every case.
    let listed = ok(laoshan.run(&["alerts"]));
    assert!(listed.contains(LAOSHAN_Q1), "{listed}");
    assert!(!listed.contains(SHIBEI_Q1), "{listed}");
    let all: serde_json::Value =
        serde_json::from_str(&ok(office.run(&["alerts", "--json"]))).unwrap();
    assert_eq!(all["office"], true);
    let cases: Vec<&str> = all["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["case"].as_str().unwrap())
        .collect();
    for case in [LAOSHAN_Q1, SHIBEI_Q1, MILESTONE_M1] {
        assert!(cases.contains(&case), "{case}: {cases:?}");
    }

    // Acknowledge: recorded, shown on the alert and in the record.
    let said = ok(laoshan.run(&["respond", "ack", LAOSHAN_Q1]));
    assert!(said.contains("recorded: acknowledge"), "{said}");
    wait_until(
        Duration::from_secs(30),
        "the acknowledgement on the alert",
        || {
            of_case(&aggregator, LAOSHAN_Q1).iter().all(|a| {
                a["annotations"]["acknowledged"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("laoshan "))
            })
        },
    );
    // Alertmanager stops re-notifying the case for the quiet period (3 days in the Qingdao
    // plan): a silence of the case's alerts, escalation copies apart, which suppresses them.
    let am_get = |path: &str| -> serde_json::Value {
        serde_json::from_str(&http_get(&am.listening_on(), path)).unwrap_or_default()
    };
    wait_until(
        Duration::from_secs(30),
        "duban's silence in Alertmanager",
        || {
            am_get("/api/v2/silences").as_array().is_some_and(|all| {
                all.iter().any(|s| {
                    s["createdBy"] == "duban"
                        && s["comment"]
                            .as_str()
                            .is_some_and(|c| c.contains(LAOSHAN_Q1))
                        && s["status"]["state"] == "active"
                })
            })
        },
    );
    let silence = am_get("/api/v2/silences")
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["createdBy"] == "duban")
        .cloned()
        .unwrap();
    let ends: jiff::Timestamp = silence["endsAt"].as_str().unwrap().parse().unwrap();
    let days =
        (ends.as_millisecond() - jiff::Timestamp::now().as_millisecond()) as f64 / 86_400_000.0;
    assert!(days > 2.9 && days <= 3.0, "quiet for {days} days");
    wait_until(
        Duration::from_secs(30),
        "laoshan's alert suppressed",
        || {
            am_get("/api/v2/alerts?filter=unit%3D%22laoshan%22&filter=period%3D%222018Q1%22&filter=indicator%3D%22pct-applications%22")
            .as_array()
            .is_some_and(|all| {
                let state = |role: &str| {
                    all.iter()
                        .filter(|a| a["labels"]["role"] == role)
                        .map(|a| a["status"]["state"].as_str().unwrap_or_default().to_owned())
                        .collect::<Vec<_>>()
                };
                state("reporter") == ["suppressed"] && state("escalation").iter().all(|s| s == "active")
            })
        },
    );
    // Explain, then ask for an extension.
    ok(laoshan.run(&[
        "respond",
        "explain",
        LAOSHAN_Q1,
        "--date",
        "2099-01-15",
        "--note",
        "统计口径调整, 正在重新核对",
    ]));
    ok(laoshan.run(&[
        "respond",
        "extend",
        LAOSHAN_Q1,
        "--date",
        "2099-01-31",
        "--note",
        "数据需重新核对",
    ]));

    // Refusals, each with its reason; none changes the record.
    refused(&shibei, &["respond", "ack", LAOSHAN_Q1], "NOT_A_RECIPIENT");
    refused(&laoshan, &["decide", "grant", LAOSHAN_Q1], "NOT_THE_OFFICE");
    refused(
        &laoshan,
        &["respond", "ack", "report/pct-applications/2018Q1/atlantis"],
        "UNKNOWN_ALERT",
    );
    refused(
        &laoshan,
        &[
            "respond",
            "extend",
            LAOSHAN_Q1,
            "--date",
            "2018-01-01",
            "--note",
            "太晚了",
        ],
        "BAD_DATE",
    );
    refused(
        &office,
        &["decide", "confirm", LAOSHAN_Q1],
        "NOTHING_TO_DECIDE",
    );
    // A mistake the agent catches itself, before anything is signed.
    let out = laoshan.run(&["respond", "extend", LAOSHAN_Q1, "--note", "原因"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("needs --date"), "{}", text(&out));

    // The office grants: the deadline becomes 2099-01-31 and the overdue alert resolves.
    let said = ok(office.run(&["decide", "grant", LAOSHAN_Q1, "--note", "同意"]));
    assert!(said.contains("recorded: grant_extension"), "{said}");
    wait_until(
        Duration::from_secs(30),
        "the granted case no longer overdue",
        || of_case(&aggregator, LAOSHAN_Q1).is_empty(),
    );
    let record = ok(laoshan.run(&["alerts", "--json"]));
    assert!(!record.contains(LAOSHAN_Q1), "no longer open: {record}");

    // A refused extension changes nothing but the record: shibei stays overdue, at level 3.
    ok(shibei.run(&[
        "respond",
        "extend",
        SHIBEI_Q1,
        "--date",
        "2099-03-31",
        "--note",
        "人手不足",
    ]));
    let said = ok(office.run(&["decide", "refuse", SHIBEI_Q1, "--note", "理由不充分"]));
    assert!(said.contains("recorded: refuse_extension"), "{said}");
    let listed = ok(shibei.run(&["alerts"]));
    assert!(
        listed.contains(SHIBEI_Q1) && listed.contains("level 3"),
        "{listed}"
    );
    assert!(
        listed.contains("refuse_extension"),
        "the record shows the refusal: {listed}"
    );

    // Done claims, to the office that leads 三(一): one confirmed (the milestone is done and its
    // alert resolves), one rejected (back to overdue).
    ok(office.run(&[
        "respond",
        "done",
        MILESTONE_M1,
        "--reference",
        "青知办〔2017〕12号",
    ]));
    ok(office.run(&["decide", "confirm", MILESTONE_M1]));
    ok(office.run(&[
        "respond",
        "done",
        MILESTONE_M2,
        "--reference",
        "https://example.gov/m2",
    ]));
    ok(office.run(&["decide", "reject", MILESTONE_M2, "--note", "材料不全"]));
    wait_until(
        Duration::from_secs(30),
        "the confirmed milestone resolved",
        || of_case(&aggregator, MILESTONE_M1).is_empty(),
    );
    assert!(
        !of_case(&aggregator, MILESTONE_M2).is_empty(),
        "a rejected claim stays overdue"
    );

    // The 督办 record, in the report, the API, status and the metrics.
    let report: serde_json::Value = serde_json::from_str(&ok(run(
        &binary("duban-aggregator"),
        &["supervision", "report", "--json", "--database-url", &w.url],
    )))
    .unwrap();
    let unit = |id: &str| {
        report["units"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["unit"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not in {report:#}"))
    };
    let l = unit("laoshan");
    assert!(l["alerted"].as_u64().unwrap() >= 1, "{l}");
    assert_eq!(l["answered"], 1, "{l}");
    assert!(l["median_first_answer_ms"].as_i64().is_some(), "{l}");
    assert_eq!(
        (
            l["extensions_requested"].as_u64(),
            l["extensions_granted"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(l["max_escalation_level"], 3, "{l}");
    let s = unit("shibei");
    assert_eq!(
        (
            s["extensions_requested"].as_u64(),
            s["extensions_refused"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let o = unit("ip-office");
    assert_eq!(
        (
            o["claims_confirmed"].as_u64(),
            o["claims_rejected"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let text = ok(run(
        &binary("duban-aggregator"),
        &["supervision", "report", "--database-url", &w.url],
    ));
    assert!(
        text.contains("督办通报") && text.contains("崂山区") && text.contains("市北区"),
        "{text}"
    );
    // Before anything happened: nothing alerted, nothing answered.
    let before = ok(run(
        &binary("duban-aggregator"),
        &[
            "supervision",
            "report",
            "--as-of",
            "2017-01-01",
            "--database-url",
            &w.url,
        ],
    ));
    assert!(before.contains("截至该日未发出督办提醒"), "{before}");
    let api: serde_json::Value = serde_json::from_str(&http_get(
        &aggregator.http.to_string(),
        "/api/v1/supervision",
    ))
    .unwrap();
    assert_eq!(
        api["units"], report["units"],
        "the API says what the report says"
    );
    let status = ok(run(
        &binary("duban-aggregator"),
        &["status", "--database-url", &w.url],
    ));
    assert!(status.contains("督办 (alert cases per unit"), "{status}");

    // Each accepted statement and each refusal is counted.
    let metrics = http_get(&aggregator.http.to_string(), "/metrics");
    for sample in [
        "duban_statements_total{kind=\"acknowledge\",result=\"accepted\"} 1",
        "duban_statements_total{kind=\"grant_extension\",result=\"accepted\"} 1",
        "duban_statements_total{kind=\"refuse_extension\",result=\"accepted\"} 1",
        "duban_statements_total{kind=\"confirm_done\",result=\"accepted\"} 1",
        "duban_statements_total{kind=\"reject_done\",result=\"accepted\"} 1",
        "duban_statements_total{kind=\"acknowledge\",result=\"NOT_A_RECIPIENT\"} 1",
        "duban_statements_total{kind=\"grant_extension\",result=\"NOT_THE_OFFICE\"} 1",
        "duban_supervision_cases{plan=\"qingdao-ip-2017\",state=\"answered\",unit=\"laoshan\"} 1",
        "duban_supervision_extensions{decision=\"refused\",plan=\"qingdao-ip-2017\",unit=\"shibei\"} 1",
    ] {
        assert!(metrics.contains(sample), "{sample} not in /metrics");
    }
}

#[test]
fn status_as_of_a_past_date_counts_only_what_had_been_received_by_then() {
    let w = World::new();
    let aggregator = AggregatorProcess::start(&["--database-url", &w.url, "--insecure-plaintext"]);
    let laoshan = AgentSetup::new(
        w.root.path(),
        &w.url,
        "laoshan",
        &format!("http://{}", aggregator.grpc),
        "",
    );
    ok(laoshan.run(&[
        "submit",
        "--indicator",
        "pct-applications",
        "--period",
        "2018Q1",
        "--value",
        "7",
        "--send-for",
        "10s",
    ]));
    let status = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["status", "--json", "--database-url", &w.url];
        args.extend(extra);
        serde_json::from_str(&ok(run(&binary("duban-aggregator"), &args))).unwrap()
    };
    let received = |s: &serde_json::Value| {
        s["progress"]["obligations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| {
                o["unit"] == "laoshan"
                    && o["indicator"] == "pct-applications"
                    && o["period"] == "2018Q1"
            })
            .map(|o| o["received_ms"].clone())
            .unwrap()
    };
    // Now the value is there; at the end of 2020 (before it was received, today) it was not,
    // although the deadline had long passed: then it was overdue.
    assert!(received(&status(&[])).is_number());
    let then = status(&["--as-of", "2020-12-31"]);
    assert!(received(&then).is_null(), "{}", received(&then));
}

#[test]
fn a_statement_made_while_the_centre_is_unreachable_waits_in_the_outbox_and_the_daemon_sends_it() {
    let w = World::new();
    let aggregator = AggregatorProcess::start(&[
        "--database-url",
        &w.url,
        "--insecure-plaintext",
        "--evaluate-every-seconds",
        "1",
        "--go-live",
        "2017-07-01",
    ]);
    let endpoint = format!("http://{}", aggregator.grpc);
    let laoshan = AgentSetup::new(w.root.path(), &w.url, "laoshan", &endpoint, "");
    wait_until(
        Duration::from_secs(30),
        "laoshan's 2018Q1 overdue alert",
        || !of_case(&aggregator, LAOSHAN_Q1).is_empty(),
    );
    let online = std::fs::read_to_string(&laoshan.config).unwrap();
    // Nothing listens on port 9 here: the centre cannot be reached.
    let offline = online.replace(&endpoint, "http://127.0.0.1:9");
    std::fs::write(&laoshan.config, &offline).unwrap();
    // A new outbox does not know the centre's statement counter: it stores nothing.
    let out = laoshan.run(&["respond", "ack", LAOSHAN_Q1]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("has not yet learnt its statement counter"),
        "{}",
        text(&out)
    );
    std::fs::write(&laoshan.config, &online).unwrap();
    assert!(ok(laoshan.run(&["respond", "ack", LAOSHAN_Q1])).contains("recorded: acknowledge"));
    // Now it does: a statement made offline is numbered, kept, and reported as waiting.
    std::fs::write(&laoshan.config, &offline).unwrap();
    let said = ok(laoshan.run(&[
        "respond",
        "explain",
        LAOSHAN_Q1,
        "--date",
        "2099-02-01",
        "--note",
        "网络中断, 恢复后补报",
    ]));
    assert!(
        said.contains("stored statement seq 2 in the outbox"),
        "{said}"
    );
    // The daemon, with the centre reachable again, sends it.
    std::fs::write(&laoshan.config, &online).unwrap();
    let _daemon = laoshan.spawn_daemon(&[]);
    wait_until(Duration::from_secs(30), "the explanation on record", || {
        let listed = laoshan.run(&["alerts"]);
        String::from_utf8_lossy(&listed.stdout).contains("laoshan explain 2099-02-01")
    });
}

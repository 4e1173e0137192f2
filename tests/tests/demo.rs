//! The one-command demo, run as its binary with a short `--until`: the summary's checks (every
//! alert kind fired, the tampered report refused, nothing lost across the restart, the
//! duplicate reconciled, the correction won), a second run in the same directory, its flags'
//! errors, and `--keep-serving`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use duban_e2e::{binary, http_get};

const SHORT: &[&str] = &[
    "--speed",
    "120",
    "--grpc-listen",
    "127.0.0.1:0",
    "--http-listen",
    "127.0.0.1:0",
];

fn demo(dir: &std::path::Path, until: &str, extra: &[&str]) -> std::process::Output {
    Command::new(binary("duban-demo"))
        .arg("--dir")
        .arg(dir)
        .args(["--until", until])
        .args(SHORT)
        .args(extra)
        .output()
        .expect("run duban-demo")
}

fn summary(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("summary.json")).expect("summary.json"))
        .expect("summary.json is JSON")
}

fn assert_all_checks_passed(dir: &std::path::Path, stdout: &str) {
    let summary = summary(dir);
    let checks = summary["checks"].as_object().expect("checks");
    for name in [
        "every alert kind fired",
        "tampered report refused",
        "nothing lost across the restart",
        "duplicates reconciled",
        "the correction won",
        "the 督办 loop",
        "a refused case climbs the ladder",
    ] {
        assert_eq!(
            checks[name]["status"], "passed",
            "{name}: {}\n{stdout}",
            checks[name]["detail"]
        );
        assert!(
            stdout.contains(&format!("[passed] {name}")),
            "the printed summary lacks {name}"
        );
    }
    for (kind, count) in summary["alerts_fired"].as_object().unwrap() {
        assert!(count.as_u64().unwrap() > 0, "{kind} never fired");
    }
    assert_eq!(summary["ok"], true);
    assert_eq!(summary["reports"]["refused"], 1, "only the tampered report");
    assert_eq!(summary["reports"]["duplicate"], 1);
    assert_eq!(summary["reports_collected"], summary["reports_stored"]);
    assert_eq!(summary["indicators"].as_array().unwrap().len(), 19);
    assert!(stdout.contains("demo OK"), "{stdout}");
}

/// The summary's figures, checked against what others saw: the reports and indicator values
/// in the aggregator's database (read by `duban-aggregator`), and the alerts a webhook of the
/// test's own received.
fn figures_agree_with_the_database_and_the_webhook(
    dir: &std::path::Path,
    webhook: &duban_e2e::WebhookRecorder,
    as_of: &str,
) {
    use std::collections::BTreeMap;
    let summary = summary(dir);
    let url = format!("sqlite://{}", dir.join("aggregator/duban.db").display());
    assert_eq!(
        summary["reports_stored"].as_u64().unwrap() as usize,
        duban_e2e::stored_reports(&url).len(),
        "reports stored, by the summary and in the database"
    );
    let status = duban_e2e::ok(duban_e2e::run(
        &binary("duban-aggregator"),
        &["status", "--database-url", &url, "--as-of", as_of, "--json"],
    ));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    // The 督办 record the summary prints is the one the report gives from the database.
    let report: serde_json::Value = serde_json::from_str(&duban_e2e::ok(duban_e2e::run(
        &binary("duban-aggregator"),
        &[
            "supervision",
            "report",
            "--json",
            "--database-url",
            &url,
            "--as-of",
            as_of,
        ],
    )))
    .unwrap();
    assert_eq!(
        summary["supervision"]["units"], report["units"],
        "the 督办 record"
    );
    let answered = report["units"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["answered"].as_u64() > Some(0))
        .count();
    assert!(answered >= 3, "{report:#}");
    let in_database: BTreeMap<String, serde_json::Value> = status["progress"]["indicators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["indicator"].as_str().unwrap().to_owned(),
                i["value"].clone(),
            )
        })
        .collect();
    let in_summary: BTreeMap<String, serde_json::Value> = summary["indicators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["indicator"].as_str().unwrap().to_owned(),
                i["value"].clone(),
            )
        })
        .collect();
    assert_eq!(in_summary, in_database, "indicator values");

    let mut fired: BTreeMap<String, u64> = BTreeMap::new();
    let mut resolved: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_recipient: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for message in webhook.received() {
        for alert in message["alerts"].as_array().unwrap() {
            let name = alert["labels"]["alertname"].as_str().unwrap().to_owned();
            if alert["status"] == "firing" {
                *fired.entry(name.clone()).or_default() += 1;
                *by_recipient
                    .entry(alert["labels"]["recipient"].as_str().unwrap().to_owned())
                    .or_default()
                    .entry(name)
                    .or_default() += 1;
            } else {
                *resolved.entry(name).or_default() += 1;
            }
        }
    }
    let counts = |v: &serde_json::Value| -> BTreeMap<String, u64> {
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
            .filter(|(_, n)| *n > 0)
            .collect()
    };
    assert!(!fired.is_empty(), "the webhook received no alert");
    assert_eq!(counts(&summary["alerts_fired"]), fired, "alerts fired");
    assert_eq!(
        counts(&summary["alerts_resolved"]),
        resolved,
        "alerts resolved"
    );
    let summary_by_recipient: BTreeMap<String, BTreeMap<String, u64>> =
        summary["alerts_by_recipient"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(unit, kinds)| (unit.clone(), counts(kinds)))
            .collect();
    assert_eq!(summary_by_recipient, by_recipient, "alerts by recipient");
}

#[test]
fn the_demo_runs_every_hard_part_and_its_summary_checks_pass_twice_in_one_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let webhook = duban_e2e::WebhookRecorder::start();
    let first = demo(&dir, "2018-06-30", &["--webhook", &webhook.url]);
    let stdout = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(
        first.status.success(),
        "exit {:?}\n{stdout}\n{}",
        first.status,
        String::from_utf8_lossy(&first.stderr)
    );
    figures_agree_with_the_database_and_the_webhook(&dir, &webhook, "2018-07-01");
    // Plain lines (no terminal): the monthly status lines, alerts with their recipient (a due
    // soon reminder to the unit that owes the report included) and resolutions, events.
    assert!(stdout.contains("2018-01-01 | aggregator"), "{stdout}");
    assert!(stdout.contains("ALERT TaskOverdue"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("ALERT ReportDueSoon [info]") && l.contains("owes the report")),
        "{stdout}"
    );
    assert!(stdout.contains(" RESOLVED "), "{stdout}");
    assert!(
        stdout.contains("aggregator stopped (a restart)"),
        "{stdout}"
    );
    assert!(stdout.contains("BAD_SIGNATURE"), "{stdout}");
    assert_all_checks_passed(&dir, &stdout);
    let key = std::fs::read(dir.join("agents/laoshan/signing.key")).unwrap();
    let first_summary = summary(&dir);

    // Again in the same directory: keys kept, state recreated, the same seed the same values.
    let second = demo(&dir, "2018-06-30", &[]);
    let stdout = String::from_utf8_lossy(&second.stdout).into_owned();
    assert!(second.status.success(), "{stdout}");
    assert_all_checks_passed(&dir, &stdout);
    assert_eq!(
        std::fs::read(dir.join("agents/laoshan/signing.key")).unwrap(),
        key
    );
    assert_eq!(
        summary(&dir)["reports_stored"],
        first_summary["reports_stored"]
    );
    let values = |s: &serde_json::Value| {
        s["indicators"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["value"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(values(&summary(&dir)), values(&first_summary));
    // The simulated clock decides what happens, not the machine's speed: the same alerts
    // reach the same units, and the same reports are counted.
    let second_summary = summary(&dir);
    for field in [
        "alerts_fired",
        "alerts_resolved",
        "alerts_by_recipient",
        "reports",
    ] {
        assert_eq!(
            second_summary[field], first_summary[field],
            "{field} differs between two runs of one seed"
        );
    }

    // --fresh makes new keys.
    let third = demo(&dir, "2017-08-31", &["--fresh"]);
    assert!(
        third.status.success(),
        "{}{}",
        String::from_utf8_lossy(&third.stdout),
        String::from_utf8_lossy(&third.stderr)
    );
    assert_ne!(
        std::fs::read(dir.join("agents/laoshan/signing.key")).unwrap(),
        key
    );
}

#[test]
fn bad_flags_and_a_foreign_directory_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    for (args, expected) in [
        (vec!["--speed", "0"], "--speed"),
        (vec!["--speed", "fast"], "simulated days per second"),
        (vec!["--until", "2018-13-01"], "--until"),
        (vec!["--until", "2016-01-01"], "plan's start 2017-07-01"),
        (
            vec!["--until", "2021-01-01"],
            "no later than its end 2020-06-30",
        ),
        (vec!["--seed=-1"], "--seed"),
        (vec!["--grpc-listen", "localhost"], "--grpc-listen"),
    ] {
        let out = Command::new(binary("duban-demo"))
            .arg("--dir")
            .arg(&dir)
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let foreign = tmp.path().join("thesis");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("chapter1.txt"), "precious").unwrap();
    let out = Command::new(binary("duban-demo"))
        .arg("--dir")
        .arg(&foreign)
        .arg("--fresh")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not made by duban-demo"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(foreign.join("chapter1.txt")).unwrap(),
        "precious"
    );
}

#[test]
fn keep_serving_leaves_metrics_up_until_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        "--dir",
        tmp.path().join("demo").to_str().unwrap(),
        "--until",
        "2017-09-30",
        "--speed",
        "200",
        "--grpc-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--keep-serving",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut child = Command::new(binary("duban-demo"))
        .args(&args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let printed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = printed.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("still serving") {
                // "… metrics http://127.0.0.1:PORT/metrics …": the port the system gave it.
                let address = line
                    .split("metrics http://")
                    .nth(1)
                    .and_then(|rest| rest.split('/').next())
                    .map(str::to_owned);
                let _ = tx.send(address);
            }
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    let mut guard = KillOnDrop(child);
    let http = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the demo says it is still serving")
        .expect("and where it serves /metrics");
    let body = http_get(&http, "/metrics");
    assert!(body.contains("duban_reports_accepted_total"), "{body}");
    assert!(body.contains("duban_indicator_expected"), "{body}");
    let pid = guard.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = guard.0.wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", printed.lock().unwrap());
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

//! The operator's commands: keys add, list, revoke; reports list; values show.

use std::process::{Command, Output};

use duban_proto::SigningKey;

fn aggregator(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_duban-aggregator"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn err(out: Output) -> String {
    assert!(
        !out.status.success(),
        "unexpectedly succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn keys_are_added_listed_and_revoked_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("db/duban.db").display());
    let key = SigningKey::generate();
    let public = dir.path().join("k.pub");
    std::fs::write(&public, key.public_key().to_spki_pem()).unwrap();
    let public = public.to_str().unwrap();

    let added = ok(aggregator(&[
        "keys",
        "add",
        "--database-url",
        &url,
        "--unit",
        "laoshan",
        "--public-key",
        public,
        "--not-after",
        "2030-01-01",
    ]));
    assert!(
        added.contains(&key.key_id().to_string()) && added.contains("崂山区"),
        "{added}"
    );
    let again = err(aggregator(&[
        "keys",
        "add",
        "--database-url",
        &url,
        "--unit",
        "laoshan",
        "--public-key",
        public,
    ]));
    assert!(again.contains("already registered"), "{again}");
    let unknown_unit = err(aggregator(&[
        "keys",
        "add",
        "--database-url",
        &url,
        "--unit",
        "atlantis",
        "--public-key",
        public,
    ]));
    assert!(
        unknown_unit.contains("unit \"atlantis\" is not in plan qingdao-ip-2017"),
        "{unknown_unit}"
    );
    let bad_time = err(aggregator(&[
        "keys",
        "add",
        "--database-url",
        &url,
        "--unit",
        "shinan",
        "--public-key",
        public,
        "--not-before",
        "next tuesday",
    ]));
    assert!(
        bad_time.contains("--not-before") && bad_time.contains("RFC 3339"),
        "{bad_time}"
    );
    let not_a_key = err(aggregator(&[
        "keys",
        "add",
        "--database-url",
        &url,
        "--unit",
        "shinan",
        "--public-key",
        "/etc/hostname",
    ]));
    assert!(
        not_a_key.contains("/etc/hostname: not a PEM file (it has no -----BEGIN line)"),
        "{not_a_key}"
    );

    let listed = ok(aggregator(&[
        "keys",
        "list",
        "--database-url",
        &url,
        "--json",
    ]));
    let keys: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 1);
    assert_eq!(keys[0]["key_id"], key.key_id().to_string());
    assert_eq!(keys[0]["not_after_ms"], 1_893_456_000_000i64);
    assert!(keys[0]["revoked_at_ms"].is_null());
    let table = ok(aggregator(&[
        "keys",
        "list",
        "--database-url",
        &url,
        "--unit",
        "laoshan",
    ]));
    assert!(
        table.contains("2030-01-01T00:00:00Z") && table.contains("1 key"),
        "{table}"
    );

    let revoked = ok(aggregator(&[
        "keys",
        "revoke",
        "--database-url",
        &url,
        &key.key_id().to_string(),
    ]));
    assert!(revoked.contains("revoked key"), "{revoked}");
    let listed: serde_json::Value = serde_json::from_str(&ok(aggregator(&[
        "keys",
        "list",
        "--database-url",
        &url,
        "--json",
    ])))
    .unwrap();
    assert!(listed[0]["revoked_at_ms"].is_i64());
    let missing = err(aggregator(&[
        "keys",
        "revoke",
        "--database-url",
        &url,
        &SigningKey::generate().key_id().to_string(),
    ]));
    assert!(missing.contains("no key"), "{missing}");
    let malformed = err(aggregator(&[
        "keys",
        "revoke",
        "--database-url",
        &url,
        "xyz",
    ]));
    assert!(malformed.contains("key id"), "{malformed}");
}

#[test]
fn reports_and_values_of_an_empty_store_and_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("duban.db").display());
    ok(aggregator(&["migrate", "--database-url", &url]));
    assert!(ok(aggregator(&["reports", "list", "--database-url", &url])).contains("0 reports"));
    assert!(
        ok(aggregator(&["values", "show", "--database-url", &url])).contains("0 current values")
    );
    let unknown = err(aggregator(&[
        "values",
        "show",
        "--database-url",
        &url,
        "--indicator",
        "gdp",
    ]));
    assert!(
        unknown.contains("indicator \"gdp\" is not in plan"),
        "{unknown}"
    );
    let bad_url = err(aggregator(&[
        "reports",
        "list",
        "--database-url",
        "mysql://localhost/x",
    ]));
    assert!(bad_url.contains("unsupported database url"), "{bad_url}");
}

#[test]
fn status_shows_progress_tasks_units_and_alerts_as_of_a_date() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("duban.db").display());
    // An empty store: everything due by then is missing.
    ok(aggregator(&["migrate", "--database-url", &url]));
    assert!(ok(aggregator(&["keys", "list", "--database-url", &url])).contains("0 keys"));
    let text = ok(aggregator(&[
        "status",
        "--database-url",
        &url,
        "--as-of",
        "2018-08-01",
    ]));
    for part in [
        "INDICATORS",
        "每万人有效发明专利拥有量",
        "TASKS LAGGING OR OVERDUE",
        "REPORTING BY UNIT",
        "ACTIVE ALERTS",
        "TaskOverdue",
        "市科技局",
    ] {
        assert!(text.contains(part), "{part} missing:\n{text}");
    }
    let json: serde_json::Value = serde_json::from_str(&ok(aggregator(&[
        "status",
        "--database-url",
        &url,
        "--as-of",
        "2018-08-01",
        "--json",
    ])))
    .unwrap();
    assert_eq!(json["plan"], "qingdao-ip-2017");
    let alerts = json["alerts"].as_array().unwrap();
    assert!(
        alerts
            .iter()
            .any(|a| a["labels"]["alertname"] == "ReportOverdue")
    );
    assert!(
        alerts
            .iter()
            .all(|a| a["labels"]["lead_unit"].is_string() && a["labels"]["severity"].is_string())
    );
    // Before the plan starts nothing is overdue: history and what-if give other answers.
    let early: serde_json::Value = serde_json::from_str(&ok(aggregator(&[
        "status",
        "--database-url",
        &url,
        "--as-of",
        "2017-07-02",
        "--json",
    ])))
    .unwrap();
    assert!(
        early["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["labels"]["alertname"] != "ReportOverdue")
    );
    let bad = err(aggregator(&[
        "status",
        "--database-url",
        &url,
        "--as-of",
        "yesterday",
    ]));
    assert!(bad.contains("--as-of"), "{bad}");
}

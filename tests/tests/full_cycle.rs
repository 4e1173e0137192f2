//! A full reporting cycle across processes: the aggregator binary and three `duban-agent run`
//! daemons over mTLS from a test CA, reading a CSV file (science-tech), a SQLite database
//! (laoshan) and a command (shibei). Values, a duplicate, a correction and an overdue alert are
//! checked through the aggregator's CLI and HTTP API.

use std::time::Duration;

use duban_e2e::{
    AgentSetup, AggregatorProcess, binary, current_values, dev_ca, http_get, ok, run,
    stored_reports, wait_until,
};
use duban_proto::pb;
use duban_proto::pb::report_service_client::ReportServiceClient;

fn value(url: &str, indicator: &str, unit: &str, period: &str) -> Option<(f64, i64)> {
    current_values(url)
        .iter()
        .find(|v| v["indicator_id"] == indicator && v["unit_id"] == unit && v["period"] == period)
        .map(|v| {
            (
                v["value"].as_f64().unwrap(),
                v["revision"].as_i64().unwrap(),
            )
        })
}

fn is_overdue_alert(alert: &serde_json::Value, unit: &str, period: &str) -> bool {
    let labels = &alert["labels"];
    labels["alertname"] == "ReportOverdue"
        && labels["unit"] == unit
        && labels["indicator"] == "pct-applications"
        && labels["period"] == period
        && labels["lead_unit"] == "science-tech"
        && labels["recipient"] == "science-tech"
}

/// The envelope of a unit's first stored report, exactly as the aggregator received it, read
/// with python3's sqlite3 as any tool could: resending it is what an agent does after a lost
/// acknowledgement.
fn first_stored_envelope(database: &std::path::Path, unit: &str) -> pb::SignedReport {
    let out = run(
        std::path::Path::new("python3"),
        &[
            "-c",
            &format!(
                "import sqlite3; r = sqlite3.connect({:?}).execute(\"SELECT hex(payload), payload_type, hex(key_id), hex(signature) FROM reports WHERE unit_id = '{unit}' ORDER BY report_pk LIMIT 1\").fetchone(); print(' '.join(r))",
                database.to_str().unwrap()
            ),
        ],
    );
    let text = ok(out);
    let fields: Vec<&str> = text.split_whitespace().collect();
    pb::SignedReport {
        payload: hex::decode(fields[0]).unwrap(),
        payload_type: fields[1].to_owned(),
        key_id: hex::decode(fields[2]).unwrap(),
        signature: hex::decode(fields[3]).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_over_mtls_report_a_full_cycle_with_a_duplicate_a_correction_and_an_overdue_alert()
 {
    let root = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}",
        root.path().join("aggregator/duban.db").display()
    );
    let certs = dev_ca(root.path(), "tls", "science-tech,laoshan,shibei");
    let aggregator = AggregatorProcess::start_tls(
        &url,
        &certs,
        &["--evaluate-every-seconds", "1", "--go-live", "2017-07-01"],
    );
    let endpoint = format!("http://{}", aggregator.grpc);
    let data = root.path().join("data");
    std::fs::create_dir_all(&data).unwrap();

    // science-tech: a CSV export.
    let csv = data.join("science-tech.csv");
    std::fs::write(
        &csv,
        "indicator,period,value\npct-applications,2018Q1,120\npct-applications,2018Q2,131\n",
    )
    .unwrap();
    let science = AgentSetup::new(
        root.path(),
        &url,
        "science-tech",
        &endpoint,
        &format!(
            "[[source]]\nname = \"export\"\nkind = \"csv\"\npath = \"{}\"\nevery = \"1s\"\n",
            csv.display()
        ),
    );
    // laoshan: a local SQLite database.
    let db = data.join("laoshan.db");
    ok(run(
        std::path::Path::new("python3"),
        &[
            "-c",
            &format!(
                "import sqlite3; c = sqlite3.connect({:?}); c.execute('CREATE TABLE figures (ind TEXT, per TEXT, val REAL)'); c.executemany('INSERT INTO figures VALUES (?, ?, ?)', [('pct-applications', '2018Q1', 40), ('pct-applications', '2018Q2', 44), ('lip-service-agencies', '2018Q1', 131)]); c.commit()",
                db.to_str().unwrap()
            ),
        ],
    ));
    let laoshan = AgentSetup::new(
        root.path(),
        &url,
        "laoshan",
        &endpoint,
        &format!(
            "[[source]]\nname = \"district-db\"\nkind = \"sql\"\nurl = \"sqlite://{}\"\nquery = \"SELECT ind AS indicator, per AS period, val AS value FROM figures\"\nevery = \"1s\"\n",
            db.display()
        ),
    );
    // shibei: a command; it never reports 2018Q2, which becomes overdue.
    let shibei = AgentSetup::new(
        root.path(),
        &url,
        "shibei",
        &endpoint,
        "[[source]]\nname = \"script\"\nkind = \"command\"\ncommand = [\"sh\", \"-c\", \"echo '{\\\"indicator\\\": \\\"pct-applications\\\", \\\"period\\\": \\\"2018Q1\\\", \\\"value\\\": 17}'\"]\ntimeout = \"10s\"\nevery = \"1s\"\n",
    );
    for agent in [&science, &laoshan, &shibei] {
        agent.use_tls(&certs, &agent.unit);
        ok(agent.run(&["check"]));
    }

    let _daemons: Vec<_> = [&science, &laoshan, &shibei]
        .iter()
        .map(|a| a.spawn_daemon(&[]))
        .collect();
    wait_until(Duration::from_secs(60), "every value stored", || {
        value(&url, "pct-applications", "science-tech", "2018Q2").is_some()
            && value(&url, "pct-applications", "laoshan", "2018Q2").is_some()
            && value(&url, "lip-service-agencies", "laoshan", "2018Q1").is_some()
            && value(&url, "pct-applications", "shibei", "2018Q1").is_some()
    });
    assert_eq!(
        value(&url, "pct-applications", "science-tech", "2018Q1"),
        Some((120.0, 0))
    );
    assert_eq!(
        value(&url, "pct-applications", "laoshan", "2018Q2"),
        Some((44.0, 0))
    );
    assert_eq!(
        value(&url, "pct-applications", "shibei", "2018Q1"),
        Some((17.0, 0))
    );

    // A duplicate: the same signed envelope again, as after a lost acknowledgement.
    let envelope = first_stored_envelope(&root.path().join("aggregator/duban.db"), "science-tech");
    let report = <pb::Report as prost::Message>::decode(envelope.payload.as_slice()).unwrap();
    let read = |name: &str| std::fs::read(certs.join(name)).unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read("ca.crt")))
        .identity(tonic::transport::Identity::from_pem(
            read("units/science-tech.crt"),
            read("units/science-tech.key"),
        ))
        .domain_name("localhost");
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", aggregator.grpc))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let answer = ReportServiceClient::new(channel)
        .submit(envelope)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.outcome, pb::Outcome::Duplicate as i32, "{answer:?}");
    let report_id = hex::encode(&report.report_id);
    let stored = stored_reports(&url);
    assert_eq!(
        stored
            .iter()
            .filter(|r| r["report_id"] == report_id.as_str())
            .count(),
        1,
        "the duplicate is stored once"
    );
    let metrics = http_get(&aggregator.http.to_string(), "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("duban_reports_duplicate_total") && l.ends_with(" 1")),
        "{metrics}"
    );

    // A correction: the export changes a past period; the daemon sends a new revision.
    std::fs::write(
        &csv,
        "indicator,period,value\npct-applications,2018Q1,125\npct-applications,2018Q2,131\n",
    )
    .unwrap();
    wait_until(Duration::from_secs(30), "the correction stored", || {
        value(&url, "pct-applications", "science-tech", "2018Q1") == Some((125.0, 1))
    });
    let shown = ok(run(
        &binary("duban-aggregator"),
        &[
            "values",
            "show",
            "--database-url",
            &url,
            "--indicator",
            "pct-applications",
        ],
    ));
    assert!(shown.contains("125"), "{shown}");

    // The overdue alert: shibei's 2018Q2 (due 2018-07-30), to the lead unit science-tech, and
    // none for the periods that were reported. Evaluated now (status --as-of is a true history:
    // at 2018-08-01 none of these reports, all received today, had arrived).
    let status: serde_json::Value = serde_json::from_str(&ok(run(
        &binary("duban-aggregator"),
        &["status", "--database-url", &url, "--json"],
    )))
    .unwrap();
    let alerts = status["alerts"].as_array().unwrap();
    assert!(
        alerts
            .iter()
            .any(|a| is_overdue_alert(a, "shibei", "2018Q2")),
        "{alerts:?}"
    );
    assert!(
        !alerts
            .iter()
            .any(|a| is_overdue_alert(a, "shibei", "2018Q1"))
    );
    assert!(
        !alerts
            .iter()
            .any(|a| is_overdue_alert(a, "laoshan", "2018Q2"))
    );
    // The running aggregator (real time: long past every deadline) evaluates the same once
    // an evaluation has seen every stored value: an alert raised for laoshan's 2018Q2 before
    // its report arrived must be resolved by then.
    wait_until(
        Duration::from_secs(30),
        "/api/v1/alerts: shibei 2018Q2 overdue, laoshan 2018Q2 not",
        || {
            let api: serde_json::Value =
                serde_json::from_str(&http_get(&aggregator.http.to_string(), "/api/v1/alerts"))
                    .unwrap_or_default();
            api["alerts"].as_array().is_some_and(|a| {
                a.iter().any(|x| is_overdue_alert(x, "shibei", "2018Q2"))
                    && !a.iter().any(|x| is_overdue_alert(x, "laoshan", "2018Q2"))
            })
        },
    );
}

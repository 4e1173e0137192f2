//! The observability path with the real programs: the aggregator on a simulated clock, a real
//! agent, a real Prometheus scraping both, a real Alertmanager routing plan alerts to
//! `unit-<unit>` receivers by their recipient (a local webhook captures what they get), and
//! every PromQL expression of the shipped Grafana dashboards answered by that Prometheus.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use duban_aggregator::alerting::AlertSettings;
use duban_aggregator::clock::{Clock, ManualClock};
use duban_aggregator::serve::Serve;
use duban_aggregator::store::{AnyStore, NewKey, Store};
use duban_e2e::{AgentSetup, Background, require_program};
use duban_proto::{SigningKey, pb};
use serde_json::Value;

/// 2018-08-01T00:00:00+08:00.
const NOW_MS: i64 = 1_533_052_800_000;

type Received = Arc<Mutex<Vec<Value>>>;

async fn capture() -> (String, Received) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/lead/{unit}",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/lead", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, received)
}

fn notified(received: &Received, receiver: &str, status: &str, alertname: &str) -> bool {
    notified_with(received, receiver, status, alertname, &[])
}

fn notified_with(
    received: &Received,
    receiver: &str,
    status: &str,
    alertname: &str,
    labels: &[(&str, &str)],
) -> bool {
    received.lock().unwrap().iter().any(|m| {
        m["receiver"] == receiver
            && m["alerts"].as_array().is_some_and(|alerts| {
                alerts.iter().any(|a| {
                    a["status"] == status
                        && a["labels"]["alertname"] == alertname
                        && a["labels"]["recipient"] == receiver.trim_start_matches("unit-")
                        && labels.iter().all(|(k, v)| a["labels"][*k] == *v)
                })
            })
    })
}

async fn wait_async(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn dashboard_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for name in ["plan-overview", "ingest-and-agents"] {
        let path = format!(
            "{}/../deploy/grafana/dashboards/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        fn walk(v: &Value, name: &str, out: &mut Vec<(String, String)>) {
            match v {
                Value::Object(map) => {
                    if let Some(Value::String(expr)) = map.get("expr") {
                        out.push((name.to_owned(), expr.clone()));
                    }
                    let variable_query = map.get("query").and_then(|q| {
                        q.as_str()
                            .or_else(|| q.get("query").and_then(Value::as_str))
                    });
                    if map.get("type") == Some(&Value::String("query".into()))
                        && let Some(q) = variable_query
                    {
                        out.push((name.to_owned(), q.to_owned()));
                    }
                    map.values().for_each(|x| walk(x, name, out));
                }
                Value::Array(items) => items.iter().for_each(|x| walk(x, name, out)),
                _ => {}
            }
        }
        walk(&dashboard, name, &mut out);
    }
    out
}

/// `label_values(metric, label)` is Grafana's; ask Prometheus for the series instead.
fn as_promql(expr: &str) -> String {
    let expr = expr
        .replace("$lead_unit", ".*")
        .replace("${lead_unit}", ".*")
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s");
    match expr
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        Some(inner) => inner
            .rsplit_once(',')
            .map(|(metric, _)| metric.trim().to_owned())
            .unwrap_or_else(|| inner.to_owned()),
        None => expr,
    }
}

fn total_template() -> pb::Report {
    pb::Report {
        issued_at_ms: NOW_MS,
        audience: "qingdao-ip-2017".into(),
        period: "2018Q2".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_alerts_reach_lead_units_through_alertmanager_and_every_dashboard_query_has_data() {
    if !require_program("prometheus", "prometheus")
        || !require_program("prometheus-alertmanager", "prometheus-alertmanager")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (hook_base, received) = capture().await;

    // Alertmanager with the configuration generated from the plan, pointed at the capture, with
    // short timings so that a test sees groups flush.
    let plan = duban_aggregator::plan::embedded().plan;
    let config =
        duban_aggregator::alerting::amconfig::render(&plan, &hook_base, &Default::default())
            .unwrap()
            .replace("group_wait: 30s", "group_wait: 1s")
            .replace("group_interval: 5m", "group_interval: 1s")
            .replace("repeat_interval: 12h", "repeat_interval: 1h");
    std::fs::write(dir.path().join("alertmanager.yml"), config).unwrap();
    let am_args: Vec<String> = vec![
        format!(
            "--config.file={}",
            dir.path().join("alertmanager.yml").display()
        ),
        format!("--storage.path={}", dir.path().join("am").display()),
        "--web.listen-address=127.0.0.1:0".into(),
        "--cluster.listen-address=".into(),
    ];
    let alertmanager = Background::start("prometheus-alertmanager", &am_args, "Listening on");
    let am_addr = alertmanager.listening_on();

    // The aggregator in-process on a simulated clock: 2018-08-01.
    let url = format!("sqlite://{}", dir.path().join("duban.db").display());
    let store = AnyStore::open(&url).await.unwrap();
    let lead = SigningKey::from_seed(&[3; 32]);
    store
        .add_key(NewKey {
            key_id: lead.key_id(),
            unit_id: "science-tech".into(),
            public_key: *lead.public_key().raw(),
            not_before_ms: None,
            not_after_ms: None,
            added_at_ms: 0,
        })
        .await
        .unwrap();
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (grpc_addr, http_addr) = (grpc.local_addr().unwrap(), http.local_addr().unwrap());
    let mut alerts = AlertSettings {
        sinks: duban_aggregator::alerting::notify::Sinks {
            alertmanagers: vec![format!("http://{am_addr}")],
            webhooks: vec![],
        },
        evaluate_every: Duration::from_millis(300),
        resend_every: Duration::from_secs(1),
        ..Default::default()
    };
    // Live since the plan began: the deadlines missed before this aggregator first served are
    // alerted (by default they would be history, shown but not alerted).
    alerts.policy.go_live_ms = Some(NOW_MS - 400 * 86_400_000);
    let serve = Serve {
        plan: Arc::new(plan.clone()),
        store: store.clone(),
        clock: clock.clone() as Arc<dyn Clock>,
        tls: None,
        security: Default::default(),
        max_in_flight: 64,
        shutdown_grace: Duration::from_secs(2),
        alerts,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(duban_aggregator::serve::run(serve, grpc, http, async {
        let _ = stopped.await;
    }));

    // A real agent (laoshan) with /metrics, delivering one value.
    let agent = AgentSetup::new(
        dir.path(),
        &url,
        "laoshan",
        &format!("http://{grpc_addr}"),
        "",
    );
    let text = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(
        &agent.config,
        format!("{text}\n[metrics]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    let out = agent.run(&[
        "submit",
        "--indicator",
        "pct-applications",
        "--period",
        "2018Q2",
        "--value",
        "40",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut daemon = agent.spawn_daemon(&[]);
    let agent_metrics = agent.metrics_address();

    // Prometheus scraping both every second.
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: duban-aggregator\n    static_configs:\n      - targets: ['{http_addr}']\n  - job_name: duban-agent\n    static_configs:\n      - targets: ['{agent_metrics}']\n"),
    )
    .unwrap();
    let prom_args: Vec<String> = vec![
        format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ),
        format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()),
        "--web.listen-address=127.0.0.1:0".into(),
    ];
    let prometheus = Background::start(
        "prometheus",
        &prom_args,
        "Server is ready to receive web requests",
    );
    let prom_addr = prometheus.listening_on();

    // A milestone of 二(一)4 (lead 市科技局) closed on 2018-06-30 without an update, and laoshan's
    // 2018Q1 PCT figure (due 2018-04-30) never came: both reach 市科技局 (unit-science-tech),
    // and laoshan itself is asked for its report (催报).
    wait_async(
        Duration::from_secs(60),
        "ReportOverdue and TaskOverdue at unit-science-tech, ReportOverdue at unit-laoshan",
        || {
            notified_with(
                &received,
                "unit-science-tech",
                "firing",
                "ReportOverdue",
                &[("role", "lead")],
            ) && notified(&received, "unit-science-tech", "firing", "TaskOverdue")
                && notified_with(
                    &received,
                    "unit-laoshan",
                    "firing",
                    "ReportOverdue",
                    &[
                        ("role", "reporter"),
                        ("lead_unit", "science-tech"),
                        ("unit", "laoshan"),
                    ],
                )
        },
    )
    .await;

    // Every dashboard expression answers with data.
    let client = reqwest::Client::new();
    let query = |expr: String| {
        let (client, prom_addr) = (client.clone(), prom_addr.clone());
        async move {
            let url = reqwest::Url::parse_with_params(
                &format!("http://{prom_addr}/api/v1/query"),
                &[("query", expr.as_str())],
            )
            .unwrap();
            let response: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            response
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = query("sum(up)".into()).await;
        if up["data"]["result"][0]["value"][1] == "2" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped both targets: {up}\n{}",
            prometheus.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // 市科技局's city total for the quarter laoshan reported: the department/district gap.
    let mut grpc_client = pb::report_service_client::ReportServiceClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let total = pb::Report {
        report_id: vec![0x41; 16],
        unit_id: "science-tech".into(),
        seq: 1,
        values: vec![pb::IndicatorValue {
            indicator_id: "pct-applications".into(),
            value: 300.0,
            note: String::new(),
        }],
        ..total_template()
    };
    let result = grpc_client
        .submit(duban_proto::envelope::bind_and_sign(&lead, total))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        result.outcome(),
        pb::Outcome::Accepted,
        "{}",
        result.message
    );
    // laoshan's part, signed with the agent's own key on the simulated clock (the agent itself
    // stamps reports with the real clock, which this aggregator sees as years ahead and keeps
    // refusing as ISSUED_IN_FUTURE, a retryable reason: the agent's failure panels have data).
    let laoshan_key = SigningKey::read_pkcs8_pem_file(&agent.dir.join("signing.key")).unwrap();
    let part = pb::Report {
        report_id: vec![0x43; 16],
        unit_id: "laoshan".into(),
        seq: 1_000,
        values: vec![pb::IndicatorValue {
            indicator_id: "pct-applications".into(),
            value: 40.0,
            note: String::new(),
        }],
        ..total_template()
    };
    let result = grpc_client
        .submit(duban_proto::envelope::bind_and_sign(&laoshan_key, part))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        result.outcome(),
        pb::Outcome::Accepted,
        "{}",
        result.message
    );
    // Every dashboard expression answers with data once Prometheus has scraped enough (rates
    // need two samples of every counter, the gap a scrape after the report): wait for that.
    let queries = dashboard_queries();
    assert!(queries.len() > 20, "{} queries found", queries.len());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut empty = Vec::new();
        for (dashboard, expr) in &queries {
            let answer = query(as_promql(expr)).await;
            assert_eq!(answer["status"], "success", "{dashboard}: {expr}: {answer}");
            let result = &answer["data"]["result"];
            if result.as_array().is_some_and(Vec::is_empty) {
                empty.push(format!("{dashboard}: {expr}"));
            }
        }
        if empty.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let gap = query("duban_indicator_source_gap".into()).await;
            let values = query("duban_indicator_value".into()).await;
            panic!(
                "queries without data after 60 s:\n{}\n\nsource_gap: {gap}\nvalues: {values}",
                empty.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The reports arrive: the alerts resolve at the lead unit.
    let report = pb::Report {
        report_id: vec![0x42; 16],
        unit_id: "science-tech".into(),
        seq: 2,
        period: "2018-07".into(),
        task_updates: vec![pb::TaskUpdate {
            task_id: "2-1-4".into(),
            milestone_id: "m1".into(),
            percent_complete: 100.0,
            status: pb::TaskStatus::Done as i32,
            note: "完成".into(),
        }],
        ..total_template()
    };
    let result = grpc_client
        .submit(duban_proto::envelope::bind_and_sign(&lead, report))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        result.outcome(),
        pb::Outcome::Accepted,
        "{}",
        result.message
    );
    wait_async(
        Duration::from_secs(60),
        "TaskOverdue resolved at unit-science-tech",
        || {
            notified_with(
                &received,
                "unit-science-tech",
                "resolved",
                "TaskOverdue",
                &[("task", "2-1-4"), ("milestone", "m1")],
            )
        },
    )
    .await;
    // laoshan's overdue 2018Q1 PCT report arrives late: its ReportOverdue resolves too.
    let overdue = [
        ("unit", "laoshan"),
        ("indicator", "pct-applications"),
        ("period", "2018Q1"),
    ];
    assert!(
        notified_with(
            &received,
            "unit-science-tech",
            "firing",
            "ReportOverdue",
            &overdue
        ),
        "the 2018Q1 report was overdue"
    );
    let late = pb::Report {
        report_id: vec![0x44; 16],
        unit_id: "laoshan".into(),
        seq: 1_001,
        period: "2018Q1".into(),
        values: vec![pb::IndicatorValue {
            indicator_id: "pct-applications".into(),
            value: 35.0,
            note: "迟报".into(),
        }],
        ..total_template()
    };
    let result = grpc_client
        .submit(duban_proto::envelope::bind_and_sign(&laoshan_key, late))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        result.outcome(),
        pb::Outcome::Accepted,
        "{}",
        result.message
    );
    wait_async(
        Duration::from_secs(60),
        "ReportOverdue resolved at unit-science-tech",
        || {
            notified_with(
                &received,
                "unit-science-tech",
                "resolved",
                "ReportOverdue",
                &overdue,
            )
        },
    )
    .await;

    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    drop(prometheus);
    drop(alertmanager);
}

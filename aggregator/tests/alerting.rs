//! Plan alerts end to end in one process: a simulated clock, the evaluation loop, the webhook
//! sink against a local receiver that records what it gets, and the HTTP surfaces.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use duban_aggregator::alerting::AlertSettings;
use duban_aggregator::alerting::notify::Sinks;
use serde_json::Value;
use support::*;

type Received = Arc<Mutex<Vec<Value>>>;

async fn webhook_receiver() -> (String, Received) {
    receiver("/hook").await
}

/// An HTTP endpoint that records the JSON bodies POSTed to `path`; returns its URL.
async fn receiver(path: &str) -> (String, Received) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        path,
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}{path}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

async fn wait_for(received: &Received, what: &str, test: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(found) = received.lock().unwrap().iter().find(|v| test(v)).cloned() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no webhook message {what} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn has_alert(message: &Value, status: &str, labels: &[(&str, &str)]) -> bool {
    message["status"] == status
        && message["alerts"].as_array().is_some_and(|alerts| {
            alerts
                .iter()
                .any(|a| labels.iter().all(|(k, v)| a["labels"][*k] == *v))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overdue_report_alerts_its_lead_unit_and_resolves_when_the_report_arrives() {
    let (hook, received) = webhook_receiver().await;
    let mut alerts = AlertSettings {
        sinks: Sinks {
            alertmanagers: vec![],
            webhooks: vec![hook],
        },
        evaluate_every: Duration::from_millis(200),
        ..Default::default()
    };
    // Live since the plan began (by default, deadlines before the first start are history).
    alerts.policy.go_live_ms = Some(0);
    let server = TestServer::start(Options {
        alerts: Some(alerts),
        ..Default::default()
    })
    .await;
    // At 2018-04-10, laoshan's PCT figure for 2017Q4 (due 2018-01-30) is overdue. The lead
    // unit of pct-applications is 市科技局 (science-tech); laoshan itself is asked too (催报).
    let overdue = [
        ("alertname", "ReportOverdue"),
        ("unit", "laoshan"),
        ("indicator", "pct-applications"),
        ("period", "2017Q4"),
        ("lead_unit", "science-tech"),
        ("recipient", "science-tech"),
        ("role", "lead"),
    ];
    let fired = wait_for(&received, "firing ReportOverdue", |m| {
        has_alert(m, "firing", &overdue)
    })
    .await;
    assert_eq!(fired["receiver"], "unit-science-tech");
    let asked = wait_for(
        &received,
        "firing ReportOverdue to the reporting unit",
        |m| {
            has_alert(
                m,
                "firing",
                &[
                    ("alertname", "ReportOverdue"),
                    ("unit", "laoshan"),
                    ("period", "2017Q4"),
                    ("lead_unit", "science-tech"),
                    ("recipient", "laoshan"),
                    ("role", "reporter"),
                ],
            )
        },
    )
    .await;
    assert_eq!(asked["receiver"], "unit-laoshan");
    assert_eq!(fired["version"], "4");
    let alert = fired["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["unit"] == "laoshan" && a["labels"]["period"] == "2017Q4")
        .unwrap();
    assert_eq!(alert["labels"]["plan"], "qingdao-ip-2017");
    assert_eq!(
        alert["labels"]["severity"], "critical",
        "70 days overdue escalates to critical"
    );
    // Every alert kind that applies at this date carries the required labels.
    for message in received.lock().unwrap().iter() {
        for a in message["alerts"].as_array().unwrap() {
            for label in [
                "alertname",
                "severity",
                "lead_unit",
                "plan",
                "recipient",
                "role",
            ] {
                assert!(a["labels"][label].is_string(), "{label} missing in {a}");
            }
        }
    }

    let mut client = server.client().await;
    let result = client
        .submit(sign(
            &laoshan_key(),
            report("laoshan", 1, "2017Q4", &[("pct-applications", 30.0)]),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        result.outcome(),
        duban_proto::pb::Outcome::Accepted,
        "{}",
        result.message
    );
    let resolved = wait_for(&received, "resolved ReportOverdue", |m| {
        has_alert(m, "resolved", &overdue)
    })
    .await;
    let alert = resolved["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["period"] == "2017Q4" && a["labels"]["unit"] == "laoshan")
        .unwrap();
    assert_ne!(alert["endsAt"], "0001-01-01T00:00:00Z");
    // It fired once: exactly one firing message carried it.
    let firings = received
        .lock()
        .unwrap()
        .iter()
        .filter(|m| has_alert(m, "firing", &overdue))
        .count();
    assert_eq!(firings, 1);

    let (status, body) = server.http_get("/api/v1/alerts").await;
    assert_eq!(status, 200);
    let open: Value = serde_json::from_str(&body).unwrap();
    assert!(
        open["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["labels"]["alertname"] == "TaskLagging"
                || a["labels"]["alertname"] == "TaskOverdue"),
        "task alerts are open too"
    );
    let (status, body) = server.http_get("/api/v1/progress?as_of=2018-04-10").await;
    assert_eq!(status, 200);
    let progress: Value = serde_json::from_str(&body).unwrap();
    assert!(progress["indicators"].as_array().unwrap().len() >= 19);
    let (status, _) = server.http_get("/api/v1/progress?as_of=someday").await;
    assert_eq!(status, 400);
    // Without the obligations: the rest as it is.
    let (status, body) = server
        .http_get("/api/v1/progress?as_of=2018-04-10&obligations=false")
        .await;
    assert_eq!(status, 200);
    let summary: Value = serde_json::from_str(&body).unwrap();
    assert!(summary.get("obligations").is_none());
    assert!(!progress["obligations"].as_array().unwrap().is_empty());
    assert_eq!(summary["indicators"], progress["indicators"]);
    assert_eq!(summary["by_unit"], progress["by_unit"]);
    let (status, body) = server.http_get("/api/v1/progress?obligations=maybe").await;
    assert_eq!(status, 400);
    assert!(
        body.contains("obligations"),
        "the bad field is named: {body}"
    );
    let (_, metrics) = server.http_get("/metrics").await;
    for series in [
        "duban_indicator_info{",
        "duban_indicator_status{",
        "duban_task_status{",
        "duban_unit_completeness_ratio{",
        "duban_milestone_deadline_timestamp_seconds{",
    ] {
        assert!(metrics.contains(series), "{series} missing from /metrics");
    }
    let overdue_critical: f64 = metrics
        .lines()
        .find(|l| {
            l.starts_with("duban_alerts_active{")
                && l.contains("alertname=\"ReportOverdue\"")
                && l.contains("severity=\"critical\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("duban_alerts_active for ReportOverdue/critical");
    assert!(overdue_critical >= 1.0, "{overdue_critical}");
    promtool_check_metrics(&metrics);
    server.stop().await;
}

/// The plan-state series of one scrape in the worst case the plan allows: every unit has
/// reported every period and every milestone (so every value, gap and rate series exists),
/// every unit has an agent, and every alert of the plan's last day is open.
#[test]
fn plan_state_metrics_stay_within_the_documented_series_budget() {
    use duban_aggregator::alerting::rules::{AlertPolicy, derive};
    use duban_aggregator::metrics::plan_state::{plan_metrics, series_budget};
    use duban_aggregator::progress::{Snapshot, compute};
    use duban_aggregator::store::{AgentRow, AlertRow, TaskRow, ValueRow};
    let plan = duban_aggregator::plan::embedded().plan;
    let end = at("2020-12-31T00:00:00Z");
    let series = |text: &str| {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count()
    };
    let empty = compute(&plan, &Snapshot::default(), end);
    let at_rest = series(&plan_metrics(&plan, &empty, &[], &[]));

    let values: Vec<ValueRow> = empty
        .obligations
        .iter()
        .enumerate()
        .map(|(n, o)| ValueRow {
            plan_id: plan.id.as_str().into(),
            indicator_id: o.indicator.clone(),
            unit_id: o.unit.clone(),
            period: o.period.clone(),
            value: 1.0,
            note: String::new(),
            revision: 0,
            issued_at_ms: o.due_ms - 1,
            seq: n as i64 + 1,
            report_pk: n as i64 + 1,
            updated_at_ms: o.due_ms - 1,
            first_received_at_ms: o.due_ms - 1,
            first_issued_at_ms: o.due_ms - 1,
        })
        .collect();
    let tasks: Vec<TaskRow> = plan
        .tasks
        .iter()
        .flat_map(|t| {
            let units = plan.expand_parties(&t.responsible_units);
            t.milestones.iter().flat_map(move |m| {
                units
                    .clone()
                    .into_iter()
                    .map(move |unit| (t.id.clone(), m.id.clone(), unit))
            })
        })
        .enumerate()
        .map(|(n, (task, milestone, unit))| TaskRow {
            plan_id: plan.id.clone(),
            task_id: task,
            milestone_id: milestone,
            unit_id: unit,
            period: "2018".into(),
            percent: 50.0,
            status: "in_progress".into(),
            note: String::new(),
            revision: 0,
            issued_at_ms: end - 1,
            seq: n as i64 + 1,
            report_pk: n as i64 + 1,
            updated_at_ms: end - 1,
            first_received_at_ms: end - 1,
        })
        .collect();
    let full = compute(
        &plan,
        &Snapshot {
            values,
            tasks,
            ..Default::default()
        },
        end,
    );
    let agents: Vec<AgentRow> = plan
        .reporting_units()
        .iter()
        .map(|u| AgentRow {
            key_id: u.id.clone(),
            unit_id: u.id.clone(),
            first_seen_ms: end - 1,
            last_seen_ms: end - 1,
            agent_version: "test".into(),
            outbox_reports: 0,
            dead_letters: 0,
        })
        .collect();
    // Every alert the plan can have open on its last day with nothing received.
    let alerts: Vec<AlertRow> = derive(&plan, &empty, &AlertPolicy::default())
        .alerts
        .into_iter()
        .map(|a| AlertRow {
            key: a.key(),
            labels: a.labels,
            annotations: a.annotations,
            starts_at_ms: end,
            ends_at_ms: None,
        })
        .collect();
    assert!(alerts.len() > 100, "{} alerts", alerts.len());
    // And every alerted unit's 督办 record, with answers and decisions of every kind.
    let record = duban_aggregator::supervision::record(&plan, &alerts, &[], end);
    let mut record_full = record.clone();
    for u in &mut record_full.units {
        u.median_first_answer_ms = Some(1);
    }
    assert!(
        record.units.len() > 10,
        "{} alerted units",
        record.units.len()
    );
    let text = plan_metrics(&plan, &full, &alerts, &agents)
        + &duban_aggregator::metrics::plan_state::supervision_metrics(&plan, &record_full);
    let worst = series(&text);
    assert!(
        worst > at_rest,
        "values, gaps and rates add series: {worst} vs {at_rest} at rest"
    );
    let budget = series_budget(&plan);
    assert!(
        worst <= budget,
        "{worst} series for the Qingdao plan exceed its budget of {budget}"
    );
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            !line.contains("period=") && !line.contains("report_id="),
            "no per-period or per-report labels: {line}"
        );
    }
    eprintln!(
        "plan-state series for the Qingdao plan: {at_rest} at rest, {worst} at worst, budget {budget}"
    );
}

fn at(text: &str) -> i64 {
    text.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

/// An outage of the centre across a deadline: the evaluations the test drives stand for the
/// centre's (its uptime is what they record), so what happens is decided by the clock alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_the_centre_across_a_deadline_neither_makes_units_late_nor_alerts_them() {
    use duban_aggregator::alerting::Evaluator;
    use duban_aggregator::clock::Clock;
    use duban_aggregator::progress::ObligationStatus;
    let (hook, received) = webhook_receiver().await;
    let server = TestServer::start(Options {
        alerts: Some(AlertSettings {
            evaluate: false,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    let plan = Arc::new(duban_aggregator::plan::embedded().plan);
    let metrics = duban_aggregator::metrics::Metrics::new("sqlite");
    let evaluator = Evaluator {
        plan: plan.clone(),
        store: server.store.clone(),
        clock: server.clock.clone(),
        policy: duban_aggregator::alerting::rules::AlertPolicy {
            go_live_ms: Some(0),
            ..Default::default()
        },
        notifier: duban_aggregator::alerting::notify::Notifier::new(
            Sinks {
                alertmanagers: vec![],
                webhooks: vec![hook],
            },
            metrics.alert_notifications.clone(),
            "http://127.0.0.1:1".into(),
        ),
        metrics,
        every: Duration::from_secs(30),
        resend_every: Duration::from_secs(60),
        run_id: "centre".into(),
        views: Default::default(),
    };
    // PCT applications for 2018Q1 are due at the end of 2018-04-30 (Asia/Shanghai).
    server.clock.set_ms(at("2018-04-28T04:00:00Z"));
    evaluator.once(false).await.unwrap();
    // The centre is down from then until 2018-05-03; laoshan signed its figure on 2018-04-29,
    // shibei only on 2018-05-02, after the deadline.
    server.clock.set_ms(at("2018-05-03T04:00:00Z"));
    evaluator.once(false).await.unwrap();
    let overdue_2018q1 = |m: &Value| {
        m["alerts"].as_array().is_some_and(|alerts| {
            alerts.iter().any(|a| {
                a["labels"]["alertname"] == "ReportOverdue"
                    && a["labels"]["period"] == "2018Q1"
                    && a["labels"]["indicator"] == "pct-applications"
            })
        })
    };
    assert!(
        !received.lock().unwrap().iter().any(overdue_2018q1),
        "no unit is told it is overdue for a deadline that passed while the centre was down"
    );
    let mut client = server.client().await;
    for (key, unit, seq, signed) in [
        (laoshan_key(), "laoshan", 1, "2018-04-29T04:00:00Z"),
        (shibei_key(), "shibei", 1, "2018-05-02T04:00:00Z"),
    ] {
        let mut r = report(unit, seq, "2018Q1", &[("pct-applications", 7.0)]);
        r.issued_at_ms = at(signed);
        let result = client.submit(sign(&key, r)).await.unwrap().into_inner();
        assert_eq!(
            result.outcome(),
            duban_proto::pb::Outcome::Accepted,
            "{}",
            result.message
        );
    }
    let progress =
        duban_aggregator::store::progress_at(&server.store, &plan, server.clock.now_ms())
            .await
            .unwrap();
    let status = |unit: &str| {
        progress
            .obligations
            .iter()
            .find(|o| o.unit == unit && o.indicator == "pct-applications" && o.period == "2018Q1")
            .unwrap()
            .status
    };
    assert_eq!(
        status("laoshan"),
        ObligationStatus::OnTime,
        "signed before the deadline"
    );
    assert_eq!(status("shibei"), ObligationStatus::Late, "signed after it");
    // A day and six hours after the centre came back (the grace is a day), a report still
    // missing is overdue, and its alert says so in words that make sense on its first day.
    server.clock.set_ms(at("2018-05-04T10:00:00Z"));
    evaluator.once(false).await.unwrap();
    let fired = wait_for(&received, "ReportOverdue for a unit still missing", |m| {
        overdue_2018q1(m) && m["status"] == "firing"
    })
    .await;
    let alert = fired["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["alertname"] == "ReportOverdue")
        .unwrap();
    let summary = alert["annotations"]["summary"].as_str().unwrap();
    assert!(summary.contains("已逾期不足 1 天"), "{summary}");
    for message in received.lock().unwrap().iter() {
        assert!(!message.to_string().contains("逾期 0 天"), "{message}");
    }
    server.stop().await;
}

/// An evaluator over `store` with these sinks, its clock `clock`.
fn evaluator(
    store: duban_aggregator::store::AnyStore,
    clock: Arc<duban_aggregator::clock::ManualClock>,
    sinks: Sinks,
    run_id: &str,
) -> duban_aggregator::alerting::Evaluator {
    let metrics = duban_aggregator::metrics::Metrics::new("test");
    duban_aggregator::alerting::Evaluator {
        plan: Arc::new(duban_aggregator::plan::embedded().plan),
        store,
        clock,
        policy: duban_aggregator::alerting::rules::AlertPolicy {
            go_live_ms: Some(0),
            ..Default::default()
        },
        notifier: duban_aggregator::alerting::notify::Notifier::new(
            sinks,
            metrics.alert_notifications.clone(),
            "http://127.0.0.1:1".into(),
        ),
        metrics,
        // The tests jump the clock by days: a long interval keeps those jumps from reading as
        // outages of the centre (its uptime allows twice the interval between evaluations).
        every: Duration::from_secs(30 * 86_400),
        resend_every: Duration::from_secs(60),
        run_id: run_id.into(),
        views: Default::default(),
    }
}

/// Alertmanager gets every change at once, and the whole active set again every
/// `resend_every` of the evaluator's clock, not at each evaluation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_gets_changes_at_once_and_the_active_alerts_every_resend_every() {
    use duban_aggregator::alerting::Resend;
    let (base, received) = receiver("/api/v2/alerts").await;
    let base = base.trim_end_matches("/api/v2/alerts").to_owned();
    let server = TestServer::start(Options {
        alerts: Some(AlertSettings {
            evaluate: false,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    let evaluator = evaluator(
        server.store.clone(),
        server.clock.clone(),
        Sinks {
            alertmanagers: vec![base],
            webhooks: vec![],
        },
        "centre",
    );
    let posts = || received.lock().unwrap().len();
    let t0 = at("2018-05-10T04:00:00Z");
    let mut resend = Resend::default();
    server.clock.set_ms(t0);
    let fired = evaluator.tick(&mut resend).await.unwrap();
    assert!(!fired.fired.is_empty());
    assert_eq!(posts(), 1, "the first alerts are sent at once");
    let active = received.lock().unwrap()[0].as_array().unwrap().len();
    assert_eq!(active, fired.fired.len());

    // Nothing changed and the re-send is not due: nothing is sent.
    for seconds in [10, 30, 59] {
        server.clock.set_ms(t0 + seconds * 1000);
        evaluator.tick(&mut resend).await.unwrap();
        assert_eq!(posts(), 1, "at t0 + {seconds} s");
    }
    // resend_every (60 s) after the last send: the active alerts go again, all of them.
    server.clock.set_ms(t0 + 60_000);
    let again = evaluator.tick(&mut resend).await.unwrap();
    assert!(again.fired.is_empty() && again.resolved.is_empty());
    assert_eq!(posts(), 2);
    assert_eq!(
        received.lock().unwrap()[1].as_array().unwrap().len(),
        active
    );
    server.clock.set_ms(t0 + 90_000);
    evaluator.tick(&mut resend).await.unwrap();
    assert_eq!(posts(), 2);
    server.stop().await;
}

/// On PostgreSQL, one replica (the holder of the notifier lock) keeps the alert state and
/// sends: the other sends nothing, and takes over, sending what changed, when the holder's
/// connection dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_one_replica_sends_webhooks_and_another_takes_over_when_it_dies() {
    use duban_aggregator::store::{AnyStore, Store};
    use sqlx::Connection;
    let Some(base) = support::postgres_url(
        "on_postgres_one_replica_sends_webhooks_and_another_takes_over_when_it_dies",
    ) else {
        return;
    };
    let schema = PgSchema::create(&base).await;
    let a = AnyStore::open(&schema.url).await.unwrap();
    let b = AnyStore::open(&schema.url).await.unwrap();
    assert!(
        a.is_notifier().await.unwrap(),
        "the first to ask holds the lock"
    );
    assert!(!b.is_notifier().await.unwrap());
    // A week before 2018Q1 reports are due (2018-04-30): due-soon alerts.
    let clock = Arc::new(duban_aggregator::clock::ManualClock::new(at(
        "2018-04-25T04:00:00Z",
    )));
    let (hook_a, sent_a) = webhook_receiver().await;
    let (hook_b, sent_b) = webhook_receiver().await;
    let sinks = |hook: String| Sinks {
        alertmanagers: vec![],
        webhooks: vec![hook],
    };
    let replica_a = evaluator(a.clone(), clock.clone(), sinks(hook_a), "a");
    let replica_b = evaluator(b.clone(), clock.clone(), sinks(hook_b), "b");

    // B evaluates first: it is not the notifier, so it neither stores nor sends anything,
    // and A, evaluating next, finds every alert new and sends them.
    let by_b = replica_b.once(false).await.unwrap();
    assert!(by_b.fired.is_empty());
    assert!(sent_b.lock().unwrap().is_empty());
    let by_a = replica_a.once(false).await.unwrap();
    assert!(!by_a.fired.is_empty());
    assert!(!sent_a.lock().unwrap().is_empty());
    let sent_by_a = sent_a.lock().unwrap().len();

    // A's process dies: its connections (and the lock held on one of them) are cut. Only the
    // holder of this schema's notifier lock: other tests hold advisory locks too (migrations).
    // A bigint key shows as its high half in classid and its low half in objid.
    sqlx::any::install_default_drivers();
    let mut admin = sqlx::AnyConnection::connect(&schema.url).await.unwrap();
    let cut = sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND objsubid = 1 AND ((classid::int8 << 32) | objid::int8) = \
         hashtext(current_schema() || ':duban-notifier')::int8",
    )
    .execute(&mut admin)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(cut, 1, "one connection held the notifier lock");

    // The deadline has passed: B takes over and sends the overdue reports.
    clock.set_ms(at("2018-05-02T04:00:00Z"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let by_b = loop {
        let changes = replica_b.once(false).await.unwrap();
        if !changes.fired.is_empty() || !changes.resolved.is_empty() || !changes.active.is_empty() {
            break changes;
        }
        assert!(Instant::now() < deadline, "B did not take over within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        by_b.fired
            .iter()
            .any(|a| a.labels["alertname"] == "ReportOverdue"),
        "what changed since A's last evaluation"
    );
    assert!(sent_b.lock().unwrap().iter().any(|m| has_alert(
        m,
        "firing",
        &[("alertname", "ReportOverdue")]
    )));
    // A, back, is not the notifier any more: it sends nothing.
    assert!(!a.is_notifier().await.unwrap());
    replica_a.once(false).await.unwrap();
    assert_eq!(sent_a.lock().unwrap().len(), sent_by_a);
}

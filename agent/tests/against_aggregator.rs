//! The agent's delivery against the real aggregator (its gRPC service, ingest path and SQLite
//! store, in this process): refusals that are only "not yet" stay in the outbox, a dead
//! endpoint is failed over, a batch over the server's message limit is halved, and the
//! server's pushback at its concurrency limit is waited exactly.

#[path = "../../aggregator/tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use duban_agent::config::AgentConfig;
use duban_agent::daemon::Agent;
use duban_agent::deliver::Step;
use duban_agent::sources::Item;
use duban_aggregator::store::{NewKey, ReportFilter, Store};
use duban_host::clock::{Clock, ManualClock};
use duban_proto::SigningKey;
use support::{NOW_MS, Options, TestServer};

/// An agent for laoshan with `key`, delivering to `endpoints`, its clock at `now_ms`.
async fn agent(
    dir: &Path,
    key: &SigningKey,
    endpoints: &[String],
    batch: usize,
    now_ms: i64,
) -> (Agent, Arc<ManualClock>) {
    if !dir.join("signing.key").exists() {
        duban_proto::keys::write_keypair(dir, key).unwrap();
    }
    let endpoints: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    let text = format!(
        "unit = \"laoshan\"\nplan = \"qingdao-ip-2017\"\nprivate_key = \"signing.key\"\n\
         [aggregator]\nendpoints = [{}]\ninsecure_plaintext = true\ntimeout = \"5s\"\n\
         batch_max_reports = {batch}\n[outbox]\npath = \"outbox.db\"\n",
        endpoints.join(", ")
    );
    let config = AgentConfig::parse(&text, &dir.join("agent.toml")).unwrap();
    let clock = Arc::new(ManualClock::new(now_ms));
    let agent = Agent::open(config, clock.clone() as Arc<dyn Clock>)
        .await
        .unwrap();
    (agent, clock)
}

fn value(indicator: &str, value: f64, note: &str) -> Item {
    Item::Value {
        indicator: indicator.into(),
        period: "2018Q1".parse().unwrap(),
        value,
        note: note.into(),
    }
}

fn endpoint(server: &TestServer) -> String {
    format!("http://{}", server.grpc)
}

async fn stored(server: &TestServer) -> usize {
    server
        .store
        .reports(&ReportFilter::default())
        .await
        .unwrap()
        .len()
}

/// ISSUED_IN_FUTURE and KEY_NOT_YET_VALID say "not yet": the report stays in the outbox (no
/// dead letter, no hold) and is accepted once the clocks agree or the key becomes valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_that_mean_not_yet_stay_in_the_outbox_until_they_pass() {
    let later = SigningKey::from_seed(&[40; 32]);
    let server = TestServer::start(Options {
        extra_keys: vec![NewKey {
            not_before_ms: Some(NOW_MS + 3_600_000),
            ..support::key_record(&later, "laoshan")
        }],
        ..Default::default()
    })
    .await;

    // The agent's clock runs ten minutes ahead of the centre's.
    let dir = tempfile::tempdir().unwrap();
    let (ahead, _) = agent(
        dir.path(),
        &support::laoshan_key(),
        &[endpoint(&server)],
        200,
        NOW_MS + 10 * 60_000,
    )
    .await;
    ahead
        .enqueue(&[value("pct-applications", 3.0, "")], false)
        .await
        .unwrap();
    let mut deliverer = ahead.deliverer().await.unwrap();
    assert!(matches!(deliverer.step().await.unwrap(), Step::Wait(_)));
    let stats = ahead.outbox().stats().await.unwrap();
    assert_eq!((stats.reports, stats.dead_letters), (1, 0));
    assert_eq!(deliverer.held(), None, "not yet is not a hold");
    assert_eq!(
        ahead
            .metrics()
            .failed
            .with_label_values(&["rejected_retryable"])
            .get(),
        1
    );
    assert_eq!(stored(&server).await, 0);
    // The centre's clock catches up: the same report is accepted.
    server.clock.set_ms(NOW_MS + 10 * 60_000);
    assert_eq!(
        deliverer.step().await.unwrap(),
        Step::Progress { acked: 1, dead: 0 }
    );
    assert_eq!(stored(&server).await, 1);

    // A key registered to become valid in an hour.
    let dir = tempfile::tempdir().unwrap();
    let (early, _) = agent(dir.path(), &later, &[endpoint(&server)], 200, NOW_MS).await;
    server.clock.set_ms(NOW_MS);
    early
        .enqueue(&[value("lip-service-agencies", 4.0, "")], false)
        .await
        .unwrap();
    let mut deliverer = early.deliverer().await.unwrap();
    assert!(matches!(deliverer.step().await.unwrap(), Step::Wait(_)));
    let stats = early.outbox().stats().await.unwrap();
    assert_eq!((stats.reports, stats.dead_letters), (1, 0));
    server.clock.set_ms(NOW_MS + 2 * 3_600_000);
    early.outbox().close().await;
    let (early, _) = agent(dir.path(), &later, &[endpoint(&server)], 200, NOW_MS).await;
    let mut deliverer = early.deliverer().await.unwrap();
    let mut acked = 0;
    for _ in 0..3 {
        if let Step::Progress { acked: n, .. } = deliverer.step().await.unwrap() {
            acked += n;
        }
    }
    assert_eq!(acked, 1);
    assert_eq!(early.outbox().stats().await.unwrap().reports, 0);
    assert_eq!(stored(&server).await, 2);
    server.stop().await;
}

/// A listener that accepts connections and closes them at once: an endpoint that is there
/// but does not serve.
async fn dead_endpoint() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_failed_over_to_the_next() {
    let server = TestServer::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (agent, _) = agent(
        dir.path(),
        &support::laoshan_key(),
        &[dead_endpoint().await, endpoint(&server)],
        200,
        NOW_MS,
    )
    .await;
    agent
        .enqueue(&[value("pct-applications", 3.0, "")], false)
        .await
        .unwrap();
    let mut deliverer = agent.deliverer().await.unwrap();
    let Step::Wait(wait) = deliverer.step().await.unwrap() else {
        panic!("the first endpoint cannot answer");
    };
    assert!(wait <= duban_agent::deliver::BACKOFF_INITIAL);
    assert_eq!(stored(&server).await, 0);
    let mut acked = 0;
    for _ in 0..3 {
        if let Step::Progress { acked: n, .. } = deliverer.step().await.unwrap() {
            acked += n;
        }
    }
    assert_eq!(acked, 1, "delivered through the second endpoint");
    assert_eq!(stored(&server).await, 1);
    server.stop().await;
}

/// Everything laoshan may report for 2018Q1 (its quarterly indicators and the milestones of
/// its tasks), each with a note of `note_bytes` bytes, the value or percent `n`.
fn big_items(n: f64, note_bytes: usize) -> Vec<Item> {
    let plan = duban_aggregator::plan::embedded().plan;
    let note = "x".repeat(note_bytes);
    let values = plan
        .indicators
        .iter()
        .filter(|i| {
            i.reporter_units.iter().any(|u| u == "laoshan")
                && i.period == duban_aggregator::plan::PeriodType::Quarter
                && i.max.is_none()
        })
        .map(|i| value(&i.id, n, &note));
    let tasks = plan
        .tasks
        .iter()
        .filter(|t| plan.is_task_party("laoshan", t))
        .flat_map(|t| {
            t.milestones.iter().map(|m| Item::Task {
                task: t.id.clone(),
                milestone: m.id.clone(),
                period: "2018Q1".parse().unwrap(),
                percent: n % 100.0,
                status: duban_proto::pb::TaskStatus::InProgress,
                note: note.clone(),
            })
        });
    values.chain(tasks).collect()
}

/// A batch over the server's 8 MiB message limit is refused (OUT_OF_RANGE) and the agent
/// halves it until it passes; nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_message_limit_is_halved_until_it_passes() {
    let server = TestServer::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (agent, _) = agent(
        dir.path(),
        &support::laoshan_key(),
        &[endpoint(&server)],
        1000,
        NOW_MS,
    )
    .await;
    let per_report = big_items(0.0, 1000).len();
    assert!(
        per_report >= 9,
        "laoshan reports {per_report} quarterly indicators"
    );
    // 1000 revisions of laoshan's 2018Q1, each over 8 KiB: one batch of all is over 8 MiB.
    for n in 0..1000 {
        agent
            .enqueue(&big_items(f64::from(n), 1000), false)
            .await
            .unwrap();
    }
    let mut deliverer = agent.deliverer().await.unwrap();
    assert_eq!(deliverer.step().await.unwrap(), Step::Wait(Duration::ZERO));
    assert_eq!(agent.outbox().stats().await.unwrap().reports, 1000);
    assert_eq!(stored(&server).await, 0);
    assert_eq!(
        deliverer.step().await.unwrap(),
        Step::Progress {
            acked: 500,
            dead: 0
        }
    );
    assert!(
        agent
            .drain(
                &mut deliverer,
                std::time::Instant::now() + Duration::from_secs(120)
            )
            .await
            .unwrap()
    );
    let stats = agent.outbox().stats().await.unwrap();
    assert_eq!((stats.reports, stats.dead_letters), (0, 0));
    assert_eq!(stored(&server).await, 1000);
    server.stop().await;
}

/// At the server's `--max-in-flight`, the agent is told RESOURCE_EXHAUSTED with a pushback and
/// waits exactly that long (not a backoff of its own), keeping the report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_concurrency_limit_the_agent_waits_the_servers_pushback() {
    use sqlx::Connection;
    let server = TestServer::start(Options {
        max_in_flight: Some(1),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (agent, _) = agent(
        dir.path(),
        &support::laoshan_key(),
        &[endpoint(&server)],
        200,
        NOW_MS,
    )
    .await;
    agent
        .enqueue(&[value("pct-applications", 3.0, "")], false)
        .await
        .unwrap();
    let mut deliverer = agent.deliverer().await.unwrap();
    // Say Hello while the server is free, so that the next step is the batch itself.
    deliverer.hello().await.unwrap();

    // Another client holds the only slot: its commit waits on a lock held here.
    sqlx::any::install_default_drivers();
    let mut locker = sqlx::AnyConnection::connect(&server.database_url)
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut locker)
        .await
        .unwrap();
    let mut other = server.client().await;
    let busy = tokio::spawn(async move {
        other
            .submit(support::sign(
                &support::shibei_key(),
                support::report("shibei", 1, "2018Q1", &[("pct-applications", 1.0)]),
            ))
            .await
    });
    server
        .wait_for_metric("duban_requests_in_flight", 1.0)
        .await;

    assert_eq!(
        deliverer.step().await.unwrap(),
        Step::Wait(Duration::from_millis(
            duban_aggregator::grpc::RETRY_PUSHBACK_MS
        ))
    );
    assert_eq!(
        agent
            .metrics()
            .failed
            .with_label_values(&["resource_exhausted"])
            .get(),
        1
    );
    assert_eq!(agent.outbox().stats().await.unwrap().reports, 1);

    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    busy.await.unwrap().unwrap();
    server
        .wait_for_metric("duban_requests_in_flight", 0.0)
        .await;
    assert_eq!(
        deliverer.step().await.unwrap(),
        Step::Progress { acked: 1, dead: 0 }
    );
    server.stop().await;
}

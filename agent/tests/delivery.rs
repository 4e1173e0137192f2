//! Delivery against a scripted gRPC peer, for the answers a real aggregator gives only under
//! conditions a test cannot arrange on demand (overload, identity refusals). The real
//! aggregator is exercised in tests/ (duban-e2e); this peer speaks the same generated service.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use duban_agent::config::AgentConfig;
use duban_agent::daemon::Agent;
use duban_agent::deliver::Step;
use duban_agent::sources::Item;
use duban_proto::pb;
use duban_proto::pb::report_service_server::{ReportService, ReportServiceServer};
use tonic::{Request, Response, Status};

#[derive(Clone)]
enum Script {
    /// RESOURCE_EXHAUSTED with this pushback on the first call, then accept.
    BusyOnce(u64),
    /// Always this status.
    Refuse(tonic::Code),
    /// Every report rejected for this reason (the Hello passes).
    Reject(pb::ReasonCode),
}

#[derive(Clone)]
struct Peer {
    script: Script,
    calls: Arc<Mutex<Vec<Instant>>>,
}

#[tonic::async_trait]
impl ReportService for Peer {
    async fn submit(
        &self,
        _: Request<pb::SignedReport>,
    ) -> Result<Response<pb::SubmitResult>, Status> {
        Err(Status::unimplemented("the agent uses SubmitBatch"))
    }

    async fn respond(
        &self,
        _: Request<pb::SignedReport>,
    ) -> Result<Response<pb::SubmitResult>, Status> {
        Err(Status::unimplemented("these tests send no statements"))
    }

    async fn open_alerts(
        &self,
        _: Request<pb::SignedReport>,
    ) -> Result<Response<pb::AlertList>, Status> {
        Err(Status::unimplemented("these tests list no alerts"))
    }

    async fn hello(
        &self,
        _: Request<pb::SignedReport>,
    ) -> Result<Response<pb::HelloResult>, Status> {
        match &self.script {
            Script::Refuse(code) => Err(Status::new(*code, "scripted refusal")),
            Script::BusyOnce(_) | Script::Reject(_) => Ok(Response::new(pb::HelloResult {
                plan_id: "qingdao-ip-2017".into(),
                known: true,
                ..Default::default()
            })),
        }
    }

    async fn submit_batch(
        &self,
        request: Request<pb::SubmitBatchRequest>,
    ) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        let call = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(Instant::now());
            calls.len()
        };
        match &self.script {
            Script::BusyOnce(ms) if call == 1 => {
                let mut status = Status::resource_exhausted("busy");
                status
                    .metadata_mut()
                    .insert("grpc-retry-pushback-ms", ms.to_string().parse().unwrap());
                Err(status)
            }
            Script::Refuse(code) => Err(Status::new(*code, "scripted refusal")),
            Script::Reject(reason) => {
                let results = request
                    .into_inner()
                    .reports
                    .iter()
                    .map(|_| pb::SubmitResult {
                        outcome: pb::Outcome::Rejected as i32,
                        reason: *reason as i32,
                        message: "scripted rejection".into(),
                        ..Default::default()
                    })
                    .collect();
                Ok(Response::new(pb::SubmitBatchResponse { results }))
            }
            Script::BusyOnce(_) => {
                let results = request
                    .into_inner()
                    .reports
                    .iter()
                    .map(|_| pb::SubmitResult {
                        outcome: pb::Outcome::Accepted as i32,
                        ..Default::default()
                    })
                    .collect();
                Ok(Response::new(pb::SubmitBatchResponse { results }))
            }
        }
    }
}

async fn start_peer(script: Script) -> (String, Arc<Mutex<Vec<Instant>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let peer = Peer {
        script,
        calls: calls.clone(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ReportServiceServer::new(peer))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), calls)
}

async fn agent(dir: &Path, endpoint: &str) -> Agent {
    duban_proto::keys::write_keypair(dir, &duban_proto::SigningKey::generate()).unwrap();
    let text = format!(
        "unit = \"laoshan\"\nplan = \"qingdao-ip-2017\"\nprivate_key = \"signing.key\"\n[aggregator]\nendpoints = [\"{endpoint}\"]\ninsecure_plaintext = true\n[outbox]\npath = \"outbox.db\"\n"
    );
    let config = AgentConfig::parse(&text, &dir.join("agent.toml")).unwrap();
    // As if the centre had already told this new outbox where its key's seqs stand.
    let agent = Agent::open(config.clone(), Arc::new(duban_host::clock::SystemClock))
        .await
        .unwrap();
    agent
        .outbox()
        .apply_centre_state(
            0,
            &[],
            agent.identity().signer(&agent.identity().key.current()),
        )
        .await
        .unwrap();
    agent.outbox().close().await;
    let agent = Agent::open(config, Arc::new(duban_host::clock::SystemClock))
        .await
        .unwrap();
    let item = Item::Value {
        indicator: "pct-applications".into(),
        period: "2018Q1".parse().unwrap(),
        value: 3.0,
        note: String::new(),
    };
    agent.enqueue(&[item], false).await.unwrap();
    agent
}

#[tokio::test]
async fn resource_exhausted_waits_the_pushback_the_server_asks_for() {
    let (endpoint, calls) = start_peer(Script::BusyOnce(1500)).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path(), &endpoint).await;
    let mut deliverer = agent.deliverer().await.unwrap();
    assert!(
        agent
            .drain(&mut deliverer, Instant::now() + Duration::from_secs(10))
            .await
            .unwrap()
    );
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    assert!(
        calls[1] - calls[0] >= Duration::from_millis(1500),
        "retried after {:?}",
        calls[1] - calls[0]
    );
    assert_eq!(
        agent
            .metrics()
            .failed
            .with_label_values(&["resource_exhausted"])
            .get(),
        1
    );
    assert_eq!(agent.outbox().stats().await.unwrap().reports, 0);

    // The step itself asks for exactly the server's delay, not a backoff of its own.
    let (endpoint, _) = start_peer(Script::BusyOnce(2500)).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = self::agent(dir.path(), &endpoint).await;
    assert_eq!(
        agent.deliverer().await.unwrap().step().await.unwrap(),
        Step::Wait(Duration::from_millis(2500))
    );
}

#[tokio::test]
async fn identity_refusals_hold_the_outbox_and_say_so() {
    for code in [tonic::Code::Unauthenticated, tonic::Code::PermissionDenied] {
        let (endpoint, _) = start_peer(Script::Refuse(code)).await;
        let dir = tempfile::tempdir().unwrap();
        let agent = agent(dir.path(), &endpoint).await;
        let mut deliverer = agent.deliverer().await.unwrap();
        assert!(matches!(deliverer.step().await.unwrap(), Step::Wait(_)));
        assert_eq!(agent.metrics().auth_held.get(), 1, "{code:?}");
        let stats = agent.outbox().stats().await.unwrap();
        assert_eq!(
            (stats.reports, stats.dead_letters),
            (1, 0),
            "held, not dropped and not dead-lettered"
        );
    }
}

#[tokio::test]
async fn reports_refused_for_the_agents_identity_are_held_not_dead_lettered() {
    for reason in [
        pb::ReasonCode::ReasonUnitMismatch,
        pb::ReasonCode::ReasonWrongAudience,
        pb::ReasonCode::ReasonUnknownUnit,
        pb::ReasonCode::ReasonKeyRevoked,
        pb::ReasonCode::ReasonKeyExpired,
        pb::ReasonCode::ReasonUnknownKey,
    ] {
        let (endpoint, _) = start_peer(Script::Reject(reason)).await;
        let dir = tempfile::tempdir().unwrap();
        let agent = agent(dir.path(), &endpoint).await;
        let mut deliverer = agent.deliverer().await.unwrap();
        assert!(matches!(deliverer.step().await.unwrap(), Step::Wait(_)));
        assert_eq!(agent.metrics().auth_held.get(), 1, "{reason:?}");
        assert!(
            deliverer
                .held()
                .is_some_and(|why| why.contains(reason.as_str_name().trim_start_matches("REASON_"))),
            "{reason:?}: {:?}",
            deliverer.held()
        );
        let stats = agent.outbox().stats().await.unwrap();
        assert_eq!(
            (stats.reports, stats.dead_letters),
            (1, 0),
            "{reason:?}: held, not dead-lettered"
        );
    }
    // Another permanent reason is a dead letter, and the outbox is not held.
    let (endpoint, _) = start_peer(Script::Reject(pb::ReasonCode::ReasonBadPeriod)).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path(), &endpoint).await;
    let mut deliverer = agent.deliverer().await.unwrap();
    assert!(matches!(
        deliverer.step().await.unwrap(),
        Step::Progress { acked: 0, dead: 1 }
    ));
    assert_eq!(agent.metrics().auth_held.get(), 0);
    assert_eq!(agent.outbox().stats().await.unwrap().dead_letters, 1);
}

#[tokio::test]
async fn an_unreachable_aggregator_backs_off_and_keeps_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path(), "http://127.0.0.1:9").await;
    let mut deliverer = agent.deliverer().await.unwrap();
    let Step::Wait(wait) = deliverer.step().await.unwrap() else {
        panic!("expected a wait")
    };
    assert!(
        wait <= duban_agent::deliver::BACKOFF_INITIAL,
        "first backoff {wait:?} is within the initial second"
    );
    assert_eq!(agent.outbox().stats().await.unwrap().reports, 1);
    assert_eq!(
        agent
            .metrics()
            .failed
            .with_label_values(&["unavailable"])
            .get(),
        1
    );
}

//! The ingest path end to end in one process: a real gRPC server on port 0, a real SQLite
//! store, a tonic client. Each refusal the protocol promises, with its reason.

mod support;

use duban_aggregator::store::{ReportFilter, Store};
use duban_proto::pb;
use prost::Message;
use support::*;

fn outcome(result: &pb::SubmitResult) -> (pb::Outcome, pb::ReasonCode) {
    (result.outcome(), result.reason())
}

const ACCEPTED: (pb::Outcome, pb::ReasonCode) =
    (pb::Outcome::Accepted, pb::ReasonCode::ReasonUnspecified);

fn rejected(reason: pb::ReasonCode) -> (pb::Outcome, pb::ReasonCode) {
    (pb::Outcome::Rejected, reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_report_is_accepted_and_readable() {
    let server = TestServer::start(Options::default()).await;
    let mut client = server.client().await;
    let signed = sign(
        &laoshan_key(),
        report(
            "laoshan",
            1,
            "2018Q1",
            &[("pct-applications", 21.0), ("lip-service-agencies", 104.0)],
        ),
    );
    let result = client.submit(signed.clone()).await.unwrap().into_inner();
    assert_eq!(outcome(&result), ACCEPTED, "{}", result.message);
    assert_eq!(result.report_id.len(), 16);
    let values = server.store.current_values(PLAN_ID, None).await.unwrap();
    let got: Vec<(&str, &str, f64)> = values
        .iter()
        .map(|v| (v.indicator_id.as_str(), v.period.as_str(), v.value))
        .collect();
    assert_eq!(
        got,
        [
            ("lip-service-agencies", "2018Q1", 104.0),
            ("pct-applications", "2018Q1", 21.0)
        ]
    );
    let stored = server
        .store
        .envelope("laoshan", &result.report_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.payload, signed.payload,
        "the envelope is kept as received"
    );
    assert_eq!(server.metric("duban_reports_accepted_total").await, 1.0);
    assert_eq!(server.metric("duban_reports_received_total").await, 1.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exact_resubmission_is_a_duplicate_and_stores_nothing_new() {
    let server = TestServer::start(Options::default()).await;
    let mut client = server.client().await;
    let signed = sign(
        &laoshan_key(),
        report("laoshan", 1, "2018Q1", &[("pct-applications", 21.0)]),
    );
    client.submit(signed.clone()).await.unwrap();
    let again = client.submit(signed.clone()).await.unwrap().into_inner();
    assert_eq!(
        outcome(&again),
        (pb::Outcome::Duplicate, pb::ReasonCode::ReasonUnspecified)
    );
    assert_eq!(
        server
            .store
            .reports(&ReportFilter::default())
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(server.store.audit(PLAN_ID).await.unwrap().len(), 1);
    assert_eq!(server.metric("duban_reports_duplicate_total").await, 1.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_id_with_changed_bytes_is_refused_as_a_conflict() {
    let server = TestServer::start(Options::default()).await;
    let mut client = server.client().await;
    let first = report("laoshan", 1, "2018Q1", &[("pct-applications", 21.0)]);
    client
        .submit(sign(&laoshan_key(), first.clone()))
        .await
        .unwrap();
    let mut changed = first.clone();
    changed.values[0].value = 99.0;
    changed.seq = 2;
    let result = client
        .submit(sign(&laoshan_key(), changed))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        outcome(&result),
        rejected(pb::ReasonCode::ReasonReportIdConflict)
    );
    assert_eq!(
        server.store.current_values(PLAN_ID, None).await.unwrap()[0].value,
        21.0
    );
    assert_eq!(
        server
            .metric("duban_security_events_total{kind=\"report_id_conflict\"}")
            .await,
        1.0
    );
    assert_eq!(
        server
            .metric("duban_reports_rejected_total{reason=\"REPORT_ID_CONFLICT\"}")
            .await,
        1.0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_seq_is_refused() {
    let server = TestServer::start(Options::default()).await;
    let mut client = server.client().await;
    client
        .submit(sign(
            &laoshan_key(),
            report("laoshan", 7, "2018Q1", &[("pct-applications", 21.0)]),
        ))
        .await
        .unwrap();
    let mut other = report("laoshan", 7, "2018Q1", &[("pct-applications", 50.0)]);
    other.report_id = vec![0xee; 16];
    let result = client
        .submit(sign(&laoshan_key(), other))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(&result), rejected(pb::ReasonCode::ReasonSeqReplay));
    assert!(result.message.contains("seq 7"), "{}", result.message);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_a_running_server_within_seconds() {
    let server = TestServer::start(Options::default()).await;
    let mut client = server.client().await;
    // A report that is refused after the key check anyway (wrong audience), so that polling
    // stores nothing while the key is still valid.
    let mut probe = report("shibei", 1, "2018Q1", &[("pct-applications", 1.0)]);
    probe.audience = "another-plan".into();
    let probe = sign(&shibei_key(), probe);
    let before = client.submit(probe.clone()).await.unwrap().into_inner();
    assert_eq!(
        outcome(&before),
        rejected(pb::ReasonCode::ReasonWrongAudience)
    );
    server
        .store
        .revoke_key(shibei_key().key_id(), NOW_MS - 1)
        .await
        .unwrap();
    let revoked_at = std::time::Instant::now();
    loop {
        let result = client.submit(probe.clone()).await.unwrap().into_inner();
        if outcome(&result) == rejected(pb::ReasonCode::ReasonKeyRevoked) {
            break;
        }
        assert_eq!(
            outcome(&result),
            rejected(pb::ReasonCode::ReasonWrongAudience)
        );
        assert!(
            revoked_at.elapsed() < std::time::Duration::from_secs(10),
            "the revocation did not reach the server within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_issued_up_to_five_minutes_ahead_is_accepted() {
    // Each refusal has its own test in reasons.rs; this is the edge a clock may sit on.
    let server = TestServer::start(Options::default()).await;
    let mut client = server.client().await;
    let mut almost = report("laoshan", 4, "2018Q1", &[("pct-applications", 1.0)]);
    almost.issued_at_ms = NOW_MS + 5 * 60 * 1000;
    let result = client
        .submit(sign(&laoshan_key(), almost))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(&result), ACCEPTED, "{}", result.message);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_values_are_refused_one_by_one() {
    let server = TestServer::start(Options::default()).await;
    let mut client = server.client().await;
    // laoshan reports pct-applications (a district sum) but not trademarks (市工商局 only);
    // ms-certified-units is half-yearly, so a quarterly period does not fit it.
    let mut r = report(
        "laoshan",
        1,
        "2018Q1",
        &[
            ("pct-applications", 21.0),
            ("valid-registered-trademarks", 5.0),
            ("ms-certified-units", 3.0),
            ("no-such-indicator", 1.0),
            ("lip-service-agencies", f64::NAN),
            ("lip-service-agencies", -4.0),
        ],
    );
    r.task_updates = vec![
        pb::TaskUpdate {
            task_id: "2-3-2".into(),
            milestone_id: "m1".into(),
            percent_complete: 40.0,
            status: pb::TaskStatus::InProgress as i32,
            note: String::new(),
        },
        pb::TaskUpdate {
            task_id: "2-1-3".into(),
            milestone_id: "m1".into(),
            percent_complete: 40.0,
            status: pb::TaskStatus::InProgress as i32,
            note: String::new(),
        },
        pb::TaskUpdate {
            task_id: "2-3-2".into(),
            milestone_id: "m9".into(),
            percent_complete: 40.0,
            status: 0,
            note: String::new(),
        },
        pb::TaskUpdate {
            task_id: "2-1-1".into(),
            milestone_id: "m1".into(),
            percent_complete: 140.0,
            status: 0,
            note: String::new(),
        },
    ];
    let result = client
        .submit(sign(&laoshan_key(), r))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(result.outcome(), pb::Outcome::Partial, "{}", result.message);
    let refusals: Vec<(pb::ItemKind, u32, pb::RefusalCode)> = result
        .refusals
        .iter()
        .map(|r| (r.kind(), r.index, r.code()))
        .collect();
    assert_eq!(
        refusals,
        [
            (pb::ItemKind::Value, 1, pb::RefusalCode::RefusalNotAReporter),
            (
                pb::ItemKind::Value,
                2,
                pb::RefusalCode::RefusalPeriodTypeMismatch
            ),
            (
                pb::ItemKind::Value,
                3,
                pb::RefusalCode::RefusalUnknownIndicator
            ),
            (
                pb::ItemKind::Value,
                4,
                pb::RefusalCode::RefusalValueNotFinite
            ),
            (
                pb::ItemKind::Value,
                5,
                pb::RefusalCode::RefusalValueOutOfRange
            ),
            (
                pb::ItemKind::TaskUpdate,
                1,
                pb::RefusalCode::RefusalNotResponsible
            ),
            (
                pb::ItemKind::TaskUpdate,
                2,
                pb::RefusalCode::RefusalUnknownMilestone
            ),
            (
                pb::ItemKind::TaskUpdate,
                3,
                pb::RefusalCode::RefusalPercentOutOfRange
            ),
        ]
    );
    assert!(
        result.refusals[0].message.contains("laoshan"),
        "{}",
        result.refusals[0].message
    );
    let values = server.store.current_values(PLAN_ID, None).await.unwrap();
    assert_eq!(values.len(), 1, "only the valid value is stored");
    assert_eq!(values[0].indicator_id, "pct-applications");
    assert_eq!(
        server.store.current_tasks(PLAN_ID).await.unwrap().len(),
        1,
        "2-3-2 lists 崂山区政府 as responsible"
    );
    assert_eq!(
        server
            .metric("duban_items_refused_total{code=\"NOT_A_REPORTER\",kind=\"value\"}")
            .await,
        1.0
    );

    // A report whose every item is refused stores nothing.
    let all_bad = report("laoshan", 2, "2018Q1", &[("ms-certified-units", 3.0)]);
    let result = client
        .submit(sign(&laoshan_key(), all_bad))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        outcome(&result),
        rejected(pb::ReasonCode::ReasonNothingValid)
    );
    assert_eq!(
        result.refusals[0].code(),
        pb::RefusalCode::RefusalPeriodTypeMismatch
    );
    // So does an unparseable period.
    let bad_period = report("laoshan", 3, "2018-Q1", &[("pct-applications", 3.0)]);
    let result = client
        .submit(sign(&laoshan_key(), bad_period))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(&result), rejected(pb::ReasonCode::ReasonBadPeriod));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_input_gets_a_clear_error_and_the_server_keeps_serving() {
    let server = TestServer::start(Options::default()).await;
    let mut client = server.client().await;
    let mut big = report("laoshan", 1, "2018Q1", &[("pct-applications", 1.0)]);
    big.values[0].note = "x".repeat(70 * 1024);
    let signed = sign(&laoshan_key(), big);
    assert!(signed.payload.len() > duban_proto::envelope::MAX_PAYLOAD_LEN);
    let result = client.submit(signed.clone()).await.unwrap().into_inner();
    assert_eq!(
        outcome(&result),
        rejected(pb::ReasonCode::ReasonPayloadTooLarge)
    );
    assert!(result.message.contains("65536"), "{}", result.message);

    // A gRPC message over the 8 MiB limit fails the call, not the server.
    let batch = pb::SubmitBatchRequest {
        reports: vec![signed; 130],
    };
    assert!(batch.encoded_len() > 8 << 20);
    let status = client.submit_batch(batch).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status}");

    let mut fresh = server.client().await;
    let ok = fresh
        .submit(sign(
            &laoshan_key(),
            report("laoshan", 2, "2018Q1", &[("pct-applications", 2.0)]),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(&ok), ACCEPTED);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_each_report_in_order() {
    let server = TestServer::start(Options::default()).await;
    let mut client = server.client().await;
    let good = sign(
        &laoshan_key(),
        report("laoshan", 1, "2018Q1", &[("pct-applications", 1.0)]),
    );
    let mut tampered = sign(
        &shibei_key(),
        report("shibei", 1, "2018Q1", &[("pct-applications", 2.0)]),
    );
    tampered.signature[3] ^= 0x10;
    let other = sign(
        &science_tech_key(),
        report("science-tech", 1, "2018Q1", &[("pct-applications", 300.0)]),
    );
    let response = client
        .submit_batch(pb::SubmitBatchRequest {
            reports: vec![good.clone(), tampered, good, other],
        })
        .await
        .unwrap()
        .into_inner();
    let outcomes: Vec<_> = response.results.iter().map(outcome).collect();
    assert_eq!(
        outcomes,
        [
            ACCEPTED,
            rejected(pb::ReasonCode::ReasonBadSignature),
            (pb::Outcome::Duplicate, pb::ReasonCode::ReasonUnspecified),
            ACCEPTED
        ]
    );
    let empty = client
        .submit_batch(pb::SubmitBatchRequest { reports: vec![] })
        .await
        .unwrap_err();
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_reflection_are_served() {
    let server = TestServer::start(Options::default()).await;
    assert_eq!(server.http_get("/healthz").await.0, 200);
    let (status, body) = server.http_get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("qingdao-ip-2017"), "{body}");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let response = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "duban.report.v1.ReportService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        response.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_preset_every_reason() {
    let server = TestServer::start(Options::default()).await;
    let mut client = server.client().await;
    client
        .submit(sign(
            &laoshan_key(),
            report(
                "laoshan",
                1,
                "2018Q1",
                &[
                    ("pct-applications", 1.0),
                    ("valid-registered-trademarks", 3.0),
                ],
            ),
        ))
        .await
        .unwrap();
    let (status, body) = server.http_get("/metrics").await;
    assert_eq!(status, 200);
    for reason in duban_aggregator::ingest::Reason::ALL {
        assert!(
            body.contains(&format!(
                "duban_reports_rejected_total{{reason=\"{}\"}} 0",
                reason.name()
            )),
            "{} missing",
            reason.name()
        );
    }
    for name in [
        "duban_ingest_duration_seconds_bucket",
        "duban_store_duration_seconds_count",
        "duban_build_info{",
        "duban_seq_gaps_total",
        "duban_reports_partial_total 1",
    ] {
        assert!(body.contains(name), "{name} missing from /metrics");
    }
    promtool_check_metrics(&body);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_postgres_store_a_batch_once() {
    let Some(base) = support::postgres_url("two_replicas_on_one_postgres_store_a_batch_once")
    else {
        return;
    };
    let schema = support::PgSchema::create(&base).await;
    let a = TestServer::start(Options {
        database_url: Some(schema.url.clone()),
        ..Default::default()
    })
    .await;
    let b = TestServer::start(Options {
        database_url: Some(schema.url.clone()),
        ..Default::default()
    })
    .await;
    let reports: Vec<pb::SignedReport> = (1..=50)
        .map(|seq| {
            sign(
                &laoshan_key(),
                report(
                    "laoshan",
                    seq,
                    "2018Q1",
                    &[("pct-applications", seq as f64)],
                ),
            )
        })
        .collect();
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let batch = pb::SubmitBatchRequest { reports };
    let (ra, rb) = tokio::join!(ca.submit_batch(batch.clone()), cb.submit_batch(batch));
    let (ra, rb) = (
        ra.unwrap().into_inner().results,
        rb.unwrap().into_inner().results,
    );
    for (x, y) in ra.iter().zip(&rb) {
        let mut pair = [x.outcome(), y.outcome()];
        pair.sort_by_key(|o| *o as i32);
        assert_eq!(
            pair,
            [pb::Outcome::Accepted, pb::Outcome::Duplicate],
            "{x:?} / {y:?}"
        );
    }
    assert_eq!(
        a.store
            .reports(&ReportFilter::default())
            .await
            .unwrap()
            .len(),
        50
    );
    assert_eq!(
        a.store.current_values(PLAN_ID, None).await.unwrap()[0].value,
        50.0
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_answers_unavailable_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("duban.db");
    let url = format!("sqlite://{}", path.display());
    let server = TestServer::start(Options {
        database_url: Some(url.clone()),
        ..Default::default()
    })
    .await;
    let mut client = server.client().await;
    // Break the schema underneath the running server, as a full or damaged disk would.
    let mut admin = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE value_history RENAME TO value_history_away")
        .execute(&mut admin)
        .await
        .unwrap();
    let signed = sign(
        &laoshan_key(),
        report("laoshan", 1, "2018Q1", &[("pct-applications", 1.0)]),
    );
    let status = client.submit(signed.clone()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
    assert!(status.message().contains("retry"), "{status}");
    assert_eq!(server.metric("duban_store_errors_total").await, 1.0);
    // Repaired, the same report (as an agent would resend it) is accepted.
    sqlx::query("ALTER TABLE value_history_away RENAME TO value_history")
        .execute(&mut admin)
        .await
        .unwrap();
    assert!(
        server
            .store
            .reports(&ReportFilter::default())
            .await
            .unwrap()
            .is_empty(),
        "nothing half-written"
    );
    let result = client.submit(signed).await.unwrap().into_inner();
    assert_eq!(outcome(&result), ACCEPTED, "{}", result.message);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_report_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let server = TestServer::start(Options::default()).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected {response:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"duban.report.v1.ReportService".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
    server.stop().await;
}

/// `--max-in-flight` with real concurrent calls: while one call holds the only slot (its
/// commit waits on a lock another connection holds), the next is answered RESOURCE_EXHAUSTED
/// with the `grpc-retry-pushback-ms` trailer; once the slot is free, calls are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_in_flight_a_real_call_is_told_to_wait() {
    use duban_aggregator::grpc::RETRY_PUSHBACK_MS;
    use sqlx::Connection;
    let server = TestServer::start(Options {
        max_in_flight: Some(1),
        ..Default::default()
    })
    .await;
    sqlx::any::install_default_drivers();
    let mut locker = sqlx::AnyConnection::connect(&server.database_url)
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut locker)
        .await
        .unwrap();

    let mut first = server.client().await;
    let slow = tokio::spawn(async move {
        first
            .submit(sign(
                &laoshan_key(),
                report("laoshan", 1, "2018Q1", &[("pct-applications", 1.0)]),
            ))
            .await
    });
    server
        .wait_for_metric("duban_requests_in_flight", 1.0)
        .await;

    let mut second = server.client().await;
    let waiting = sign(
        &shibei_key(),
        report("shibei", 1, "2018Q1", &[("pct-applications", 2.0)]),
    );
    let status = second.submit(waiting.clone()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
    assert_eq!(
        status
            .metadata()
            .get("grpc-retry-pushback-ms")
            .expect("the pushback trailer")
            .to_str()
            .unwrap(),
        RETRY_PUSHBACK_MS.to_string()
    );
    let status = second
        .submit_batch(pb::SubmitBatchRequest {
            reports: vec![waiting.clone()],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(server.metric("duban_requests_overloaded_total").await, 2.0);

    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    let result = slow.await.unwrap().unwrap().into_inner();
    assert_eq!(outcome(&result), ACCEPTED, "{}", result.message);
    server
        .wait_for_metric("duban_requests_in_flight", 0.0)
        .await;
    let result = second.submit(waiting).await.unwrap().into_inner();
    assert_eq!(outcome(&result), ACCEPTED, "{}", result.message);
    server.stop().await;
}

/// `duban_seq_gaps_total` counts the seqs an agent skipped: 1 then 5 is a gap of 3; a late
/// seq below the highest fills nothing and adds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_seqs_are_counted_in_the_gap_metric() {
    let server = TestServer::start(Options::default()).await;
    let mut client = server.client().await;
    for (seq, period, gaps) in [(1, "2018Q1", 0.0), (5, "2018Q2", 3.0), (3, "2018Q3", 3.0)] {
        let result = client
            .submit(sign(
                &laoshan_key(),
                report("laoshan", seq, period, &[("pct-applications", 1.0)]),
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(outcome(&result), ACCEPTED, "{}", result.message);
        assert_eq!(
            server.metric("duban_seq_gaps_total").await,
            gaps,
            "after seq {seq}"
        );
    }
    server.stop().await;
}

//! The ingest path end to end in one process: a real gRPC server on port 0, a real SQLite
//! store, a tonic client. Each refusal the protocol promises, with its reason.

mod support;

use duban_aggregator::store::{NewKey, ReportFilter, Store};
use duban_proto::SigningKey;
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
async fn key_problems_are_refused_with_their_reason() {
    let revoked = SigningKey::from_seed(&[20; 32]);
    let expired = SigningKey::from_seed(&[21; 32]);
    let future = SigningKey::from_seed(&[22; 32]);
    let unknown = SigningKey::from_seed(&[23; 32]);
    // The revocation is in the database before the server starts.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("duban.db").display());
    {
        let store = duban_aggregator::store::AnyStore::open(&url).await.unwrap();
        store
            .add_key(key_record(&revoked, "laoshan"))
            .await
            .unwrap();
        store
            .revoke_key(revoked.key_id(), NOW_MS - 1000)
            .await
            .unwrap();
    }
    let server = TestServer::start(Options {
        database_url: Some(url),
        extra_keys: vec![
            NewKey {
                not_after_ms: Some(NOW_MS - 1),
                ..key_record(&expired, "laoshan")
            },
            NewKey {
                not_before_ms: Some(NOW_MS + 86_400_000),
                ..key_record(&future, "laoshan")
            },
        ],
        ..Default::default()
    })
    .await;
    let mut client = server.client().await;
    let cases = [
        (&unknown, 1, pb::ReasonCode::ReasonUnknownKey),
        (&revoked, 2, pb::ReasonCode::ReasonKeyRevoked),
        (&expired, 3, pb::ReasonCode::ReasonKeyExpired),
        (&future, 4, pb::ReasonCode::ReasonKeyNotYetValid),
    ];
    for (key, seq, reason) in cases {
        let signed = sign(
            key,
            report("laoshan", seq, "2018Q1", &[("pct-applications", 1.0)]),
        );
        let result = client.submit(signed).await.unwrap().into_inner();
        assert_eq!(outcome(&result), rejected(reason), "{}", result.message);
    }
    assert!(
        server
            .store
            .reports(&ReportFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
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
async fn a_tampered_payload_fails_the_signature() {
    let server = TestServer::start(Options::default()).await;
    let mut client = server.client().await;
    let mut signed = sign(
        &laoshan_key(),
        report("laoshan", 1, "2018Q1", &[("pct-applications", 21.0)]),
    );
    let last = signed.payload.len() - 1;
    signed.payload[last] ^= 0x01;
    let result = client.submit(signed).await.unwrap().into_inner();
    assert_eq!(
        outcome(&result),
        rejected(pb::ReasonCode::ReasonBadSignature)
    );
    assert_eq!(server.metric("duban_signature_failures_total").await, 1.0);
    assert!(
        server
            .store
            .reports(&ReportFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_checks_refuse_wrong_audience_unit_and_future_reports() {
    let server = TestServer::start(Options::default()).await;
    let mut client = server.client().await;
    let mut wrong_audience = report("laoshan", 1, "2018Q1", &[("pct-applications", 1.0)]);
    wrong_audience.audience = "another-plan".into();
    let mut wrong_unit = report("shibei", 2, "2018Q1", &[("pct-applications", 1.0)]);
    wrong_unit.report_id = vec![0xaa; 16];
    let mut future = report("laoshan", 3, "2018Q1", &[("pct-applications", 1.0)]);
    future.issued_at_ms = NOW_MS + 6 * 60 * 1000;
    let mut almost = report("laoshan", 4, "2018Q1", &[("pct-applications", 1.0)]);
    almost.issued_at_ms = NOW_MS + 4 * 60 * 1000;
    let mut short_id = report("laoshan", 5, "2018Q1", &[("pct-applications", 1.0)]);
    short_id.report_id = vec![1; 8];
    let cases = [
        (
            wrong_audience,
            rejected(pb::ReasonCode::ReasonWrongAudience),
        ),
        (wrong_unit, rejected(pb::ReasonCode::ReasonUnitMismatch)),
        (future, rejected(pb::ReasonCode::ReasonIssuedInFuture)),
        (almost, ACCEPTED),
        (short_id, rejected(pb::ReasonCode::ReasonBadReportId)),
    ];
    for (report, expected) in cases {
        let result = client
            .submit(sign(&laoshan_key(), report))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(outcome(&result), expected, "{}", result.message);
    }
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
async fn tls_identity_must_match_the_report_unit() {
    let server = TestServer::start(Options {
        tls: true,
        ..Default::default()
    })
    .await;
    let signed = sign(
        &laoshan_key(),
        report("laoshan", 1, "2018Q1", &[("pct-applications", 21.0)]),
    );

    let mut as_shibei = server.tls_client(Some("shibei")).await.unwrap();
    let result = as_shibei.submit(signed.clone()).await.unwrap().into_inner();
    assert_eq!(
        outcome(&result),
        rejected(pb::ReasonCode::ReasonUnitMismatch)
    );
    assert!(
        result
            .message
            .contains("client certificate names \"shibei\""),
        "{}",
        result.message
    );

    let mut as_laoshan = server.tls_client(Some("laoshan")).await.unwrap();
    let result = as_laoshan.submit(signed).await.unwrap().into_inner();
    assert_eq!(outcome(&result), ACCEPTED, "{}", result.message);

    // Without a client certificate the handshake itself is refused.
    let anonymous = match server.tls_client(None).await {
        Err(_) => None,
        Ok(mut client) => Some(
            client
                .submit(sign(
                    &laoshan_key(),
                    report("laoshan", 2, "2018Q1", &[("pct-applications", 1.0)]),
                ))
                .await,
        ),
    };
    assert!(
        !matches!(anonymous, Some(Ok(_))),
        "a client without a certificate was served"
    );
    // A plaintext client cannot talk to a TLS server.
    let plaintext = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plaintext {
        let mut client = pb::report_service_client::ReportServiceClient::new(channel);
        assert!(
            client
                .submit(sign(
                    &laoshan_key(),
                    report("laoshan", 3, "2018Q1", &[("pct-applications", 1.0)])
                ))
                .await
                .is_err()
        );
    }
    assert_eq!(
        server
            .store
            .reports(&ReportFilter::default())
            .await
            .unwrap()
            .len(),
        1
    );
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
async fn past_the_concurrency_limit_the_answer_is_resource_exhausted_with_a_delay() {
    use duban_aggregator::ingest::Ingestor;
    use duban_aggregator::server::{RETRY_PUSHBACK_MS, ReportServer};
    use duban_proto::pb::report_service_server::ReportService;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let store = duban_aggregator::store::AnyStore::open(&format!(
        "sqlite://{}",
        dir.path().join("d.db").display()
    ))
    .await
    .unwrap();
    let ingestor = Ingestor::new(
        Arc::new(duban_aggregator::plan::embedded().plan),
        Arc::default(),
        store,
        Arc::new(duban_aggregator::clock::ManualClock::new(NOW_MS)),
        duban_aggregator::metrics::Metrics::new("sqlite"),
    );
    let full = ReportServer::new(ingestor.clone(), 0, false);
    let signed = sign(
        &laoshan_key(),
        report("laoshan", 1, "2018Q1", &[("pct-applications", 1.0)]),
    );
    let status = full.submit(tonic::Request::new(signed)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    let pushback = status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .expect("pushback trailer")
        .to_str()
        .unwrap();
    assert_eq!(pushback, RETRY_PUSHBACK_MS.to_string());
    assert_eq!(ingestor.metrics().overloaded.get(), 1);
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

//! Every reason code and refusal code of docs/PROTOCOL.md, produced by the real gRPC service:
//! one test each, and a test that fails when the proto (or the document) gains a code that has
//! no test here. A rejected report changes nothing that was stored.

mod support;

use duban_aggregator::store::{NewKey, ReportFilter, Store};
use duban_proto::envelope::{self, PAYLOAD_TYPE};
use duban_proto::{SigningKey, pb};
use prost::Message;
use support::*;

use pb::ReasonCode as R;
use pb::RefusalCode as C;

/// Keys registered for the cases that need a key in a given state.
fn not_yet_valid_key() -> SigningKey {
    SigningKey::from_seed(&[30; 32])
}
fn expired_key() -> SigningKey {
    SigningKey::from_seed(&[31; 32])
}
fn revoked_key() -> SigningKey {
    SigningKey::from_seed(&[32; 32])
}
fn atlantis_key() -> SigningKey {
    SigningKey::from_seed(&[33; 32])
}

async fn server() -> TestServer {
    TestServer::start(Options {
        extra_keys: vec![
            NewKey {
                not_before_ms: Some(NOW_MS + 86_400_000),
                ..key_record(&not_yet_valid_key(), "laoshan")
            },
            NewKey {
                not_after_ms: Some(NOW_MS - 1),
                ..key_record(&expired_key(), "laoshan")
            },
            key_record(&revoked_key(), "laoshan"),
            // A key registered for a unit the plan does not know.
            key_record(&atlantis_key(), "atlantis"),
        ],
        revoked: vec![revoked_key().key_id()],
        ..Default::default()
    })
    .await
}

fn laoshan(seq: u64) -> pb::Report {
    report("laoshan", seq, "2018Q1", &[("pct-applications", 21.0)])
}

/// Everything the store holds that a report could change (security events apart), as text to
/// compare.
async fn stored(server: &TestServer) -> String {
    let s = &server.store;
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}",
        s.reports(&ReportFilter::default()).await.unwrap(),
        s.current_values(PLAN_ID, None).await.unwrap(),
        s.current_tasks(PLAN_ID).await.unwrap(),
        s.audit(PLAN_ID).await.unwrap(),
    )
}

/// Sends what comes before the case (if anything) and returns the envelopes that must be
/// refused with `code`.
async fn case(
    code: R,
    client: &mut pb::report_service_client::ReportServiceClient<tonic::transport::Channel>,
) -> Vec<pb::SignedReport> {
    let key = laoshan_key();
    match code {
        R::ReasonUnspecified => unreachable!("not a rejection"),
        R::ReasonUnknownAlert
        | R::ReasonNotARecipient
        | R::ReasonNotTheOffice
        | R::ReasonNothingToDecide
        | R::ReasonBadDate
        | R::ReasonBadStatement => unreachable!("statements only: see statement_case"),
        R::ReasonPayloadTooLarge => {
            let mut big = laoshan(1);
            big.values[0].note = "x".repeat(envelope::MAX_PAYLOAD_LEN);
            vec![sign(&key, big)]
        }
        R::ReasonBadPayloadType => vec![
            // Correctly signed, under another payload type.
            envelope::sign_payload_as(&key, "application/json", laoshan(1).encode_to_vec()),
            // A Hello is not a report.
            envelope::sign_payload_as(
                &key,
                envelope::HELLO_PAYLOAD_TYPE,
                laoshan(1).encode_to_vec(),
            ),
        ],
        R::ReasonBadKeyId => {
            let mut short = sign(&key, laoshan(1));
            short.key_id.truncate(31);
            let mut long = sign(&key, laoshan(1));
            long.key_id.push(0);
            vec![short, long]
        }
        R::ReasonUnknownKey => {
            let stranger = SigningKey::from_seed(&[99; 32]);
            vec![sign(&stranger, laoshan(1))]
        }
        R::ReasonKeyRevoked => vec![sign(&revoked_key(), laoshan(1))],
        R::ReasonKeyNotYetValid => vec![sign(&not_yet_valid_key(), laoshan(1))],
        R::ReasonKeyExpired => vec![sign(&expired_key(), laoshan(1))],
        R::ReasonBadSignature => {
            let mut flipped = sign(&key, laoshan(1));
            flipped.signature[5] ^= 0x20;
            let mut short = sign(&key, laoshan(1));
            short.signature.truncate(63);
            let mut tampered = sign(&key, laoshan(1));
            let last = tampered.payload.len() - 1;
            tampered.payload[last] ^= 0x01;
            vec![flipped, short, tampered]
        }
        R::ReasonMalformedPayload => {
            let mut zero = laoshan(0);
            zero.key_id = key.key_id().as_bytes().to_vec();
            let mut huge = laoshan(u64::MAX);
            huge.key_id = key.key_id().as_bytes().to_vec();
            vec![
                // Bytes that are not a Report, correctly signed.
                envelope::sign_payload(&key, vec![0xff; 40]),
                // A Report whose seq is 0, or beyond what a store can hold.
                envelope::sign(&key, &zero),
                envelope::sign(&key, &huge),
            ]
        }
        R::ReasonKeyMismatch => {
            // Signed by laoshan's key, but the report names shibei's.
            let mut other = laoshan(1);
            other.key_id = shibei_key().key_id().as_bytes().to_vec();
            let mut none = laoshan(2);
            none.key_id.clear();
            vec![envelope::sign(&key, &other), envelope::sign(&key, &none)]
        }
        R::ReasonUnitMismatch => {
            // shibei's key signing a report from laoshan.
            vec![sign(&shibei_key(), laoshan(1))]
        }
        R::ReasonWrongAudience => {
            let mut other = laoshan(1);
            other.audience = "another-plan".into();
            vec![sign(&key, other)]
        }
        R::ReasonIssuedInFuture => {
            let mut future = laoshan(1);
            future.issued_at_ms = NOW_MS + 5 * 60 * 1000 + 1;
            vec![sign(&key, future)]
        }
        R::ReasonUnknownUnit => vec![sign(
            &atlantis_key(),
            report("atlantis", 1, "2018Q1", &[("pct-applications", 1.0)]),
        )],
        R::ReasonBadPeriod => ["2018Q5", "2018-Q1", "18Q1", ""]
            .into_iter()
            .enumerate()
            .map(|(i, period)| {
                sign(
                    &key,
                    report(
                        "laoshan",
                        i as u64 + 1,
                        period,
                        &[("pct-applications", 1.0)],
                    ),
                )
            })
            .collect(),
        R::ReasonReportIdConflict => {
            accept(client, sign(&key, laoshan(1))).await;
            let mut changed = laoshan(2);
            changed.report_id = laoshan(1).report_id;
            changed.values[0].value = 99.0;
            vec![sign(&key, changed)]
        }
        R::ReasonSeqReplay => {
            accept(client, sign(&key, laoshan(5))).await;
            let mut again = laoshan(5);
            again.report_id = vec![0xee; 16];
            again.values[0].value = 22.0;
            vec![sign(&key, again)]
        }
        R::ReasonNothingValid => vec![
            sign(&key, report("laoshan", 1, "2018Q1", &[])),
            sign(&key, report("laoshan", 2, "2018Q1", &[("no-such", 1.0)])),
        ],
        R::ReasonTooManyItems => {
            // 1,001 values, or 1,001 task updates: refused whole, on a code of their own.
            let mut values = laoshan(1);
            values.values = (0..1001).map(|_| values.values[0].clone()).collect();
            let mut tasks = laoshan(2);
            tasks.task_updates = (0..1001)
                .map(|_| pb::TaskUpdate {
                    task_id: "2-3-2".into(),
                    milestone_id: "m1".into(),
                    percent_complete: 10.0,
                    status: pb::TaskStatus::InProgress as i32,
                    note: String::new(),
                })
                .collect();
            vec![sign(&key, values), sign(&key, tasks)]
        }
        R::ReasonBadReportId => {
            let mut short = laoshan(1);
            short.report_id.truncate(15);
            let mut empty = laoshan(2);
            empty.report_id.clear();
            vec![sign(&key, short), sign(&key, empty)]
        }
    }
}

async fn accept(
    client: &mut pb::report_service_client::ReportServiceClient<tonic::transport::Channel>,
    signed: pb::SignedReport,
) {
    let result = client.submit(signed).await.unwrap().into_inner();
    assert_eq!(
        result.outcome(),
        pb::Outcome::Accepted,
        "{}",
        result.message
    );
}

/// Sends the case's envelopes through the real service, each alone and all in one batch: each
/// is rejected with `code` and a message, the store is as before, and the metric counts them.
async fn refused_as(code: R) {
    let server = server().await;
    let mut client = server.client().await;
    let envelopes = case(code, &mut client).await;
    let before = stored(&server).await;
    for signed in &envelopes {
        let result = client.submit(signed.clone()).await.unwrap().into_inner();
        assert_eq!(
            (result.outcome(), result.reason()),
            (pb::Outcome::Rejected, code),
            "{}",
            result.message
        );
        assert!(!result.message.is_empty(), "{code:?} without a message");
    }
    let batch = client
        .submit_batch(pb::SubmitBatchRequest {
            reports: envelopes.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    for result in &batch.results {
        assert_eq!(
            (result.outcome(), result.reason()),
            (pb::Outcome::Rejected, code)
        );
    }
    assert_eq!(
        stored(&server).await,
        before,
        "a {code:?} changed the store"
    );
    // Conflicts and replays are security events, recorded with who sent them; nothing else is.
    let events = server.store.security_events().await.unwrap();
    let expected_kind = match code {
        R::ReasonReportIdConflict => Some("report_id_conflict"),
        R::ReasonSeqReplay => Some("seq_replay"),
        _ => None,
    };
    match expected_kind {
        Some(kind) => {
            assert_eq!(events.len(), 2 * envelopes.len(), "{events:?}");
            for event in &events {
                assert_eq!(event.kind, kind);
                assert_eq!(event.unit_id, "laoshan");
                assert_eq!(event.key_id, laoshan_key().key_id().as_bytes());
                assert_eq!(event.report_id.len(), 16);
                assert!(!event.detail.is_empty());
            }
            assert_eq!(
                server
                    .metric(&format!("duban_security_events_total{{kind=\"{kind}\"}}"))
                    .await,
                events.len() as f64
            );
        }
        None => assert!(events.is_empty(), "{events:?}"),
    }
    let name = code.as_str_name().trim_start_matches("REASON_");
    assert_eq!(
        server
            .metric(&format!(
                "duban_reports_rejected_total{{reason=\"{name}\"}}"
            ))
            .await,
        2.0 * envelopes.len() as f64
    );
    server.stop().await;
}

macro_rules! reason_tests {
    ($($name:ident => $code:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                refused_as(R::$code).await;
            }
        )*
        const REPORT_REASONS: &[R] = &[$(R::$code),*];
    };
}

/// The statements (`Respond`) that must be refused with `code`, after what comes before them.
async fn statement_case(
    code: R,
    client: &mut pb::report_service_client::ReportServiceClient<tonic::transport::Channel>,
) -> Vec<pb::SignedReport> {
    use pb::StatementKind as K;
    let (laoshan, office) = (laoshan_key(), office_key());
    let say =
        |key: &SigningKey, unit: &str, seq: u64, case: &str, kind: K, date: &str, text: &str| {
            statement(key, unit, seq, case, kind, date, text)
        };
    match code {
        R::ReasonUnknownAlert => vec![
            say(
                &laoshan,
                "laoshan",
                1,
                "report/pct-applications/2018Q2/laoshan",
                K::Acknowledge,
                "",
                "",
            ),
            say(
                &laoshan,
                "laoshan",
                2,
                "no-such-case",
                K::Acknowledge,
                "",
                "",
            ),
        ],
        // shibei was not alerted about laoshan's report.
        R::ReasonNotARecipient => vec![say(
            &shibei_key(),
            "shibei",
            1,
            REPORT_CASE,
            K::RequestExtension,
            "2018-06-30",
            "原因",
        )],
        // laoshan (a recipient) may not decide, not even about its own request.
        R::ReasonNotTheOffice => {
            let asked = say(
                &laoshan,
                "laoshan",
                1,
                REPORT_CASE,
                K::RequestExtension,
                "2018-06-30",
                "统计口径调整",
            );
            let result = client.respond(asked).await.unwrap().into_inner();
            assert_eq!(
                result.outcome(),
                pb::Outcome::Accepted,
                "{}",
                result.message
            );
            vec![
                say(
                    &laoshan,
                    "laoshan",
                    2,
                    REPORT_CASE,
                    K::GrantExtension,
                    "",
                    "",
                ),
                say(
                    &science_tech_key(),
                    "science-tech",
                    1,
                    REPORT_CASE,
                    K::ConfirmDone,
                    "",
                    "",
                ),
            ]
        }
        // Nothing asked, nothing claimed.
        R::ReasonNothingToDecide => vec![
            say(
                &office,
                "ip-office",
                1,
                REPORT_CASE,
                K::GrantExtension,
                "",
                "",
            ),
            say(
                &office,
                "ip-office",
                2,
                REPORT_CASE,
                K::RefuseExtension,
                "",
                "",
            ),
            say(
                &office,
                "ip-office",
                3,
                MILESTONE_CASE,
                K::ConfirmDone,
                "",
                "",
            ),
            say(
                &office,
                "ip-office",
                4,
                MILESTONE_CASE,
                K::RejectDone,
                "",
                "",
            ),
        ],
        // NOW_MS is 2018-04-10.
        R::ReasonBadDate => vec![
            say(
                &laoshan,
                "laoshan",
                1,
                REPORT_CASE,
                K::RequestExtension,
                "2018-04-09",
                "原因",
            ),
            say(
                &laoshan,
                "laoshan",
                2,
                REPORT_CASE,
                K::RequestExtension,
                "",
                "原因",
            ),
            say(
                &laoshan,
                "laoshan",
                3,
                REPORT_CASE,
                K::Explain,
                "2018/05/01",
                "原因",
            ),
        ],
        R::ReasonBadStatement => {
            let mut unspecified = pb::Statement {
                statement_id: vec![7; 16],
                unit_id: "laoshan".into(),
                seq: 9,
                issued_at_ms: NOW_MS,
                audience: PLAN_ID.into(),
                case_id: REPORT_CASE.into(),
                ..Default::default()
            };
            unspecified.kind = K::Unspecified as i32;
            vec![
                envelope::sign_statement(&laoshan, unspecified),
                // An extension needs its reason, a done claim its reference.
                say(
                    &laoshan,
                    "laoshan",
                    1,
                    REPORT_CASE,
                    K::RequestExtension,
                    "2018-06-30",
                    " ",
                ),
                say(&laoshan, "laoshan", 2, REPORT_CASE, K::ClaimDone, "", ""),
                say(
                    &laoshan,
                    "laoshan",
                    3,
                    REPORT_CASE,
                    K::Acknowledge,
                    "",
                    &"长".repeat(400),
                ),
            ]
        }
        other => unreachable!("{other:?} is tested with reports"),
    }
}

/// Sends the case's statements through the real `Respond`: each is refused with `code` and a
/// message, the record is as before, and the metric counts them.
async fn statement_refused_as(code: R) {
    let server = TestServer::start(Options {
        extra_keys: vec![key_record(&office_key(), "ip-office")],
        ..Default::default()
    })
    .await;
    seed_alerts(&server).await;
    let mut client = server.client().await;
    let statements = statement_case(code, &mut client).await;
    let record = || async { server.store.statements(PLAN_ID, i64::MAX).await.unwrap() };
    let before = record().await;
    for signed in &statements {
        let result = client.respond(signed.clone()).await.unwrap().into_inner();
        assert_eq!(
            (result.outcome(), result.reason()),
            (pb::Outcome::Rejected, code),
            "{}",
            result.message
        );
        assert!(!result.message.is_empty(), "{code:?} without a message");
    }
    assert_eq!(record().await, before, "a {code:?} changed the record");
    let name = code.as_str_name().trim_start_matches("REASON_");
    let mut counted = 0.0;
    for kind in [
        "unspecified",
        "acknowledge",
        "explain",
        "request_extension",
        "claim_done",
        "grant_extension",
        "refuse_extension",
        "confirm_done",
        "reject_done",
    ] {
        counted += server
            .try_metric(&format!(
                "duban_statements_total{{kind=\"{kind}\",result=\"{name}\"}}"
            ))
            .await
            .unwrap_or(0.0);
    }
    assert_eq!(counted, statements.len() as f64);
    server.stop().await;
}

macro_rules! statement_reason_tests {
    ($($name:ident => $code:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                statement_refused_as(R::$code).await;
            }
        )*
        const STATEMENT_REASONS: &[R] = &[$(R::$code),*];
    };
}

statement_reason_tests! {
    statement_unknown_alert => ReasonUnknownAlert,
    statement_not_a_recipient => ReasonNotARecipient,
    statement_not_the_office => ReasonNotTheOffice,
    statement_nothing_to_decide => ReasonNothingToDecide,
    statement_bad_date => ReasonBadDate,
    statement_bad_statement => ReasonBadStatement,
}

reason_tests! {
    payload_too_large => ReasonPayloadTooLarge,
    bad_payload_type => ReasonBadPayloadType,
    bad_key_id => ReasonBadKeyId,
    unknown_key => ReasonUnknownKey,
    key_revoked => ReasonKeyRevoked,
    key_not_yet_valid => ReasonKeyNotYetValid,
    key_expired => ReasonKeyExpired,
    bad_signature => ReasonBadSignature,
    malformed_payload => ReasonMalformedPayload,
    key_mismatch => ReasonKeyMismatch,
    unit_mismatch => ReasonUnitMismatch,
    wrong_audience => ReasonWrongAudience,
    issued_in_future => ReasonIssuedInFuture,
    unknown_unit => ReasonUnknownUnit,
    bad_period => ReasonBadPeriod,
    report_id_conflict => ReasonReportIdConflict,
    seq_replay => ReasonSeqReplay,
    nothing_valid => ReasonNothingValid,
    bad_report_id => ReasonBadReportId,
    too_many_items => ReasonTooManyItems,
}

/// A refused item next to a good value: the report is stored without it (`PARTIAL`), with one
/// refusal carrying `code` at the item's index; or, where the code concerns the whole period,
/// every item is refused and nothing is stored (`NOTHING_VALID`).
async fn item_refused_as(code: C) {
    let server = server().await;
    let mut client = server.client().await;
    let mut r = laoshan(1);
    let task = |task: &str, milestone: &str, percent: f64| pb::TaskUpdate {
        task_id: task.into(),
        milestone_id: milestone.into(),
        percent_complete: percent,
        status: pb::TaskStatus::InProgress as i32,
        note: String::new(),
    };
    let value = |id: &str, v: f64| pb::IndicatorValue {
        indicator_id: id.into(),
        value: v,
        note: String::new(),
    };
    // laoshan reports pct-applications and lip-service-agencies (quarterly), not trademarks
    // (市工商局 only) nor ms-certified-units (half-yearly); it is responsible for 2-3-2, not
    // for 2-1-3.
    let kind = match code {
        C::RefusalUnspecified => unreachable!("not a refusal"),
        C::RefusalUnknownIndicator => {
            r.values.push(value("no-such-indicator", 1.0));
            pb::ItemKind::Value
        }
        C::RefusalNotAReporter => {
            r.values.push(value("valid-registered-trademarks", 5.0));
            pb::ItemKind::Value
        }
        C::RefusalPeriodTypeMismatch => {
            r.values.push(value("ms-certified-units", 3.0));
            pb::ItemKind::Value
        }
        C::RefusalPeriodOutsidePlan => {
            r.period = "2016Q1".into();
            r.task_updates.push(task("2-3-2", "m1", 10.0));
            pb::ItemKind::Value
        }
        C::RefusalValueNotFinite => {
            r.values.push(value("lip-service-agencies", f64::INFINITY));
            pb::ItemKind::Value
        }
        C::RefusalValueOutOfRange => {
            r.values.push(value("lip-service-agencies", -4.0));
            pb::ItemKind::Value
        }
        C::RefusalUnknownTask => {
            r.task_updates.push(task("9-9-9", "m1", 10.0));
            pb::ItemKind::TaskUpdate
        }
        C::RefusalUnknownMilestone => {
            r.task_updates.push(task("2-3-2", "m9", 10.0));
            pb::ItemKind::TaskUpdate
        }
        C::RefusalNotResponsible => {
            r.task_updates.push(task("2-1-3", "m1", 10.0));
            pb::ItemKind::TaskUpdate
        }
        C::RefusalPercentOutOfRange => {
            r.task_updates.push(task("2-3-2", "m1", 100.5));
            pb::ItemKind::TaskUpdate
        }
        C::RefusalNoteTooLong => {
            let mut long = value("lip-service-agencies", 4.0);
            long.note = "备".repeat(342); // 1,026 bytes of UTF-8
            r.values.push(long);
            pb::ItemKind::Value
        }
        C::RefusalDuplicateEntry => {
            r.values.push(value("pct-applications", 22.0));
            pb::ItemKind::Value
        }
        C::RefusalIdTooLong => {
            // 129 bytes: refused on its own code, whatever the plan holds.
            r.task_updates.push(task("2-3-2", &"m".repeat(129), 10.0));
            pb::ItemKind::TaskUpdate
        }
    };
    let result = client
        .submit(sign(&laoshan_key(), r))
        .await
        .unwrap()
        .into_inner();
    let refusals: Vec<(pb::ItemKind, u32, C)> = result
        .refusals
        .iter()
        .map(|r| (r.kind(), r.index, r.code()))
        .collect();
    let values = server.store.current_values(PLAN_ID, None).await.unwrap();
    let kind_label = match kind {
        pb::ItemKind::Value => "value",
        _ => "task_update",
    };
    let name = code.as_str_name().trim_start_matches("REFUSAL_");
    if code == C::RefusalPeriodOutsidePlan {
        assert_eq!(
            (result.outcome(), result.reason()),
            (pb::Outcome::Rejected, R::ReasonNothingValid)
        );
        assert_eq!(
            refusals,
            [
                (pb::ItemKind::Value, 0, code),
                (pb::ItemKind::TaskUpdate, 0, code)
            ]
        );
        assert!(values.is_empty());
    } else {
        assert_eq!(result.outcome(), pb::Outcome::Partial, "{}", result.message);
        let index = if kind == pb::ItemKind::Value { 1 } else { 0 };
        assert_eq!(refusals, [(kind, index, code)]);
        assert!(!result.refusals[0].message.is_empty());
        let got: Vec<(&str, f64)> = values
            .iter()
            .map(|v| (v.indicator_id.as_str(), v.value))
            .collect();
        assert_eq!(got, [("pct-applications", 21.0)], "only the good value");
        assert!(
            server
                .store
                .current_tasks(PLAN_ID)
                .await
                .unwrap()
                .is_empty()
        );
    }
    assert_eq!(
        server
            .metric(&format!(
                "duban_items_refused_total{{code=\"{name}\",kind=\"{kind_label}\"}}"
            ))
            .await,
        1.0
    );
    server.stop().await;
}

macro_rules! refusal_tests {
    ($($name:ident => $code:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                item_refused_as(C::$code).await;
            }
        )*
        const TESTED_REFUSALS: &[C] = &[$(C::$code),*];
    };
}

refusal_tests! {
    item_unknown_indicator => RefusalUnknownIndicator,
    item_not_a_reporter => RefusalNotAReporter,
    item_period_type_mismatch => RefusalPeriodTypeMismatch,
    item_period_outside_plan => RefusalPeriodOutsidePlan,
    item_value_not_finite => RefusalValueNotFinite,
    item_value_out_of_range => RefusalValueOutOfRange,
    item_unknown_task => RefusalUnknownTask,
    item_unknown_milestone => RefusalUnknownMilestone,
    item_not_responsible => RefusalNotResponsible,
    item_percent_out_of_range => RefusalPercentOutOfRange,
    item_note_too_long => RefusalNoteTooLong,
    item_duplicate_entry => RefusalDuplicateEntry,
    item_id_too_long => RefusalIdTooLong,
}

/// The codes of one table of docs/PROTOCOL.md (the first column, between backticks).
fn documented(heading: &str) -> Vec<String> {
    let doc = include_str!("../../docs/PROTOCOL.md");
    let table = doc
        .split(heading)
        .nth(1)
        .unwrap_or_else(|| panic!("PROTOCOL.md has no {heading}"));
    table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('`').nth(1).map(str::to_owned))
        .collect()
}

#[test]
fn every_reason_code_of_the_proto_and_the_protocol_has_a_test() {
    let in_proto: Vec<R> = (1..=255).filter_map(|n| R::try_from(n).ok()).collect();
    let missing: Vec<&R> = in_proto
        .iter()
        .filter(|c| !REPORT_REASONS.contains(c) && !STATEMENT_REASONS.contains(c))
        .collect();
    assert!(
        missing.is_empty(),
        "reason codes without a test in aggregator/tests/reasons.rs: {missing:?}"
    );
    let names: Vec<String> = in_proto
        .iter()
        .map(|c| c.as_str_name().trim_start_matches("REASON_").to_owned())
        .collect();
    assert_eq!(
        documented("### Reason codes"),
        names,
        "docs/PROTOCOL.md's reason codes differ from the proto's"
    );
}

/// The "retry?" column of PROTOCOL.md's reason table is what both sides act on.
#[test]
fn the_documented_retryable_reasons_are_the_wire_crates() {
    let doc = include_str!("../../docs/PROTOCOL.md");
    let table = doc.split("### Reason codes").nth(1).unwrap();
    let retryable: Vec<String> = table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter(|l| l.contains("**yes**"))
        .filter_map(|l| l.split('`').nth(1).map(str::to_owned))
        .collect();
    let in_proto: Vec<String> = duban_proto::reasons::RETRYABLE
        .iter()
        .map(|c| duban_proto::reasons::name(*c).to_owned())
        .collect();
    assert_eq!(retryable, in_proto);
}

#[test]
fn every_refusal_code_of_the_proto_and_the_protocol_has_a_test() {
    let in_proto: Vec<C> = (1..=255).filter_map(|n| C::try_from(n).ok()).collect();
    let missing: Vec<&C> = in_proto
        .iter()
        .filter(|c| !TESTED_REFUSALS.contains(c))
        .collect();
    assert!(
        missing.is_empty(),
        "refusal codes without a test in aggregator/tests/reasons.rs: {missing:?}"
    );
    let names: Vec<String> = in_proto
        .iter()
        .map(|c| c.as_str_name().trim_start_matches("REFUSAL_").to_owned())
        .collect();
    assert_eq!(
        documented("### Refusal codes"),
        names,
        "docs/PROTOCOL.md's refusal codes differ from the proto's"
    );
}

/// The server checks the signature before it decodes anything: a badly signed envelope whose
/// payload is not even a Report is BAD_SIGNATURE, never MALFORMED_PAYLOAD, and the decoder does
/// not run. Only a well-signed one is decoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signature_is_checked_before_the_payload_is_decoded() {
    let server = server().await;
    let mut client = server.client().await;
    let key = laoshan_key();
    let mut garbage = envelope::sign_payload(&key, vec![0xff; 40]);
    garbage.signature[0] ^= 0x01;
    assert!(pb::Report::decode(garbage.payload.as_slice()).is_err());
    let result = client.submit(garbage.clone()).await.unwrap().into_inner();
    assert_eq!(
        (result.outcome(), result.reason()),
        (pb::Outcome::Rejected, R::ReasonBadSignature),
        "{}",
        result.message
    );
    // The same through a Hello.
    let mut garbage_hello =
        envelope::sign_payload_as(&key, envelope::HELLO_PAYLOAD_TYPE, vec![0xff; 40]);
    garbage_hello.signature[0] ^= 0x01;
    let hello = client.hello(garbage_hello).await.unwrap().into_inner();
    assert_eq!(
        hello.problems.iter().map(|p| p.code()).collect::<Vec<_>>(),
        [R::ReasonBadSignature]
    );
    assert_eq!(server.metric("duban_signature_failures_total").await, 2.0);
    assert_eq!(server.metric("duban_payloads_decoded_total").await, 0.0);

    let well_signed_garbage = envelope::sign_payload(&key, vec![0xff; 40]);
    let result = client
        .submit(well_signed_garbage)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(result.reason(), R::ReasonMalformedPayload);
    assert_eq!(server.metric("duban_payloads_decoded_total").await, 1.0);
    server.stop().await;
}

/// OPERATIONS.md: a revoked key's reports are refused from the revocation on, resends of
/// reports stored before it included (a resend is not answered DUPLICATE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_refuses_resends_of_reports_stored_before_it() {
    let server = server().await;
    let mut client = server.client().await;
    let signed = sign(
        &shibei_key(),
        report("shibei", 1, "2018Q1", &[("pct-applications", 7.0)]),
    );
    accept(&mut client, signed.clone()).await;
    let again = client.submit(signed.clone()).await.unwrap().into_inner();
    assert_eq!(again.outcome(), pb::Outcome::Duplicate);

    server
        .store
        .revoke_key(shibei_key().key_id(), NOW_MS - 1)
        .await
        .unwrap();
    // The registry reloads every two seconds; wait for the first answer that shows it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let result = loop {
        let result = client.submit(signed.clone()).await.unwrap().into_inner();
        if result.outcome() != pb::Outcome::Duplicate {
            break result;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the revocation did not reach the server within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(
        (result.outcome(), result.reason()),
        (pb::Outcome::Rejected, R::ReasonKeyRevoked),
        "{}",
        result.message
    );
    // The report stored before the revocation stays stored, as evidence.
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

/// A client certificate from the trusted CA that names no duban unit passes the handshake but
/// is refused by the service: PERMISSION_DENIED, for reports and Hellos alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_naming_no_unit_is_permission_denied() {
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair};
    let server = TestServer::start(Options {
        tls: true,
        ..Default::default()
    })
    .await;
    let ca = server.ca.as_ref().unwrap();
    let issuer =
        Issuer::from_ca_cert_pem(ca.cert_pem(), KeyPair::from_pem(ca.key_pem()).unwrap()).unwrap();
    let mut params = CertificateParams::new(vec!["laoshan.example".to_owned()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca.cert_pem()))
        .domain_name("localhost")
        .identity(tonic::transport::Identity::from_pem(
            cert.pem(),
            key.serialize_pem(),
        ));
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", server.grpc))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = pb::report_service_client::ReportServiceClient::new(channel);
    let signed = sign(&laoshan_key(), laoshan(1));
    let status = client.submit(signed.clone()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
    assert!(
        status.message().contains("spiffe://duban/unit/"),
        "{}",
        status.message()
    );
    let status = client
        .submit_batch(pb::SubmitBatchRequest {
            reports: vec![signed.clone()],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let hello = envelope::sign_hello(
        &laoshan_key(),
        pb::Hello {
            unit_id: "laoshan".into(),
            audience: PLAN_ID.into(),
            issued_at_ms: NOW_MS,
            ..Default::default()
        },
    );
    let status = client.hello(hello).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        server
            .store
            .reports(&ReportFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    // The same report under the unit's own certificate is stored.
    let mut own = server.tls_client(Some("laoshan")).await.unwrap();
    accept(&mut own, signed).await;
    server.stop().await;
}

#[test]
fn the_payload_type_constant_is_the_documented_one() {
    let doc = include_str!("../../docs/PROTOCOL.md");
    assert!(
        doc.contains(PAYLOAD_TYPE),
        "{PAYLOAD_TYPE} not in PROTOCOL.md"
    );
    assert!(doc.contains(envelope::HELLO_PAYLOAD_TYPE));
}

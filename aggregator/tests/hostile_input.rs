//! Hostile input through the whole ingest path: batches of arbitrary and mutated envelopes,
//! payloads and reports, sent over gRPC to a real server with a real SQLite store. After every
//! batch: nothing panicked (the server still answers), every refusal carries its reason (and
//! every refused item its code), what was valid by construction was stored and what was broken
//! by construction was not, the store holds exactly what it held before plus what the answers
//! say was stored, each with the bytes that were sent, and nothing stored before has changed.
//!
//! `PROPTEST_CASES` sets the number of batches (64 by default).

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use duban_aggregator::store::{ReportFilter, Store, StoredEnvelope};
use duban_proto::pb;
use duban_proto::pb::report_service_client::ReportServiceClient;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use prost::Message;
use support::*;
use tonic::transport::Channel;

/// A report the mutations start from, or a strangeness put into one before it is signed.
#[derive(Debug, Clone)]
enum Odd {
    UnknownIndicator(String),
    Value(f64),
    Period(String),
    Audience(String),
    Unit(String),
    IssuedAt(i64),
    Note(usize),
    Values(usize),
    IdLength(usize),
}

#[derive(Debug, Clone)]
enum Mutation {
    /// A fresh, valid report.
    Valid(f64),
    /// A valid envelope with one bit flipped in the payload, the signature, the key id or the
    /// payload type.
    Flip { field: u8, index: usize, bit: u8 },
    /// A valid envelope with its payload cut short.
    Truncate(usize),
    /// Bytes that are not a report, signed by a registered key.
    SignedGarbage(Vec<u8>),
    /// An envelope of random parts.
    RandomEnvelope {
        payload: Vec<u8>,
        payload_type: String,
        key_id: Vec<u8>,
        signature: Vec<u8>,
    },
    /// A well-signed report with something strange in it.
    Odd(Odd),
    /// The envelope sent just before, again.
    Replay,
}

/// What the answer to a mutation must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Stored,
    Refused,
    /// The same as the envelope's first answer (a replay).
    Again,
    Any,
}

fn odd() -> impl Strategy<Value = Odd> {
    prop_oneof![
        "[a-z-]{1,20}".prop_map(Odd::UnknownIndicator),
        prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(-1.0),
            Just(1e300),
            any::<f64>()
        ]
        .prop_map(Odd::Value),
        prop_oneof![Just(String::new()), "[0-9A-Za-z-]{0,12}".prop_map(|s| s)]
            .prop_map(Odd::Period),
        "[a-z0-9-]{0,20}".prop_map(Odd::Audience),
        prop_oneof![Just("shibei".to_owned()), "[a-z]{0,10}"].prop_map(Odd::Unit),
        prop_oneof![Just(i64::MAX), Just(0), Just(-1), any::<i64>()].prop_map(Odd::IssuedAt),
        (0usize..3000).prop_map(Odd::Note),
        (0usize..1500).prop_map(Odd::Values),
        (100usize..300).prop_map(Odd::IdLength),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (0.0f64..1000.0).prop_map(Mutation::Valid),
        2 => (0u8..4, any::<usize>(), 0u8..8).prop_map(|(field, index, bit)| Mutation::Flip { field, index, bit }),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => proptest::collection::vec(any::<u8>(), 0..200).prop_map(Mutation::SignedGarbage),
        1 => (
            proptest::collection::vec(any::<u8>(), 0..300),
            prop_oneof![Just(duban_proto::envelope::PAYLOAD_TYPE.to_owned()), ".{0,40}"],
            prop_oneof![Just(laoshan_key().key_id().as_bytes().to_vec()), proptest::collection::vec(any::<u8>(), 0..40)],
            proptest::collection::vec(any::<u8>(), 0..80),
        )
            .prop_map(|(payload, payload_type, key_id, signature)| Mutation::RandomEnvelope {
                payload,
                payload_type,
                key_id,
                signature,
            }),
        3 => odd().prop_map(Mutation::Odd),
        1 => Just(Mutation::Replay),
    ]
}

/// Seqs are never reused across cases, so that a valid report is valid whenever it comes.
static SEQ: AtomicU64 = AtomicU64::new(1);

fn fresh(value: f64) -> pb::Report {
    let seq = SEQ.fetch_add(1, Ordering::SeqCst);
    let mut report = report("laoshan", seq, "2018Q1", &[("pct-applications", value)]);
    report.report_id = rand::random::<[u8; 16]>().to_vec();
    report
}

fn build(mutation: &Mutation, last: Option<&pb::SignedReport>) -> (pb::SignedReport, Expect) {
    let key = laoshan_key();
    match mutation {
        Mutation::Valid(value) => (sign(&key, fresh(*value)), Expect::Stored),
        Mutation::Flip { field, index, bit } => {
            let mut envelope = sign(&key, fresh(1.0));
            let flip = |bytes: &mut Vec<u8>| {
                let at = index % bytes.len();
                bytes[at] ^= 1 << bit;
            };
            match field {
                0 => flip(&mut envelope.payload),
                1 => flip(&mut envelope.signature),
                2 => flip(&mut envelope.key_id),
                _ => {
                    let mut bytes = std::mem::take(&mut envelope.payload_type).into_bytes();
                    flip(&mut bytes);
                    envelope.payload_type = String::from_utf8_lossy(&bytes).into_owned();
                }
            }
            (envelope, Expect::Refused)
        }
        Mutation::Truncate(at) => {
            let mut envelope = sign(&key, fresh(1.0));
            let len = at % envelope.payload.len();
            envelope.payload.truncate(len);
            (envelope, Expect::Refused)
        }
        Mutation::SignedGarbage(bytes) => (
            duban_proto::envelope::sign_payload(&key, bytes.clone()),
            Expect::Refused,
        ),
        Mutation::RandomEnvelope {
            payload,
            payload_type,
            key_id,
            signature,
        } => (
            pb::SignedReport {
                payload: payload.clone(),
                payload_type: payload_type.clone(),
                key_id: key_id.clone(),
                signature: signature.clone(),
            },
            Expect::Refused,
        ),
        Mutation::Odd(odd) => {
            let mut report = fresh(1.0);
            match odd {
                Odd::UnknownIndicator(id) => report.values[0].indicator_id = id.clone(),
                Odd::Value(value) => report.values[0].value = *value,
                Odd::Period(period) => report.period = period.clone(),
                Odd::Audience(audience) => report.audience = audience.clone(),
                Odd::Unit(unit) => report.unit_id = unit.clone(),
                Odd::IssuedAt(at) => report.issued_at_ms = *at,
                Odd::Note(len) => report.values[0].note = "注".repeat(*len),
                Odd::Values(n) => {
                    let value = report.values[0].clone();
                    report.values = vec![value; *n];
                }
                Odd::IdLength(len) => report.values[0].indicator_id = "i".repeat(*len),
            }
            (sign(&key, report), Expect::Any)
        }
        Mutation::Replay => match last {
            Some(envelope) => (envelope.clone(), Expect::Again),
            None => (sign(&key, fresh(2.0)), Expect::Stored),
        },
    }
}

/// Every stored report's envelope, by (unit, report id).
async fn everything_stored(server: &TestServer) -> BTreeMap<(String, Vec<u8>), StoredEnvelope> {
    let mut all = BTreeMap::new();
    for row in server
        .store
        .reports(&ReportFilter::default())
        .await
        .unwrap()
    {
        let envelope = server
            .store
            .envelope(&row.unit_id, &row.report_id)
            .await
            .unwrap()
            .expect("every stored report has its envelope");
        all.insert((row.unit_id, row.report_id), envelope);
    }
    all
}

async fn one_batch(
    server: &TestServer,
    client: &mut ReportServiceClient<Channel>,
    mutations: Vec<Mutation>,
    first_answers: &mut BTreeMap<Vec<u8>, (pb::Outcome, pb::ReasonCode)>,
) -> Result<(), TestCaseError> {
    let before = everything_stored(server).await;
    let mut sent: Vec<(pb::SignedReport, Expect)> = Vec::new();
    for mutation in &mutations {
        let last = sent.last().map(|(envelope, _)| envelope);
        sent.push(build(mutation, last));
    }
    let request = pb::SubmitBatchRequest {
        reports: sent.iter().map(|(envelope, _)| envelope.clone()).collect(),
    };
    let answers = match client.submit_batch(request).await {
        Ok(response) => response.into_inner().results,
        // A batch too large for the message cap is refused whole, with a status of its own.
        Err(status) => {
            prop_assert!(
                matches!(
                    status.code(),
                    tonic::Code::OutOfRange | tonic::Code::InvalidArgument
                ),
                "the whole batch failed: {status:?}"
            );
            prop_assert_eq!(everything_stored(server).await, before);
            return Ok(());
        }
    };
    prop_assert_eq!(answers.len(), sent.len(), "one answer per report");

    let mut stored_now = Vec::new();
    for ((envelope, expect), answer) in sent.iter().zip(&answers) {
        let outcome = answer.outcome();
        prop_assert_ne!(outcome, pb::Outcome::Unspecified);
        if outcome == pb::Outcome::Rejected {
            prop_assert_ne!(
                answer.reason(),
                pb::ReasonCode::ReasonUnspecified,
                "{:?}",
                answer
            );
            prop_assert!(!answer.message.is_empty(), "{:?}", answer);
        } else {
            prop_assert_eq!(answer.reason(), pb::ReasonCode::ReasonUnspecified);
        }
        for refusal in &answer.refusals {
            prop_assert_ne!(refusal.code(), pb::RefusalCode::RefusalUnspecified);
            prop_assert!(!refusal.message.is_empty());
        }
        if outcome == pb::Outcome::Partial {
            prop_assert!(!answer.refusals.is_empty(), "{:?}", answer);
        }
        let key = envelope.encode_to_vec();
        match expect {
            Expect::Stored => prop_assert_eq!(outcome, pb::Outcome::Accepted, "{:?}", answer),
            Expect::Refused => prop_assert_eq!(outcome, pb::Outcome::Rejected, "{:?}", answer),
            Expect::Again => {
                let first = first_answers.get(&key).copied();
                match first {
                    Some((pb::Outcome::Accepted | pb::Outcome::Partial, _)) => {
                        prop_assert_eq!(outcome, pb::Outcome::Duplicate, "{:?}", answer)
                    }
                    Some((first, reason)) => {
                        prop_assert_eq!((outcome, answer.reason()), (first, reason))
                    }
                    None => {}
                }
            }
            Expect::Any => {}
        }
        first_answers
            .entry(key)
            .or_insert((outcome, answer.reason()));
        if matches!(outcome, pb::Outcome::Accepted | pb::Outcome::Partial) {
            let report = pb::Report::decode(envelope.payload.as_slice()).unwrap();
            stored_now.push((
                (report.unit_id, report.report_id),
                StoredEnvelope {
                    payload: envelope.payload.clone(),
                    payload_type: envelope.payload_type.clone(),
                    key_id: envelope.key_id.clone(),
                    signature: envelope.signature.clone(),
                },
            ));
        }
    }

    let after = everything_stored(server).await;
    let mut expected = before;
    for (key, envelope) in stored_now {
        prop_assert!(
            expected.insert(key, envelope).is_none(),
            "a report stored twice"
        );
    }
    prop_assert_eq!(
        after,
        expected,
        "the store holds what it held plus what was stored"
    );
    Ok(())
}

#[test]
fn arbitrary_and_mutated_batches_through_the_whole_ingest_path() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = runtime.block_on(TestServer::start(Options::default()));
    let mut client = runtime.block_on(server.client());
    // Seed the store, so that "nothing stored before has changed" has something to watch.
    runtime.block_on(async {
        client
            .submit(sign(&laoshan_key(), fresh(5.0)))
            .await
            .unwrap();
    });
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(64);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let first_answers = std::cell::RefCell::new(BTreeMap::new());
    let result = runner.run(&proptest::collection::vec(mutation(), 1..12), |mutations| {
        let mut client = client.clone();
        runtime.block_on(one_batch(
            &server,
            &mut client,
            mutations,
            &mut first_answers.borrow_mut(),
        ))
    });
    if let Err(error) = result {
        panic!("{error}");
    }
    runtime.block_on(server.stop());
}

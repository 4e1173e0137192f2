//! Prints `proto/testdata/envelope-vectors.json`. The vectors are deterministic (fixed seeds,
//! and Ed25519 signing is deterministic), so regenerating gives the same file:
//!
//! ```text
//! cargo run -p duban-proto --example envelope_vectors > proto/testdata/envelope-vectors.json
//! ```
//!
//! `tests/envelope_vectors.rs` checks every vector against the library independently of this
//! generator.

use duban_proto::envelope::{PAYLOAD_TYPE, pae, sign_payload};
use duban_proto::{SigningKey, pb};
use prost::Message;
use serde_json::{Value, json};

/// The order of the Ed25519 group, little-endian: adding it to `s` gives a non-canonical
/// signature that a strict verifier refuses.
const GROUP_ORDER_LE: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

fn main() {
    let signer = SigningKey::from_seed(&[0x42; 32]);
    let other = SigningKey::from_seed(&[0x17; 32]);
    let report = pb::Report {
        report_id: (0u8..16).collect(),
        unit_id: "laoshan".into(),
        key_id: signer.key_id().as_bytes().to_vec(),
        seq: 7,
        issued_at_ms: 1_538_352_000_000,
        audience: "qingdao-ip-2017".into(),
        period: "2018Q3".into(),
        values: vec![pb::IndicatorValue {
            indicator_id: "pct-applications".into(),
            value: 231.0,
            note: "季度统计".into(),
        }],
        task_updates: vec![pb::TaskUpdate {
            task_id: "2-3-2".into(),
            milestone_id: "m1".into(),
            percent_complete: 60.0,
            status: pb::TaskStatus::InProgress as i32,
            note: String::new(),
        }],
        revision: 0,
    };
    let payload = report.encode_to_vec();
    let valid = sign_payload(&signer, payload.clone());

    let mut envelopes = vec![envelope(
        "valid-report",
        "a report signed by the signer key; decodes to `report`",
        &signer,
        &valid,
        "ok",
    )];
    envelopes[0]["report"] = report_json(&report);

    let mut tampered = valid.clone();
    tampered.payload[20] ^= 0x01;
    envelopes.push(envelope(
        "tampered-payload",
        "valid-report with one payload bit flipped after signing",
        &signer,
        &tampered,
        "bad_signature",
    ));

    let mut wrong_type = valid.clone();
    wrong_type.payload_type = "application/vnd.duban.report.v2+protobuf".into();
    envelopes.push(envelope(
        "tampered-payload-type",
        "valid-report with the payload type changed; refused on the type, before the signature",
        &signer,
        &wrong_type,
        "wrong_payload_type",
    ));

    let mut by_other = sign_payload(&other, payload.clone());
    by_other.key_id = signer.key_id().as_bytes().to_vec();
    envelopes.push(envelope(
        "signed-by-another-key",
        "the payload signed by another key while the envelope names the signer key",
        &signer,
        &by_other,
        "bad_signature",
    ));

    envelopes.push(envelope(
        "wrong-key-id",
        "a valid envelope from another key, checked against the signer key: the key id differs",
        &signer,
        &sign_payload(&other, payload.clone()),
        "key_id_mismatch",
    ));

    // Move the first payload byte into the type: the concatenation type||payload is unchanged,
    // but PAE's length prefixes differ, so the signature must not carry over.
    let mut shifted_type = PAYLOAD_TYPE.as_bytes().to_vec();
    shifted_type.push(payload[0]);
    let mut shifted = valid.clone();
    shifted.signature = signer.sign(&pae(&shifted_type, &payload[1..])).to_vec();
    envelopes.push(envelope(
        "pae-length-boundary-shift",
        "signature over PAE(type + payload[0], payload[1..]): same bytes, other boundary",
        &signer,
        &shifted,
        "bad_signature",
    ));

    let mut raw = valid.clone();
    raw.signature = signer.sign(&payload).to_vec();
    envelopes.push(envelope(
        "signature-without-pae",
        "signature over the bare payload instead of its PAE",
        &signer,
        &raw,
        "bad_signature",
    ));

    let mut malleable = valid.clone();
    add_group_order_to_s(&mut malleable.signature);
    envelopes.push(envelope(
        "non-canonical-s",
        "valid-report's signature with L added to s; lax verifiers accept it, verify_strict does not",
        &signer,
        &malleable,
        "bad_signature",
    ));

    let mut short = valid.clone();
    short.signature.truncate(63);
    envelopes.push(envelope(
        "short-signature",
        "a 63-byte signature",
        &signer,
        &short,
        "bad_signature_length",
    ));

    // The identity point is a small-order public key. With R = identity and s = 0 the cofactored
    // and cofactorless equations both hold for ANY message, so a lax verifier accepts it.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let mut weak_signature = identity.to_vec();
    weak_signature.extend_from_slice(&[0; 32]);
    let weak = pb::SignedReport {
        payload: payload.clone(),
        payload_type: PAYLOAD_TYPE.into(),
        key_id: duban_proto::KeyId::of_raw_public_key(&identity)
            .as_bytes()
            .to_vec(),
        signature: weak_signature,
    };
    envelopes.push(json!({
        "name": "small-order-public-key",
        "description": "public key is the identity point (small order); the signature verifies under lax Ed25519 for every message; must be refused (verify_strict, and our key loader refuses the key outright)",
        "public_key_hex": hex::encode(identity),
        "envelope": envelope_json(&weak),
        "expected": "weak_key",
    }));

    let vectors = json!({
        "description": "Test vectors for the duban signed report envelope (docs/PROTOCOL.md). Every hex string is lowercase. `expected` is one of: ok, bad_signature, wrong_payload_type, key_id_mismatch, bad_signature_length, weak_key.",
        "payload_type": PAYLOAD_TYPE,
        "pae": [
            pae_vector("dsse-spec-example", "http://example.com/HelloWorld", "hello world"),
            pae_vector("boundary-a", "ab", "c"),
            pae_vector("boundary-b", "a", "bc"),
            pae_vector("utf8-lengths-are-bytes", "t", "青岛"),
            pae_vector("empty", "", ""),
        ],
        "keys": {
            "signer": key_json(&signer, &[0x42; 32]),
            "other": key_json(&other, &[0x17; 32]),
        },
        "envelopes": envelopes,
    });
    println!("{}", serde_json::to_string_pretty(&vectors).expect("json"));
}

fn add_group_order_to_s(signature: &mut [u8]) {
    let mut carry = 0u16;
    for (byte, order) in signature[32..].iter_mut().zip(GROUP_ORDER_LE) {
        let sum = u16::from(*byte) + u16::from(order) + carry;
        *byte = sum as u8;
        carry = sum >> 8;
    }
}

fn pae_vector(name: &str, payload_type: &str, payload: &str) -> Value {
    let encoded = pae(payload_type.as_bytes(), payload.as_bytes());
    json!({
        "name": name,
        "payload_type": payload_type,
        "payload_utf8": payload,
        "pae_utf8": String::from_utf8(encoded.clone()).expect("utf8"),
        "pae_hex": hex::encode(encoded),
    })
}

fn key_json(key: &SigningKey, seed: &[u8; 32]) -> Value {
    json!({
        "seed_hex": hex::encode(seed),
        "public_key_hex": hex::encode(key.public_key().raw()),
        "key_id_hex": key.key_id().to_string(),
        "private_key_pkcs8_pem": key.to_pkcs8_pem(),
        "public_key_spki_pem": key.public_key().to_spki_pem(),
    })
}

fn envelope(
    name: &str,
    description: &str,
    verifier: &SigningKey,
    env: &pb::SignedReport,
    expected: &str,
) -> Value {
    json!({
        "name": name,
        "description": description,
        "public_key_hex": hex::encode(verifier.public_key().raw()),
        "envelope": envelope_json(env),
        "expected": expected,
    })
}

fn envelope_json(env: &pb::SignedReport) -> Value {
    json!({
        "payload_hex": hex::encode(&env.payload),
        "payload_type": env.payload_type,
        "key_id_hex": hex::encode(&env.key_id),
        "signature_hex": hex::encode(&env.signature),
    })
}

fn report_json(report: &pb::Report) -> Value {
    json!({
        "report_id_hex": hex::encode(&report.report_id),
        "unit_id": report.unit_id,
        "key_id_hex": hex::encode(&report.key_id),
        "seq": report.seq,
        "issued_at_ms": report.issued_at_ms,
        "audience": report.audience,
        "period": report.period,
        "values": report.values.iter().map(|v| json!({"indicator_id": v.indicator_id, "value": v.value, "note": v.note})).collect::<Vec<_>>(),
        "task_updates": report.task_updates.iter().map(|t| json!({"task_id": t.task_id, "milestone_id": t.milestone_id, "percent_complete": t.percent_complete, "status": t.status, "note": t.note})).collect::<Vec<_>>(),
        "revision": report.revision,
    })
}

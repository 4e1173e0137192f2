//! Prints `proto/testdata/statement-vectors.json`: signed statements (answers to alerts and the
//! office's decisions) as the aggregator's `Respond` receives them. Deterministic (fixed seeds;
//! Ed25519 signing is deterministic), so regenerating gives the same file:
//!
//! ```text
//! cargo run -p duban-proto --example statement_vectors > proto/testdata/statement-vectors.json
//! ```
//!
//! `tests/statement_vectors.rs` checks every vector against the library.

use duban_proto::envelope::{RESPONSE_PAYLOAD_TYPE, pae, sign_statement};
use duban_proto::{SigningKey, pb};
use serde_json::{Value, json};

fn main() {
    let unit = SigningKey::from_seed(&[0x42; 32]);
    let office = SigningKey::from_seed(&[0x43; 32]);
    let base = pb::Statement {
        statement_id: (0u8..16).collect(),
        unit_id: "laoshan".into(),
        seq: 1,
        issued_at_ms: 1_538_352_000_000,
        audience: "qingdao-ip-2017".into(),
        case_id: "report/pct-applications/2018Q2/laoshan".into(),
        ..Default::default()
    };
    let request = pb::Statement {
        kind: pb::StatementKind::RequestExtension as i32,
        date: "2018-10-31".into(),
        note: "统计口径调整, 数据需重新核对".into(),
        ..base.clone()
    };
    let grant = pb::Statement {
        statement_id: (16u8..32).collect(),
        unit_id: "ip-office".into(),
        kind: pb::StatementKind::GrantExtension as i32,
        about_unit: "laoshan".into(),
        ..base.clone()
    };
    let claim = pb::Statement {
        statement_id: (32u8..48).collect(),
        seq: 2,
        case_id: "milestone/2-1-1/m1".into(),
        kind: pb::StatementKind::ClaimDone as i32,
        reference: "青知办〔2018〕3号".into(),
        ..base
    };
    let vectors: Vec<Value> = [
        (
            "request-extension",
            "laoshan asks for an extension of its 2018Q2 report",
            &unit,
            request,
        ),
        (
            "grant-extension",
            "the supervising office grants it",
            &office,
            grant,
        ),
        (
            "claim-done",
            "laoshan claims a milestone done, with a document number",
            &unit,
            claim,
        ),
    ]
    .into_iter()
    .map(|(name, description, key, statement)| {
        let signed = sign_statement(key, statement);
        let decoded = duban_proto::envelope::decode_statement(&signed).expect("decodes");
        json!({
            "name": name,
            "description": description,
            "public_key_hex": hex::encode(key.public_key().raw()),
            "seed_hex": hex::encode(if std::ptr::eq(key, &unit) { [0x42; 32] } else { [0x43; 32] }),
            "envelope": {
                "payload_hex": hex::encode(&signed.payload),
                "payload_type": signed.payload_type,
                "key_id_hex": hex::encode(&signed.key_id),
                "signature_hex": hex::encode(&signed.signature),
            },
            "pae_hex": hex::encode(pae(signed.payload_type.as_bytes(), &signed.payload)),
            "statement": {
                "statement_id_hex": hex::encode(&decoded.statement_id),
                "unit_id": decoded.unit_id,
                "key_id_hex": hex::encode(&decoded.key_id),
                "seq": decoded.seq,
                "issued_at_ms": decoded.issued_at_ms,
                "audience": decoded.audience,
                "case_id": decoded.case_id,
                "kind": decoded.kind().as_str_name(),
                "date": decoded.date,
                "note": decoded.note,
                "reference": decoded.reference,
                "about_unit": decoded.about_unit,
            },
        })
    })
    .collect();
    let file = json!({
        "description": "Signed statements for the duban Respond RPC (docs/PROTOCOL.md, Statements). Hex is lowercase; the signature covers PAE(payload_type, payload); every vector verifies under public_key_hex and decodes to `statement`.",
        "payload_type": RESPONSE_PAYLOAD_TYPE,
        "vectors": vectors,
    });
    println!("{}", serde_json::to_string_pretty(&file).expect("json"));
}

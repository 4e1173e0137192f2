//! `proto/testdata/statement-vectors.json`, checked against the library: each envelope verifies
//! under its key, signs the stated PAE, and decodes to the stated statement; one flipped bit
//! fails.

use duban_proto::envelope::{self, RESPONSE_PAYLOAD_TYPE};
use duban_proto::{PublicKey, SigningKey, pb};
use serde_json::Value;

fn vectors() -> Value {
    serde_json::from_str(include_str!("../testdata/statement-vectors.json")).unwrap()
}

fn hex_of(v: &Value, key: &str) -> Vec<u8> {
    hex::decode(v[key].as_str().unwrap()).unwrap()
}

#[test]
fn every_statement_vector_verifies_and_decodes_as_stated() {
    let file = vectors();
    assert_eq!(file["payload_type"], RESPONSE_PAYLOAD_TYPE);
    let all = file["vectors"].as_array().unwrap();
    assert_eq!(all.len(), 3);
    for v in all {
        let name = v["name"].as_str().unwrap();
        let env = &v["envelope"];
        let signed = pb::SignedReport {
            payload: hex_of(env, "payload_hex"),
            payload_type: env["payload_type"].as_str().unwrap().to_owned(),
            key_id: hex_of(env, "key_id_hex"),
            signature: hex_of(env, "signature_hex"),
        };
        let seed: [u8; 32] = hex_of(v, "seed_hex").try_into().unwrap();
        let key = SigningKey::from_seed(&seed);
        let raw: [u8; 32] = hex_of(v, "public_key_hex").try_into().unwrap();
        assert_eq!(key.public_key().raw(), &raw, "{name}");
        let public = PublicKey::from_raw(&raw).unwrap();
        assert_eq!(
            envelope::pae(signed.payload_type.as_bytes(), &signed.payload),
            hex_of(v, "pae_hex"),
            "{name}"
        );
        envelope::precheck_as(&signed, RESPONSE_PAYLOAD_TYPE).unwrap();
        envelope::verify_signature(&signed, &public).unwrap();
        let s = envelope::decode_statement(&signed).unwrap();
        let want = &v["statement"];
        assert_eq!(
            hex::encode(&s.statement_id),
            want["statement_id_hex"],
            "{name}"
        );
        assert_eq!(s.unit_id, want["unit_id"].as_str().unwrap(), "{name}");
        assert_eq!(
            s.key_id, signed.key_id,
            "{name}: the statement names its key"
        );
        assert_eq!(s.seq, want["seq"].as_u64().unwrap(), "{name}");
        assert_eq!(s.case_id, want["case_id"].as_str().unwrap(), "{name}");
        assert_eq!(
            s.kind().as_str_name(),
            want["kind"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(s.date, want["date"].as_str().unwrap(), "{name}");
        assert_eq!(s.reference, want["reference"].as_str().unwrap(), "{name}");
        // Signing again gives the same bytes (Ed25519 is deterministic).
        assert_eq!(
            envelope::sign_statement(&key, s).signature,
            signed.signature,
            "{name}"
        );
        let mut flipped = signed.clone();
        flipped.payload[3] ^= 0x01;
        assert!(
            envelope::verify_signature(&flipped, &public).is_err(),
            "{name}"
        );
        // A statement is not a report: the report check refuses its type.
        assert!(envelope::precheck(&signed).is_err(), "{name}");
    }
}

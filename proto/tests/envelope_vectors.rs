//! Checks every vector in `proto/testdata/envelope-vectors.json` against the library. The file is
//! meant for third-party implementations; this test keeps it true.

use duban_proto::envelope::{self, PAYLOAD_TYPE, VerifyError, pae};
use duban_proto::{KeyError, KeyId, PublicKey, SigningKey, pb};
use ed25519_dalek::Verifier;
use prost::Message;
use serde_json::Value;

fn vectors() -> Value {
    let text = include_str!("../testdata/envelope-vectors.json");
    serde_json::from_str(text).expect("vectors file is JSON")
}

fn hex_field(value: &Value, key: &str) -> Vec<u8> {
    hex::decode(
        value[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} missing")),
    )
    .expect("hex")
}

fn envelope_of(vector: &Value) -> pb::SignedReport {
    let env = &vector["envelope"];
    pb::SignedReport {
        payload: hex_field(env, "payload_hex"),
        payload_type: env["payload_type"].as_str().unwrap().to_owned(),
        key_id: hex_field(env, "key_id_hex"),
        signature: hex_field(env, "signature_hex"),
    }
}

fn outcome_name(result: &Result<pb::Report, VerifyError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(VerifyError::BadSignature) => "bad_signature",
        Err(VerifyError::WrongPayloadType { .. }) => "wrong_payload_type",
        Err(VerifyError::KeyIdMismatch { .. }) => "key_id_mismatch",
        Err(VerifyError::BadSignatureLength { .. }) => "bad_signature_length",
        Err(other) => panic!("no vector expects {other:?}"),
    }
}

#[test]
fn payload_type_constant_matches() {
    assert_eq!(vectors()["payload_type"], PAYLOAD_TYPE);
}

#[test]
fn every_pae_vector_encodes_as_stated() {
    let vectors = vectors();
    let cases = vectors["pae"].as_array().unwrap();
    assert!(cases.len() >= 3);
    for case in cases {
        let encoded = pae(
            case["payload_type"].as_str().unwrap().as_bytes(),
            case["payload_utf8"].as_str().unwrap().as_bytes(),
        );
        assert_eq!(
            encoded,
            case["pae_utf8"].as_str().unwrap().as_bytes(),
            "{}",
            case["name"]
        );
        assert_eq!(encoded, hex_field(case, "pae_hex"), "{}", case["name"]);
    }
    let spec = cases
        .iter()
        .find(|c| c["name"] == "dsse-spec-example")
        .unwrap();
    assert_eq!(
        spec["pae_utf8"],
        "DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    );
    let a = cases.iter().find(|c| c["name"] == "boundary-a").unwrap();
    let b = cases.iter().find(|c| c["name"] == "boundary-b").unwrap();
    assert_ne!(
        a["pae_hex"], b["pae_hex"],
        "PAE must separate ab|c from a|bc"
    );
}

#[test]
fn keys_load_from_their_pem_and_match_their_seed() {
    let vectors = vectors();
    for (name, key) in vectors["keys"].as_object().unwrap() {
        let seed: [u8; 32] = hex_field(key, "seed_hex").try_into().unwrap();
        let from_seed = SigningKey::from_seed(&seed);
        let from_pem = SigningKey::from_pkcs8_pem(key["private_key_pkcs8_pem"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let public =
            PublicKey::from_spki_pem(key["public_key_spki_pem"].as_str().unwrap()).unwrap();
        assert_eq!(from_pem.key_id(), from_seed.key_id(), "{name}");
        assert_eq!(public.key_id(), from_seed.key_id(), "{name}");
        assert_eq!(
            public.raw().to_vec(),
            hex_field(key, "public_key_hex"),
            "{name}"
        );
        assert_eq!(from_seed.key_id().to_string(), key["key_id_hex"], "{name}");
    }
}

#[test]
fn every_envelope_vector_has_its_expected_outcome() {
    let vectors = vectors();
    let cases = vectors["envelopes"].as_array().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let expected = case["expected"].as_str().unwrap();
        seen.insert(name.to_owned());
        let raw: [u8; 32] = hex_field(case, "public_key_hex").try_into().unwrap();
        let env = envelope_of(case);
        if expected == "weak_key" {
            assert!(
                matches!(PublicKey::from_raw(&raw), Err(KeyError::WeakPublicKey)),
                "{name}"
            );
            // The vector is meaningful: lax verification accepts it, strict refuses it.
            let dalek = ed25519_dalek::VerifyingKey::from_bytes(&raw).unwrap();
            let signature = ed25519_dalek::Signature::from_slice(&env.signature).unwrap();
            let message = pae(env.payload_type.as_bytes(), &env.payload);
            assert!(
                dalek.verify(&message, &signature).is_ok(),
                "{name}: lax verify should pass"
            );
            assert!(dalek.verify_strict(&message, &signature).is_err(), "{name}");
            assert_eq!(
                KeyId::from_slice(&env.key_id).unwrap(),
                KeyId::of_raw_public_key(&raw)
            );
            continue;
        }
        let key = PublicKey::from_raw(&raw).unwrap();
        let result = envelope::verify(&env, &key);
        assert_eq!(outcome_name(&result), expected, "{name}: {result:?}");
        if let Ok(report) = result {
            let want = &case["report"];
            assert_eq!(report.unit_id, want["unit_id"].as_str().unwrap());
            assert_eq!(report.seq, want["seq"].as_u64().unwrap());
            assert_eq!(report.period, want["period"].as_str().unwrap());
            assert_eq!(report.audience, want["audience"].as_str().unwrap());
            assert_eq!(report.report_id, hex_field(want, "report_id_hex"));
            assert_eq!(
                report.key_id, env.key_id,
                "the signed key id matches the envelope's"
            );
            assert_eq!(
                report.values[0].value,
                want["values"][0]["value"].as_f64().unwrap()
            );
            // Nothing is re-encoded: the payload is what the signer encoded.
            assert_eq!(report.encode_to_vec(), env.payload);
        }
    }
    for required in [
        "valid-report",
        "tampered-payload",
        "tampered-payload-type",
        "signed-by-another-key",
        "pae-length-boundary-shift",
        "small-order-public-key",
    ] {
        assert!(seen.contains(required), "vector {required} is missing");
    }
}

//! Property tests of the envelope: sign then verify succeeds; any single flipped byte in the
//! payload type, payload or signature is refused with the reason that names it; arbitrary
//! input is refused for the first rule of PROTOCOL.md it breaks, never with a panic.

use duban_proto::envelope::{self, VerifyError};
use duban_proto::{SigningKey, pb};
use proptest::prelude::*;

fn arbitrary_report() -> impl Strategy<Value = pb::Report> {
    (
        proptest::collection::vec(any::<u8>(), 16),
        "[a-z]{1,12}",
        any::<u64>(),
        any::<i64>(),
        "[0-9]{4}(Q[1-4]|S[12]|-[01][0-9])?",
        proptest::collection::vec(("[a-z-]{1,20}", any::<f64>(), ".{0,40}"), 0..6),
        any::<u32>(),
    )
        .prop_map(
            |(report_id, unit_id, seq, issued_at_ms, period, values, revision)| pb::Report {
                report_id,
                unit_id,
                key_id: Vec::new(),
                seq,
                issued_at_ms,
                audience: "qingdao-ip-2017".into(),
                period,
                values: values
                    .into_iter()
                    .map(|(indicator_id, value, note)| pb::IndicatorValue {
                        indicator_id,
                        value,
                        note,
                    })
                    .collect(),
                task_updates: Vec::new(),
                revision,
            },
        )
}

fn key() -> SigningKey {
    SigningKey::from_seed(&[0x5a; 32])
}

proptest! {
    #[test]
    fn sign_then_verify_succeeds(report in arbitrary_report()) {
        let key = key();
        let signed = envelope::bind_and_sign(&key, report.clone());
        let decoded = envelope::verify(&signed, key.public_key()).unwrap();
        prop_assert_eq!(decoded.seq, report.seq);
        prop_assert_eq!(decoded.unit_id, report.unit_id);
        prop_assert_eq!(decoded.values.len(), report.values.len());
    }

    #[test]
    fn flipping_any_byte_fails(report in arbitrary_report(), field in 0usize..3, position in any::<prop::sample::Index>(), mask in 1u8..=255) {
        let key = key();
        let mut signed = envelope::bind_and_sign(&key, report);
        match field {
            0 => {
                let mut bytes = signed.payload_type.clone().into_bytes();
                let i = position.index(bytes.len());
                bytes[i] ^= mask;
                // A flipped type byte may stop being UTF-8: that can never reach verify as a
                // protobuf string, so it counts as refused.
                match String::from_utf8(bytes) {
                    Ok(text) => signed.payload_type = text,
                    Err(_) => return Ok(()),
                }
            }
            1 => {
                let i = position.index(signed.payload.len());
                signed.payload[i] ^= mask;
            }
            _ => {
                let i = position.index(signed.signature.len());
                signed.signature[i] ^= mask;
            }
        }
        let result = envelope::verify(&signed, key.public_key());
        prop_assert!(result.is_err(), "field {} flipped yet verified", field);
        match (field, result.unwrap_err()) {
            (0, VerifyError::WrongPayloadType { .. }) | (1 | 2, VerifyError::BadSignature) => {}
            (field, other) => prop_assert!(false, "field {} flipped: refused as {:?}", field, other),
        }
    }

    #[test]
    fn arbitrary_envelopes_are_refused_for_the_first_rule_they_break(
        payload in proptest::collection::vec(any::<u8>(), 0..512),
        payload_type in prop_oneof![Just(envelope::PAYLOAD_TYPE.to_owned()), ".{0,200}"],
        key_id in prop_oneof![Just(key().key_id().as_bytes().to_vec()), proptest::collection::vec(any::<u8>(), 0..40)],
        signature in prop_oneof![proptest::collection::vec(any::<u8>(), 64), proptest::collection::vec(any::<u8>(), 0..80)],
    ) {
        let key = key();
        let signed = pb::SignedReport { payload, payload_type, key_id, signature };
        // PROTOCOL.md's order: size caps, payload type, the key, the signature, then decoding.
        let expected = if signed.payload_type.len() > 128 {
            "PayloadTypeTooLong"
        } else if signed.key_id.len() != 32 {
            "BadKeyIdLength"
        } else if signed.signature.len() != 64 {
            "BadSignatureLength"
        } else if signed.payload_type != envelope::PAYLOAD_TYPE {
            "WrongPayloadType"
        } else if signed.key_id != key.key_id().as_bytes() {
            "KeyIdMismatch"
        } else {
            "BadSignature"
        };
        let got = envelope::verify(&signed, key.public_key())
            .expect_err("random bytes never carry a valid signature");
        let name = format!("{got:?}");
        prop_assert!(name.starts_with(expected), "expected {}, refused as {}", expected, name);
        let _ = envelope::decode_payload(&signed);
    }

    #[test]
    fn arbitrary_correctly_signed_bytes_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
        // Signed garbage passes the signature and reaches the decoder, which must refuse it
        // cleanly or decode it, never panic.
        let key = key();
        let signed = envelope::sign_payload(&key, payload);
        match envelope::verify(&signed, key.public_key()) {
            Ok(_) | Err(VerifyError::MalformedPayload(_)) => {}
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }
}

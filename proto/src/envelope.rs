//! The signed report envelope.
//!
//! A report travels as [`pb::SignedReport`]: the encoded [`pb::Report`] bytes (`payload`), the
//! payload type, the signer's key id and an Ed25519 signature over the DSSE v1 pre-authentication
//! encoding (PAE) of type and payload:
//!
//! ```text
//! "DSSEv1" SP LEN(payload_type) SP payload_type SP LEN(payload) SP payload
//! ```
//!
//! where LEN is the byte length in ASCII decimal without leading zeros and SP one space (0x20).
//!
//! Invariants of [`verify`], in this order, so that nothing expensive or risky happens before the
//! cheap checks pass: size caps (payload, payload type, key id, signature), then the exact payload
//! type, then the key id against the key given, then `verify_strict` over the bytes as received,
//! and only then protobuf decoding. Nothing is ever re-encoded: the signature covers the sender's
//! bytes, whatever encoder produced them.

use ed25519_dalek::Signature;
use prost::Message;

use crate::keys::{KEY_ID_LEN, KeyId, PublicKey, SigningKey};
use crate::pb;

/// The only payload type a report envelope may carry in version 1.
pub const PAYLOAD_TYPE: &str = "application/vnd.duban.report.v1+protobuf";
/// The payload type of an agent's `Hello` (the `Hello` RPC), signed the same way.
pub const HELLO_PAYLOAD_TYPE: &str = "application/vnd.duban.hello.v1+protobuf";
/// The payload type of a signed [`pb::Statement`] (an answer to an alert, or a decision).
pub const RESPONSE_PAYLOAD_TYPE: &str = "application/vnd.duban.response.v1+protobuf";
/// Largest accepted payload (an encoded `Report`).
pub const MAX_PAYLOAD_LEN: usize = 64 * 1024;
/// Largest accepted `payload_type` string, in bytes.
pub const MAX_PAYLOAD_TYPE_LEN: usize = 128;
/// An Ed25519 signature is exactly this long.
pub const SIGNATURE_LEN: usize = 64;

/// Every way an envelope can fail verification. One variant per cause, so that the aggregator
/// can map each to its own reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("payload is {len} bytes; the limit is {MAX_PAYLOAD_LEN}")]
    PayloadTooLarge { len: usize },
    #[error("payload_type is {len} bytes; the limit is {MAX_PAYLOAD_TYPE_LEN}")]
    PayloadTypeTooLong { len: usize },
    #[error("key_id is {len} bytes; it must be {KEY_ID_LEN}")]
    BadKeyIdLength { len: usize },
    #[error("signature is {len} bytes; it must be {SIGNATURE_LEN}")]
    BadSignatureLength { len: usize },
    #[error("payload_type {got:?} is not {expected:?}")]
    WrongPayloadType { got: String, expected: &'static str },
    #[error("envelope key_id {envelope} does not name the verifying key {key}")]
    KeyIdMismatch { envelope: KeyId, key: KeyId },
    #[error("signature does not verify over the payload")]
    BadSignature,
    #[error("payload is not a valid message of its type: {0}")]
    MalformedPayload(String),
}

/// The DSSE v1 pre-authentication encoding of `payload_type` and `payload`.
pub fn pae(payload_type: &[u8], payload: &[u8]) -> Vec<u8> {
    let type_len = payload_type.len().to_string();
    let payload_len = payload.len().to_string();
    let mut out = Vec::with_capacity(
        10 + type_len.len() + payload_type.len() + payload_len.len() + payload.len(),
    );
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(type_len.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type);
    out.push(b' ');
    out.extend_from_slice(payload_len.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// Signs already-encoded report payload bytes.
pub fn sign_payload(key: &SigningKey, payload: Vec<u8>) -> pb::SignedReport {
    sign_payload_as(key, PAYLOAD_TYPE, payload)
}

/// Signs already-encoded payload bytes of `payload_type`.
pub fn sign_payload_as(key: &SigningKey, payload_type: &str, payload: Vec<u8>) -> pb::SignedReport {
    let signature = key.sign(&pae(payload_type.as_bytes(), &payload));
    pb::SignedReport {
        payload,
        payload_type: payload_type.to_owned(),
        key_id: key.key_id().as_bytes().to_vec(),
        signature: signature.to_vec(),
    }
}

/// Sets `hello.key_id` to the key's id, encodes it once and signs it as a Hello.
pub fn sign_hello(key: &SigningKey, mut hello: pb::Hello) -> pb::SignedReport {
    hello.key_id = key.key_id().as_bytes().to_vec();
    sign_payload_as(key, HELLO_PAYLOAD_TYPE, hello.encode_to_vec())
}

/// Sets `statement.key_id` to the key's id, encodes it once and signs it as a statement.
pub fn sign_statement(key: &SigningKey, mut statement: pb::Statement) -> pb::SignedReport {
    statement.key_id = key.key_id().as_bytes().to_vec();
    sign_payload_as(key, RESPONSE_PAYLOAD_TYPE, statement.encode_to_vec())
}

/// Encodes `report` once and signs the encoding. The caller sets `report.key_id`; use
/// [`bind_and_sign`] to have it set from the key.
pub fn sign(key: &SigningKey, report: &pb::Report) -> pb::SignedReport {
    sign_payload(key, report.encode_to_vec())
}

/// Sets `report.key_id` to the key's id, then signs it.
pub fn bind_and_sign(key: &SigningKey, mut report: pb::Report) -> pb::SignedReport {
    report.key_id = key.key_id().as_bytes().to_vec();
    sign(key, &report)
}

/// The cheap checks that need no key: size caps, then the payload type. Returns the key id the
/// envelope names, for looking up the key.
pub fn precheck(envelope: &pb::SignedReport) -> Result<KeyId, VerifyError> {
    precheck_as(envelope, PAYLOAD_TYPE)
}

/// [`precheck`] for an envelope that must carry `payload_type`.
pub fn precheck_as(
    envelope: &pb::SignedReport,
    payload_type: &'static str,
) -> Result<KeyId, VerifyError> {
    if envelope.payload.len() > MAX_PAYLOAD_LEN {
        return Err(VerifyError::PayloadTooLarge {
            len: envelope.payload.len(),
        });
    }
    if envelope.payload_type.len() > MAX_PAYLOAD_TYPE_LEN {
        return Err(VerifyError::PayloadTypeTooLong {
            len: envelope.payload_type.len(),
        });
    }
    let key_id = KeyId::from_slice(&envelope.key_id).map_err(|_| VerifyError::BadKeyIdLength {
        len: envelope.key_id.len(),
    })?;
    if envelope.signature.len() != SIGNATURE_LEN {
        return Err(VerifyError::BadSignatureLength {
            len: envelope.signature.len(),
        });
    }
    if envelope.payload_type != payload_type {
        return Err(VerifyError::WrongPayloadType {
            got: envelope.payload_type.clone(),
            expected: payload_type,
        });
    }
    Ok(key_id)
}

/// Checks the signature of an envelope that passed [`precheck`], with `verify_strict`.
pub fn verify_signature(envelope: &pb::SignedReport, key: &PublicKey) -> Result<(), VerifyError> {
    let named = KeyId::from_slice(&envelope.key_id).map_err(|_| VerifyError::BadKeyIdLength {
        len: envelope.key_id.len(),
    })?;
    if named != key.key_id() {
        return Err(VerifyError::KeyIdMismatch {
            envelope: named,
            key: key.key_id(),
        });
    }
    let bytes: [u8; SIGNATURE_LEN] =
        envelope
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| VerifyError::BadSignatureLength {
                len: envelope.signature.len(),
            })?;
    let message = pae(envelope.payload_type.as_bytes(), &envelope.payload);
    key.verifying_key()
        .verify_strict(&message, &Signature::from_bytes(&bytes))
        .map_err(|_| VerifyError::BadSignature)
}

/// One signature to check with [`verify_many`]: the signed message (see [`signed_message`]),
/// the signature bytes and the key.
#[derive(Debug, Clone)]
pub struct PendingSignature {
    pub message: Vec<u8>,
    pub signature: [u8; SIGNATURE_LEN],
    pub key: PublicKey,
}

/// The bytes an envelope's signature covers: the PAE of its payload type and payload.
pub fn signed_message(envelope: &pb::SignedReport) -> Vec<u8> {
    pae(envelope.payload_type.as_bytes(), &envelope.payload)
}

/// Verifies many signatures at once, with one answer per item in order.
///
/// Two or more signatures are first checked together with `ed25519_dalek::verify_batch`
/// (random linear combination, about twice as fast per signature). When the batch fails, each
/// is checked alone with `verify_strict`, so a bad signature gets exactly the answer it would
/// get alone and does not fail its neighbours. When the batch passes, each signature's `R` must
/// still be canonically encoded and not of small order, as `verify_strict` requires; one that
/// is not is checked alone (and refused). What a passing batch accepts beyond `verify_strict`
/// is described in docs/PROTOCOL.md: only signatures that the key's holder made on purpose with
/// a torsion component in `R`.
pub fn verify_many(items: &[PendingSignature]) -> Vec<bool> {
    let strict = |item: &PendingSignature| {
        item.key
            .verifying_key()
            .verify_strict(&item.message, &Signature::from_bytes(&item.signature))
            .is_ok()
    };
    if items.len() < 2 {
        return items.iter().map(strict).collect();
    }
    let messages: Vec<&[u8]> = items.iter().map(|i| i.message.as_slice()).collect();
    let signatures: Vec<Signature> = items
        .iter()
        .map(|i| Signature::from_bytes(&i.signature))
        .collect();
    let keys: Vec<ed25519_dalek::VerifyingKey> =
        items.iter().map(|i| *i.key.verifying_key()).collect();
    if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_err() {
        return items.iter().map(strict).collect();
    }
    items
        .iter()
        .map(|item| r_is_strict(&item.signature) || strict(item))
        .collect()
}

/// Whether a signature's `R` is what `verify_strict` requires of it besides the equation: a
/// canonical encoding of a point not of small order. Called only after a batch passed, which
/// means `R` decompressed; so this looks at the bytes alone: the y coordinate below the field
/// prime, and not the y of one of the eight small-order points (either sign of x).
fn r_is_strict(signature: &[u8; SIGNATURE_LEN]) -> bool {
    let mut y = [0u8; 32];
    y.copy_from_slice(&signature[..32]);
    y[31] &= 0x7f;
    // y ≥ p = 2^255 − 19 exactly when the low byte is ≥ 0xed and every other bit is set.
    let non_canonical = y[0] >= 0xed && y[1..31].iter().all(|b| *b == 0xff) && y[31] == 0x7f;
    !non_canonical && !small_order_ys().contains(&y)
}

/// The y coordinates of the eight points of small order, sign bit cleared.
fn small_order_ys() -> &'static [[u8; 32]; 8] {
    static YS: std::sync::OnceLock<[[u8; 32]; 8]> = std::sync::OnceLock::new();
    YS.get_or_init(|| {
        curve25519_dalek::constants::EIGHT_TORSION.map(|point| {
            let mut y = point.compress().to_bytes();
            y[31] &= 0x7f;
            y
        })
    })
}

/// Decodes the payload of an envelope whose signature has been verified.
pub fn decode_payload(envelope: &pb::SignedReport) -> Result<pb::Report, VerifyError> {
    pb::Report::decode(envelope.payload.as_slice())
        .map_err(|e| VerifyError::MalformedPayload(e.to_string()))
}

/// Decodes the payload of a Hello envelope whose signature has been verified.
pub fn decode_hello(envelope: &pb::SignedReport) -> Result<pb::Hello, VerifyError> {
    pb::Hello::decode(envelope.payload.as_slice())
        .map_err(|e| VerifyError::MalformedPayload(e.to_string()))
}

/// Decodes the payload of a statement envelope whose signature has been verified.
pub fn decode_statement(envelope: &pb::SignedReport) -> Result<pb::Statement, VerifyError> {
    pb::Statement::decode(envelope.payload.as_slice())
        .map_err(|e| VerifyError::MalformedPayload(e.to_string()))
}

/// The whole check in its fixed order: [`precheck`], [`verify_signature`], [`decode_payload`].
pub fn verify(envelope: &pb::SignedReport, key: &PublicKey) -> Result<pb::Report, VerifyError> {
    precheck(envelope)?;
    verify_signature(envelope, key)?;
    decode_payload(envelope)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> pb::Report {
        pb::Report {
            report_id: vec![9; 16],
            unit_id: "laoshan".into(),
            seq: 1,
            issued_at_ms: 1_500_000_000_000,
            audience: "qingdao-ip-2017".into(),
            period: "2018Q1".into(),
            values: vec![pb::IndicatorValue {
                indicator_id: "pct-applications".into(),
                value: 212.0,
                note: String::new(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        assert_eq!(
            pae(b"http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
        assert_eq!(pae(b"", b""), b"DSSEv1 0  0 ");
    }

    #[test]
    fn sign_then_verify_returns_the_report() {
        let key = SigningKey::from_seed(&[3; 32]);
        let signed = bind_and_sign(&key, report());
        let decoded = verify(&signed, key.public_key()).unwrap();
        assert_eq!(decoded.key_id, key.key_id().as_bytes().to_vec());
        assert_eq!(decoded.values[0].value, 212.0);
    }

    #[test]
    fn caps_are_checked_before_the_type_and_the_signature() {
        let key = SigningKey::from_seed(&[3; 32]);
        let mut signed = bind_and_sign(&key, report());
        signed.payload = vec![0; MAX_PAYLOAD_LEN + 1];
        signed.payload_type = "x".repeat(MAX_PAYLOAD_TYPE_LEN + 1);
        assert_eq!(
            verify(&signed, key.public_key()),
            Err(VerifyError::PayloadTooLarge {
                len: MAX_PAYLOAD_LEN + 1
            })
        );
        signed.payload.truncate(10);
        assert_eq!(
            verify(&signed, key.public_key()),
            Err(VerifyError::PayloadTypeTooLong {
                len: MAX_PAYLOAD_TYPE_LEN + 1
            })
        );
        signed.payload_type = "text/plain".into();
        signed.signature.pop();
        assert_eq!(
            verify(&signed, key.public_key()),
            Err(VerifyError::BadSignatureLength { len: 63 })
        );
    }

    #[test]
    fn another_key_is_named_in_the_error() {
        let key = SigningKey::from_seed(&[3; 32]);
        let other = SigningKey::from_seed(&[4; 32]);
        let signed = bind_and_sign(&key, report());
        assert_eq!(
            verify(&signed, other.public_key()),
            Err(VerifyError::KeyIdMismatch {
                envelope: key.key_id(),
                key: other.key_id()
            })
        );
    }

    #[test]
    fn signature_is_checked_before_decoding() {
        // A payload that is not protobuf but is correctly signed decodes last and fails there;
        // the same bytes with a bad signature fail on the signature, never reaching the decoder.
        let key = SigningKey::from_seed(&[3; 32]);
        let signed = sign_payload(&key, vec![0xff; 8]);
        assert!(matches!(
            verify(&signed, key.public_key()),
            Err(VerifyError::MalformedPayload(_))
        ));
        let mut tampered = signed.clone();
        tampered.signature[0] ^= 1;
        assert_eq!(
            verify(&tampered, key.public_key()),
            Err(VerifyError::BadSignature)
        );
    }

    fn pending(key: &SigningKey, signed: &pb::SignedReport) -> PendingSignature {
        PendingSignature {
            message: signed_message(signed),
            signature: signed.signature.as_slice().try_into().unwrap(),
            key: key.public_key().clone(),
        }
    }

    fn one_by_one(items: &[PendingSignature]) -> Vec<bool> {
        items
            .iter()
            .map(|i| verify_many(std::slice::from_ref(i))[0])
            .collect()
    }

    #[test]
    fn a_batch_with_a_bad_signature_answers_as_one_by_one() {
        let keys: Vec<SigningKey> = (0..6u8).map(|n| SigningKey::from_seed(&[n; 32])).collect();
        let mut items: Vec<PendingSignature> = keys
            .iter()
            .map(|k| pending(k, &bind_and_sign(k, report())))
            .collect();
        assert_eq!(verify_many(&items), vec![true; 6]);
        // A tampered message, a signature by another key, a flipped bit in s.
        items[1].message.push(0);
        items[3].key = keys[4].public_key().clone();
        items[5].signature[40] ^= 1;
        let expected = vec![true, false, true, false, true, false];
        assert_eq!(one_by_one(&items), expected);
        assert_eq!(verify_many(&items), expected);
    }

    #[test]
    fn torsion_added_to_a_seen_signature_is_refused_in_a_batch_as_alone() {
        use curve25519_dalek::constants::EIGHT_TORSION;
        use curve25519_dalek::edwards::CompressedEdwardsY;
        let keys: Vec<SigningKey> = (0..4u8).map(|n| SigningKey::from_seed(&[n; 32])).collect();
        let mut items: Vec<PendingSignature> = keys
            .iter()
            .map(|k| pending(k, &bind_and_sign(k, report())))
            .collect();
        for torsion in EIGHT_TORSION.iter().skip(1) {
            let mut r = [0u8; 32];
            r.copy_from_slice(&items[2].signature[..32]);
            let point = CompressedEdwardsY(r).decompress().unwrap() + torsion;
            let mut bad = items[2].clone();
            bad.signature[..32].copy_from_slice(point.compress().as_bytes());
            let saved = std::mem::replace(&mut items[2], bad);
            assert_eq!(verify_many(&items), one_by_one(&items));
            assert_eq!(verify_many(&items), vec![true, true, false, true]);
            items[2] = saved;
        }
        // R of small order, and a non-canonical encoding of R: refused batched and alone.
        for r in [EIGHT_TORSION[4].compress().to_bytes(), [0xff; 32]] {
            let mut bad = items[1].clone();
            bad.signature[..32].copy_from_slice(&r);
            items[1] = bad;
            assert_eq!(verify_many(&items), one_by_one(&items));
            assert!(!verify_many(&items)[1]);
        }
    }

    #[test]
    fn the_byte_check_of_r_agrees_with_decompression() {
        use curve25519_dalek::edwards::CompressedEdwardsY;
        let by_point = |r: [u8; 32]| {
            let compressed = CompressedEdwardsY(r);
            compressed
                .decompress()
                .is_some_and(|p| !p.is_small_order() && p.compress() == compressed)
        };
        let mut cases: Vec<[u8; 32]> = curve25519_dalek::constants::EIGHT_TORSION
            .iter()
            .flat_map(|p| {
                let r = p.compress().to_bytes();
                let mut flipped = r;
                flipped[31] ^= 0x80;
                [r, flipped]
            })
            .collect();
        // y = p, p + 1, 2^255 − 1 (non-canonical), and p − 1 (canonical, the order-2 point).
        for low in [0xed, 0xee, 0xff, 0xec] {
            let mut r = [0xff; 32];
            r[0] = low;
            r[31] = 0x7f;
            cases.push(r);
        }
        for n in 0..200u8 {
            let key = SigningKey::from_seed(&[n; 32]);
            let signed = bind_and_sign(&key, report());
            cases.push(signed.signature[..32].try_into().unwrap());
        }
        for r in cases {
            let decompresses = CompressedEdwardsY(r).decompress().is_some();
            let mut signature = [0u8; SIGNATURE_LEN];
            signature[..32].copy_from_slice(&r);
            if decompresses {
                assert_eq!(r_is_strict(&signature), by_point(r), "{}", hex::encode(r));
            } else {
                assert!(!by_point(r));
            }
        }
    }
}

//! Keys made by openssl work with duban, and duban's keys work with openssl. Uses the `openssl`
//! command when it is installed; otherwise each test prints that it skipped and why (under
//! `CI=true` it fails instead).

use std::path::Path;
use std::process::Command;

use duban_proto::envelope::{self, PAYLOAD_TYPE, pae};
use duban_proto::keys::write_keypair;
use duban_proto::{PublicKey, SigningKey, pb};

fn openssl_available() -> bool {
    duban_testkit::program("the openssl interop check", "openssl", "openssl")
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn report() -> pb::Report {
    pb::Report {
        report_id: vec![1; 16],
        unit_id: "shibei".into(),
        seq: 1,
        issued_at_ms: 1_530_000_000_000,
        audience: "qingdao-ip-2017".into(),
        period: "2018".into(),
        ..Default::default()
    }
}

#[test]
fn an_openssl_key_signs_a_report_that_verifies() {
    if !openssl_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    openssl(
        &["genpkey", "-algorithm", "ed25519", "-out", "k.pem"],
        dir.path(),
    );
    openssl(
        &["pkey", "-in", "k.pem", "-pubout", "-out", "k.pub"],
        dir.path(),
    );
    let private = SigningKey::read_pkcs8_pem_file(&dir.path().join("k.pem")).unwrap();
    let public = PublicKey::read_spki_pem_file(&dir.path().join("k.pub")).unwrap();
    assert_eq!(private.key_id(), public.key_id());
    let signed = envelope::bind_and_sign(&private, report());
    let decoded = envelope::verify(&signed, &public).unwrap();
    assert_eq!(decoded.unit_id, "shibei");
}

#[test]
fn openssl_signs_a_pae_that_we_verify() {
    if !openssl_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    openssl(
        &["genpkey", "-algorithm", "ed25519", "-out", "k.pem"],
        dir.path(),
    );
    openssl(
        &["pkey", "-in", "k.pem", "-pubout", "-out", "k.pub"],
        dir.path(),
    );
    let public = PublicKey::read_spki_pem_file(&dir.path().join("k.pub")).unwrap();
    let mut body = report();
    body.key_id = public.key_id().as_bytes().to_vec();
    let payload = prost::Message::encode_to_vec(&body);
    std::fs::write(
        dir.path().join("pae.bin"),
        pae(PAYLOAD_TYPE.as_bytes(), &payload),
    )
    .unwrap();
    openssl(
        &[
            "pkeyutl", "-sign", "-rawin", "-inkey", "k.pem", "-in", "pae.bin", "-out", "sig.bin",
        ],
        dir.path(),
    );
    let signed = pb::SignedReport {
        payload,
        payload_type: PAYLOAD_TYPE.into(),
        key_id: public.key_id().as_bytes().to_vec(),
        signature: std::fs::read(dir.path().join("sig.bin")).unwrap(),
    };
    envelope::verify(&signed, &public).unwrap();
}

#[test]
fn our_keys_load_in_openssl_and_openssl_verifies_our_signature() {
    if !openssl_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate();
    write_keypair(dir.path(), &key).unwrap();
    openssl(&["pkey", "-in", "signing.key", "-noout"], dir.path());
    openssl(
        &["pkey", "-pubin", "-in", "signing.pub", "-noout"],
        dir.path(),
    );
    let signed = envelope::bind_and_sign(&key, report());
    std::fs::write(
        dir.path().join("pae.bin"),
        pae(PAYLOAD_TYPE.as_bytes(), &signed.payload),
    )
    .unwrap();
    std::fs::write(dir.path().join("sig.bin"), &signed.signature).unwrap();
    openssl(
        &[
            "pkeyutl",
            "-verify",
            "-rawin",
            "-pubin",
            "-inkey",
            "signing.pub",
            "-in",
            "pae.bin",
            "-sigfile",
            "sig.bin",
        ],
        dir.path(),
    );
}

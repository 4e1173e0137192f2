//! `duban-agent keygen` as an operator runs it.

use std::process::Command;

use duban_proto::{PublicKey, SigningKey};

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_duban-agent"))
}

#[test]
fn keygen_writes_a_loadable_pair_prints_the_key_id_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("keys");
    let out = agent()
        .args(["keygen", "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let private = SigningKey::read_pkcs8_pem_file(&out_dir.join("signing.key")).unwrap();
    let public = PublicKey::read_spki_pem_file(&out_dir.join("signing.pub")).unwrap();
    assert_eq!(printed.trim(), private.key_id().to_string());
    assert_eq!(public.key_id(), private.key_id());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out_dir.join("signing.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let again = agent()
        .args(["keygen", "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("refusing to overwrite"), "{stderr}");
    let unchanged = SigningKey::read_pkcs8_pem_file(&out_dir.join("signing.key")).unwrap();
    assert_eq!(unchanged.key_id(), private.key_id());
}

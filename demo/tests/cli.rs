//! The demo program's command line, as README.md and `.ci/run` use it. (Being an integration
//! test of this package, it also makes `cargo nextest run` build the `duban-demo` program that
//! the end-to-end tests start, with the same features as everything else in the run.)

use std::process::Command;

#[test]
fn help_names_every_flag_the_readme_and_ci_use() {
    let out = Command::new(env!("CARGO_BIN_EXE_duban-demo"))
        .arg("--help")
        .output()
        .expect("duban-demo runs");
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8(out.stdout).expect("UTF-8");
    for flag in [
        "--keep-serving",
        "--dir",
        "--until",
        "--speed",
        "--grpc-listen",
        "--http-listen",
    ] {
        assert!(help.contains(flag), "--help does not name {flag}:\n{help}");
    }
}

#[test]
fn an_unknown_flag_is_named_and_fails() {
    let out = Command::new(env!("CARGO_BIN_EXE_duban-demo"))
        .arg("--no-such-flag")
        .output()
        .expect("duban-demo runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
}

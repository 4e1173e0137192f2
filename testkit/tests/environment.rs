//! What this machine can test. `.config/nextest.toml` prints this test's output at the end of
//! every run, so that skipped tests are seen in the summary and not only in their own output.

use duban_testkit::{NEEDS, in_ci};

#[test]
fn what_this_machine_can_test() {
    let mut missing = Vec::new();
    println!("what this machine can test (tests that need a missing one print SKIPPED):");
    for need in NEEDS {
        match need.check() {
            Ok(found) => println!("  runs     {:<24} {found}", need.name()),
            Err(why) => {
                println!("  SKIPPED  {:<24} {why}", need.name());
                missing.push(need.name());
            }
        }
    }
    if missing.is_empty() {
        println!("nothing is skipped");
    } else {
        println!(
            "the tests that need {} are SKIPPED on this machine",
            missing.join(", ")
        );
    }
    assert!(
        !in_ci() || missing.is_empty(),
        "CI=true, so nothing may be skipped, but these are missing: {}",
        missing.join(", ")
    );
}

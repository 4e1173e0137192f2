//! The harness in its short form, so that it cannot rot: every figure runs against real
//! processes (the aggregator, the load generator, PostgreSQL, Pushgateway) for about a second.
//! The figures of a debug build mean nothing; this checks that each is measured and that no
//! call failed. docs/PERFORMANCE.md has the full run.

use std::path::Path;
use std::process::Command;

#[test]
fn the_harness_measures_every_figure_in_quick_mode() {
    let test = "the_harness_measures_every_figure_in_quick_mode";
    if !duban_testkit::program(test, "prometheus-pushgateway", "prometheus-pushgateway") {
        return;
    }
    let Some(postgres) = duban_testkit::postgres_url(test) else {
        return;
    };
    let bench = Path::new(env!("CARGO_BIN_EXE_duban-bench"));
    let aggregator = bench.with_file_name("duban-aggregator");
    assert!(
        aggregator.is_file(),
        "{} is built with the workspace's binaries",
        aggregator.display()
    );
    let out = Command::new(bench)
        .args(["run", "--quick", "--seconds", "1", "--concurrency", "16"])
        .args(["--agents", "100", "--backlog", "500", "--plan-units", "50"])
        .args(["--postgres", &postgres])
        .arg("--aggregator")
        .arg(&aggregator)
        .output()
        .expect("run duban-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "duban-bench failed:\n{stdout}\n{stderr}"
    );
    for figure in [
        "verify_strict + decode",
        "verify_batch (64) + decode",
        "raw SQLite multi-row inserts",
        "duban, SQLite, unary Submit",
        "duban, SQLite, SubmitBatch of 100",
        "duban's store alone, SQLite, calls of 1 ",
        "duban's store alone, SQLite, calls of 100 ",
        "bare tonic server (transport ceiling), unary",
        "bare tonic server (transport ceiling), batch of 100",
        "raw PostgreSQL UNNEST inserts",
        "duban, PostgreSQL, unary Submit",
        "duban's store alone, PostgreSQL, calls of 1 ",
        "Pushgateway, PUT, default",
        "Pushgateway, PUT, --push.disable-consistency-check",
    ] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {figure}")))
            .unwrap_or_else(|| panic!("no row for {figure:?} in:\n{stdout}\n{stderr}"));
        let rate: f64 = row.split('|').nth(2).unwrap().trim().parse().unwrap();
        assert!(rate > 0.0, "{figure}: {row}");
        if figure.starts_with("duban,") || figure.starts_with("bare") {
            assert!(row.contains(" 0 failed calls"), "{row}");
        }
        // The store alone: the writer thread's own CPU, measured (so more than nothing), and
        // PostgreSQL's side of its store alone, read from this machine's `postgres` processes
        // when the server runs here (as it does in CI: a loopback URL, its processes seen).
        let cpu_after = |label: &str| -> f64 {
            row.split(label)
                .nth(1)
                .and_then(|rest| rest.split(" µs").next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no {label:?} in {row}"))
        };
        if figure.starts_with("duban's store alone, SQLite") {
            assert!(cpu_after("of it the writer thread ") > 0.0, "{row}");
        }
        if figure.starts_with("duban's store alone, PostgreSQL")
            && postgres.contains("@127.0.0.1")
            && postgres_runs_here()
        {
            assert!(
                cpu_after("; this machine's postgres processes ") > 0.0,
                "{row}"
            );
        }
    }
    let row = |start: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no row {start:?} in:\n{stdout}\n{stderr}"))
    };
    let agents = row("| 100 agents connected at once");
    assert!(
        agents.contains("| 100 connected, 0 refused, 0 failed calls"),
        "{agents}"
    );
    let drain = row("| agent backlog of ");
    let reports: u64 = drain["| agent backlog of ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(reports >= 500, "{drain}");
    assert!(drain.contains(" reports/s); agent peak RSS "), "{drain}");
    // The centre's side of the drain, from its own metrics: at least one call, and its time.
    let calls: f64 = drain
        .split("the centre handled ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no centre figures in {drain}"));
    assert!(calls >= 1.0, "{drain}");
    assert!(row("| agent idle").contains("RSS "));
    let plan =
        row("| synthetic plan: 50 units × 50 indicators × 12 months, 30000 values (stored in");
    assert!(plan.contains(" series ("), "{plan}");
    // The whole read beside its floor, SQLite's bare scan of the same rows, both timed.
    let bare = plan
        .split("× SQLite's bare scan of the same rows, ")
        .nth(1)
        .and_then(|rest| rest.split(" ms").next())
        .unwrap_or_else(|| panic!("no bare scan in {plan}"));
    assert!(
        bare.parse::<f64>().is_ok_and(|ms| ms >= 0.0),
        "{bare:?} in {plan}"
    );
    // The first scrape's answer needed progress: at least one view was made before it, the
    // first of them computed whole ("N (U updated, W whole)").
    let first = plan
        .split("made before the first /metrics answered: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no views before the first scrape in {plan}"));
    let number = |text: &str| -> f64 {
        text.parse()
            .unwrap_or_else(|_| panic!("{text:?} is not a number in {plan}"))
    };
    let first_views = number(first.split(' ').next().unwrap_or_default());
    assert!(first_views >= 1.0, "{plan}");
    let whole = first
        .split(" updated, ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no computations before the first scrape in {plan}"));
    assert!(number(whole) >= 1.0, "{plan}");
    // The harness itself checks that this scrape took in the changed rows alone.
    assert!(
        plan.contains("/metrics after one unit's correction "),
        "{plan}"
    );
}

/// Whether a process named `postgres` runs on this machine.
fn postgres_runs_here() -> bool {
    std::fs::read_dir("/proc").is_ok_and(|entries| {
        entries.flatten().any(|entry| {
            std::fs::read_to_string(entry.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end() == "postgres")
        })
    })
}

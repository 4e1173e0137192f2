//! The outbox's limits in the running daemon (`duban-agent run`), while the centre cannot be
//! reached: with `when_full = "drop_oldest"` a full outbox makes room by deleting its oldest
//! reports, and reports older than `max_age` are deleted, each counted in
//! `duban_agent_reports_dropped_total`; collection goes on and nothing is refused.

use std::time::Duration;

use duban_e2e::{AgentSetup, World, http_get, wait_until};

/// An endpoint that accepts connections and closes them at once.
fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    format!("http://{addr}")
}

/// The value of a sample in the daemon's /metrics (0 when absent).
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// When the first report the daemon stored was created (it waits for one).
fn first_report(agent: &AgentSetup) -> Option<i64> {
    let mut oldest = None;
    wait_until(
        Duration::from_secs(30),
        "a first report in the outbox",
        || {
            oldest = agent.outbox_stats()["oldest_created_at_ms"].as_i64();
            oldest.is_some()
        },
    );
    oldest
}

/// Writes `[outbox]` settings and `[metrics] listen` into the agent's configuration.
fn configure(agent: &AgentSetup, outbox: &str) {
    let text = std::fs::read_to_string(&agent.config).unwrap();
    let text = text.replace(
        "[outbox]\npath = \"outbox.db\"\n",
        &format!(
            "[outbox]\npath = \"outbox.db\"\n{outbox}\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n"
        ),
    );
    std::fs::write(&agent.config, text).unwrap();
}

/// A command source, run every second, printing laoshan's task milestones for every month of
/// 2018 with 1,000-byte notes and a percent that changes every second: about 50 KiB of new
/// reports a run, so 1 MiB fills within half a minute.
const BIG_SOURCE: &str = r#"
[[source]]
name = "big"
kind = "command"
items = "tasks"
every = "1s"
timeout = "20s"
command = ["python3", "-c", """
import json, time
percent = int(time.time()) % 100
for month in range(1, 13):
    for milestone in ["m1", "m2", "m3", "m4"]:
        task = "2-3-2"
        print(json.dumps({"task": task, "milestone": milestone, "period": "2018-%02d" % month, "percent": percent, "note": "x" * 1000}))
"""]
"#;

#[test]
fn a_full_outbox_drops_its_oldest_reports_in_the_running_daemon() {
    let w = World::new();
    let agent = AgentSetup::new(
        w.root.path(),
        &w.url,
        "laoshan",
        &dead_endpoint(),
        BIG_SOURCE,
    );
    configure(&agent, "max_bytes = 1048576\nwhen_full = \"drop_oldest\"");
    let _daemon = agent.spawn_daemon(&[]);
    let address = agent.metrics_address();
    let first_oldest = first_report(&agent);
    // A run stores a dozen reports at one instant: the first run's are all gone once the
    // oldest report left is younger than they were. Dropping the newest would never get there.
    wait_until(
        Duration::from_secs(120),
        "the full outbox to drop the first run's reports",
        || {
            agent.outbox_stats()["oldest_created_at_ms"].as_i64() > first_oldest
                && sample(
                    &http_get(&address, "/metrics"),
                    "duban_agent_reports_dropped_total",
                ) > 0.0
        },
    );
    let metrics = http_get(&address, "/metrics");
    assert_eq!(
        sample(&metrics, "duban_agent_collections_refused_total"),
        0.0,
        "drop_oldest never refuses a collection"
    );
    let stats = agent.outbox_stats();
    assert!(
        stats["bytes"].as_i64().unwrap() <= 1_048_576,
        "the outbox keeps within max_bytes: {stats}"
    );
    let log = agent.log();
    assert!(
        log.contains("dropped the oldest"),
        "the drop is logged:\n{log}"
    );
}

#[test]
fn reports_older_than_max_age_are_dropped_in_the_running_daemon() {
    let w = World::new();
    let agent = AgentSetup::new(
        w.root.path(),
        &w.url,
        "laoshan",
        &dead_endpoint(),
        r#"
[[source]]
name = "ticking"
kind = "command"
every = "1s"
command = ["sh", "-c", "echo \"{\\\"indicator\\\": \\\"pct-applications\\\", \\\"period\\\": \\\"2018Q1\\\", \\\"value\\\": $(date +%s)}\""]
"#,
    );
    configure(&agent, "max_age = \"3s\"\nwhen_full = \"drop_oldest\"");
    let _daemon = agent.spawn_daemon(&[]);
    let address = agent.metrics_address();
    let first_oldest = first_report(&agent);
    wait_until(
        Duration::from_secs(60),
        "reports older than max_age to be dropped",
        || {
            sample(
                &http_get(&address, "/metrics"),
                "duban_agent_reports_dropped_total",
            ) > 0.0
        },
    );
    let stats = agent.outbox_stats();
    assert!(
        stats["oldest_created_at_ms"].as_i64() > first_oldest,
        "the first report is gone: {stats}, first oldest {first_oldest:?}"
    );
    assert!(
        stats["reports"].as_i64().unwrap() >= 1,
        "the newest report is kept: {stats}"
    );
    assert_eq!(stats["dead_letters"], 0);
}

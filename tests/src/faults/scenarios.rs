//! The scenarios of docs/RELIABILITY.md. Each injects its faults from outside the processes,
//! prints what it injected and measured, then what the oracle found, and returns it all.
//! A scenario that cannot run on this machine (no PostgreSQL server programs, no right to
//! mount a small filesystem) says why in its findings' `skipped`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::disk::SmallDisk;
use super::field::{FieldAgent, signal};
use super::oracle::{Oracle, check_agent};
use super::proxy::{FaultProxy, LinkFault};
use super::senders::{Stream, Tally, on_own_runtime, send};
use super::{Findings, Size, Stage, eventually};
use crate::{AggregatorProcess, Daemon};

/// A scenario: it runs in the size given and says what it found.
pub type Scenario = fn(Size) -> Findings;

/// Every scenario, by the name `duban-faults` and the tests know it by.
pub const ALL: [(&str, Scenario); 9] = [
    ("link", link),
    ("postgres-restart", postgres_restart),
    ("replicas", replicas),
    ("returning-agents", returning_agents),
    ("sigterm", sigterm),
    ("clock", clock),
    ("agent-disk-full", agent_disk_full),
    ("aggregator-disk-full", aggregator_disk_full),
    ("corrupt-database", corrupt_database),
];

/// How long a field agent may take to deliver after the faults stop: its backoff is capped at
/// 60 s (full jitter), so a minute and a half covers the longest wait and the delivery.
const AGENT_SETTLES: Duration = Duration::from_secs(90);

/// Sends the stream on a thread of its own; join the handle for the end of it.
fn send_in_background(
    stream: Stream,
    oracle: &Oracle,
    tally: &Tally,
) -> std::thread::JoinHandle<()> {
    let (oracle, tally) = (oracle.clone(), tally.clone());
    std::thread::spawn(move || on_own_runtime(move || send(stream, oracle, tally)))
}

/// Waits until the field agent's delivery passes the oracle (or [`AGENT_SETTLES`] passes),
/// then records what the oracle finds.
fn settle_agent(f: &mut Findings, stage: &Stage, agent: &FieldAgent) {
    let expected = agent.expected();
    let started = Instant::now();
    let mut figures = Vec::new();
    eventually(AGENT_SETTLES, || {
        check_agent(&stage.url, &agent.setup, &expected, &mut Vec::new()).is_empty()
    });
    let found = check_agent(&stage.url, &agent.setup, &expected, &mut figures);
    f.figure(format!(
        "{}: delivered what its source said last {:.1} s after the faults stopped",
        agent.setup.unit,
        started.elapsed().as_secs_f64()
    ));
    for figure in figures {
        f.figure(figure);
    }
    if !found.is_empty() {
        let log = agent.setup.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        eprintln!(
            "[{}] {}'s log, last {} lines:\n{}",
            f.scenario,
            agent.setup.unit,
            tail.len(),
            tail.join("\n")
        );
    }
    f.oracle(found);
}

/// What the in-process units sent, what was acknowledged, and the answers they met.
fn stream_figure(f: &mut Findings, oracle: &Oracle, tally: &Tally) {
    let (sent, acked) = oracle.counts();
    f.figure(format!(
        "in-process units: {sent} reports sent, {acked} acknowledged; answers met: {tally}"
    ));
}

/// The end of a scenario with in-process units and real agents: the oracle on both, the
/// agents still running, a fresh report stored.
fn finish(
    f: &mut Findings,
    stage: &Stage,
    (oracle, tally): (&Oracle, &Tally),
    (field, daemons): (&[FieldAgent], &mut [Daemon]),
    aggregator: &mut AggregatorProcess,
) {
    stream_figure(f, oracle, tally);
    f.oracle(oracle.check(&stage.url));
    for agent in field {
        settle_agent(f, stage, agent);
    }
    for (daemon, agent) in daemons.iter_mut().zip(field) {
        still_running(f, daemon, agent);
    }
    fresh_report(f, stage, aggregator);
}

/// After the faults: the aggregator is alive, and a fresh report from the stage's last unit
/// (kept for this) is acknowledged and stored.
fn fresh_report(f: &mut Findings, stage: &Stage, aggregator: &mut AggregatorProcess) {
    if let Ok(Some(status)) = aggregator.child.try_wait() {
        f.problem(format!(
            "the aggregator exited ({status}):\n{}",
            aggregator.log()
        ));
        return;
    }
    let oracle = Oracle::default();
    let tally = Tally::default();
    let stream = Stream {
        endpoints: vec![format!("http://{}", aggregator.grpc)],
        units: stage.units - 1..stage.units,
        rounds: 1,
        batch: 0,
        timeout: Duration::from_secs(5),
        stop: Default::default(),
        give_up_after: Duration::from_secs(30),
    };
    let (o, t) = (oracle.clone(), tally.clone());
    on_own_runtime(move || send(stream, o, t));
    if oracle.counts() != (1, 1) {
        f.problem(format!("a fresh report was not acknowledged: {tally}"));
    }
    let found = oracle.check(&stage.url);
    if found.is_empty() {
        eprintln!("[{}] a fresh report is accepted and stored", f.scenario);
    }
    f.oracle(found);
}

/// That a daemon is still running (no crash, no crash loop) and never panicked.
fn still_running(f: &mut Findings, daemon: &mut Daemon, agent: &FieldAgent) {
    if let Ok(Some(status)) = daemon.try_wait() {
        f.problem(format!("{} exited ({status})", agent.setup.unit));
    }
    if agent.setup.log().contains("panicked") {
        f.problem(format!(
            "{} panicked:\n{}",
            agent.setup.unit,
            agent.setup.log()
        ));
    }
}

/// 1. A slow, stalling, resetting, truncating and black-holed link between the units and the
///    aggregator: in-process units send unary calls with a 1 s timeout and resend until
///    acknowledged; real agents (2 s timeout) deliver what their sources say, round after
///    round. Nothing is lost or doubled, and each fault only delays.
pub fn link(size: Size) -> Findings {
    let mut f = Findings::new("link");
    let (sim_units, agents) = (4, 2);
    let stage = Stage::new(sim_units + agents + 1, None);
    let mut aggregator = stage.start(&[]);
    let proxy = FaultProxy::start(aggregator.grpc);
    let endpoint = format!("http://{}", proxy.addr);
    let mut field: Vec<FieldAgent> = (sim_units..sim_units + agents)
        .map(|i| FieldAgent::new(&stage, i, &endpoint, "timeout = \"2s\"", ""))
        .collect();
    let mut daemons: Vec<Daemon> = field.iter().map(|a| a.spawn(&[])).collect();
    let oracle = Oracle::default();
    let tally = Tally::default();
    let sender = send_in_background(
        Stream {
            endpoints: vec![endpoint.clone()],
            units: 0..sim_units,
            rounds: size.pick(60, 600),
            batch: 0,
            timeout: Duration::from_secs(1),
            stop: Default::default(),
            give_up_after: Duration::from_secs(120),
        },
        &oracle,
        &tally,
    );
    let faults = [
        LinkFault::Delay(Duration::from_millis(300)),
        LinkFault::Stall,
        LinkFault::Reset,
        LinkFault::Truncate(64),
        LinkFault::Truncate(4_096),
        LinkFault::BlackHole,
        LinkFault::Delay(Duration::from_millis(1_500)),
    ];
    let hold = size.pick(Duration::from_secs(3), Duration::from_secs(20));
    let between = size.pick(Duration::from_secs(1), Duration::from_secs(5));
    for fault in faults.iter().cycle().take(size.pick(1, 4) * faults.len()) {
        f.inject(format!("{fault} for {} s", hold.as_secs()));
        proxy.set(*fault);
        for agent in &mut field {
            agent.next_round();
        }
        // The fault's duration: this is the fault, not a wait for something to happen.
        std::thread::sleep(hold);
        proxy.set(LinkFault::None);
        std::thread::sleep(between);
    }
    for agent in &mut field {
        agent.next_round();
    }
    sender.join().expect("the senders");
    f.figure(format!("proxy: {:?}", proxy.counts()));
    finish(
        &mut f,
        &stage,
        (&oracle, &tally),
        (&field, &mut daemons),
        &mut aggregator,
    );
    f
}

/// 2. PostgreSQL (a private cluster) restarted in the middle of a stream, then unreachable
///    for a while: calls are answered UNAVAILABLE, `/readyz` says not ready, the aggregator
///    recovers by itself, nothing is lost.
pub fn postgres_restart(size: Size) -> Findings {
    let mut f = Findings::new("postgres-restart");
    let Some(cluster) = private_cluster(&mut f) else {
        return f;
    };
    let units = 6;
    let stage = Stage::new(units + 1, Some(cluster.url()));
    let mut aggregator = stage.start(&[]);
    let oracle = Oracle::default();
    let tally = Tally::default();
    let sender = send_in_background(
        Stream {
            endpoints: vec![format!("http://{}", aggregator.grpc)],
            units: 0..units,
            rounds: size.pick(150, 1_500),
            batch: 0,
            timeout: Duration::from_secs(6),
            stop: Default::default(),
            give_up_after: Duration::from_secs(180),
        },
        &oracle,
        &tally,
    );
    let http = aggregator.http.to_string();
    wait_for_progress(&oracle, 50);
    f.inject("PostgreSQL stopped (-m fast) and started again at once");
    stop_cluster(&mut f, &cluster, "fast");
    start_cluster(&mut f, &cluster);
    wait_for_progress(&oracle, oracle.counts().1 + 50);
    let outage = size.pick(Duration::from_secs(8), Duration::from_secs(60));
    f.inject(format!(
        "PostgreSQL crashed (-m immediate), unreachable for {} s",
        outage.as_secs()
    ));
    stop_cluster(&mut f, &cluster, "immediate");
    let down = Instant::now();
    let not_ready = eventually(Duration::from_secs(20), || {
        readyz(&http).is_some_and(|code| code == 503)
    });
    if !not_ready {
        f.problem(format!(
            "/readyz did not say not ready within 20 s of the database going down: {:?}",
            readyz(&http)
        ));
    } else {
        f.figure(format!(
            "/readyz said 503 {:.1} s after the database went down",
            down.elapsed().as_secs_f64()
        ));
    }
    let unavailable_before = tally.get("Unavailable");
    std::thread::sleep(outage.saturating_sub(down.elapsed()));
    if tally.get("Unavailable") == unavailable_before {
        f.problem(format!(
            "no call was answered UNAVAILABLE while the database was down: {tally}"
        ));
    }
    start_cluster(&mut f, &cluster);
    let up = Instant::now();
    if eventually(Duration::from_secs(60), || readyz(&http) == Some(200)) {
        f.figure(format!(
            "/readyz said 200 again {:.1} s after the database came back",
            up.elapsed().as_secs_f64()
        ));
    } else {
        f.problem("/readyz did not say ready within 60 s of the database coming back");
    }
    sender.join().expect("the senders");
    stream_figure(&mut f, &oracle, &tally);
    f.oracle(oracle.check(&stage.url));
    fresh_report(&mut f, &stage, &mut aggregator);
    f
}

/// 3. Two aggregator replicas on one PostgreSQL receive the same batches at once; one of them
///    is SIGKILLed in the middle: exactly one stored copy of everything.
pub fn replicas(size: Size) -> Findings {
    let mut f = Findings::new("replicas");
    let Some(cluster) = private_cluster(&mut f) else {
        return f;
    };
    let units = 6;
    let stage = Stage::new(units + 1, Some(cluster.url()));
    let mut a = stage.start(&[]);
    let mut b = stage.start(&[]);
    let oracle = Oracle::default();
    let tally = Tally::default();
    let rounds = size.pick(200, 2_000);
    let sender = send_in_background(
        Stream {
            endpoints: vec![format!("http://{}", a.grpc), format!("http://{}", b.grpc)],
            units: 0..units,
            rounds,
            batch: 10,
            timeout: Duration::from_secs(3),
            // The killed replica's calls are given up; the other replica's answers count.
            stop: Default::default(),
            give_up_after: Duration::from_secs(size.pick(20, 60)),
        },
        &oracle,
        &tally,
    );
    wait_for_progress(&oracle, (units as u64 * rounds / 3) as usize);
    f.inject(format!(
        "replica B (pid {}) SIGKILLed with {} of {} reports acknowledged",
        b.child.id(),
        oracle.counts().1,
        units as u64 * rounds
    ));
    let _ = b.child.kill();
    let _ = b.child.wait();
    sender.join().expect("the senders");
    let (sent, acked) = oracle.counts();
    f.figure(format!(
        "{sent} reports sent to both replicas, {acked} acknowledged by one or both; answers met: {tally}"
    ));
    if acked != sent {
        f.problem(format!(
            "{} reports were acknowledged by neither replica",
            sent - acked
        ));
    }
    f.oracle(oracle.check(&stage.url));
    fresh_report(&mut f, &stage, &mut a);
    f
}

/// 4. The aggregator unreachable for a long outage, then back with many agents (in-process
///    simulated units, each its own connection and backlog) returning at once: they are paced
///    with RESOURCE_EXHAUSTED and their jittered backoff, not failed; the aggregator's memory
///    stays under a stated bound; the drain time is printed.
pub fn returning_agents(size: Size) -> Findings {
    let mut f = Findings::new("returning-agents");
    let units = size.pick(1_000, 1_000);
    let per_unit = size.pick(5, 30);
    let stage = Stage::new(units + 1, None);
    // The per-unit limit stays at its default; the limit on calls in flight is what a
    // thousand agents at once meet.
    let mut aggregator = stage.start(&["--max-in-flight", "64"]);
    let proxy = FaultProxy::start(aggregator.grpc);
    proxy.set(LinkFault::Reset);
    f.inject(format!(
        "the aggregator unreachable (every connection reset) while {units} units build a backlog of {per_unit} reports each"
    ));
    let oracle = Oracle::default();
    let tally = Tally::default();
    let sender = send_in_background(
        Stream {
            endpoints: vec![format!("http://{}", proxy.addr)],
            units: 0..units,
            rounds: per_unit as u64,
            batch: per_unit,
            timeout: Duration::from_secs(10),
            stop: Default::default(),
            give_up_after: Duration::from_secs(300),
        },
        &oracle,
        &tally,
    );
    // Every unit has met the outage at least once before the link comes back.
    eventually(Duration::from_secs(60), || {
        tally.get("Unavailable") + tally.get("Unknown") >= units as u64
    });
    let pid = aggregator.child.id();
    let before = super::rss_bytes(pid);
    f.inject("the aggregator reachable again: every unit returns at once");
    let back = Instant::now();
    proxy.set(LinkFault::None);
    let mut peak = before;
    while !sender.is_finished() {
        peak = peak.max(super::rss_bytes(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    sender.join().expect("the senders");
    let drained = back.elapsed();
    let (sent, acked) = oracle.counts();
    let bound = 512 * 1024 * 1024;
    f.figure(format!(
        "{units} units × {per_unit} reports: {acked} of {sent} acknowledged {:.1} s after the link came back; aggregator RSS {} MB before, peak {} MB (bound {} MB); answers met: {tally}",
        drained.as_secs_f64(),
        before >> 20,
        peak >> 20,
        bound >> 20
    ));
    if peak > bound {
        f.problem(format!(
            "aggregator RSS peaked at {} MB, over the bound of {} MB",
            peak >> 20,
            bound >> 20
        ));
    }
    if tally.get("ResourceExhausted") == 0 {
        f.problem(format!(
            "no unit was paced with RESOURCE_EXHAUSTED: {tally}"
        ));
    }
    if acked != sent {
        f.problem(format!("{} reports not acknowledged", sent - acked));
    }
    f.oracle(oracle.check(&stage.url));
    fresh_report(&mut f, &stage, &mut aggregator);
    f
}

/// 5. SIGTERM to an agent during an outage (its outbox keeps everything, and the next run
///    delivers it) and when healthy (it drains within the grace period before it exits).
pub fn sigterm(size: Size) -> Findings {
    let mut f = Findings::new("sigterm");
    let stage = Stage::new(2, None);
    let mut aggregator = stage.start(&[]);
    let proxy = FaultProxy::start(aggregator.grpc);
    let endpoint = format!("http://{}", proxy.addr);
    let mut agent = FieldAgent::new(&stage, 0, &endpoint, "timeout = \"2s\"", "");
    proxy.set(LinkFault::Reset);
    f.inject("outage: every connection to the aggregator reset");
    let mut daemon = agent.spawn(&[]);
    for _ in 0..size.pick(3, 10) {
        let committed = next_seq(&agent);
        agent.next_round();
        eventually(Duration::from_secs(10), || next_seq(&agent) > committed);
    }
    let waiting = agent.setup.outbox_stats()["reports"].as_i64().unwrap_or(0);
    f.inject(format!(
        "SIGTERM during the outage, {waiting} report(s) waiting"
    ));
    signal(daemon.id(), "TERM");
    let exited = wait_exit(&mut daemon, Duration::from_secs(15));
    let stats = agent.setup.outbox_stats();
    f.figure(format!(
        "exited {exited:?}; the outbox keeps {} report(s)",
        stats["reports"]
    ));
    if exited.is_none_or(|s| !s.success()) {
        f.problem(format!(
            "the agent did not exit cleanly within 15 s: {exited:?}; its log ends:\n{}",
            tail(&agent.setup.log(), 15)
        ));
    }
    if stats["reports"].as_i64() != Some(waiting) || waiting == 0 {
        f.problem(format!(
            "the outbox held {waiting} report(s) before SIGTERM and {} after",
            stats["reports"]
        ));
    }
    // Healthy: the agent started again in the outage, backing off with its backlog; the link
    // comes back and SIGTERM follows at once, before the backoff ends: the drain on SIGTERM
    // delivers the backlog within the grace period.
    agent.next_round();
    let mut daemon = agent.spawn(&[]);
    let committed = next_seq(&agent);
    eventually(Duration::from_secs(10), || next_seq(&agent) > committed);
    let waiting = agent.setup.outbox_stats()["reports"].as_i64().unwrap_or(0);
    proxy.set(LinkFault::None);
    f.inject(format!(
        "link healthy again, and SIGTERM at once to the agent with {waiting} report(s) waiting"
    ));
    let stopping = Instant::now();
    signal(daemon.id(), "TERM");
    let exited = wait_exit(&mut daemon, Duration::from_secs(15));
    let stats = agent.setup.outbox_stats();
    f.figure(format!(
        "exited {exited:?} {:.1} s after SIGTERM (grace 10 s) with {} report(s) left",
        stopping.elapsed().as_secs_f64(),
        stats["reports"]
    ));
    if exited.is_none_or(|s| !s.success()) {
        f.problem(format!(
            "the agent did not exit cleanly within 15 s: {exited:?}; its log ends:\n{}",
            tail(&agent.setup.log(), 15)
        ));
    }
    settle_agent(&mut f, &stage, &agent);
    fresh_report(&mut f, &stage, &mut aggregator);
    f
}

/// 6. The agent's clock an hour ahead, then an hour behind (libfaketime): ahead, its reports
///    are refused ISSUED_IN_FUTURE and kept, retried, and delivered once the clock is right;
///    behind, they are stored (an old issue time is a backlog's), with the time they say.
///    Nothing is lost either way.
pub fn clock(_size: Size) -> Findings {
    let mut f = Findings::new("clock");
    let Some(faketime) = faketime_library() else {
        f.skip("libfaketime is not installed (Debian package faketime)");
        return f;
    };
    let stage = Stage::new(2, None);
    let mut aggregator = stage.start(&[]);
    let endpoint = format!("http://{}", aggregator.grpc);
    let mut agent = FieldAgent::new(&stage, 0, &endpoint, "timeout = \"2s\"", "");
    let env = |offset: &'static str| {
        [
            ("LD_PRELOAD", faketime.clone()),
            ("FAKETIME", offset.to_owned()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
            ("FAKETIME_DONT_RESET", "1".to_owned()),
        ]
    };
    f.inject("the agent's clock an hour ahead");
    let ahead = env("+1h");
    let ahead: Vec<(&str, &str)> = ahead.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut daemon = agent.spawn(&ahead);
    let refused = eventually(Duration::from_secs(30), || {
        agent.setup.log().contains("ISSUED_IN_FUTURE")
    });
    let stats = agent.setup.outbox_stats();
    f.figure(format!(
        "ahead: refused ISSUED_IN_FUTURE: {refused}; {} report(s) kept in the outbox",
        stats["reports"]
    ));
    if !refused || stats["reports"].as_i64().unwrap_or(0) == 0 {
        f.problem("an agent an hour ahead was not refused ISSUED_IN_FUTURE with its reports kept");
    }
    signal(daemon.id(), "TERM");
    let _ = wait_exit(&mut daemon, Duration::from_secs(15));
    f.inject("the clock fixed: the agent restarted on the right time");
    agent.next_round();
    let mut daemon = agent.spawn(&[]);
    settle_agent(&mut f, &stage, &agent);
    still_running(&mut f, &mut daemon, &agent);
    signal(daemon.id(), "TERM");
    let _ = wait_exit(&mut daemon, Duration::from_secs(15));

    f.inject("the agent's clock an hour behind");
    agent.next_round();
    let behind = env("-1h");
    let behind: Vec<(&str, &str)> = behind.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut daemon = agent.spawn(&behind);
    settle_agent(&mut f, &stage, &agent);
    still_running(&mut f, &mut daemon, &agent);
    fresh_report(&mut f, &stage, &mut aggregator);
    f
}

/// 7. The agent's disk full (its state on a small tmpfs): no crash loop, collection refused
///    and counted, what was stored intact, collection resumed when space returns.
pub fn agent_disk_full(_size: Size) -> Findings {
    let mut f = Findings::new("agent-disk-full");
    let stage = Stage::new(2, None);
    let mut aggregator = stage.start(&[]);
    let proxy = FaultProxy::start(aggregator.grpc);
    let endpoint = format!("http://{}", proxy.addr);
    let mut agent = FieldAgent::new(&stage, 0, &endpoint, "timeout = \"2s\"", "");
    let disk = match SmallDisk::mount(&agent.setup.dir.join("state"), 1024 * 1024) {
        Ok(disk) => disk,
        Err(why) => {
            f.skip(&why);
            return f;
        }
    };
    let text = std::fs::read_to_string(&agent.setup.config).unwrap();
    std::fs::write(
        &agent.setup.config,
        text.replace("path = \"outbox.db\"", "path = \"state/outbox.db\"")
            + "\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    proxy.set(LinkFault::Reset);
    f.inject("outage, and the agent's state on a 1 MiB tmpfs");
    let mut daemon = agent.spawn(&[]);
    let mut rounds = 0;
    let full = eventually(Duration::from_secs(120), || {
        agent.next_round();
        rounds += 1;
        std::thread::sleep(Duration::from_millis(1_200));
        agent.setup.log().contains("disk is full")
    });
    f.figure(format!(
        "the disk filled after {rounds} source rounds: {full}"
    ));
    if !full {
        f.problem("the agent's disk never filled (or the agent did not say so)");
    }
    let waiting_full = agent.setup.outbox_stats()["reports"].as_i64().unwrap_or(0);
    still_running(&mut f, &mut daemon, &agent);
    let metrics = crate::http_get(&agent.setup.metrics_address(), "/metrics");
    let errors: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("duban_agent_collection_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    f.figure(format!("duban_agent_collection_errors_total: {errors}"));
    if errors < 1.0 {
        f.problem(
            "the refused collections were not counted in duban_agent_collection_errors_total",
        );
    }
    f.inject("space returns (the tmpfs grown to 64 MiB) and the link comes back");
    if let Err(why) = disk.resize(64 * 1024 * 1024) {
        f.problem(why);
    }
    proxy.set(LinkFault::None);
    agent.next_round();
    f.figure(format!(
        "{waiting_full} report(s) waited when the disk was full"
    ));
    settle_agent(&mut f, &stage, &agent);
    still_running(&mut f, &mut daemon, &agent);
    signal(daemon.id(), "TERM");
    let _ = wait_exit(&mut daemon, Duration::from_secs(15));
    drop(disk);
    fresh_report(&mut f, &stage, &mut aggregator);
    f
}

/// 8. The aggregator's disk full on SQLite (its database on a small tmpfs): calls answered
///    UNAVAILABLE, nothing acknowledged that is not on disk, recovery when space returns.
pub fn aggregator_disk_full(_size: Size) -> Findings {
    let mut f = Findings::new("aggregator-disk-full");
    let units = 4;
    let dir = tempfile::tempdir().unwrap();
    let disk = match SmallDisk::mount(&dir.path().join("db"), 2 * 1024 * 1024) {
        Ok(disk) => disk,
        Err(why) => {
            f.skip(&why);
            return f;
        }
    };
    let url = format!("sqlite://{}", dir.path().join("db/duban.db").display());
    let stage = Stage::new(units + 1, Some(url));
    let mut aggregator = stage.start(&[]);
    f.inject("the aggregator's database on a 2 MiB tmpfs");
    let oracle = Oracle::default();
    let tally = Tally::default();
    let stop: std::sync::Arc<std::sync::atomic::AtomicBool> = Default::default();
    let sender = send_in_background(
        Stream {
            endpoints: vec![format!("http://{}", aggregator.grpc)],
            units: 0..units,
            rounds: 1_000_000,
            batch: 20,
            timeout: Duration::from_secs(5),
            stop: stop.clone(),
            give_up_after: Duration::from_secs(120),
        },
        &oracle,
        &tally,
    );
    let full = eventually(Duration::from_secs(120), || tally.get("Unavailable") >= 10);
    let acked_full = oracle.counts().1;
    f.figure(format!(
        "the disk filled after {acked_full} acknowledged reports; calls answered UNAVAILABLE: {full}"
    ));
    if !full {
        f.problem(format!("no UNAVAILABLE answers on a full disk: {tally}"));
    }
    // What was acknowledged is on disk: checked while the disk is still full.
    f.oracle(oracle.check(&stage.url));
    f.inject("space returns: the tmpfs grown to 256 MiB");
    if let Err(why) = disk.resize(256 * 1024 * 1024) {
        f.problem(why);
    }
    let resumed = oracle.counts().1;
    if !eventually(Duration::from_secs(60), || {
        oracle.counts().1 >= resumed + 200
    }) {
        f.problem(format!(
            "storage did not resume once space returned: {tally}"
        ));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    sender.join().expect("the senders");
    stream_figure(&mut f, &oracle, &tally);
    f.oracle(oracle.check(&stage.url));
    fresh_report(&mut f, &stage, &mut aggregator);
    drop(aggregator);
    drop(disk);
    f
}

/// 9. A page of a copy of the aggregator's SQLite database damaged on purpose: `serve`
///    refuses to start with a message that names the damage and the way out
///    (docs/OPERATIONS.md), and serves nothing.
pub fn corrupt_database(_size: Size) -> Findings {
    let mut f = Findings::new("corrupt-database");
    let units = 4;
    let stage = Stage::new(units + 1, None);
    let mut aggregator = stage.start(&[]);
    let oracle = Oracle::default();
    let tally = Tally::default();
    let (o, t) = (oracle.clone(), tally.clone());
    on_own_runtime(move || {
        send(
            Stream {
                endpoints: vec![format!("http://{}", aggregator.grpc)],
                units: 0..units,
                rounds: 500,
                batch: 50,
                timeout: Duration::from_secs(5),
                stop: Default::default(),
                give_up_after: Duration::from_secs(60),
            },
            o,
            t,
        )
    });
    let _ = aggregator.signal_and_wait("TERM", Duration::from_secs(30));
    f.oracle(oracle.check(&stage.url));
    let path = stage.dir.path().join("duban.db");
    let copy = stage.dir.path().join("damaged.db");
    std::fs::copy(&path, &copy).unwrap();
    let len = std::fs::metadata(&copy).unwrap().len();
    let page = 4096;
    let victim = (len / page / 2) * page;
    let mut bytes = std::fs::read(&copy).unwrap();
    for (i, b) in bytes[victim as usize..(victim + page) as usize]
        .iter_mut()
        .enumerate()
    {
        *b = (i as u8).wrapping_mul(37) ^ 0xA5;
    }
    std::fs::write(&copy, bytes).unwrap();
    f.inject(format!(
        "page {} of {} overwritten with garbage in a copy of the database",
        victim / page + 1,
        len / page
    ));
    let url = format!("sqlite://{}", copy.display());
    let out = crate::run(
        &crate::binary("duban-aggregator"),
        &[
            "serve",
            "--database-url",
            &url,
            "--plan",
            stage.plan.to_str().unwrap(),
            "--insecure-plaintext",
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
    );
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    f.figure(format!(
        "serve on the damaged copy: {} — {}",
        out.status,
        said.lines().last().unwrap_or_default()
    ));
    if out.status.success() || said.contains("aggregator serving") {
        f.problem(format!("serve started on a damaged database:\n{said}"));
    }
    if !(said.contains("damaged") && said.contains("OPERATIONS.md")) {
        f.problem(format!(
            "the refusal does not name the damage and the way out:\n{said}"
        ));
    }
    f
}

/// The last `n` lines of a log.
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits until `n` reports are acknowledged (at most a minute).
fn wait_for_progress(oracle: &Oracle, n: usize) {
    eventually(Duration::from_secs(60), || oracle.counts().1 >= n);
}

fn next_seq(agent: &FieldAgent) -> i64 {
    agent.setup.outbox_stats()["next_seq"].as_i64().unwrap_or(0)
}

fn wait_exit(daemon: &mut Daemon, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = daemon.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `/readyz`'s status code, or `None` when it does not answer within 2 s.
fn readyz(http: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = http.parse().ok()?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

fn private_cluster(f: &mut Findings) -> Option<super::cluster::Cluster> {
    let Some(bin) = super::cluster::server_bin() else {
        f.skip("no PostgreSQL server programs (initdb, pg_ctl) under /usr/lib/postgresql");
        return None;
    };
    match super::cluster::Cluster::start(&bin) {
        Ok(cluster) => Some(cluster),
        Err(why) => {
            f.problem(format!("cannot start a private PostgreSQL cluster: {why}"));
            None
        }
    }
}

fn stop_cluster(f: &mut Findings, cluster: &super::cluster::Cluster, mode: &str) {
    if let Err(why) = cluster.stop_server(mode) {
        f.problem(why);
    }
}

fn start_cluster(f: &mut Findings, cluster: &super::cluster::Cluster) {
    if let Err(why) = cluster.start_server() {
        f.problem(why);
    }
}

/// The libfaketime library, when installed.
fn faketime_library() -> Option<String> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    ]
    .iter()
    .find(|p| std::path::Path::new(p).exists())
    .map(|p| p.to_string())
}

/// One sample of the soak's long-lived processes.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    minute: u64,
    aggregator_rss: u64,
    aggregator_fds: usize,
    agents_rss: u64,
    agents_fds: usize,
    disk: u64,
}

/// The soak: one aggregator (SQLite) behind the proxy, real agents and in-process units
/// sending all along, and a random fault from the list every few seconds for `minutes`: each
/// link fault, SIGKILL of the aggregator or of an agent (restarted), SIGTERM of an agent
/// (restarted), SIGSTOP of the aggregator for a while. Memory, open files and disk use of
/// the long-lived processes are sampled every minute; the oracle runs at the end. `seed`
/// chooses the faults (printed, so that a run can be replayed).
pub fn soak(minutes: u64, seed: u64) -> Findings {
    let mut f = Findings::new("soak");
    f.figure(format!("{minutes} min, seed {seed}"));
    let mut random = {
        let mut state = seed;
        move |n: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % n
        }
    };
    let (sim_units, agents) = (4, 2);
    let stage = Stage::new(sim_units + agents + 1, None);
    let mut aggregator = stage.start(&[]);
    let proxy = FaultProxy::start(aggregator.grpc);
    let endpoint = format!("http://{}", proxy.addr);
    let mut field: Vec<FieldAgent> = (sim_units..sim_units + agents)
        .map(|i| FieldAgent::new(&stage, i, &endpoint, "timeout = \"2s\"", ""))
        .collect();
    let mut daemons: Vec<Daemon> = field.iter().map(|a| a.spawn(&[])).collect();
    let oracle = Oracle::default();
    let tally = Tally::default();
    let stop: std::sync::Arc<std::sync::atomic::AtomicBool> = Default::default();
    let sender = send_in_background(
        Stream {
            endpoints: vec![endpoint.clone()],
            units: 0..sim_units,
            rounds: u64::MAX,
            batch: 5,
            timeout: Duration::from_secs(2),
            stop: stop.clone(),
            give_up_after: Duration::from_secs(600),
        },
        &oracle,
        &tally,
    );
    let started = Instant::now();
    let until = started + Duration::from_secs(minutes * 60);
    let mut samples: Vec<Sample> = Vec::new();
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut restarts = 0;
    while Instant::now() < until {
        let minute = started.elapsed().as_secs() / 60;
        if samples.last().is_none_or(|s| s.minute < minute) {
            let sample = Sample {
                minute,
                aggregator_rss: super::rss_bytes(aggregator.child.id()),
                aggregator_fds: super::open_fds(aggregator.child.id()),
                agents_rss: daemons.iter().map(|d| super::rss_bytes(d.id())).sum(),
                agents_fds: daemons.iter().map(|d| super::open_fds(d.id())).sum(),
                disk: super::disk_bytes(stage.dir.path()),
            };
            eprintln!("[soak] sample: {sample:?}");
            samples.push(sample);
        }
        for agent in &mut field {
            agent.next_round();
        }
        let hold = Duration::from_secs(3 + random(10));
        let which = random(9);
        let name = match which {
            0 => "link delay",
            1 => "link stall",
            2 => "link reset",
            3 => "link truncated",
            4 => "link black hole",
            5 => "aggregator SIGKILL",
            6 => "aggregator SIGSTOP",
            7 => "agent SIGKILL",
            _ => "agent SIGTERM",
        };
        *faults.entry(name).or_default() += 1;
        eprintln!("[soak] {name} for {} s", hold.as_secs());
        match which {
            0..=4 => {
                proxy.set(match which {
                    0 => LinkFault::Delay(Duration::from_millis(200 + random(1_500))),
                    1 => LinkFault::Stall,
                    2 => LinkFault::Reset,
                    3 => LinkFault::Truncate(random(8_192)),
                    _ => LinkFault::BlackHole,
                });
                std::thread::sleep(hold);
                proxy.set(LinkFault::None);
            }
            5 => {
                let _ = aggregator.child.kill();
                let _ = aggregator.child.wait();
                std::thread::sleep(hold);
                aggregator = stage.start(&[]);
                proxy.retarget(aggregator.grpc);
                restarts += 1;
            }
            6 => {
                signal(aggregator.child.id(), "STOP");
                std::thread::sleep(hold);
                signal(aggregator.child.id(), "CONT");
            }
            _ => {
                let n = random(agents as u64) as usize;
                signal(daemons[n].id(), if which == 7 { "KILL" } else { "TERM" });
                let _ = wait_exit(&mut daemons[n], Duration::from_secs(15));
                std::thread::sleep(hold);
                daemons[n] = field[n].spawn(&[]);
                restarts += 1;
            }
        }
        // The system's own pace between faults.
        std::thread::sleep(Duration::from_secs(2 + random(5)));
    }
    f.inject(format!("{faults:?}; {restarts} restarts"));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    sender.join().expect("the senders");
    for agent in &mut field {
        agent.next_round();
    }
    finish(
        &mut f,
        &stage,
        (&oracle, &tally),
        (&field, &mut daemons),
        &mut aggregator,
    );
    growth(&mut f, &samples);
    f
}

/// Compares the last sample with the first taken after a minute of warm-up: open files that
/// keep growing are a leak; memory is reported (it varies with restarts and the page cache).
fn growth(f: &mut Findings, samples: &[Sample]) {
    let (Some(first), Some(last)) = (samples.get(1).or(samples.first()), samples.last()) else {
        return;
    };
    f.figure(format!(
        "minute {} → {}: aggregator RSS {} → {} MB, fds {} → {}; agents RSS {} → {} MB, fds {} → {}; stage disk {} → {} MB",
        first.minute,
        last.minute,
        first.aggregator_rss >> 20,
        last.aggregator_rss >> 20,
        first.aggregator_fds,
        last.aggregator_fds,
        first.agents_rss >> 20,
        last.agents_rss >> 20,
        first.agents_fds,
        last.agents_fds,
        first.disk >> 20,
        last.disk >> 20
    ));
    let max_fds = samples
        .iter()
        .map(|s| s.aggregator_fds + s.agents_fds)
        .max()
        .unwrap_or(0);
    if max_fds > 4 * (first.aggregator_fds + first.agents_fds).max(32) {
        f.problem(format!(
            "open files grew from {} to {max_fds}",
            first.aggregator_fds + first.agents_fds
        ));
    }
    let peak = samples.iter().map(|s| s.aggregator_rss).max().unwrap_or(0);
    if peak > 1 << 30 {
        f.problem(format!("aggregator RSS reached {} MB", peak >> 20));
    }
}

//! The agent's figures: a backlog built while the aggregator was down, drained by the real
//! `duban-agent run` once the aggregator is back (time, peak RSS), and the same agent idle.
//! The aggregator runs without its per-unit rate limit here, which would otherwise set the
//! pace of any backlog beyond its burst.
//!
//! The backlog is what an agent that had synced with the centre builds during an outage: its
//! outbox filled through the agent's own library (`Agent::enqueue`, signed and committed as a
//! collection does), `values` values per report, twelve monthly periods per collection.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use duban_agent::config::AgentConfig;
use duban_agent::daemon::Agent;
use duban_agent::sources::Item;
use duban_aggregator::store::SqliteStore;

use crate::load::{indicator_id, unit_id};
use crate::{Server, Setup};

/// What the agent figures measured.
pub struct AgentFigures {
    pub reports: u64,
    pub fill_seconds: f64,
    pub drain_seconds: f64,
    pub drain_peak_rss_mb: f64,
    /// The aggregator's side of the drain: calls handled, seconds handling them (from the
    /// arrival of a call to its answer) and seconds of those in the store.
    pub centre_calls: f64,
    pub centre_seconds: f64,
    pub centre_store_seconds: f64,
    pub idle_rss_mb: f64,
    /// Of the idle RSS: anonymous (heap, stacks) and file-backed (the executable's pages).
    pub idle_anon_mb: f64,
    pub idle_file_mb: f64,
}

pub async fn measure(
    agent_bin: &Path,
    aggregator: &Path,
    setup: &Setup,
    dir: &Path,
    reports: usize,
    values: usize,
) -> anyhow::Result<AgentFigures> {
    let root = dir.join("agent");
    std::fs::create_dir_all(&root)?;
    let unit = unit_id(0);
    let url = format!("sqlite://{}", dir.join("drain.db").display());
    SqliteStore::open(&url).await?;
    checked(Command::new(agent_bin).args(["keygen", "--out"]).arg(&root))?;
    checked(
        Command::new(aggregator)
            .args(["keys", "add", "--database-url", &url, "--unit", &unit])
            .arg("--plan")
            .arg(&setup.plan)
            .arg("--public-key")
            .arg(root.join("signing.pub")),
    )?;
    std::fs::write(
        root.join("values.csv"),
        "indicator,period,value\ni000,2025-01,1\n",
    )?;
    // Down: nothing listens on port 1.
    let config = root.join("agent.toml");
    std::fs::write(&config, agent_toml(setup, &unit, "https://127.0.0.1:1"))?;

    let started = Instant::now();
    let filled = fill(&config, reports, values).await?;
    let fill_seconds = started.elapsed().as_secs_f64();
    eprintln!("  backlog of {filled} reports built in {fill_seconds:.1} s");

    // The per-unit rate limit off: it is the centre's policy (by default 1,000 reports a
    // second per unit after a burst of 20,000), and what is measured here is the agent.
    let server = Server::start_with(aggregator, setup, &url, &["--rate-limit", "0"])?;
    std::fs::write(&config, agent_toml(setup, &unit, &server.endpoint()))?;
    let log = root.join("drain.log");
    let started = Instant::now();
    let mut daemon = Daemon::start(agent_bin, &config, &log)?;
    let metrics = daemon.metrics_address(&log)?;
    loop {
        if waiting(&metrics)? == 0.0 {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!(
                "the backlog is not drained after 600 s; see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let drain_seconds = started.elapsed().as_secs_f64();
    let drain_peak_rss_mb = status_kb(daemon.0.id(), "VmHWM:")? as f64 / 1024.0;
    let dead = metric(&http_get(&metrics, "/metrics")?, "duban_agent_dead_letters");
    if dead != Some(0.0) {
        bail!(
            "dead letters after the drain: {dead:?}; see {}",
            log.display()
        );
    }
    daemon.stop();
    let centre = http_get(&server.http, "/metrics")?;
    let centre_metric = |name: &str| metric(&centre, name).unwrap_or(f64::NAN);

    // Idle: a fresh start with an empty outbox and nothing new to send, settled.
    let log = root.join("idle.log");
    let mut daemon = Daemon::start(agent_bin, &config, &log)?;
    let metrics = daemon.metrics_address(&log)?;
    let settle = Instant::now();
    while waiting(&metrics)? != 0.0 || settle.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let pid = daemon.0.id();
    let idle_rss_mb = status_kb(pid, "VmRSS:")? as f64 / 1024.0;
    let idle_anon_mb = status_kb(pid, "RssAnon:")? as f64 / 1024.0;
    let idle_file_mb = status_kb(pid, "RssFile:")? as f64 / 1024.0;
    daemon.stop();
    drop(server);
    Ok(AgentFigures {
        reports: filled,
        fill_seconds,
        drain_seconds,
        drain_peak_rss_mb,
        centre_calls: centre_metric("duban_ingest_duration_seconds_count"),
        centre_seconds: centre_metric("duban_ingest_duration_seconds_sum"),
        centre_store_seconds: centre_metric("duban_store_duration_seconds_sum"),
        idle_rss_mb,
        idle_anon_mb,
        idle_file_mb,
    })
}

fn agent_toml(setup: &Setup, unit: &str, endpoint: &str) -> String {
    let cert = |name: &str| setup.certs.join(name).display().to_string();
    format!(
        "unit = \"{unit}\"\nplan = \"{plan}\"\nprivate_key = \"signing.key\"\n\n\
         [aggregator]\nendpoints = [\"{endpoint}\"]\nca = \"{ca}\"\ncert = \"{crt}\"\nkey = \"{key}\"\n\
         server_name = \"localhost\"\ntimeout = \"10s\"\n\n\
         [outbox]\npath = \"outbox.db\"\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n\
         [[source]]\nname = \"values\"\nkind = \"csv\"\npath = \"values.csv\"\nevery = \"1h\"\n",
        plan = crate::PLAN_ID,
        ca = cert("ca.crt"),
        crt = cert(&format!("units/{unit}.crt")),
        key = cert(&format!("units/{unit}.key")),
    )
}

/// Fills the outbox of the agent configured in `config` with at least `reports` reports, as
/// collections during an outage would, after the agent had synced with the centre (a fresh key:
/// the centre's highest seq is 0).
async fn fill(config: &Path, reports: usize, values: usize) -> anyhow::Result<u64> {
    let config = AgentConfig::read(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let agent = Agent::open(config, Arc::new(duban_host::clock::SystemClock)).await?;
    let key = agent.identity().key.current();
    agent
        .outbox()
        .apply_centre_state(0, &[], agent.identity().signer(&key))
        .await?;
    let mut filled = 0u64;
    let mut round = 0u32;
    while filled < reports as u64 {
        round += 1;
        let items: Vec<Item> = (1..=12)
            .flat_map(|month| {
                (0..values).map(move |v| Item::Value {
                    indicator: indicator_id(v),
                    period: format!("2025-{month:02}").parse().expect("a month"),
                    value: f64::from(round) + v as f64,
                    note: String::new(),
                })
            })
            .collect();
        filled += agent.enqueue(&items, false).await?.reports.len() as u64;
    }
    agent.outbox().close().await;
    Ok(filled)
}

/// A `duban-agent run`, stopped with SIGTERM.
struct Daemon(Child);

impl Daemon {
    fn start(agent_bin: &Path, config: &Path, log: &Path) -> anyhow::Result<Self> {
        let log = std::fs::File::create(log)?;
        Ok(Daemon(
            Command::new(agent_bin)
                .arg("run")
                .arg("--config")
                .arg(config)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?,
        ))
    }

    /// Where this daemon serves /metrics, from its own `log`.
    fn metrics_address(&mut self, log: &Path) -> anyhow::Result<String> {
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(address) = text
                .lines()
                .find(|l| l.contains("serving /metrics"))
                .and_then(|l| l.split("metrics=").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                && self.0.try_wait()?.is_none()
                && http_get(address, "/metrics").is_ok()
            {
                return Ok(address.to_owned());
            }
            if let Some(status) = self.0.try_wait()? {
                bail!("duban-agent exited ({status}); see {}", log.display());
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "duban-agent serves no /metrics after 60 s; see {}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.0.id() as i32).expect("a pid"),
            rustix::process::Signal::TERM,
        );
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reports waiting in the agent's outbox, from its /metrics.
fn waiting(metrics: &str) -> anyhow::Result<f64> {
    metric(
        &http_get(metrics, "/metrics")?,
        "duban_agent_outbox_reports",
    )
    .context("duban_agent_outbox_reports in the agent's /metrics")
}

/// The value of an unlabelled metric in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The body of `GET path` from a plain HTTP server.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("an HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_owned())
}

/// A `/proc/PID/status` field in kB.
pub fn status_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{field} in /proc/{pid}/status"))
}

fn checked(command: &mut Command) -> anyhow::Result<()> {
    let out = command.output()?;
    if !out.status.success() {
        bail!(
            "{:?}: {}",
            command.get_program(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

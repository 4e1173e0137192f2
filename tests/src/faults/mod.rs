//! The fault-injection harness (docs/RELIABILITY.md): scenarios that inject the faults a
//! deployment meets from outside the processes (signals, a faulty link, a stopped database, a
//! full disk, a wrong clock, a damaged file), and an oracle checked after each of them:
//!
//! - every report the aggregator acknowledged is stored exactly once, with its exact bytes;
//! - every report an agent committed to its outbox is acknowledged or sits in its dead letters
//!   with a reason;
//! - the current values are what the sources said last, each counted once;
//! - once the faults stop, a fresh report is accepted and stored, and no process crash-loops.
//!
//! The scenarios run in a quick form in CI (`tests/tests/faults.rs`) and in a full form, or at
//! random for a soak, from the `duban-faults` program (`src/bin/duban-faults.rs`).

pub mod cluster;
pub mod disk;
pub mod field;
pub mod oracle;
pub mod proxy;
pub mod scenarios;
pub mod senders;

use std::path::PathBuf;
use std::time::Duration;

use crate::AggregatorProcess;

/// The plan of the harness: synthetic units reporting monthly indicators through 2025.
pub const PLAN_ID: &str = "faults-2025";
/// Indicators in the harness plan.
pub const INDICATORS: usize = 8;

/// How much of a scenario to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// A few seconds of each fault: what CI runs.
    Quick,
    /// The durations and counts the issue names (a minute of database outage, 1,000 agents
    /// returning at once, ...).
    Full,
}

impl Size {
    /// `quick` in the quick form, `full` in the full one.
    pub fn pick<T>(self, quick: T, full: T) -> T {
        match self {
            Size::Quick => quick,
            Size::Full => full,
        }
    }
}

/// What a scenario injected, what it measured and what the oracle found; each line is printed
/// as it happens, prefixed with the scenario's name.
#[derive(Debug, Default)]
pub struct Findings {
    pub scenario: String,
    pub injected: Vec<String>,
    pub figures: Vec<String>,
    /// What the oracle found wrong: empty when nothing was lost, doubled or wrong.
    pub problems: Vec<String>,
    /// Why the scenario could not run on this machine.
    pub skipped: Option<String>,
}

impl Findings {
    pub fn new(scenario: &str) -> Self {
        eprintln!("[{scenario}] start");
        Findings {
            scenario: scenario.to_owned(),
            ..Findings::default()
        }
    }

    pub fn inject(&mut self, what: impl Into<String>) {
        let what = self.say("inject", what.into());
        self.injected.push(what);
    }

    pub fn figure(&mut self, what: impl Into<String>) {
        let what = self.say("figure", what.into());
        self.figures.push(what);
    }

    pub fn problem(&mut self, what: impl Into<String>) {
        let what = self.say("PROBLEM", what.into());
        self.problems.push(what);
    }

    /// Prints `what` as it happens, under the scenario's name and `kind`.
    fn say(&self, kind: &str, what: String) -> String {
        eprintln!("[{}] {kind}: {what}", self.scenario);
        what
    }

    /// The scenario cannot run here, and why.
    pub fn skip(&mut self, why: &str) {
        eprintln!("[{}] SKIPPED: {why}", self.scenario);
        self.skipped = Some(why.to_owned());
    }

    /// Records each of the oracle's findings.
    pub fn oracle(&mut self, found: Vec<String>) {
        if found.is_empty() {
            eprintln!("[{}] oracle: nothing lost, doubled or wrong", self.scenario);
        }
        for problem in found {
            self.problem(format!("oracle: {problem}"));
        }
    }

    /// Panics with every problem when there is one (for the tests); a skipped scenario fails
    /// under `CI=true`, where everything it needs is installed.
    pub fn assert_clean(&self) {
        if let Some(why) = &self.skipped {
            assert!(
                !duban_testkit::in_ci(),
                "scenario {} skipped under CI=true: {why}",
                self.scenario
            );
        }
        assert!(
            self.problems.is_empty(),
            "scenario {}: {} problem(s):\n{}\ninjected:\n{}",
            self.scenario,
            self.problems.len(),
            self.problems.join("\n"),
            self.injected.join("\n")
        );
    }
}

/// The aggregator's side of a scenario: a directory, the harness plan and a database.
pub struct Stage {
    pub dir: tempfile::TempDir,
    pub plan: PathBuf,
    pub url: String,
    pub units: usize,
}

impl Stage {
    /// A stage on a SQLite file in a fresh directory (or at `url` when given), for `units`
    /// units whose keys are registered ([`senders::unit_key`]).
    pub fn new(units: usize, url: Option<String>) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let plan = dir.path().join("plan.toml");
        std::fs::write(
            &plan,
            duban_testkit::synthetic::plan_toml(PLAN_ID, units, INDICATORS),
        )
        .expect("write the plan");
        let url =
            url.unwrap_or_else(|| format!("sqlite://{}", dir.path().join("duban.db").display()));
        senders::register_keys(&url, units);
        Stage {
            dir,
            plan,
            url,
            units,
        }
    }

    /// `duban-aggregator serve` on this stage's database and plan, plaintext, with `extra`
    /// flags.
    pub fn start(&self, extra: &[&str]) -> AggregatorProcess {
        let mut args = vec![
            "--database-url",
            self.url.as_str(),
            "--plan",
            self.plan.to_str().unwrap(),
            "--insecure-plaintext",
        ];
        args.extend(extra);
        AggregatorProcess::start(&args)
    }
}

/// Polls `condition` every 50 ms for up to `limit`; whether it became true.
pub fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The resident set of a process (VmRSS), in bytes; 0 when it cannot be read.
pub fn rss_bytes(pid: u32) -> u64 {
    status_kb(pid, "VmRSS:") * 1024
}

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Runs `command`; its error output, after `what`, when it fails.
pub(crate) fn succeed(command: &mut std::process::Command, what: &str) -> Result<(), String> {
    let out = command
        .output()
        .map_err(|e| format!("{what}: cannot run {:?}: {e}", command.get_program()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Open file descriptors of a process; 0 when they cannot be listed.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Bytes under `path` (files only, not following links).
pub fn disk_bytes(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => disk_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

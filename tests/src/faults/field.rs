//! Real `duban-agent` processes for the scenarios about the agent: each reads a CSV source
//! that the harness rewrites round after round with values never seen before, so that the
//! oracle knows what the source said last and can tell a doubled value from a repeated one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use duban_testkit::synthetic::{indicator_id, unit_id};

use super::{INDICATORS, PLAN_ID, Stage};
use crate::{AgentSetup, Daemon};

/// Months each round of a field agent's source covers.
pub const MONTHS: u64 = 3;

pub struct FieldAgent {
    pub setup: AgentSetup,
    pub csv: PathBuf,
    pub index: usize,
    round: u64,
}

impl FieldAgent {
    /// An agent for harness unit `index` (its own key, registered with `keys add`), sending to
    /// `endpoint` (`http://…`), reading its CSV every second; `config` is appended to the
    /// `[aggregator]` table (e.g. `timeout = "2s"`), `outbox` to the `[outbox]` one.
    pub fn new(
        stage: &Stage,
        index: usize,
        endpoint: &str,
        aggregator: &str,
        outbox: &str,
    ) -> Self {
        let unit = unit_id(index);
        let csv = stage.dir.path().join(format!("{unit}.csv"));
        let setup = AgentSetup::for_plan(
            stage.dir.path(),
            &stage.url,
            &unit,
            (PLAN_ID, Some(&stage.plan)),
            endpoint,
            &format!(
                "[[source]]\nname = \"csv\"\nkind = \"csv\"\npath = \"{}\"\nevery = \"1s\"\n",
                csv.display()
            ),
        );
        let text = std::fs::read_to_string(&setup.config).unwrap();
        let text = text
            .replace(
                "timeout = \"5s\"\n",
                &format!("timeout = \"5s\"\n{aggregator}\n"),
            )
            .replace(
                "path = \"outbox.db\"\n",
                &format!("path = \"outbox.db\"\n{outbox}\n"),
            );
        let text = dedupe_timeout(&text);
        std::fs::write(&setup.config, text).unwrap();
        let mut agent = FieldAgent {
            setup,
            csv,
            index,
            round: 0,
        };
        agent.next_round();
        agent
    }

    /// Writes the source's next round: every indicator for months 1 to [`MONTHS`], each value
    /// new.
    pub fn next_round(&mut self) {
        self.round += 1;
        let mut text = String::from("indicator,period,value\n");
        for ((indicator, period), value) in self.expected() {
            text.push_str(&format!("{indicator},{period},{value}\n"));
        }
        // Written whole and renamed, so the agent never reads half a file.
        let partial = self.csv.with_extension("partial");
        std::fs::write(&partial, text).unwrap();
        std::fs::rename(&partial, &self.csv).unwrap();
    }

    /// What the source says now, by (indicator, period).
    pub fn expected(&self) -> BTreeMap<(String, String), f64> {
        let mut out = BTreeMap::new();
        for month in 1..=MONTHS {
            for i in 0..INDICATORS {
                let value = (self.round * 1_000 + month * 10 + i as u64) as f64;
                out.insert((indicator_id(i), format!("2025-{month:02}")), value);
            }
        }
        out
    }

    /// `duban-agent run`, with `env` set (e.g. a fake clock), its log in `daemon.log`.
    pub fn spawn(&self, env: &[(&str, &str)]) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.setup.log_path())
            .expect("open daemon.log");
        Command::new(crate::binary("duban-agent"))
            .args(["run", "--config", self.setup.config.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map(Daemon)
            .expect("start duban-agent")
    }
}

/// The agent configuration's `timeout` given twice (the default line and the scenario's) is
/// kept once: the scenario's.
fn dedupe_timeout(text: &str) -> String {
    let timeouts = text.matches("\ntimeout = ").count();
    if timeouts > 1 {
        text.replacen("timeout = \"5s\"\n", "", 1)
    } else {
        text.to_owned()
    }
}

/// Sends `signal` (`TERM`, `KILL`, `STOP`, `CONT`) to a process.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

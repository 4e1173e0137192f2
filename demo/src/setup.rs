//! The demo directory: a CA and certificates (`tls/`), one directory per agent (`agents/<unit>/`:
//! Ed25519 key, `agent.toml`, the CSV files its local system writes, its outbox), the
//! aggregator's database (`aggregator/duban.db`), the log (`demo.log`) and `summary.json`.
//!
//! Keys and certificates are kept from one run to the next; the run's state (database,
//! outboxes, CSV files, log, summary) is recreated, because every run replays the plan from its
//! start. `--fresh` deletes the whole directory first. A directory that is not empty and was
//! not made by the demo is never touched.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use duban_aggregator::plan::Plan;

const MARKER: &str = ".duban-demo";

#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
    pub tls: PathBuf,
    pub database: PathBuf,
    pub log: PathBuf,
    pub summary: PathBuf,
}

impl Layout {
    pub fn agent_dir(&self, unit: &str) -> PathBuf {
        self.root.join("agents").join(unit)
    }

    pub fn database_url(&self) -> String {
        format!("sqlite://{}", self.database.display())
    }
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    let result = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Makes `dir` ready for a run of `units`, reusing keys and certificates where present.
/// Returns the layout and whether the keys and certificates were reused.
pub fn prepare(dir: &Path, fresh: bool, plan: &Plan, units: &[String]) -> anyhow::Result<Layout> {
    if dir.exists() {
        if !dir.is_dir() {
            bail!("--dir {} exists and is not a directory", dir.display());
        }
        let ours = dir.join(MARKER).exists();
        let empty = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_none();
        if !ours && !empty {
            bail!(
                "--dir {} is not empty and was not made by duban-demo (it has no {MARKER} file); \
                 choose another --dir, or empty it yourself",
                dir.display()
            );
        }
        if fresh && ours {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("--fresh: cannot remove {}", dir.display()))?;
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(
        dir.join(MARKER),
        "made by duban-demo; `duban-demo --fresh` may delete this directory\n",
    )
    .with_context(|| format!("cannot write in {}", dir.display()))?;
    let root = std::path::absolute(dir).with_context(|| format!("{}", dir.display()))?;
    let layout = Layout {
        tls: root.join("tls"),
        database: root.join("aggregator").join("duban.db"),
        log: root.join("demo.log"),
        summary: root.join("summary.json"),
        root,
    };

    // The state of the previous run goes; its keys and certificates stay.
    remove_if_present(&layout.root.join("aggregator"))?;
    remove_if_present(&layout.log)?;
    remove_if_present(&layout.summary)?;
    let agents = layout.root.join("agents");
    if agents.is_dir() {
        for entry in std::fs::read_dir(&agents)? {
            let entry = entry?;
            if !units.iter().any(|u| entry.file_name() == u.as_str()) {
                remove_if_present(&entry.path())?;
                continue;
            }
            for file in std::fs::read_dir(entry.path())? {
                let path = file?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.starts_with("outbox.db") || name.ends_with(".csv") {
                    remove_if_present(&path)?;
                }
            }
        }
    }
    std::fs::create_dir_all(layout.root.join("aggregator"))?;

    duban_aggregator::admin::write_dev_ca(
        &layout.tls,
        plan,
        units,
        &["localhost".to_owned(), "127.0.0.1".to_owned()],
    )
    .context("cannot make the demo's certificates")?;
    for unit in units {
        let agent = layout.agent_dir(unit);
        std::fs::create_dir_all(&agent)
            .with_context(|| format!("cannot create {}", agent.display()))?;
        if !agent.join("signing.key").exists() {
            duban_agent::keygen::generate_into(&agent)
                .with_context(|| format!("cannot write the key of {unit}"))?;
        }
    }
    Ok(layout)
}

/// Writes `agents/<unit>/agent.toml`, an ordinary agent configuration (`duban-agent check`
/// accepts it) pointing at the demo aggregator.
pub fn write_agent_config(
    layout: &Layout,
    plan: &Plan,
    unit: &str,
    grpc: SocketAddr,
) -> anyhow::Result<PathBuf> {
    let host = if grpc.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        grpc.ip().to_string()
    };
    let tls = &layout.tls;
    let text = format!(
        r#"# Written by duban-demo for {name}. An ordinary agent configuration:
#   duban-agent check --config {path}
# In the demo, the simulated calendar triggers collection; `every` applies to `duban-agent run`.
unit = "{unit}"
plan = "{plan}"
private_key = "signing.key"

[aggregator]
endpoints = ["https://{host}:{port}"]
ca = "{ca}"
cert = "{cert}"
key = "{key}"
server_name = "localhost"
timeout = "10s"

[outbox]
path = "outbox.db"

[[source]]
name = "statistics"
kind = "csv"
path = "values.csv"
items = "values"
every = "1d"

[[source]]
name = "task-ledger"
kind = "csv"
path = "tasks.csv"
items = "tasks"
every = "1d"
"#,
        name = plan.party_name(unit),
        path = layout.agent_dir(unit).join("agent.toml").display(),
        plan = plan.id,
        port = grpc.port(),
        ca = tls.join("ca.crt").display(),
        cert = tls.join(format!("units/{unit}.crt")).display(),
        key = tls.join(format!("units/{unit}.key")).display(),
    );
    let path = layout.agent_dir(unit).join("agent.toml");
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        duban_aggregator::plan::embedded().plan
    }

    #[test]
    fn a_foreign_directory_is_refused_and_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("thesis.txt"), "precious").unwrap();
        for fresh in [false, true] {
            let error = prepare(tmp.path(), fresh, &plan(), &["laoshan".into()]).unwrap_err();
            assert!(
                error.to_string().contains("not made by duban-demo"),
                "{error}"
            );
        }
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("thesis.txt")).unwrap(),
            "precious"
        );
    }

    #[test]
    fn a_second_run_keeps_keys_and_certificates_and_fresh_replaces_them() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("demo");
        let units = vec!["laoshan".to_owned()];
        let layout = prepare(&dir, false, &plan(), &units).unwrap();
        let key = layout.agent_dir("laoshan").join("signing.key");
        let first = std::fs::read(&key).unwrap();
        std::fs::write(layout.agent_dir("laoshan").join("values.csv"), "old").unwrap();
        std::fs::write(&layout.database, "old").unwrap();

        let layout = prepare(&dir, false, &plan(), &units).unwrap();
        assert_eq!(std::fs::read(&key).unwrap(), first);
        assert!(!layout.agent_dir("laoshan").join("values.csv").exists());
        assert!(!layout.database.exists());

        prepare(&dir, true, &plan(), &units).unwrap();
        assert_ne!(std::fs::read(&key).unwrap(), first);
    }

    #[tokio::test]
    async fn the_written_agent_configuration_is_valid() {
        use duban_agent::config::{AgentConfig, Items, SourceKind};
        let tmp = tempfile::tempdir().unwrap();
        let plan = plan();
        let layout = prepare(tmp.path(), false, &plan, &["laoshan".into()]).unwrap();
        let path = write_agent_config(&layout, &plan, "laoshan", "127.0.0.1:7700".parse().unwrap())
            .unwrap();
        // The CSV exports the run writes, with their header rows only.
        for source in AgentConfig::read(&path).unwrap().sources {
            if let SourceKind::Csv { path, .. } = &source.kind {
                let header = match source.items {
                    Items::Values => "indicator,period,value\n",
                    Items::Tasks => "task,milestone,period,percent\n",
                };
                std::fs::write(path, header).unwrap();
            }
        }
        let report = duban_agent::check::check(&path, duban_agent::check::Online::Never)
            .await
            .unwrap();
        assert_eq!(report.failures, 0, "{}", report.render());
        assert!(
            report.render().contains("unit laoshan"),
            "{}",
            report.render()
        );
    }
}

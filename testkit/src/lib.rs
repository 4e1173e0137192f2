//! What duban's test suites need from the machine, and the one way a test skips.
//!
//! Some tests talk to real servers and programs: PostgreSQL, MariaDB, Prometheus, Alertmanager,
//! promtool, amtool, openssl, psql. Where one is missing, the test that needs it asks here, and here
//! alone the decision is made:
//!
//! - on a developer's machine the test prints `SKIPPED <test>: <why>` on stderr and returns;
//! - with `CI=true` it fails instead, naming what is missing: CI must run everything.
//!
//! Skips are also visible in the summary of every `cargo nextest run`: the test
//! `environment::what_this_machine_can_test` (in this crate) checks every need and prints a
//! table of what runs here and what is skipped, and `.config/nextest.toml` shows its output at
//! the end of the run. Under `CI=true` that test fails if anything is missing.

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

/// Whether this run is CI's (`CI=true`), where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Skips `test` for `why`: prints `SKIPPED <test>: <why>`; under `CI=true` panics instead.
pub fn skip(test: &str, why: &str) {
    assert!(
        !in_ci(),
        "{test}: CI=true, so it may not be skipped, but {why}"
    );
    eprintln!("SKIPPED {test}: {why}");
}

/// Something a test needs from the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A PostgreSQL server tests may create schemas on, from `DUBAN_TEST_POSTGRES_URL`.
    Postgres,
    /// A MariaDB or MySQL server for the agent's SQL source, from `DUBAN_TEST_MYSQL_URL` or
    /// `mysql://root@127.0.0.1:3306/test`.
    Mariadb,
    /// A program on the PATH, from a Debian package.
    Program {
        program: &'static str,
        package: &'static str,
    },
}

/// Every need of the suites, in the order the environment table prints them.
pub const NEEDS: [Need; 15] = [
    Need::Postgres,
    Need::Mariadb,
    Need::Program {
        program: "prometheus",
        package: "prometheus",
    },
    Need::Program {
        program: "promtool",
        package: "prometheus",
    },
    Need::Program {
        program: "prometheus-alertmanager",
        package: "prometheus-alertmanager",
    },
    Need::Program {
        program: "amtool",
        package: "prometheus-alertmanager",
    },
    Need::Program {
        program: "openssl",
        package: "openssl",
    },
    Need::Program {
        program: "prometheus-pushgateway",
        package: "prometheus-pushgateway",
    },
    Need::Program {
        program: "psql",
        package: "postgresql-client",
    },
    // The fault harness's clock scenario sets the agent's clock with libfaketime.
    Need::Program {
        program: "faketime",
        package: "faketime",
    },
    // Backups of a running SQLite database, as docs/OPERATIONS.md makes them.
    Need::Program {
        program: "sqlite3",
        package: "sqlite3",
    },
    // deploy/kubernetes: built with `kubectl kustomize`, validated against the Kubernetes
    // schemas by kubernetes-validate (from PyPI), which reads YAML with PyYAML.
    Need::Program {
        program: "kubectl",
        package: "kubectl",
    },
    Need::Program {
        program: "kubernetes-validate",
        package: PYPI_KUBERNETES_VALIDATE,
    },
    // The Debian packages are installed into a root made by debootstrap (as root), and their
    // units verified by systemd-analyze.
    Need::Program {
        program: "debootstrap",
        package: "debootstrap",
    },
    Need::Program {
        program: "systemd-analyze",
        package: "systemd",
    },
];

/// Where `kubernetes-validate` comes from: PyPI, not Debian.
pub const PYPI_KUBERNETES_VALIDATE: &str = "pypi:kubernetes-validate";

/// The default MariaDB URL of the agent's SQL source tests.
pub const DEFAULT_MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/test";

impl Need {
    pub fn name(&self) -> String {
        match self {
            Need::Postgres => "PostgreSQL".into(),
            Need::Mariadb => "MariaDB".into(),
            Need::Program { program, .. } => (*program).into(),
        }
    }

    /// `Ok(what was found)` or `Err(why it is missing and how to get it)`.
    pub fn check(&self) -> Result<String, String> {
        match self {
            Need::Postgres => match std::env::var("DUBAN_TEST_POSTGRES_URL") {
                Ok(url) if !url.is_empty() => Ok(url),
                _ => Err("DUBAN_TEST_POSTGRES_URL is not set (for example \
                          postgres://postgres@127.0.0.1:5432/test)"
                    .into()),
            },
            Need::Mariadb => {
                let url = std::env::var("DUBAN_TEST_MYSQL_URL")
                    .unwrap_or_else(|_| DEFAULT_MYSQL_URL.to_owned());
                let address = mysql_address(&url)
                    .ok_or_else(|| format!("cannot read host:port from {url}"))?;
                match TcpStream::connect_timeout(&address, Duration::from_secs(2)) {
                    Ok(_) => Ok(url),
                    Err(error) => Err(format!(
                        "nothing answers at {address} ({error}); set DUBAN_TEST_MYSQL_URL or start MariaDB"
                    )),
                }
            }
            Need::Program { program, package } => {
                let args: &[&str] = match *program {
                    "openssl" => &["version"],
                    "kubectl" => &["version", "--client"],
                    _ => &["--version"],
                };
                match Command::new(program).args(args).output() {
                    Ok(out) if out.status.success() => {
                        let text = String::from_utf8_lossy(&out.stdout).into_owned()
                            + &String::from_utf8_lossy(&out.stderr);
                        Ok(text.lines().next().unwrap_or("").trim().to_owned())
                    }
                    Ok(out) => Err(format!("`{program}` exits with {}", out.status)),
                    Err(error) => Err(match package.strip_prefix("pypi:") {
                        Some(pypi) => format!(
                            "`{program}` cannot run ({error}); `python3 -m pip install {pypi}` brings it"
                        ),
                        None => format!(
                            "`{program}` cannot run ({error}); the Debian package {package} brings it"
                        ),
                    }),
                }
            }
        }
    }

    /// The need checked for `test`: `Some(what was found)`, or `None` after [`skip`].
    pub fn require(&self, test: &str) -> Option<String> {
        match self.check() {
            Ok(found) => Some(found),
            Err(why) => {
                skip(test, &format!("{} is missing: {why}", self.name()));
                None
            }
        }
    }
}

/// The PostgreSQL URL for `test`, or `None` after a printed skip (a failure under `CI=true`).
pub fn postgres_url(test: &str) -> Option<String> {
    Need::Postgres.require(test)
}

/// The MariaDB URL for `test`, or `None` after a printed skip (a failure under `CI=true`).
pub fn mysql_url(test: &str) -> Option<String> {
    Need::Mariadb.require(test)
}

/// Whether `program` (from the Debian `package`) runs; after a printed skip (a failure under
/// `CI=true`) it does not.
pub fn program(test: &str, program: &'static str, package: &'static str) -> bool {
    Need::Program { program, package }.require(test).is_some()
}

/// Runs `promtool check metrics` on a Prometheus text exposition and fails on any complaint;
/// without promtool, a printed skip (a failure under `CI=true`).
pub fn promtool_check_metrics(test: &str, body: &str) {
    use std::io::Write;
    use std::process::Stdio;
    if !program(test, "promtool", "prometheus") {
        return;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(body.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool finishes");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics found problems:\n{report}"
    );
}

fn mysql_address(url: &str) -> Option<SocketAddr> {
    let rest = url.split_once("://")?.1;
    let host_port = rest.split('/').next()?;
    let host_port = host_port.rsplit('@').next()?;
    let with_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:3306")
    };
    let with_port = with_port.replace("localhost", "127.0.0.1");
    with_port.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mysql_addresses_are_read_from_urls() {
        assert_eq!(
            mysql_address("mysql://root@127.0.0.1:3306/test"),
            Some("127.0.0.1:3306".parse().unwrap())
        );
        assert_eq!(
            mysql_address("mysql://u:p@localhost/db"),
            Some("127.0.0.1:3306".parse().unwrap())
        );
        assert_eq!(mysql_address("nonsense"), None);
    }
}

/// The synthetic plan of the benchmark and of the fault harness: any number of units, each
/// reporting every indicator monthly.
pub mod synthetic {
    use std::fmt::Write;

    pub fn unit_id(index: usize) -> String {
        format!("u{index:05}")
    }

    pub fn indicator_id(index: usize) -> String {
        format!("i{index:03}")
    }

    /// A plan of `units` districts reporting `indicators` monthly indicators through 2025
    /// (plan TOML, as `duban-aggregator plan check` reads it).
    pub fn plan_toml(id: &str, units: usize, indicators: usize) -> String {
        let mut out = format!(
            "[plan]\nid = \"{id}\"\nname = \"基准计划\"\nstart = \"2025-01\"\nend = \"2025-12\"\n\n"
        );
        let names: Vec<String> = (0..units).map(unit_id).collect();
        for name in &names {
            let _ = write!(
                out,
                "[[unit]]\nid = \"{name}\"\nname = \"单位{name}\"\nkind = \"district\"\n\n"
            );
        }
        let members: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
        let _ = write!(
            out,
            "[[group]]\nid = \"all\"\nname = \"全部\"\nmembers = [{}]\n\n",
            members.join(", ")
        );
        for i in 0..indicators {
            let _ = write!(
                out,
                "[[indicator]]\nid = \"{}\"\nname = \"指标{i}\"\nmeasure = \"件\"\nperiod = \"month\"\n\
                 timely_days = 30\nreporters = [\"all\"]\nlead_units = [\"{}\"]\naggregation = \"sum\"\n\n",
                indicator_id(i),
                names[0]
            );
        }
        out
    }
}

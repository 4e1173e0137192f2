//! Every command in README.md's `sh` blocks is exercised: run here, in order, in a scratch
//! directory (with placeholders such as the example database URL replaced by local ones), or
//! named as covered by another test or by `.ci/run` — which this test checks still exist. A
//! command added to the README without either fails this test.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use duban_e2e::{Background, binary, require_program};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The command lines of README.md's ```sh blocks, comments and blank lines left out.
fn readme_commands() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut out = Vec::new();
    let mut in_sh = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_sh = !in_sh && line.trim() == "```sh";
            continue;
        }
        if in_sh {
            let command = line.split(" #").next().unwrap().trim();
            if !command.is_empty() && !command.starts_with('#') {
                out.push(command.to_owned());
            }
        }
    }
    out
}

/// Commands covered elsewhere: (command prefix, file, text that must be in that file).
const COVERED: &[(&str, &str, &str)] = &[
    (
        "cargo nextest run --workspace --no-fail-fast",
        ".ci/run",
        "cargo nextest run --workspace --no-fail-fast",
    ),
    ("cargo build --release", ".ci/run", "cargo build --release"),
    (
        "cargo run --release -p duban-demo -- --keep-serving",
        "tests/tests/demo.rs",
        "fn keep_serving_leaves_metrics_up_until_sigterm",
    ),
    (
        "duban-agent run --config",
        "tests/tests/agent_process.rs",
        "fn sigterm_drains_the_outbox_and_exits",
    ),
    // Answering needs an alert on record and the office's own agent: the loop runs there.
    (
        "duban-agent respond extend",
        "tests/tests/supervision.rs",
        "\"respond\", \"extend\"",
    ),
    // The packages are built, installed, upgraded, removed and purged in a Debian root.
    (
        "deploy/debian/build",
        "tests/tests/debian.rs",
        "deploy/debian/build",
    ),
    (
        "apt install ./duban-",
        "tests/tests/debian.rs",
        "\"apt-get\", \"install\"",
    ),
    (
        "kubectl kustomize deploy/kubernetes/overlays/example",
        "tests/tests/kubernetes.rs",
        "fn the_base_and_the_example_overlay_validate_against_the_kubernetes_schemas",
    ),
    (
        "duban-agent decide grant",
        "tests/tests/supervision.rs",
        "\"decide\", \"grant\"",
    ),
];

const PLACEHOLDER_DB: &str = "postgres://duban@db.city.example/duban";

struct Scratch {
    dir: tempfile::TempDir,
    path: String,
    db: String,
    /// The PostgreSQL schema the README's database is, dropped at the end.
    schema: Option<(String, String)>,
}

/// A fresh schema on the test PostgreSQL server (`DUBAN_TEST_POSTGRES_URL`), and the URL that
/// uses it; `None` (with a printed reason) where there is none, never under `CI=true`.
fn postgres_schema() -> Option<(String, String, String)> {
    let base = duban_testkit::postgres_url(
        "PostgreSQL for the README's walkthrough (it runs on SQLite instead)",
    )?;
    let name = format!("duban_readme_{}", std::process::id());
    let made = Command::new("psql")
        .args([base.as_str(), "-q", "-c", &format!("CREATE SCHEMA {name}")])
        .output()
        .expect("psql (Debian package postgresql-client)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}options=-c%20search_path%3D{name}");
    Some((url, base, name))
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(repo().join("deploy"), dir.path().join("deploy")).unwrap();
        let bin = binary("duban-aggregator").parent().unwrap().to_owned();
        binary("duban-agent");
        binary("duban-demo");
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
        let (db, schema) = match postgres_schema() {
            Some((url, base, name)) => (url, Some((base, name))),
            None => (
                format!("sqlite://{}", dir.path().join("db/duban.db").display()),
                None,
            ),
        };
        Scratch {
            dir,
            path,
            db,
            schema,
        }
    }

    fn sh(&self, command: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", command])
            .current_dir(self.dir.path())
            .env("PATH", &self.path);
        c
    }

    fn run(&self, command: &str) -> String {
        let out = self.sh(command).output().unwrap();
        assert!(
            out.status.success(),
            "README command failed: {command}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Replaces the value after `flag` (or appends the flag) in a command line.
fn with_flag(command: &str, flag: &str, value: &str) -> String {
    let mut words: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
    match words.iter().position(|w| w == flag) {
        Some(i) => words[i + 1] = value.to_owned(),
        None => words.extend([flag.to_owned(), value.to_owned()]),
    }
    words.join(" ")
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some((base, name)) = &self.schema {
            let _ = Command::new("psql")
                .args([
                    base.as_str(),
                    "-q",
                    "-c",
                    &format!("DROP SCHEMA {name} CASCADE"),
                ])
                .output();
        }
    }
}

/// /etc/duban/agent.toml as the README has a new user make it: deploy/examples/agent.toml with
/// the unit's key (the one `keys add` registered, agent-laoshan/), the development CA's files,
/// the running aggregator as its endpoint, an outbox it may write, and no sources yet (the
/// example's name files of a district's own systems).
fn example_agent_config(s: &Scratch, grpc: std::net::SocketAddr) -> PathBuf {
    let etc = s.dir.path().join("etc-duban");
    std::fs::create_dir_all(etc.join("tls")).unwrap();
    let example = std::fs::read_to_string(repo().join("deploy/examples/agent.toml")).unwrap();
    let without_sources = example.split("\n[[source]]").next().unwrap();
    let text = without_sources
        .replace(
            "endpoints = [\"https://duban-1.city.example:7700\", \"https://duban-2.city.example:7700\"]",
            &format!("endpoints = [\"https://localhost:{}\"]", grpc.port()),
        )
        .replace(
            "/var/lib/duban-agent/outbox.db",
            etc.join("outbox.db").to_str().unwrap(),
        );
    assert!(
        text.contains("https://localhost:"),
        "the example's endpoints changed: {text}"
    );
    std::fs::write(etc.join("agent.toml"), text).unwrap();
    for (from, to) in [
        ("agent-laoshan/signing.key", "signing.key"),
        ("tls/ca.crt", "tls/ca.crt"),
        ("tls/units/laoshan.crt", "tls/agent.crt"),
        ("tls/units/laoshan.key", "tls/agent.key"),
    ] {
        std::fs::copy(s.dir.path().join(from), etc.join(to)).unwrap();
    }
    etc.join("agent.toml")
}

#[test]
fn every_readme_command_is_run_here_or_covered_by_a_named_test() {
    let commands = readme_commands();
    assert!(commands.len() >= 10, "{commands:?}");
    let s = Scratch::new();
    let mut unexercised = Vec::new();
    // The aggregator the README starts keeps serving for the agent's commands after it.
    let mut server: Option<(std::process::Child, std::net::SocketAddr)> = None;
    for command in &commands {
        if let Some((_, file, text)) = COVERED.iter().find(|(p, _, _)| command.starts_with(p)) {
            let content = std::fs::read_to_string(repo().join(file)).unwrap();
            assert!(
                content.contains(text),
                "README command `{command}` is said to be covered by {file} ({text}), which no longer has it"
            );
            continue;
        }
        let local = command.replace(PLACEHOLDER_DB, &s.db);
        if command == "cargo run --release -p duban-demo" {
            // The README's main command; the short runs here and in demo.rs use the same binary.
            let out = s.run(
                "duban-demo --dir demo --until 2017-10-31 --speed 200 --grpc-listen 127.0.0.1:0 --http-listen 127.0.0.1:0",
            );
            assert!(out.contains("demo OK"), "{out}");
        } else if let Some(args) = command.strip_prefix("cargo run --release -p duban-demo -- ") {
            let line = with_flag(&format!("duban-demo {args}"), "--speed", "200");
            let line = with_flag(&line, "--dir", "demo");
            let line = with_flag(&line, "--grpc-listen", "127.0.0.1:0");
            let line = with_flag(&line, "--http-listen", "127.0.0.1:0");
            let out = s.run(&line);
            assert!(out.contains("demo OK"), "{line}\n{out}");
        } else if command.starts_with("prometheus ") {
            if require_program("prometheus", "prometheus") {
                let data = s.dir.path().join("prometheus-data");
                let mut args: Vec<String> = command
                    .split_whitespace()
                    .skip(1)
                    .map(|a| a.replace("deploy/", &format!("{}/", repo().join("deploy").display())))
                    .collect();
                args.push("--web.listen-address=127.0.0.1:0".to_owned());
                args.push(format!("--storage.tsdb.path={}", data.display()));
                let prometheus = Background::start(
                    "prometheus",
                    &args,
                    "Server is ready to receive web requests",
                );
                drop(prometheus);
            }
        } else if command.starts_with("promtool ") {
            if require_program("promtool", "prometheus") {
                s.run(command);
            }
        } else if command.starts_with("duban-aggregator serve ") {
            let line = with_flag(&local, "--grpc-listen", "127.0.0.1:0");
            let line = with_flag(&line, "--http-listen", "127.0.0.1:0");
            let mut child = s
                .sh(&format!("exec {line}"))
                .env("RUST_LOG", "info")
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let stderr = child.stderr.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut log = String::new();
                for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if l.contains("aggregator serving") {
                        let _ = tx.send(Ok(l.clone()));
                    }
                    log.push_str(&(l + "\n"));
                }
                let _ = tx.send(Err(log));
            });
            let ready = rx.recv_timeout(Duration::from_secs(60));
            let Ok(Ok(served)) = ready else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`{line}` did not start: {ready:?}");
            };
            let grpc: std::net::SocketAddr = served
                .split("grpc=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|a| a.parse().ok())
                .expect("the gRPC address in the log");
            server = Some((child, grpc));
        } else if command.starts_with("duban-agent ") && command.contains("/etc/duban/agent.toml") {
            let (_, grpc) = server
                .as_ref()
                .expect("the README starts the aggregator before the agent's commands");
            let config = s.dir.path().join("etc-duban/agent.toml");
            if !config.exists() {
                example_agent_config(&s, *grpc);
            }
            let out = s.run(&local.replace("/etc/duban/agent.toml", config.to_str().unwrap()));
            if command.starts_with("duban-agent check ") {
                assert!(
                    out.contains("accepts this agent: key") && out.contains("\nvalid ("),
                    "{out}"
                );
            }
            if command.starts_with("duban-agent submit ") {
                assert!(
                    out.contains("delivered: the centre accepted everything"),
                    "{out}"
                );
            }
        } else if command.starts_with("duban-aggregator ") || command.starts_with("duban-agent ") {
            let out = s.run(&local);
            if command.contains("plan alertmanager-config") {
                let written =
                    std::fs::read_to_string(s.dir.path().join("alertmanager.yml")).unwrap();
                assert!(
                    written.contains("- name: unit-science-tech")
                        && written.contains("https://science-tech.city.example/duban/alerts"),
                    "{written}"
                );
            }
            if command.contains(" status ") {
                assert!(out.contains("as of 2018-08-01"), "{out}");
                // The agent of the walkthrough said Hello: the centre lists it.
                let agents = out.split("AGENTS").nth(1).unwrap_or_default();
                assert!(agents.contains("laoshan 崂山区"), "{out}");
            }
        } else {
            unexercised.push(command.clone());
        }
    }
    if let Some((mut child, _)) = server {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(
        unexercised.is_empty(),
        "README commands not exercised anywhere; run them in tests/tests/readme.rs or name the test that covers them: {unexercised:#?}"
    );
}

#[test]
fn the_readme_names_the_two_commands_and_every_document_it_links_exists() {
    let text = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let commands = readme_commands();
    assert_eq!(
        &commands[..2],
        &[
            "cargo run --release -p duban-demo".to_owned(),
            "cargo nextest run --workspace --no-fail-fast".to_owned()
        ]
    );
    let ci = std::fs::read_to_string(repo().join(".ci/run")).unwrap();
    assert!(
        ci.contains(&commands[1]),
        ".ci/run must call the README's test command"
    );
    for link in text.split("](").skip(1) {
        let target = link.split(')').next().unwrap();
        if !target.starts_with("http") {
            assert!(
                repo().join(target).exists(),
                "README links {target}, which is missing"
            );
        }
    }
}

/// docs/ARCHITECTURE.md matches the tree: every path it names exists, and every module at the
/// top of each crate's `src/` is named in it.
#[test]
fn the_architecture_names_only_paths_that_exist() {
    let root = repo();
    let doc = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let tops = [
        "proto/",
        "host/",
        "agent/",
        "aggregator/",
        "demo/",
        "tests/",
        "testkit/",
        "bench/",
        "deploy/",
        "docs/",
    ];
    let mut named = 0;
    for quoted in doc.split('`').skip(1).step_by(2) {
        if quoted.contains(' ') || !tops.iter().any(|t| quoted.starts_with(t)) {
            continue;
        }
        named += 1;
        assert!(
            root.join(quoted).exists(),
            "docs/ARCHITECTURE.md names {quoted}, which does not exist"
        );
    }
    assert!(named > 40, "only {named} paths named");
    for krate in ["proto", "host", "agent", "aggregator", "demo"] {
        for entry in std::fs::read_dir(root.join(krate).join("src")).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name == "lib.rs" {
                continue;
            }
            let path = format!("{krate}/src/{}", name.trim_end_matches(".rs"));
            assert!(
                doc.contains(&path),
                "docs/ARCHITECTURE.md does not mention {path}"
            );
        }
    }
}

//! duban-e2e: helpers for the end-to-end tests in `tests/tests/`, which start the real
//! `duban-aggregator` and `duban-agent` binaries as separate processes, and the fault-injection
//! harness ([`faults`]).

pub mod faults;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The path of a workspace binary, building it first if this test run did not. It builds
/// every binary of the workspace at once: `-p <name>` alone would resolve the shared crates'
/// features for that package only and rebuild half the tree beside the test build's.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // A test runs from `target/<profile>/deps/`, a program of this crate (duban-faults) from
    // `target/<profile>/`.
    let parent = exe.parent().expect("the executable's directory");
    let dir = if parent.ends_with("deps") {
        parent.parent().expect("target profile directory")
    } else {
        parent
    };
    let path = dir.join(name);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let profile = if dir.ends_with("release") {
            vec!["--release"]
        } else {
            vec![]
        };
        let status = Command::new(cargo)
            .args(["build", "--workspace", "--bins"])
            .args(profile)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --bin {name} failed");
    }
    path
}

/// Runs a command to completion and returns its output, failing the test on a spawn error.
pub fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

/// A running `duban-aggregator serve` process.
pub struct AggregatorProcess {
    pub child: Child,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl AggregatorProcess {
    /// Starts `duban-aggregator serve` with `args` on ports chosen by the OS, and waits until it
    /// says where it listens.
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(binary("duban-aggregator"))
            .arg("serve")
            .args(if args.contains(&"--grpc-listen") {
                &[][..]
            } else {
                &["--grpc-listen", "127.0.0.1:0"][..]
            })
            .args(if args.contains(&"--http-listen") {
                &[][..]
            } else {
                &["--http-listen", "127.0.0.1:0"][..]
            })
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start duban-aggregator");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Into the log first: whoever is told the server is up may read the log.
                sink.lock().unwrap().push_str(&line);
                sink.lock().unwrap().push('\n');
                if line.contains("aggregator serving") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("the aggregator did not start:\n{}", log.lock().unwrap());
            }
        };
        let field = |name: &str| -> SocketAddr {
            let start =
                line.find(&format!("{name}=")).expect("address in the log") + name.len() + 1;
            line[start..]
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .expect("socket address")
        };
        AggregatorProcess {
            grpc: field("grpc"),
            http: field("http"),
            child,
            log,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends `signal` (e.g. "TERM") and waits up to `limit` for the process to exit.
    pub fn signal_and_wait(&mut self, signal: &str, limit: Duration) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
        self.wait_exit(limit)
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the aggregator did not exit within {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AggregatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A unit's agent set up as an operator would: `duban-agent keygen`, `duban-aggregator keys
/// add`, and a configuration file in its own directory.
pub struct AgentSetup {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub unit: String,
}

impl AgentSetup {
    /// Writes keys and a plaintext configuration pointing at `endpoint` with `sources` (TOML
    /// `[[source]]` tables) appended.
    pub fn new(root: &Path, database_url: &str, unit: &str, endpoint: &str, sources: &str) -> Self {
        Self::for_plan(
            root,
            database_url,
            unit,
            ("qingdao-ip-2017", None),
            endpoint,
            sources,
        )
    }

    /// As [`AgentSetup::new`], for the plan `(id, file)` (the embedded plan when no file).
    pub fn for_plan(
        root: &Path,
        database_url: &str,
        unit: &str,
        (plan, plan_file): (&str, Option<&Path>),
        endpoint: &str,
        sources: &str,
    ) -> Self {
        let dir = root.join(format!("agent-{unit}"));
        std::fs::create_dir_all(&dir).unwrap();
        let keygen = run(
            &binary("duban-agent"),
            &["keygen", "--out", dir.to_str().unwrap()],
        );
        assert!(
            keygen.status.success(),
            "keygen: {}",
            String::from_utf8_lossy(&keygen.stderr)
        );
        let public = dir.join("signing.pub");
        let mut add = vec![
            "keys",
            "add",
            "--database-url",
            database_url,
            "--unit",
            unit,
            "--public-key",
            public.to_str().unwrap(),
        ];
        if let Some(file) = plan_file {
            add.extend(["--plan", file.to_str().unwrap()]);
        }
        let added = run(&binary("duban-aggregator"), &add);
        assert!(
            added.status.success(),
            "keys add: {}",
            String::from_utf8_lossy(&added.stderr)
        );
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "unit = \"{unit}\"\nplan = \"{plan}\"\nprivate_key = \"signing.key\"\n\n[aggregator]\nendpoints = [\"{endpoint}\"]\ninsecure_plaintext = true\ntimeout = \"5s\"\n\n[outbox]\npath = \"outbox.db\"\n\n{sources}\n"
            ),
        )
        .unwrap();
        AgentSetup {
            dir,
            config,
            unit: unit.to_owned(),
        }
    }

    /// Runs `duban-agent <args> --config <this config>`.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", self.config.to_str().unwrap()]);
        Command::new(binary("duban-agent"))
            .args(&all)
            .env("RUST_LOG", "info")
            .output()
            .expect("run duban-agent")
    }

    /// Starts `duban-agent run` in the background; its log goes to `daemon.log` beside the
    /// configuration.
    pub fn spawn_daemon(&self, extra: &[&str]) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open daemon.log");
        Command::new(binary("duban-agent"))
            .args(["run", "--config", self.config.to_str().unwrap()])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map(Daemon)
            .expect("start duban-agent")
    }

    /// Where the daemon serves /metrics (configured as `127.0.0.1:0`), from its log (the last
    /// daemon started, when it was restarted).
    pub fn metrics_address(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log();
            if let Some(address) = log
                .lines()
                .rfind(|l| l.contains("serving /metrics"))
                .and_then(|l| l.split("metrics=").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
            {
                return address.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "the daemon does not serve /metrics after 30 s:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Switches the configuration to mTLS with the certificate of `cert_unit` from a directory
    /// written by `duban-aggregator dev-ca`.
    pub fn use_tls(&self, ca_dir: &Path, cert_unit: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let tls = format!(
            "ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nserver_name = \"localhost\"",
            ca_dir.join("ca.crt").display(),
            ca_dir.join(format!("units/{cert_unit}.crt")).display(),
            ca_dir.join(format!("units/{cert_unit}.key")).display()
        );
        let text = text
            .replace("insecure_plaintext = true", &tls)
            .replace("\"http://", "\"https://");
        std::fs::write(&self.config, text).unwrap();
    }

    pub fn outbox_stats(&self) -> serde_json::Value {
        let out = self.run(&["outbox", "stats", "--json"]);
        assert!(
            out.status.success(),
            "outbox stats: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// Stored reports as `duban-aggregator reports list --json` shows them, oldest first.
pub fn stored_reports(database_url: &str) -> Vec<serde_json::Value> {
    let out = run(
        &binary("duban-aggregator"),
        &[
            "reports",
            "list",
            "--database-url",
            database_url,
            "--json",
            "--limit",
            "1000000",
        ],
    );
    assert!(
        out.status.success(),
        "reports list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    rows.reverse();
    rows
}

/// The current value of (indicator, unit, period) among `current_values`' rows.
pub fn value_of(
    values: &[serde_json::Value],
    indicator: &str,
    unit: &str,
    period: &str,
) -> Option<f64> {
    values
        .iter()
        .find(|v| v["indicator_id"] == indicator && v["unit_id"] == unit && v["period"] == period)
        .and_then(|v| v["value"].as_f64())
}

/// Current values as `duban-aggregator values show --json` shows them.
pub fn current_values(database_url: &str) -> Vec<serde_json::Value> {
    let out = run(
        &binary("duban-aggregator"),
        &["values", "show", "--database-url", database_url, "--json"],
    );
    assert!(
        out.status.success(),
        "values show: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Waits until `condition` holds, polling every 50 ms, or fails after `limit` with `what`.
pub fn wait_until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A background program (Prometheus, Alertmanager) killed when dropped; its output is kept.
pub struct Background {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Background {
    /// Starts `program` and waits until a line of its output contains `ready`.
    pub fn start(program: &str, args: &[String], ready: &str) -> Self {
        let mut child = Command::new(program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (log, tx, ready) = (log.clone(), tx.clone(), ready.to_owned());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let is_ready = line.contains(&ready);
                    log.lock().unwrap().push_str(&(line + "\n"));
                    if is_ready {
                        let _ = tx.send(());
                    }
                }
            });
        }
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            panic!("{program} did not become ready:\n{}", log.lock().unwrap());
        }
        Background { child, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The address the program logged as `msg="Listening on" address=HOST:PORT`, as Prometheus
    /// and Alertmanager do: started with port 0, the port the system gave it. Waits for the
    /// line: Prometheus may log it after its "Server is ready" line (its web server starts in
    /// a goroutine of its own).
    pub fn listening_on(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log();
            let found = log
                .lines()
                .filter(|l| l.contains("Listening on"))
                .find_map(|l| l.split("address=").nth(1))
                .map(|rest| rest.split_whitespace().next().unwrap_or("").to_owned());
            if let Some(address) = found {
                return address;
            }
            assert!(
                Instant::now() < deadline,
                "no \"Listening on\" line within 30 s in:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a program is installed; a printed skip otherwise (a failure under `CI=true`).
pub fn require_program(program: &'static str, package: &'static str) -> bool {
    duban_testkit::program(program, program, package)
}

/// A `duban-agent run` process, killed when dropped, so that a failing test leaves no daemon
/// behind.
pub struct Daemon(pub Child);

impl std::ops::Deref for Daemon {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// GET over plain HTTP/1.0; returns the body.
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// The standard output of a command that must succeed; on failure, both outputs.
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The PostgreSQL server tests may create schemas on (`DUBAN_TEST_POSTGRES_URL`); `None` after a
/// printed skip (a failure under `CI=true`).
pub fn postgres_url() -> Option<String> {
    duban_testkit::postgres_url("the PostgreSQL case")
}

/// A scratch directory and the SQLite database URL of an aggregator in it.
pub struct World {
    pub root: tempfile::TempDir,
    pub url: String,
}

impl World {
    pub fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}",
            root.path().join("aggregator/duban.db").display()
        );
        World { root, url }
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

/// `duban-aggregator dev-ca --out <root>/<name> --units <units>`: a CA, the server's and the
/// units' certificates. Returns the directory.
pub fn dev_ca(root: &Path, name: &str, units: &str) -> PathBuf {
    let dir = root.join(name);
    let made = run(
        &binary("duban-aggregator"),
        &["dev-ca", "--out", dir.to_str().unwrap(), "--units", units],
    );
    assert!(
        made.status.success(),
        "dev-ca: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    dir
}

impl AggregatorProcess {
    /// Starts `serve` on `database_url` with mTLS from a directory written by [`dev_ca`], and
    /// `extra` arguments.
    pub fn start_tls(database_url: &str, certs: &Path, extra: &[&str]) -> Self {
        let file = |name: &str| certs.join(name).to_str().unwrap().to_owned();
        let mut args = vec![
            "--database-url".to_owned(),
            database_url.to_owned(),
            "--tls-cert".to_owned(),
            file("server.crt"),
            "--tls-key".to_owned(),
            file("server.key"),
            "--client-ca".to_owned(),
            file("ca.crt"),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        Self::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

/// A TCP relay between a client and a server that can hold what flows either way, to stop a
/// process at a chosen point of the protocol: with the requests held, the client has sent
/// (and committed to its outbox) what the server has not seen; with the answers held, the
/// server has committed what the client does not know of yet.
pub struct Relay {
    pub addr: SocketAddr,
    requests: Arc<Valve>,
    answers: Arc<Valve>,
    upstream: Arc<Mutex<Option<SocketAddr>>>,
}

#[derive(Default)]
struct Valve {
    held: Mutex<bool>,
    changed: std::sync::Condvar,
}

impl Valve {
    fn set(&self, held: bool) {
        *self.held.lock().unwrap() = held;
        self.changed.notify_all();
    }

    fn wait_open(&self) {
        let mut held = self.held.lock().unwrap();
        while *held {
            held = self.changed.wait(held).unwrap();
        }
    }
}

impl Relay {
    pub fn start(upstream: SocketAddr) -> Self {
        let relay = Self::to_nowhere();
        relay.connect_to(upstream);
        relay
    }

    /// A relay with no server behind it yet: connections are accepted and closed at once, as
    /// if the server were down. [`Relay::connect_to`] puts one behind it; the address clients
    /// use stays the same, so nothing has to bind a port another process may have taken.
    pub fn to_nowhere() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests: Arc<Valve> = Arc::default();
        let answers: Arc<Valve> = Arc::default();
        let upstream: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let (req, ans, target) = (requests.clone(), answers.clone(), upstream.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Some(upstream) = *target.lock().unwrap() else {
                    continue; // dropped: closed at once
                };
                let Ok(server) = std::net::TcpStream::connect(upstream) else {
                    continue;
                };
                pump(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    req.clone(),
                );
                pump(server, client, ans.clone());
            }
        });
        Relay {
            addr,
            requests,
            answers,
            upstream,
        }
    }

    /// Relays new connections to `upstream`.
    pub fn connect_to(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap() = Some(upstream);
    }

    /// Holds (or lets through) what clients send.
    pub fn hold_requests(&self, hold: bool) {
        self.requests.set(hold);
    }

    /// Holds (or lets through) what the server answers.
    pub fn hold_answers(&self, hold: bool) {
        self.answers.set(hold);
    }
}

fn pump(mut from: std::net::TcpStream, mut to: std::net::TcpStream, valve: Arc<Valve>) {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            valve.wait_open();
            if to.write_all(&buffer[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

/// Every value and task update the aggregator at `database_url` stored, with its report.
/// Runs on a thread of its own, so that async tests may call it too.
pub fn stored_items(database_url: &str) -> Vec<duban_aggregator::store::StoredItem> {
    use duban_aggregator::store::{AnyStore, Store};
    let url = database_url.to_owned();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let store = AnyStore::open_read_only(&url).await.unwrap();
                store.stored_items("qingdao-ip-2017").await.unwrap()
            })
    })
    .join()
    .expect("reading the stored items")
}

/// An HTTP endpoint, on a thread of its own, that records every JSON body POSTed to it (a
/// webhook receiver). Usable from synchronous and async tests alike.
pub struct WebhookRecorder {
    pub url: String,
    received: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl WebhookRecorder {
    pub fn start() -> Self {
        let received: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let sink = received.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let app = axum::Router::new().fallback(axum::routing::post(
                    move |axum::Json(body): axum::Json<serde_json::Value>| {
                        let sink = sink.clone();
                        async move {
                            sink.lock().unwrap().push(body);
                            "ok"
                        }
                    },
                ));
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        let addr = rx.recv().expect("the recorder listens");
        WebhookRecorder {
            url: format!("http://{addr}/hook"),
            received,
        }
    }

    /// Every body received so far, oldest first.
    pub fn received(&self) -> Vec<serde_json::Value> {
        self.received.lock().unwrap().clone()
    }
}

//! Shared by the aggregator's integration tests.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};

/// The PostgreSQL server for tests, from `DUBAN_TEST_POSTGRES_URL`; `None` after a printed
/// skip (a failure under `CI=true`, where these tests must run).
pub fn postgres_url(test: &str) -> Option<String> {
    duban_testkit::postgres_url(test)
}

/// A fresh schema on the test server, dropped when this value is dropped. `url` connects with
/// that schema as the search path, so every test has a database of its own.
pub struct PgSchema {
    pub url: String,
    admin_url: String,
    name: String,
}

impl PgSchema {
    pub async fn create(base_url: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "duban_t_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        sqlx::any::install_default_drivers();
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(base_url)
            .await
            .expect("connect to PostgreSQL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let separator = if base_url.contains('?') { '&' } else { '?' };
        let url = format!("{base_url}{separator}options=-c%20search_path%3D{name}");
        PgSchema {
            url,
            admin_url: base_url.to_owned(),
            name,
        }
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop on a thread of its own: the test's runtime may be shutting down.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(mut conn) =
                    <sqlx::AnyConnection as sqlx::Connection>::connect(&admin_url).await
                {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {name} CASCADE")))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

use std::net::SocketAddr;
use std::sync::Arc;

use duban_aggregator::clock::{Clock, ManualClock};
use duban_aggregator::devca::DevCa;
use duban_aggregator::serve::{Security, Serve};
use duban_aggregator::store::{AnyStore, NewKey, Store};
use duban_aggregator::tls::TlsFiles;
use duban_proto::pb::report_service_client::ReportServiceClient;
use duban_proto::{SigningKey, pb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

pub const PLAN_ID: &str = "qingdao-ip-2017";
/// 2018-04-10T00:00:00Z: inside the plan, in 2018Q2.
pub const NOW_MS: i64 = 1_523_318_400_000;

pub fn laoshan_key() -> SigningKey {
    SigningKey::from_seed(&[1; 32])
}

pub fn shibei_key() -> SigningKey {
    SigningKey::from_seed(&[2; 32])
}

pub fn science_tech_key() -> SigningKey {
    SigningKey::from_seed(&[3; 32])
}

pub struct TestServer {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub store: AnyStore,
    pub clock: Arc<ManualClock>,
    pub ca: Option<DevCa>,
    /// The gRPC listener's TLS files (with an empty CRL of `ca`), which a test may replace.
    pub tls_files: Option<TlsFiles>,
    /// The database URL the server uses.
    pub database_url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), duban_aggregator::serve::ServeError>>>,
    _dir: tempfile::TempDir,
}

#[derive(Default)]
pub struct Options {
    pub tls: bool,
    pub extra_keys: Vec<NewKey>,
    /// Another database than a fresh SQLite file (e.g. a PostgreSQL schema shared by replicas).
    pub database_url: Option<String>,
    pub alerts: Option<duban_aggregator::alerting::AlertSettings>,
    /// Keys revoked (a second before [`NOW_MS`]) before the server starts.
    pub revoked: Vec<duban_proto::KeyId>,
    /// The server's `--max-in-flight` (64 when `None`).
    pub max_in_flight: Option<usize>,
    /// The HTTP token file, TLS reload interval and rate limit (the defaults when `None`).
    pub security: Option<Security>,
}

pub fn key_record(key: &SigningKey, unit: &str) -> NewKey {
    NewKey {
        key_id: key.key_id(),
        unit_id: unit.into(),
        public_key: *key.public_key().raw(),
        not_before_ms: None,
        not_after_ms: None,
        added_at_ms: 0,
    }
}

impl TestServer {
    pub async fn start(options: Options) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = options
            .database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("duban.db").display()));
        let store = AnyStore::open(&url).await.unwrap();
        let keys = [
            (laoshan_key(), "laoshan"),
            (shibei_key(), "shibei"),
            (science_tech_key(), "science-tech"),
        ];
        for key in keys
            .iter()
            .map(|(k, u)| key_record(k, u))
            .chain(options.extra_keys)
        {
            match store.add_key(key).await {
                Ok(()) | Err(duban_aggregator::store::StoreError::KeyExists(_)) => {}
                Err(error) => panic!("{error}"),
            }
        }
        for key_id in options.revoked {
            store.revoke_key(key_id, NOW_MS - 1000).await.unwrap();
        }
        let ca = options.tls.then(|| DevCa::generate().unwrap());
        let tls = ca.as_ref().map(|ca| {
            let server = ca.issue_server(&["localhost"]).unwrap();
            let files = TlsFiles {
                cert: dir.path().join("server.crt"),
                key: dir.path().join("server.key"),
                client_ca: Some(dir.path().join("ca.crt")),
                crls: vec![dir.path().join("ca.crl")],
            };
            std::fs::write(&files.cert, server.cert_pem).unwrap();
            std::fs::write(&files.key, server.key_pem).unwrap();
            std::fs::write(files.client_ca.as_ref().unwrap(), ca.cert_pem()).unwrap();
            std::fs::write(&files.crls[0], ca.crl(&[], NOW_MS / 1000, 1).unwrap()).unwrap();
            files
        });
        let clock = Arc::new(ManualClock::new(NOW_MS));
        let plan = Arc::new(duban_aggregator::plan::embedded().plan);
        let serve = Serve {
            plan,
            store: store.clone(),
            clock: clock.clone() as Arc<dyn Clock>,
            tls,
            security: options.security.clone().unwrap_or_default(),
            max_in_flight: options.max_in_flight.unwrap_or(64),
            shutdown_grace: std::time::Duration::from_secs(5),
            alerts: options.alerts.clone().unwrap_or_default(),
        };
        let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = grpc_listener.local_addr().unwrap();
        let http = http_listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let tls_files = serve.tls.clone();
        let task = tokio::spawn(duban_aggregator::serve::run(
            serve,
            grpc_listener,
            http_listener,
            async {
                let _ = stopped.await;
            },
        ));
        let server = TestServer {
            grpc,
            http,
            store,
            clock,
            ca,
            tls_files,
            database_url: url,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        };
        // The listeners are bound, but the server answers once its start-up writes are done.
        // (Over TLS, the test waits itself.)
        if options
            .security
            .as_ref()
            .is_some_and(|s| s.http_tls.is_some())
        {
            return server;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while server
            .try_http_get("/readyz")
            .await
            .map(|(status, _)| status)
            != Some(200)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the server was not ready within 10 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        server
    }
}

/// Runs `promtool check metrics` on a /metrics body (see `duban_testkit`).
pub fn promtool_check_metrics(body: &str) {
    duban_testkit::promtool_check_metrics("promtool check metrics", body);
}

impl TestServer {
    pub async fn client(&self) -> ReportServiceClient<Channel> {
        let channel = Endpoint::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
        ReportServiceClient::new(channel)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20)
    }

    /// A TLS client presenting a certificate for `unit` (or none).
    pub async fn tls_client(
        &self,
        unit: Option<&str>,
    ) -> Result<ReportServiceClient<Channel>, tonic::transport::Error> {
        let ca = self.ca.as_ref().expect("server started with TLS");
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca.cert_pem()))
            .domain_name("localhost");
        if let Some(unit) = unit {
            let issued = ca.issue_unit(unit).unwrap();
            tls = tls.identity(tonic::transport::Identity::from_pem(
                issued.cert_pem,
                issued.key_pem,
            ));
        }
        let channel = Endpoint::from_shared(format!("https://{}", self.grpc))?
            .tls_config(tls)?
            .connect()
            .await?;
        Ok(ReportServiceClient::new(channel))
    }

    /// A TLS client trusting `ca_pem` and presenting `identity` (certificate and key PEM).
    #[allow(dead_code)]
    pub async fn tls_client_with(
        &self,
        ca_pem: &str,
        identity: Option<(&str, &str)>,
    ) -> Result<ReportServiceClient<Channel>, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
            .domain_name("localhost");
        if let Some((cert, key)) = identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        let channel = Endpoint::from_shared(format!("https://{}", self.grpc))?
            .tls_config(tls)?
            .connect()
            .await?;
        Ok(ReportServiceClient::new(channel))
    }

    pub async fn http_get(&self, path: &str) -> (u16, String) {
        self.try_http_get(path)
            .await
            .unwrap_or_else(|| panic!("GET {path} failed"))
    }

    /// GET over HTTP/1.0: status and body, or `None` when the connection fails.
    pub async fn try_http_get(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = tokio::net::TcpStream::connect(self.http).await.ok()?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((status, body))
    }

    /// The value of a sample in /metrics, e.g. `duban_reports_accepted_total`.
    pub async fn metric(&self, sample: &str) -> f64 {
        let (_, body) = self.http_get("/metrics").await;
        body.lines()
            .find_map(|line| {
                line.strip_prefix(sample)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no sample {sample} in /metrics:\n{body}"))
    }

    /// The value of a sample in /metrics, `None` when it is not there.
    #[allow(dead_code)]
    pub async fn try_metric(&self, sample: &str) -> Option<f64> {
        let (_, body) = self.http_get("/metrics").await;
        body.lines().find_map(|line| {
            line.strip_prefix(sample)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
    }

    /// Waits (up to 10 s) until a sample in /metrics has `value`: for what the server counts
    /// after the client already saw the effect (a failed handshake, a finished drain).
    pub async fn wait_for_metric(&self, sample: &str, value: f64) {
        self.wait_for_metric_where(sample, &format!("{value}"), |v| v == value)
            .await
    }

    /// Waits (up to 10 s) until a sample in /metrics is at least `min`.
    pub async fn wait_for_metric_at_least(&self, sample: &str, min: f64) {
        self.wait_for_metric_where(sample, &format!("at least {min}"), |v| v >= min)
            .await
    }

    async fn wait_for_metric_where(&self, sample: &str, what: &str, ok: impl Fn(f64) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (_, body) = self.http_get("/metrics").await;
            let now = body.lines().find_map(|line| {
                line.strip_prefix(sample)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            });
            if now.is_some_and(&ok) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{sample} is {now:?} after 10 s, not {what}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

/// A report from `unit` for `period` with the given indicator values.
pub fn report(unit: &str, seq: u64, period: &str, values: &[(&str, f64)]) -> pb::Report {
    let mut report_id = [0u8; 16];
    report_id[..8].copy_from_slice(&seq.to_be_bytes());
    report_id[8..]
        .copy_from_slice(&(unit.len() as u64 + u64::from(unit.as_bytes()[0])).to_be_bytes());
    pb::Report {
        report_id: report_id.to_vec(),
        unit_id: unit.into(),
        key_id: Vec::new(),
        seq,
        issued_at_ms: NOW_MS,
        audience: PLAN_ID.into(),
        period: period.into(),
        values: values
            .iter()
            .map(|(id, v)| pb::IndicatorValue {
                indicator_id: (*id).into(),
                value: *v,
                note: String::new(),
            })
            .collect(),
        task_updates: Vec::new(),
        revision: 0,
    }
}

pub fn sign(key: &SigningKey, report: pb::Report) -> pb::SignedReport {
    duban_proto::envelope::bind_and_sign(key, report)
}

/// The supervising office of the Qingdao plan.
#[allow(dead_code)]
pub fn office_key() -> SigningKey {
    SigningKey::from_seed(&[40; 32])
}

/// The case of laoshan's overdue 2018Q1 PCT report, which [`seed_alerts`] puts on record.
#[allow(dead_code)]
pub const REPORT_CASE: &str = "report/pct-applications/2018Q1/laoshan";
/// The case of 二(一)1's first milestone (…2017-12), led by the office through 三(一).
#[allow(dead_code)]
pub const MILESTONE_CASE: &str = "milestone/2-1-1/m1";

/// Puts two alert cases on record, as the evaluator would: laoshan's overdue report (to
/// laoshan and, as a copy, science-tech) and 2-1-1 m1 overdue (to the office and shinan).
#[allow(dead_code)]
pub async fn seed_alerts(server: &TestServer) {
    use duban_aggregator::store::{Store, WantedAlert};
    let alert = |name: &str, recipient: &str, subject: &[(&str, &str)]| {
        let mut labels: std::collections::BTreeMap<String, String> = [
            ("alertname", name),
            ("severity", "warning"),
            ("plan", PLAN_ID),
            ("recipient", recipient),
            ("role", "lead"),
            ("lead_unit", recipient),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        for (k, v) in subject {
            labels.insert((*k).to_owned(), (*v).to_owned());
        }
        WantedAlert {
            key: format!("{labels:?}"),
            labels,
            annotations: Default::default(),
        }
    };
    let report = [
        ("unit", "laoshan"),
        ("indicator", "pct-applications"),
        ("period", "2018Q1"),
    ];
    let milestone = [("task", "2-1-1"), ("milestone", "m1")];
    server
        .store
        .sync_alerts(
            PLAN_ID,
            vec![
                alert("ReportOverdue", "laoshan", &report),
                alert("ReportOverdue", "science-tech", &report),
                alert("TaskOverdue", "ip-office", &milestone),
                alert("TaskOverdue", "shinan", &milestone),
            ],
            NOW_MS,
        )
        .await
        .unwrap();
}

/// A signed statement of `kind` about `case` from `unit`, numbered `seq`.
#[allow(dead_code)]
pub fn statement(
    key: &SigningKey,
    unit: &str,
    seq: u64,
    case: &str,
    kind: pb::StatementKind,
    date: &str,
    text: &str,
) -> pb::SignedReport {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&seq.to_be_bytes());
    id[8] = unit.as_bytes()[0];
    let claim = kind == pb::StatementKind::ClaimDone;
    duban_proto::envelope::sign_statement(
        key,
        pb::Statement {
            statement_id: id.to_vec(),
            unit_id: unit.into(),
            key_id: Vec::new(),
            seq,
            issued_at_ms: NOW_MS,
            audience: PLAN_ID.into(),
            case_id: case.into(),
            kind: kind as i32,
            date: date.into(),
            note: if claim { String::new() } else { text.into() },
            reference: if claim { text.into() } else { String::new() },
            about_unit: String::new(),
        },
    )
}

//! The aggregator as a real process: killed with SIGKILL mid-stream it loses nothing it
//! acknowledged and stores nothing twice; on SIGTERM it says NOT_SERVING, finishes the calls in
//! flight and exits cleanly.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use duban_e2e::{AggregatorProcess, binary, run};
use duban_proto::pb::report_service_client::ReportServiceClient;
use duban_proto::{SigningKey, pb};

const REPORTS: usize = 3000;

struct Setup {
    _dir: tempfile::TempDir,
    url: String,
    key: SigningKey,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("duban.db").display());
    let key = SigningKey::generate();
    let public = dir.path().join("laoshan.pub");
    std::fs::write(&public, key.public_key().to_spki_pem()).unwrap();
    let out = run(
        &binary("duban-aggregator"),
        &[
            "keys",
            "add",
            "--database-url",
            &url,
            "--unit",
            "laoshan",
            "--public-key",
            public.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "keys add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Setup {
        _dir: dir,
        url,
        key,
    }
}

fn reports(key: &SigningKey) -> Vec<pb::SignedReport> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let periods = [
        "2017Q3", "2017Q4", "2018Q1", "2018Q2", "2018Q3", "2018Q4", "2019Q1", "2019Q2",
    ];
    (0..REPORTS)
        .map(|i| {
            let report = pb::Report {
                report_id: (i as u128 + 1).to_be_bytes().to_vec(),
                unit_id: "laoshan".into(),
                key_id: Vec::new(),
                seq: i as u64 + 1,
                issued_at_ms: now_ms,
                audience: "qingdao-ip-2017".into(),
                period: periods[i % periods.len()].into(),
                values: vec![pb::IndicatorValue {
                    indicator_id: "pct-applications".into(),
                    value: i as f64,
                    note: String::new(),
                }],
                task_updates: Vec::new(),
                revision: (i / periods.len()) as u32,
            };
            duban_proto::envelope::bind_and_sign(key, report)
        })
        .collect()
}

async fn client(addr: std::net::SocketAddr) -> ReportServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to the aggregator");
    ReportServiceClient::new(channel)
}

fn stored_report_ids(url: &str) -> Vec<String> {
    let out = run(
        &binary("duban-aggregator"),
        &[
            "reports",
            "list",
            "--database-url",
            url,
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
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["report_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_no_acknowledged_report_and_stores_none_twice() {
    let setup = setup();
    let all = Arc::new(reports(&setup.key));
    let mut server =
        AggregatorProcess::start(&["--database-url", &setup.url, "--insecure-plaintext"]);
    let acked: Arc<Mutex<HashSet<usize>>> = Arc::default();

    let mut workers = Vec::new();
    for worker in 0..8 {
        let (all, acked, addr) = (all.clone(), acked.clone(), server.grpc);
        workers.push(tokio::spawn(async move {
            let mut client = client(addr).await;
            for i in (worker..REPORTS).step_by(8) {
                match client.submit(all[i].clone()).await {
                    Ok(response) => {
                        let result = response.into_inner();
                        assert_eq!(
                            result.outcome(),
                            pb::Outcome::Accepted,
                            "report {i}: {}",
                            result.message
                        );
                        acked.lock().unwrap().insert(i);
                    }
                    Err(_) => return, // the server is gone
                }
            }
        }));
    }
    // Kill while the stream is flowing: once a few hundred reports are acknowledged.
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.lock().unwrap().len() < 300 {
        assert!(
            Instant::now() < deadline,
            "too few acknowledgements:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.child.kill().expect("SIGKILL the aggregator");
    server.child.wait().unwrap();
    for worker in workers {
        worker.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() < REPORTS,
        "the kill came after everything was sent; nothing was tested"
    );

    // Everything acknowledged is on disk, and no value under two reports.
    let stored = stored_report_ids(&setup.url);
    let unique: HashSet<&String> = stored.iter().collect();
    assert_values_stored_once(&setup.url);
    for i in &acked {
        let id = format!("{:032x}", *i as u128 + 1);
        assert!(unique.contains(&id), "acknowledged report {i} was lost");
    }

    // After a restart, resending everything stores the rest and duplicates the acknowledged.
    let server = AggregatorProcess::start(&["--database-url", &setup.url, "--insecure-plaintext"]);
    let mut client = client(server.grpc).await;
    for (chunk_index, chunk) in all.chunks(500).enumerate() {
        let response = client
            .submit_batch(pb::SubmitBatchRequest {
                reports: chunk.to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        for (offset, result) in response.results.iter().enumerate() {
            let i = chunk_index * 500 + offset;
            if acked.contains(&i) {
                assert_eq!(result.outcome(), pb::Outcome::Duplicate, "report {i}");
            } else {
                assert!(
                    matches!(
                        result.outcome(),
                        pb::Outcome::Accepted | pb::Outcome::Duplicate
                    ),
                    "report {i}: {:?} {}",
                    result.outcome(),
                    result.message
                );
            }
        }
    }
    let stored = stored_report_ids(&setup.url);
    assert_eq!(stored.len(), REPORTS);
    assert_eq!(stored.iter().collect::<HashSet<_>>().len(), REPORTS);
}

/// Each report of [`reports`] carries its own value: none may be stored under two reports.
fn assert_values_stored_once(url: &str) {
    let mut seen: HashMap<u64, i64> = HashMap::new();
    for item in duban_e2e::stored_items(url) {
        if let Some(first) = seen.insert(item.value.to_bits(), item.seq) {
            panic!(
                "value {} stored under seq {first} and seq {}",
                item.value, item.seq
            );
        }
    }
}

/// Holds the SQLite write lock of a database from another process until dropped, so that the
/// aggregator's commits wait (its busy timeout is 10 s).
struct WriteLock(std::process::Child);

impl WriteLock {
    fn take(url: &str) -> Self {
        use std::io::BufRead;
        let path = url.trim_start_matches("sqlite://");
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                "import sqlite3, sys\n\
                 c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
                 c.execute('BEGIN IMMEDIATE')\n\
                 print('locked', flush=True)\n\
                 sys.stdin.readline()\n\
                 c.execute('ROLLBACK')",
                path,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
        WriteLock(child)
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        use std::io::Write;
        if let Some(stdin) = self.0.stdin.as_mut() {
            let _ = stdin.write_all(b"release\n");
        }
        let _ = self.0.wait();
    }
}

/// SIGTERM with calls in flight: health turns NOT_SERVING at once (seen on a Watch stream
/// opened before), the calls in flight finish during the drain and are acknowledged, calls
/// sent during the drain are acknowledged or refused, never lost once acknowledged, and the
/// process exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_calls_in_flight_and_health_says_not_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let setup = setup();
    let mut server = AggregatorProcess::start(&[
        "--database-url",
        &setup.url,
        "--insecure-plaintext",
        "--shutdown-grace-seconds",
        "30",
    ]);
    let all = reports(&setup.key);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: "duban.report.v1.ReportService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );

    let lock = WriteLock::take(&setup.url);
    let acked: Arc<Mutex<HashSet<usize>>> = Arc::default();
    let send = |i: usize| {
        let (report, acked, channel) = (all[i].clone(), acked.clone(), channel.clone());
        tokio::spawn(async move {
            let result = ReportServiceClient::new(channel).submit(report).await;
            if let Ok(response) = &result {
                assert_eq!(response.get_ref().outcome(), pb::Outcome::Accepted);
                acked.lock().unwrap().insert(i);
            }
            result.is_ok()
        })
    };
    let in_flight: Vec<_> = (0..8).map(send).collect();
    let http = server.http.to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !duban_e2e::http_get(&http, "/metrics").contains("duban_requests_in_flight 8") {
        assert!(Instant::now() < deadline, "the calls did not get in flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let term = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("health changes within 10 s of SIGTERM")
        .unwrap()
        .unwrap()
        .status();
    assert_eq!(status, ServingStatus::NotServing);
    drop(watch);
    // Sent during the drain: acknowledged (and then stored) or refused, as the server decides.
    let during: Vec<_> = (8..12).map(send).collect();
    drop(lock);
    for call in in_flight {
        assert!(call.await.unwrap(), "a call in flight at SIGTERM failed");
    }
    for call in during {
        call.await.unwrap();
    }
    let exit = server.wait_exit(Duration::from_secs(30));
    assert!(exit.success(), "exit status {exit}:\n{}", server.log());
    assert!(
        server.log().contains("drained; exiting"),
        "{}",
        server.log()
    );
    let stored: HashSet<String> = stored_report_ids(&setup.url).into_iter().collect();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 8);
    for i in &acked {
        let id = format!("{:032x}", *i as u128 + 1);
        assert!(stored.contains(&id), "acknowledged report {i} was lost");
    }
    assert_values_stored_once(&setup.url);
}

#[test]
fn serve_refuses_to_run_without_tls_or_an_explicit_plaintext_flag() {
    let out = run(
        &binary("duban-aggregator"),
        &[
            "serve",
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TLS is required"), "{stderr}");
}

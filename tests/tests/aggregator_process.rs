//! The aggregator as a real process: killed with SIGKILL mid-stream it loses nothing it
//! acknowledged and stores nothing twice; on SIGTERM it drains and exits cleanly.

use std::collections::HashSet;
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
    ReportServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to the aggregator")
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

    // Everything acknowledged is on disk, exactly once.
    let stored = stored_report_ids(&setup.url);
    let unique: HashSet<&String> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "a report is stored twice");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_cleanly() {
    let setup = setup();
    let mut server = AggregatorProcess::start(&[
        "--database-url",
        &setup.url,
        "--insecure-plaintext",
        "--shutdown-grace-seconds",
        "5",
    ]);
    let mut client = client(server.grpc).await;
    let result = client
        .submit(reports(&setup.key)[0].clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(result.outcome(), pb::Outcome::Accepted);
    let status = server.signal_and_wait("TERM", Duration::from_secs(15));
    assert!(status.success(), "exit status {status}:\n{}", server.log());
    assert!(server.log().contains("drained"), "{}", server.log());
    assert_eq!(stored_report_ids(&setup.url).len(), 1);
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

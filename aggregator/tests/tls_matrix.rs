//! The gRPC port's TLS, case by case, against a real server in this process: who is refused
//! at the handshake (with the reason the server counts), who is served, and what happens when
//! the certificate, the CA or the CRL is replaced while the server runs.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use duban_aggregator::devca::DevCa;
use duban_aggregator::serve::Security;
use duban_aggregator::store::{ReportFilter, Store};
use duban_proto::pb;
use support::*;

/// A server with TLS whose files are checked for changes every 100 ms.
async fn server() -> TestServer {
    TestServer::start(Options {
        tls: true,
        security: Some(Security {
            reload_every: Duration::from_millis(100),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn laoshan_report(seq: u64) -> pb::SignedReport {
    sign(
        &laoshan_key(),
        report(
            "laoshan",
            seq,
            "2018Q1",
            &[("pct-applications", seq as f64)],
        ),
    )
}

/// Connects with `identity` and submits one report: whether it was served.
async fn served(
    server: &TestServer,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
    seq: u64,
) -> bool {
    match server.tls_client_with(ca_pem, identity).await {
        Err(_) => false,
        Ok(mut client) => client.submit(laoshan_report(seq)).await.is_ok(),
    }
}

/// Asserts the connection is refused and the server counts it under `reason`.
async fn refused_at_handshake(server: &TestServer, identity: Option<(&str, &str)>, reason: &str) {
    let ca = server.ca.as_ref().unwrap();
    assert!(
        !served(server, ca.cert_pem(), identity, 99).await,
        "a client the server should refuse ({reason}) was served"
    );
    server
        .wait_for_metric_at_least(
            &format!("duban_tls_handshake_failures_total{{reason=\"{reason}\"}}"),
            1.0,
        )
        .await;
}

async fn stored(server: &TestServer) -> usize {
    server
        .store
        .reports(&ReportFilter::default())
        .await
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_certificate_is_refused() {
    let server = server().await;
    refused_at_handshake(&server, None, "no_certificate").await;
    assert_eq!(stored(&server).await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_another_ca_is_refused() {
    let server = server().await;
    let other = DevCa::generate().unwrap().issue_unit("laoshan").unwrap();
    refused_at_handshake(
        &server,
        Some((&other.cert_pem, &other.key_pem)),
        "unknown_ca",
    )
    .await;
    assert_eq!(stored(&server).await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused() {
    let server = server().await;
    let now = now_secs();
    let expired = server
        .ca
        .as_ref()
        .unwrap()
        .issue_unit_valid("laoshan", now - 2 * 86_400, now - 86_400)
        .unwrap();
    refused_at_handshake(
        &server,
        Some((&expired.cert_pem, &expired.key_pem)),
        "expired",
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_not_yet_valid_is_refused() {
    let server = server().await;
    let now = now_secs();
    let early = server
        .ca
        .as_ref()
        .unwrap()
        .issue_unit_valid("laoshan", now + 86_400, now + 2 * 86_400)
        .unwrap();
    refused_at_handshake(
        &server,
        Some((&early.cert_pem, &early.key_pem)),
        "not_yet_valid",
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_revoked_by_a_crl_reloaded_while_serving_is_refused() {
    let server = server().await;
    let ca = server.ca.as_ref().unwrap();
    let laoshan = ca.issue_unit("laoshan").unwrap();
    let shibei = ca.issue_unit("shibei").unwrap();
    let laoshan_id = (laoshan.cert_pem.as_str(), laoshan.key_pem.as_str());
    assert!(served(&server, ca.cert_pem(), Some(laoshan_id), 1).await);

    // The CA revokes laoshan's certificate; the server picks the new CRL up by itself.
    let serial = x509_parser::pem::parse_x509_pem(laoshan.cert_pem.as_bytes())
        .unwrap()
        .1
        .parse_x509()
        .unwrap()
        .raw_serial()
        .to_vec();
    let crl = ca.crl(&[(serial, now_secs())], now_secs(), 2).unwrap();
    let files = server.tls_files.as_ref().unwrap();
    write_atomically(&files.crls[0], crl.as_bytes());
    server
        .wait_for_metric_at_least("duban_tls_reloads_total{listener=\"grpc\"}", 1.0)
        .await;

    refused_at_handshake(&server, Some(laoshan_id), "revoked").await;
    // Another unit's certificate is not affected.
    let mut as_shibei = server
        .tls_client_with(ca.cert_pem(), Some((&shibei.cert_pem, &shibei.key_pem)))
        .await
        .expect("an unrevoked certificate is still accepted");
    let result = as_shibei
        .submit(sign(
            &shibei_key(),
            report("shibei", 1, "2018Q1", &[("pct-applications", 2.0)]),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        result.outcome(),
        pb::Outcome::Accepted,
        "{}",
        result.message
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_naming_another_unit_than_the_report_is_unit_mismatch() {
    let server = server().await;
    let signed = laoshan_report(1);
    let mut as_shibei = server.tls_client(Some("shibei")).await.unwrap();
    let result = as_shibei.submit(signed.clone()).await.unwrap().into_inner();
    assert_eq!(
        (result.outcome(), result.reason()),
        (pb::Outcome::Rejected, pb::ReasonCode::ReasonUnitMismatch)
    );
    assert!(
        result
            .message
            .contains("client certificate names \"shibei\""),
        "{}",
        result.message
    );
    let mut as_laoshan = server.tls_client(Some("laoshan")).await.unwrap();
    let result = as_laoshan.submit(signed).await.unwrap().into_inner();
    assert_eq!(
        result.outcome(),
        pb::Outcome::Accepted,
        "{}",
        result.message
    );
    assert_eq!(stored(&server).await, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_against_the_tls_port_is_refused() {
    let server = server().await;
    // Whether the connection or the call fails first, nothing is served, and the server
    // counts a handshake that was not TLS.
    let plaintext = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await;
    let served = match plaintext {
        Err(_) => false,
        Ok(channel) => pb::report_service_client::ReportServiceClient::new(channel)
            .submit(laoshan_report(1))
            .await
            .is_ok(),
    };
    assert!(!served, "a plaintext client was served by a TLS server");
    server
        .wait_for_metric_at_least(
            "duban_tls_handshake_failures_total{reason=\"not_tls\"}",
            1.0,
        )
        .await;
    assert_eq!(stored(&server).await, 0);
    server.stop().await;
}

/// Replaces a file the way a deployment tool should: a new file renamed over the old.
fn write_atomically(path: &std::path::Path, contents: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_and_ca_replaced_while_a_client_streams() {
    let server = server().await;
    let old_ca = server.ca.as_ref().unwrap();
    let laoshan = old_ca.issue_unit("laoshan").unwrap();
    // The streaming client trusts both CAs, as agents do during a CA change.
    let new_ca = DevCa::generate().unwrap();
    let both = format!("{}{}", old_ca.cert_pem(), new_ca.cert_pem());
    let mut streaming = server
        .tls_client_with(&both, Some((&laoshan.cert_pem, &laoshan.key_pem)))
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let (sent_tx, sent) = tokio::sync::watch::channel(0u64);
    let stream = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut seq = 0;
            while !stop.load(Ordering::SeqCst) {
                seq += 1;
                match streaming.submit(laoshan_report(seq)).await {
                    Ok(answer) if answer.get_ref().outcome() == pb::Outcome::Accepted => {}
                    other => failures.push(format!("seq {seq}: {other:?}")),
                }
                let _ = sent_tx.send(seq);
            }
            failures
        })
    };
    let wait_for_sent = |at_least: u64| {
        let mut sent = sent.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(20), sent.wait_for(|n| *n >= at_least))
                .await
                .expect("the stream stalled")
                .expect("the stream ended");
        }
    };
    wait_for_sent(20).await;

    // A new server certificate from the new CA, and the new CA as the client CA.
    let files = server.tls_files.as_ref().unwrap();
    let renewed = new_ca.issue_server(&["localhost"]).unwrap();
    write_atomically(&files.key, renewed.key_pem.as_bytes());
    write_atomically(&files.cert, renewed.cert_pem.as_bytes());
    write_atomically(
        &files.crls[0],
        new_ca.crl(&[], now_secs(), 1).unwrap().as_bytes(),
    );
    write_atomically(
        files.client_ca.as_ref().unwrap(),
        new_ca.cert_pem().as_bytes(),
    );
    // Loaded when a client of the new CA is served (a poll may have seen part of the change).
    let new_laoshan = new_ca.issue_unit("laoshan").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut probe_seq = 1_000_000;
    loop {
        probe_seq += 1;
        if served(
            &server,
            new_ca.cert_pem(),
            Some((&new_laoshan.cert_pem, &new_laoshan.key_pem)),
            probe_seq,
        )
        .await
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new CA was not loaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at_reload = *sent.borrow();
    wait_for_sent(at_reload + 20).await;
    stop.store(true, Ordering::SeqCst);
    let failures = stream.await.unwrap();
    assert!(
        failures.is_empty(),
        "calls failed across the reload: {failures:?}"
    );
    let total = *sent.borrow() as usize;
    assert_eq!(
        stored(&server).await,
        total + 1,
        "every streamed call stored once, and the probe that was served"
    );

    // New connections see the new certificate: a client trusting only the old CA refuses the
    // server, and a client certificate of the old CA is refused.
    assert!(
        !served(
            &server,
            old_ca.cert_pem(),
            Some((&laoshan.cert_pem, &laoshan.key_pem)),
            1000
        )
        .await,
        "a client trusting only the old CA accepted the server"
    );
    refused_at_handshake_with(
        &server,
        new_ca.cert_pem(),
        (&laoshan.cert_pem, &laoshan.key_pem),
        "unknown_ca",
    )
    .await;
    server.stop().await;
}

async fn refused_at_handshake_with(
    server: &TestServer,
    ca_pem: &str,
    identity: (&str, &str),
    reason: &str,
) {
    assert!(!served(server, ca_pem, Some(identity), 2000).await);
    server
        .wait_for_metric_at_least(
            &format!("duban_tls_handshake_failures_total{{reason=\"{reason}\"}}"),
            1.0,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_new_file_keeps_the_old_material_in_use() {
    let server = server().await;
    let ca = server.ca.as_ref().unwrap();
    let laoshan = ca.issue_unit("laoshan").unwrap();
    let identity = Some((laoshan.cert_pem.as_str(), laoshan.key_pem.as_str()));
    let files = server.tls_files.as_ref().unwrap();
    let good_cert = std::fs::read(&files.cert).unwrap();

    // Half a certificate, as a copy in progress leaves it.
    std::fs::write(&files.cert, &good_cert[..good_cert.len() / 2]).unwrap();
    server
        .wait_for_metric_at_least("duban_tls_reload_errors_total{listener=\"grpc\"}", 1.0)
        .await;
    assert!(
        served(&server, ca.cert_pem(), identity, 1).await,
        "the old material serves"
    );

    // A key that is not the certificate's (the key first: at no moment are both files good).
    let stranger = ca.issue_server(&["localhost"]).unwrap();
    std::fs::write(&files.key, stranger.key_pem).unwrap();
    std::fs::write(&files.cert, &good_cert).unwrap();
    server
        .wait_for_metric_at_least("duban_tls_reload_errors_total{listener=\"grpc\"}", 2.0)
        .await;
    assert!(
        served(&server, ca.cert_pem(), identity, 2).await,
        "the old material serves"
    );
    assert_eq!(
        server
            .metric("duban_tls_reloads_total{listener=\"grpc\"}")
            .await,
        0.0,
        "nothing new was loaded"
    );
    assert_eq!(stored(&server).await, 2);
    server.stop().await;
}

/// The `sh` blocks of docs/SECURITY.md's "With an existing PKI (openssl)" section.
fn openssl_recipes() -> Vec<String> {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/SECURITY.md"),
    )
    .unwrap();
    let section = doc
        .split("## With an existing PKI (openssl)")
        .nth(1)
        .expect("the openssl section");
    section
        .split("```sh\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap().to_owned())
        .collect()
}

fn bash(dir: &std::path::Path, script: &str) {
    let out = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_openssl_commands_issue_and_revoke_what_the_server_checks() {
    if !duban_testkit::program("the documented openssl commands", "openssl", "openssl") {
        return;
    }
    let recipes = openssl_recipes();
    assert_eq!(recipes.len(), 2, "issue, then revoke: {recipes:?}");
    let dir = tempfile::tempdir().unwrap();
    // The organisation's CA, which the document takes as given.
    bash(
        dir.path(),
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
         -out ca.pem -subj /CN=org-ca -days 30 \
         -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign",
    );
    bash(dir.path(), &recipes[0]);
    bash(dir.path(), &recipes[0].replace("laoshan", "shibei"));
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let server = server().await;
    let files = server.tls_files.as_ref().unwrap();
    write_atomically(files.client_ca.as_ref().unwrap(), read("ca.pem").as_bytes());
    server
        .wait_for_metric_at_least("duban_tls_reloads_total{listener=\"grpc\"}", 1.0)
        .await;
    let ca = server.ca.as_ref().unwrap().cert_pem().to_owned();
    let (laoshan, laoshan_key) = (read("laoshan.pem"), read("laoshan.key"));
    assert!(served(&server, &ca, Some((&laoshan, &laoshan_key)), 1).await);

    bash(dir.path(), &recipes[1]);
    write_atomically(&files.crls[0], read("ca.crl").as_bytes());
    server
        .wait_for_metric_at_least("duban_tls_reloads_total{listener=\"grpc\"}", 2.0)
        .await;
    refused_at_handshake_with(&server, &ca, (&laoshan, &laoshan_key), "revoked").await;
    let mut as_shibei = server
        .tls_client_with(&ca, Some((&read("shibei.pem"), &read("shibei.key"))))
        .await
        .expect("shibei's certificate is not revoked");
    let result = as_shibei
        .submit(sign(
            &shibei_key(),
            report("shibei", 1, "2018Q1", &[("pct-applications", 2.0)]),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        result.outcome(),
        pb::Outcome::Accepted,
        "{}",
        result.message
    );
    server.stop().await;
}

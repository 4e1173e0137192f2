//! The HTTP side's protections against a real server: the bearer token (every path but the
//! probes, re-read when its file changes) and TLS with client certificates.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use duban_aggregator::devca::DevCa;
use duban_aggregator::serve::Security;
use duban_aggregator::tls::TlsFiles;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// One HTTP/1.0 GET on `stream`: the status (0 when the answer is not HTTP) and the body.
async fn get(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    path: &str,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n{auth}\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, response))
}

async fn plain_get(server: &TestServer, path: &str, token: Option<&str>) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(server.http).await.unwrap();
    get(stream, path, token).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_guards_everything_but_the_probes() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("http-token");
    let first = "3f1e0c9a8b7d6e5f4a3b2c1d";
    std::fs::write(&token_file, format!("{first}\n")).unwrap();
    let server = TestServer::start(Options {
        security: Some(Security {
            http_token_file: Some(token_file.clone()),
            reload_every: Duration::from_millis(100),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;

    for probe in ["/healthz", "/readyz"] {
        assert_eq!(plain_get(&server, probe, None).await.0, 200, "{probe}");
    }
    for path in [
        "/metrics",
        "/api/v1/progress",
        "/api/v1/cases",
        "/",
        "/units",
        "/export/indicators.csv",
    ] {
        let (status, response) = plain_get(&server, path, None).await;
        assert_eq!(status, 401, "{path} without a token: {response}");
        assert!(
            response.contains("WWW-Authenticate: Bearer")
                || response.contains("www-authenticate: Bearer"),
            "{response}"
        );
        assert_eq!(
            plain_get(&server, path, Some("wrong-token-0123456789"))
                .await
                .0,
            401,
            "{path}"
        );
        let (status, response) = plain_get(&server, path, Some(first)).await;
        assert_eq!(status, 200, "{path} with the token: {response}");
    }

    // A new token in the file replaces the old one without a restart.
    let second = "9a8b7c6d5e4f3a2b1c0d9e8f";
    let tmp = dir.path().join("http-token.new");
    std::fs::write(&tmp, second).unwrap();
    std::fs::rename(&tmp, &token_file).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while plain_get(&server, "/api/v1/progress", Some(second)).await.0 != 200 {
        assert!(Instant::now() < deadline, "the new token was not loaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        plain_get(&server, "/api/v1/progress", Some(first)).await.0,
        401
    );
    // An empty file (a secret being rewritten) keeps the token in force.
    std::fs::write(&token_file, "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = plain_get(&server, "/metrics", Some(second)).await;
        if metrics.contains("duban_tls_reload_errors_total{listener=\"http_token\"} 1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the empty token file was not seen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        plain_get(&server, "/api/v1/progress", Some(second)).await.0,
        200
    );
    server.stop().await;
}

#[test]
fn a_short_or_missing_token_file_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, "abc").unwrap();
    let error = duban_aggregator::http::Token::load(&short).unwrap_err();
    assert!(
        error.contains(&short.display().to_string()) && error.contains("at least 16"),
        "{error}"
    );
    let missing = dir.path().join("missing");
    let error = duban_aggregator::http::Token::load(&missing).unwrap_err();
    assert!(error.contains("cannot read"), "{error}");
}

fn connector(ca: &DevCa, identity: Option<(&str, &str)>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn tls_get(
    server: &TestServer,
    connector: &tokio_rustls::TlsConnector,
    path: &str,
) -> std::io::Result<(u16, String)> {
    let tcp = tokio::net::TcpStream::connect(server.http).await?;
    let stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    get(stream, path, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates_on_the_http_listener() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::generate().unwrap();
    let server_cert = ca.issue_server(&["localhost"]).unwrap();
    let files = TlsFiles {
        cert: dir.path().join("http.crt"),
        key: dir.path().join("http.key"),
        client_ca: Some(dir.path().join("ca.crt")),
        crls: Vec::new(),
    };
    std::fs::write(&files.cert, &server_cert.cert_pem).unwrap();
    std::fs::write(&files.key, &server_cert.key_pem).unwrap();
    std::fs::write(files.client_ca.as_ref().unwrap(), ca.cert_pem()).unwrap();
    let server = TestServer::start(Options {
        security: Some(Security {
            http_tls: Some(files),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    let viewer = ca.issue_unit("plan-office").unwrap();
    let with_cert = connector(&ca, Some((&viewer.cert_pem, &viewer.key_pem)));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tls_get(&server, &with_cert, "/readyz").await {
            Ok((200, _)) => break,
            other => assert!(Instant::now() < deadline, "not ready over TLS: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = tls_get(&server, &with_cert, "/api/v1/progress")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");

    // Without a client certificate, or in plaintext, nothing is served.
    let without = connector(&ca, None);
    let refused = tls_get(&server, &without, "/api/v1/progress").await;
    assert!(
        !matches!(refused, Ok((200, _))),
        "served without a certificate: {refused:?}"
    );
    let stream = tokio::net::TcpStream::connect(server.http).await.unwrap();
    let plaintext = get(stream, "/api/v1/progress", None).await;
    assert!(
        !matches!(plaintext, Ok((200, _))),
        "served in plaintext: {plaintext:?}"
    );
    server.stop().await;
}

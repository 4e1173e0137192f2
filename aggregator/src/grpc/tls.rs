//! TLS for the gRPC listener, done here rather than inside tonic so that a failed handshake is
//! seen: every failure is logged with the peer address and a reason, and counted in
//! `duban_tls_handshake_failures_total{reason}`. A district whose client certificate comes from
//! the wrong CA is thus visible at the centre, not only as "transport error" at the agent.
//!
//! The process has one rustls crypto provider, ring.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{AlertDescription, CertificateError, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::metrics::Metrics;

/// How long a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{what}: {message}")]
    Material { what: &'static str, message: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

fn material(what: &'static str, message: impl ToString) -> TlsSetupError {
    TlsSetupError::Material {
        what,
        message: message.to_string(),
    }
}

/// The server's rustls configuration: its certificate chain and key, client certificates
/// required and verified against `client_ca_pem`, HTTP/2 by ALPN.
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: &[u8],
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| material("the TLS certificate", e))?;
    if certs.is_empty() {
        return Err(material(
            "the TLS certificate",
            "no CERTIFICATE block in the file",
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| material("the TLS key", e))?;
    let mut roots = RootCertStore::empty();
    let mut any = false;
    for ca in CertificateDer::pem_slice_iter(client_ca_pem) {
        let ca = ca.map_err(|e| material("the client CA", e))?;
        roots
            .add(ca)
            .map_err(|e| material("the client CA", e.to_string()))?;
        any = true;
    }
    if !any {
        return Err(material(
            "the client CA",
            "no CERTIFICATE block in the file",
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| material("the client CA", e))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The `reason` label and a sentence for a failed handshake.
pub fn classify_handshake_error(error: &std::io::Error) -> (&'static str, String) {
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return match error.kind() {
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => (
                "other",
                "the client closed the connection during the handshake".into(),
            ),
            _ => ("other", error.to_string()),
        };
    };
    match tls {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => (
                "unknown_ca",
                "the client certificate is not signed by the client CA this server trusts".into(),
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                ("expired", "the client certificate has expired".into())
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => (
                "not_yet_valid",
                "the client certificate is not valid yet (check the client's clock)".into(),
            ),
            CertificateError::Revoked => ("revoked", "the client certificate is revoked".into()),
            other => (
                "bad_certificate",
                format!("the client certificate is not acceptable: {other:?}"),
            ),
        },
        rustls::Error::NoCertificatesPresented => (
            "no_certificate",
            "the client presented no certificate (mTLS is required)".into(),
        ),
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked => (
                "client_refused_server_certificate",
                format!(
                    "the client refused this server's certificate ({alert:?}): it trusts another CA, or expects another server name"
                ),
            ),
            other => ("other", format!("the client sent the TLS alert {other:?}")),
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => (
            "not_tls",
            "the client does not speak TLS (a plaintext client, or another protocol)".into(),
        ),
        other => ("other", other.to_string()),
    }
}

/// Accepts TCP connections on `listener` and hands out those whose TLS handshake succeeds.
/// Handshakes run concurrently, each bounded by [`HANDSHAKE_TIMEOUT`]; each failure is logged
/// and counted. When the receiver is dropped (the server stopped), the listener is closed.
/// The returned task owns the listener: abort it to close the port at once.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    metrics: Metrics,
) -> (
    tokio_stream::wrappers::ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let task = tokio::spawn(async move {
        loop {
            // The server dropping the stream (it stopped) ends the loop and frees the port.
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting a gRPC connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (acceptor, tx, metrics) = (acceptor.clone(), tx.clone(), metrics.clone());
            tokio::spawn(async move {
                let handshake = acceptor.accept(tcp).into_fallible();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err((error, tcp))) => {
                        handshake_failed(&metrics, peer, &error);
                        linger_close(tcp).await;
                    }
                    Err(_) => {
                        metrics
                            .tls_handshake_failures
                            .with_label_values(&["timeout"])
                            .inc();
                        tracing::warn!(%peer, reason = "timeout", "TLS handshake failed: no handshake within {HANDSHAKE_TIMEOUT:?}");
                    }
                }
            });
        }
    });
    (tokio_stream::wrappers::ReceiverStream::new(rx), task)
}

/// How long a refused connection is drained before it is closed: see [`linger_close`].
const LINGER: Duration = Duration::from_secs(2);

/// Closes a connection whose handshake failed so that the client reads the TLS alert. In TLS 1.3
/// a client whose certificate is refused has already sent its first request; closing a socket
/// with unread bytes makes the kernel send a reset, and the client may then lose the alert and
/// see only "connection closed". So: end our side (the alert is already written), and read and
/// discard what the client still sends until it closes, for at most [`LINGER`].
async fn linger_close(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.shutdown().await;
    let drain = async {
        let mut sink = [0u8; 4096];
        while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

fn handshake_failed(metrics: &Metrics, peer: SocketAddr, error: &std::io::Error) {
    let (reason, message) = classify_handshake_error(error);
    metrics
        .tls_handshake_failures
        .with_label_values(&[reason])
        .inc();
    if reason == "other" {
        tracing::debug!(%peer, reason, "TLS handshake failed: {message}");
    } else {
        tracing::warn!(%peer, reason, "TLS handshake failed: {message}");
    }
}

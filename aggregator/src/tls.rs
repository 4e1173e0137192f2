//! TLS for the aggregator's listeners, done here rather than inside tonic or axum so that
//! (1) a failed handshake is seen: every failure on the gRPC port is logged with the peer
//! address and a reason, and counted in `duban_tls_handshake_failures_total{reason}`; and
//! (2) the material is reloaded while serving: [`Reloading`] re-reads the certificate chain,
//! the key, the client CA bundle and the CRLs every few seconds, and every new connection is
//! accepted with what was last loaded. Connections already open keep the session they have, so
//! nothing in flight is dropped. A changed file that cannot be loaded (half-written, unreadable,
//! a key that is not the certificate's, a damaged CRL) keeps the old material in use, is logged
//! naming the file, and counted in `duban_tls_reload_errors_total{listener}`.
//!
//! The process has one rustls crypto provider, ring.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{AlertDescription, CertificateError, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::metrics::Metrics;

/// How long a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a gRPC connection is kept: then the server asks the client to reconnect
/// (calls in flight finish), and the new handshake meets the CRLs and CAs in force.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(600);
/// How often TLS files are checked for changes, unless configured otherwise.
pub const DEFAULT_RELOAD_EVERY: Duration = Duration::from_secs(5);

/// The files of one TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// The CA bundle (PEM) that signs clients' certificates; when given, clients must present
    /// a certificate it signed.
    pub client_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM or DER) of the client CAs; a client certificate they
    /// list is refused at the handshake.
    pub crls: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{file}: {what}: {message}")]
    Material {
        file: String,
        what: &'static str,
        message: String,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

fn material(file: &Path, what: &'static str, message: impl ToString) -> TlsSetupError {
    TlsSetupError::Material {
        file: file.display().to_string(),
        what,
        message: message.to_string(),
    }
}

/// The bytes of every file of a [`TlsFiles`], in its order: cert, key, client CA, CRLs.
type Contents = Vec<Vec<u8>>;

fn read_all(files: &TlsFiles) -> Result<Contents, TlsSetupError> {
    let mut paths: Vec<(&Path, &'static str)> = vec![
        (&files.cert, "the TLS certificate"),
        (&files.key, "the TLS key"),
    ];
    if let Some(ca) = &files.client_ca {
        paths.push((ca, "the client CA"));
    }
    paths.extend(files.crls.iter().map(|p| (p.as_path(), "the CRL")));
    paths
        .into_iter()
        .map(|(path, what)| {
            std::fs::read(path).map_err(|e| material(path, what, format!("cannot read: {e}")))
        })
        .collect()
}

/// What a built configuration serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    /// The served certificate's `notAfter`, Unix seconds.
    pub not_after: i64,
    /// Certificates revoked by the loaded CRLs.
    pub revoked: usize,
}

/// A rustls server configuration from the files' contents, with `alpn` offered. Every error
/// names the file at fault.
fn build(
    files: &TlsFiles,
    contents: &Contents,
    alpn: &[&[u8]],
) -> Result<(Arc<ServerConfig>, Loaded), TlsSetupError> {
    let (cert_pem, key_pem) = (&contents[0], &contents[1]);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| material(&files.cert, "the TLS certificate", e))?;
    let Some(leaf) = certs.first() else {
        return Err(material(
            &files.cert,
            "the TLS certificate",
            "no CERTIFICATE block in the file",
        ));
    };
    let not_after = x509_parser::parse_x509_certificate(leaf)
        .map(|(_, cert)| cert.validity().not_after.timestamp())
        .map_err(|e| material(&files.cert, "the TLS certificate", e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| material(&files.key, "the TLS key", e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::sign::CertifiedKey::from_der(certs.clone(), key.clone_key(), &provider).map_err(
        |e| {
            material(
                &files.key,
                "the TLS key",
                format!("does not go with {}: {e}", files.cert.display()),
            )
        },
    )?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut revoked = 0;
    let mut config = match (&files.client_ca, contents.get(2)) {
        (Some(ca_path), Some(ca_pem)) => {
            let mut roots = RootCertStore::empty();
            for ca in CertificateDer::pem_slice_iter(ca_pem) {
                let ca = ca.map_err(|e| material(ca_path, "the client CA", e))?;
                roots
                    .add(ca)
                    .map_err(|e| material(ca_path, "the client CA", e))?;
            }
            if roots.is_empty() {
                return Err(material(
                    ca_path,
                    "the client CA",
                    "no CERTIFICATE block in the file",
                ));
            }
            let mut crls = Vec::new();
            for (path, bytes) in files.crls.iter().zip(&contents[3..]) {
                let (list, count) = read_crls(path, bytes)?;
                revoked += count;
                crls.extend(list);
            }
            // A CRL covers the CA that signed it; a client of another CA in the bundle, for
            // which no CRL is given, is checked against none (rather than refused).
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .with_crls(crls)
                .allow_unknown_revocation_status()
                .build()
                .map_err(|e| material(ca_path, "the client CA or its CRLs", e))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    }
    .with_single_cert(certs, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok((Arc::new(config), Loaded { not_after, revoked }))
}

/// The CRLs of one file (PEM blocks `X509 CRL`, or one DER CRL), each checked to parse, and how
/// many certificates they revoke.
fn read_crls(
    path: &Path,
    bytes: &[u8],
) -> Result<(Vec<CertificateRevocationListDer<'static>>, usize), TlsSetupError> {
    let pem = bytes.windows(10).any(|w| w == b"-----BEGIN");
    let crls: Vec<CertificateRevocationListDer<'static>> = if pem {
        CertificateRevocationListDer::pem_slice_iter(bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| material(path, "the CRL", e))?
    } else {
        vec![CertificateRevocationListDer::from(bytes.to_vec())]
    };
    if crls.is_empty() {
        return Err(material(path, "the CRL", "no X509 CRL block in the file"));
    }
    let mut revoked = 0;
    for crl in &crls {
        let (_, parsed) = x509_parser::parse_x509_crl(crl)
            .map_err(|e| material(path, "the CRL", format!("cannot be parsed: {e}")))?;
        revoked += parsed.iter_revoked_certificates().count();
    }
    Ok((crls, revoked))
}

/// What one check of the files found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The files are as last seen.
    Unchanged,
    /// They changed and the new material is in use.
    Loaded(Loaded),
    /// They changed and cannot be loaded: the old material stays in use.
    Failed(String),
}

/// A listener's TLS configuration, reloaded from its files when they change.
pub struct Reloading {
    listener: &'static str,
    files: TlsFiles,
    alpn: Vec<&'static [u8]>,
    current: RwLock<Arc<ServerConfig>>,
    /// The contents last tried, loaded or not (empty after a read failure): a file is tried
    /// once per change.
    last: Mutex<Contents>,
    /// The read failure last reported, so that a file missing for a while is reported once.
    last_read_error: Mutex<Option<String>>,
    metrics: Metrics,
}

impl std::fmt::Debug for Reloading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reloading({}, {:?})", self.listener, self.files)
    }
}

impl Reloading {
    /// Loads the files once; an error here stops start-up. `listener` is the metrics label.
    pub fn load(
        listener: &'static str,
        files: TlsFiles,
        alpn: Vec<&'static [u8]>,
        metrics: Metrics,
    ) -> Result<Arc<Self>, TlsSetupError> {
        let contents = read_all(&files)?;
        let (config, loaded) = build(&files, &contents, &alpn)?;
        metrics
            .tls_cert_not_after
            .with_label_values(&[listener])
            .set(loaded.not_after);
        Ok(Arc::new(Reloading {
            listener,
            files,
            alpn,
            current: RwLock::new(config),
            last: Mutex::new(contents),
            last_read_error: Mutex::new(None),
            metrics,
        }))
    }

    /// The configuration new connections are accepted with.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().expect("TLS config lock").clone()
    }

    /// Reads the files; when they changed since last tried, loads them, or keeps the old
    /// material and says why not (logged and counted).
    pub fn reload_if_changed(&self) -> Reload {
        let contents = match read_all(&self.files) {
            Ok(contents) => {
                *self.last_read_error.lock().expect("TLS error lock") = None;
                contents
            }
            Err(error) => {
                let mut last = self.last_read_error.lock().expect("TLS error lock");
                if last.as_deref() == Some(error.to_string().as_str()) {
                    return Reload::Unchanged;
                }
                *last = Some(error.to_string());
                drop(last);
                return self.failed(None, error);
            }
        };
        if *self.last.lock().expect("TLS contents lock") == contents {
            return Reload::Unchanged;
        }
        match build(&self.files, &contents, &self.alpn) {
            Ok((config, loaded)) => {
                *self.current.write().expect("TLS config lock") = config;
                *self.last.lock().expect("TLS contents lock") = contents;
                self.metrics
                    .tls_reloads
                    .with_label_values(&[self.listener])
                    .inc();
                self.metrics
                    .tls_reload_failing
                    .with_label_values(&[self.listener])
                    .set(0);
                self.metrics
                    .tls_cert_not_after
                    .with_label_values(&[self.listener])
                    .set(loaded.not_after);
                tracing::info!(
                    listener = self.listener,
                    cert = %self.files.cert.display(),
                    not_after = loaded.not_after,
                    revoked = loaded.revoked,
                    "loaded new TLS material; new connections use it"
                );
                Reload::Loaded(loaded)
            }
            Err(error) => self.failed(Some(contents), error),
        }
    }

    /// Counts and logs a failed reload (once per distinct content, or per distinct read
    /// failure).
    fn failed(&self, contents: Option<Contents>, error: TlsSetupError) -> Reload {
        let mut last = self.last.lock().expect("TLS contents lock");
        if let Some(contents) = contents {
            *last = contents;
        } else {
            last.clear();
        }
        drop(last);
        self.metrics
            .tls_reload_errors
            .with_label_values(&[self.listener])
            .inc();
        self.metrics
            .tls_reload_failing
            .with_label_values(&[self.listener])
            .set(1);
        tracing::error!(listener = self.listener, %error, "new TLS material not loaded; the material loaded before stays in use");
        Reload::Failed(error.to_string())
    }

    /// Checks the files every `every` until `stop` resolves.
    pub async fn watch_until(
        self: Arc<Self>,
        every: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {}
            }
            let this = self.clone();
            // File reads and key parsing are blocking work.
            let _ = tokio::task::spawn_blocking(move || this.reload_if_changed()).await;
        }
    }
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
            CertificateError::Revoked => (
                "revoked",
                "the client certificate is revoked (listed in a loaded CRL)".into(),
            ),
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

/// A connection whose handshake succeeded, and its peer.
pub type Accepted = (TlsStream<TcpStream>, SocketAddr);

/// Accepts TCP connections on `listener` and hands out those whose TLS handshake succeeds,
/// each with the configuration [`Reloading::current`] gives at its accept. Handshakes run
/// concurrently, each bounded by [`HANDSHAKE_TIMEOUT`]; each failure is logged, and counted when
/// `count_failures` (the gRPC port). When the receiver is dropped (the server stopped), the
/// listener is closed. The returned task owns the listener: abort it to close the port at once.
pub fn accept(
    listener: TcpListener,
    config: Arc<Reloading>,
    count_failures: bool,
) -> (mpsc::Receiver<Accepted>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
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
                    tracing::warn!(%error, listener = config.listener, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Answers go out as soon as they are written: with Nagle's algorithm on, the last
            // frames of an answer waited for the client's delayed ACK (about 40 ms a call for
            // a client with one call at a time, such as an agent draining its outbox).
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, %peer, "cannot set TCP_NODELAY");
            }
            let acceptor = TlsAcceptor::from(config.current());
            let (tx, config) = (tx.clone(), config.clone());
            tokio::spawn(async move {
                let handshake = acceptor.accept(tcp).into_fallible();
                let metrics = count_failures.then_some(&config.metrics);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send((stream, peer)).await;
                    }
                    Ok(Err((error, tcp))) => {
                        handshake_failed(metrics, config.listener, peer, &error);
                        linger_close(tcp).await;
                    }
                    Err(_) => {
                        if let Some(metrics) = metrics {
                            metrics
                                .tls_handshake_failures
                                .with_label_values(&["timeout"])
                                .inc();
                        }
                        tracing::warn!(%peer, listener = config.listener, reason = "timeout", "TLS handshake failed: no handshake within {HANDSHAKE_TIMEOUT:?}");
                    }
                }
            });
        }
    });
    (rx, task)
}

/// [`accept`] as the stream tonic serves.
pub fn incoming(
    listener: TcpListener,
    config: Arc<Reloading>,
) -> (
    impl tokio_stream::Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>>,
    tokio::task::JoinHandle<()>,
) {
    use tokio_stream::StreamExt;
    let (rx, task) = accept(listener, config, true);
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|(stream, _)| Ok(stream));
    (stream, task)
}

/// [`accept`] as a listener axum serves.
pub struct HttpsListener {
    rx: mpsc::Receiver<Accepted>,
    local: SocketAddr,
}

impl HttpsListener {
    pub fn new(
        listener: TcpListener,
        config: Arc<Reloading>,
    ) -> std::io::Result<(Self, tokio::task::JoinHandle<()>)> {
        let local = listener.local_addr()?;
        let (rx, task) = accept(listener, config, false);
        Ok((HttpsListener { rx, local }, task))
    }
}

impl axum::serve::Listener for HttpsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(accepted) => accepted,
            // The accept task ended (the server is stopping): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
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

fn handshake_failed(
    metrics: Option<&Metrics>,
    listener: &str,
    peer: SocketAddr,
    error: &std::io::Error,
) {
    let (reason, message) = classify_handshake_error(error);
    if let Some(metrics) = metrics {
        metrics
            .tls_handshake_failures
            .with_label_values(&[reason])
            .inc();
    }
    if reason == "other" {
        tracing::debug!(%peer, listener, reason, "TLS handshake failed: {message}");
    } else {
        tracing::warn!(%peer, listener, reason, "TLS handshake failed: {message}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devca::{DevCa, Issued};

    /// A server certificate for localhost, the CA as client CA and an empty CRL, in `dir`.
    fn server_files(dir: &Path, ca: &DevCa) -> (TlsFiles, Issued) {
        let server = ca.issue_server(&["localhost"]).unwrap();
        let files = TlsFiles {
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            client_ca: Some(dir.join("ca.crt")),
            crls: vec![dir.join("ca.crl")],
        };
        std::fs::write(&files.cert, &server.cert_pem).unwrap();
        std::fs::write(&files.key, &server.key_pem).unwrap();
        std::fs::write(files.client_ca.as_ref().unwrap(), ca.cert_pem()).unwrap();
        std::fs::write(&files.crls[0], ca.crl(&[], 1_700_000_000, 1).unwrap()).unwrap();
        (files, server)
    }

    #[tokio::test]
    async fn accepted_connections_send_without_waiting_for_acks() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::generate().unwrap();
        let (files, _) = server_files(dir.path(), &ca);
        let config = Reloading::load("grpc", files, vec![b"h2"], Metrics::new("sqlite")).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (mut accepted, _task) = accept(listener, config, false);

        let unit = ca.issue_unit("u1").unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
            .unwrap();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(unit.cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(unit.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
        let tcp = TcpStream::connect(address).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let _client = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(name, tcp)
            .await
            .unwrap();

        let (stream, _) = accepted.recv().await.expect("the handshake is accepted");
        // Nagle's algorithm off: an answer's last frames do not wait for the client's ACK.
        assert!(stream.get_ref().0.nodelay().unwrap());
    }

    #[test]
    fn changed_files_are_loaded_or_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::generate().unwrap();
        let (files, server) = server_files(dir.path(), &ca);
        let metrics = Metrics::new("sqlite");
        let errors = || metrics.tls_reload_errors.with_label_values(&["grpc"]).get();
        let reloading =
            Reloading::load("grpc", files.clone(), vec![b"h2"], metrics.clone()).unwrap();
        assert_eq!(reloading.reload_if_changed(), Reload::Unchanged);

        std::fs::write(&files.crls[0], "-----BEGIN X509 CRL-----\nnot base64\n").unwrap();
        let Reload::Failed(why) = reloading.reload_if_changed() else {
            panic!("a damaged CRL was loaded")
        };
        assert!(
            why.starts_with(&format!("{}: the CRL", files.crls[0].display())),
            "{why}"
        );
        assert_eq!(
            reloading.reload_if_changed(),
            Reload::Unchanged,
            "tried once per change"
        );
        assert_eq!(errors(), 1);

        let revoked = vec![(vec![1u8, 2, 3], 1_700_000_000)];
        std::fs::write(&files.crls[0], ca.crl(&revoked, 1_700_000_100, 2).unwrap()).unwrap();
        let Reload::Loaded(loaded) = reloading.reload_if_changed() else {
            panic!("a good CRL was not loaded")
        };
        assert_eq!(loaded.revoked, 1);
        assert_eq!(
            metrics
                .tls_cert_not_after
                .with_label_values(&["grpc"])
                .get(),
            loaded.not_after
        );

        std::fs::remove_file(&files.key).unwrap();
        let Reload::Failed(why) = reloading.reload_if_changed() else {
            panic!("a missing key was not noticed")
        };
        assert!(
            why.starts_with(&format!(
                "{}: the TLS key: cannot read",
                files.key.display()
            )),
            "{why}"
        );
        assert_eq!(
            reloading.reload_if_changed(),
            Reload::Unchanged,
            "reported once"
        );
        assert_eq!(errors(), 2);
        let other = ca.issue_server(&["localhost"]).unwrap();
        std::fs::write(&files.key, &other.key_pem).unwrap();
        let Reload::Failed(why) = reloading.reload_if_changed() else {
            panic!("another certificate's key was loaded")
        };
        assert!(why.contains("does not go with"), "{why}");
        assert_eq!(errors(), 3);
        std::fs::write(&files.key, &server.key_pem).unwrap();
        assert!(matches!(reloading.reload_if_changed(), Reload::Loaded(_)));
    }
}

//! Facts about the agent's TLS files, read the way the TLS stack will read them.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The SAN URI prefix that names a duban unit in a client certificate.
pub const SPIFFE_UNIT_PREFIX: &str = "spiffe://duban/unit/";

/// The `notAfter` of the first certificate in a PEM file, in Unix seconds.
pub fn certificate_expiry(pem: &[u8]) -> Option<i64> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// What `duban-agent check` needs to know of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    pub subject: String,
    pub not_before: i64,
    pub not_after: i64,
    /// The units named by SAN URIs `spiffe://duban/unit/<unit>`.
    pub units: Vec<String>,
}

/// The PEM block labels in a file, to say what it is when it is not what was expected.
fn labels(pem: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(pem)
        .lines()
        .filter_map(|l| l.strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
        .map(str::to_owned)
        .collect()
}

fn not_a(what: &str, pem: &[u8]) -> String {
    match labels(pem).first() {
        Some(label) => format!("expected {what}, but this file holds -----BEGIN {label}-----"),
        None => format!("expected {what} (PEM), but this is not a PEM file"),
    }
}

/// Every certificate of a PEM file, with what it says; an error says what the file is instead.
pub fn read_certificates(pem: &[u8]) -> Result<Vec<(CertificateDer<'static>, CertFacts)>, String> {
    let ders: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("a damaged PEM block: {e}"))?;
    if ders.is_empty() {
        return Err(not_a("a certificate (-----BEGIN CERTIFICATE-----)", pem));
    }
    ders.into_iter()
        .map(|der| {
            let (_, cert) = x509_parser::parse_x509_certificate(&der)
                .map_err(|e| format!("a certificate that cannot be parsed: {e}"))?;
            let units = cert
                .subject_alternative_name()
                .ok()
                .flatten()
                .map(|san| {
                    san.value
                        .general_names
                        .iter()
                        .filter_map(|name| match name {
                            x509_parser::extensions::GeneralName::URI(uri) => {
                                uri.strip_prefix(SPIFFE_UNIT_PREFIX).map(str::to_owned)
                            }
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            let facts = CertFacts {
                subject: cert.subject().to_string(),
                not_before: cert.validity().not_before.timestamp(),
                not_after: cert.validity().not_after.timestamp(),
                units,
            };
            Ok((der, facts))
        })
        .collect()
}

/// The private key of a PEM file; an error says what the file is instead.
pub fn read_private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|_| {
        not_a(
            "a private key (-----BEGIN PRIVATE KEY----- or similar)",
            pem,
        )
    })
}

/// Whether the certificate's public key is the private key's.
pub fn key_matches_certificate(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<(), String> {
    let provider = rustls::crypto::ring::default_provider();
    match rustls::sign::CertifiedKey::from_der(vec![cert], key, &provider) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => Err(
            "the certificate and the key do not belong together (the certificate is for another key)"
                .into(),
        ),
        Err(error) => Err(format!("the key cannot be used with the certificate: {error}")),
    }
}

/// The contents of the CA, certificate and key files named by `config`, to tell whether they
/// changed; `None` without TLS or when one cannot be read.
pub fn read_files(config: &crate::config::AggregatorConfig) -> Option<Vec<Vec<u8>>> {
    let files = config.tls.as_ref()?;
    [&files.ca, &files.cert, &files.key]
        .into_iter()
        .map(|path| std::fs::read(path).ok())
        .collect()
}

/// Whether the TLS files can be used together: a CA, a certificate and the key that goes with
/// it. The error names the file at fault.
pub fn check_files(files: &crate::config::TlsConfig) -> Result<(), String> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
    };
    let ca = read(&files.ca)?;
    read_certificates(&ca).map_err(|e| format!("{}: {e}", files.ca.display()))?;
    let certs = read_certificates(&read(&files.cert)?)
        .map_err(|e| format!("{}: {e}", files.cert.display()))?;
    let key = read_private_key(&read(&files.key)?)
        .map_err(|e| format!("{}: {e}", files.key.display()))?;
    let (leaf, _) = certs.into_iter().next().expect("at least one certificate");
    key_matches_certificate(leaf, key).map_err(|e| format!("{}: {e}", files.key.display()))
}

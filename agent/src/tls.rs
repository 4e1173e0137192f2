//! Facts about the agent's client certificate.

/// The `notAfter` of the first certificate in a PEM file, in Unix seconds.
pub fn certificate_expiry(pem: &[u8]) -> Option<i64> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.validity().not_after.timestamp())
}

//! The unit a client certificate speaks for: its SAN URI `spiffe://duban/unit/<unit_id>`.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::parse_x509_certificate;

pub const SPIFFE_UNIT_PREFIX: &str = "spiffe://duban/unit/";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the client certificate cannot be parsed")]
    Unparsable,
    #[error("the client certificate has no SAN URI {SPIFFE_UNIT_PREFIX}<unit_id>")]
    NoUnit,
    #[error("the client certificate names several duban units")]
    SeveralUnits,
}

/// The unit id named by a DER certificate.
pub fn unit_of_certificate(der: &[u8]) -> Result<String, IdentityError> {
    let (_, cert) = parse_x509_certificate(der).map_err(|_| IdentityError::Unparsable)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| IdentityError::Unparsable)?
        .ok_or(IdentityError::NoUnit)?;
    let mut units = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => uri.strip_prefix(SPIFFE_UNIT_PREFIX),
            _ => None,
        });
    let unit = units
        .next()
        .filter(|u| !u.is_empty())
        .ok_or(IdentityError::NoUnit)?;
    if units.next().is_some() {
        return Err(IdentityError::SeveralUnits);
    }
    Ok(unit.to_owned())
}

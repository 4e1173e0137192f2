//! A development certificate authority: issues the server certificate and per-unit client
//! certificates (SAN URI `spiffe://duban/unit/<unit_id>`) for tests, the demo and
//! `duban-aggregator dev-ca`. Production deployments use their own CA; these certificates are
//! ordinary X.509 (ECDSA P-256) and any CA can issue the same shape.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};

use crate::grpc::identity::SPIFFE_UNIT_PREFIX;

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Issued")
    }
}

pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevCa")
    }
}

fn params(common_name: &str, names: Vec<String>) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(names)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "duban development CA");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    Ok(params)
}

impl DevCa {
    pub fn generate() -> Result<Self, rcgen::Error> {
        // Each CA has a name of its own: two development CAs are told apart (a certificate
        // from the other one is an unknown issuer, not a bad signature).
        let name = format!("duban dev CA {}", hex::encode(rand::random::<[u8; 4]>()));
        let mut ca = params(&name, Vec::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = ca.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(DevCa {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(ca, key),
        })
    }

    /// Loads a CA written by [`DevCa::cert_pem`] and [`DevCa::key_pem`].
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, rcgen::Error> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(DevCa {
            issuer,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A server certificate for the given DNS names and IP addresses.
    pub fn issue_server(&self, names: &[&str]) -> Result<Issued, rcgen::Error> {
        let mut p = params(
            names.first().copied().unwrap_or("duban-aggregator"),
            names.iter().map(|n| n.to_string()).collect(),
        )?;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(p)
    }

    /// A client certificate naming `unit_id` as `spiffe://duban/unit/<unit_id>`.
    pub fn issue_unit(&self, unit_id: &str) -> Result<Issued, rcgen::Error> {
        let mut p = params(&format!("duban agent {unit_id}"), Vec::new())?;
        p.subject_alt_names.push(SanType::URI(
            format!("{SPIFFE_UNIT_PREFIX}{unit_id}").try_into()?,
        ));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(p)
    }

    /// A CRL (PEM) listing `revoked` (serial number, revocation time in Unix seconds), issued
    /// at `now` (Unix seconds) and valid for a year, numbered `number`.
    pub fn crl(
        &self,
        revoked: &[(Vec<u8>, i64)],
        now: i64,
        number: u64,
    ) -> Result<String, rcgen::Error> {
        let time = |secs: i64| {
            time::OffsetDateTime::from_unix_timestamp(secs)
                .map_err(|_| rcgen::Error::InvalidCrlNextUpdate)
        };
        let params = CertificateRevocationListParams {
            this_update: time(now)?,
            next_update: time(now + 365 * 86_400)?,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|(serial, at)| {
                    Ok(RevokedCertParams {
                        serial_number: SerialNumber::from_slice(serial),
                        revocation_time: time(*at)?,
                        reason_code: None,
                        invalidity_date: None,
                    })
                })
                .collect::<Result<_, rcgen::Error>>()?,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer)?.pem()
    }

    /// [`Self::issue_unit`] valid only from `not_before` to `not_after` (Unix seconds).
    pub fn issue_unit_valid(
        &self,
        unit_id: &str,
        not_before: i64,
        not_after: i64,
    ) -> Result<Issued, rcgen::Error> {
        let mut p = params(&format!("duban agent {unit_id}"), Vec::new())?;
        p.subject_alt_names.push(SanType::URI(
            format!("{SPIFFE_UNIT_PREFIX}{unit_id}").try_into()?,
        ));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let time = |secs: i64| {
            time::OffsetDateTime::from_unix_timestamp(secs)
                .map_err(|_| rcgen::Error::CouldNotParseCertificate)
        };
        p.not_before = time(not_before)?;
        p.not_after = time(not_after)?;
        self.issue(p)
    }

    fn issue(&self, params: CertificateParams) -> Result<Issued, rcgen::Error> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_certificates_carry_the_unit() {
        let ca = DevCa::generate().unwrap();
        let issued = ca.issue_unit("laoshan").unwrap();
        let der = x509_parser::pem::parse_x509_pem(issued.cert_pem.as_bytes())
            .unwrap()
            .1
            .contents;
        assert_eq!(
            crate::grpc::identity::unit_of_certificate(&der).unwrap(),
            "laoshan"
        );
        let server = ca.issue_server(&["localhost"]).unwrap();
        let der = x509_parser::pem::parse_x509_pem(server.cert_pem.as_bytes())
            .unwrap()
            .1
            .contents;
        assert!(crate::grpc::identity::unit_of_certificate(&der).is_err());
        let again = DevCa::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        again.issue_unit("shinan").unwrap();
    }
}

//! `dev-ca`: a development CA and certificates written into a directory (see [`crate::devca`]).
//! [`write_dev_ca`] is what the command and the demo both call; [`dev_ca`] says what it did.

use std::path::PathBuf;

use super::*;
use crate::devca::{DevCa, Issued};

/// What [`write_dev_ca`] did with each file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DevCaFiles {
    /// Whether an existing CA in the directory was reused.
    pub reused_ca: bool,
    /// Files written now (certificates and keys).
    pub written: Vec<PathBuf>,
    /// Certificates that existed and were kept.
    pub kept: Vec<PathBuf>,
}

/// Writes a development CA and certificates into `dir`: `ca.crt`, `ca.key`, `server.crt`,
/// `server.key`, and `units/<unit>.crt` / `.key` for each unit of `plan` named. An existing CA
/// in `dir` is reused; existing files are never overwritten. Keys are written mode 0600.
pub fn write_dev_ca(
    dir: &Path,
    plan: &Plan,
    units: &[String],
    server_names: &[String],
) -> Result<DevCaFiles, AdminError> {
    for unit in units {
        if plan.unit(unit).is_none() {
            return Err(AdminError::UnknownUnit {
                unit: unit.clone(),
                plan: plan.id.clone(),
            });
        }
    }
    let units_dir = dir.join("units");
    std::fs::create_dir_all(&units_dir).map_err(|source| AdminError::Create {
        path: units_dir,
        source,
    })?;
    let (ca_cert, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let mut files = DevCaFiles::default();
    let ca = if ca_cert.exists() && ca_key.exists() {
        files.reused_ca = true;
        DevCa::from_pem(&read(&ca_cert)?, &read(&ca_key)?)?
    } else {
        let ca = DevCa::generate()?;
        write_new(&ca_cert, ca.cert_pem(), 0o644)?;
        write_new(&ca_key, ca.key_pem(), 0o600)?;
        files.written.extend([ca_cert, ca_key]);
        ca
    };
    let mut issue = |name: &str, issued: Issued| -> Result<(), AdminError> {
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        if cert.exists() || key.exists() {
            files.kept.push(cert);
            return Ok(());
        }
        write_new(&cert, &issued.cert_pem, 0o644)?;
        write_new(&key, &issued.key_pem, 0o600)?;
        files.written.extend([cert, key]);
        Ok(())
    };
    let names: Vec<&str> = server_names.iter().map(String::as_str).collect();
    issue("server", ca.issue_server(&names)?)?;
    for unit in units {
        issue(&format!("units/{unit}"), ca.issue_unit(unit)?)?;
    }
    let crl = dir.join(CRL_FILE);
    if !crl.exists() {
        write_new(&crl, &ca.crl(&[], now_secs(), now_secs() as u64)?, 0o644)?;
        files.written.push(crl);
    }
    Ok(files)
}

/// The CRL a development CA keeps beside `ca.crt`, for the aggregator's `--client-crl`.
pub const CRL_FILE: &str = "ca.crl";

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `dev-ca revoke`: adds `cert` (a certificate the CA in `dir` issued) to the CA's CRL,
/// `dir/ca.crl`, rewritten whole (a new file renamed into place, so that a server reading it
/// never sees half of it). What was revoked before stays revoked.
pub fn revoke_dev_cert(dir: &Path, cert: &Path) -> Result<String, AdminError> {
    let (ca_cert, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let ca = DevCa::from_pem(&read(&ca_cert)?, &read(&ca_key)?)?;
    let flag = |message: String| AdminError::Flag {
        flag: "--cert",
        message,
    };
    let pem = read(cert)?;
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| flag(format!("{}: not a PEM certificate: {e}", cert.display())))?;
    let parsed = block
        .parse_x509()
        .map_err(|e| flag(format!("{}: cannot be parsed: {e}", cert.display())))?;
    let ca_der = x509_parser::pem::parse_x509_pem(ca.cert_pem().as_bytes())
        .map_err(|e| flag(format!("{}: {e}", ca_cert.display())))?
        .1;
    let ca_parsed = ca_der
        .parse_x509()
        .map_err(|e| flag(format!("{}: {e}", ca_cert.display())))?;
    if parsed.issuer() != ca_parsed.subject() {
        return Err(flag(format!(
            "{} was issued by {}, not by this CA ({}): only its own CA can revoke it",
            cert.display(),
            parsed.issuer(),
            ca_parsed.subject()
        )));
    }
    let serial = parsed.raw_serial().to_vec();
    let subject = parsed.subject().to_string();
    let crl_path = dir.join(CRL_FILE);
    let mut revoked: Vec<(Vec<u8>, i64)> = Vec::new();
    if crl_path.exists() {
        let bytes = std::fs::read(&crl_path).map_err(|source| AdminError::Read {
            path: crl_path.clone(),
            source,
        })?;
        let (_, block) = x509_parser::pem::parse_x509_pem(&bytes)
            .map_err(|e| flag(format!("{}: not a PEM CRL: {e}", crl_path.display())))?;
        let (_, crl) = x509_parser::parse_x509_crl(&block.contents)
            .map_err(|e| flag(format!("{}: cannot be parsed: {e}", crl_path.display())))?;
        revoked.extend(
            crl.iter_revoked_certificates()
                .map(|r| (r.raw_serial().to_vec(), r.revocation_date.timestamp())),
        );
    }
    let now = now_secs();
    let mut out = String::new();
    if revoked.iter().any(|(s, _)| *s == serial) {
        let _ = writeln!(out, "{} ({subject}) was already revoked", cert.display());
        return Ok(out);
    }
    revoked.push((serial, now));
    // The CRL number must grow from one CRL to the next: the time of issue, in seconds.
    let crl = ca.crl(&revoked, now, now as u64)?;
    let tmp = dir.join(format!("{CRL_FILE}.new"));
    let _ = std::fs::remove_file(&tmp);
    write_new(&tmp, &crl, 0o644)?;
    std::fs::rename(&tmp, &crl_path).map_err(|source| AdminError::Create {
        path: crl_path.clone(),
        source,
    })?;
    let _ = writeln!(
        out,
        "revoked {} ({subject}); wrote {} ({} revoked in all)",
        cert.display(),
        crl_path.display(),
        revoked.len()
    );
    let _ = writeln!(
        out,
        "an aggregator started with --client-crl {} refuses it at the handshake once it has reloaded the file (every --tls-reload-seconds, 5 by default)",
        crl_path.display()
    );
    Ok(out)
}

/// `dev-ca`: [`write_dev_ca`], and what it did, for the terminal.
pub fn dev_ca(
    dir: &Path,
    plan: &Plan,
    units: &[String],
    server_names: &[String],
) -> Result<String, AdminError> {
    let files = write_dev_ca(dir, plan, units, server_names)?;
    let mut out = String::new();
    if files.reused_ca {
        let _ = writeln!(out, "reusing the CA in {}", dir.display());
    }
    for path in files
        .written
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "crt"))
    {
        if path.file_name().is_some_and(|n| n == "ca.crt") {
            let _ = writeln!(
                out,
                "wrote {} (the CA agents and the aggregator trust)",
                path.display()
            );
        } else {
            let _ = writeln!(out, "wrote {}", path.display());
        }
    }
    for path in &files.kept {
        let _ = writeln!(out, "kept existing {}", path.display());
    }
    Ok(out)
}

fn read(path: &Path) -> Result<String, AdminError> {
    std::fs::read_to_string(path).map_err(|source| AdminError::Read {
        path: path.to_owned(),
        source,
    })
}

fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), AdminError> {
    use std::io::Write;
    let create = |source| AdminError::Create {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(create)?;
    file.write_all(contents.as_bytes()).map_err(create)?;
    file.sync_all().map_err(create)?;
    Ok(())
}

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
    Ok(files)
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

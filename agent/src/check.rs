//! `duban-agent check`: everything a configuration needs in order to work, checked without
//! running the agent and without changing any file.
//!
//! Offline: the file parses; the private key loads; the TLS files are what their keys say (a
//! CA certificate, a client certificate, its private key), the certificate and key belong
//! together, the certificate names this unit (SAN URI `spiffe://duban/unit/<unit>`) and is
//! valid now; file sources read and parse, command sources name a program that exists.
//! Online (by default when an endpoint answers; required with `--online`): a signed Hello to
//! every endpoint, whose answer says whether the centre accepts the TLS handshake, knows the
//! key for this unit, knows the unit and serves this plan, and whether the clocks agree.

use std::path::Path;
use std::time::Duration;

use duban_host::clock::{Clock, SystemClock};
use duban_proto::SigningKey;

use crate::config::{AgentConfig, SourceKind};
use crate::deliver::{self, AgentIdentity};

/// Whether to ask the centre.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Online {
    /// Ask; an unreachable centre is reported but is not a failure.
    IfReachable,
    /// Ask; an unreachable centre is a failure.
    Required,
    /// Do not ask.
    Never,
}

/// The outcome: the lines to print and whether everything passed.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub lines: Vec<String>,
    pub failures: usize,
    pub warnings: usize,
}

impl Report {
    fn ok(&mut self, text: String) {
        self.lines.push(format!("  ok    {text}"));
    }
    fn fail(&mut self, text: String) {
        self.failures += 1;
        self.lines.push(format!("  FAIL  {text}"));
    }
    fn warn(&mut self, text: String) {
        self.warnings += 1;
        self.lines.push(format!("  warn  {text}"));
    }

    pub fn render(&self) -> String {
        let mut out = self.lines.join("\n");
        out.push('\n');
        out.push_str(&if self.failures == 0 {
            format!(
                "valid ({} warning{})\n",
                self.warnings,
                if self.warnings == 1 { "" } else { "s" }
            )
        } else {
            format!(
                "{} problem{} found: this configuration will not deliver as it is\n",
                self.failures,
                if self.failures == 1 { "" } else { "s" }
            )
        });
        out
    }
}

fn date(seconds: i64) -> String {
    jiff::Timestamp::from_second(seconds)
        .map(|t| t.strftime("%Y-%m-%d").to_string())
        .unwrap_or_else(|_| seconds.to_string())
}

/// Runs every check on the file at `path`.
pub async fn check(path: &Path, online: Online) -> Result<Report, crate::config::ConfigError> {
    let config = AgentConfig::read(path)?;
    let mut report = Report::default();
    report.lines.push(format!(
        "{}: unit {}, plan {}, {} endpoint(s), {} source(s), outbox {}",
        path.display(),
        config.unit,
        config.plan,
        config.aggregator.endpoints.len(),
        config.sources.len(),
        config.outbox.path.display()
    ));
    let key = match SigningKey::read_pkcs8_pem_file(&config.private_key) {
        Ok(key) => {
            report.ok(format!(
                "private_key {}: Ed25519, key id {}",
                config.private_key.display(),
                key.key_id()
            ));
            check_key_permissions(&config.private_key, &mut report);
            match crate::rotate::read_pending(&config.private_key) {
                None => {}
                Some(Ok(pending)) => report.warn(format!(
                    "a key rotation is pending: the running agent switches to key {} ({}) once the centre has registered it; `duban-agent rotate-key` prints the `keys add` line",
                    pending.key_id(),
                    crate::rotate::pending_path(&config.private_key).display()
                )),
                Some(Err(error)) => report.warn(format!(
                    "the pending key of a rotation, {}, cannot be read ({error}): give it the key file's owner, group and mode, or the rotation cannot complete",
                    crate::rotate::pending_path(&config.private_key).display()
                )),
            }
            Some(key)
        }
        Err(error) => {
            report.fail(format!("private_key: {error}"));
            None
        }
    };
    let tls_ok = check_tls(&config, &mut report);
    check_sources(&config, &mut report).await;
    match (key, online) {
        (_, Online::Never) => report
            .lines
            .push("  --    the centre was not asked (--offline)".into()),
        (None, _) => report
            .lines
            .push("  --    the centre was not asked: the private key does not load".into()),
        (Some(_), _) if !tls_ok => report
            .lines
            .push("  --    the centre was not asked: the TLS files do not load".into()),
        (Some(key), online) => ask_the_centre(&config, key, online, &mut report).await,
    }
    Ok(report)
}

#[cfg(unix)]
fn check_key_permissions(path: &Path, report: &mut Report) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        report.warn(format!(
            "private_key {} can be read by others (mode {:o}): `chmod 600` it (owned by the agent's user)",
            path.display(),
            meta.permissions().mode() & 0o777
        ));
    }
}

#[cfg(not(unix))]
fn check_key_permissions(_: &Path, _: &mut Report) {}

/// Returns whether the TLS files load (or there is no TLS).
fn check_tls(config: &AgentConfig, report: &mut Report) -> bool {
    let Some(tls) = &config.aggregator.tls else {
        report.warn("insecure_plaintext = true: no TLS (tests only)".into());
        return true;
    };
    let now = jiff::Timestamp::now().as_second();
    let mut ok = true;
    let read = |path: &Path| std::fs::read(path).map_err(|e| format!("cannot read: {e}"));
    match read(&tls.ca).and_then(|pem| crate::tls::read_certificates(&pem)) {
        Ok(certs) => report.ok(format!(
            "[aggregator] ca {}: {} certificate(s), the first valid until {}",
            tls.ca.display(),
            certs.len(),
            date(certs[0].1.not_after)
        )),
        Err(error) => {
            ok = false;
            report.fail(format!("[aggregator] ca {}: {error}", tls.ca.display()));
        }
    }
    let cert = match read(&tls.cert).and_then(|pem| crate::tls::read_certificates(&pem)) {
        Ok(mut certs) => Some(certs.remove(0)),
        Err(error) => {
            ok = false;
            report.fail(format!("[aggregator] cert {}: {error}", tls.cert.display()));
            None
        }
    };
    let key = match read(&tls.key).and_then(|pem| crate::tls::read_private_key(&pem)) {
        Ok(key) => Some(key),
        Err(error) => {
            ok = false;
            report.fail(format!("[aggregator] key {}: {error}", tls.key.display()));
            None
        }
    };
    let Some((der, facts)) = cert else {
        return ok;
    };
    let name = format!("[aggregator] cert {}", tls.cert.display());
    match facts.units.as_slice() {
        [unit] if *unit == config.unit => {}
        [] => report.fail(format!(
            "{name}: names no duban unit (it needs the SAN URI {}{}); the centre refuses it",
            crate::tls::SPIFFE_UNIT_PREFIX,
            config.unit
        )),
        [unit] => report.fail(format!(
            "{name}: is unit {unit:?}'s certificate, but this agent is unit {:?}: the centre refuses every report (UNIT_MISMATCH); use {}'s certificate",
            config.unit, config.unit
        )),
        units => report.fail(format!("{name}: names several units {units:?}")),
    }
    if facts.not_after < now {
        report.fail(format!(
            "{name}: expired on {}; the centre refuses it",
            date(facts.not_after)
        ));
    } else if facts.not_before > now {
        report.fail(format!(
            "{name}: not valid before {} (check this server's clock)",
            date(facts.not_before)
        ));
    } else if facts.not_after - now < 30 * 86_400 {
        report.warn(format!(
            "{name}: expires on {}, within 30 days",
            date(facts.not_after)
        ));
    }
    if let Some(key) = key {
        match crate::tls::key_matches_certificate(der, key) {
            Ok(()) => report.ok(format!(
                "{name}: {}, valid until {}, matches [aggregator] key {}",
                facts.subject,
                date(facts.not_after),
                tls.key.display()
            )),
            Err(error) => {
                ok = false;
                report.fail(format!("{name} and key {}: {error}", tls.key.display()));
            }
        }
    }
    ok
}

async fn check_sources(config: &AgentConfig, report: &mut Report) {
    for source in &config.sources {
        let name = format!("source {}", source.name);
        match &source.kind {
            SourceKind::Csv { .. } | SourceKind::Json { .. } => {
                match crate::sources::collect(source).await {
                    Ok(items) => report.ok(format!("{name}: {} item(s) read", items.len())),
                    Err(error) => report.fail(format!("{name}: {error}")),
                }
            }
            SourceKind::Command { argv, .. } => match find_program(&argv[0]) {
                Some(program) => report.ok(format!(
                    "{name}: runs {} (not run by check)",
                    program.display()
                )),
                None => report.fail(format!(
                    "{name}: program {:?} is not found or not executable",
                    argv[0]
                )),
            },
            SourceKind::Sql { .. } => report.lines.push(format!(
                "  --    {name}: the query is not run by check; `duban-agent collect --once` runs it"
            )),
        }
    }
}

fn find_program(program: &str) -> Option<std::path::PathBuf> {
    let executable = |p: &Path| {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            p.is_file() && std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
        }
        #[cfg(not(unix))]
        {
            p.is_file()
        }
    };
    if program.contains('/') {
        let path = Path::new(program);
        return executable(path).then(|| path.to_owned());
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| executable(p))
}

async fn ask_the_centre(
    config: &AgentConfig,
    key: SigningKey,
    online: Online,
    report: &mut Report,
) {
    let identity = AgentIdentity {
        key: crate::rotate::KeyCell::new(key),
        unit: config.unit.clone(),
        plan: config.plan.clone(),
    };
    let mut clients = match deliver::clients(&config.aggregator, None) {
        Ok(clients) => clients,
        Err(error) => {
            report.fail(format!("[aggregator]: {error}"));
            return;
        }
    };
    let counts = crate::outbox::peek_counts(&config.outbox.path).await;
    let timeout = config.aggregator.timeout.min(Duration::from_secs(10));
    for (endpoint, client) in config.aggregator.endpoints.iter().zip(clients.iter_mut()) {
        let now = SystemClock.now_ms();
        match deliver::call_hello(client, &identity, now, counts, timeout).await {
            Ok(answer) if answer.known => {
                report.ok(format!(
                    "centre {endpoint}: accepts this agent: key {} is unit {}'s, plan {}; the centre holds seq {} of this key",
                    identity.key.current().key_id(),
                    answer.key_unit,
                    answer.plan_id,
                    answer.max_seq
                ));
                let skew = (answer.server_time_ms - now) / 1000;
                if skew.abs() > 60 {
                    report.warn(format!(
                        "centre {endpoint}: this server's clock is {}s {} the centre's (NTP?); reports more than 5 minutes ahead are refused",
                        skew.abs(),
                        if skew < 0 { "ahead of" } else { "behind" }
                    ));
                }
            }
            Ok(answer) => {
                for problem in &answer.problems {
                    let code = problem.code().as_str_name();
                    report.fail(format!(
                        "centre {endpoint}: {}: {}",
                        code.strip_prefix("REASON_").unwrap_or(code),
                        problem.message
                    ));
                }
            }
            Err(failure) if failure.hold => {
                report.fail(format!("centre {endpoint}: {}", failure.message));
            }
            Err(failure) => {
                let text = format!("centre {endpoint}: not reachable: {}", failure.message);
                if online == Online::Required {
                    report.fail(text);
                } else {
                    report.warn(format!(
                        "{text} (the offline checks stand; --online makes this a failure)"
                    ));
                }
            }
        }
    }
}

//! `duban-aggregator serve` configuration: a TOML file (`--config`) whose every key a flag can
//! override, key by key (a flag replaces the one key it names; the rest of the file stands).
//! Validated purely; every error names the file and the key. Relative paths in the file are
//! relative to the file's directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:7700";
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9464";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://./duban-data/duban.db";

/// The file as written. Every field is optional; flags fill or override.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeFile {
    pub grpc_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    pub database_url: Option<String>,
    /// A file holding the database URL (with its password), instead of `database_url`: a
    /// mounted secret, kept out of this file.
    pub database_url_file: Option<PathBuf>,
    pub plan: Option<PathBuf>,
    pub insecure_plaintext: Option<bool>,
    pub max_in_flight: Option<usize>,
    pub shutdown_grace_seconds: Option<u64>,
    /// How often TLS files and the HTTP token file are checked for changes [default: 5].
    pub tls_reload_seconds: Option<u64>,
    pub tls: Option<TlsFile>,
    pub http: Option<HttpFile>,
    pub rate_limit: Option<RateLimitFile>,
    pub alerts: Option<AlertsFile>,
}

/// `[http]`: what protects the HTTP listener.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFile {
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// When given, HTTP clients must present a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
    #[serde(default)]
    pub client_crls: Vec<PathBuf>,
    /// A file holding the bearer token every path but /healthz and /readyz requires.
    pub token_file: Option<PathBuf>,
}

/// `[rate_limit]`: each unit's token bucket (per replica).
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    /// Reports a second per unit; 0 turns the limit off [default: 1000].
    pub reports_per_second: Option<u32>,
    /// Reports a unit may send at once after a quiet spell; at least 1000, the largest batch
    /// [default: 20000].
    pub burst: Option<u32>,
}

/// What `serve`'s flags say; each one given replaces the one key of the file it names
/// ([`ServeFile::merge`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ServeFlags {
    pub grpc_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    pub database_url: Option<String>,
    pub plan: Option<PathBuf>,
    pub insecure_plaintext: bool,
    pub max_in_flight: Option<usize>,
    pub shutdown_grace_seconds: Option<u64>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    /// Added to the file's `[tls] client_crls`.
    pub client_crls: Vec<PathBuf>,
    pub tls_reload_seconds: Option<u64>,
    pub http_tls_cert: Option<PathBuf>,
    pub http_tls_key: Option<PathBuf>,
    pub http_client_ca: Option<PathBuf>,
    pub http_token_file: Option<PathBuf>,
    pub rate_limit: Option<u32>,
    pub rate_limit_burst: Option<u32>,
    /// Added to the file's `alertmanagers`.
    pub alertmanagers: Vec<String>,
    /// Added to the file's `webhooks`.
    pub webhooks: Vec<String>,
    pub evaluate_every_seconds: Option<u64>,
    pub go_live: Option<String>,
}

impl ServeFile {
    /// The file with the flags laid over it, key by key: a flag given replaces the one key it
    /// names (a TLS file flag replaces that file only), sink flags add to the file's sinks, and
    /// everything else in the file stands.
    pub fn merge(mut self, flags: ServeFlags) -> ServeFile {
        self.grpc_listen = flags.grpc_listen.or(self.grpc_listen);
        self.http_listen = flags.http_listen.or(self.http_listen);
        self.database_url = flags.database_url.or(self.database_url);
        self.plan = flags.plan.or(self.plan);
        self.max_in_flight = flags.max_in_flight.or(self.max_in_flight);
        self.shutdown_grace_seconds = flags.shutdown_grace_seconds.or(self.shutdown_grace_seconds);
        self.tls_reload_seconds = flags.tls_reload_seconds.or(self.tls_reload_seconds);
        let http = self.http.take().unwrap_or_default();
        let http = HttpFile {
            tls_cert: flags.http_tls_cert.or(http.tls_cert),
            tls_key: flags.http_tls_key.or(http.tls_key),
            client_ca: flags.http_client_ca.or(http.client_ca),
            client_crls: http.client_crls,
            token_file: flags.http_token_file.or(http.token_file),
        };
        if http != HttpFile::default() {
            self.http = Some(http);
        }
        if flags.rate_limit.is_some() || flags.rate_limit_burst.is_some() {
            let limit = self.rate_limit.take().unwrap_or_default();
            self.rate_limit = Some(RateLimitFile {
                reports_per_second: flags.rate_limit.or(limit.reports_per_second),
                burst: flags.rate_limit_burst.or(limit.burst),
            });
        }
        if flags.insecure_plaintext {
            self.insecure_plaintext = Some(true);
        }
        let mut alerts = self.alerts.take().unwrap_or_default();
        alerts.alertmanagers.extend(flags.alertmanagers);
        alerts.webhooks.extend(flags.webhooks);
        alerts.evaluate_every_seconds = flags
            .evaluate_every_seconds
            .or(alerts.evaluate_every_seconds);
        alerts.go_live = flags.go_live.or(alerts.go_live);
        self.alerts = Some(alerts);
        let tls = self.tls.take().unwrap_or_default();
        let mut client_crls = tls.client_crls;
        client_crls.extend(flags.client_crls);
        let tls = TlsFile {
            cert: flags.tls_cert.or(tls.cert),
            key: flags.tls_key.or(tls.key),
            client_ca: flags.client_ca.or(tls.client_ca),
            client_crls,
        };
        if tls != TlsFile::default() {
            self.tls = Some(tls);
        }
        self
    }
}

/// `[tls]` as written: each file may come from the file or from its flag.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    /// CRLs of the client CA: a listed client certificate is refused at the handshake.
    #[serde(default)]
    pub client_crls: Vec<PathBuf>,
}

/// `[alerts]`: where plan alerts go and how often they are evaluated.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsFile {
    /// Alertmanager base URLs, e.g. "http://127.0.0.1:9093".
    #[serde(default)]
    pub alertmanagers: Vec<String>,
    /// Webhook URLs receiving Alertmanager's webhook format.
    #[serde(default)]
    pub webhooks: Vec<String>,
    pub evaluate_every_seconds: Option<u64>,
    pub resend_every_seconds: Option<u64>,
    pub due_soon_days: Option<i64>,
    pub critical_after_days: Option<i64>,
    /// Alerts only for deadlines from this time on (RFC 3339 or YYYY-MM-DD); default: when
    /// the database first served.
    pub go_live: Option<String>,
    /// `[[alerts.mute]]`: alerts not to send.
    #[serde(default)]
    pub mute: Vec<MuteFile>,
}

/// `[[alerts.mute]]` as written.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MuteFile {
    pub alertname: Option<String>,
    pub unit: Option<String>,
    pub plan: Option<String>,
    pub until: Option<String>,
    #[serde(default)]
    pub reason: String,
}

/// The settled configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    pub grpc_listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub database_url: String,
    pub plan: Option<PathBuf>,
    /// The gRPC listener's TLS (a client CA is always given).
    pub tls: Option<TlsFiles>,
    pub security: crate::serve::Security,
    pub max_in_flight: usize,
    pub shutdown_grace: Duration,
    pub alerts: crate::alerting::AlertSettings,
}

pub use crate::tls::TlsFiles;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: cannot read: {message}")]
    Read { file: String, message: String },
    #[error("{source_name}: {key}: {message}")]
    Invalid {
        source_name: String,
        key: String,
        message: String,
    },
}

/// A `sqlite://` URL whose path is relative, made relative to `base` (the configuration file's
/// directory); any other URL as it is.
fn sqlite_relative_to(url: &str, base: &Path) -> String {
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return url.to_owned();
    };
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    if path.is_empty() || path.starts_with('/') || path == ":memory:" {
        return url.to_owned();
    }
    let joined = base.join(path);
    match query {
        Some(query) => format!("sqlite://{}?{query}", joined.display()),
        None => format!("sqlite://{}", joined.display()),
    }
}

impl ServeFile {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            file: file.clone(),
            message: e.to_string(),
        })?;
        let mut parsed = Self::parse(&text, &file)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut Option<PathBuf>| {
            if let Some(path) = p.as_mut().filter(|p| p.is_relative()) {
                *path = base.join(&*path);
            }
        };
        resolve(&mut parsed.plan);
        resolve(&mut parsed.database_url_file);
        if let Some(url) = parsed.database_url.as_mut() {
            *url = sqlite_relative_to(url, base);
        }
        if let Some(tls) = parsed.tls.as_mut() {
            resolve(&mut tls.cert);
            resolve(&mut tls.key);
            resolve(&mut tls.client_ca);
            for crl in &mut tls.client_crls {
                *crl = base.join(&*crl);
            }
        }
        if let Some(http) = parsed.http.as_mut() {
            resolve(&mut http.tls_cert);
            resolve(&mut http.tls_key);
            resolve(&mut http.client_ca);
            resolve(&mut http.token_file);
            for crl in &mut http.client_crls {
                *crl = base.join(&*crl);
            }
        }
        if let Some(url_file) = parsed.database_url_file.take() {
            if parsed.database_url.is_some() {
                return Err(ConfigError::Invalid {
                    source_name: file,
                    key: "database_url_file".into(),
                    message: "cannot be combined with database_url; choose one".into(),
                });
            }
            let url = std::fs::read_to_string(&url_file).map_err(|e| ConfigError::Invalid {
                source_name: file.clone(),
                key: "database_url_file".into(),
                message: format!("cannot read {}: {e}", url_file.display()),
            })?;
            parsed.database_url = Some(url.trim().to_owned());
        }
        Ok(parsed)
    }

    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_owned(),
            message: e.to_string().trim().to_owned(),
        })
    }

    /// Fills in defaults and checks what must hold together. `source_name` names where the
    /// values came from in errors (the file, or "flags").
    pub fn settle(self, source_name: &str) -> Result<ServeConfig, ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            source_name: source_name.to_owned(),
            key: key.to_owned(),
            message: message.to_owned(),
        };
        let max_in_flight = self.max_in_flight.unwrap_or(256);
        if max_in_flight == 0 {
            return Err(invalid("max_in_flight", "must be at least 1"));
        }
        let insecure = self.insecure_plaintext.unwrap_or(false);
        let tls_file = self.tls.unwrap_or_default();
        let client_crls = tls_file.client_crls;
        let tls = match (tls_file.cert, tls_file.key, tls_file.client_ca) {
            (None, None, None) if client_crls.is_empty() => None,
            (None, None, None) => {
                return Err(invalid(
                    "tls.client_crls",
                    "CRLs (--client-crl) need TLS: give --tls-cert, --tls-key and --client-ca",
                ));
            }
            (Some(cert), Some(key), Some(client_ca)) => Some(TlsFiles {
                cert,
                key,
                client_ca: Some(client_ca),
                crls: client_crls,
            }),
            (cert, key, client_ca) => {
                let missing: Vec<&str> = [
                    (cert.is_none(), "cert (--tls-cert)"),
                    (key.is_none(), "key (--tls-key)"),
                    (client_ca.is_none(), "client_ca (--client-ca)"),
                ]
                .into_iter()
                .filter_map(|(absent, name)| absent.then_some(name))
                .collect();
                return Err(invalid(
                    "tls",
                    &format!("TLS needs all three files; missing: {}", missing.join(", ")),
                ));
            }
        };
        match (&tls, insecure) {
            (Some(_), true) => {
                return Err(invalid(
                    "insecure_plaintext",
                    "cannot be combined with TLS files; choose one",
                ))?;
            }
            (None, false) => {
                return Err(invalid(
                    "tls",
                    "TLS is required: give --tls-cert, --tls-key and --client-ca (or [tls] cert, key, client_ca), or --insecure-plaintext for tests",
                ));
            }
            _ => {}
        }
        let database_url = self
            .database_url
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "database_url",
                "expected sqlite://PATH or postgres://USER@HOST/DB",
            ));
        }
        let alerts = self.alerts.unwrap_or_default().settle(source_name)?;
        let http = self.http.unwrap_or_default();
        if http.client_ca.is_none() && !http.client_crls.is_empty() {
            return Err(invalid(
                "http.client_crls",
                "CRLs need the CA whose clients they revoke: give http.client_ca (--http-client-ca)",
            ));
        }
        let http_tls = match (http.tls_cert, http.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert,
                key,
                client_ca: http.client_ca,
                crls: http.client_crls,
            }),
            (None, None) if http.client_ca.is_none() && http.client_crls.is_empty() => None,
            _ => {
                return Err(invalid(
                    "http",
                    "TLS on the HTTP listener needs tls_cert and tls_key (--http-tls-cert, --http-tls-key); client_ca and client_crls need both",
                ));
            }
        };
        let reload_every = Duration::from_secs(
            self.tls_reload_seconds
                .unwrap_or(crate::tls::DEFAULT_RELOAD_EVERY.as_secs()),
        );
        if reload_every.is_zero() {
            return Err(invalid("tls_reload_seconds", "must be at least 1"));
        }
        let limit = self.rate_limit.unwrap_or_default();
        let defaults = crate::grpc::limit::RateLimit::default();
        let rate_limit = match limit.reports_per_second {
            Some(0) => None,
            per_second => {
                let burst = limit.burst.unwrap_or(defaults.burst.get());
                if (burst as usize) < crate::grpc::MAX_BATCH {
                    return Err(invalid(
                        "rate_limit.burst",
                        &format!(
                            "must be at least {}, the largest batch (a larger batch could never pass)",
                            crate::grpc::MAX_BATCH
                        ),
                    ));
                }
                Some(crate::grpc::limit::RateLimit {
                    per_second: per_second
                        .and_then(std::num::NonZeroU32::new)
                        .unwrap_or(defaults.per_second),
                    burst: std::num::NonZeroU32::new(burst).expect("checked above"),
                })
            }
        };
        let security = crate::serve::Security {
            http_tls,
            http_token_file: http.token_file,
            reload_every,
            rate_limit,
        };
        Ok(ServeConfig {
            grpc_listen: self
                .grpc_listen
                .unwrap_or_else(|| DEFAULT_GRPC_LISTEN.parse().expect("valid default")),
            http_listen: self
                .http_listen
                .unwrap_or_else(|| DEFAULT_HTTP_LISTEN.parse().expect("valid default")),
            database_url,
            plan: self.plan,
            tls,
            security,
            max_in_flight,
            shutdown_grace: Duration::from_secs(self.shutdown_grace_seconds.unwrap_or(10)),
            alerts,
        })
    }
}

impl AlertsFile {
    /// The alert settings, with defaults filled in; errors name `source_name` and the key.
    pub fn settle(self, source_name: &str) -> Result<crate::alerting::AlertSettings, ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            source_name: source_name.to_owned(),
            key: key.to_owned(),
            message: message.to_owned(),
        };
        for (n, url) in self.alertmanagers.iter().chain(&self.webhooks).enumerate() {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    &format!("alerts[{n}]"),
                    &format!("expected an http:// or https:// URL, got {url:?}"),
                ));
            }
        }
        let defaults = crate::alerting::AlertSettings::default();
        let evaluate_every = self
            .evaluate_every_seconds
            .map(Duration::from_secs)
            .unwrap_or(defaults.evaluate_every);
        if evaluate_every.is_zero() {
            return Err(invalid(
                "alerts.evaluate_every_seconds",
                "must be at least 1",
            ));
        }
        let go_live_ms = self
            .go_live
            .as_deref()
            .map(crate::clock::parse_time_ms)
            .transpose()
            .map_err(|m| invalid("alerts.go_live", &m))?;
        let mut mutes = Vec::new();
        for (n, mute) in self.mute.iter().enumerate() {
            let key = format!("alerts.mute[{n}]");
            if mute.alertname.is_none() && mute.unit.is_none() && mute.plan.is_none() {
                return Err(invalid(
                    &key,
                    "expected at least one of alertname, unit or plan (a mute of everything is a mistake; remove the sinks instead)",
                ));
            }
            if let Some(name) = &mute.alertname
                && !crate::alerting::rules::ALERT_NAMES.contains(&name.as_str())
            {
                return Err(invalid(
                    &format!("{key}.alertname"),
                    &format!(
                        "expected one of {}, got {name:?}",
                        crate::alerting::rules::ALERT_NAMES.join(", ")
                    ),
                ));
            }
            let until_ms = mute
                .until
                .as_deref()
                .map(crate::clock::parse_time_ms)
                .transpose()
                .map_err(|m| invalid(&format!("{key}.until"), &m))?;
            mutes.push(crate::alerting::rules::Mute {
                alertname: mute.alertname.clone(),
                unit: mute.unit.clone(),
                plan: mute.plan.clone(),
                until_ms,
                reason: mute.reason.clone(),
            });
        }
        Ok(crate::alerting::AlertSettings {
            policy: crate::alerting::rules::AlertPolicy {
                due_soon_days: self.due_soon_days.unwrap_or(defaults.policy.due_soon_days),
                critical_after_days: self
                    .critical_after_days
                    .unwrap_or(defaults.policy.critical_after_days),
                go_live_ms,
                mutes,
            },
            sinks: crate::alerting::notify::Sinks {
                alertmanagers: self.alertmanagers,
                webhooks: self.webhooks,
            },
            evaluate_every,
            resend_every: self
                .resend_every_seconds
                .map(Duration::from_secs)
                .unwrap_or(defaults.resend_every),
            evaluate: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_with_plaintext() {
        let config = ServeFile {
            insecure_plaintext: Some(true),
            ..Default::default()
        }
        .settle("flags")
        .unwrap();
        assert_eq!(config.grpc_listen.to_string(), DEFAULT_GRPC_LISTEN);
        assert_eq!(config.http_listen.to_string(), DEFAULT_HTTP_LISTEN);
        assert_eq!(config.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(config.shutdown_grace, Duration::from_secs(10));
    }

    #[test]
    fn the_shipped_example_is_a_valid_configuration() {
        let file = ServeFile::parse(
            include_str!("../../deploy/examples/aggregator.toml"),
            "deploy/examples/aggregator.toml",
        )
        .unwrap();
        let config = file.settle("deploy/examples/aggregator.toml").unwrap();
        let tls = config.tls.unwrap();
        assert_eq!(tls.crls, [PathBuf::from("/etc/duban/tls/agents-ca.crl")]);
        assert_eq!(config.security.reload_every, Duration::from_secs(5));
        assert_eq!(
            config.security.rate_limit,
            Some(crate::grpc::limit::RateLimit::default())
        );
        assert_eq!(config.security.http_tls, None);
    }

    #[test]
    fn http_protections_and_rate_limits_are_checked() {
        let settle = |text: &str| {
            ServeFile::parse(&format!("insecure_plaintext = true\n{text}"), "a.toml")
                .unwrap()
                .settle("a.toml")
        };
        let err = settle("[http]\ntls_cert = \"h.crt\"\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("a.toml: http: TLS on the HTTP listener needs tls_cert and tls_key"),
            "{err}"
        );
        let err = settle("[rate_limit]\nburst = 10\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("a.toml: rate_limit.burst: must be at least 1000"),
            "{err}"
        );
        let off = settle("[rate_limit]\nreports_per_second = 0\n").unwrap();
        assert_eq!(off.security.rate_limit, None);
        let token = settle("[http]\ntoken_file = \"t\"\n").unwrap();
        assert_eq!(token.security.http_token_file, Some(PathBuf::from("t")));
        let err = settle("tls_reload_seconds = 0\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "a.toml: tls_reload_seconds: must be at least 1"
        );
        let err = ServeFile::parse("[tls]\nclient_crls = [\"x.crl\"]\n", "a.toml")
            .unwrap()
            .settle("a.toml")
            .unwrap_err();
        assert!(err.to_string().contains("tls.client_crls"), "{err}");
    }

    #[test]
    fn the_database_url_may_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("url"), "postgres://duban:secret@db/duban\n").unwrap();
        let config = dir.path().join("aggregator.toml");
        std::fs::write(&config, "database_url_file = \"url\"\n").unwrap();
        let file = ServeFile::read(&config).unwrap();
        assert_eq!(
            file.database_url.as_deref(),
            Some("postgres://duban:secret@db/duban")
        );
        std::fs::write(
            &config,
            "database_url_file = \"url\"\ndatabase_url = \"sqlite://x\"\n",
        )
        .unwrap();
        let err = ServeFile::read(&config).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("database_url_file: cannot be combined with database_url; choose one"),
            "{err}"
        );
        std::fs::write(&config, "database_url_file = \"missing\"\n").unwrap();
        let err = ServeFile::read(&config).unwrap_err();
        assert!(
            err.to_string().contains("database_url_file: cannot read"),
            "{err}"
        );
    }

    #[test]
    fn tls_or_an_explicit_plaintext_is_required() {
        let err = ServeFile::default().settle("duban.toml").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("duban.toml: tls: TLS is required"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_name_file_and_key() {
        let err = ServeFile::parse(
            "grpc_listen = \"127.0.0.1:7700\"\nlisten_port = 3\n",
            "a.toml",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("a.toml")
                && err.to_string().contains("unknown field `listen_port`"),
            "{err}"
        );
        let err = ServeFile::parse("grpc_listen = \"not an address\"\n", "a.toml").unwrap_err();
        assert!(err.to_string().contains("grpc_listen"), "{err}");
        let err = ServeFile {
            insecure_plaintext: Some(true),
            database_url: Some("mysql://x".into()),
            ..Default::default()
        }
        .settle("a.toml")
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "a.toml: database_url: expected sqlite://PATH or postgres://USER@HOST/DB"
        );
    }

    #[test]
    fn a_relative_sqlite_path_in_the_file_is_relative_to_the_file() {
        let base = Path::new("/etc/duban");
        for (url, resolved) in [
            ("sqlite://duban.db", "sqlite:///etc/duban/duban.db"),
            (
                "sqlite:data/duban.db?mode=rwc",
                "sqlite:///etc/duban/data/duban.db?mode=rwc",
            ),
            (
                "sqlite:///var/lib/duban/duban.db",
                "sqlite:///var/lib/duban/duban.db",
            ),
            ("sqlite::memory:", "sqlite::memory:"),
            ("postgres://duban@db/duban", "postgres://duban@db/duban"),
        ] {
            assert_eq!(sqlite_relative_to(url, base), resolved, "{url}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("aggregator.toml");
        std::fs::write(&file, "database_url = \"sqlite://from-file.db\"\n").unwrap();
        assert_eq!(
            ServeFile::read(&file).unwrap().database_url,
            Some(format!(
                "sqlite://{}",
                dir.path().join("from-file.db").display()
            ))
        );
    }

    #[test]
    fn flags_replace_only_the_keys_they_name() {
        let file = ServeFile {
            grpc_listen: Some("127.0.0.1:7700".parse().unwrap()),
            database_url: Some("sqlite://from-file.db".into()),
            max_in_flight: Some(10),
            tls: Some(TlsFile {
                cert: Some("file.crt".into()),
                key: Some("file.key".into()),
                client_ca: Some("ca.crt".into()),
                client_crls: vec!["ca.crl".into()],
            }),
            alerts: Some(AlertsFile {
                webhooks: vec!["http://file".into()],
                evaluate_every_seconds: Some(60),
                due_soon_days: Some(3),
                ..Default::default()
            }),
            ..Default::default()
        };
        let merged = file.clone().merge(ServeFlags {
            max_in_flight: Some(20),
            tls_cert: Some("renewed.crt".into()),
            client_crls: vec!["other.crl".into()],
            webhooks: vec!["http://flag".into()],
            go_live: Some("2026-12-01".into()),
            insecure_plaintext: false,
            ..Default::default()
        });
        assert_eq!(merged.grpc_listen, file.grpc_listen, "no flag: the file's");
        assert_eq!(
            merged.database_url.as_deref(),
            Some("sqlite://from-file.db")
        );
        assert_eq!(merged.max_in_flight, Some(20), "the flag's");
        let tls = merged.tls.unwrap();
        assert_eq!(tls.cert.as_deref(), Some(Path::new("renewed.crt")));
        assert_eq!(
            tls.key.as_deref(),
            Some(Path::new("file.key")),
            "the other TLS keys stand"
        );
        assert_eq!(
            tls.client_crls,
            [PathBuf::from("ca.crl"), PathBuf::from("other.crl")],
            "CRLs add up"
        );
        let alerts = merged.alerts.unwrap();
        assert_eq!(
            alerts.webhooks,
            ["http://file", "http://flag"],
            "sinks add up"
        );
        assert_eq!(alerts.evaluate_every_seconds, Some(60));
        assert_eq!(alerts.due_soon_days, Some(3));
        assert_eq!(alerts.go_live.as_deref(), Some("2026-12-01"));
        assert_eq!(merged.insecure_plaintext, None);
        // Nothing given: the file as it was (with an empty [alerts] made explicit).
        let same = file.clone().merge(ServeFlags::default());
        assert_eq!(same.tls, file.tls);
        assert_eq!(same.alerts, file.alerts);
        let plain = ServeFile::default().merge(ServeFlags {
            insecure_plaintext: true,
            ..Default::default()
        });
        assert_eq!((plain.insecure_plaintext, plain.tls), (Some(true), None));
    }
}

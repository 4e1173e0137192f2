//! The agent's configuration: one TOML file, validated purely. Unknown keys are errors, and
//! every error names the file, the key and what was expected.

use crate::schedule::{Schedule, parse_cron};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod raw;
mod validate;

use raw::*;
use validate::*;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/duban/agent.toml";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}{}: {key}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    pub file: String,
    /// The line of the key (or of its section, when the key is missing), from 1.
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

/// The line (from 1) of a key named as in errors (`aggregator.endpoints[1]`,
/// `source[0] (pct).every`), or of the nearest enclosing table or array entry when the key
/// itself is absent.
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    let root = toml::de::DeTable::parse(text).ok()?;
    let mut span = None;
    let mut node: Option<&toml::Spanned<toml::de::DeValue<'_>>> = None;
    for part in key.split('.') {
        let part = part.split(" (").next().unwrap_or(part);
        let (name, indices) = match part.split_once('[') {
            Some((name, rest)) => (name, Some(rest)),
            None => (part, None),
        };
        let mut next = match node {
            None => root.get_ref().get(name),
            Some(value) => value.get_ref().get(name),
        };
        for index in indices.into_iter().flat_map(|r| r.split('[')) {
            let index: usize = index.trim_end_matches(']').parse().ok()?;
            next = next.and_then(|n| n.get_ref().get(index));
        }
        let Some(found) = next else {
            break;
        };
        span = Some(found.span());
        node = Some(found);
    }
    let start = span?.start;
    Some(text[..start.min(text.len())].matches('\n').count() + 1)
}

// ---- as written ----------------------------------------------------------------------------

// ---- validated -----------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Refuse new collection (and count it); keep everything already stored. The default.
    #[default]
    Refuse,
    /// Delete the oldest reports to make room (and count them).
    DropOldest,
}

/// What a source yields: indicator values or task updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Items {
    #[default]
    Values,
    Tasks,
}

/// Column (CSV), field (JSON) or column-alias (SQL) names. Defaults are the names themselves.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Fields {
    pub indicator: String,
    pub task: String,
    pub milestone: String,
    pub period: String,
    pub value: String,
    pub percent: String,
    pub status: String,
    pub note: String,
}

impl Default for Fields {
    fn default() -> Self {
        Fields {
            indicator: "indicator".into(),
            task: "task".into(),
            milestone: "milestone".into(),
            period: "period".into(),
            value: "value".into(),
            percent: "percent".into(),
            status: "status".into(),
            note: "note".into(),
        }
    }
}

/// How a file source's bytes are decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// UTF-8, with or without a byte-order mark. The default.
    #[default]
    Utf8,
    /// GBK, as Excel on Chinese Windows writes CSV (decoded as its superset GB18030).
    Gbk,
    /// GB18030.
    Gb18030,
}

impl Encoding {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().replace('_', "-").as_str() {
            "utf-8" | "utf8" => Ok(Encoding::Utf8),
            "gbk" | "cp936" => Ok(Encoding::Gbk),
            "gb18030" => Ok(Encoding::Gb18030),
            _ => Err(format!(
                "expected \"utf-8\" (the default; a byte-order mark is fine), \"gbk\" or \"gb18030\", got {text:?}"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Encoding::Utf8 => "utf-8",
            Encoding::Gbk => "gbk",
            Encoding::Gb18030 => "gb18030",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    Csv {
        path: PathBuf,
        encoding: Encoding,
    },
    Json {
        path: PathBuf,
        encoding: Encoding,
    },
    Command {
        argv: Vec<String>,
        timeout: Duration,
    },
    Sql {
        url: String,
        query: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceConfig {
    pub name: String,
    pub kind: SourceKind,
    pub items: Items,
    pub schedule: Schedule,
    pub splay: Duration,
    pub fields: Fields,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregatorConfig {
    pub endpoints: Vec<String>,
    /// `None` only with `insecure_plaintext = true`.
    pub tls: Option<TlsConfig>,
    pub timeout: Duration,
    pub batch_max_reports: usize,
    /// How often the agent says Hello (its heartbeat) even with nothing to report.
    pub heartbeat: Duration,
}

/// The default interval of the agent's heartbeat.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxConfig {
    pub path: PathBuf,
    pub max_bytes: u64,
    pub max_age: Duration,
    pub when_full: WhenFull,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    pub file: PathBuf,
    pub unit: String,
    pub plan: String,
    pub private_key: PathBuf,
    pub aggregator: AggregatorConfig,
    pub outbox: OutboxConfig,
    pub metrics_listen: Option<SocketAddr>,
    pub sources: Vec<SourceConfig>,
}

impl AgentConfig {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: None,
            key: "(file)".into(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates. Relative paths are resolved against the file's directory.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let error = |key: &str, message: String| ConfigError {
            file: file.clone(),
            line: line_of(text, key),
            key: key.to_owned(),
            message,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            // The key is the left-hand side of the offending line, where there is one.
            let start = e.span().map(|s| s.start.min(text.len()));
            let line = start.map(|start| {
                let from = text[..start].rfind('\n').map_or(0, |i| i + 1);
                let to = text[start..].find('\n').map_or(text.len(), |i| start + i);
                &text[from..to]
            });
            let key = line
                .and_then(|l| l.split_once('='))
                .map(|(k, _)| k.trim().to_owned())
                .filter(|k| !k.starts_with('['));
            ConfigError {
                file: file.clone(),
                line: start.map(|start| text[..start].matches('\n').count() + 1),
                key: key.unwrap_or_else(|| "(syntax)".into()),
                message: e.message().trim().to_owned(),
            }
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };

        check_id(&raw.unit).map_err(|m| error("unit", m))?;
        check_id(&raw.plan).map_err(|m| error("plan", m))?;
        let aggregator = validate_aggregator(&raw.aggregator, &resolve)
            .map_err(|(k, m)| error(&format!("aggregator.{k}"), m))?;
        let outbox = validate_outbox(&raw.outbox, &resolve)
            .map_err(|(k, m)| error(&format!("outbox.{k}"), m))?;
        let mut sources = Vec::new();
        for (n, source) in raw.source.iter().enumerate() {
            let validated = validate_source(source, &resolve)
                .map_err(|(k, m)| error(&format!("source[{n}] ({}).{k}", source.name), m))?;
            if sources
                .iter()
                .any(|s: &SourceConfig| s.name == validated.name)
            {
                return Err(error(
                    &format!("source[{n}].name"),
                    format!("expected a unique name; {:?} is used twice", validated.name),
                ));
            }
            sources.push(validated);
        }
        Ok(AgentConfig {
            file: path.to_owned(),
            unit: raw.unit,
            plan: raw.plan,
            private_key: resolve(&raw.private_key),
            aggregator,
            outbox,
            metrics_listen: raw.metrics.map(|m| m.listen),
            sources,
        })
    }
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| {
        format!(
            "expected a duration such as \"30s\", \"5m\", \"1h\" or \"7days\", got {text:?} ({e})"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
unit = "laoshan"
plan = "qingdao-ip-2017"
private_key = "keys/signing.key"

[aggregator]
endpoints = ["https://a.example:7700", "https://b.example:7700"]
ca = "tls/ca.crt"
cert = "tls/agent.crt"
key = "tls/agent.key"

[outbox]
path = "outbox.db"

[[source]]
name = "pct"
kind = "csv"
path = "pct.csv"
every = "1h"
splay = "5m"
"#;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(text, Path::new("/etc/duban/agent.toml"))
    }

    #[test]
    fn a_good_config_resolves_paths_and_defaults() {
        let config = parse(GOOD).unwrap();
        assert_eq!(
            config.private_key,
            PathBuf::from("/etc/duban/keys/signing.key")
        );
        assert_eq!(config.outbox.path, PathBuf::from("/etc/duban/outbox.db"));
        assert_eq!(config.outbox.when_full, WhenFull::Refuse);
        assert_eq!(
            config.sources[0].schedule,
            Schedule::Every(Duration::from_secs(3600))
        );
        assert_eq!(config.sources[0].splay, Duration::from_secs(300));
        assert_eq!(config.aggregator.endpoints.len(), 2);
    }

    #[test]
    fn errors_name_file_key_and_expectation() {
        let cases = [
            (
                GOOD.replace("every = \"1h\"", "every = \"soon\""),
                "source[0] (pct).every",
                "expected a duration",
            ),
            (
                GOOD.replace("kind = \"csv\"", "kind = \"excel\""),
                "kind",
                "unknown variant `excel`",
            ),
            (
                GOOD.replace("[outbox]", "[outbox]\ncolour = 3"),
                "colour",
                "unknown field `colour`",
            ),
            (
                GOOD.replace("cert = \"tls/agent.crt\"\n", ""),
                "aggregator.ca",
                "expected all of ca, cert and key",
            ),
            (
                GOOD.replace("https://b.example:7700", "b.example:7700"),
                "aggregator.endpoints[1]",
                "expected a URL starting with https://",
            ),
            (
                GOOD.replace("every = \"1h\"", "every = \"1h\"\ncron = \"0 2 * * *\""),
                "source[0] (pct).every",
                "exactly one of",
            ),
            (
                GOOD.replace(
                    "path = \"pct.csv\"",
                    "path = \"pct.csv\"\nquery = \"select 1\"",
                ),
                "source[0] (pct).query",
                "is not used by a csv source",
            ),
            (
                GOOD.replace("unit = \"laoshan\"", "unit = \"Lao Shan\""),
                "unit",
                "expected an id",
            ),
        ];
        for (text, key, fragment) in cases {
            let err = parse(&text).unwrap_err();
            assert_eq!(err.file, "/etc/duban/agent.toml");
            assert_eq!(err.key, key, "{err}");
            assert!(err.message.contains(fragment), "{err}");
        }
    }

    #[test]
    fn errors_name_the_line_of_the_key_or_of_its_section() {
        let line_of_text =
            |text: &str, needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
        // A bad value: the key's own line.
        let text = GOOD.replace("every = \"1h\"", "every = \"soon\"");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.line, Some(line_of_text(&text, "every = \"soon\"")));
        assert!(
            err.to_string().starts_with(&format!(
                "/etc/duban/agent.toml:{}: source[0] (pct).every:",
                line_of_text(&text, "every = \"soon\"")
            )),
            "{err}"
        );
        // An unknown key found by the parser: its line.
        let text = GOOD.replace("[outbox]", "[outbox]\ncolour = 3");
        assert_eq!(
            parse(&text).unwrap_err().line,
            Some(line_of_text(&text, "colour"))
        );
        // A key named for a missing companion: the line of the key named.
        let text = GOOD.replace("cert = \"tls/agent.crt\"\n", "");
        assert_eq!(
            parse(&text).unwrap_err().line,
            Some(line_of_text(&text, "ca = "))
        );
        // A missing key: the line of its table.
        let text = GOOD.replace("path = \"outbox.db\"\n", "");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.line, Some(line_of_text(&text, "[outbox]")), "{err}");
        // An element of an array.
        let text = GOOD.replace("https://b.example:7700", "b.example:7700");
        assert_eq!(
            parse(&text).unwrap_err().line,
            Some(line_of_text(&text, "endpoints"))
        );
    }

    #[test]
    fn encoding_is_a_file_source_option() {
        let text = GOOD.replace("every = \"1h\"", "every = \"1h\"\nencoding = \"GBK\"");
        assert_eq!(
            parse(&text).unwrap().sources[0].kind,
            SourceKind::Csv {
                path: PathBuf::from("/etc/duban/pct.csv"),
                encoding: Encoding::Gbk
            }
        );
        let err = parse(&GOOD.replace("every = \"1h\"", "every = \"1h\"\nencoding = \"big5\""))
            .unwrap_err();
        assert_eq!(err.key, "source[0] (pct).encoding");
        assert!(err.message.contains("\"gbk\""), "{err}");
    }

    #[test]
    fn a_bad_cron_expression_is_named() {
        let err = parse(&GOOD.replace("every = \"1h\"", "cron = \"every tuesday\"")).unwrap_err();
        assert_eq!(err.key, "source[0] (pct).cron");
    }

    #[test]
    fn a_sql_source_needs_its_driver_in_this_build() {
        // Whichever features this build has: a source whose driver it lacks is refused with the
        // feature named; the others are accepted.
        let sql = |url: &str| {
            GOOD.replace(
                "kind = \"csv\"\npath = \"pct.csv\"",
                &format!("kind = \"sql\"\nurl = \"{url}\"\nquery = \"SELECT 1\""),
            )
        };
        for (url, feature) in [
            ("sqlite:///var/lib/x.db", None),
            ("postgres://u@h/db", Some("source-postgres")),
            ("postgresql://u@h/db", Some("source-postgres")),
            ("mysql://u@h/db", Some("source-mysql")),
            ("mariadb://u@h/db", Some("source-mysql")),
        ] {
            let built = match feature {
                None => true,
                Some("source-postgres") => cfg!(feature = "source-postgres"),
                Some(_) => cfg!(feature = "source-mysql"),
            };
            match parse(&sql(url)) {
                Ok(config) => {
                    assert!(built, "{url} accepted without {feature:?}");
                    assert!(matches!(config.sources[0].kind, SourceKind::Sql { .. }));
                }
                Err(err) => {
                    assert!(!built, "{url} refused: {err}");
                    assert_eq!(err.key, "source[0] (pct).url");
                    assert!(err.message.contains(feature.unwrap()), "{err}");
                }
            }
        }
    }
}

//! From the file as written to a checked configuration: every value validated, each error naming
//! its key.

use super::*;

pub(super) fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected an id of a-z, 0-9 and '-' as in the plan, got {id:?}"
        ))
    }
}

pub(super) type Invalid = (String, String);

pub(super) fn invalid(key: &str, message: impl Into<String>) -> Invalid {
    (key.to_owned(), message.into())
}

pub(super) fn validate_aggregator(
    raw: &RawAggregator,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<AggregatorConfig, Invalid> {
    if raw.endpoints.is_empty() {
        return Err(invalid(
            "endpoints",
            "expected at least one endpoint such as \"https://aggregator.example:7700\"",
        ));
    }
    let scheme = if raw.insecure_plaintext {
        "http://"
    } else {
        "https://"
    };
    for (n, endpoint) in raw.endpoints.iter().enumerate() {
        if !endpoint.starts_with(scheme) {
            return Err(invalid(
                &format!("endpoints[{n}]"),
                format!(
                    "expected a URL starting with {scheme} (insecure_plaintext = {}), got {endpoint:?}",
                    raw.insecure_plaintext
                ),
            ));
        }
    }
    let tls = match (raw.insecure_plaintext, &raw.ca, &raw.cert, &raw.key) {
        (true, None, None, None) => None,
        (true, ..) => {
            return Err(invalid(
                "insecure_plaintext",
                "expected either TLS files (ca, cert, key) or insecure_plaintext = true, not both",
            ));
        }
        (false, Some(ca), Some(cert), Some(key)) => Some(TlsConfig {
            ca: resolve(ca),
            cert: resolve(cert),
            key: resolve(key),
            server_name: raw.server_name.clone(),
        }),
        (false, ..) => {
            return Err(invalid(
                "ca",
                "expected all of ca, cert and key (mTLS), or insecure_plaintext = true for tests",
            ));
        }
    };
    let timeout = raw
        .timeout
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|m| invalid("timeout", m))?
        .unwrap_or(Duration::from_secs(30));
    let batch_max_reports = raw.batch_max_reports.unwrap_or(200);
    if !(1..=1000).contains(&batch_max_reports) {
        return Err(invalid("batch_max_reports", "expected 1 to 1000"));
    }
    let heartbeat = raw
        .heartbeat
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|m| invalid("heartbeat", m))?
        .unwrap_or(DEFAULT_HEARTBEAT);
    if heartbeat < Duration::from_secs(10) {
        return Err(invalid("heartbeat", "expected at least 10s"));
    }
    Ok(AggregatorConfig {
        endpoints: raw.endpoints.clone(),
        tls,
        timeout,
        batch_max_reports,
        heartbeat,
    })
}

pub(super) fn validate_outbox(
    raw: &RawOutbox,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<OutboxConfig, Invalid> {
    let max_bytes = raw.max_bytes.unwrap_or(256 * 1024 * 1024);
    if max_bytes < 1024 * 1024 {
        return Err(invalid("max_bytes", "expected at least 1048576 (1 MiB)"));
    }
    let max_age = raw
        .max_age
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|m| invalid("max_age", m))?
        .unwrap_or(Duration::from_secs(365 * 86_400));
    Ok(OutboxConfig {
        path: resolve(&raw.path),
        max_bytes,
        max_age,
        when_full: raw.when_full.unwrap_or_default(),
    })
}

pub(super) fn validate_source(
    raw: &RawSource,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<SourceConfig, Invalid> {
    check_id(&raw.name).map_err(|m| invalid("name", m))?;
    let schedule = match (&raw.every, &raw.cron) {
        (Some(every), None) => {
            let every = parse_duration(every).map_err(|m| invalid("every", m))?;
            if every < Duration::from_secs(1) {
                return Err(invalid("every", "expected at least 1s"));
            }
            Schedule::Every(every)
        }
        (None, Some(cron)) => {
            parse_cron(cron).map_err(|m| invalid("cron", m))?;
            Schedule::Cron(cron.clone())
        }
        _ => {
            return Err(invalid(
                "every",
                "expected exactly one of every = \"1h\" or cron = \"0 2 * * *\"",
            ));
        }
    };
    let splay = raw
        .splay
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|m| invalid("splay", m))?
        .unwrap_or(Duration::ZERO);
    let unused = |present: bool, key: &str| {
        if present {
            Err(invalid(
                key,
                format!("is not used by a {:?} source", raw.kind).to_lowercase(),
            ))
        } else {
            Ok(())
        }
    };
    let kind = match raw.kind {
        SourceKindName::Csv | SourceKindName::Json => {
            unused(raw.command.is_some(), "command")?;
            unused(raw.timeout.is_some(), "timeout")?;
            unused(raw.url.is_some(), "url")?;
            unused(raw.query.is_some(), "query")?;
            let path = resolve(
                raw.path
                    .as_deref()
                    .ok_or_else(|| invalid("path", "expected the path of the file to read"))?,
            );
            let encoding = raw
                .encoding
                .as_deref()
                .map(Encoding::parse)
                .transpose()
                .map_err(|m| invalid("encoding", m))?
                .unwrap_or_default();
            if raw.kind == SourceKindName::Csv {
                SourceKind::Csv { path, encoding }
            } else {
                SourceKind::Json { path, encoding }
            }
        }
        SourceKindName::Command => {
            unused(raw.encoding.is_some(), "encoding")?;
            unused(raw.path.is_some(), "path")?;
            unused(raw.url.is_some(), "url")?;
            unused(raw.query.is_some(), "query")?;
            let argv = raw.command.clone().filter(|c| !c.is_empty()).ok_or_else(|| invalid("command", "expected the program and its arguments, e.g. [\"/usr/local/bin/export\", \"--json\"]"))?;
            let timeout = raw
                .timeout
                .as_deref()
                .map(parse_duration)
                .transpose()
                .map_err(|m| invalid("timeout", m))?
                .unwrap_or(Duration::from_secs(60));
            SourceKind::Command { argv, timeout }
        }
        SourceKindName::Sql => {
            unused(raw.encoding.is_some(), "encoding")?;
            unused(raw.path.is_some(), "path")?;
            unused(raw.command.is_some(), "command")?;
            unused(raw.timeout.is_some(), "timeout")?;
            let url = raw.url.clone().ok_or_else(|| {
                invalid(
                    "url",
                    "expected a database URL: sqlite://PATH, postgres://..., or mysql://...",
                )
            })?;
            match SQL_SCHEMES
                .iter()
                .find(|(prefix, ..)| url.starts_with(prefix))
            {
                None => {
                    return Err(invalid(
                        "url",
                        format!("expected sqlite://, postgres:// or mysql://, got {url:?}"),
                    ));
                }
                Some((prefix, Some(feature), false)) => {
                    return Err(invalid(
                        "url",
                        format!(
                            "this duban-agent was built without {prefix} sources (cargo feature `{feature}`); use a build with it (the default build has it)"
                        ),
                    ));
                }
                Some(_) => {}
            }
            let query = raw
                .query
                .clone()
                .filter(|q| !q.trim().is_empty())
                .ok_or_else(|| {
                    invalid("query", "expected a SELECT returning the mapped columns")
                })?;
            SourceKind::Sql { url, query }
        }
    };
    Ok(SourceConfig {
        name: raw.name.clone(),
        kind,
        items: raw.items,
        schedule,
        splay,
        fields: raw.fields.clone(),
    })
}

/// The URL prefixes of SQL sources: the cargo feature each needs beyond SQLite, and whether
/// this build has it.
const SQL_SCHEMES: &[(&str, Option<&str>, bool)] = &[
    ("sqlite:", None, true),
    (
        "postgres://",
        Some("source-postgres"),
        cfg!(feature = "source-postgres"),
    ),
    (
        "postgresql://",
        Some("source-postgres"),
        cfg!(feature = "source-postgres"),
    ),
    (
        "mysql://",
        Some("source-mysql"),
        cfg!(feature = "source-mysql"),
    ),
    (
        "mariadb://",
        Some("source-mysql"),
        cfg!(feature = "source-mysql"),
    ),
];

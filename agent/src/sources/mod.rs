//! Local sources of indicator values and task updates: CSV and JSON files, a command printing
//! JSON lines, and SQL queries (SQLite, PostgreSQL, MySQL/MariaDB). Each yields [`Item`]s; a
//! bad row is a collection error that names the source and the row, never a crash.

mod command;
mod files;
mod sql;

use duban_proto::pb::TaskStatus;
use duban_proto::period::Period;

use crate::config::{Fields, Items, SourceConfig, SourceKind};

/// One thing to report.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Value {
        indicator: String,
        period: Period,
        value: f64,
        note: String,
    },
    Task {
        task: String,
        milestone: String,
        period: Period,
        percent: f64,
        status: TaskStatus,
        note: String,
    },
}

impl Item {
    pub fn period(&self) -> Period {
        match self {
            Item::Value { period, .. } | Item::Task { period, .. } => *period,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{location}: {message}")]
    Row { location: String, message: String },
    #[error("command {program:?} {message}")]
    Command { program: String, message: String },
    #[error("query failed: {0}")]
    Sql(String),
}

/// A cell as a source gives it.
#[derive(Debug, Clone)]
pub enum Cell {
    Text(String),
    Number(f64),
}

impl Cell {
    fn text(&self) -> String {
        match self {
            Cell::Text(t) => t.trim().to_owned(),
            Cell::Number(n) => n.to_string(),
        }
    }

    fn number(&self) -> Result<f64, String> {
        match self {
            Cell::Number(n) => Ok(*n),
            Cell::Text(t) => t
                .trim()
                .replace(',', "")
                .parse()
                .map_err(|_| format!("{t:?} is not a number")),
        }
    }
}

/// Builds an item from one row, whatever the row's shape; `get` looks a field up by name.
pub fn item_from_row(
    items: Items,
    fields: &Fields,
    get: impl Fn(&str) -> Option<Cell>,
) -> Result<Item, String> {
    let required = |name: &str| get(name).ok_or_else(|| format!("missing field {name:?}"));
    let period_text = required(&fields.period)?.text();
    let period: Period = period_text
        .parse()
        .map_err(|e| format!("{}: {e}", fields.period))?;
    let note = get(&fields.note).map(|c| c.text()).unwrap_or_default();
    match items {
        Items::Values => {
            let indicator = required(&fields.indicator)?.text();
            let value = required(&fields.value)?
                .number()
                .map_err(|e| format!("{}: {e}", fields.value))?;
            if indicator.is_empty() {
                return Err(format!("{}: empty", fields.indicator));
            }
            if !value.is_finite() {
                return Err(format!("{}: {value} is not a finite number", fields.value));
            }
            Ok(Item::Value {
                indicator,
                period,
                value,
                note,
            })
        }
        Items::Tasks => {
            let task = required(&fields.task)?.text();
            let milestone = required(&fields.milestone)?.text();
            let percent = required(&fields.percent)?
                .number()
                .map_err(|e| format!("{}: {e}", fields.percent))?;
            let status = match get(&fields.status) {
                Some(cell) => parse_status(&cell.text()).ok_or_else(|| format!("{}: {:?} is not one of not_started, in_progress, blocked, done (未开始, 进行中, 受阻, 已完成)", fields.status, cell.text()))?,
                None => status_from_percent(percent),
            };
            check_done(status, percent).map_err(|m| format!("{}: {m}", fields.status))?;
            Ok(Item::Task {
                task,
                milestone,
                period,
                percent,
                status,
                note,
            })
        }
    }
}

/// The status a percent implies when none is given.
pub fn status_from_percent(percent: f64) -> TaskStatus {
    if percent >= 100.0 {
        TaskStatus::Done
    } else if percent > 0.0 {
        TaskStatus::InProgress
    } else {
        TaskStatus::NotStarted
    }
}

/// "Done" means 100 %: a done status with a smaller percent is a contradiction to fix at the
/// source, not something to guess about.
pub fn check_done(status: TaskStatus, percent: f64) -> Result<(), String> {
    if status == TaskStatus::Done && percent < 100.0 {
        return Err(format!(
            "status done with percent {percent}: done means 100 (give percent 100, or another status)"
        ));
    }
    Ok(())
}

pub fn parse_status(text: &str) -> Option<TaskStatus> {
    match text.trim().to_lowercase().as_str() {
        "not_started" | "not started" | "未开始" => Some(TaskStatus::NotStarted),
        "in_progress" | "in progress" | "进行中" => Some(TaskStatus::InProgress),
        "blocked" | "受阻" => Some(TaskStatus::Blocked),
        "done" | "已完成" | "完成" => Some(TaskStatus::Done),
        _ => None,
    }
}

/// Runs one source to completion.
pub async fn collect(source: &SourceConfig) -> Result<Vec<Item>, SourceError> {
    match &source.kind {
        SourceKind::Csv { path, encoding } => {
            files::read_csv(path, *encoding, source.items, &source.fields).await
        }
        SourceKind::Json { path, encoding } => {
            files::read_json(path, *encoding, source.items, &source.fields).await
        }
        SourceKind::Command { argv, timeout } => {
            command::run(argv, *timeout, source.items, &source.fields).await
        }
        SourceKind::Sql { url, query } => {
            sql::query(url, query, source.items, &source.fields).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn row(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn from(items: Items, r: &HashMap<String, String>) -> Result<Item, String> {
        item_from_row(items, &Fields::default(), |name| {
            r.get(name).map(|v| Cell::Text(v.clone()))
        })
    }

    #[test]
    fn rows_become_items_with_clear_errors() {
        let item = from(
            Items::Values,
            &row(&[
                ("indicator", "pct-applications"),
                ("period", "2018Q1"),
                ("value", "1,234"),
            ]),
        )
        .unwrap();
        assert_eq!(
            item,
            Item::Value {
                indicator: "pct-applications".into(),
                period: "2018Q1".parse().unwrap(),
                value: 1234.0,
                note: String::new()
            }
        );
        let err = from(
            Items::Values,
            &row(&[("indicator", "x"), ("period", "2018Q5"), ("value", "1")]),
        )
        .unwrap_err();
        assert!(err.starts_with("period:"), "{err}");
        let err = from(
            Items::Values,
            &row(&[("indicator", "x"), ("period", "2018"), ("value", "many")]),
        )
        .unwrap_err();
        assert_eq!(err, "value: \"many\" is not a number");
        let err = from(Items::Values, &row(&[("period", "2018"), ("value", "1")])).unwrap_err();
        assert_eq!(err, "missing field \"indicator\"");
        let task = from(
            Items::Tasks,
            &row(&[
                ("task", "2-1-1"),
                ("milestone", "m1"),
                ("period", "2018-03"),
                ("percent", "40"),
                ("status", "进行中"),
            ]),
        )
        .unwrap();
        assert!(matches!(
            task,
            Item::Task {
                status: TaskStatus::InProgress,
                ..
            }
        ));
        let err = from(
            Items::Tasks,
            &row(&[
                ("task", "2-1-1"),
                ("milestone", "m1"),
                ("period", "2018-03"),
                ("percent", "40"),
                ("status", "soon"),
            ]),
        )
        .unwrap_err();
        assert!(err.contains("not one of"), "{err}");
    }
}

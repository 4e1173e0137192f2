//! Alert state in the store, shared by both backends (sqlx `Any`).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use sqlx::{AnyConnection, AnyPool, Row};

use super::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertRow {
    pub key: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub starts_at_ms: i64,
    pub ends_at_ms: Option<i64>,
}

/// An alert as evaluation wants it: key, labels, annotations.
#[derive(Debug, Clone)]
pub struct WantedAlert {
    pub key: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// What one synchronisation changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertChanges {
    pub fired: Vec<AlertRow>,
    pub resolved: Vec<AlertRow>,
    /// Still firing, with its (possibly escalated) labels.
    pub active: Vec<AlertRow>,
}

fn row(r: &sqlx::any::AnyRow) -> Result<AlertRow, StoreError> {
    let corrupt = |e: serde_json::Error| StoreError::Corrupt {
        table: "alerts",
        detail: e.to_string(),
    };
    Ok(AlertRow {
        key: r.try_get("alert_key")?,
        labels: serde_json::from_str(&r.try_get::<String, _>("labels")?).map_err(corrupt)?,
        annotations: serde_json::from_str(&r.try_get::<String, _>("annotations")?)
            .map_err(corrupt)?,
        starts_at_ms: r.try_get("starts_at_ms")?,
        ends_at_ms: r.try_get("ends_at_ms")?,
    })
}

/// Alerts of a plan: the open ones, and those resolved at or after `resolved_since_ms`.
pub(super) async fn alerts(
    pool: &AnyPool,
    plan_id: &str,
    resolved_since_ms: i64,
) -> Result<Vec<AlertRow>, StoreError> {
    let rows = sqlx::query("SELECT alert_key, labels, annotations, starts_at_ms, ends_at_ms FROM alerts WHERE plan_id = $1 AND (ends_at_ms IS NULL OR ends_at_ms >= $2) ORDER BY alert_key")
        .bind(plan_id.to_owned())
        .bind(resolved_since_ms)
        .fetch_all(pool)
        .await?;
    rows.iter().map(row).collect()
}

/// Makes the stored open alerts equal `wanted` at `now_ms`, in one transaction.
pub(super) async fn sync(
    conn: &mut AnyConnection,
    plan_id: &str,
    wanted: &[WantedAlert],
    now_ms: i64,
) -> Result<AlertChanges, StoreError> {
    let open: Vec<AlertRow> = sqlx::query("SELECT alert_key, labels, annotations, starts_at_ms, ends_at_ms FROM alerts WHERE plan_id = $1 AND ends_at_ms IS NULL")
        .bind(plan_id.to_owned())
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(row)
        .collect::<Result<_, _>>()?;
    let open: HashMap<String, AlertRow> = open.into_iter().map(|a| (a.key.clone(), a)).collect();
    let mut changes = AlertChanges::default();
    for alert in wanted {
        let labels = serde_json::to_string(&alert.labels).expect("labels serialize");
        let annotations = serde_json::to_string(&alert.annotations).expect("annotations serialize");
        let starts_at_ms = match open.get(&alert.key) {
            Some(existing) => existing.starts_at_ms,
            None => now_ms,
        };
        sqlx::query("INSERT INTO alerts (alert_key, plan_id, labels, annotations, starts_at_ms, updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (alert_key) DO UPDATE SET labels = excluded.labels, annotations = excluded.annotations, starts_at_ms = excluded.starts_at_ms, ends_at_ms = NULL, updated_at_ms = excluded.updated_at_ms")
            .bind(alert.key.clone())
            .bind(plan_id.to_owned())
            .bind(labels)
            .bind(annotations)
            .bind(starts_at_ms)
            .bind(now_ms)
            .execute(&mut *conn)
            .await?;
        let current = AlertRow {
            key: alert.key.clone(),
            labels: alert.labels.clone(),
            annotations: alert.annotations.clone(),
            starts_at_ms,
            ends_at_ms: None,
        };
        if open.contains_key(&alert.key) {
            changes.active.push(current);
        } else {
            changes.fired.push(current.clone());
            changes.active.push(current);
        }
    }
    let wanted_keys: std::collections::HashSet<&str> =
        wanted.iter().map(|a| a.key.as_str()).collect();
    for (key, mut alert) in open {
        if wanted_keys.contains(key.as_str()) {
            continue;
        }
        sqlx::query("UPDATE alerts SET ends_at_ms = $2, updated_at_ms = $2 WHERE alert_key = $1")
            .bind(key)
            .bind(now_ms)
            .execute(&mut *conn)
            .await?;
        alert.ends_at_ms = Some(now_ms);
        changes.resolved.push(alert);
    }
    changes.resolved.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(changes)
}

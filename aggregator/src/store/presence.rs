//! Who is there: agents' heartbeats (a verified `Hello`), the centre's own uptime, and the
//! deployment's settings. Shared by both backends (sqlx `Any`).
//!
//! The centre's uptime is kept in segments per serving process (`run_id`): at every alert
//! evaluation the process beats, which extends its latest segment when the beat comes within
//! `slack_ms` (twice the evaluation interval, in the clock's time) of the segment's last beat,
//! and starts a new segment otherwise (the process was stopped or stalled). A segment covers
//! `[started_ms, alive_ms + slack_ms]`; a gap in the union of all segments between the first
//! start and now is an outage. Several replicas each keep their own, so one replica's restart
//! is not an outage while another serves.

use crate::progress::input::Outage;
use serde::Serialize;
use sqlx::{AnyPool, Row};

use super::StoreError;

/// One agent's last heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentRow {
    pub key_id: String,
    pub unit_id: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub agent_version: String,
    pub outbox_reports: i64,
    pub dead_letters: i64,
}

/// What an agent said in its Hello, recorded as its heartbeat.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub key_id: Vec<u8>,
    pub unit_id: String,
    pub at_ms: i64,
    pub agent_version: String,
    pub outbox_reports: i64,
    pub dead_letters: i64,
}

pub(super) async fn record_heartbeat(pool: &AnyPool, beat: &Heartbeat) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO agents (key_id, unit_id, first_seen_ms, last_seen_ms, agent_version, outbox_reports, dead_letters) \
         VALUES ($1, $2, $3, $3, $4, $5, $6) \
         ON CONFLICT (key_id) DO UPDATE SET unit_id = excluded.unit_id, \
         last_seen_ms = CASE WHEN excluded.last_seen_ms > agents.last_seen_ms THEN excluded.last_seen_ms ELSE agents.last_seen_ms END, \
         agent_version = excluded.agent_version, outbox_reports = excluded.outbox_reports, dead_letters = excluded.dead_letters",
    )
    .bind(beat.key_id.clone())
    .bind(beat.unit_id.clone())
    .bind(beat.at_ms)
    .bind(beat.agent_version.clone())
    .bind(beat.outbox_reports)
    .bind(beat.dead_letters)
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn agents(pool: &AnyPool) -> Result<Vec<AgentRow>, StoreError> {
    let rows = sqlx::query("SELECT key_id, unit_id, first_seen_ms, last_seen_ms, agent_version, outbox_reports, dead_letters FROM agents ORDER BY unit_id, key_id")
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|row| {
            Ok(AgentRow {
                key_id: hex::encode(row.try_get::<Vec<u8>, _>("key_id")?),
                unit_id: row.try_get("unit_id")?,
                first_seen_ms: row.try_get("first_seen_ms")?,
                last_seen_ms: row.try_get("last_seen_ms")?,
                agent_version: row.try_get("agent_version")?,
                outbox_reports: row.try_get("outbox_reports")?,
                dead_letters: row.try_get("dead_letters")?,
            })
        })
        .collect()
}

/// The highest seq stored under a key (0 when none, or when the key is unknown).
pub(super) async fn key_max_seq(pool: &AnyPool, key_id: &[u8]) -> Result<i64, StoreError> {
    let row = sqlx::query("SELECT max_seq FROM keys WHERE key_id = $1")
        .bind(key_id.to_vec())
        .fetch_optional(pool)
        .await?;
    Ok(match row {
        Some(row) => row.try_get(0)?,
        None => 0,
    })
}

/// The highest revision stored per period for a unit's reports under a plan.
pub(super) async fn unit_revisions(
    pool: &AnyPool,
    plan_id: &str,
    unit_id: &str,
) -> Result<Vec<(String, i64)>, StoreError> {
    let rows = sqlx::query("SELECT period, MAX(revision) AS revision FROM reports WHERE plan_id = $1 AND unit_id = $2 GROUP BY period ORDER BY period")
        .bind(plan_id.to_owned())
        .bind(unit_id.to_owned())
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("period")?, row.try_get("revision")?)))
        .collect()
}

/// Marks a serving process alive at `at_ms`: extends its latest segment when the last beat is
/// at most `slack_ms` ago, else starts a new one covering `slack_ms` after each beat.
pub(super) async fn beat(
    pool: &AnyPool,
    run_id: &str,
    at_ms: i64,
    slack_ms: i64,
) -> Result<(), StoreError> {
    let extended = sqlx::query(
        "UPDATE centre_uptime SET alive_ms = $2 WHERE run_id = $1 \
         AND started_ms = (SELECT MAX(started_ms) FROM centre_uptime WHERE run_id = $1) \
         AND $2 >= alive_ms AND $2 <= alive_ms + slack_ms",
    )
    .bind(run_id.to_owned())
    .bind(at_ms)
    .execute(pool)
    .await?
    .rows_affected();
    if extended == 0 {
        sqlx::query(
            "INSERT INTO centre_uptime (run_id, started_ms, alive_ms, slack_ms) VALUES ($1, $2, $2, $3) \
             ON CONFLICT (run_id, started_ms) DO NOTHING",
        )
        .bind(run_id.to_owned())
        .bind(at_ms)
        .bind(slack_ms)
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// The centre's outages between its first start and `now_ms`, oldest first.
pub(super) async fn outages(pool: &AnyPool, now_ms: i64) -> Result<Vec<Outage>, StoreError> {
    let rows = sqlx::query(
        "SELECT started_ms, alive_ms + slack_ms FROM centre_uptime ORDER BY started_ms",
    )
    .fetch_all(pool)
    .await?;
    let mut runs = Vec::with_capacity(rows.len());
    for row in &rows {
        runs.push((row.try_get::<i64, _>(0)?, row.try_get::<i64, _>(1)?));
    }
    Ok(gaps(&runs, now_ms))
}

/// The gaps in the union of the covered intervals `[start, end]` up to `now_ms`.
pub fn gaps(runs: &[(i64, i64)], now_ms: i64) -> Vec<Outage> {
    let mut runs: Vec<(i64, i64)> = runs
        .iter()
        .map(|&(start, end)| (start, end.max(start)))
        .collect();
    runs.sort_unstable();
    let mut out = Vec::new();
    let mut covered_to: Option<i64> = None;
    for (start, end) in runs {
        if let Some(to) = covered_to
            && start > to
        {
            out.push(Outage {
                from_ms: to,
                to_ms: start,
            });
        }
        covered_to = Some(covered_to.map_or(end, |to| to.max(end)));
    }
    if let Some(to) = covered_to
        && to < now_ms
    {
        out.push(Outage {
            from_ms: to,
            to_ms: now_ms,
        });
    }
    out
}

pub(super) async fn setting(pool: &AnyPool, key: &str) -> Result<Option<String>, StoreError> {
    let row = sqlx::query("SELECT value FROM settings WHERE key = $1")
        .bind(key.to_owned())
        .fetch_optional(pool)
        .await?;
    Ok(match row {
        Some(row) => Some(row.try_get(0)?),
        None => None,
    })
}

/// Sets `key` to `value` unless it is already set; returns the value that holds.
pub(super) async fn setting_or_insert(
    pool: &AnyPool,
    key: &str,
    value: &str,
) -> Result<String, StoreError> {
    sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
        .bind(key.to_owned())
        .bind(value.to_owned())
        .execute(pool)
        .await?;
    Ok(setting(pool, key)
        .await?
        .unwrap_or_else(|| value.to_owned()))
}

/// Sets `key` to `value`.
pub(super) async fn set_setting(pool: &AnyPool, key: &str, value: &str) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        .bind(key.to_owned())
        .bind(value.to_owned())
        .execute(pool)
        .await?;
    Ok(())
}

/// The plan ids the stored reports belong to.
pub(super) async fn stored_plan_ids(pool: &AnyPool) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query("SELECT DISTINCT plan_id FROM reports ORDER BY plan_id")
        .fetch_all(pool)
        .await?;
    rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_what_no_run_covers_between_the_first_start_and_now() {
        // Two runs with a gap, then a replica overlapping the second run.
        let runs = [(0, 10_000), (100_000, 150_000), (120_000, 200_000)];
        assert_eq!(
            gaps(&runs, 200_005),
            [
                Outage {
                    from_ms: 10_000,
                    to_ms: 100_000
                },
                Outage {
                    from_ms: 200_000,
                    to_ms: 200_005
                }
            ]
        );
        assert_eq!(
            gaps(&runs, 200_000),
            [Outage {
                from_ms: 10_000,
                to_ms: 100_000
            }]
        );
        assert!(gaps(&[], 1_000).is_empty(), "no run yet: no outage");
    }
}

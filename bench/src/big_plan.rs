//! A synthetic plan at city-and-beyond scale: `units` districts × `indicators` monthly
//! indicators × 12 periods, every value stored. Measures what an operator's scrape and the plan
//! office's progress page cost on it: the first `/metrics` (progress computed), `/metrics` again
//! (the computation reused), `/api/v1/progress` with and without the obligations, `/metrics`
//! after one unit's correction (the rows it changed taken in), and the number of series.
//!
//! The values go in through the store's own ingest (the write path after signature
//! verification, as the gRPC service calls it), each report carrying one unit's `indicators`
//! values for one month; no certificate or signature is involved, since none of them is measured.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use duban_aggregator::store::{AnyStore, NewKey, NewReport, SqliteStore, Store, StoreOutcome};
use duban_proto::pb;
use prost::Message as _;
use tokio::sync::Semaphore;

use crate::drain::{http_get, metric};
use crate::load::{indicator_id, now_ms, unit_id, unit_key};
use crate::{Server, Setup};

pub const PLAN_ID: &str = "big-2025";

/// What the synthetic plan measured.
pub struct PlanFigures {
    pub units: usize,
    pub indicators: usize,
    pub values: u64,
    pub fill_seconds: f64,
    /// The store's whole read of the current values, in this process (what the aggregator's
    /// first view after a start reads before it computes).
    pub read_ms: f64,
    /// Its floor, right after it: [`bare_scan`] of the same rows.
    pub bare_scan_ms: f64,
    /// `GET /metrics` when nothing was computed yet (progress included).
    pub metrics_cold_ms: f64,
    /// `GET /metrics` again, nothing written since.
    pub metrics_warm_ms: f64,
    /// The progress computations from the first scrape to the second, by how they were made.
    pub warm: String,
    /// `GET /api/v1/progress`, nothing written since.
    pub progress_api_ms: f64,
    /// `GET /api/v1/progress?obligations=false`, right after.
    pub summary_api_ms: f64,
    /// `GET /metrics` after one unit corrected one month (progress computed from the last
    /// rows updated with that report's, not read whole).
    pub metrics_after_write_ms: f64,
    /// The progress computations from the scrape before the write to the one after it, by
    /// how they were made (the alert evaluation's included).
    pub after_write: String,
    /// The views made (`duban_progress_duration_seconds`: the store read, whole or what changed,
    /// and progress computed) up to the first scrape's answer. How many, and their mean time.
    pub first_views: Views,
    /// Their progress computations, by how they were made (the first is whole: nothing was
    /// computed before).
    pub first: String,
    /// The views made after the first scrape's answer, to the last scrape's, and how they
    /// were made (updated or whole).
    pub later_views: Views,
    pub later: String,
    /// Series in one scrape, all of them; and those of the plan state alone.
    pub series: usize,
    pub plan_series: usize,
    /// The plan-state series budget of the synthetic plan.
    pub budget: usize,
}

pub async fn measure(
    aggregator: &Path,
    setup: &Setup,
    dir: &Path,
    units: usize,
    indicators: usize,
) -> anyhow::Result<PlanFigures> {
    let plan = dir.join("big-plan.toml");
    let text = duban_testkit::synthetic::plan_toml(PLAN_ID, units, indicators);
    let budget = match duban_aggregator::plan::load_str(&text, "big-plan.toml") {
        Ok(loaded) => duban_aggregator::metrics::plan_state::series_budget(&loaded.plan),
        Err(errors) => anyhow::bail!("the synthetic plan: {errors:?}"),
    };
    std::fs::write(&plan, text)?;
    let url = format!("sqlite://{}", dir.join("big.db").display());
    let started = Instant::now();
    let values = fill(&url, units, indicators).await?;
    let fill_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "  {values} values of {units} units × {indicators} indicators × 12 months stored in {fill_seconds:.0} s"
    );
    let read = read_alone(&url, units, indicators, 1).await?[0];
    let (read_ms, bare_scan_ms) = (read.ms, read.bare_ms.unwrap_or(f64::NAN));
    eprintln!(
        "  read back whole in {read_ms:.0} ms (SQLite's bare scan of the rows: {bare_scan_ms:.0} ms)"
    );
    let big = Setup {
        plan,
        certs: setup.certs.clone(),
        units,
    };
    let server = Server::start(aggregator, &big, &url)?;
    let http = server.http.clone();
    let timed = |path: &str| -> anyhow::Result<(String, f64)> {
        let started = Instant::now();
        let body = http_get(&http, path)?;
        Ok((body, started.elapsed().as_secs_f64() * 1000.0))
    };
    let (cold, metrics_cold_ms) = timed("/metrics")?;
    let (warm, metrics_warm_ms) = timed("/metrics")?;
    let (_, progress_api_ms) = timed("/api/v1/progress")?;
    let (_, summary_api_ms) = timed("/api/v1/progress?obligations=false")?;
    // One unit corrects one month, through a second handle on the database file as a second
    // process would; the next scrape takes in that report's rows.
    let mut correction = report(0, 1, indicators, now_ms());
    correction.report_id[15] ^= 0xff;
    correction.seq = 13;
    correction.revision = 1;
    correction.values.iter_mut().for_each(|v| v.value += 1.0);
    stored_values(
        SqliteStore::open(&url)
            .await?
            .ingest(vec![correction])
            .await?,
    )?;
    let (body, metrics_after_write_ms) = timed("/metrics")?;
    if !metric(&body, "duban_progress_reads_total{read=\"changes\"}").is_some_and(|n| n >= 1.0) {
        let reads: Vec<&str> = body
            .lines()
            .filter(|l| l.starts_with("duban_progress_reads_total"))
            .collect();
        anyhow::bail!("the scrape after a write did not take in the changes alone: {reads:?}");
    }
    // The computations between the scrape before the write and the one after it (the alert
    // evaluation's included): whether the scrape's progress was updated or made whole.
    let after_write = computations_between(&warm, &body);
    let warm = computations_between(&cold, &warm);
    let series: Vec<&str> = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    // The plan-state metrics of docs/OPERATIONS.md ("Plan state").
    let plan_series = series
        .iter()
        .filter(|l| {
            [
                "duban_indicator_",
                "duban_task_",
                "duban_milestone_",
                "duban_unit_",
                "duban_lead_unit_",
                "duban_reports_overdue",
                "duban_alerts_active",
                "duban_supervision_",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .count();
    drop(server);
    Ok(PlanFigures {
        units,
        indicators,
        values,
        fill_seconds,
        read_ms,
        bare_scan_ms,
        metrics_cold_ms,
        metrics_warm_ms,
        warm,
        progress_api_ms,
        summary_api_ms,
        metrics_after_write_ms,
        after_write,
        first_views: Views::between(None, &cold),
        first: computations_between("", &cold),
        later_views: Views::between(Some(&cold), &body),
        later: computations_between(&cold, &body),
        series: series.len(),
        plan_series,
        budget,
    })
}

/// Every unit's key, then every unit's twelve monthly reports, through the store's ingest.
async fn fill(url: &str, units: usize, indicators: usize) -> anyhow::Result<u64> {
    let store = Arc::new(AnyStore::open(url).await?);
    let now = now_ms();
    for unit in 0..units {
        let key = unit_key(unit);
        store
            .add_key(NewKey {
                key_id: key.key_id(),
                unit_id: unit_id(unit),
                public_key: *key.public_key().raw(),
                not_before_ms: None,
                not_after_ms: None,
                added_at_ms: now,
            })
            .await?;
    }
    // Several groups in flight, so that the writer groups them as it does under load.
    let gate = Arc::new(Semaphore::new(4));
    let mut tasks = tokio::task::JoinSet::new();
    let mut changed = 0u64;
    const UNITS_PER_CALL: usize = 20;
    for first in (0..units).step_by(UNITS_PER_CALL) {
        let permit = gate.clone().acquire_owned().await?;
        let store = store.clone();
        let reports: Vec<NewReport> = (first..(first + UNITS_PER_CALL).min(units))
            .flat_map(|unit| (1..=12u64).map(move |month| report(unit, month, indicators, now)))
            .collect();
        tasks.spawn(async move {
            let outcomes = store.ingest(reports).await;
            drop(permit);
            outcomes
        });
        while let Some(done) = tasks.try_join_next() {
            changed += stored_values(done??)?;
        }
    }
    while let Some(done) = tasks.join_next().await {
        changed += stored_values(done??)?;
    }
    let expected = (units * indicators * 12) as u64;
    if changed != expected {
        anyhow::bail!("{changed} values stored, {expected} sent");
    }
    Ok(changed)
}

/// One whole read of the synthetic plan's current values, in ms; on SQLite beside it, right
/// after it, the floor of that read: [`bare_scan`] of the same rows of the same file.
#[derive(Debug, Clone, Copy)]
pub struct Read {
    pub ms: f64,
    pub bare_ms: Option<f64>,
}

/// Times the store's whole read of the synthetic plan's current values from the database at
/// `url` (what the aggregator's first view after a start reads; SQLite or PostgreSQL), `runs`
/// times; the database is filled first (see [`fill`]) when it holds no report.
pub async fn read_alone(
    url: &str,
    units: usize,
    indicators: usize,
    runs: usize,
) -> anyhow::Result<Vec<Read>> {
    let expected = units * indicators * 12;
    let store = AnyStore::open(url).await?;
    if store.write_marker().await?.reports == 0 {
        eprintln!(
            "  storing {expected} values in {}",
            duban_aggregator::store::redact(url)
        );
        fill(url, units, indicators).await?;
    }
    let file = match &store {
        AnyStore::Sqlite(sqlite) => Some(sqlite.path().to_owned()),
        AnyStore::Postgres(_) => None,
    };
    let mut reads = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let values = store.current_values(PLAN_ID, None).await?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if values.len() != expected {
            anyhow::bail!("{} values read back, {expected} stored", values.len());
        }
        drop(values);
        let bare_ms = match &file {
            Some(file) => {
                let file = file.clone();
                let (ms, rows) = tokio::task::spawn_blocking(move || bare_scan(&file)).await??;
                if rows != expected {
                    anyhow::bail!("{rows} rows scanned bare, {expected} stored");
                }
                Some(ms)
            }
            None => None,
        };
        reads.push(Read { ms, bare_ms });
    }
    Ok(reads)
}

/// The floor of SQLite's whole read: SQLite alone stepping the plan's rows of the file at
/// `path` as the table stores them, every column of each row taken (its number, or where its
/// text is and how long), nothing kept; what the store's read adds to it is sharing the names,
/// building the rows and putting them in the snapshot's order. In ms, with the rows counted.
pub fn bare_scan(path: &Path) -> anyhow::Result<(f64, usize)> {
    use rusqlite::types::ValueRef;
    let started = Instant::now();
    // Opened as the store's whole read opens its connection.
    let connection = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let mut statement = connection.prepare(
        "SELECT plan_id, indicator_id, unit_id, period, value, note, revision, issued_at_ms, \
         seq, report_pk, updated_at_ms, first_received_at_ms, first_issued_at_ms \
         FROM current_values NOT INDEXED WHERE plan_id = ?1",
    )?;
    let columns = statement.column_count();
    let mut rows = statement.query([PLAN_ID])?;
    let (mut count, mut sum) = (0usize, 0u64);
    while let Some(row) = rows.next()? {
        count += 1;
        for column in 0..columns {
            sum = sum.wrapping_add(match row.get_ref(column)? {
                ValueRef::Null => 0,
                ValueRef::Integer(i) => i as u64,
                ValueRef::Real(r) => r.to_bits(),
                ValueRef::Text(bytes) | ValueRef::Blob(bytes) => bytes.len() as u64,
            });
        }
    }
    std::hint::black_box(sum);
    Ok((started.elapsed().as_secs_f64() * 1000.0, count))
}

/// Views made between two scrapes (from the start when `before` is `None`), from
/// `duban_progress_duration_seconds`.
#[derive(Debug, Clone, Copy)]
pub struct Views {
    pub count: f64,
    pub mean_ms: f64,
}

impl Views {
    fn between(before: Option<&str>, after: &str) -> Self {
        let read = |body: Option<&str>, what: &str| {
            body.and_then(|body| metric(body, &format!("duban_progress_duration_seconds_{what}")))
                .unwrap_or(0.0)
        };
        let count = read(Some(after), "count") - read(before, "count");
        let sum = read(Some(after), "sum") - read(before, "sum");
        Views {
            count,
            mean_ms: if count > 0.0 {
                sum * 1000.0 / count
            } else {
                0.0
            },
        }
    }
}

/// The progress computations counted in the `/metrics` body `after` since the body
/// `before` (since the start when empty), by how they were made (updated with what changed,
/// or whole).
fn computations_between(before: &str, after: &str) -> String {
    let computed = |how: &str| {
        let name = format!("duban_progress_computations_total{{how=\"{how}\"}}");
        metric(after, &name).unwrap_or(0.0) - metric(before, &name).unwrap_or(0.0)
    };
    format!(
        "{} updated, {} whole",
        computed("updated"),
        computed("whole")
    )
}

/// The values a group's reports stored; an error if any report was not stored.
fn stored_values(outcomes: Vec<StoreOutcome>) -> anyhow::Result<u64> {
    outcomes.iter().try_fold(0, |sum, outcome| match outcome {
        StoreOutcome::Stored { changed, .. } => Ok(sum + u64::from(*changed)),
        other => anyhow::bail!("a synthetic report was not stored: {other:?}"),
    })
}

fn report(unit: usize, month: u64, indicators: usize, now: i64) -> NewReport {
    let key = unit_key(unit);
    let mut report_id = [0u8; 16];
    report_id[..8].copy_from_slice(&(unit as u64).to_le_bytes());
    report_id[8..].copy_from_slice(&month.to_le_bytes());
    let period = format!("2025-{month:02}");
    let values: Vec<pb::IndicatorValue> = (0..indicators)
        .map(|i| pb::IndicatorValue {
            indicator_id: indicator_id(i),
            value: (unit % 100 + i + month as usize) as f64,
            note: String::new(),
        })
        .collect();
    let payload = pb::Report {
        report_id: report_id.to_vec(),
        unit_id: unit_id(unit),
        seq: month,
        issued_at_ms: now - 1000,
        audience: PLAN_ID.into(),
        period: period.clone(),
        values: values.clone(),
        ..Default::default()
    }
    .encode_to_vec();
    NewReport {
        plan_id: PLAN_ID.into(),
        unit_id: unit_id(unit),
        report_id,
        key_id: key.key_id(),
        seq: month,
        issued_at_ms: now - 1000,
        received_at_ms: now,
        period,
        revision: 0,
        payload_type: duban_proto::envelope::PAYLOAD_TYPE.into(),
        signature: vec![0; 64],
        payload_sha256: [0; 32],
        payload,
        values: crate::store_alone::new_values(values),
        task_updates: Vec::new(),
        refused_count: 0,
    }
}

/// The engine alone on the synthetic plan, in this process (no store, no HTTP): in ms.
pub struct Alone {
    /// Progress computed whole with every value present, each run.
    pub whole: Vec<f64>,
    /// Then one unit's correction of one month taken in and the progress updated
    /// (`Snapshot::apply_changes` and `progress::update`), each run.
    pub updated: Vec<f64>,
}

/// Times the engine alone on the synthetic plan with every value present, `runs` times.
pub fn compute_alone(units: usize, indicators: usize, runs: usize) -> anyhow::Result<Alone> {
    use duban_aggregator::progress::{self, Computation, ValueRow};
    let text = duban_testkit::synthetic::plan_toml(PLAN_ID, units, indicators);
    let started = Instant::now();
    let plan = match duban_aggregator::plan::load_str(&text, "big-plan.toml") {
        Ok(loaded) => loaded.plan,
        Err(errors) => anyhow::bail!("the synthetic plan: {errors:?}"),
    };
    eprintln!(
        "  the plan checked and loaded in {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    let now = now_ms();
    // Equal names shared, as the store's whole read shares them.
    let mut names = progress::Names::default();
    let mut row = |unit: usize, month: u64, i: usize, value: f64, at: i64| ValueRow {
        plan_id: names.get(PLAN_ID),
        indicator_id: names.get(&indicator_id(i)),
        unit_id: names.get(&unit_id(unit)),
        period: names.get(&format!("2025-{month:02}")),
        value,
        note: String::new(),
        revision: 0,
        issued_at_ms: at - 1000,
        seq: month as i64,
        report_pk: (unit * 12 + month as usize) as i64,
        updated_at_ms: at,
        first_received_at_ms: now,
        first_issued_at_ms: now - 1000,
    };
    let mut values = Vec::with_capacity(units * indicators * 12);
    for unit in 0..units {
        for month in 1..=12u64 {
            for i in 0..indicators {
                values.push(row(
                    unit,
                    month,
                    i,
                    (unit % 100 + i + month as usize) as f64,
                    now,
                ));
            }
        }
    }
    // In the store's order, and known to be, as a snapshot read whole from it is.
    values.sort_by(|a, b| {
        (&a.indicator_id, &a.period, &a.unit_id).cmp(&(&b.indicator_id, &b.period, &b.unit_id))
    });
    let mut snapshot = progress::Snapshot::in_key_order(values, Vec::new(), Vec::new(), Vec::new());
    let mut alone = Alone {
        whole: Vec::new(),
        updated: Vec::new(),
    };
    for run in 0..runs {
        let started = Instant::now();
        let computed = progress::compute(&plan, &snapshot, now);
        alone.whole.push(started.elapsed().as_secs_f64() * 1000.0);
        let correction = (0..indicators)
            .map(|i| row(run % units, 1, i, 1000.0 + run as f64, now + 1 + run as i64))
            .collect();
        let started = Instant::now();
        let changes = snapshot.apply_changes(correction, Vec::new());
        let (updated, how) = progress::update(&plan, &snapshot, computed, &changes, now + 1);
        alone.updated.push(started.elapsed().as_secs_f64() * 1000.0);
        if how != Computation::Updated {
            anyhow::bail!("one unit's correction: progress was computed whole, not updated");
        }
        drop(updated);
    }
    Ok(alone)
}

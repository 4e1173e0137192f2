//! duban's store alone (SQLite or PostgreSQL), in the harness's own process: the calls the
//! ingest path hands to the store (`Store::ingest`, its reports already verified and
//! validated) kept in flight as the load generator keeps its gRPC calls, with no gRPC, TLS or
//! signature check around them. What is left is the write path itself: the group commit, each
//! group's reads, its decisions and its writes (on SQLite on the writer's one thread). Beside
//! the figures through the aggregator it says how much of their time is the store's.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use duban_aggregator::store::{AnyStore, NewReport, NewValue, Store, StoreOutcome};
use duban_proto::{KeyId, pb};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::load::{self, LoadResult};

/// What a run of the store alone measured.
pub struct StoreAlone {
    pub load: LoadResult,
    /// CPU (user + system) of the whole process over the run, per report stored.
    pub cpu_us_per_report: f64,
    /// On SQLite, the writer thread's CPU over the run: per report stored, and over the run's
    /// time (1.0 is a core kept busy throughout).
    pub writer: Option<Writer>,
    /// On PostgreSQL at a loopback address or a local socket, the CPU over the run of every
    /// `postgres` process of this machine (with the processes they ended and reaped), per
    /// report stored: the server's side of the write path, and whatever else its cluster did
    /// meanwhile. None elsewhere, or when no such process is seen.
    pub postgres_cpu_us_per_report: Option<f64>,
}

pub struct Writer {
    pub cpu_us_per_report: f64,
    pub cores: f64,
}

/// How the store is driven: as the load generator drives the aggregator.
pub struct Drive {
    /// Units, each with its key registered; the calls are shared among them in turn.
    pub units: usize,
    pub concurrency: usize,
    pub values: usize,
    pub indicators: usize,
    /// Reports per call (at least 1).
    pub batch: usize,
    /// Reports made ahead, in all.
    pub reports: usize,
    pub seconds: f64,
}

/// The SQLite writer thread's name as the kernel keeps it (`comm`: the first 15 bytes).
const WRITER_COMM: &str = "duban-sqlite-wr";

/// Opens a store on `url` (a new SQLite file, or a fresh PostgreSQL schema), registers the
/// units' keys, and keeps `concurrency` calls of `batch` reports in flight for `seconds`.
pub async fn measure(url: &str, plan_id: &str, drive: &Drive) -> anyhow::Result<StoreAlone> {
    let store = Arc::new(AnyStore::open(url).await?);
    let sqlite = store.backend() == "sqlite";
    let local_postgres = !sqlite && on_this_machine(url);
    for unit in 0..drive.units {
        store.add_key(crate::bench_key(unit)).await?;
    }
    let per_unit = drive.reports.div_ceil(drive.units);
    let now = load::now_ms();
    let queues: Arc<Vec<Mutex<std::vec::IntoIter<NewReport>>>> = Arc::new(
        (0..drive.units)
            .map(|unit| {
                let key_id = load::unit_key(unit).key_id();
                let reports: Vec<NewReport> = (0..per_unit)
                    .map(|i| new_report(plan_id, unit, key_id, i, now, drive))
                    .collect();
                Mutex::new(reports.into_iter())
            })
            .collect(),
    );
    let deadline = Duration::from_secs_f64(drive.seconds);
    let take = drive.batch.max(1);
    // Read before the clock starts; this machine's processes only for a PostgreSQL here.
    let cpu_before = load::cpu_seconds("self")?;
    let writer_before = writer_cpu_seconds()?;
    let postgres_before = local_postgres.then(postgres_cpu_seconds).flatten();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..drive.concurrency {
        let (store, queues) = (store.clone(), queues.clone());
        tasks.push(tokio::spawn(async move {
            let queue = &queues[worker % queues.len()];
            let mut latencies = Vec::new();
            let (mut stored, mut sent) = (0u64, 0u64);
            while started.elapsed() < deadline {
                let mut call: Vec<NewReport> = queue
                    .lock()
                    .expect("not poisoned")
                    .by_ref()
                    .take(take)
                    .collect();
                if call.is_empty() {
                    break;
                }
                // Received now, as the ingest path stamps a call's reports.
                let received_at_ms = load::now_ms();
                for report in &mut call {
                    report.received_at_ms = received_at_ms;
                }
                sent += call.len() as u64;
                let at = Instant::now();
                let outcomes = store.ingest(call).await?;
                latencies.push(at.elapsed().as_micros() as u32);
                for outcome in outcomes {
                    match outcome {
                        StoreOutcome::Stored { .. } => stored += 1,
                        other => anyhow::bail!("a bench report was not stored: {other:?}"),
                    }
                }
            }
            Ok((latencies, stored, sent))
        }));
    }
    let mut latencies = Vec::new();
    let (mut stored, mut sent) = (0, 0);
    for task in tasks {
        let (l, s, n) = task.await??;
        latencies.extend(l);
        stored += s;
        sent += n;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = load::cpu_seconds("self")? - cpu_before;
    let writer = writer_cpu_seconds()? - writer_before;
    let postgres = postgres_before.and_then(|before| Some((postgres_cpu_seconds()?, before)));
    let per_report = |cpu: f64| 1e6 * cpu / stored.max(1) as f64;
    Ok(StoreAlone {
        load: LoadResult::from_latencies(latencies, sent, stored, 0, seconds),
        cpu_us_per_report: per_report(cpu),
        writer: sqlite.then(|| Writer {
            cpu_us_per_report: per_report(writer),
            cores: writer / seconds,
        }),
        postgres_cpu_us_per_report: postgres.map(|(after, before)| per_report(after - before)),
    })
}

/// The report of `unit` the load generator would sign as its `i`-th, as the ingest path
/// hands it to the store: the payload as signed (with its key id) and its digest; the
/// signature a stand-in, which the store keeps and does not check.
fn new_report(
    plan_id: &str,
    unit: usize,
    key_id: KeyId,
    i: usize,
    now: i64,
    drive: &Drive,
) -> NewReport {
    let seq = 1 + i as u64;
    let issued_at_ms = now - 60_000 + i as i64;
    let mut report = load::report(
        plan_id,
        unit,
        seq,
        issued_at_ms,
        drive.values,
        drive.indicators,
    );
    report.key_id = key_id.as_bytes().to_vec();
    let payload = report.encode_to_vec();
    NewReport {
        plan_id: plan_id.to_owned(),
        unit_id: report.unit_id.clone(),
        report_id: report.report_id.as_slice().try_into().expect("16 bytes"),
        key_id,
        seq,
        issued_at_ms,
        received_at_ms: now,
        period: report.period.clone(),
        revision: 0,
        payload_sha256: Sha256::digest(&payload).into(),
        payload,
        payload_type: duban_proto::envelope::PAYLOAD_TYPE.into(),
        signature: vec![0; 64],
        values: new_values(report.values),
        task_updates: Vec::new(),
        refused_count: 0,
    }
}

/// A report's values as the store takes them.
pub fn new_values(values: Vec<pb::IndicatorValue>) -> Vec<NewValue> {
    values
        .into_iter()
        .map(|v| NewValue {
            indicator_id: v.indicator_id,
            value: v.value,
            note: v.note,
        })
        .collect()
}

/// CPU seconds (user + system) of this process's SQLite writer threads so far.
fn writer_cpu_seconds() -> anyhow::Result<f64> {
    let mut total = 0.0;
    for task in std::fs::read_dir("/proc/self/task")? {
        let task = task?.path();
        // A thread that ended between the listing and the read is not a writer of this run.
        let Ok(comm) = std::fs::read_to_string(task.join("comm")) else {
            continue;
        };
        let id = task
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if comm.trim_end() == WRITER_COMM
            && let Ok(cpu) = load::cpu_seconds(&format!("self/task/{id}"))
        {
            total += cpu;
        }
    }
    Ok(total)
}

/// CPU seconds (user + system) of the `postgres` processes running on this machine so far,
/// with those of the processes they ended and reaped (a backend or worker that exits is counted
/// in its parent's), or None when there are none.
fn postgres_cpu_seconds() -> Option<f64> {
    let mut total = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let is_postgres = std::fs::read_to_string(entry.path().join("comm"))
            .is_ok_and(|comm| comm.trim_end() == "postgres");
        if is_postgres && let Ok(cpu) = load::cpu_seconds_with_children(pid) {
            *total.get_or_insert(0.0) += cpu;
        }
    }
    total
}

/// Whether a PostgreSQL URL names this machine: a loopback host, or none (a local socket).
fn on_this_machine(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    matches!(host, "" | "localhost" | "::1") || host.starts_with("127.")
}

#[cfg(test)]
mod tests {
    use super::on_this_machine;

    #[test]
    fn loopback_hosts_and_sockets_are_this_machine() {
        for url in [
            "postgres://postgres@127.0.0.1:5432/test",
            "postgres://127.0.0.1/test",
            "postgresql://u:p@localhost/db?sslmode=disable",
            "postgres://[::1]:5432/test",
            "postgres:///test",
        ] {
            assert!(on_this_machine(url), "{url}");
        }
        for url in [
            "postgres://postgres@db.example:5432/test",
            "postgres://10.0.0.7/test",
            "postgres://u@[2001:db8::1]:5432/test",
        ] {
            assert!(!on_this_machine(url), "{url}");
        }
    }
}

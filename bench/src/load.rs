//! The load generator, run as its own process (`duban-bench load`) so that its CPU is not the
//! server's: one mTLS channel per unit, `concurrency` calls in flight, reports signed before
//! the clock starts. Prints one JSON line of results.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use duban_proto::pb::report_service_client::ReportServiceClient;
use duban_proto::{SigningKey, envelope, pb};
use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The signing key of bench unit `index` (the same in the orchestrator that registers it).
pub fn unit_key(index: usize) -> SigningKey {
    let mut seed = [7u8; 32];
    seed[..8].copy_from_slice(&(index as u64).to_le_bytes());
    SigningKey::from_seed(&seed)
}

pub use duban_testkit::synthetic::{indicator_id, unit_id};

/// Signed reports for one unit: seqs from `first_seq`, `values` values each, periods cycling
/// through the twelve months of the plan year, so every report replaces a current value.
pub fn sign_reports(
    plan_id: &str,
    unit: usize,
    first_seq: u64,
    count: usize,
    values: usize,
    indicators: usize,
) -> Vec<pb::SignedReport> {
    let key = unit_key(unit);
    let now = now_ms();
    (0..count)
        .map(|i| {
            let seq = first_seq + i as u64;
            let report = report(
                plan_id,
                unit,
                seq,
                now - 60_000 + i as i64,
                values,
                indicators,
            );
            envelope::bind_and_sign(&key, report)
        })
        .collect()
}

/// The report of `unit` with `seq`, as [`sign_reports`] signs it: its id the unit and the seq,
/// its period a month of the plan year by the seq, `values` indicators from the seq on.
pub fn report(
    plan_id: &str,
    unit: usize,
    seq: u64,
    issued_at_ms: i64,
    values: usize,
    indicators: usize,
) -> pb::Report {
    let mut report_id = [0u8; 16];
    report_id[..8].copy_from_slice(&(unit as u64).to_le_bytes());
    report_id[8..].copy_from_slice(&seq.to_le_bytes());
    pb::Report {
        report_id: report_id.to_vec(),
        unit_id: unit_id(unit),
        seq,
        issued_at_ms,
        audience: plan_id.to_owned(),
        period: format!("2025-{:02}", 1 + seq % 12),
        values: (0..values)
            .map(|v| pb::IndicatorValue {
                indicator_id: indicator_id((seq as usize + v) % indicators),
                value: (seq % 1000) as f64 + v as f64,
                note: String::new(),
            })
            .collect(),
        ..Default::default()
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// gRPC endpoint, e.g. https://127.0.0.1:7443
    #[arg(long)]
    pub endpoint: String,
    /// Directory written by `duban-aggregator dev-ca` (ca.crt, units/<unit>.crt|.key).
    #[arg(long)]
    pub certs: PathBuf,
    #[arg(long)]
    pub plan_id: String,
    /// First bench unit index; one channel per unit.
    #[arg(long, default_value_t = 0)]
    pub first_unit: usize,
    #[arg(long, default_value_t = 8)]
    pub channels: usize,
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 5)]
    pub values: usize,
    #[arg(long, default_value_t = 50)]
    pub indicators: usize,
    /// Reports per call: 0 for unary `Submit`, else `SubmitBatch` of this many.
    #[arg(long, default_value_t = 0)]
    pub batch: usize,
    /// Reports signed in advance, in all.
    #[arg(long, default_value_t = 200_000)]
    pub reports: usize,
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
}

/// What one load run measured.
#[derive(Debug, Serialize, Deserialize)]
pub struct LoadResult {
    pub reports: u64,
    pub stored: u64,
    pub failed_calls: u64,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// The generator's own CPU (user + system) over the timed calls, when it measured it.
    #[serde(default)]
    pub generator_cpu_seconds: f64,
    /// The status of the first call that failed, if any: what to look at first.
    #[serde(default)]
    pub first_failure: Option<String>,
}

impl LoadResult {
    /// The result of a run whose calls took `latencies` (µs).
    pub fn from_latencies(
        mut latencies: Vec<u32>,
        reports: u64,
        stored: u64,
        failed_calls: u64,
        seconds: f64,
    ) -> Self {
        latencies.sort_unstable();
        let quantile = |q: f64| {
            latencies
                .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
                .map_or(0.0, |us| f64::from(*us) / 1000.0)
        };
        LoadResult {
            reports,
            stored,
            failed_calls,
            seconds,
            p50_ms: quantile(0.50),
            p99_ms: quantile(0.99),
            p999_ms: quantile(0.999),
            generator_cpu_seconds: 0.0,
            first_failure: None,
        }
    }

    pub fn per_second(&self) -> f64 {
        self.stored as f64 / self.seconds
    }
}

/// One mTLS connection to `endpoint` with the certificate of `unit` from a `dev-ca` directory.
pub async fn channel(endpoint: &str, certs: &Path, unit: &str) -> anyhow::Result<Channel> {
    let read = |p: PathBuf| std::fs::read(&p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()));
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(certs.join("ca.crt"))?))
        .identity(Identity::from_pem(
            read(certs.join("units").join(format!("{unit}.crt")))?,
            read(certs.join("units").join(format!("{unit}.key")))?,
        ))
        .domain_name("localhost");
    Ok(Endpoint::from_shared(endpoint.to_owned())?
        .tls_config(tls)?
        .connect()
        .await?)
}

pub async fn run(args: LoadArgs) -> anyhow::Result<LoadResult> {
    let per_unit = args.reports.div_ceil(args.channels);
    let units: Vec<usize> = (args.first_unit..args.first_unit + args.channels).collect();
    // Signed before the clock starts, on every core.
    let queues: Vec<Vec<pb::SignedReport>> = std::thread::scope(|s| {
        let handles: Vec<_> = units
            .iter()
            .map(|&u| {
                let plan_id = args.plan_id.clone();
                let (values, indicators) = (args.values, args.indicators);
                s.spawn(move || sign_reports(&plan_id, u, 1, per_unit, values, indicators))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let queues: Arc<Vec<(Vec<pb::SignedReport>, AtomicUsize)>> = Arc::new(
        queues
            .into_iter()
            .map(|q| (q, AtomicUsize::new(0)))
            .collect(),
    );
    let mut channels = Vec::new();
    for &u in &units {
        channels.push(channel(&args.endpoint, &args.certs, &unit_id(u)).await?);
    }
    let deadline = Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let cpu_before = cpu_seconds("self")?;
    let mut tasks = Vec::new();
    for worker in 0..args.concurrency {
        let slot = worker % channels.len();
        let mut client = ReportServiceClient::new(channels[slot].clone());
        let queues = queues.clone();
        let batch = args.batch;
        tasks.push(tokio::spawn(async move {
            let (queue, next) = &queues[slot];
            let mut latencies = Vec::new();
            let (mut stored, mut sent, mut failed) = (0u64, 0u64, 0u64);
            let mut first_failure = None;
            while started.elapsed() < deadline {
                let take = batch.max(1);
                let from = next.fetch_add(take, Ordering::Relaxed);
                if from >= queue.len() {
                    break;
                }
                let to = (from + take).min(queue.len());
                let call = Instant::now();
                let results: Result<Vec<pb::SubmitResult>, tonic::Status> = if batch == 0 {
                    client
                        .submit(queue[from].clone())
                        .await
                        .map(|r| vec![r.into_inner()])
                } else {
                    client
                        .submit_batch(pb::SubmitBatchRequest {
                            reports: queue[from..to].to_vec(),
                        })
                        .await
                        .map(|r| r.into_inner().results)
                };
                latencies.push(call.elapsed().as_micros() as u32);
                sent += (to - from) as u64;
                match results {
                    Ok(results) => {
                        stored += results
                            .iter()
                            .filter(|r| r.outcome == pb::Outcome::Accepted as i32)
                            .count() as u64;
                    }
                    Err(status) => {
                        failed += 1;
                        first_failure.get_or_insert_with(|| {
                            format!("{:?}: {}", status.code(), status.message())
                        });
                    }
                }
            }
            (latencies, stored, sent, failed, first_failure)
        }));
    }
    let mut latencies = Vec::new();
    let (mut stored, mut sent, mut failed) = (0, 0, 0);
    let mut first_failure = None;
    for task in tasks {
        let (l, s, n, f, first) = task.await?;
        latencies.extend(l);
        stored += s;
        sent += n;
        failed += f;
        first_failure = first_failure.or(first);
    }
    let mut result = LoadResult::from_latencies(
        latencies,
        sent,
        stored,
        failed,
        started.elapsed().as_secs_f64(),
    );
    result.generator_cpu_seconds = cpu_seconds("self")? - cpu_before;
    result.first_failure = first_failure;
    Ok(result)
}

/// CPU seconds (user + system) a process has used so far: `pid`, or "self".
pub fn cpu_seconds(pid: &str) -> anyhow::Result<f64> {
    stat_seconds(pid, 2)
}

/// As [`cpu_seconds`], with the CPU of the children it has waited for.
pub fn cpu_seconds_with_children(pid: &str) -> anyhow::Result<f64> {
    stat_seconds(pid, 4)
}

/// The sum of the first `fields` clock-tick fields of `/proc/PID/stat` from utime on (utime,
/// stime, cutime, cstime), in seconds.
fn stat_seconds(pid: &str, fields: usize) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit(')').next().unwrap_or_default();
    let mut ticks = 0.0;
    // utime is the 14th field, the 12th after the name; ticks are 100 a second on Linux.
    for field in after_name.split_whitespace().skip(11).take(fields) {
        ticks += field.parse::<f64>()?;
    }
    Ok(ticks / 100.0)
}

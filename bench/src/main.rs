//! duban-bench: the real aggregator (mTLS, durable SQLite, or PostgreSQL) under load from a
//! separate process, with its baselines measured in the same run. docs/PERFORMANCE.md has the
//! commands and the latest table.

mod bare;
mod baselines;
mod big_plan;
mod connections;
mod drain;
mod load;
mod store_alone;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use duban_aggregator::store::{NewKey, PgStore, SqliteStore, Store};

use load::{LoadArgs, LoadResult};

#[derive(Parser)]
#[command(
    name = "duban-bench",
    version,
    about = "Benchmarks the real duban-aggregator under load from a separate process, beside \
             baselines measured in the same run (Ed25519 verification, raw inserts, Prometheus \
             Pushgateway), and prints each figure with its ratio."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every figure and print the table (see docs/PERFORMANCE.md).
    Run(RunArgs),
    /// The load generator alone (started by `run` as its own process).
    #[command(hide = true)]
    Load(LoadArgs),
    /// The bare tonic server of the transport baseline (started by `run`).
    #[command(hide = true)]
    Bare(bare::BareArgs),
    /// Many agents' connections held open at once (started by `run` as its own process).
    #[command(hide = true)]
    Connections(connections::ConnectArgs),
    /// The progress engine alone on the synthetic plan, every value present, in this process
    /// (no HTTP): prints each run's time; with --store or --database-url, first the store's
    /// whole read (on SQLite beside SQLite's bare scan of the same rows). For profiling.
    Progress(ProgressArgs),
}

#[derive(Debug, clap::Args)]
struct ProgressArgs {
    /// Units of the synthetic plan (× 50 indicators × 12 months).
    #[arg(long, value_name = "N", default_value_t = 3000)]
    plan_units: usize,
    /// Computations, one after another.
    #[arg(long, value_name = "N", default_value_t = 3)]
    runs: usize,
    /// Also time the store's whole read of the plan's values (what the aggregator's first view
    /// after a start reads) from this SQLite file, `--runs` times, before the computations (so
    /// that the first read runs in a fresh process, as at a start), each read followed by
    /// SQLite's bare scan of the same rows (its floor: every column stepped, nothing kept); the
    /// file is filled first, through the store's ingest, when it holds no report, and kept for
    /// the next run.
    #[arg(long, value_name = "FILE")]
    store: Option<PathBuf>,
    /// As `--store`, on this database instead of a file: a `sqlite://` or `postgres://` URL,
    /// as `duban-aggregator serve --database-url` takes it (on PostgreSQL, a schema of its own
    /// by `?options=-c%20search_path%3DNAME`).
    #[arg(long, value_name = "URL", conflicts_with = "store")]
    database_url: Option<String>,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// A few seconds per figure and small counts, so that CI runs the harness; the figures are
    /// then not comparable with the full run's.
    #[arg(long)]
    quick: bool,
    /// Seconds of load per figure [default: 10, or 2 with --quick].
    #[arg(long)]
    seconds: Option<f64>,
    /// Calls in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// gRPC channels (one mTLS connection, one unit, each).
    #[arg(long, default_value_t = 8)]
    channels: usize,
    /// Values per report.
    #[arg(long, default_value_t = 5)]
    values: usize,
    /// Reports per `SubmitBatch` call.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Also run the unary figure on this PostgreSQL (a schema `duban_bench` is made afresh).
    #[arg(long, env = "DUBAN_BENCH_POSTGRES_URL", value_name = "URL")]
    postgres: Option<String>,
    /// The duban-aggregator binary [default: beside this program].
    #[arg(long, value_name = "FILE")]
    aggregator: Option<PathBuf>,
    /// The Pushgateway binary; the baseline is left out (and says so) when it is missing.
    #[arg(long, default_value = "prometheus-pushgateway", value_name = "FILE")]
    pushgateway: String,
    /// Simulated agents holding their own mTLS connection at once [default: 5000, or 200 with
    /// --quick].
    #[arg(long, value_name = "N")]
    agents: Option<usize>,
    /// Reports in the agent's backlog to drain [default: 100000, or 2000 with --quick].
    #[arg(long, value_name = "N")]
    backlog: Option<usize>,
    /// The duban-agent binary [default: beside this program].
    #[arg(long, value_name = "FILE")]
    agent: Option<PathBuf>,
    /// Units of the synthetic plan (× 50 indicators × 12 months) [default: 10000, or 100 with
    /// --quick].
    #[arg(long, value_name = "N")]
    plan_units: Option<usize>,
}

/// Indicators in the bench plan; each report carries `values` of them.
const INDICATORS: usize = 50;
const PLAN_ID: &str = "bench-2025";
/// `serve`'s per-unit rate limit off for the ingest figures: by default a unit may send 1,000
/// reports a second after a burst of 20,000, and the harness's few units carry the load of a
/// whole city (above 3,000 reports a second each in batches), which the limit exists to stop.
const NO_UNIT_LIMIT: &[&str] = &["--rate-limit", "0"];

/// Steps of `run`, for its progress lines.
const STEPS: usize = 11;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Cmd::Load(args) => {
            let result = runtime.block_on(load::run(args))?;
            println!("{}", serde_json::to_string(&result)?);
            Ok(())
        }
        Cmd::Run(args) => runtime.block_on(run(args)),
        Cmd::Bare(args) => runtime.block_on(bare::serve(args)),
        Cmd::Connections(args) => runtime.block_on(connections::run(args)),
        Cmd::Progress(args) => {
            let url = match (&args.store, &args.database_url) {
                (Some(file), _) => Some(format!("sqlite://{}", file.display())),
                (None, url) => url.clone(),
            };
            if let Some(url) = url {
                let reads = runtime.block_on(big_plan::read_alone(
                    &url,
                    args.plan_units,
                    INDICATORS,
                    args.runs,
                ))?;
                for (run, read) in reads.iter().enumerate() {
                    let values = args.plan_units * INDICATORS * 12;
                    let ms = read.ms;
                    match read.bare_ms {
                        Some(bare) => println!(
                            "run {}: {values} stored values read back whole in {ms:.0} ms; SQLite's bare scan of the same rows {bare:.0} ms ({:.2} ×)",
                            run + 1,
                            ms / bare
                        ),
                        None => println!(
                            "run {}: {values} stored values read back whole in {ms:.0} ms",
                            run + 1
                        ),
                    }
                }
            }
            let alone = big_plan::compute_alone(args.plan_units, INDICATORS, args.runs)?;
            for (run, (whole, updated)) in alone.whole.iter().zip(&alone.updated).enumerate() {
                println!(
                    "run {}: progress of {} units × {INDICATORS} indicators × 12 months computed in {whole:.0} ms; after one unit's correction of a month, updated in {updated:.1} ms",
                    run + 1,
                    args.plan_units
                );
            }
            Ok(())
        }
    }
}

/// One line of the table: what, its figure, and the ratio to a baseline of the same run.
struct Row {
    what: String,
    rate: f64,
    detail: String,
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let seconds = args.seconds.unwrap_or(if args.quick { 2.0 } else { 10.0 });
    // Reports signed ahead by the load generator: more than the targets need in `seconds`.
    let reports = if args.quick {
        20_000
    } else {
        60_000 * seconds as usize
    };
    let aggregator = beside(&args.aggregator, "duban-aggregator")?;
    let agent = beside(&args.agent, "duban-agent")?;
    let agents = args.agents.unwrap_or(if args.quick { 200 } else { 5_000 });
    let backlog = args
        .backlog
        .unwrap_or(if args.quick { 2_000 } else { 100_000 });
    let plan_units = args
        .plan_units
        .unwrap_or(if args.quick { 100 } else { 10_000 });
    println!(
        "duban-bench: {} s per figure, {} in flight over {} channels, {} values per report, batch {}; {} cores",
        seconds,
        args.concurrency,
        args.channels,
        args.values,
        args.batch,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut rows = Vec::new();

    eprintln!("[1/{STEPS}] Ed25519 verification baselines");
    let (strict, batch) = baselines::verify(args.values, if args.quick { 2_000 } else { 20_000 });
    rows.push(Row {
        what: "verify_strict + decode, one core".into(),
        rate: strict,
        detail: String::new(),
    });
    rows.push(Row {
        what: "verify_batch (64) + decode, one core".into(),
        rate: batch,
        detail: String::new(),
    });

    eprintln!("[2/{STEPS}] raw multi-row inserts into SQLite");
    let dir = tempfile::tempdir()?;
    let raw = baselines::raw_sqlite(
        &dir.path().join("raw.db"),
        args.values,
        if args.quick { 5_000 } else { 100_000 },
    )
    .await?;
    rows.push(Row {
        what: "raw SQLite multi-row inserts (synchronous=FULL), reports".into(),
        rate: raw,
        detail: String::new(),
    });

    // The ingest figures run on a plan of their own units only: a larger plan's background
    // work (progress, alert evaluation) would share the CPU they measure.
    let setup = Setup::new(&dir.path().join("ingest"), &aggregator, 2 * args.channels)?;
    let load = |first_unit: usize, batch: usize, endpoint: String| LoadArgs {
        endpoint,
        certs: setup.certs.clone(),
        plan_id: PLAN_ID.into(),
        first_unit,
        channels: args.channels,
        concurrency: args.concurrency,
        values: args.values,
        indicators: INDICATORS,
        batch,
        reports,
        seconds,
    };

    eprintln!(
        "[3/{STEPS}] duban on SQLite: unary Submit, then SubmitBatch of {}",
        args.batch
    );
    let url = format!("sqlite://{}", dir.path().join("duban.db").display());
    setup.register_keys(&url, 2 * args.channels).await?;
    let server = Server::start_with(&aggregator, &setup, &url, NO_UNIT_LIMIT)?;
    let unary = drive(&load(0, 0, server.endpoint()), &server)?;
    rows.push(unary.row("duban, SQLite, unary Submit"));
    let batched = drive(&load(args.channels, args.batch, server.endpoint()), &server)?;
    rows.push(batched.row(&format!("duban, SQLite, SubmitBatch of {}", args.batch)));
    drop(server);

    eprintln!(
        "[4/{STEPS}] duban's SQLite store alone, in this process: calls of 1 report, then of {}",
        args.batch
    );
    let alone_row = |url: String, backend: &'static str, batch: usize| {
        let drive = store_alone::Drive {
            units: args.channels,
            concurrency: args.concurrency,
            values: args.values,
            indicators: INDICATORS,
            batch,
            reports,
            seconds,
        };
        async move {
            let figure = store_alone::measure(&url, PLAN_ID, &drive).await?;
            let writer = figure.writer.map_or(String::new(), |w| {
                format!(
                    ", of it the writer thread {:.0} µs ({:.2} of a core)",
                    w.cpu_us_per_report, w.cores
                )
            });
            let postgres = figure
                .postgres_cpu_us_per_report
                .map_or(String::new(), |us| {
                    format!("; this machine's postgres processes {us:.0} µs/report")
                });
            anyhow::Ok(Row {
                what: format!(
                    "duban's store alone, {backend}, calls of {batch} (in process: no gRPC, TLS or verification)"
                ),
                rate: figure.load.per_second(),
                detail: format!(
                    "p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms; CPU {:.0} µs/report{writer}{postgres}",
                    figure.load.p50_ms,
                    figure.load.p99_ms,
                    figure.load.p999_ms,
                    figure.cpu_us_per_report,
                ),
            })
        }
    };
    let mut store_only = Vec::new();
    for (name, batch) in [("one", 1), ("batch", args.batch)] {
        let url = format!(
            "sqlite://{}",
            dir.path().join(format!("alone-{name}.db")).display()
        );
        let row = alone_row(url, "SQLite", batch).await?;
        store_only.push(row.rate);
        rows.push(row);
    }

    eprintln!("[5/{STEPS}] a bare tonic server with the same mTLS: unary, then batch");
    let bare = Server::start_bare(&setup)?;
    let bare_unary = drive(&load(0, 0, bare.endpoint()), &bare)?;
    rows.push(bare_unary.row("bare tonic server (transport ceiling), unary"));
    let bare_batch = drive(&load(args.channels, args.batch, bare.endpoint()), &bare)?;
    rows.push(bare_batch.row(&format!(
        "bare tonic server (transport ceiling), batch of {}",
        args.batch
    )));
    drop(bare);

    let mut pg_rate = None;
    let mut pg_store_only = None;
    if let Some(base) = &args.postgres {
        eprintln!(
            "[6/{STEPS}] raw multi-row inserts into PostgreSQL, then duban on it: unary Submit, then its store alone"
        );
        let raw_url = baselines::fresh_pg_schema(base, "duban_bench_raw").await?;
        let raw_pg = baselines::raw_postgres(
            &raw_url,
            args.values,
            if args.quick { 5_000 } else { 100_000 },
        )
        .await?;
        rows.push(Row {
            what: "raw PostgreSQL UNNEST inserts (the server's durability), reports".into(),
            rate: raw_pg,
            detail: String::new(),
        });
        let url = baselines::fresh_pg_schema(base, "duban_bench").await?;
        setup.register_keys(&url, 2 * args.channels).await?;
        let server = Server::start_with(&aggregator, &setup, &url, NO_UNIT_LIMIT)?;
        let pg = drive(&load(0, 0, server.endpoint()), &server)?;
        pg_rate = Some((pg.load.per_second(), raw_pg));
        rows.push(pg.row("duban, PostgreSQL, unary Submit"));
        drop(server);
        let url = baselines::fresh_pg_schema(base, "duban_bench_store").await?;
        let row = alone_row(url, "PostgreSQL", 1).await?;
        pg_store_only = Some(row.rate);
        rows.push(row);
    } else {
        eprintln!("[6/{STEPS}] PostgreSQL: left out (no --postgres / DUBAN_BENCH_POSTGRES_URL)");
    }

    eprintln!(
        "[7/{STEPS}] Prometheus Pushgateway, {} values per push",
        args.values
    );
    let mut push_rates = Vec::new();
    for (name, flags) in [
        ("Pushgateway, PUT, default", &[][..]),
        (
            "Pushgateway, PUT, --push.disable-consistency-check",
            &["--push.disable-consistency-check"][..],
        ),
    ] {
        match baselines::pushgateway(
            &args.pushgateway,
            flags,
            args.values,
            args.concurrency,
            seconds,
        )
        .await
        {
            Ok(result) => {
                push_rates.push((name, result.per_second()));
                rows.push(Row {
                    what: name.into(),
                    rate: result.per_second(),
                    detail: format!("p50 {:.1} ms, p99 {:.1} ms", result.p50_ms, result.p99_ms),
                });
            }
            Err(error) => eprintln!("  {name}: left out: {error:#}"),
        }
    }

    eprintln!("[8/{STEPS}] {agents} agents, each with its own mTLS connection, held at once");
    let many = Setup::new(&dir.path().join("agents"), &aggregator, agents)?;
    let url = format!("sqlite://{}", dir.path().join("agents.db").display());
    many.register_keys(&url, agents).await?;
    let server = Server::start(&aggregator, &many, &url)?;
    let held = connect(&server, &many, agents)?;
    drop(server);

    eprintln!("[9/{STEPS}] the agent: a backlog of {backlog} reports drained, then idle");
    let agent_figures = drain::measure(
        &agent,
        &aggregator,
        &setup,
        dir.path(),
        backlog,
        args.values,
    )
    .await?;

    eprintln!(
        "[10/{STEPS}] a synthetic plan: {plan_units} units × {INDICATORS} indicators × 12 months"
    );
    let plan = big_plan::measure(&aggregator, &setup, dir.path(), plan_units, INDICATORS).await?;
    // The engine alone, in this process: the median of three computations.
    let alone = big_plan::compute_alone(plan_units, INDICATORS, 3)?;
    let median = |mut runs: Vec<f64>| {
        runs.sort_by(f64::total_cmp);
        runs[runs.len() / 2]
    };
    let engine_ms = median(alone.whole);
    let engine_updated_ms = median(alone.updated);

    eprintln!("[{STEPS}/{STEPS}] done");
    println!();
    println!("| what | reports/s | ratio | detail |");
    println!("|---|---:|---:|---|");
    let unary_rate = unary.load.per_second();
    for row in &rows {
        println!(
            "| {} | {:.0} | {} | {} |",
            row.what,
            row.rate,
            ratio_note(row, unary_rate, strict, raw, pg_rate),
            row.detail
        );
    }
    println!();
    println!(
        "duban unary / verify_strict: {:.2}; / verify_batch: {:.2}; / raw inserts: {:.2}",
        unary_rate / strict,
        unary_rate / batch,
        unary_rate / raw
    );
    println!(
        "duban batch / raw inserts: {:.2}",
        batched.load.per_second() / raw
    );
    println!(
        "duban unary / its store alone, calls of 1: {:.2}; duban batch / its store alone, calls of {}: {:.2}",
        unary_rate / store_only[0],
        args.batch,
        batched.load.per_second() / store_only[1]
    );
    println!(
        "duban unary / bare tonic unary: {:.2}; duban batch / bare tonic batch: {:.2}",
        unary_rate / bare_unary.load.per_second(),
        batched.load.per_second() / bare_batch.load.per_second()
    );
    for (name, rate) in &push_rates {
        println!("duban unary / {name}: {:.2}", unary_rate / rate);
    }
    if let (Some((pg, raw_pg)), Some(pg_store)) = (pg_rate, pg_store_only) {
        println!(
            "duban PostgreSQL unary / SQLite unary: {:.2}; / raw PostgreSQL inserts: {:.2}; / its store alone, calls of 1: {:.2}",
            pg / unary_rate,
            pg / raw_pg,
            pg / pg_store
        );
    }
    println!();
    println!("| what | figure |");
    println!("|---|---|");
    println!(
        "| {} agents connected at once, each its own mTLS connection and one Submit | {} connected, {} refused, {} failed calls in {:.1} s; aggregator RSS {:.0} MB with all held ({:.0} kB per connection), peak {:.0} MB |",
        agents,
        held.result.connected,
        held.result.refused,
        held.result.failed_calls,
        held.result.seconds,
        held.rss_mb,
        held.kb_per_connection,
        held.peak_rss_mb
    );
    println!(
        "| agent backlog of {} reports ({} values each) drained by `duban-agent run` (the centre's per-unit rate limit off) | {:.1} s ({:.0} reports/s); agent peak RSS {:.1} MB (built in {:.0} s); the centre handled {:.0} calls in {:.1} s ({:.1} ms a call, {:.1} ms of it storing) |",
        agent_figures.reports,
        args.values,
        agent_figures.drain_seconds,
        agent_figures.reports as f64 / agent_figures.drain_seconds,
        agent_figures.drain_peak_rss_mb,
        agent_figures.fill_seconds,
        agent_figures.centre_calls,
        agent_figures.centre_seconds,
        1000.0 * agent_figures.centre_seconds / agent_figures.centre_calls,
        1000.0 * agent_figures.centre_store_seconds / agent_figures.centre_calls
    );
    println!(
        "| agent idle (CSV source, empty outbox, connected) | RSS {:.1} MB ({:.1} MB anonymous, {:.1} MB file-backed) |",
        agent_figures.idle_rss_mb, agent_figures.idle_anon_mb, agent_figures.idle_file_mb
    );
    println!(
        "| synthetic plan: {} units × {} indicators × 12 months, {} values (stored in {:.0} s, read back whole in {:.0} ms: {:.2} × SQLite's bare scan of the same rows, {:.0} ms) | views (the store read, then progress) made before the first /metrics answered: {:.0} ({}), {:.0} ms each; made after it: {:.0} ({}), {:.1} ms each on average; the engine alone, in process: computed whole {:.0} ms, updated after one unit's correction {:.1} ms; first /metrics {:.0} ms ({:.2} × the bare scan and the engine's whole computation together, {:.0} ms), again {:.0} ms (progress computations since the scrape before: {}); /api/v1/progress {:.0} ms, without the obligations {:.0} ms; /metrics after one unit's correction {:.0} ms (progress computations since the scrape before: {}); {} series ({} of plan state, budget {}) |",
        plan.units,
        plan.indicators,
        plan.values,
        plan.fill_seconds,
        plan.read_ms,
        plan.read_ms / plan.bare_scan_ms,
        plan.bare_scan_ms,
        plan.first_views.count,
        plan.first,
        plan.first_views.mean_ms,
        plan.later_views.count,
        plan.later,
        plan.later_views.mean_ms,
        engine_ms,
        engine_updated_ms,
        plan.metrics_cold_ms,
        plan.metrics_cold_ms / (plan.bare_scan_ms + engine_ms),
        plan.bare_scan_ms + engine_ms,
        plan.metrics_warm_ms,
        plan.warm,
        plan.progress_api_ms,
        plan.summary_api_ms,
        plan.metrics_after_write_ms,
        plan.after_write,
        plan.series,
        plan.plan_series,
        plan.budget
    );
    if unary.load.failed_calls + batched.load.failed_calls + held.result.failed_calls > 0 {
        bail!("some calls failed: see the table");
    }
    Ok(())
}

/// The ratio column: a duban or bare-server row against the baselines, a baseline row as the
/// duban figure it bounds over it (the PostgreSQL rows against each other).
fn ratio_note(row: &Row, unary: f64, strict: f64, raw: f64, pg: Option<(f64, f64)>) -> String {
    if let Some((pg_unary, raw_pg)) = pg.filter(|_| row.what.contains("PostgreSQL")) {
        return if row.what.starts_with("duban") {
            format!(
                "{:.2} × verify_strict, {:.2} × raw PostgreSQL",
                row.rate / strict,
                row.rate / raw_pg
            )
        } else {
            format!("duban PostgreSQL unary = {:.2} ×", pg_unary / row.rate)
        };
    }
    if row.what.starts_with("duban") || row.what.starts_with("bare") {
        format!(
            "{:.2} × verify_strict, {:.2} × raw",
            row.rate / strict,
            row.rate / raw
        )
    } else {
        format!("duban unary = {:.2} ×", unary / row.rate)
    }
}

/// A load run against a running server, with the server's CPU and memory.
struct Driven {
    load: LoadResult,
    cpu_ms_per_report: f64,
    peak_rss_mb: f64,
}

impl Driven {
    fn row(&self, what: &str) -> Row {
        Row {
            what: what.into(),
            rate: self.load.per_second(),
            detail: format!(
                "p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms; server CPU {:.0} µs/report, generator {:.0} µs/report; peak RSS {:.0} MB; {} failed calls",
                self.load.p50_ms,
                self.load.p99_ms,
                self.load.p999_ms,
                self.cpu_ms_per_report * 1000.0,
                self.load.generator_cpu_seconds * 1e6 / self.load.stored.max(1) as f64,
                self.peak_rss_mb,
                self.load.failed_calls,
            ) + &self
                .load
                .first_failure
                .as_ref()
                .map(|first| format!(" (the first: {first})"))
                .unwrap_or_default(),
        }
    }
}

fn drive(args: &LoadArgs, server: &Server) -> anyhow::Result<Driven> {
    let exe = std::env::current_exe()?;
    let cpu_before = server.cpu_seconds()?;
    let output = Command::new(exe)
        .arg("load")
        .args(["--endpoint", &args.endpoint])
        .args(["--certs", &args.certs.display().to_string()])
        .args(["--plan-id", &args.plan_id])
        .args(["--first-unit", &args.first_unit.to_string()])
        .args(["--channels", &args.channels.to_string()])
        .args(["--concurrency", &args.concurrency.to_string()])
        .args(["--values", &args.values.to_string()])
        .args(["--indicators", &args.indicators.to_string()])
        .args(["--batch", &args.batch.to_string()])
        .args(["--reports", &args.reports.to_string()])
        .args(["--seconds", &args.seconds.to_string()])
        .stderr(Stdio::inherit())
        .output()?;
    if !output.status.success() {
        bail!("the load generator failed ({})", output.status);
    }
    let load: LoadResult =
        serde_json::from_slice(&output.stdout).context("the load generator's result line")?;
    let cpu = server.cpu_seconds()? - cpu_before;
    Ok(Driven {
        cpu_ms_per_report: cpu * 1000.0 / load.stored.max(1) as f64,
        peak_rss_mb: server.peak_rss_kb()? as f64 / 1024.0,
        load,
    })
}

/// The bench plan, its certificates, and its units' keys.
struct Setup {
    plan: PathBuf,
    certs: PathBuf,
    units: usize,
}

/// A program beside this one, unless given.
fn beside(given: &Option<PathBuf>, name: &str) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the directory of this program")?
            .join(name),
    };
    if !path.is_file() {
        bail!(
            "no {name} at {} (build it: cargo build --release --workspace --bins)",
            path.display()
        );
    }
    Ok(path)
}

/// Connections held open at once, and the aggregator's memory while they are.
struct Held {
    result: connections::Connected,
    rss_mb: f64,
    peak_rss_mb: f64,
    kb_per_connection: f64,
}

/// Opens `count` connections from a `connections` process, reads the aggregator's memory
/// while all are held, then lets them go.
fn connect(server: &Server, setup: &Setup, count: usize) -> anyhow::Result<Held> {
    let before = drain::status_kb(server.child.id(), "VmRSS:")?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("connections")
        .args(["--endpoint", &server.endpoint()])
        .arg("--certs")
        .arg(&setup.certs)
        .args(["--plan-id", PLAN_ID, "--count", &count.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let result: connections::Connected = serde_json::from_str(&line)
        .with_context(|| format!("the connections process's result line: {line:?}"))?;
    let rss = drain::status_kb(server.child.id(), "VmRSS:")?;
    let peak = server.peak_rss_kb()?;
    drop(child.stdin.take());
    child.wait()?;
    Ok(Held {
        kb_per_connection: rss.saturating_sub(before) as f64 / count.max(1) as f64,
        rss_mb: rss as f64 / 1024.0,
        peak_rss_mb: peak as f64 / 1024.0,
        result,
    })
}

impl Setup {
    fn new(dir: &Path, aggregator: &Path, units: usize) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let plan = dir.join("plan.toml");
        std::fs::write(
            &plan,
            duban_testkit::synthetic::plan_toml(PLAN_ID, units, INDICATORS),
        )?;
        let certs = dir.join("certs");
        let names: Vec<String> = (0..units).map(load::unit_id).collect();
        let out = Command::new(aggregator)
            .args(["dev-ca", "--out", &certs.display().to_string()])
            .args(["--units", &names.join(",")])
            .args(["--plan", &plan.display().to_string()])
            .output()?;
        if !out.status.success() {
            bail!("dev-ca: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(Setup { plan, certs, units })
    }

    /// Registers the keys of units `0..count`.
    async fn register_keys(&self, url: &str, count: usize) -> anyhow::Result<()> {
        let keys = (0..count.min(self.units)).map(bench_key);
        if url.starts_with("sqlite:") {
            let store = SqliteStore::open(url).await?;
            for key in keys {
                store.add_key(key).await?;
            }
        } else {
            let store = PgStore::open(url).await?;
            for key in keys {
                store.add_key(key).await?;
            }
        }
        Ok(())
    }
}

/// The key of bench unit `index`, as registered with the store.
fn bench_key(index: usize) -> NewKey {
    let key = load::unit_key(index);
    NewKey {
        key_id: key.key_id(),
        unit_id: load::unit_id(index),
        public_key: *key.public_key().raw(),
        not_before_ms: None,
        not_after_ms: None,
        added_at_ms: load::now_ms(),
    }
}

/// A release `duban-aggregator serve` with mTLS on loopback.
struct Server {
    child: Child,
    grpc: String,
    /// The HTTP address (`/metrics`, the API); empty for the bare server.
    http: String,
}

impl Server {
    fn start(aggregator: &Path, setup: &Setup, url: &str) -> anyhow::Result<Self> {
        Self::start_with(aggregator, setup, url, &[])
    }

    /// [`Server::start`] with more arguments to `serve`.
    fn start_with(
        aggregator: &Path,
        setup: &Setup,
        url: &str,
        more: &[&str],
    ) -> anyhow::Result<Self> {
        let file = |name: &str| setup.certs.join(name).display().to_string();
        let mut command = Command::new(aggregator);
        command
            .arg("serve")
            .args(more)
            .args(["--database-url", url])
            .args(["--plan", &setup.plan.display().to_string()])
            .args([
                "--grpc-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .args([
                "--tls-cert",
                &file("server.crt"),
                "--tls-key",
                &file("server.key"),
            ])
            .args(["--client-ca", &file("ca.crt")])
            .env("RUST_LOG", "warn,duban_aggregator=info");
        Self::spawn(command, "aggregator serving")
    }

    /// The bare tonic server of the transport baseline ([`bare`]).
    fn start_bare(setup: &Setup) -> anyhow::Result<Self> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("bare")
            .args(["--certs", &setup.certs.display().to_string()]);
        Self::spawn(command, "bare server serving")
    }

    fn spawn(mut command: Command, serving: &'static str) -> anyhow::Result<Self> {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().context("server stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut stderr = BufReader::new(stderr);
            let mut line = Vec::new();
            while matches!(stderr.read_until(b'\n', &mut line), Ok(1..)) {
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                line.clear();
                let serves = text.contains(serving);
                if tx.send(text).is_err() || serves {
                    break;
                }
            }
            // Read on, whatever the bytes, so that the server never blocks on a full pipe.
            let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        });
        // The server's last lines, for the error when it does not come up.
        let mut last = std::collections::VecDeque::with_capacity(20);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let line = loop {
            let why = match rx
                .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            {
                Ok(line) if line.contains(serving) => break line,
                Ok(line) => {
                    if last.len() == 20 {
                        last.pop_front();
                    }
                    last.push_back(line);
                    continue;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => "within 60 s",
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => "before it exited",
            };
            let _ = child.kill();
            let _ = child.wait();
            let last: Vec<String> = last.into();
            bail!(
                "no \"{serving}\" {why}; its last lines on stderr:\n{}",
                last.join("\n")
            );
        };
        let grpc = line
            .split("grpc=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .context("grpc= in the serving line")?
            .to_owned();
        let http = line
            .split("http=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_default()
            .to_owned();
        Ok(Server { child, grpc, http })
    }

    fn endpoint(&self) -> String {
        format!("https://{}", self.grpc)
    }

    /// User and system CPU of the server so far (`/proc/PID/stat`, at 100 ticks a second).
    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        load::cpu_seconds(&self.child.id().to_string())
    }

    /// Peak resident memory (`VmHWM` of `/proc/PID/status`), in kB.
    fn peak_rss_kb(&self) -> anyhow::Result<u64> {
        drain::status_kb(self.child.id(), "VmHWM:")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

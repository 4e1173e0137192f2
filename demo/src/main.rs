//! `duban-demo`: see `duban-demo --help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use jiff::civil::Date;

/// The whole of duban on the Qingdao plan (2017-07 .. 2020-06), replayed on a simulated clock.
///
/// Starts the real aggregator (mTLS, SQLite) and one real agent per reporting unit, each with
/// its own key, certificate and outbox. The units' local systems gain values and task progress
/// day by day; agents sign and push them; the aggregator verifies, reconciles and computes
/// progress; deadline alerts reach the lead units. Along the way a report is resent (a
/// duplicate), one is tampered with (refused), the aggregator is restarted while agents keep
/// collecting, and a unit corrects a past period. Ends with a summary and its checks; the exit
/// status is 1 if a check failed.
#[derive(Debug, Parser)]
#[command(name = "duban-demo", version)]
struct Args {
    /// Directory for the demo's CA, keys, certificates, database, outboxes and log. Keys and
    /// certificates are reused from an earlier run; everything else starts afresh.
    #[arg(long, default_value = "duban-demo")]
    dir: PathBuf,
    /// Delete the demo directory first, keys and certificates included.
    #[arg(long)]
    fresh: bool,
    /// Seed of the generator: values, delays and who is late. The same seed replays the same run.
    #[arg(long, default_value_t = 2017)]
    seed: u64,
    /// Simulated days per real second (the whole plan is 1096 days).
    #[arg(long, default_value_t = 15.0, value_parser = parse_speed)]
    speed: f64,
    /// Stop at the end of this day (YYYY-MM-DD) instead of the plan's end, 2020-06-30.
    #[arg(long, value_parser = parse_date)]
    until: Option<Date>,
    /// Where the aggregator takes gRPC (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:7700")]
    grpc_listen: SocketAddr,
    /// Where the aggregator serves /metrics and its HTTP API (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:9464")]
    http_listen: SocketAddr,
    /// After the summary, keep the aggregator serving (the web view at http://HTTP_LISTEN/, the
    /// metrics for Prometheus and Grafana) until Ctrl-C.
    #[arg(long)]
    keep_serving: bool,
    /// Plain progress lines even on a terminal (they are the default when output is not one).
    #[arg(long)]
    plain: bool,
    /// Also send every alert to this webhook (Alertmanager's webhook format), as the units'
    /// inboxes get them; repeat for several.
    #[arg(long, value_name = "URL")]
    webhook: Vec<String>,
}

fn parse_speed(text: &str) -> Result<f64, String> {
    let speed: f64 = text
        .parse()
        .map_err(|_| format!("expected a number of simulated days per second, got {text:?}"))?;
    if speed.is_finite() && speed > 0.0 && speed <= 10_000.0 {
        Ok(speed)
    } else {
        Err(format!(
            "expected a speed above 0 and at most 10000 days per second, got {text}"
        ))
    }
}

fn parse_date(text: &str) -> Result<Date, String> {
    text.parse()
        .map_err(|e| format!("expected a date such as 2018-06-30, got {text:?} ({e})"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let options = duban_demo::run::Options {
        dir: args.dir,
        fresh: args.fresh,
        seed: args.seed,
        speed: args.speed,
        until: args.until,
        grpc_listen: args.grpc_listen,
        http_listen: args.http_listen,
        keep_serving: args.keep_serving,
        plain: args.plain,
        webhooks: args.webhook,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(duban_demo::run::run(options)) {
        Ok(summary) if summary.ok => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

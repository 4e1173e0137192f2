use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use duban_agent::check::Online;
use duban_agent::config::{AgentConfig, DEFAULT_CONFIG_PATH, parse_duration};
use duban_agent::daemon::{self, Agent};
use duban_agent::sources::{Item, check_done, parse_status, status_from_percent};
use duban_host::cli;

mod commands;

use commands::*;

/// duban-agent: collects plan indicators and task progress, signs reports, keeps them in a
/// durable outbox and delivers them to the duban aggregator until acknowledged.
///
/// Logging goes to standard error; RUST_LOG sets its level (e.g. RUST_LOG=debug).
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// The agent's configuration file (docs/AGENT.md).
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: sources on their schedules, delivery until acknowledged. SIGTERM drains
    /// and exits; SIGHUP reloads the configuration (a bad one is refused, the old one kept).
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// How long to keep delivering after SIGTERM.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
        grace: Duration,
    },
    /// Check everything the configuration needs, without running the agent or changing any
    /// file: the key, the TLS files (certificate and key match, the certificate names this
    /// unit and is valid), the sources; then, when an endpoint answers, whether the centre
    /// accepts this agent (certificate, key registered for this unit, plan id, clock).
    /// Exit status 1 when anything would keep reports from being accepted.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Fail when the centre cannot be reached (the default only warns).
        #[arg(long, conflicts_with = "offline")]
        online: bool,
        /// Do not contact the centre.
        #[arg(long)]
        offline: bool,
    },
    /// Run every source now, store what changed, then try to deliver. Prints every item the
    /// centre refuses; exit status 1 when a source failed or something was refused or held.
    Collect {
        #[command(flatten)]
        config: ConfigArg,
        /// Required: run once and exit (the daemon is `duban-agent run`).
        #[arg(long)]
        once: bool,
        /// Send every value again, changed or not (as a new revision).
        #[arg(long)]
        force: bool,
        /// How long to try delivering before leaving the rest to the daemon.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
        send_for: Duration,
    },
    /// Report one indicator value by hand (for a clerk without a database). Prints the
    /// centre's answer; exit status 1 when it refused the value.
    Submit {
        #[command(flatten)]
        config: ConfigArg,
        /// Indicator id from the plan, e.g. pct-applications.
        #[arg(long)]
        indicator: String,
        /// 2018-03 (month), 2018Q1 (quarter), 2018S1 (half-year) or 2018 (year).
        #[arg(long)]
        period: String,
        /// The value, in the indicator's measure unit.
        #[arg(long)]
        value: f64,
        /// A note for the plan office (at most 1024 bytes).
        #[arg(long, default_value = "")]
        note: String,
        /// How long to try delivering before leaving it to the daemon.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
        send_for: Duration,
    },
    /// Report progress on a task milestone by hand.
    SubmitTask {
        #[command(flatten)]
        config: ConfigArg,
        /// Task id from the plan, e.g. 2-1-1.
        #[arg(long)]
        task: String,
        /// Milestone id within the task, e.g. m1.
        #[arg(long)]
        milestone: String,
        /// 2018-03 (month), 2018Q1 (quarter), 2018S1 (half-year) or 2018 (year).
        #[arg(long)]
        period: String,
        /// 0 to 100 [default: 100 with --status done].
        #[arg(long)]
        percent: Option<f64>,
        /// not_started, in_progress, blocked or done (未开始, 进行中, 受阻, 已完成, 完成); done
        /// means 100 % [default: from the percent].
        #[arg(long)]
        status: Option<String>,
        /// A note for the plan office (at most 1024 bytes).
        #[arg(long, default_value = "")]
        note: String,
        /// How long to try delivering before leaving it to the daemon.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
        send_for: Duration,
    },
    /// The open alert cases that concern this unit, each with its deadline (and the original
    /// one when an extension was granted), escalation level, recipients and record; every open
    /// case for the supervising office. The CASE ids are what `respond` and `decide` take.
    Alerts {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
    /// Answer an alert case with a signed statement (督办 反馈): ack (acknowledge), explain
    /// (--note with the reason and measures, --date when it will be finished), extend (ask for
    /// a new deadline: --date and --note with the reason) or done (claim it done: --reference,
    /// a document number, a URL or a note). Kept in the outbox until the centre answers; exit
    /// status 1 when the centre refuses it (its reason is printed).
    Respond {
        #[command(flatten)]
        config: ConfigArg,
        what: RespondKind,
        /// The case id from `duban-agent alerts`, e.g. report/pct-applications/2018Q1/laoshan.
        case: String,
        /// YYYY-MM-DD (explain: when it will be finished; extend: the deadline asked for).
        #[arg(long)]
        date: Option<String>,
        /// The reason, and for explain the measures taken (at most 1024 bytes).
        #[arg(long, default_value = "")]
        note: String,
        /// For done: a document number, a URL or a note (at most 256 bytes).
        #[arg(long, default_value = "")]
        reference: String,
    },
    /// The supervising office decides on an answer: grant or refuse the extension asked for,
    /// confirm or reject the done claim (办结). Only the plan's supervising office may; exit
    /// status 1 when the centre refuses the decision.
    Decide {
        #[command(flatten)]
        config: ConfigArg,
        what: DecideKind,
        /// The case id from `duban-agent alerts`.
        case: String,
        /// grant: another deadline than the one asked for, YYYY-MM-DD.
        #[arg(long)]
        date: Option<String>,
        /// The office's note (at most 1024 bytes).
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Inspect the outbox.
    #[command(subcommand)]
    Outbox(OutboxCommand),
    /// Generate this agent's Ed25519 signing key.
    ///
    /// Writes DIR/signing.key (PKCS#8 PEM, mode 0600) and DIR/signing.pub (SPKI PEM), the same
    /// formats `openssl genpkey -algorithm ed25519` writes, and prints the key id (hex SHA-256
    /// of the raw public key) to register with `duban-aggregator keys add`. Never overwrites.
    Keygen {
        /// Directory to write the key pair into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Start a signing-key rotation: write a new key beside the configured one
    /// (<private_key>.next, public key <private_key>.next.pub) and print the `keys add` line to
    /// run at the centre. The running agent offers the new key every 10 s and switches to it
    /// once the centre accepts it (the old key kept as <private_key>.previous); reports already
    /// waiting keep the old key's signature, so nothing is refused across the switch. Run again
    /// to see the pending key; it is never replaced.
    RotateKey {
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RespondKind {
    Ack,
    Explain,
    Extend,
    Done,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DecideKind {
    Grant,
    Refuse,
    Confirm,
    Reject,
}

#[derive(Debug, Subcommand)]
enum OutboxCommand {
    /// Depth, bytes, oldest age and dead letters.
    Stats {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
    /// Reports the centre refused for good, each with its refused items (code and the
    /// centre's message), and the items it refused inside reports it stored.
    Dead {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
        /// Delete the dead letters and the record of refusals (asks first). Change detection
        /// has already forgotten their items: the next collection builds what the sources
        /// still hold, under the configuration as it is now.
        #[arg(long)]
        discard: bool,
        /// With --discard: do not ask.
        #[arg(long, requires = "discard")]
        yes: bool,
    },
    /// Put the dead letters back in the outbox, unchanged, for another try (after the centre
    /// was fixed). Dead letters signed for another unit, plan or key than the configuration
    /// now names stay: discard them and collect again instead.
    RetryDead {
        #[command(flatten)]
        config: ConfigArg,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli.command)) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Problems) => ExitCode::FAILURE,
        Err(error) => {
            cli::eprintln(&format!("error: {error:#}"));
            ExitCode::FAILURE
        }
    }
}

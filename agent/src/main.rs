use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use duban_agent::config::{AgentConfig, DEFAULT_CONFIG_PATH, parse_duration};
use duban_agent::daemon::{self, Agent};
use duban_agent::sources::{Item, parse_status};

/// duban-agent: collects plan indicators and task progress, signs reports, keeps them in a
/// durable outbox and delivers them to the duban aggregator until acknowledged.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
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
    /// Validate the configuration (and that the key and TLS files load) without running.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Run every source now, store what changed, then try to deliver.
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
    /// Report one indicator value by hand (for a clerk without a database).
    Submit {
        #[command(flatten)]
        config: ConfigArg,
        /// Indicator id from the plan, e.g. pct-applications.
        #[arg(long)]
        indicator: String,
        /// 2018-03 (month), 2018Q1 (quarter), 2018S1 (half-year) or 2018 (year).
        #[arg(long)]
        period: String,
        #[arg(long)]
        value: f64,
        #[arg(long, default_value = "")]
        note: String,
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
        #[arg(long)]
        period: String,
        /// 0 to 100.
        #[arg(long)]
        percent: f64,
        /// not_started, in_progress, blocked or done (未开始, 进行中, 受阻, 已完成) [default: from percent].
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value = "")]
        note: String,
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
        send_for: Duration,
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
    /// Reports the aggregator refused permanently, with the reason.
    Dead {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
    /// Put every dead letter back in the outbox for another try.
    RetryDead {
        #[command(flatten)]
        config: ConfigArg,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn open(config: &Path) -> anyhow::Result<Agent> {
    Agent::open(AgentConfig::read(config)?).await
}

async fn send_and_report(agent: &Agent, send_for: Duration) -> anyhow::Result<()> {
    let mut deliverer = agent.deliverer()?;
    let drained = agent
        .drain(&mut deliverer, Instant::now() + send_for)
        .await?;
    let stats = agent.outbox.stats().await?;
    if drained {
        println!(
            "delivered: the outbox is empty ({} dead letter(s))",
            stats.dead_letters
        );
    } else {
        println!(
            "{} report(s) still waiting in the outbox; `duban-agent run` will keep trying",
            stats.reports
        );
    }
    Ok(())
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { config, grace } => {
            let config = AgentConfig::read(&config.config)?;
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("install SIGHUP handler")?;
            // One permit per SIGHUP; a signal between two waits is kept, not lost.
            let hups = std::sync::Arc::new(tokio::sync::Notify::new());
            let notifier = hups.clone();
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    notifier.notify_one();
                }
            });
            let reload = move || {
                let hups = hups.clone();
                Box::pin(async move { hups.notified().await })
                    as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
            };
            daemon::run(config, grace, termination_signal(), reload).await
        }
        Command::Check { config } => {
            print!("{}", daemon::check(&config.config)?);
            Ok(())
        }
        Command::Collect {
            config,
            once,
            force,
            send_for,
        } => {
            anyhow::ensure!(
                once,
                "collect needs --once (the daemon that collects on schedule is `duban-agent run`)"
            );
            let agent = open(&config.config).await?;
            let mut failed = 0;
            for source in agent.config.sources.clone() {
                match agent.collect(&source, force).await {
                    Ok(done) => println!(
                        "{}: {} report(s) stored, {} item(s) unchanged",
                        source.name,
                        done.reports.len(),
                        done.unchanged
                    ),
                    Err(error) => {
                        failed += 1;
                        println!("{}: FAILED: {error:#}", source.name);
                    }
                }
            }
            send_and_report(&agent, send_for).await?;
            anyhow::ensure!(failed == 0, "{failed} source(s) failed");
            Ok(())
        }
        Command::Submit {
            config,
            indicator,
            period,
            value,
            note,
            send_for,
        } => {
            let period = period.parse().with_context(|| "--period")?;
            anyhow::ensure!(value.is_finite(), "--value must be a finite number");
            let agent = open(&config.config).await?;
            let done = agent
                .enqueue(
                    &[Item::Value {
                        indicator,
                        period,
                        value,
                        note,
                    }],
                    true,
                )
                .await?;
            println!("stored report seq {} in the outbox", done.reports[0].0);
            send_and_report(&agent, send_for).await
        }
        Command::SubmitTask {
            config,
            task,
            milestone,
            period,
            percent,
            status,
            note,
            send_for,
        } => {
            let period = period.parse().with_context(|| "--period")?;
            anyhow::ensure!(
                (0.0..=100.0).contains(&percent),
                "--percent must be from 0 to 100"
            );
            let status = match status {
                Some(text) => parse_status(&text).with_context(|| {
                    format!(
                        "--status {text:?} is not one of not_started, in_progress, blocked, done"
                    )
                })?,
                None if percent >= 100.0 => duban_proto::pb::TaskStatus::Done,
                None if percent > 0.0 => duban_proto::pb::TaskStatus::InProgress,
                None => duban_proto::pb::TaskStatus::NotStarted,
            };
            let agent = open(&config.config).await?;
            let done = agent
                .enqueue(
                    &[Item::Task {
                        task,
                        milestone,
                        period,
                        percent,
                        status,
                        note,
                    }],
                    true,
                )
                .await?;
            println!("stored report seq {} in the outbox", done.reports[0].0);
            send_and_report(&agent, send_for).await
        }
        Command::Outbox(OutboxCommand::Stats { config, json }) => {
            let agent = open(&config.config).await?;
            let stats = agent.outbox.stats().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                let age = stats
                    .oldest_created_at_ms
                    .map(|t| {
                        format!(
                            "{}s",
                            (jiff::Timestamp::now().as_millisecond() - t).max(0) / 1000
                        )
                    })
                    .unwrap_or_else(|| "—".into());
                println!(
                    "outbox {}\n  reports waiting  {}\n  bytes            {}\n  oldest age       {age}\n  dead letters     {}\n  next seq         {}",
                    agent.outbox.path().display(),
                    stats.reports,
                    stats.bytes,
                    stats.dead_letters,
                    stats.next_seq
                );
            }
            Ok(())
        }
        Command::Outbox(OutboxCommand::Dead { config, json }) => {
            let agent = open(&config.config).await?;
            let dead = agent.outbox.dead_letters().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&dead)?);
            } else {
                for d in &dead {
                    println!(
                        "seq {}  period {}  {}  {}",
                        d.seq, d.period, d.reason, d.message
                    );
                }
                println!("{} dead letter(s)", dead.len());
            }
            Ok(())
        }
        Command::Outbox(OutboxCommand::RetryDead { config }) => {
            let agent = open(&config.config).await?;
            let moved = agent.outbox.retry_dead().await?;
            println!("{moved} dead letter(s) back in the outbox; the daemon sends them next");
            Ok(())
        }
        Command::Keygen { out } => {
            let files = duban_agent::keygen::generate_into(&out)?;
            println!("{}", files.key_id);
            eprintln!(
                "wrote {} (private, mode 0600) and {}",
                files.private_key.display(),
                files.public_key.display()
            );
            Ok(())
        }
    }
}

/// Resolves on SIGTERM or SIGINT. The SIGTERM handler is installed now, not on first poll, so
/// that a signal arriving during start-up is not fatal.
fn termination_signal() -> impl std::future::Future<Output = ()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
}

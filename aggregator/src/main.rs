use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use duban_aggregator::clock::{Clock, SystemClock, parse_time_ms};
use duban_aggregator::config::{DEFAULT_DATABASE_URL, ServeFile, ServeFlags};
use duban_aggregator::serve::Serve;
use duban_aggregator::store::{AnyStore, ReportFilter, Store};
use duban_aggregator::{admin, plan};
use duban_host::cli;

mod commands;

use commands::*;

/// duban-aggregator: the central duban service and its admin CLI.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the aggregator: gRPC ReportService (with health and reflection), and on HTTP the web
    /// view (/), the JSON under /api/v1/, /metrics, /healthz, /readyz. SIGTERM or SIGINT drains
    /// in-flight calls, then exits.
    Serve(Box<ServeArgs>),
    /// Check and show plan files (targets, tasks, units, deadlines).
    #[command(subcommand)]
    Plan(PlanCommand),
    /// Manage the registry of agents' public keys (per unit).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Show the reports that have arrived.
    #[command(subcommand)]
    Reports(ReportsCommand),
    /// Show current indicator values (the winning value per unit and period).
    #[command(subcommand)]
    Values(ValuesCommand),
    /// 督办 (supervision): each unit's record of answering alerts.
    #[command(subcommand)]
    Supervision(SupervisionCommand),
    /// Administrative changes as evidence: every `keys add` and `keys revoke`, when, by which
    /// OS user on which host, on which key and unit. Recorded in the same transaction as the
    /// change; only read here.
    AdminLog {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Create the database schema, or bring it up to date (`serve` does this at start too).
    /// The commands that only read (status, keys list, reports list, values show, supervision
    /// report, export, admin-log) never create or migrate a database. With --from and --to:
    /// copy a SQLite database into an empty PostgreSQL one instead (docs/OPERATIONS.md,
    /// "Moving from SQLite to PostgreSQL").
    Migrate {
        #[command(flatten)]
        db: DbArgs,
        /// Copy every table of this SQLite database (sqlite://PATH; it may be in use: one
        /// consistent snapshot is read) into --to. --database-url and --config are not used.
        #[arg(long, value_name = "URL", requires = "to")]
        from: Option<String>,
        /// The PostgreSQL database to copy into (postgres://USER@HOST/DB): given its schema,
        /// refused if any table has a row, committed only when every table's row count and
        /// content hash read back equal the source's.
        #[arg(long, value_name = "URL", requires = "from")]
        to: Option<String>,
    },
    /// Export one plan's whole record into a new SQLite file of this program's schema (reports
    /// with their original bytes and signatures, value and task history, current values and
    /// tasks, audit, alerts, statements, and every key), verified by each table's row count
    /// and content hash read back from the file. With --delete, then remove the plan's rows
    /// from the database: only for a closed plan (its window ended before today), and only if
    /// nothing changed since the export (docs/OPERATIONS.md, "Retention and archives").
    Archive {
        /// The archive file to write; refused if it exists.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// After the archive is written and verified, delete the plan's rows from the database.
        #[arg(long)]
        delete: bool,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        plan: PlanArg,
    },
    /// The plan's state: indicators against target and expected, tasks lagging or overdue,
    /// completeness and timeliness per unit, active alerts, each alerted unit's 督办 record.
    Status {
        /// Evaluate at another time (RFC 3339, or YYYY-MM-DD for midnight UTC): a true
        /// history, counting only the reports and statements received by then.
        #[arg(long, value_name = "TIME")]
        as_of: Option<String>,
        /// Alert only deadlines from this time on [default: [alerts] go_live of --config, else
        /// the go-live the aggregator runs with, as recorded in the database].
        #[arg(long, value_name = "TIME")]
        go_live: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        plan: PlanArg,
    },
    /// Export a table for a spreadsheet, as the web view's export links give it: indicators
    /// (each reporter's value per period, with due date and status), tasks (every milestone),
    /// alerts (every case with its history), report (the 督办通报: each unit's record), units
    /// (who has reported). Chinese headers with the column id beside them; numbers as numbers,
    /// dates as dates. Writes to --output, or to standard output (CSV only).
    Export {
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(duban_aggregator::web::export::TABLES))]
        table: String,
        #[arg(long, value_enum, default_value = "csv")]
        format: duban_aggregator::web::export::Format,
        /// The state at this time (RFC 3339, or YYYY-MM-DD for midnight UTC), counting only
        /// what had been received by then [default: now, from everything stored].
        #[arg(long, value_name = "TIME")]
        as_of: Option<String>,
        /// File to write [default: standard output; required for xlsx].
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        plan: PlanArg,
    },
    /// Make a development CA with a server certificate, per-unit client certificates (SAN URI
    /// spiffe://duban/unit/<unit>) and an empty CRL (ca.crl), for tests and trials; `dev-ca
    /// revoke` adds a certificate to the CRL. Production uses its own CA (docs/SECURITY.md).
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    DevCa {
        #[command(subcommand)]
        action: Option<DevCaCommand>,
        /// Directory to write into; an existing CA there is reused, existing files are kept.
        #[arg(long, value_name = "DIR", required = true)]
        out: Option<PathBuf>,
        /// Units to issue client certificates for (comma-separated) [default: every unit that
        /// reports an indicator in the plan].
        #[arg(long, value_delimiter = ',')]
        units: Vec<String>,
        /// DNS names and IP addresses for the server certificate.
        #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1")]
        server_names: Vec<String>,
        #[command(flatten)]
        plan: PlanArg,
    },
}

#[derive(Debug, Subcommand)]
enum DevCaCommand {
    /// Revoke a certificate the development CA issued: rewrite DIR/ca.crl with it added (what
    /// was revoked stays revoked). An aggregator started with --client-crl DIR/ca.crl refuses
    /// it at the handshake once it reloads the file.
    Revoke {
        /// The CA's directory (as given to `dev-ca --out`).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The unit whose certificate DIR/units/<unit>.crt to revoke.
        #[arg(long, conflicts_with = "cert", required_unless_present = "cert")]
        unit: Option<String>,
        /// The certificate file to revoke (a client certificate the CA issued, e.g. one issued
        /// again by hand under another name).
        #[arg(long, value_name = "FILE")]
        cert: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// gRPC listen address [default: 127.0.0.1:7700].
    #[arg(long, value_name = "ADDR")]
    grpc_listen: Option<SocketAddr>,
    /// HTTP listen address for the web view, /api/v1/, /metrics, /healthz, /readyz; read-only,
    /// protected by the address it binds and, when given, --http-token-file and --http-tls-*
    /// (docs/OPERATIONS.md, "Protecting the HTTP side") [default: 127.0.0.1:9464].
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<SocketAddr>,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    plan: PlanArg,
    /// Server certificate chain (PEM). TLS needs --tls-cert, --tls-key and --client-ca.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// CA certificate (PEM) that signs agents' client certificates; clients must present one.
    #[arg(long, value_name = "FILE")]
    client_ca: Option<PathBuf>,
    /// A CRL (PEM or DER) of the client CA (repeatable): a listed client certificate is refused
    /// at the handshake. `dev-ca revoke` writes one.
    #[arg(long, value_name = "FILE")]
    client_crl: Vec<PathBuf>,
    /// Seconds between checks of the TLS files (certificates, keys, CAs, CRLs) and the HTTP
    /// token file; changed files are loaded without a restart [default: 5].
    #[arg(long, value_name = "SECONDS")]
    tls_reload_seconds: Option<u64>,
    /// Serve HTTP over TLS with this certificate chain (PEM); needs --http-tls-key.
    #[arg(long, value_name = "FILE")]
    http_tls_cert: Option<PathBuf>,
    /// The HTTP listener's private key (PEM).
    #[arg(long, value_name = "FILE")]
    http_tls_key: Option<PathBuf>,
    /// HTTP clients must present a certificate this CA (PEM) signed; needs --http-tls-cert.
    #[arg(long, value_name = "FILE")]
    http_client_ca: Option<PathBuf>,
    /// Require `Authorization: Bearer <token>` on every HTTP path but /healthz and /readyz,
    /// the token read from this file (at least 16 characters; re-read when it changes).
    #[arg(long, value_name = "FILE")]
    http_token_file: Option<PathBuf>,
    /// Reports a second each unit may send (a token bucket per unit, per replica); over it,
    /// calls are answered RESOURCE_EXHAUSTED with a retry delay. 0 turns it off [default: 1000].
    #[arg(long, value_name = "N")]
    rate_limit: Option<u32>,
    /// Reports a unit may send at once after a quiet spell (at least 1000) [default: 20000].
    #[arg(long, value_name = "N")]
    rate_limit_burst: Option<u32>,
    /// Serve gRPC without TLS. For tests only; logs a warning at start.
    #[arg(long)]
    insecure_plaintext: bool,
    /// Calls handled at once before answering RESOURCE_EXHAUSTED [default: 256].
    #[arg(long, value_name = "N")]
    max_in_flight: Option<usize>,
    /// Seconds to let in-flight calls finish after SIGTERM [default: 10].
    #[arg(long, value_name = "SECONDS")]
    shutdown_grace_seconds: Option<u64>,
    /// Send plan alerts to this Alertmanager (base URL; repeatable).
    #[arg(long, value_name = "URL")]
    alertmanager: Vec<String>,
    /// Send plan alerts to this webhook in Alertmanager's webhook format (repeatable).
    #[arg(long, value_name = "URL")]
    webhook: Vec<String>,
    /// Seconds between alert evaluations [default: 30].
    #[arg(long, value_name = "SECONDS")]
    evaluate_every_seconds: Option<u64>,
    /// Alert only deadlines from this time on (RFC 3339 or YYYY-MM-DD); earlier ones are
    /// shown, not alerted [default: when this database first served].
    #[arg(long, value_name = "TIME")]
    go_live: Option<String>,
}

/// Where the database is: `--database-url`, else `DUBAN_DATABASE_URL`, else `database_url` of
/// `--config`, else the default. `--config` also gives the plan file unless `--plan` is given.
#[derive(Debug, Args)]
struct DbArgs {
    /// sqlite://PATH or postgres://USER@HOST/DB. Overrides DUBAN_DATABASE_URL and the
    /// configuration file [default: sqlite://./duban-data/duban.db].
    #[arg(
        long,
        value_name = "URL",
        env = "DUBAN_DATABASE_URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// The aggregator's configuration file (docs/OPERATIONS.md): its database_url, plan and
    /// [alerts] are used unless a flag says otherwise; keeps credentials off the command line.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct PlanArg {
    /// Plan file (TOML, see docs/PLAN.md) [default: the embedded Qingdao 2017 plan].
    #[arg(long, value_name = "FILE")]
    plan: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum PlanCommand {
    /// Print an Alertmanager configuration for the plan: a route on the recipient label and a
    /// receiver unit-<unit> for every unit that can receive plan alerts, and duban-ops for the
    /// Duban* health alerts (deploy/alertmanager/alertmanager.yml).
    AlertmanagerConfig {
        /// Plan file [default: the embedded Qingdao 2017 plan].
        file: Option<PathBuf>,
        /// Placeholder base URL for receivers not in --receivers (<base>/<unit>, <base>/ops).
        #[arg(long, value_name = "URL", default_value = duban_aggregator::alerting::amconfig::DEFAULT_WEBHOOK_BASE)]
        webhook_base: String,
        /// Hand-written receivers (YAML: `receivers:` in Alertmanager's syntax, named duban-ops
        /// and unit-<unit>); each replaces its generated placeholder.
        #[arg(long, value_name = "FILE")]
        receivers: Option<PathBuf>,
    },
    /// Validate a plan file. Exit status 0 when valid (warnings are printed but do not fail),
    /// 1 when it has errors; each error names the file, line and key.
    Check {
        /// Plan file (TOML, see docs/PLAN.md). Without it: the embedded Qingdao 2017 plan.
        file: Option<PathBuf>,
    },
    /// Print a plan's indicators, tasks, tracks and phases.
    Show {
        /// Plan file (TOML, see docs/PLAN.md). Without it: the embedded Qingdao 2017 plan.
        file: Option<PathBuf>,
        /// Print stable JSON (format "duban.plan.v1", documented in docs/PLAN.md) instead of
        /// the terminal view.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Register a unit's public key (SPKI PEM, as `duban-agent keygen` or
    /// `openssl pkey -pubout` writes). Running servers pick it up within seconds.
    Add {
        /// Unit id from the plan, e.g. laoshan.
        #[arg(long)]
        unit: String,
        /// The public key file.
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
        /// Refuse reports received before this time (RFC 3339, or YYYY-MM-DD for midnight UTC).
        #[arg(long, value_name = "TIME")]
        not_before: Option<String>,
        /// Refuse reports received after this time (RFC 3339, or YYYY-MM-DD).
        #[arg(long, value_name = "TIME")]
        not_after: Option<String>,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        plan: PlanArg,
    },
    /// List registered keys.
    List {
        /// Only this unit's keys.
        #[arg(long)]
        unit: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Revoke a key from now on: reports signed with it are refused (retries included).
    Revoke {
        /// The key id (64 hex digits), as `keys list` or `duban-agent keygen` print it.
        key_id: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Subcommand)]
enum ReportsCommand {
    /// List stored reports, newest first.
    List {
        #[arg(long)]
        unit: Option<String>,
        /// Only reports carrying a value of this indicator.
        #[arg(long)]
        indicator: Option<String>,
        /// Only this period (2018-03, 2018Q1, 2018S1, 2018).
        #[arg(long)]
        period: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Subcommand)]
enum ValuesCommand {
    /// Current values per indicator, unit and period.
    Show {
        #[arg(long)]
        indicator: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        plan: PlanArg,
    },
}

#[derive(Debug, Subcommand)]
enum SupervisionCommand {
    /// The 督办通报: for each unit alerts were sent to, its alert cases, answers, median time to
    /// the first answer, extensions asked for, granted and refused, done claims confirmed and
    /// rejected, cases overdue and the highest escalation, counting only what had been
    /// received by --as-of.
    Report {
        /// The date of the report (RFC 3339, or YYYY-MM-DD for midnight UTC) [default: now].
        #[arg(long, value_name = "TIME")]
        as_of: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        plan: PlanArg,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            // sqlx logs PostgreSQL's notices ("relation _sqlx_migrations already exists") at
            // info: not news for an operator.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Plan(PlanCommand::Check { file }) => plan_check(file.as_deref()),
        Command::Plan(PlanCommand::Show { file, json }) => plan_show(file.as_deref(), json),
        Command::Plan(PlanCommand::AlertmanagerConfig {
            file,
            webhook_base,
            receivers,
        }) => match alertmanager_config(file.as_deref(), &webhook_base, receivers.as_deref()) {
            Ok(text) => {
                cli::print(&text);
                ExitCode::SUCCESS
            }
            Err(error) => {
                cli::eprintln(&format!("error: {error:#}"));
                ExitCode::FAILURE
            }
        },
        command => {
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            match runtime.block_on(run(command)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    cli::eprintln(&format!("error: {error:#}"));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use duban_aggregator::plan;

/// duban-aggregator: the central duban service and its admin CLI.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check and show plan files (targets, tasks, units, deadlines).
    #[command(subcommand)]
    Plan(PlanCommand),
}

#[derive(Debug, Subcommand)]
enum PlanCommand {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Plan(PlanCommand::Check { file }) => plan_check(file.as_deref()),
        Command::Plan(PlanCommand::Show { file, json }) => plan_show(file.as_deref(), json),
    }
}

fn load(file: Option<&Path>) -> (String, Result<plan::Loaded, plan::PlanErrors>) {
    match file {
        Some(path) => (path.display().to_string(), plan::load_file(path)),
        None => (
            plan::EMBEDDED_PLAN_NAME.to_owned(),
            plan::load_str(plan::EMBEDDED_PLAN, plan::EMBEDDED_PLAN_NAME),
        ),
    }
}

fn print_errors(errors: &plan::PlanErrors) {
    for error in &errors.errors {
        eprintln!("error: {error}");
    }
    let count = errors.errors.len();
    eprintln!(
        "{count} error{}: the plan is not valid",
        if count == 1 { "" } else { "s" }
    );
}

fn plan_check(file: Option<&Path>) -> ExitCode {
    let (name, result) = load(file);
    match result {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            let p = &loaded.plan;
            println!(
                "{name}: plan {} is valid: {} phases, {} units, {} unit groups, {} indicators, {} tasks ({} milestones), {} tracks ({} phases); {} warning{}",
                p.id,
                p.phases.len(),
                p.units.len(),
                p.groups.len(),
                p.indicators.len(),
                p.tasks.len(),
                p.tasks.iter().map(|t| t.milestones.len()).sum::<usize>(),
                p.tracks.len(),
                p.tracks.iter().map(|t| t.phases.len()).sum::<usize>(),
                loaded.warnings.len(),
                if loaded.warnings.len() == 1 { "" } else { "s" },
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            print_errors(&errors);
            ExitCode::FAILURE
        }
    }
}

fn plan_show(file: Option<&Path>, json: bool) -> ExitCode {
    let (_, result) = load(file);
    match result {
        Ok(loaded) => {
            if json {
                let text = serde_json::to_string_pretty(&plan::show::to_json(&loaded.plan))
                    .expect("plan serializes");
                println!("{text}");
            } else {
                print!("{}", plan::show::render(&loaded.plan));
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            print_errors(&errors);
            ExitCode::FAILURE
        }
    }
}

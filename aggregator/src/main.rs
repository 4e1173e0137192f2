use clap::Parser;

/// duban-aggregator: the central duban service and its admin CLI.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}

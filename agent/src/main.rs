use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// duban-agent: collects plan indicators and task progress, signs reports and delivers them to
/// the duban aggregator.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
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

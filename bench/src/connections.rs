//! Many agents at once (`duban-bench connections`, its own process): one mTLS connection per
//! simulated unit, each with the unit's own certificate, each proving it is live with one signed
//! `Submit`; then all are held open until standard input closes, while `run` reads the
//! aggregator's memory. Prints one JSON line when every connection is up (or refused).

use std::io::Read as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use duban_proto::pb;
use duban_proto::pb::report_service_client::ReportServiceClient;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::load::{channel, sign_reports, unit_id};

#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// gRPC endpoint, e.g. https://127.0.0.1:7443
    #[arg(long)]
    pub endpoint: String,
    /// Directory written by `duban-aggregator dev-ca`.
    #[arg(long)]
    pub certs: PathBuf,
    #[arg(long)]
    pub plan_id: String,
    /// Connections (units `0..count`), each held open.
    #[arg(long)]
    pub count: usize,
    /// Handshakes in progress at once.
    #[arg(long, default_value_t = 64)]
    pub parallel: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Connected {
    /// Connections up whose `Submit` was stored.
    pub connected: u64,
    /// Connections refused or failed during the handshake.
    pub refused: u64,
    /// Connections up whose `Submit` failed or was not stored.
    pub failed_calls: u64,
    /// From the first handshake to the last answer.
    pub seconds: f64,
}

pub async fn run(args: ConnectArgs) -> anyhow::Result<()> {
    let gate = Arc::new(Semaphore::new(args.parallel.max(1)));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for unit in 0..args.count {
        let (gate, endpoint, certs) = (gate.clone(), args.endpoint.clone(), args.certs.clone());
        let report = sign_reports(&args.plan_id, unit, 1, 1, 1, 1).remove(0);
        tasks.spawn(async move {
            let _turn = gate.acquire_owned().await?;
            let Ok(channel) = channel(&endpoint, &certs, &unit_id(unit)).await else {
                return Ok::<_, anyhow::Error>((None, false));
            };
            let stored = ReportServiceClient::new(channel.clone())
                .submit(report)
                .await
                .is_ok_and(|r| r.into_inner().outcome == pb::Outcome::Accepted as i32);
            Ok((Some(channel), stored))
        });
    }
    let mut held = Vec::with_capacity(args.count);
    let mut result = Connected {
        connected: 0,
        refused: 0,
        failed_calls: 0,
        seconds: 0.0,
    };
    while let Some(done) = tasks.join_next().await {
        match done?? {
            (None, _) => result.refused += 1,
            (Some(channel), stored) => {
                held.push(channel);
                if stored {
                    result.connected += 1;
                } else {
                    result.failed_calls += 1;
                }
            }
        }
    }
    result.seconds = started.elapsed().as_secs_f64();
    println!("{}", serde_json::to_string(&result)?);
    // Held until `run` has read the aggregator's memory and closes our standard input.
    tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new())).await??;
    drop(held);
    Ok(())
}

//! In-process signed clients for the scenarios about the aggregator: simulated units that sign
//! reports with known ids and values, send each until it is acknowledged (the same bytes every
//! time, as an agent resends from its outbox), and tell the [`Oracle`] what they sent and what
//! was acknowledged.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use duban_aggregator::store::{AnyStore, NewKey, Store};
use duban_proto::SigningKey;
use duban_proto::pb;
use duban_proto::pb::report_service_client::ReportServiceClient;
use duban_testkit::synthetic::{indicator_id, unit_id};
use tonic::transport::Channel;

use super::oracle::Oracle;
use super::{INDICATORS, PLAN_ID};

/// The signing key of harness unit `index`.
pub fn unit_key(index: usize) -> SigningKey {
    let mut seed = [11u8; 32];
    seed[..8].copy_from_slice(&(index as u64).to_le_bytes());
    SigningKey::from_seed(&seed)
}

pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Registers the keys of units `0..units` at `url` (migrating the database first).
pub fn register_keys(url: &str, units: usize) {
    let url = url.to_owned();
    on_own_runtime(move || async move {
        let store = AnyStore::open(&url)
            .await
            .expect("open the stage's database");
        for i in 0..units {
            let key = unit_key(i);
            store
                .add_key(NewKey {
                    key_id: key.key_id(),
                    unit_id: unit_id(i),
                    public_key: *key.public_key().raw(),
                    not_before_ms: None,
                    not_after_ms: None,
                    added_at_ms: now_ms(),
                })
                .await
                .expect("register a unit's key");
        }
    })
}

/// Runs the future `make` returns to completion on a runtime of its own, on a thread of its
/// own, so that synchronous and async callers alike may use it (the future need not be
/// `Send`: it is made on that thread).
pub fn on_own_runtime<T, F, Fut>(make: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(make())
    })
    .join()
    .expect("the work's thread")
}

/// One simulated unit: its key and its seq counter.
pub struct SimUnit {
    pub index: usize,
    pub unit: String,
    key: SigningKey,
    seq: u64,
}

impl SimUnit {
    pub fn new(index: usize) -> Self {
        SimUnit {
            index,
            unit: unit_id(index),
            key: unit_key(index),
            seq: 0,
        }
    }

    /// The unit's next report: round `round` of its values, every indicator for one month.
    /// Each report's revision is its seq, so the last one signed is the current one.
    pub fn next_report(&mut self, round: u64) -> pb::SignedReport {
        self.seq += 1;
        let month = 1 + round % 12;
        let mut report_id = [0u8; 16];
        report_id[..8].copy_from_slice(&(self.index as u64).to_be_bytes());
        report_id[8..].copy_from_slice(&self.seq.to_be_bytes());
        let report = pb::Report {
            report_id: report_id.to_vec(),
            unit_id: self.unit.clone(),
            key_id: Vec::new(),
            seq: self.seq,
            issued_at_ms: now_ms(),
            audience: PLAN_ID.into(),
            period: format!("2025-{month:02}"),
            values: (0..INDICATORS)
                .map(|i| pb::IndicatorValue {
                    indicator_id: indicator_id(i),
                    value: (self.index * 1_000 + i) as f64 + round as f64 / 8.0,
                    note: String::new(),
                })
                .collect(),
            task_updates: Vec::new(),
            revision: self.seq as u32,
        };
        duban_proto::envelope::bind_and_sign(&self.key, report)
    }
}

/// What the senders met on the way: each gRPC status code (or outcome) and how many times.
#[derive(Debug, Default, Clone)]
pub struct Tally(Arc<Mutex<BTreeMap<String, u64>>>);

impl Tally {
    pub fn add(&self, what: &str) {
        *self.0.lock().unwrap().entry(what.to_owned()).or_default() += 1;
    }

    pub fn get(&self, what: &str) -> u64 {
        self.0.lock().unwrap().get(what).copied().unwrap_or(0)
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap().clone()
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all: Vec<String> = self
            .snapshot()
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        write!(f, "{}", all.join(", "))
    }
}

/// A lazily connected client to `endpoint` (`http://host:port`), with a per-call timeout.
pub fn client(endpoint: &str, timeout: Duration) -> ReportServiceClient<Channel> {
    let channel = Channel::from_shared(endpoint.to_owned())
        .expect("an endpoint")
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_lazy();
    ReportServiceClient::new(channel)
}

/// How a stream of reports is sent.
#[derive(Debug, Clone)]
pub struct Stream {
    /// Where each report goes: one endpoint, or several that all receive every report at
    /// once (replicas racing).
    pub endpoints: Vec<String>,
    pub units: std::ops::Range<usize>,
    /// Reports per unit.
    pub rounds: u64,
    /// Reports per call: 0 for unary `Submit`, else `SubmitBatch` of this many.
    pub batch: usize,
    pub timeout: Duration,
    /// A report not acknowledged by then is left unacknowledged (the oracle says so).
    pub give_up_after: Duration,
    /// Once set, no new report is signed; what was signed is still delivered.
    pub stop: Arc<std::sync::atomic::AtomicBool>,
}

/// Sends the stream: every unit at once, each unit's reports one call after another, each call
/// resent (the same bytes) until its reports are acknowledged. Returns when every report is
/// acknowledged or given up.
pub async fn send(stream: Stream, oracle: Oracle, tally: Tally) {
    let clients: Vec<_> = stream
        .endpoints
        .iter()
        .map(|e| client(e, stream.timeout))
        .collect();
    let mut tasks = Vec::new();
    for index in stream.units.clone() {
        let (clients, oracle, tally, stream) = (
            clients.clone(),
            oracle.clone(),
            tally.clone(),
            stream.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut unit = SimUnit::new(index);
            let per_call = stream.batch.max(1) as u64;
            let mut round = 0;
            while round < stream.rounds && !stream.stop.load(std::sync::atomic::Ordering::SeqCst) {
                let reports: Vec<pb::SignedReport> = (round..(round + per_call).min(stream.rounds))
                    .map(|r| unit.next_report(r))
                    .collect();
                round += reports.len() as u64;
                for r in &reports {
                    oracle.sent(&unit.unit, r);
                }
                deliver(&clients, &unit.unit, &reports, &stream, &oracle, &tally).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("a sender");
    }
}

/// Sends `reports` to every client at once, each until its answer acknowledges them all (or
/// the stream gives up).
async fn deliver(
    clients: &[ReportServiceClient<Channel>],
    unit: &str,
    reports: &[pb::SignedReport],
    stream: &Stream,
    oracle: &Oracle,
    tally: &Tally,
) {
    let deadline = Instant::now() + stream.give_up_after;
    let mut calls = tokio::task::JoinSet::new();
    let taken: Arc<std::sync::atomic::AtomicBool> = Default::default();
    for client in clients {
        let call = Call {
            client: client.clone(),
            unit: unit.to_owned(),
            reports: reports.to_vec(),
            unary: stream.batch == 0,
            oracle: oracle.clone(),
            tally: tally.clone(),
            taken: taken.clone(),
        };
        calls.spawn(call.until_acknowledged(deadline));
    }
    while calls.join_next().await.is_some() {}
}

/// One client's delivery of one call's reports.
struct Call {
    client: ReportServiceClient<Channel>,
    unit: String,
    reports: Vec<pb::SignedReport>,
    unary: bool,
    oracle: Oracle,
    tally: Tally,
    /// Set once one endpoint acknowledged every report: the others stop retrying (a client
    /// of several replicas moves on once one has them).
    taken: Arc<std::sync::atomic::AtomicBool>,
}

impl Call {
    async fn until_acknowledged(mut self, deadline: Instant) {
        let mut attempt = 0u32;
        loop {
            let mut pushback = None;
            match self.once().await {
                Ok(results) => {
                    let mut all = results.len() == self.reports.len();
                    for (report, result) in self.reports.iter().zip(&results) {
                        self.tally.add(result.outcome().as_str_name());
                        match result.outcome() {
                            pb::Outcome::Accepted | pb::Outcome::Duplicate => {
                                self.oracle.acked(&self.unit, report)
                            }
                            _ => {
                                self.tally.add(result.reason().as_str_name());
                                all = false;
                            }
                        }
                    }
                    if all {
                        self.taken.store(true, std::sync::atomic::Ordering::SeqCst);
                        return;
                    }
                }
                Err(status) => {
                    self.tally.add(&format!("{:?}", status.code()));
                    if status.code() == tonic::Code::ResourceExhausted {
                        pushback = status
                            .metadata()
                            .get("grpc-retry-pushback-ms")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<u64>().ok())
                            .map(Duration::from_millis);
                    }
                }
            }
            if self.taken.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            if Instant::now() >= deadline {
                self.tally.add("given up");
                return;
            }
            attempt += 1;
            // Full jitter, 50 ms growing to 1.6 s: an agent's backoff, shorter for tests.
            let ceiling = 50u64 << attempt.min(5);
            let jitter = (now_ms() as u64).wrapping_mul(6364136223846793005) % ceiling;
            tokio::time::sleep(pushback.unwrap_or(Duration::from_millis(jitter))).await;
        }
    }

    async fn once(&mut self) -> Result<Vec<pb::SubmitResult>, tonic::Status> {
        if self.unary {
            let answer = self.client.submit(self.reports[0].clone()).await?;
            Ok(vec![answer.into_inner()])
        } else {
            let request = pb::SubmitBatchRequest {
                reports: self.reports.clone(),
            };
            Ok(self
                .client
                .submit_batch(request)
                .await?
                .into_inner()
                .results)
        }
    }
}

//! Delivery: the outbox's oldest reports, in seq order, one `SubmitBatch` at a time over one
//! tonic channel (mTLS), until acknowledged; and the agent's `Hello` to the centre.
//!
//! Hello comes first, and again every `heartbeat`: it is the agent's heartbeat, it tells the
//! agent whether the centre would accept its reports (key, unit, plan, certificate, clock), and
//! its answer raises the outbox's seq and revision counters above what the centre holds, so
//! that a new outbox never reuses a seq ([`crate::outbox`]).
//!
//! Classification follows docs/PROTOCOL.md:
//! - ACCEPTED, DUPLICATE, PARTIAL: the row leaves the outbox (PARTIAL refusals are logged,
//!   counted and kept for `outbox dead`);
//! - REJECTED for the agent's identity (UNKNOWN_KEY, KEY_REVOKED, KEY_EXPIRED, UNIT_MISMATCH,
//!   UNKNOWN_UNIT, WRONG_AUDIENCE), UNAUTHENTICATED, PERMISSION_DENIED, a TLS handshake either
//!   side refuses, or a Hello that finds problems: the outbox is held (nothing is dead-lettered)
//!   and retried slowly (5 min cap): a person must fix the configuration, the certificate or
//!   the key registration; `duban_agent_delivery_held_auth` says so;
//! - REJECTED with another retryable reason (KEY_NOT_YET_VALID, ISSUED_IN_FUTURE): kept, retried
//!   with backoff; ISSUED_IN_FUTURE for a report issued more than a minute after the agent's
//!   own now (signed while its clock was ahead, put right since): signed again, issued now;
//! - SEQ_REPLAY: the centre holds that seq under another report (the outbox was lost and its
//!   counter could not be carried over): the agent asks the centre for its counters and re-signs
//!   the report under a new seq;
//! - REJECTED otherwise: moved to dead letters with its refused items (kept, shown), and the
//!   reports behind it go on;
//! - UNAVAILABLE, DEADLINE_EXCEEDED and other transport failures: backoff with full jitter
//!   (1 s initial, 60 s cap), failing over to the next endpoint;
//! - RESOURCE_EXHAUSTED: wait the server's `grpc-retry-pushback-ms` (else backoff).

use std::sync::Arc;
use std::time::{Duration, Instant};

use duban_host::clock::Clock;
use duban_proto::pb;
use duban_proto::pb::report_service_client::ReportServiceClient;
use duban_proto::{SigningKey, envelope};
use prost::Message;
use rand::Rng;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::AggregatorConfig;
use crate::metrics::AgentMetrics;
use crate::outbox::{Ack, Outbox, OutboxError, Signer};
use crate::rotate::KeyCell;

mod connect;
mod failure;
mod results;

pub use connect::{call_hello, clients};
pub use failure::{Failure, classify};

pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
pub const BACKOFF_CAP: Duration = Duration::from_secs(60);
pub const AUTH_HOLD_CAP: Duration = Duration::from_secs(300);

/// Reasons that say the agent's identity is wrong: the outbox is held, not dead-lettered,
/// until a person fixes the configuration, the certificate or the key registration.
const IDENTITY_REASONS: [pb::ReasonCode; 6] = [
    pb::ReasonCode::ReasonUnknownKey,
    pb::ReasonCode::ReasonKeyRevoked,
    pb::ReasonCode::ReasonKeyExpired,
    pb::ReasonCode::ReasonUnitMismatch,
    pb::ReasonCode::ReasonUnknownUnit,
    pb::ReasonCode::ReasonWrongAudience,
];

/// What one delivery step did, and so how long to wait before the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to send.
    Idle,
    /// Sent a batch; go again at once.
    Progress { acked: usize, dead: usize },
    /// Wait this long, then try again.
    Wait(Duration),
}

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// Who the agent is: what it signs with and for. The key is replaced in place when a
/// rotation completes ([`crate::rotate`]).
#[derive(Clone)]
pub struct AgentIdentity {
    pub key: KeyCell,
    pub unit: String,
    pub plan: String,
}

impl AgentIdentity {
    /// The signer for `key` (the identity's [`KeyCell::current`], taken once by the caller
    /// for the whole of what it signs).
    pub fn signer<'a>(&'a self, key: &'a SigningKey) -> Signer<'a> {
        Signer {
            key,
            unit: &self.unit,
            audience: &self.plan,
        }
    }
}

/// The centre's answer to a Hello, as the agent uses it.
#[derive(Debug, Clone, PartialEq)]
pub enum HelloOutcome {
    /// The centre would accept this agent's reports; the outbox counters are raised.
    Known(pb::HelloResult),
    /// The centre would refuse them: each problem's code and message.
    Problems(pb::HelloResult),
    /// The call failed (see [`Failure`]).
    Failed(Failure),
}

pub struct Deliverer {
    outbox: Outbox,
    identity: AgentIdentity,
    clock: Arc<dyn Clock>,
    clients: Vec<ReportServiceClient<Channel>>,
    endpoints: Vec<String>,
    current: usize,
    timeout: Duration,
    batch: usize,
    max_batch: usize,
    attempt: u32,
    heartbeat: Duration,
    last_hello: Option<Instant>,
    held: Option<String>,
    /// Whether the outbox's counters are known to be ahead of the centre's.
    synced: bool,
    metrics: AgentMetrics,
    /// The configuration the clients were made from, for [`Self::reload_tls_if_changed`].
    config: AggregatorConfig,
    /// The TLS files' contents last tried, and when they were last read.
    tls_seen: Option<Vec<Vec<u8>>>,
    tls_checked: Instant,
    /// The agent's key file, when a rotation may complete ([`crate::rotate`]).
    key_file: Option<std::path::PathBuf>,
    pending_checked: Option<Instant>,
}

/// How often the TLS files are read to see whether they changed.
pub const TLS_CHECK: Duration = Duration::from_secs(5);

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Deliverer({:?})", self.endpoints)
    }
}

/// Full jitter: a uniform wait in [0, min(cap, initial × 2^attempt)).
pub fn full_jitter(attempt: u32, initial: Duration, cap: Duration) -> Duration {
    let ceiling = initial
        .saturating_mul(2u32.saturating_pow(attempt.min(20)))
        .min(cap);
    Duration::from_millis(rand::thread_rng().gen_range(0..=ceiling.as_millis() as u64))
}

impl Deliverer {
    pub fn new(
        outbox: Outbox,
        config: &AggregatorConfig,
        identity: AgentIdentity,
        clock: Arc<dyn Clock>,
        synced: bool,
        metrics: AgentMetrics,
    ) -> Result<Self, DeliverError> {
        let clients = clients(config, Some(&metrics))?;
        Ok(Deliverer {
            config: config.clone(),
            tls_seen: crate::tls::read_files(config),
            tls_checked: Instant::now(),
            key_file: None,
            pending_checked: None,
            outbox,
            identity,
            clock,
            clients,
            endpoints: config.endpoints.clone(),
            current: 0,
            timeout: config.timeout,
            batch: config.batch_max_reports,
            max_batch: config.batch_max_reports,
            attempt: 0,
            heartbeat: config.heartbeat,
            last_hello: None,
            held: None,
            synced,
            metrics,
        })
    }

    /// Completes a key rotation when the centre knows the key `rotate-key` put beside
    /// `key_file` ([`crate::rotate`]).
    pub fn rotating(mut self, key_file: std::path::PathBuf) -> Self {
        self.key_file = Some(key_file);
        self
    }

    /// Reads the TLS files (at most every [`TLS_CHECK`]); when they changed and hold a usable
    /// CA, certificate and key, new connections use them (the call in flight finishes on the
    /// old connection); otherwise the old material stays in use, the error is logged naming
    /// the file and counted once per change. Returns whether new files were loaded (a wait for
    /// a refused certificate can then end at once).
    pub fn reload_tls_if_changed(&mut self) -> bool {
        if self.tls_checked.elapsed() < TLS_CHECK {
            return false;
        }
        self.tls_checked = Instant::now();
        let Some(files) = &self.config.tls else {
            return false;
        };
        let seen = crate::tls::read_files(&self.config);
        if seen == self.tls_seen {
            return false;
        }
        self.tls_seen = seen;
        let loaded = crate::tls::check_files(files)
            .and_then(|()| clients(&self.config, Some(&self.metrics)).map_err(|e| e.to_string()));
        match loaded {
            Ok(clients) => {
                self.clients = clients;
                self.metrics.tls_reloads.inc();
                self.metrics.tls_reload_failing.set(0);
                self.attempt = 0;
                tracing::info!(cert = %files.cert.display(), "loaded new TLS files; new connections use them");
                true
            }
            Err(error) => {
                self.metrics.tls_reload_errors.inc();
                self.metrics.tls_reload_failing.set(1);
                tracing::error!(%error, "new TLS files not loaded; the ones loaded before stay in use");
                false
            }
        }
    }

    /// Offers the pending key of a rotation to the centre (at most every
    /// [`crate::rotate::PENDING_CHECK`]) and switches to it once the centre knows it.
    /// Returns whether it switched.
    async fn rotate_if_accepted(&mut self) -> bool {
        let Some(key_file) = self.key_file.clone() else {
            return false;
        };
        if self
            .pending_checked
            .is_some_and(|at| at.elapsed() < crate::rotate::PENDING_CHECK)
        {
            return false;
        }
        self.pending_checked = Some(Instant::now());
        let pending = match crate::rotate::read_pending(&key_file) {
            None => {
                self.metrics.key_rotation_pending.set(0);
                return false;
            }
            Some(Err(error)) => {
                self.metrics.key_rotation_pending.set(1);
                tracing::error!(%error, file = %crate::rotate::pending_path(&key_file).display(), "the pending key of a rotation cannot be read by this agent: give it the owner, group and mode of the key file");
                return false;
            }
            Some(Ok(key)) => key,
        };
        self.metrics.key_rotation_pending.set(1);
        let trial = AgentIdentity {
            key: KeyCell::new(pending),
            unit: self.identity.unit.clone(),
            plan: self.identity.plan.clone(),
        };
        let answer = call_hello(
            &mut self.clients[self.current],
            &trial,
            self.clock.now_ms(),
            (0, 0),
            self.timeout,
        )
        .await;
        match answer {
            Ok(result) if result.known && result.problems.is_empty() => {
                let old = self.identity.key.current().key_id();
                match crate::rotate::switch(&key_file, trial.key.current(), &self.identity.key) {
                    Ok(()) => {
                        self.metrics.key_rotation_pending.set(0);
                        tracing::info!(
                            old_key_id = %old,
                            new_key_id = %self.identity.key.current().key_id(),
                            previous = %crate::rotate::previous_path(&key_file).display(),
                            "switched to the new signing key: the centre knows it. Reports already waiting keep the old key's signature; once the outbox has drained, revoke the old key at the centre: duban-aggregator keys revoke {old}"
                        );
                        return true;
                    }
                    Err(error) => {
                        tracing::error!(%error, file = %key_file.display(), "the centre knows the new key, but this agent cannot replace its key file (under systemd: the key's directory must be in ReadWritePaths, docs/AGENT.md); still signing with the old key")
                    }
                }
                false
            }
            Ok(result) => {
                let problems: Vec<String> = result
                    .problems
                    .iter()
                    .map(|p| format!("{}: {}", duban_proto::reasons::name(p.code()), p.message))
                    .collect();
                tracing::info!(
                    new_key_id = %trial.key.current().key_id(),
                    "a key rotation waits for the centre to register the new key ({}); `duban-agent rotate-key` prints the command",
                    problems.join("; ")
                );
                false
            }
            Err(failure) => {
                tracing::debug!(message = %failure.message, "the pending key could not be offered now");
                false
            }
        }
    }

    /// Why delivery is held, while it is: a person must fix something.
    pub fn held(&self) -> Option<&str> {
        self.held.as_deref()
    }

    fn backoff(&mut self, cap: Duration) -> Duration {
        let wait = full_jitter(self.attempt, BACKOFF_INITIAL, cap);
        self.attempt = self.attempt.saturating_add(1);
        self.metrics.retries.inc();
        wait
    }

    fn hold(&mut self, why: String) -> Duration {
        self.metrics.auth_held.set(1);
        let wait = self.backoff(AUTH_HOLD_CAP);
        tracing::error!(endpoint = %self.endpoints[self.current], wait_ms = wait.as_millis() as u64, "DELIVERY HELD, the outbox is kept: {why}");
        self.held = Some(why);
        wait
    }

    fn release(&mut self) {
        if self.held.take().is_some() {
            tracing::info!("the centre accepts this agent again; delivery resumes");
        }
        self.metrics.auth_held.set(0);
    }

    /// Says Hello to the current endpoint: the centre checks the agent's identity, records
    /// its heartbeat and, when all is well, tells the highest seq and revisions it holds,
    /// which raise the outbox counters.
    pub async fn hello(&mut self) -> Result<HelloOutcome, DeliverError> {
        let stats = self.outbox.stats().await?;
        let result = match call_hello(
            &mut self.clients[self.current],
            &self.identity,
            self.clock.now_ms(),
            (
                stats.reports.max(0) as u64,
                stats.dead_letters.max(0) as u64,
            ),
            self.timeout,
        )
        .await
        {
            Ok(result) => result,
            Err(failure) => return Ok(HelloOutcome::Failed(failure)),
        };
        self.last_hello = Some(Instant::now());
        if !result.known {
            return Ok(HelloOutcome::Problems(result));
        }
        let revisions: Vec<(String, u32)> = result
            .revisions
            .iter()
            .map(|r| (r.period.clone(), r.revision))
            .collect();
        let key = self.identity.key.current();
        let (next_seq, signed) = self
            .outbox
            .apply_centre_state(result.max_seq, &revisions, self.identity.signer(&key))
            .await?;
        if !self.synced {
            tracing::info!(
                next_seq,
                centre_max_seq = result.max_seq,
                provisional_reports_signed = signed,
                "the centre told this new outbox where its key's seqs stand; its reports now go out"
            );
        }
        self.synced = true;
        Ok(HelloOutcome::Known(result))
    }

    /// What to do after a failed call: hold, wait the pushback, or back off and fail over.
    fn after_failure(&mut self, failure: &Failure, count: u64) -> Duration {
        self.metrics
            .failed
            .with_label_values(&[failure.label])
            .inc_by(count);
        if failure.hold {
            return self.hold(failure.message.clone());
        }
        if failure.label == "resource_exhausted" {
            let wait = failure
                .pushback
                .unwrap_or_else(|| self.backoff(BACKOFF_CAP));
            tracing::info!(
                endpoint = %self.endpoints[self.current],
                wait_ms = wait.as_millis() as u64,
                "aggregator is busy (RESOURCE_EXHAUSTED); waiting as it asks"
            );
            return wait;
        }
        let wait = self.backoff(BACKOFF_CAP);
        tracing::warn!(endpoint = %self.endpoints[self.current], code = failure.label, message = %failure.message, wait_ms = wait.as_millis() as u64, "delivery failed; will retry");
        if self.clients.len() > 1 {
            self.current = (self.current + 1) % self.clients.len();
        }
        // The next attempt goes on new connections: a connection that a middlebox dropped
        // without a word (nothing answers on it any more, and TCP does not say so) would
        // otherwise take every retry until the process restarts (found by the fault harness's
        // link scenario, a black hole).
        match clients(&self.config, None) {
            Ok(fresh) => self.clients = fresh,
            Err(error) => tracing::warn!(%error, "cannot make new connections; keeping the old"),
        }
        wait
    }

    /// Hello when the outbox is not synced yet, when held, or when the heartbeat is due.
    /// Returns the wait when delivery cannot go on now.
    async fn hello_if_due(&mut self) -> Result<Option<Duration>, DeliverError> {
        let synced = self.synced;
        let due = self
            .last_hello
            .is_none_or(|at| at.elapsed() >= self.heartbeat);
        if synced && !due && self.held.is_none() {
            if self.rotate_if_accepted().await {
                self.last_hello = None;
            }
            return Ok(None);
        }
        match self.hello().await? {
            HelloOutcome::Known(result) => {
                for p in &result.problems {
                    tracing::warn!(
                        code = duban_proto::reasons::name(p.code()),
                        "the centre says: {}",
                        p.message
                    );
                }
                self.release();
                if self.rotate_if_accepted().await {
                    self.last_hello = None;
                }
                Ok(None)
            }
            HelloOutcome::Problems(result) => {
                // The old key may have been revoked before the switch: a pending key the
                // centre knows lets the agent out of the hold at once.
                if self.rotate_if_accepted().await {
                    self.release();
                    self.attempt = 0;
                    self.last_hello = None;
                    return Ok(None);
                }
                let problems: Vec<String> = result
                    .problems
                    .iter()
                    .map(|p| format!("{}: {}", duban_proto::reasons::name(p.code()), p.message))
                    .collect();
                self.metrics
                    .failed
                    .with_label_values(&["held_identity"])
                    .inc();
                Ok(Some(self.hold(format!(
                    "the centre would refuse this agent's reports: {}",
                    problems.join("; ")
                ))))
            }
            HelloOutcome::Failed(failure) => {
                // A heartbeat that fails is not a reason to stop sending when synced: the
                // batch will meet the same failure and be classified on its own.
                if synced && !failure.hold {
                    return Ok(None);
                }
                Ok(Some(self.after_failure(&failure, 0)))
            }
        }
    }

    /// Sends the oldest waiting statement (see [`crate::answer`]) and files the answer; `None`
    /// when none waits.
    async fn statement_step(&mut self) -> Result<Option<Step>, DeliverError> {
        let waiting = self.outbox.statements(Some("waiting")).await?;
        let Some(first) = waiting.first() else {
            return Ok(None);
        };
        let client = &mut self.clients[self.current];
        let answer = tokio::time::timeout(
            self.timeout + Duration::from_secs(1),
            client.respond(first.envelope.clone()),
        )
        .await;
        let status = match answer {
            Ok(Ok(result)) => {
                let said =
                    crate::answer::file(&self.outbox, first.seq, &result.into_inner()).await?;
                return Ok(Some(match said {
                    crate::answer::Said::Waiting(why) => {
                        tracing::warn!(seq = first.seq, case = %first.case_id, %why, "statement not recorded yet; retrying");
                        Step::Wait(self.after_failure(
                            &Failure {
                                label: "other",
                                hold: false,
                                message: why,
                                pushback: None,
                            },
                            1,
                        ))
                    }
                    crate::answer::Said::Refused(reason, message) => {
                        tracing::error!(seq = first.seq, case = %first.case_id, kind = %first.kind, %reason, %message, "statement refused by the centre");
                        Step::Progress { acked: 0, dead: 1 }
                    }
                    crate::answer::Said::Recorded(_) => Step::Progress { acked: 1, dead: 0 },
                }));
            }
            Ok(Err(status)) => status,
            Err(_) => tonic::Status::deadline_exceeded("no answer within the timeout"),
        };
        let failure = classify(&status);
        Ok(Some(Step::Wait(self.after_failure(&failure, 1))))
    }

    /// Sends the oldest batch once and files the answers.
    pub async fn step(&mut self) -> Result<Step, DeliverError> {
        self.reload_tls_if_changed();
        if let Some(wait) = self.hello_if_due().await? {
            return Ok(Step::Wait(wait));
        }
        if let Some(step) = self.statement_step().await? {
            return Ok(step);
        }
        let pending = self.outbox.pending(self.batch).await?;
        if pending.is_empty() {
            return Ok(Step::Idle);
        }
        let request = pb::SubmitBatchRequest {
            reports: pending.iter().map(|p| p.envelope.clone()).collect(),
        };
        let client = &mut self.clients[self.current];
        let answer = tokio::time::timeout(
            self.timeout + Duration::from_secs(1),
            client.submit_batch(request),
        )
        .await;
        let seqs: Vec<i64> = pending.iter().map(|p| p.seq).collect();
        let status = match answer {
            Ok(Ok(response)) => {
                return self
                    .file_results(&pending, response.into_inner().results)
                    .await;
            }
            Ok(Err(status)) => status,
            Err(_) => tonic::Status::deadline_exceeded("no answer within the timeout"),
        };
        self.outbox
            .note_attempt(&seqs, &format!("{}: {}", status.code(), status.message()))
            .await?;
        let code = status.code();
        if matches!(code, tonic::Code::OutOfRange | tonic::Code::InvalidArgument) {
            if pending.len() > 1 {
                self.batch = (self.batch / 2).max(1);
                tracing::warn!(
                    batch = self.batch,
                    message = status.message(),
                    "batch refused as too large; halving it"
                );
            } else {
                self.metrics
                    .failed
                    .with_label_values(&["rejected_permanent"])
                    .inc();
                self.outbox
                    .dead_letter(pending[0].seq, code.description(), status.message(), &[])
                    .await?;
                tracing::error!(
                    seq = pending[0].seq,
                    message = status.message(),
                    "report refused outright; moved to dead letters"
                );
            }
            return Ok(Step::Wait(Duration::ZERO));
        }
        let failure = classify(&status);
        Ok(Step::Wait(
            self.after_failure(&failure, pending.len() as u64),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_jitter_stays_under_the_growing_ceiling_and_the_cap() {
        for attempt in 0..30 {
            let ceiling = (BACKOFF_INITIAL * 2u32.pow(attempt.min(20))).min(BACKOFF_CAP);
            for _ in 0..50 {
                assert!(full_jitter(attempt, BACKOFF_INITIAL, BACKOFF_CAP) <= ceiling);
            }
        }
    }

    #[test]
    fn identity_refusals_hold_and_are_not_retried_as_ordinary_failures() {
        assert!(classify(&tonic::Status::permission_denied("no unit")).hold);
        assert!(classify(&tonic::Status::unauthenticated("no cert")).hold);
        assert!(!classify(&tonic::Status::unavailable("down")).hold);
        let busy = {
            let mut s = tonic::Status::resource_exhausted("busy");
            s.metadata_mut()
                .insert("grpc-retry-pushback-ms", "250".parse().unwrap());
            s
        };
        assert_eq!(classify(&busy).pushback, Some(Duration::from_millis(250)));
    }
}

//! Delivery: the outbox's oldest reports, in seq order, one `SubmitBatch` at a time over one
//! tonic channel (mTLS), until acknowledged.
//!
//! Classification follows docs/PROTOCOL.md:
//! - ACCEPTED, DUPLICATE, PARTIAL: the row leaves the outbox (PARTIAL refusals are logged and
//!   counted);
//! - REJECTED with a retryable reason: kept, retried with backoff;
//! - REJECTED otherwise: moved to dead letters (kept, shown), and the reports behind it go on;
//! - UNAVAILABLE, DEADLINE_EXCEEDED and other transport failures: backoff with full jitter
//!   (1 s initial, 60 s cap), failing over to the next endpoint;
//! - RESOURCE_EXHAUSTED: wait the server's `grpc-retry-pushback-ms` (else backoff);
//! - UNAUTHENTICATED, PERMISSION_DENIED: hold the outbox and retry slowly (5 min cap): a
//!   certificate or key may be fixed later; `duban_agent_delivery_held_auth` says so.

use std::time::Duration;

use duban_proto::pb;
use duban_proto::pb::report_service_client::ReportServiceClient;
use rand::Rng;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::AggregatorConfig;
use crate::metrics::AgentMetrics;
use crate::outbox::{Outbox, OutboxError};

pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
pub const BACKOFF_CAP: Duration = Duration::from_secs(60);
pub const AUTH_HOLD_CAP: Duration = Duration::from_secs(300);

/// Reasons a client keeps and retries (docs/PROTOCOL.md).
const RETRYABLE_REASONS: [pb::ReasonCode; 3] = [
    pb::ReasonCode::ReasonUnknownKey,
    pb::ReasonCode::ReasonKeyNotYetValid,
    pb::ReasonCode::ReasonIssuedInFuture,
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

pub struct Deliverer {
    outbox: Outbox,
    clients: Vec<ReportServiceClient<Channel>>,
    endpoints: Vec<String>,
    current: usize,
    timeout: Duration,
    batch: usize,
    max_batch: usize,
    attempt: u32,
    metrics: AgentMetrics,
}

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

fn pushback(status: &tonic::Status) -> Option<Duration> {
    status
        .metadata()
        .get("grpc-retry-pushback-ms")?
        .to_str()
        .ok()?
        .parse()
        .ok()
        .map(Duration::from_millis)
}

impl Deliverer {
    pub fn new(
        outbox: Outbox,
        config: &AggregatorConfig,
        metrics: AgentMetrics,
    ) -> Result<Self, DeliverError> {
        let tls = match &config.tls {
            None => None,
            Some(files) => {
                let read = |p: &std::path::Path| {
                    std::fs::read(p)
                        .map_err(|e| DeliverError::Tls(format!("cannot read {}: {e}", p.display())))
                };
                let cert = read(&files.cert)?;
                if let Some(expiry) = crate::tls::certificate_expiry(&cert) {
                    metrics.client_cert_expiry_timestamp_seconds.set(expiry);
                }
                let mut tls = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(read(&files.ca)?))
                    .identity(Identity::from_pem(cert, read(&files.key)?));
                if let Some(name) = &files.server_name {
                    tls = tls.domain_name(name.clone());
                }
                Some(tls)
            }
        };
        let mut clients = Vec::new();
        for endpoint in &config.endpoints {
            let mut e = Endpoint::from_shared(endpoint.clone())
                .map_err(|e| DeliverError::Tls(format!("bad endpoint {endpoint}: {e}")))?
                .connect_timeout(Duration::from_secs(10))
                .timeout(config.timeout);
            if let Some(tls) = &tls {
                e = e
                    .tls_config(tls.clone())
                    .map_err(|e| DeliverError::Tls(e.to_string()))?;
            }
            clients.push(
                ReportServiceClient::new(e.connect_lazy()).max_decoding_message_size(16 << 20),
            );
        }
        Ok(Deliverer {
            outbox,
            clients,
            endpoints: config.endpoints.clone(),
            current: 0,
            timeout: config.timeout,
            batch: config.batch_max_reports,
            max_batch: config.batch_max_reports,
            attempt: 0,
            metrics,
        })
    }

    fn backoff(&mut self, cap: Duration) -> Duration {
        let wait = full_jitter(self.attempt, BACKOFF_INITIAL, cap);
        self.attempt = self.attempt.saturating_add(1);
        self.metrics.retries.inc();
        wait
    }

    /// Sends the oldest batch once and files the answers.
    pub async fn step(&mut self) -> Result<Step, DeliverError> {
        let pending = self.outbox.pending(self.batch).await?;
        if pending.is_empty() {
            return Ok(Step::Idle);
        }
        let request = pb::SubmitBatchRequest {
            reports: pending.iter().map(|p| p.envelope.clone()).collect(),
        };
        let endpoint = self.endpoints[self.current].clone();
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
        let count = pending.len() as u64;
        let code = status.code();
        let wait = match code {
            tonic::Code::ResourceExhausted => {
                self.metrics
                    .failed
                    .with_label_values(&["resource_exhausted"])
                    .inc_by(count);
                let wait = pushback(&status).unwrap_or_else(|| self.backoff(BACKOFF_CAP));
                tracing::info!(
                    endpoint,
                    wait_ms = wait.as_millis() as u64,
                    "aggregator is busy (RESOURCE_EXHAUSTED); waiting as it asks"
                );
                wait
            }
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                let label = if code == tonic::Code::Unauthenticated {
                    "unauthenticated"
                } else {
                    "permission_denied"
                };
                self.metrics
                    .failed
                    .with_label_values(&[label])
                    .inc_by(count);
                self.metrics.auth_held.set(1);
                let wait = self.backoff(AUTH_HOLD_CAP);
                tracing::error!(endpoint, code = ?code, message = status.message(), wait_ms = wait.as_millis() as u64, "the aggregator refuses this agent's identity; holding the outbox (check the client certificate and the registered key)");
                wait
            }
            tonic::Code::OutOfRange | tonic::Code::InvalidArgument if pending.len() > 1 => {
                self.batch = (self.batch / 2).max(1);
                tracing::warn!(
                    endpoint,
                    batch = self.batch,
                    message = status.message(),
                    "batch refused as too large; halving it"
                );
                Duration::ZERO
            }
            tonic::Code::OutOfRange | tonic::Code::InvalidArgument => {
                self.metrics
                    .failed
                    .with_label_values(&["rejected_permanent"])
                    .inc();
                self.outbox
                    .dead_letter(pending[0].seq, code.description(), status.message())
                    .await?;
                tracing::error!(
                    seq = pending[0].seq,
                    message = status.message(),
                    "report refused outright; moved to dead letters"
                );
                Duration::ZERO
            }
            _ => {
                let label = match code {
                    tonic::Code::Unavailable => "unavailable",
                    tonic::Code::DeadlineExceeded => "deadline_exceeded",
                    _ => "other",
                };
                self.metrics
                    .failed
                    .with_label_values(&[label])
                    .inc_by(count);
                let wait = self.backoff(BACKOFF_CAP);
                tracing::warn!(endpoint, code = ?code, message = status.message(), wait_ms = wait.as_millis() as u64, "delivery failed; will retry");
                if self.clients.len() > 1 {
                    self.current = (self.current + 1) % self.clients.len();
                }
                wait
            }
        };
        Ok(Step::Wait(wait))
    }

    async fn file_results(
        &mut self,
        pending: &[crate::outbox::Pending],
        results: Vec<pb::SubmitResult>,
    ) -> Result<Step, DeliverError> {
        self.metrics.auth_held.set(0);
        self.metrics
            .last_success_timestamp_seconds
            .set(jiff::Timestamp::now().as_second());
        let mut acked = Vec::new();
        let mut dead = 0;
        let mut retry = false;
        for (row, result) in pending.iter().zip(&results) {
            match result.outcome() {
                pb::Outcome::Accepted | pb::Outcome::Duplicate | pb::Outcome::Partial => {
                    let label = match result.outcome() {
                        pb::Outcome::Accepted => "accepted",
                        pb::Outcome::Duplicate => "duplicate",
                        _ => "partial",
                    };
                    self.metrics.sent.with_label_values(&[label]).inc();
                    for refusal in &result.refusals {
                        tracing::warn!(seq = row.seq, index = refusal.index, code = refusal.code().as_str_name(), message = %refusal.message, "the aggregator refused an item of a stored report");
                    }
                    acked.push(row.seq);
                }
                _ if RETRYABLE_REASONS.contains(&result.reason()) => {
                    self.metrics
                        .failed
                        .with_label_values(&["rejected_retryable"])
                        .inc();
                    tracing::warn!(seq = row.seq, reason = result.reason().as_str_name(), message = %result.message, "refused for now; will retry");
                    self.outbox
                        .note_attempt(&[row.seq], &result.message)
                        .await?;
                    retry = true;
                }
                _ => {
                    self.metrics
                        .failed
                        .with_label_values(&["rejected_permanent"])
                        .inc();
                    tracing::error!(seq = row.seq, reason = result.reason().as_str_name(), message = %result.message, "refused permanently; moved to dead letters (duban-agent outbox dead)");
                    self.outbox
                        .dead_letter(row.seq, result.reason().as_str_name(), &result.message)
                        .await?;
                    dead += 1;
                }
            }
        }
        if results.len() < pending.len() {
            tracing::error!(
                sent = pending.len(),
                answered = results.len(),
                "the aggregator answered fewer results than reports; the rest stay in the outbox"
            );
        }
        self.outbox.ack(&acked).await?;
        self.batch = self.max_batch;
        if retry {
            return Ok(Step::Wait(self.backoff(BACKOFF_CAP)));
        }
        self.attempt = 0;
        Ok(Step::Progress {
            acked: acked.len(),
            dead,
        })
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
}

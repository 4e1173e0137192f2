//! The gRPC `ReportService`: the edge where wire types meet the ingest path.
//!
//! Whole-call failures are mapped here and only here: a store failure is `UNAVAILABLE` (agents
//! retry), the concurrency limit is `RESOURCE_EXHAUSTED` with a `grpc-retry-pushback-ms`
//! trailer, so is the per-unit rate limit ([`limit`]), a missing or foreign client certificate is `UNAUTHENTICATED` or
//! `PERMISSION_DENIED`, and a bad batch size is `INVALID_ARGUMENT`.

pub mod convert;
pub mod identity;
pub mod limit;

use std::sync::Arc;

use duban_proto::pb;
use duban_proto::pb::report_service_server::ReportService;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use crate::app::App;
use crate::ingest::Ingestor;
use crate::keys::KeyRegistry;
use crate::metrics::Metrics;
use limit::{RateLimit, UnitLimiter};

/// Most reports in one `SubmitBatch`.
pub const MAX_BATCH: usize = 1000;
/// Largest gRPC message accepted.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;
/// The delay suggested to a client turned away at the concurrency limit.
pub const RETRY_PUSHBACK_MS: u64 = 1000;

pub struct ReportServer {
    ingestor: Ingestor,
    metrics: Metrics,
    in_flight: Arc<Semaphore>,
    require_client_identity: bool,
    limiter: Option<Arc<UnitLimiter>>,
    keys: Arc<KeyRegistry>,
}

impl ReportServer {
    pub fn new(
        app: &App,
        max_in_flight: usize,
        require_client_identity: bool,
        rate_limit: Option<RateLimit>,
    ) -> Self {
        ReportServer {
            ingestor: Ingestor::new(app),
            metrics: app.metrics.clone(),
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            require_client_identity,
            limiter: rate_limit.map(|limit| Arc::new(UnitLimiter::new(limit, app.metrics.clone()))),
            keys: app.keys.clone(),
        }
    }

    /// The per-unit limiter, if any (for its housekeeping).
    pub fn limiter(&self) -> Option<Arc<UnitLimiter>> {
        self.limiter.clone()
    }

    /// Charges `cost` to the calling unit's bucket: the unit of its client certificate, or,
    /// without TLS, the unit its first envelope's key is registered to (`unregistered` when it
    /// is none: those calls share one bucket, and are refused anyway).
    fn limit(
        &self,
        cert_unit: Option<&str>,
        first: Option<&pb::SignedReport>,
        cost: usize,
    ) -> Result<(), Status> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let unit = match cert_unit {
            Some(unit) => unit.to_owned(),
            None => first
                .and_then(|report| duban_proto::KeyId::from_slice(&report.key_id).ok())
                .and_then(|key_id| self.keys.lookup(&key_id))
                .map(|key| key.unit_id)
                .unwrap_or_else(|| "unregistered".to_owned()),
        };
        limiter.check(&unit, cost)
    }

    fn client_unit<T>(&self, request: &Request<T>) -> Result<Option<String>, Status> {
        if !self.require_client_identity {
            return Ok(None);
        }
        let certs = request
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        identity::unit_of_certificate(leaf)
            .map(Some)
            .map_err(|e| Status::permission_denied(e.to_string()))
    }

    async fn handle(
        &self,
        reports: Vec<pb::SignedReport>,
        unit: Option<String>,
    ) -> Result<Vec<pb::SubmitResult>, Status> {
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            self.metrics.overloaded.inc();
            let mut status = Status::resource_exhausted(
                "the aggregator is at its concurrency limit; retry after the pushback delay",
            );
            status.metadata_mut().insert(
                "grpc-retry-pushback-ms",
                RETRY_PUSHBACK_MS.to_string().parse().expect("ascii"),
            );
            return Err(status);
        };
        let _slot = Slot::taken(permit, &self.metrics.in_flight);
        // Charged once the call has a slot: a call turned away at the concurrency limit costs
        // its unit nothing.
        self.limit(unit.as_deref(), reports.first(), reports.len())?;
        let results =
            self.ingestor.submit(reports, unit).await.map_err(|e| {
                Status::unavailable(format!("the store is unavailable; retry: {e}"))
            })?;
        Ok(results.into_iter().map(convert::result).collect())
    }
}

#[tonic::async_trait]
impl ReportService for ReportServer {
    async fn submit(
        &self,
        request: Request<pb::SignedReport>,
    ) -> Result<Response<pb::SubmitResult>, Status> {
        let unit = self.client_unit(&request)?;
        let mut results = self.handle(vec![request.into_inner()], unit).await?;
        Ok(Response::new(results.pop().expect("one result per report")))
    }

    async fn submit_batch(
        &self,
        request: Request<pb::SubmitBatchRequest>,
    ) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        let unit = self.client_unit(&request)?;
        let reports = request.into_inner().reports;
        if reports.is_empty() || reports.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "a batch holds 1 to {MAX_BATCH} reports, not {}",
                reports.len()
            )));
        }
        let results = self.handle(reports, unit).await?;
        Ok(Response::new(pb::SubmitBatchResponse { results }))
    }

    async fn hello(
        &self,
        request: Request<pb::SignedReport>,
    ) -> Result<Response<pb::HelloResult>, Status> {
        let unit = self.client_unit(&request)?;
        let request = request.into_inner();
        self.limit(unit.as_deref(), Some(&request), 1)?;
        let answer =
            self.ingestor.hello(request, unit).await.map_err(|e| {
                Status::unavailable(format!("the store is unavailable; retry: {e}"))
            })?;
        Ok(Response::new(convert::hello(answer)))
    }

    async fn respond(
        &self,
        request: Request<pb::SignedReport>,
    ) -> Result<Response<pb::SubmitResult>, Status> {
        let unit = self.client_unit(&request)?;
        let request = request.into_inner();
        self.limit(unit.as_deref(), Some(&request), 1)?;
        let result =
            self.ingestor.respond(request, unit).await.map_err(|e| {
                Status::unavailable(format!("the store is unavailable; retry: {e}"))
            })?;
        Ok(Response::new(convert::result(result)))
    }

    async fn open_alerts(
        &self,
        request: Request<pb::SignedReport>,
    ) -> Result<Response<pb::AlertList>, Status> {
        let unit = self.client_unit(&request)?;
        let request = request.into_inner();
        self.limit(unit.as_deref(), Some(&request), 1)?;
        let list = self
            .ingestor
            .open_alerts(request, unit)
            .await
            .map_err(|e| Status::unavailable(format!("the store is unavailable; retry: {e}")))?;
        if !list.problems.is_empty() {
            return Err(Status::permission_denied(list.problems.join("; ")));
        }
        Ok(Response::new(convert::alert_list(list)))
    }
}

/// One of the `--max-in-flight` slots, counted in `duban_requests_in_flight` while held (also
/// when the call is cancelled mid-way and its future dropped).
struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    gauge: prometheus::IntGauge,
}

impl Slot {
    fn taken(permit: tokio::sync::OwnedSemaphorePermit, gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        Slot {
            _permit: permit,
            gauge: gauge.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

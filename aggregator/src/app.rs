//! What the running aggregator's parts share: the plan, the store, the clock, the key registry
//! and the metrics. [`crate::serve::run`] builds one and hands it to the gRPC service (through
//! the ingest path), the HTTP side and the alert evaluator; none of them reaches into another.

use std::sync::Arc;

use crate::clock::Clock;
use crate::keys::KeyRegistry;
use crate::metrics::Metrics;
use crate::plan::Plan;
use crate::progress::Progress;
use crate::store::{AnyStore, StoreError};

#[derive(Clone)]
pub struct App {
    pub plan: Arc<Plan>,
    pub store: AnyStore,
    pub clock: Arc<dyn Clock>,
    pub keys: Arc<KeyRegistry>,
    pub metrics: Metrics,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "App(plan {}, {})", self.plan.id, self.store.backend())
    }
}

impl App {
    /// The clock's now.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Progress at `now_ms`, from what the store holds.
    pub async fn progress_at(&self, now_ms: i64) -> Result<Progress, StoreError> {
        crate::store::progress_at(&self.store, &self.plan, now_ms).await
    }
}

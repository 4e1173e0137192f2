//! What the running aggregator's parts share: the plan, the store, the clock, the key registry
//! and the metrics. [`crate::serve::run`] builds one and hands it to the gRPC service (through
//! the ingest path), the HTTP side and the alert evaluator; none of them reaches into another.

use std::sync::Arc;

use crate::clock::Clock;
use crate::keys::KeyRegistry;
use crate::metrics::Metrics;
use crate::plan::Plan;
use crate::progress::{Progress, Snapshot};
use crate::store::{AnyStore, Store, StoreError, WriteMarker};

#[derive(Clone)]
pub struct App {
    pub plan: Arc<Plan>,
    pub store: AnyStore,
    pub clock: Arc<dyn Clock>,
    pub keys: Arc<KeyRegistry>,
    pub metrics: Metrics,
    /// The last snapshot and progress, for `/metrics` and `/api/v1/progress`.
    pub views: Arc<ViewCache>,
}

/// How long, on the clock, a computed view is reused while nothing is written: progress
/// depends on the time too (deadlines pass), so it is recomputed at least this often.
pub const VIEW_CLOCK_MS: i64 = 10_000;

/// The snapshot and progress computed at one write marker and time.
#[derive(Debug)]
pub struct View {
    pub marker: WriteMarker,
    pub at_ms: i64,
    pub snapshot: Snapshot,
    pub progress: Progress,
}

/// The last [`View`], reused while the store's [`WriteMarker`] is unchanged and the clock has
/// moved less than [`VIEW_CLOCK_MS`]; one computation at a time, so that scrapes arriving
/// together share it.
#[derive(Debug, Default)]
pub struct ViewCache {
    last: tokio::sync::Mutex<Option<Arc<View>>>,
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

    /// The snapshot and progress now: the last computed, when nothing was written since and
    /// the clock moved less than [`VIEW_CLOCK_MS`] (never backwards), else computed afresh.
    pub async fn view(&self) -> Result<Arc<View>, StoreError> {
        let mut last = self.views.last.lock().await;
        // Read before the snapshot: a write landing in between leaves a view newer than its
        // marker, which the next call recomputes; never one older.
        let marker = self.store.write_marker().await?;
        let now = self.now_ms();
        if let Some(view) = last.as_ref()
            && view.marker == marker
            && (0..VIEW_CLOCK_MS).contains(&(now - view.at_ms))
        {
            return Ok(view.clone());
        }
        let started = std::time::Instant::now();
        let snapshot = crate::store::snapshot(&self.store, &self.plan, now).await?;
        let progress = crate::progress::compute(&self.plan, &snapshot, now);
        self.metrics
            .progress_seconds
            .observe(started.elapsed().as_secs_f64());
        let view = Arc::new(View {
            marker,
            at_ms: now,
            snapshot,
            progress,
        });
        *last = Some(view.clone());
        Ok(view)
    }
}

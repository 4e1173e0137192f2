//! What the running aggregator's parts share: the plan, the store, the clock, the key registry
//! and the metrics. [`crate::serve::run`] builds one and hands it to the gRPC service (through
//! the ingest path), the HTTP side and the alert evaluator; none of them reaches into another.

use std::sync::Arc;

use crate::clock::Clock;
use crate::keys::KeyRegistry;
use crate::metrics::Metrics;
use crate::plan::Plan;
use crate::progress::{Changes, Computation, Progress, Snapshot};
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

/// How long a snapshot is kept (reused, or updated with what changed) on PostgreSQL before it
/// is read whole again: replicas commit concurrently, and a transaction that took its ids
/// before another's but committed after it leaves the marker unmoved and its rows behind the
/// marker the next changes are read from; they are read at the latest this long after.
pub const SNAPSHOT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// The snapshot and progress computed at one write marker and time.
#[derive(Debug)]
pub struct View {
    pub marker: WriteMarker,
    pub at_ms: i64,
    /// Shared by the views computed while nothing was written. It holds every statement
    /// stored, whatever its time; progress counts those received by `at_ms`.
    pub snapshot: Arc<Snapshot>,
    /// When the snapshot was last read whole, on the machine's clock (see [`SNAPSHOT_MAX_AGE`]).
    pub read: std::time::Instant,
    pub progress: Progress,
}

/// The last [`View`], shared by `/metrics`, the API, `OpenAlerts` and the alert evaluator: one
/// computation at a time, so that callers arriving together share it, and of the stored rows
/// only those written since read again (see [`ViewCache::view`] for the rest).
#[derive(Debug, Default)]
pub struct ViewCache {
    last: tokio::sync::Mutex<Option<Arc<View>>>,
}

impl ViewCache {
    /// The view at `now_ms` (or at the last view's time, for a caller that waited for it:
    /// see [`now_after_wait`]). The last one whole when the store's [`WriteMarker`] is unchanged
    /// and the clock moved less than `max_age_ms` (never backwards); else progress computed
    /// afresh at `now_ms`, from the last snapshot updated with what was written since (the
    /// current rows of later reports, the statements when one was added, the outages always),
    /// or from the store whole: the first time, when the marker went back, and on a store
    /// whose ids do not follow commits once the snapshot is [`SNAPSHOT_MAX_AGE`] old.
    pub async fn view(
        &self,
        store: &AnyStore,
        plan: &Plan,
        metrics: &Metrics,
        now_ms: i64,
        max_age_ms: i64,
    ) -> Result<Arc<View>, StoreError> {
        let asked = std::time::Instant::now();
        let mut last = self.last.lock().await;
        let waited_ms = i64::try_from(asked.elapsed().as_millis()).unwrap_or(i64::MAX);
        let now_ms = now_after_wait(now_ms, last.as_ref().map(|view| view.at_ms), waited_ms);
        // Read before the snapshot: a write landing in between leaves a view newer than its
        // marker, which the next call reads again (idempotent: a changed row replaces the row
        // of its key); never one older.
        let marker = store.write_marker().await?;
        if let Some(view) = last.as_ref().filter(|view| view.marker == marker)
            && (0..max_age_ms).contains(&(now_ms - view.at_ms))
        {
            return Ok(view.clone());
        }
        let started = std::time::Instant::now();
        let base = last.as_ref().filter(|view| {
            view.marker.reports <= marker.reports
                && view.marker.statements <= marker.statements
                && (store.ids_follow_commits() || view.read.elapsed() < SNAPSHOT_MAX_AGE)
        });
        let (snapshot, read, how, progress, computation) = match base {
            // Every statement, not only those received by `now_ms`: the snapshot may be
            // reused at a later now, and a statement committed while this caller waited for
            // the cache would otherwise be left out of every view until the next write.
            None => {
                let snapshot =
                    crate::store::snapshot_with_statements_until(store, plan, now_ms, i64::MAX)
                        .await?;
                let progress = crate::progress::compute(plan, &snapshot, now_ms);
                (
                    Arc::new(snapshot),
                    started,
                    "whole",
                    progress,
                    Computation::Whole,
                )
            }
            Some(view) => {
                let (since, read) = (view.marker, view.read);
                // An open outage grows with the clock: read at every computation.
                let outages = store.outages(now_ms).await?;
                let unchanged = since == marker && outages == view.snapshot.outages;
                let changed = if marker.reports != since.reports {
                    Some(store.changed_after(&plan.id, since.reports).await?)
                } else {
                    None
                };
                let statements = if marker.statements != since.statements {
                    Some(store.statements(&plan.id, i64::MAX).await?)
                } else {
                    None
                };
                // Taken, not copied, unless a caller still holds the last view (the alert
                // evaluation deriving its alerts, a scrape rendering): then its progress is
                // copied and the copy updated, its obligations shared until a changed value
                // touches them (then copied too): a fraction of a whole computation.
                let last = last.take().expect("the base is the last view");
                let (snapshot, previous) = match Arc::try_unwrap(last) {
                    Ok(view) => (view.snapshot, view.progress),
                    Err(shared) => (shared.snapshot.clone(), shared.progress.clone()),
                };
                let (snapshot, changes, how) = if unchanged {
                    (snapshot, Changes::default(), "reused")
                } else {
                    let mut snapshot = Arc::unwrap_or_clone(snapshot);
                    snapshot.outages = outages;
                    let changes = match changed {
                        Some((values, tasks)) => snapshot.apply_changes(values, tasks),
                        None => Changes::default(),
                    };
                    if let Some(statements) = statements {
                        snapshot.statements = statements;
                    }
                    (Arc::new(snapshot), changes, "changes")
                };
                let (progress, computation) =
                    crate::progress::update(plan, &snapshot, previous, &changes, now_ms);
                (snapshot, read, how, progress, computation)
            }
        };
        metrics
            .progress_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.progress_reads.with_label_values(&[how]).inc();
        metrics
            .progress_computations
            .with_label_values(&[computation.name()])
            .inc();
        let view = Arc::new(View {
            marker,
            at_ms: now_ms,
            snapshot,
            read,
            progress,
        });
        *last = Some(view.clone());
        Ok(view)
    }
}

/// The time a caller of [`ViewCache::view`] gets a view at: the one it asked for, unless it
/// read its clock, then waited `waited_ms` for the cache while the last view was computed at
/// a slightly later time; then that view's time, as if it had read the clock after the wait.
/// Progress at a time before the last view's is computed whole, not updated, and a caller
/// queued behind a computation of many seconds would otherwise pay a second one. A clock that
/// went back by more than the wait is taken as it is.
fn now_after_wait(now_ms: i64, last_at_ms: Option<i64>, waited_ms: i64) -> i64 {
    match last_at_ms {
        Some(at_ms) if now_ms < at_ms && at_ms - now_ms <= waited_ms => at_ms,
        _ => now_ms,
    }
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

    /// The snapshot and progress now, for `/metrics` and the API: reused whole while nothing
    /// was written and the clock moved less than [`VIEW_CLOCK_MS`] (see [`ViewCache::view`]).
    pub async fn view(&self) -> Result<Arc<View>, StoreError> {
        self.views
            .view(
                &self.store,
                &self.plan,
                &self.metrics,
                self.now_ms(),
                VIEW_CLOCK_MS,
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewStatement;

    #[test]
    fn a_caller_that_waited_for_a_later_view_gets_its_time() {
        // Asked 40 ms before the last view, after waiting 50 ms for it: the view's time.
        assert_eq!(now_after_wait(1_000, Some(1_040), 50), 1_040);
        assert_eq!(now_after_wait(1_000, Some(1_050), 50), 1_050);
        // Further back than it waited: a clock that went back, taken as it is.
        assert_eq!(now_after_wait(1_000, Some(1_051), 50), 1_000);
        assert_eq!(now_after_wait(1_000, Some(1_001), 0), 1_000);
        // At or after the last view, or with none: its own time.
        assert_eq!(now_after_wait(1_000, Some(1_000), 50), 1_000);
        assert_eq!(now_after_wait(1_000, Some(900), 50), 1_000);
        assert_eq!(now_after_wait(1_000, None, 50), 1_000);
    }

    fn statement(seq: i64) -> NewStatement {
        NewStatement {
            plan_id: crate::plan::embedded().plan.id,
            unit_id: "laoshan".into(),
            statement_id: vec![seq as u8; 16],
            key_id: vec![7; 32],
            seq,
            issued_at_ms: 1_000,
            received_at_ms: 1_000,
            case_id: "report/pct-applications/2018Q1/laoshan".into(),
            kind: "acknowledge".into(),
            date: "2018-06-30".into(),
            note: String::new(),
            reference: String::new(),
            about_unit: String::new(),
            payload: format!("statement {seq}").into_bytes(),
            signature: vec![0; 64],
        }
    }

    /// A fresh SQLite store (in the returned directory), the Qingdao plan, and an empty cache.
    async fn fixture() -> (tempfile::TempDir, AnyStore, Plan, Metrics, ViewCache) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("v.db").display());
        let store = AnyStore::open(&url).await.unwrap();
        let plan = crate::plan::embedded().plan;
        (dir, store, plan, Metrics::new("test"), ViewCache::default())
    }

    #[tokio::test]
    async fn a_view_is_reused_until_a_write_and_its_snapshot_while_only_the_clock_moves() {
        let (_dir, store, plan, metrics, views) = fixture().await;
        let now = 1_600_000_000_000;
        // The centre serving throughout, so that the outages do not move with the clock.
        store.beat("centre", 0, i64::MAX / 4).await.unwrap();
        let first = views
            .view(&store, &plan, &metrics, now, 10_000)
            .await
            .unwrap();
        let again = views
            .view(&store, &plan, &metrics, now + 9_999, 10_000)
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again), "within the age: the same view");
        let later = views
            .view(&store, &plan, &metrics, now + 10_000, 10_000)
            .await
            .unwrap();
        assert!(
            !Arc::ptr_eq(&first, &later),
            "past the age: progress afresh"
        );
        assert_eq!(later.at_ms, now + 10_000);
        assert!(
            Arc::ptr_eq(&first.snapshot, &later.snapshot),
            "nothing written: the stored rows are not read again"
        );
        store.add_statement(&statement(1)).await.unwrap();
        let written = views
            .view(&store, &plan, &metrics, now + 10_001, 10_000)
            .await
            .unwrap();
        assert!(!Arc::ptr_eq(&later.snapshot, &written.snapshot));
        assert_eq!(written.snapshot.statements.len(), 1, "the write is read");
        // An evaluation asks for progress at its own now (no age): computed, the rows kept.
        let evaluated = views
            .view(&store, &plan, &metrics, now + 10_001, 0)
            .await
            .unwrap();
        assert!(!Arc::ptr_eq(&written, &evaluated));
        assert!(Arc::ptr_eq(&written.snapshot, &evaluated.snapshot));
    }

    #[tokio::test]
    async fn a_statement_received_after_a_views_now_counts_once_the_clock_reaches_it() {
        let (_dir, store, plan, metrics, views) = fixture().await;
        store.beat("centre", 0, i64::MAX / 4).await.unwrap();
        // A caller that read the clock at `now` and waited while a statement was received
        // at `now + 5 s`: its view does not count the statement yet...
        let now = 1_600_000_000_000;
        let mut late = statement(1);
        late.received_at_ms = now + 5_000;
        late.issued_at_ms = now + 5_000;
        store.add_statement(&late).await.unwrap();
        let early = views.view(&store, &plan, &metrics, now, 0).await.unwrap();
        assert!(early.progress.cases.is_empty());
        // ...and a later view, nothing written since, does: from the same rows.
        let later = views
            .view(&store, &plan, &metrics, now + 20_000, 0)
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&early.snapshot, &later.snapshot));
        assert!(
            later.progress.cases.contains_key(&late.case_id),
            "the statement counts from its receipt on"
        );
    }

    /// Laoshan's PCT applications for 2018Q1, report `seq`, signed with a key the store holds.
    async fn stored_report(store: &AnyStore, seq: u64, value: f64) {
        use crate::store::{NewKey, NewReport, NewValue, StoreOutcome};
        use sha2::Digest;
        let key = duban_proto::SigningKey::from_seed(&[9; 32]);
        if seq == 1 {
            store
                .add_key(NewKey {
                    key_id: key.key_id(),
                    unit_id: "laoshan".into(),
                    public_key: *key.public_key().raw(),
                    not_before_ms: None,
                    not_after_ms: None,
                    added_at_ms: 1,
                })
                .await
                .unwrap();
        }
        let payload = format!("report {seq}").into_bytes();
        let outcomes = store
            .ingest(vec![NewReport {
                plan_id: "qingdao-ip-2017".into(),
                unit_id: "laoshan".into(),
                report_id: [seq as u8; 16],
                key_id: key.key_id(),
                seq,
                issued_at_ms: 1_000,
                received_at_ms: 2_000,
                period: "2018Q1".into(),
                revision: seq as u32,
                payload_sha256: sha2::Sha256::digest(&payload).into(),
                payload,
                payload_type: duban_proto::PAYLOAD_TYPE.into(),
                signature: vec![7; 64],
                values: vec![NewValue {
                    indicator_id: "pct-applications".into(),
                    value,
                    note: String::new(),
                }],
                task_updates: Vec::new(),
                refused_count: 0,
            }])
            .await
            .unwrap();
        assert!(
            matches!(outcomes[..], [StoreOutcome::Stored { .. }]),
            "{outcomes:?}"
        );
    }

    #[tokio::test]
    async fn a_view_still_held_elsewhere_is_updated_from_a_copy_not_computed_whole() {
        let (_dir, store, plan, metrics, views) = fixture().await;
        store.beat("centre", 0, i64::MAX / 4).await.unwrap();
        let now = 1_600_000_000_000;
        stored_report(&store, 1, 10.0).await;
        let computations = |how: &str| {
            metrics
                .progress_computations
                .with_label_values(&[how])
                .get()
        };
        // Held, as the alert evaluation holds the view while it derives its alerts.
        let held = views.view(&store, &plan, &metrics, now, 0).await.unwrap();
        assert_eq!((computations("whole"), computations("updated")), (1, 0));
        stored_report(&store, 2, 20.0).await;
        let next = views
            .view(&store, &plan, &metrics, now + 1, 0)
            .await
            .unwrap();
        assert_eq!(
            (computations("whole"), computations("updated")),
            (1, 1),
            "the held view's progress copied and updated"
        );
        let whole = crate::progress::compute(&plan, &next.snapshot, now + 1);
        let json = |progress: &Progress| serde_json::to_value(progress).unwrap();
        assert_eq!(json(&next.progress), json(&whole));
        let value = |view: &View| {
            view.snapshot
                .values
                .iter()
                .find(|v| v.indicator_id == "pct-applications")
                .map(|v| v.value)
        };
        assert_eq!(value(&next), Some(20.0));
        assert_eq!(value(&held), Some(10.0), "the held view is left as it was");
        assert_eq!(held.at_ms, now);
    }

    #[tokio::test]
    async fn an_outage_that_grows_with_the_clock_reads_the_store_again() {
        let (_dir, store, plan, metrics, views) = fixture().await;
        // Served for a second at 0, then nothing: an outage up to now, growing with it.
        store.beat("centre", 0, 1_000).await.unwrap();
        let first = views
            .view(&store, &plan, &metrics, 50_000, 0)
            .await
            .unwrap();
        let later = views
            .view(&store, &plan, &metrics, 60_000, 0)
            .await
            .unwrap();
        assert_eq!(first.snapshot.outages.last().unwrap().to_ms, 50_000);
        assert_eq!(later.snapshot.outages.last().unwrap().to_ms, 60_000);
        assert!(!Arc::ptr_eq(&first.snapshot, &later.snapshot));
    }
}

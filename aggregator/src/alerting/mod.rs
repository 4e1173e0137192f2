//! Deadline alerts: the evaluation loop ([`Evaluator`]: every `every`, mark the centre alive,
//! read the store, compute progress at the clock's now, derive the alerts, store their state,
//! notify), the rules that derive them from progress ([`rules`]), the sinks ([`notify`]) and the
//! generated Alertmanager configuration ([`amconfig`]).

pub mod amconfig;
pub mod notify;
pub mod rules;

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::plan::Plan;
use crate::store::{AlertChanges, AnyStore, Store, StoreError, WantedAlert};
use notify::Notifier;
use rules::AlertPolicy;

/// How plan alerts are evaluated and where they go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertSettings {
    pub policy: rules::AlertPolicy,
    pub sinks: notify::Sinks,
    pub evaluate_every: Duration,
    pub resend_every: Duration,
    /// Whether this process evaluates alerts on its own, every `evaluate_every`. False when
    /// whoever embeds it drives [`Evaluator::once`] itself (the demo, on its
    /// simulated calendar, one evaluation per simulated day).
    pub evaluate: bool,
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            policy: Default::default(),
            sinks: Default::default(),
            evaluate_every: Duration::from_secs(30),
            resend_every: Duration::from_secs(60),
            evaluate: true,
        }
    }
}

/// When the active alerts were last re-sent (see [`Evaluator::tick`]).
#[derive(Debug, Default, Clone)]
pub struct Resend {
    last_ms: Option<i64>,
}

#[derive(Clone)]
pub struct Evaluator {
    pub plan: Arc<Plan>,
    pub store: AnyStore,
    pub clock: Arc<dyn Clock>,
    pub policy: AlertPolicy,
    pub notifier: Notifier,
    pub metrics: Metrics,
    pub every: Duration,
    pub resend_every: Duration,
    /// This serving process's row in the centre's uptime record.
    pub run_id: String,
    /// The views it shares with `/metrics` and the API ([`crate::app::App::views`]): an
    /// evaluation computes progress at its own now, reading the stored rows again only when
    /// [`crate::app::ViewCache::view`] must.
    pub views: Arc<crate::app::ViewCache>,
}

impl std::fmt::Debug for Evaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Evaluator(every {:?})", self.every)
    }
}

impl Evaluator {
    /// One evaluation: progress, alerts, stored state, notifications.
    pub async fn once(&self, resend: bool) -> Result<AlertChanges, StoreError> {
        let now = self.clock.now_ms();
        // Twice the interval: one late evaluation is not an outage.
        let slack_ms = i64::try_from(self.every.as_millis().saturating_mul(2)).unwrap_or(i64::MAX);
        self.store.beat(&self.run_id, now, slack_ms).await?;
        let view = self
            .views
            .view(&self.store, &self.plan, &self.metrics, now, 0)
            .await?;
        let evaluated = rules::derive(&self.plan, &view.progress, &self.policy);
        // Let go of the view before the store and the sinks are waited for: the next view
        // is updated from this one in place only when nobody holds it.
        drop(view);
        self.metrics.alerts_muted.set(evaluated.muted as i64);
        self.metrics
            .alerts_before_go_live
            .set(evaluated.before_go_live as i64);
        let wanted: Vec<WantedAlert> = evaluated
            .alerts
            .into_iter()
            .map(|a| WantedAlert {
                key: a.key(),
                labels: a.labels,
                annotations: a.annotations,
            })
            .collect();
        // One replica keeps the alert state and notifies: the holder of the notifier lock
        // (always this process on SQLite). A replica that stored a firing alert without
        // sending it would leave it unsent, since the holder would then see no change.
        match self.store.is_notifier().await {
            Ok(true) => {}
            Ok(false) => return Ok(AlertChanges::default()),
            Err(error) => {
                tracing::warn!(%error, "cannot tell whether this replica is the notifier; leaving the alerts to the next round");
                return Ok(AlertChanges::default());
            }
        }
        let changes = self.store.sync_alerts(&self.plan.id, wanted, now).await?;
        self.notifier.deliver(&changes, resend).await;
        self.quiet_acknowledged(&changes, now).await?;
        Ok(changes)
    }

    /// Pauses Alertmanager's re-notification of acknowledged cases for their quiet period: a
    /// silence per case and acknowledgement, created once (remembered in the store's settings,
    /// so that a restart or another replica does not create it again).
    async fn quiet_acknowledged(&self, changes: &AlertChanges, now: i64) -> Result<(), StoreError> {
        if !self.notifier.has_alertmanagers() {
            return Ok(());
        }
        for alert in changes.fired.iter().chain(&changes.active) {
            let Some((key, silence)) = notify::quiet_silence(alert, now) else {
                continue;
            };
            if self.store.setting(&key).await?.is_some() {
                continue;
            }
            if self.notifier.silence(&silence).await {
                self.store.set_setting(&key, &now.to_string()).await?;
                tracing::info!(
                    key,
                    "acknowledged case silenced in Alertmanager for its quiet period"
                );
            }
        }
        Ok(())
    }

    /// [`Self::once`], re-sending the active alerts when `resend_every` has passed on the
    /// evaluator's clock since the last re-send recorded in `resend`.
    pub async fn tick(&self, resend: &mut Resend) -> Result<AlertChanges, StoreError> {
        let now = self.clock.now_ms();
        let every = i64::try_from(self.resend_every.as_millis()).unwrap_or(i64::MAX);
        let due = resend.last_ms.is_none_or(|last| now - last >= every);
        let changes = self.once(due).await?;
        if due {
            resend.last_ms = Some(now);
        }
        Ok(changes)
    }

    /// Evaluates every `every` until `shutdown` resolves.
    pub async fn run_until(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(self.every);
        let mut resend = Resend::default();
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {
                    if let Err(error) = self.tick(&mut resend).await {
                        tracing::warn!(%error, "alert evaluation failed; retrying next round");
                    }
                }
            }
        }
    }
}

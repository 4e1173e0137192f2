//! The agent at work: sources on their schedules, enqueueing into the outbox; one delivery
//! loop draining it and saying Hello (the heartbeat); optional `/metrics`.
//!
//! A new outbox that could not carry its counters over keeps what it collects as provisional
//! reports until the centre has answered a Hello (no seq is ever reused; see
//! [`crate::outbox`]).
//! Shutdown (SIGTERM): stop scheduling, let collections already running finish, try to drain
//! the outbox for the grace period, exit. What is left stays in the outbox for next time.
//! Reload (SIGHUP): the new configuration is validated first; a bad one is logged and the old
//! one keeps running.

use std::sync::Arc;
use std::time::{Duration, Instant};

use duban_host::clock::Clock;
use duban_proto::{KeyError, SigningKey};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::config::{AgentConfig, SourceConfig};
use crate::deliver::{AgentIdentity, DeliverError, Deliverer, Step};
use crate::metrics::AgentMetrics;
use crate::outbox::{Enqueued, Outbox, OutboxError, Stats};
use crate::schedule::Timer;
use crate::sources::{self, Item, SourceError};

/// Why the agent cannot open, collect or deliver.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{file}: private_key: {source}")]
    Key { file: String, source: KeyError },
    #[error("the outbox: {0}")]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Deliver(#[from] DeliverError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("cannot listen for /metrics on {listen}: {source}")]
    MetricsListen {
        listen: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// An agent: its configuration, identity, outbox, metrics and clock, shared by its tasks
/// (cheap to clone). Open one with [`Agent::open`]; run it with [`run`], or drive it by hand
/// (a command, the demo) with [`Agent::collect`], [`Agent::start_delivery`] and
/// [`Agent::drain`].
#[derive(Clone)]
pub struct Agent {
    config: AgentConfig,
    identity: AgentIdentity,
    outbox: Outbox,
    metrics: AgentMetrics,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Agent({})", self.config.unit)
    }
}

impl Agent {
    /// Opens the agent's key and outbox. `clock` stamps reports (`issued_at`) and the outbox
    /// (`created_at`, `max_age`): the system clock, except in tests and the demo's simulated
    /// calendar. Waiting reports signed for another unit, plan or key than the configuration
    /// names (it was corrected since) are re-signed under the configured identity.
    pub async fn open(config: AgentConfig, clock: Arc<dyn Clock>) -> Result<Self, AgentError> {
        let key = SigningKey::read_pkcs8_pem_file(&config.private_key).map_err(|source| {
            AgentError::Key {
                file: config.file.display().to_string(),
                source,
            }
        })?;
        let metrics = AgentMetrics::new(
            &config
                .sources
                .iter()
                .map(|s| s.name.clone())
                .collect::<Vec<_>>(),
        );
        let (outbox, opened) = Outbox::open(&config.outbox, clock).await?;
        if opened.moved_to.is_some() {
            metrics.outbox_moved_aside.inc();
        }
        let identity = AgentIdentity {
            key: crate::rotate::KeyCell::new(key),
            unit: config.unit.clone(),
            plan: config.plan.clone(),
        };
        let key = identity.key.current();
        // Reports signed by the key a rotation replaced stay as they are (the centre accepts
        // them until that key is revoked; then they are signed again, see `deliver`).
        let previous: Vec<String> =
            SigningKey::read_pkcs8_pem_file(&crate::rotate::previous_path(&config.private_key))
                .map(|key| vec![key.key_id().to_string()])
                .unwrap_or_default();
        let stale = outbox
            .signed_for_others(identity.signer(&key), &previous)
            .await?;
        for seq in &stale {
            outbox.rebuild(*seq, identity.signer(&key)).await?;
        }
        if !stale.is_empty() {
            tracing::warn!(
                reports = stale.len(),
                unit = %config.unit,
                plan = %config.plan,
                key_id = %key.key_id(),
                "waiting reports were signed for another unit, plan or key than the configuration now names; re-signed them under the configured identity"
            );
        }
        Ok(Agent {
            config,
            identity,
            outbox,
            metrics,
            wake: Arc::new(Notify::new()),
        })
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    pub fn identity(&self) -> &AgentIdentity {
        &self.identity
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn metrics(&self) -> &AgentMetrics {
        &self.metrics
    }

    /// What the outbox holds now.
    pub async fn outbox_stats(&self) -> Result<Stats, AgentError> {
        Ok(self.outbox.stats().await?)
    }

    /// Signs and stores reports for `items` (those that changed, or all with `force`).
    pub async fn enqueue(&self, items: &[Item], force: bool) -> Result<Enqueued, OutboxError> {
        match self
            .outbox
            .enqueue(
                self.identity.signer(&self.identity.key.current()),
                items,
                force,
            )
            .await
        {
            Ok(done) => {
                self.metrics.dropped.inc_by(done.dropped);
                if done.dropped > 0 {
                    tracing::warn!(
                        dropped = done.dropped,
                        "the outbox was full or held reports older than max_age: dropped the oldest undelivered report(s) (when_full = \"drop_oldest\")"
                    );
                }
                if !done.reports.is_empty() {
                    self.wake.notify_one();
                }
                Ok(done)
            }
            Err(error @ OutboxError::Full { .. }) => {
                self.metrics.collections_refused.inc();
                Err(error)
            }
            Err(error) => Err(error),
        }
    }

    /// Runs one source now and enqueues what changed.
    pub async fn collect(
        &self,
        source: &SourceConfig,
        force: bool,
    ) -> Result<Enqueued, AgentError> {
        let started = Instant::now();
        let result = async {
            let items = sources::collect(source).await?;
            Ok::<_, AgentError>(self.enqueue(&items, force).await?)
        }
        .await;
        match &result {
            Ok(done) => {
                tracing::info!(source = %source.name, reports = done.reports.len(), unchanged = done.unchanged, ms = started.elapsed().as_millis() as u64, "collected")
            }
            Err(error) => {
                self.metrics
                    .collection_errors
                    .with_label_values(&[source.name.as_str()])
                    .inc();
                tracing::error!(source = %source.name, error = %error, "collection failed");
            }
        }
        result
    }

    /// Delivers until the outbox is empty, a wait is needed and `deadline` comes first, or
    /// `deadline` passes. A deadline already past sends nothing.
    pub async fn drain(
        &self,
        deliverer: &mut Deliverer,
        deadline: Instant,
    ) -> Result<bool, AgentError> {
        if Instant::now() >= deadline {
            return Ok(self.outbox.stats().await?.reports == 0);
        }
        loop {
            match deliverer.step().await? {
                Step::Idle => return Ok(true),
                Step::Progress { .. } => {}
                Step::Wait(wait) => {
                    if Instant::now() + wait >= deadline {
                        return Ok(false);
                    }
                    tokio::time::sleep(wait).await;
                }
            }
            if Instant::now() >= deadline {
                return Ok(self.outbox.stats().await?.reports == 0);
            }
        }
    }

    /// A deliverer for this agent's outbox (one delivery at a time per outbox).
    pub async fn deliverer(&self) -> Result<Deliverer, AgentError> {
        Ok(Deliverer::new(
            self.outbox.clone(),
            &self.config.aggregator,
            self.identity.clone(),
            self.outbox.clock(),
            self.outbox.is_synced().await?,
            self.metrics.clone(),
        )?
        .rotating(self.config.private_key.clone()))
    }

    /// Starts delivering in the background: at once when a collection stored something, after
    /// the deliverer's back-off when the aggregator could not be reached, every 5 s otherwise.
    pub async fn start_delivery(&self) -> Result<Delivery, AgentError> {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(deliver_loop(self.clone(), self.deliverer().await?, stopped));
        Ok(Delivery { stop, task })
    }
}

/// A delivery loop running in the background (see [`Agent::start_delivery`]).
#[derive(Debug)]
pub struct Delivery {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Delivery {
    /// Stops the loop after the step in progress, and waits for it.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

async fn schedule_source(agent: Agent, source: SourceConfig, mut stop: watch::Receiver<bool>) {
    let mut timer = Timer::new(&source.schedule, source.splay);
    let mut first = true;
    loop {
        let next = timer.next_after(now_ms());
        if first {
            tracing::info!(source = %source.name, next_run = %jiff::Timestamp::from_millisecond(next).map(|t| t.to_string()).unwrap_or_default(), "source scheduled");
            first = false;
        }
        let wait = Duration::from_millis((next - now_ms()).max(0) as u64);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(wait) => {}
        }
        // Once started, a collection runs to the end even if shutdown begins meanwhile.
        let _ = agent.collect(&source, false).await;
    }
}

/// Delivers from the outbox until `stop` turns true (see [`Agent::start_delivery`]).
async fn deliver_loop(agent: Agent, mut deliverer: Deliverer, mut stop: watch::Receiver<bool>) {
    loop {
        let step = match deliverer.step().await {
            Ok(step) => step,
            Err(error) => {
                tracing::error!(error = %error, "delivery step failed; retrying in 5 s");
                Step::Wait(Duration::from_secs(5))
            }
        };
        if let Ok(stats) = agent.outbox.stats().await {
            agent.metrics.observe_outbox(&stats, now_ms());
        }
        let wait = match step {
            Step::Progress { .. } => continue,
            Step::Idle => Duration::from_secs(5),
            Step::Wait(wait) => wait,
        };
        // The wait is cut into TLS checks: renewed certificate files end a wait at once (a
        // refused certificate may hold delivery for minutes).
        let until = Instant::now() + wait;
        loop {
            let chunk = until
                .saturating_duration_since(Instant::now())
                .min(crate::deliver::TLS_CHECK);
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = agent.wake.notified(), if matches!(step, Step::Idle) => break,
                _ = tokio::time::sleep(chunk) => {}
            }
            if Instant::now() >= until || deliverer.reload_tls_if_changed() {
                break;
            }
        }
    }
}

struct Running {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    agent: Agent,
}

async fn start(agent: Agent) -> Result<Running, AgentError> {
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for source in agent.config.sources.clone() {
        tasks.spawn(schedule_source(agent.clone(), source, stopped.clone()));
    }
    tasks.spawn(deliver_loop(
        agent.clone(),
        agent.deliverer().await?,
        stopped,
    ));
    Ok(Running { stop, tasks, agent })
}

impl Running {
    /// Stops scheduling and delivery; waits for collections in progress to finish.
    async fn stop(mut self) -> Agent {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        self.agent
    }
}

/// Runs the agent on the system clock until `shutdown`; `reload` yields on SIGHUP.
pub async fn run(
    config: AgentConfig,
    grace: Duration,
    shutdown: impl std::future::Future<Output = ()>,
    mut reload: impl FnMut() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) -> Result<(), AgentError> {
    let agent = Agent::open(config, Arc::new(duban_host::clock::SystemClock)).await?;
    if let Some(listen) = agent.config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| AgentError::MetricsListen { listen, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| AgentError::MetricsListen { listen, source })?;
        let metrics = agent.metrics.clone();
        let outbox = agent.outbox.clone();
        tracing::info!(metrics = %bound, "serving /metrics");
        tokio::spawn(async move {
            let app = axum::Router::new().route(
                "/metrics",
                axum::routing::get(move || {
                    let (metrics, outbox) = (metrics.clone(), outbox.clone());
                    async move {
                        if let Ok(stats) = outbox.stats().await {
                            metrics.observe_outbox(&stats, now_ms());
                        }
                        (
                            [(
                                axum::http::header::CONTENT_TYPE,
                                "text/plain; version=0.0.4; charset=utf-8",
                            )],
                            metrics.render(),
                        )
                    }
                }),
            );
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "metrics server stopped");
            }
        });
    }
    let stats = agent.outbox.stats().await?;
    tracing::info!(unit = %agent.config.unit, plan = %agent.config.plan, key_id = %agent.identity.key.current().key_id(), sources = agent.config.sources.len(), outbox_reports = stats.reports, dead_letters = stats.dead_letters, synced = stats.synced, endpoints = ?agent.config.aggregator.endpoints, "agent running");
    let mut running = start(agent).await?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = reload() => {
                let path = running.agent.config.file.clone();
                match AgentConfig::read(&path) {
                    Err(error) => tracing::error!(%error, "reload refused: the new configuration is invalid; the old one keeps running"),
                    Ok(new) if new.outbox.path != running.agent.config.outbox.path || new.private_key != running.agent.config.private_key || new.unit != running.agent.config.unit || new.plan != running.agent.config.plan => {
                        tracing::error!("reload refused: unit, plan, outbox.path and private_key change only with a restart; the old configuration keeps running");
                    }
                    Ok(new) => {
                        let mut agent = running.stop().await;
                        agent.config = new;
                        running = start(agent).await?;
                        tracing::info!(file = %path.display(), "configuration reloaded");
                    }
                }
            }
        }
    }
    tracing::info!(
        grace_seconds = grace.as_secs_f64(),
        "shutting down: finishing collections, then draining the outbox"
    );
    let agent = running.stop().await;
    let mut deliverer = agent.deliverer().await?;
    let drained = agent
        .drain(&mut deliverer, Instant::now() + grace)
        .await
        .unwrap_or(false);
    let left = agent.outbox.stats().await?.reports;
    if drained {
        tracing::info!("outbox drained; exiting");
    } else {
        tracing::warn!(
            reports_left = left,
            "grace period over; the rest stays in the outbox for next time"
        );
    }
    Ok(())
}

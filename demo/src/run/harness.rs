//! The parts the demo runs: the real aggregator (stopped and restarted for the outage), each
//! unit's local system (the CSV exports it writes) and its real agent, and the alert evaluation
//! the demo drives once per simulated day.

use super::*;

/// The aggregator as a restartable piece of this process.
pub(super) struct Aggregator {
    pub(super) stop: Option<oneshot::Sender<()>>,
    pub(super) task: tokio::task::JoinHandle<Result<(), duban_aggregator::serve::ServeError>>,
    pub(super) store: AnyStore,
}

pub(super) struct Shared {
    pub(super) plan: Arc<Plan>,
    pub(super) clock: Arc<ManualClock>,
    pub(super) layout: Layout,
    pub(super) tls: TlsFiles,
}

pub(super) async fn bind(addr: SocketAddr, what: &str, flag: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot listen on {addr} for {what}: another aggregator or demo may be using it; \
             pass {flag} 127.0.0.1:0 to take any free port"
        )
    })
}

impl Aggregator {
    pub(super) async fn start(
        shared: &Shared,
        grpc: TcpListener,
        http: TcpListener,
    ) -> anyhow::Result<Self> {
        let store = AnyStore::open(&shared.layout.database_url())
            .await
            .context("cannot open the aggregator's database")?;
        let serve = Serve {
            plan: shared.plan.clone(),
            store: store.clone(),
            clock: shared.clock.clone(),
            tls: Some(shared.tls.clone()),
            security: Default::default(),
            max_in_flight: 256,
            shutdown_grace: Duration::from_secs(10),
            // The demo evaluates once per simulated day itself (see `evaluator`).
            alerts: AlertSettings {
                evaluate: false,
                ..AlertSettings::default()
            },
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(duban_aggregator::serve::run(serve, grpc, http, async {
            let _ = stopped.await;
        }));
        Ok(Aggregator {
            stop: Some(stop),
            task,
            store,
        })
    }

    /// Starts again where an earlier one listened (after a restart).
    pub(super) async fn restart(
        shared: &Shared,
        grpc: SocketAddr,
        http: SocketAddr,
    ) -> anyhow::Result<Self> {
        let grpc = bind(grpc, "gRPC", "--grpc-listen").await?;
        let http = bind(http, "HTTP (/metrics)", "--http-listen").await?;
        Self::start(shared, grpc, http).await
    }

    pub(super) async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.context("aggregator task")??;
        Ok(())
    }
}

/// A unit's local system: the rows its CSV exports hold so far.
#[derive(Default)]
pub(super) struct LocalSystem {
    pub(super) values: BTreeMap<(String, Period), (f64, String)>,
    pub(super) tasks: BTreeMap<(String, String, Period), f64>,
}

impl LocalSystem {
    pub(super) fn write(&self, dir: &std::path::Path, items: Items) -> anyhow::Result<()> {
        let (path, result) = match items {
            Items::Values => {
                let path = dir.join("values.csv");
                let mut w = csv::Writer::from_path(&path)?;
                w.write_record(["indicator", "period", "value", "note"])?;
                for ((indicator, period), (value, note)) in &self.values {
                    w.write_record([
                        indicator.as_str(),
                        &period.to_string(),
                        &value.to_string(),
                        note,
                    ])?;
                }
                (path, w.flush())
            }
            Items::Tasks => {
                let path = dir.join("tasks.csv");
                let mut w = csv::Writer::from_path(&path)?;
                w.write_record(["task", "milestone", "period", "percent"])?;
                for ((task, milestone, period), percent) in &self.tasks {
                    w.write_record([task, milestone, &period.to_string(), &percent.to_string()])?;
                }
                (path, w.flush())
            }
        };
        result.with_context(|| format!("cannot write {}", path.display()))
    }
}

pub(super) struct DemoAgent {
    pub(super) agent: Agent,
    pub(super) local: LocalSystem,
    pub(super) dir: PathBuf,
}

impl DemoAgent {
    pub(super) fn source(&self, items: Items) -> &SourceConfig {
        self.agent
            .config()
            .sources
            .iter()
            .find(|s| s.items == items)
            .expect("the demo configuration has a values and a tasks source")
    }

    /// Writes the export and lets the agent collect it; returns the seqs of the new reports.
    pub(super) async fn export_and_collect(&self, items: Items) -> anyhow::Result<Vec<i64>> {
        self.local.write(&self.dir, items)?;
        let done = self.agent.collect(self.source(items), false).await?;
        Ok(done.reports.iter().map(|(seq, _)| *seq).collect())
    }
}

/// The alert evaluation the demo runs once per simulated day, sending to the inboxes.
pub(super) fn evaluator(
    shared: &Shared,
    store: AnyStore,
    webhooks: Vec<String>,
    http: SocketAddr,
) -> Evaluator {
    let metrics = duban_aggregator::metrics::Metrics::new(store.backend());
    Evaluator {
        plan: shared.plan.clone(),
        store,
        clock: shared.clock.clone(),
        policy: Default::default(),
        notifier: duban_aggregator::alerting::notify::Notifier::new(
            duban_aggregator::alerting::notify::Sinks {
                alertmanagers: Vec::new(),
                webhooks,
            },
            metrics.alert_notifications.clone(),
            format!("http://{http}"),
        ),
        metrics,
        every: Duration::from_secs(86_400),
        resend_every: Duration::from_secs(86_400),
        run_id: "duban-demo".into(),
        views: Default::default(),
    }
}

/// One delivery loop per agent (each agent's own, as `duban-agent run` starts it).
pub(super) async fn spawn_deliveries(
    agents: &BTreeMap<String, DemoAgent>,
) -> anyhow::Result<Vec<duban_agent::daemon::Delivery>> {
    let mut deliveries = Vec::new();
    for demo in agents.values() {
        deliveries.push(demo.agent.start_delivery().await?);
    }
    Ok(deliveries)
}

pub(super) async fn stop_deliveries(deliveries: Vec<duban_agent::daemon::Delivery>) {
    for delivery in deliveries {
        delivery.stop().await;
    }
}

/// Waits until every outbox is empty (every report acknowledged), or `DRAIN_LIMIT` passes.
pub(super) async fn drain(agents: &BTreeMap<String, DemoAgent>) -> anyhow::Result<()> {
    let deadline = Instant::now() + DRAIN_LIMIT;
    while outbox_reports(agents).await? > 0 {
        if Instant::now() >= deadline {
            tracing::warn!("outboxes not drained within {DRAIN_LIMIT:?}; going on");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

pub(super) async fn outbox_reports(agents: &BTreeMap<String, DemoAgent>) -> anyhow::Result<u64> {
    let mut total = 0;
    for demo in agents.values() {
        total += demo.agent.outbox().stats().await?.reports.max(0) as u64;
    }
    Ok(total)
}

/// The longest the demo waits, in real time, for a day's reports to be acknowledged.
pub(super) const DRAIN_LIMIT: Duration = Duration::from_secs(60);

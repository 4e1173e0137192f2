//! The demo run: the real aggregator (mTLS, SQLite, alerts to a webhook that stands for the
//! units' inboxes) and one real agent per reporting unit, on one simulated clock.
//!
//! Each simulated day the units' local systems gain rows (the scenario); each agent collects
//! its CSV sources through the same code as `duban-agent run` (change detection, signing, the
//! durable outbox) and its delivery loop pushes over gRPC until acknowledged. Midway the demo
//! resends a report (a lost acknowledgement), submits a tampered one, stops the aggregator
//! for a simulated month while agents keep collecting, and has a unit correct a past period.
//!
//! The simulated clock, not wall-clock timing, decides what happens: each day the demo waits
//! until every report collected that day is acknowledged (while the aggregator is up), then
//! evaluates the alerts once, at noon of that day. The same seed gives the same run.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use duban_agent::config::{AgentConfig, Items, SourceConfig};
use duban_agent::daemon::Agent;
use duban_aggregator::alerting::AlertSettings;
use duban_aggregator::alerting::Evaluator;
use duban_aggregator::clock::{Clock, ManualClock};
use duban_aggregator::plan::{Period, Plan};
use duban_aggregator::serve::{Serve, TlsMaterial};
use duban_aggregator::store::{AnyStore, ReportFilter, Store};
use duban_proto::pb;
use duban_proto::pb::report_service_client::ReportServiceClient;
use jiff::ToSpan;
use jiff::civil::Date;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::scenario::{Row, Scenario, noon_ms};
use crate::setup::{self, Layout};
use crate::view::{self, Check, Counts, Summary, View};

/// The longest the demo waits, in real time, for a day's reports to be acknowledged.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);
/// How often the view's figures are read, in real time.
const REFRESH_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    pub fresh: bool,
    pub seed: u64,
    /// Simulated days per real second.
    pub speed: f64,
    pub until: Option<Date>,
    pub grpc_listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub keep_serving: bool,
    pub plain: bool,
    /// Further webhooks (Alertmanager's webhook format) that get every alert the units get.
    pub webhooks: Vec<String>,
}

/// One alert notification as a unit's inbox received it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Received {
    pub day: Date,
    pub status: String,
    pub alertname: String,
    pub severity: String,
    /// The unit the alert went to.
    pub recipient: String,
    /// Why: `lead` (it leads the subject), `reporter` (it owes the report, 催报) or
    /// `responsible` (a task without a lead unit).
    pub role: String,
    pub lead_unit: String,
    pub summary: String,
}

pub type Inbox = Arc<Mutex<Vec<Received>>>;

/// The units' inboxes: an HTTP endpoint taking Alertmanager-format webhooks.
async fn start_inbox(clock: Arc<ManualClock>, plan: Arc<Plan>) -> anyhow::Result<(String, Inbox)> {
    let inbox: Inbox = Arc::default();
    let sink = inbox.clone();
    let app = axum::Router::new().route(
        "/alerts",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let (sink, clock, plan) = (sink.clone(), clock.clone(), plan.clone());
            async move {
                let day = duban_aggregator::progress::date_of_ms(clock.now_ms(), &plan.tz);
                let status = body["status"].as_str().unwrap_or_default().to_owned();
                let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
                let mut sink = sink.lock().expect("inbox lock");
                for alert in body["alerts"].as_array().into_iter().flatten() {
                    let labels = &alert["labels"];
                    sink.push(Received {
                        day,
                        status: status.clone(),
                        alertname: text(&labels["alertname"]),
                        severity: text(&labels["severity"]),
                        recipient: text(&labels["recipient"]),
                        role: text(&labels["role"]),
                        lead_unit: text(&labels["lead_unit"]),
                        summary: text(&alert["annotations"]["summary"]),
                    });
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen for the units' webhook")?;
    let url = format!("http://{}/alerts", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, inbox))
}

/// The aggregator as a restartable piece of this process.
struct Aggregator {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), duban_aggregator::serve::ServeError>>,
    store: AnyStore,
}

struct Shared {
    plan: Arc<Plan>,
    clock: Arc<ManualClock>,
    layout: Layout,
    tls: TlsMaterial,
}

async fn bind(addr: SocketAddr, what: &str, flag: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot listen on {addr} for {what}: another aggregator or demo may be using it; \
             pass {flag} 127.0.0.1:0 to take any free port"
        )
    })
}

impl Aggregator {
    async fn start(shared: &Shared, grpc: TcpListener, http: TcpListener) -> anyhow::Result<Self> {
        let store = AnyStore::open(&shared.layout.database_url())
            .await
            .context("cannot open the aggregator's database")?;
        let serve = Serve {
            plan: shared.plan.clone(),
            store: store.clone(),
            clock: shared.clock.clone(),
            tls: Some(shared.tls.clone()),
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
    async fn restart(shared: &Shared, grpc: SocketAddr, http: SocketAddr) -> anyhow::Result<Self> {
        let grpc = bind(grpc, "gRPC", "--grpc-listen").await?;
        let http = bind(http, "HTTP (/metrics)", "--http-listen").await?;
        Self::start(shared, grpc, http).await
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.context("aggregator task")??;
        Ok(())
    }
}

/// A unit's local system: the rows its CSV exports hold so far.
#[derive(Default)]
struct LocalSystem {
    values: BTreeMap<(String, Period), (f64, String)>,
    tasks: BTreeMap<(String, String, Period), f64>,
}

impl LocalSystem {
    fn write(&self, dir: &std::path::Path, items: Items) -> anyhow::Result<()> {
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

struct DemoAgent {
    agent: Agent,
    local: LocalSystem,
    dir: PathBuf,
}

impl DemoAgent {
    fn source(&self, items: Items) -> &SourceConfig {
        self.agent
            .config()
            .sources
            .iter()
            .find(|s| s.items == items)
            .expect("the demo configuration has a values and a tasks source")
    }

    /// Writes the export and lets the agent collect it; returns the seqs of the new reports.
    async fn export_and_collect(&self, items: Items) -> anyhow::Result<Vec<i64>> {
        self.local.write(&self.dir, items)?;
        let done = self.agent.collect(self.source(items), false).await?;
        Ok(done.reports.iter().map(|(seq, _)| *seq).collect())
    }
}

/// The alert evaluation the demo runs once per simulated day, sending to the inboxes.
fn evaluator(
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
    }
}

/// One delivery loop per agent (each agent's own, as `duban-agent run` starts it).
async fn spawn_deliveries(
    agents: &BTreeMap<String, DemoAgent>,
) -> anyhow::Result<Vec<duban_agent::daemon::Delivery>> {
    let mut deliveries = Vec::new();
    for demo in agents.values() {
        deliveries.push(demo.agent.start_delivery().await?);
    }
    Ok(deliveries)
}

async fn stop_deliveries(deliveries: Vec<duban_agent::daemon::Delivery>) {
    for delivery in deliveries {
        delivery.stop().await;
    }
}

/// Waits until every outbox is empty (every report acknowledged), or `DRAIN_LIMIT` passes.
async fn drain(agents: &BTreeMap<String, DemoAgent>) -> anyhow::Result<()> {
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

async fn client_for(
    shared: &Shared,
    unit: &str,
    grpc: SocketAddr,
) -> anyhow::Result<ReportServiceClient<tonic::transport::Channel>> {
    let read =
        |p: PathBuf| std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()));
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read(
            shared.layout.tls.join("ca.crt"),
        )?))
        .identity(tonic::transport::Identity::from_pem(
            read(shared.layout.tls.join(format!("units/{unit}.crt")))?,
            read(shared.layout.tls.join(format!("units/{unit}.key")))?,
        ))
        .domain_name("localhost");
    let channel =
        tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{}", grpc.port()))?
            .tls_config(tls)?
            .connect()
            .await
            .context("cannot connect to the demo aggregator")?;
    Ok(ReportServiceClient::new(channel))
}

async fn submit_as(
    shared: &Shared,
    unit: &str,
    grpc: SocketAddr,
    report: pb::SignedReport,
) -> anyhow::Result<pb::SubmitResult> {
    let mut client = client_for(shared, unit, grpc).await?;
    Ok(client.submit(report).await.context("Submit")?.into_inner())
}

fn outcome_text(result: &pb::SubmitResult) -> String {
    let outcome = pb::Outcome::try_from(result.outcome)
        .map(|o| o.as_str_name().trim_start_matches("OUTCOME_").to_owned())
        .unwrap_or_else(|_| result.outcome.to_string());
    let reason = pb::ReasonCode::try_from(result.reason)
        .ok()
        .filter(|r| *r != pb::ReasonCode::ReasonUnspecified)
        .map(|r| format!(" {}", r.as_str_name().trim_start_matches("REASON_")))
        .unwrap_or_default();
    format!("{outcome}{reason}")
}

/// A stored report of a unit not in `avoid`: its unit, report id, seq and envelope.
async fn stored_envelope(
    store: &AnyStore,
    avoid: &BTreeSet<String>,
) -> anyhow::Result<Option<(String, Vec<u8>, i64, pb::SignedReport)>> {
    let reports = store
        .reports(&ReportFilter {
            limit: Some(500),
            ..Default::default()
        })
        .await?;
    for report in reports.iter().filter(|r| !avoid.contains(&r.unit_id)) {
        if let Some(env) = store.envelope(&report.unit_id, &report.report_id).await? {
            return Ok(Some((
                report.unit_id.clone(),
                report.report_id.clone(),
                report.seq,
                pb::SignedReport {
                    payload: env.payload,
                    payload_type: env.payload_type,
                    key_id: env.key_id,
                    signature: env.signature,
                },
            )));
        }
    }
    Ok(None)
}

/// Sends a stored report again, as its agent would after losing the acknowledgement.
async fn resend(
    shared: &Shared,
    grpc: SocketAddr,
    store: &AnyStore,
    unit: &str,
    report_id: &[u8],
    seq: i64,
    envelope: pb::SignedReport,
) -> anyhow::Result<Check> {
    let result = submit_as(shared, unit, grpc, envelope).await?;
    let stored = store
        .reports(&ReportFilter {
            unit_id: Some(unit.to_owned()),
            ..Default::default()
        })
        .await?
        .iter()
        .filter(|r| r.report_id == report_id)
        .count();
    let answer = outcome_text(&result);
    let text = format!(
        "{unit} resent report seq {seq} as if its acknowledgement was lost: answered {answer}, stored {stored} time(s)"
    );
    Ok(if answer == "DUPLICATE" && stored == 1 {
        Check::passed(text)
    } else {
        Check::failed(text)
    })
}

/// Sends a copy of a stored report with its payload altered after signing.
async fn send_tampered(
    shared: &Shared,
    grpc: SocketAddr,
    unit: &str,
    seq: i64,
    mut envelope: pb::SignedReport,
) -> anyhow::Result<Check> {
    let mut report = pb::Report::decode(envelope.payload.as_slice())?;
    // Always a different payload: the same bytes would be a duplicate.
    let what = if let Some(v) = report.values.first_mut() {
        let old = v.value;
        v.value = if old == 0.0 { 1.0 } else { old * 10.0 };
        format!("{} {old} → {}", v.indicator_id, v.value)
    } else if let Some(t) = report.task_updates.first_mut() {
        let old = t.percent_complete;
        t.percent_complete = if old >= 50.0 { 0.0 } else { 100.0 };
        format!(
            "{} {} {old}% → {}%",
            t.task_id, t.milestone_id, t.percent_complete
        )
    } else {
        report.period.push('9');
        "period".into()
    };
    envelope.payload = report.encode_to_vec();
    let result = submit_as(shared, unit, grpc, envelope).await?;
    let answer = outcome_text(&result);
    let text = format!(
        "a copy of {unit}'s report seq {seq} altered after signing ({what}): answered {answer}: {}",
        result.message
    );
    Ok(if answer == "REJECTED BAD_SIGNATURE" {
        Check::passed(text)
    } else {
        Check::failed(text)
    })
}

/// What the restart has to account for: reports collected while the aggregator was down.
#[derive(Default)]
struct Outage {
    collected: Vec<(String, i64)>,
}

fn day_at(start: Date, total_days: i64, fraction: f64) -> Date {
    start.saturating_add(((total_days as f64 * fraction) as i64).days())
}

pub async fn run(options: Options) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let plan = Arc::new(duban_aggregator::plan::embedded().plan);
    let start = plan.window.start;
    let until = options.until.unwrap_or(plan.window.end);
    if until <= start || until > plan.window.end {
        bail!(
            "--until {until}: expected a date after the plan's start {start} and no later than its end {}",
            plan.window.end
        );
    }
    let total_days = (until - start).get_days() as i64 + 1;
    let scenario = Scenario::generate(&plan, options.seed);
    let layout = setup::prepare(&options.dir, options.fresh, &plan, &scenario.units)?;
    crate::init_log(&layout.log)?;
    tracing::info!(seed = options.seed, %until, "demo starting");

    let clock = Arc::new(ManualClock::new(noon_ms(&plan, start)));
    let (webhook, inbox) = start_inbox(clock.clone(), plan.clone()).await?;
    let read = |name: &str| {
        std::fs::read(layout.tls.join(name))
            .with_context(|| format!("cannot read {}", layout.tls.join(name).display()))
    };
    let shared = Shared {
        plan: plan.clone(),
        clock: clock.clone(),
        tls: TlsMaterial {
            cert_pem: read("server.crt")?,
            key_pem: read("server.key")?,
            client_ca_pem: read("ca.crt")?,
        },
        layout: layout.clone(),
    };

    // The aggregator: keys registered, then serving.
    let grpc_listener = bind(options.grpc_listen, "gRPC", "--grpc-listen").await?;
    let http_listener = bind(options.http_listen, "HTTP (/metrics)", "--http-listen").await?;
    let grpc = grpc_listener.local_addr()?;
    let http = http_listener.local_addr()?;
    {
        let store = AnyStore::open(&layout.database_url()).await?;
        for unit in &scenario.units {
            let public_key = duban_proto::PublicKey::read_spki_pem_file(
                &layout.agent_dir(unit).join("signing.pub"),
            )?;
            duban_aggregator::admin::register_key(
                &store,
                &plan,
                duban_aggregator::admin::KeyRegistration {
                    unit: unit.clone(),
                    public_key,
                    not_before_ms: None,
                    not_after_ms: None,
                },
                clock.now_ms(),
            )
            .await?;
        }
    }
    let mut aggregator = Some(Aggregator::start(&shared, grpc_listener, http_listener).await?);
    let mut evaluator = evaluator(
        &shared,
        aggregator.as_ref().expect("started").store.clone(),
        std::iter::once(webhook)
            .chain(options.webhooks.iter().cloned())
            .collect(),
        http,
    );

    // The agents.
    let mut agents: BTreeMap<String, DemoAgent> = BTreeMap::new();
    for unit in &scenario.units {
        let path = setup::write_agent_config(&layout, &plan, unit, grpc)?;
        let config = AgentConfig::read(&path)?;
        let agent = Agent::open(config, clock.clone()).await?;
        agents.insert(
            unit.clone(),
            DemoAgent {
                agent,
                local: LocalSystem::default(),
                dir: layout.agent_dir(unit),
            },
        );
    }

    let mut deliveries = Some(spawn_deliveries(&agents).await?);

    let mut view = View::new(
        plan.clone(),
        options.plain,
        start,
        until,
        options.speed,
        grpc,
        http,
        &layout,
        &scenario,
    );
    view.header();

    let duplicate_day = day_at(start, total_days, 0.30);
    let tamper_day = day_at(start, total_days, 0.40);
    let restart_day = day_at(start, total_days, 0.50);
    let back_day = restart_day.saturating_add((total_days / 12).clamp(2, 31).days());
    let correction_day = day_at(start, total_days, 0.65);

    let mut counts_before_restart = Counts::default();
    let mut enqueued = 0usize;
    let mut outage: Option<Outage> = None;
    let mut outage_done: Option<Outage> = None;
    let mut duplicate: Option<Check> = None;
    let mut tamper: Option<Check> = None;
    let mut correction: Option<Correction> = None;
    let scraper = reqwest_client();
    let tick = Duration::from_secs_f64(1.0 / options.speed);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut last_refresh: Option<Instant> = None;
    let mut day = start;
    while day <= until {
        interval.tick().await;
        clock.set_ms(noon_ms(&plan, day));

        if let Some(units) = scenario.days.get(&day) {
            for (unit, rows) in units {
                let demo = agents
                    .get_mut(unit)
                    .expect("every scenario unit has an agent");
                let (mut values, mut tasks) = (false, false);
                for row in rows {
                    match row {
                        Row::Value {
                            indicator,
                            period,
                            value,
                            note,
                        } => {
                            demo.local
                                .values
                                .insert((indicator.clone(), *period), (*value, note.clone()));
                            values = true;
                        }
                        Row::Task {
                            task,
                            milestone,
                            period,
                            percent,
                            ..
                        } => {
                            demo.local
                                .tasks
                                .insert((task.clone(), milestone.clone(), *period), *percent);
                            tasks = true;
                        }
                    }
                }
                for (changed, items) in [(values, Items::Values), (tasks, Items::Tasks)] {
                    if !changed {
                        continue;
                    }
                    let seqs = demo.export_and_collect(items).await?;
                    enqueued += seqs.len();
                    if let Some(outage) = outage.as_mut() {
                        outage
                            .collected
                            .extend(seqs.iter().map(|s| (unit.clone(), *s)));
                    }
                }
            }
        }

        // The resend and the tampered copy need a stored report; until one is, they wait.
        if day >= duplicate_day
            && duplicate.is_none()
            && let Some(agg) = &aggregator
            && let Some((unit, report_id, seq, envelope)) = stored_envelope(
                &agg.store,
                &scenario.roles.late_units.iter().cloned().collect(),
            )
            .await?
        {
            let check = resend(&shared, grpc, &agg.store, &unit, &report_id, seq, envelope).await?;
            view.event(day, &check.detail);
            duplicate = Some(check);
        }

        if day >= tamper_day
            && tamper.is_none()
            && let Some(agg) = &aggregator
            && let Some((unit, _, seq, envelope)) =
                stored_envelope(&agg.store, &BTreeSet::new()).await?
        {
            let check = send_tampered(&shared, grpc, &unit, seq, envelope).await?;
            view.event(day, &check.detail);
            tamper = Some(check);
        }

        if day == restart_day
            && let Some(agg) = aggregator.take()
        {
            // What was collected today is acknowledged first: no call is in flight when the
            // aggregator stops, so the run does not depend on where a stop cuts a call.
            drain(&agents).await?;
            counts_before_restart =
                counts_before_restart.plus(&view::scrape(&scraper, http).await.unwrap_or_default());
            agg.stop().await?;
            // Delivery rests while the aggregator is down (its loops would only back off and
            // retry); collection goes on. Fresh loops start when it is back.
            if let Some(running) = deliveries.take() {
                stop_deliveries(running).await;
            }
            outage = Some(Outage::default());
            view.set_aggregator_up(false);
            view.event(
                day,
                "aggregator stopped (a restart): agents keep collecting into their outboxes",
            );
        }
        if day == back_day && aggregator.is_none() {
            let agg = Aggregator::restart(&shared, grpc, http).await?;
            evaluator.store = agg.store.clone();
            aggregator = Some(agg);
            deliveries = Some(spawn_deliveries(&agents).await?);
            view.set_aggregator_up(true);
            let waiting = outbox_reports(&agents).await?;
            let collected = outage.as_ref().map_or(0, |o| o.collected.len());
            view.event(
                day,
                &format!(
                    "aggregator back: {collected} report(s) collected meanwhile, {waiting} waiting in outboxes now drain"
                ),
            );
            outage_done = outage.take();
        }

        if day == correction_day && correction.is_none() {
            let (corrected, reports) = correct_a_past_value(&plan, &scenario, &mut agents).await?;
            enqueued += reports;
            correction = corrected;
            if let Some((unit, indicator, period, old, new)) = &correction {
                view.event(
                    day,
                    &format!(
                        "{unit} corrects {indicator} {period}: {old} → {new} (a new revision of the period)"
                    ),
                );
            }
        }

        // The day ends: what was collected is acknowledged, then the alerts are evaluated at
        // this day's noon. Nothing here depends on how fast the machine is.
        if aggregator.is_some() {
            drain(&agents).await?;
            evaluator.once(false).await?;
        }

        // The figures behind the view are read a few times a second (and on the first of each
        // month for the plain lines), not every simulated day: a scrape computes progress.
        let due = last_refresh.is_none_or(|t: Instant| t.elapsed() >= REFRESH_EVERY)
            || (options.plain || !view.is_tty()) && day.day() == 1
            || day == until;
        let refreshed = if due {
            last_refresh = Some(Instant::now());
            let counts = counts_before_restart.plus(&if aggregator.is_some() {
                view::scrape(&scraper, http).await.unwrap_or_default()
            } else {
                Counts::default()
            });
            let progress = match &aggregator {
                Some(agg) => {
                    duban_aggregator::store::progress_at(&agg.store, &plan, clock.now_ms())
                        .await
                        .ok()
                }
                None => None,
            };
            Some((counts, outbox_reports(&agents).await?, progress))
        } else {
            None
        };
        view.day(day, refreshed, &inbox);
        day = day.saturating_add(1.day());
    }

    // The end: the aggregator must be up, the outboxes drained, the last alerts evaluated.
    if aggregator.is_none() {
        let agg = Aggregator::restart(&shared, grpc, http).await?;
        evaluator.store = agg.store.clone();
        aggregator = Some(agg);
        deliveries = Some(spawn_deliveries(&agents).await?);
        view.set_aggregator_up(true);
        outage_done = outage.take();
        drain(&agents).await?;
        evaluator.once(false).await?;
    }
    let agg = aggregator.take().expect("the aggregator runs");

    let counts =
        counts_before_restart.plus(&view::scrape(&scraper, http).await.unwrap_or_default());
    let stored = agg.store.reports(&ReportFilter::default()).await?;
    let mut left = 0;
    let mut dead = 0;
    for demo in agents.values() {
        let stats = demo.agent.outbox().stats().await?;
        left += stats.reports;
        dead += stats.dead_letters;
    }
    let stored_keys: BTreeSet<(String, i64)> =
        stored.iter().map(|r| (r.unit_id.clone(), r.seq)).collect();
    let restart = match outage_done {
        None => Check::not_reached(format!("the restart is on {restart_day}")),
        Some(outage) => {
            let missing = outage
                .collected
                .iter()
                .filter(|k| !stored_keys.contains(k))
                .count();
            let text = format!(
                "{} report(s) collected while the aggregator was down, {} of them stored; {enqueued} collected in all, {} stored, {left} left in outboxes, {dead} dead letter(s)",
                outage.collected.len(),
                outage.collected.len() - missing,
                stored.len()
            );
            if missing == 0 && left == 0 && dead == 0 && stored.len() == enqueued {
                Check::passed(text)
            } else {
                Check::failed(text)
            }
        }
    };
    let correction_check = match &correction {
        None if until < correction_day => {
            Check::not_reached(format!("the correction is on {correction_day}"))
        }
        None => Check::not_reached(format!(
            "no value had been reported by {correction_day} to correct"
        )),
        Some((unit, indicator, period, old, new)) => {
            let current = agg
                .store
                .current_values(&plan.id, None)
                .await?
                .into_iter()
                .find(|v| {
                    &v.unit_id == unit
                        && &v.indicator_id == indicator
                        && v.period == period.to_string()
                });
            let text = match &current {
                Some(v) => format!(
                    "{unit} {indicator} {period}: {old} corrected to {new}; the aggregator holds {} (revision {})",
                    v.value, v.revision
                ),
                None => format!("{unit} {indicator} {period}: the aggregator holds no value"),
            };
            if current.is_some_and(|v| v.value == *new) {
                Check::passed(text)
            } else {
                Check::failed(text)
            }
        }
    };
    let progress = duban_aggregator::store::progress_at(&agg.store, &plan, clock.now_ms()).await?;
    let summary = view::summarize(view::SummaryInput {
        plan: &plan,
        options: &options,
        until,
        elapsed: started.elapsed(),
        counts,
        stored: stored.len(),
        enqueued,
        progress: &progress,
        inbox: &inbox,
        checks: vec![
            (
                "duplicates reconciled",
                duplicate.unwrap_or_else(|| {
                    Check::not_reached(format!("the resend is on {duplicate_day}"))
                }),
            ),
            (
                "tampered report refused",
                tamper.unwrap_or_else(|| {
                    Check::not_reached(format!("the tampered report is sent on {tamper_day}"))
                }),
            ),
            ("nothing lost across the restart", restart),
            ("the correction won", correction_check),
        ],
        total_days,
    });
    view.summary(&summary);
    std::fs::write(&layout.summary, serde_json::to_vec_pretty(&summary)?)
        .with_context(|| format!("cannot write {}", layout.summary.display()))?;

    if options.keep_serving {
        view.keep_serving(grpc, http);
        duban_aggregator::serve::termination_signal().await;
    }
    if let Some(running) = deliveries.take() {
        stop_deliveries(running).await;
    }
    agg.stop().await?;
    Ok(summary)
}

fn reqwest_client() -> reqwest::Client {
    duban_aggregator::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("HTTP client")
}

async fn outbox_reports(agents: &BTreeMap<String, DemoAgent>) -> anyhow::Result<u64> {
    let mut total = 0;
    for demo in agents.values() {
        total += demo.agent.outbox().stats().await?.reports.max(0) as u64;
    }
    Ok(total)
}

type Correction = (String, String, Period, f64, f64);

/// A punctual unit corrects the oldest value it has reported (a revised statistic). Returns
/// the correction and how many reports it made.
async fn correct_a_past_value(
    plan: &Plan,
    scenario: &Scenario,
    agents: &mut BTreeMap<String, DemoAgent>,
) -> anyhow::Result<(Option<Correction>, usize)> {
    let mut best: Option<(Period, String, String)> = None;
    for (unit, demo) in agents.iter() {
        if scenario.roles.late_units.contains(unit) {
            continue;
        }
        for (indicator, period) in demo.local.values.keys() {
            if plan
                .indicator(indicator)
                .is_some_and(|i| i.authoritative.as_deref() == Some(unit))
            {
                continue;
            }
            if best.as_ref().is_none_or(|(p, _, _)| period < p) {
                best = Some((*period, unit.clone(), indicator.clone()));
            }
        }
    }
    let Some((period, unit, indicator)) = best else {
        return Ok((None, 0));
    };
    let demo = agents.get_mut(&unit).expect("unit has an agent");
    let entry = demo
        .local
        .values
        .get_mut(&(indicator.clone(), period))
        .expect("the value exists");
    let old = entry.0;
    let new = if old.fract() == 0.0 {
        (old * 1.1).round().max(old + 1.0)
    } else {
        ((old * 1.1 + 0.01) * 100.0).round() / 100.0
    };
    let new = plan
        .indicator(&indicator)
        .and_then(|i| i.max)
        .map_or(new, |max| new.min(max));
    if new == old {
        return Ok((None, 0));
    }
    *entry = (
        new,
        "更正：统计口径调整 (corrected after a statistical revision)".into(),
    );
    let reports = demo.export_and_collect(Items::Values).await?.len();
    Ok((Some((unit, indicator, period, old, new)), reports))
}

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
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use duban_agent::config::{AgentConfig, Items, SourceConfig};
use duban_agent::daemon::Agent;
use duban_aggregator::alerting::AlertSettings;
use duban_aggregator::alerting::Evaluator;
use duban_aggregator::clock::{Clock, ManualClock};
use duban_aggregator::plan::{Period, Plan};
use duban_aggregator::serve::Serve;
use duban_aggregator::store::{AnyStore, ReportFilter, Store};
use duban_aggregator::tls::TlsFiles;
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

mod harness;
mod incidents;
mod supervise;

use crate::inbox::start_inbox;
pub use crate::options::Options;
use harness::*;
use incidents::*;

/// How often the view's figures are read, in real time.
const REFRESH_EVERY: Duration = Duration::from_millis(250);

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
    // Every unit that can receive an alert answers it from an agent of its own, the
    // supervising office decides from its own: those that report nothing only answer.
    let office = plan
        .supervision
        .office
        .clone()
        .context("the plan names no supervising office")?;
    let mut parties = scenario.units.clone();
    for unit in duban_aggregator::alerting::amconfig::alert_recipients(&plan)
        .into_iter()
        .chain(std::iter::once(office.clone()))
    {
        if !parties.contains(&unit) {
            parties.push(unit);
        }
    }
    let layout = setup::prepare(&options.dir, options.fresh, &plan, &parties)?;
    crate::init_log(&layout.log)?;
    tracing::info!(seed = options.seed, %until, "demo starting");

    let clock = Arc::new(ManualClock::new(noon_ms(&plan, start)));
    let (webhook, inbox) = start_inbox(clock.clone(), plan.clone()).await?;
    let shared = Shared {
        plan: plan.clone(),
        clock: clock.clone(),
        tls: TlsFiles {
            cert: layout.tls.join("server.crt"),
            key: layout.tls.join("server.key"),
            client_ca: Some(layout.tls.join("ca.crt")),
            crls: vec![layout.tls.join(duban_aggregator::admin::CRL_FILE)],
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
        for unit in &parties {
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

    let mut responders: BTreeMap<String, Agent> = BTreeMap::new();
    for unit in parties.iter().filter(|u| !agents.contains_key(*u)) {
        let config = AgentConfig::read(&setup::write_agent_config(&layout, &plan, unit, grpc)?)?;
        responders.insert(unit.clone(), Agent::open(config, clock.clone()).await?);
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
    // The 督办 loop runs on the first day from 30 % of the run on with a case open for each
    // statement, or at 85 % with what is open then.
    let supervision_day = day_at(start, total_days, 0.30);
    let supervision_last_day = day_at(start, total_days, 0.85);
    let mut answers: Option<supervise::Answers> = None;
    let mut supervision_check: Option<Check> = None;

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

        // The 督办 loop: units answer their alerts, the office decides (once the aggregator
        // is up on or after the day).
        let can_answer = |unit: &str| agents.contains_key(unit) || responders.contains_key(unit);
        if day >= supervision_day
            && answers.is_none()
            && let Some(agg) = &aggregator
            && (day >= supervision_last_day
                || supervise::enough_cases(&plan, &agg.store, &can_answer, clock.now_ms()).await?)
        {
            let said = supervise::answer_and_decide(
                &plan,
                &agg.store,
                &agents,
                &responders,
                day,
                clock.now_ms(),
            )
            .await?;
            for line in &said.lines {
                view.event(day, &format!("督办: {line}"));
            }
            answers = Some(said);
        }

        // The day ends: what was collected is acknowledged, then the alerts are evaluated at
        // this day's noon. Nothing here depends on how fast the machine is.
        if aggregator.is_some() {
            drain(&agents).await?;
            evaluator.once(false).await?;
        }
        if let (Some(said), None, Some(agg)) = (&answers, &supervision_check, &aggregator) {
            supervision_check =
                Some(supervise::check_effects(&plan, &agg.store, said, clock.now_ms()).await?);
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
    let climb = match &answers {
        Some(said) => supervise::check_climb(&plan, &agg.store, said).await?,
        None => Check::not_reached("no extension was refused"),
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
            (
                "the 督办 loop",
                supervision_check.unwrap_or_else(|| {
                    Check::not_reached(format!(
                        "units answer their alerts between {supervision_day} and {supervision_last_day}"
                    ))
                }),
            ),
            ("a refused case climbs the ladder", climb),
        ],
        supervision: duban_aggregator::supervision::record_at(
            &agg.store,
            &plan,
            clock.now_ms(),
        )
        .await?,
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

//! What each command does, once clap has parsed it.

use super::*;

/// How a command ended, when it did not fail outright.
pub(super) enum Outcome {
    Done,
    /// It ran, and what it printed says what went wrong (exit status 1).
    Problems,
}

pub(super) async fn open(config: &Path) -> anyhow::Result<Agent> {
    Ok(Agent::open(
        AgentConfig::read(config)?,
        Arc::new(duban_host::clock::SystemClock),
    )
    .await?)
}

/// Delivers for at most `send_for`, then prints what happened to the reports: refused items
/// with their codes and the centre's messages, dead letters, a hold and its reason, or what
/// still waits. Returns whether anything was refused or held.
pub(super) async fn send_and_report(agent: &Agent, send_for: Duration) -> anyhow::Result<bool> {
    let before = agent.outbox().refusals().await?.last().map_or(0, |r| r.id);
    let dead_before = agent.outbox().stats().await?.dead_letters;
    let mut deliverer = agent.deliverer().await?;
    let drained = agent
        .drain(&mut deliverer, Instant::now() + send_for)
        .await?;
    let stats = agent.outbox().stats().await?;
    let refused: Vec<_> = agent
        .outbox()
        .refusals()
        .await?
        .into_iter()
        .filter(|r| r.id > before)
        .collect();
    for r in &refused {
        cli::println(&format!(
            "REFUSED {} ({}, report seq {}): {}: {}{}",
            r.item,
            r.period,
            r.seq,
            r.code,
            r.message,
            if r.in_dead_letter {
                " [report in the dead letters: duban-agent outbox dead]"
            } else {
                ""
            }
        ));
    }
    let new_dead = stats.dead_letters - dead_before;
    if let Some(why) = deliverer.held() {
        cli::println(&format!(
            "HELD: {why}\n{} report(s) kept in the outbox; they are sent once this is fixed",
            stats.reports
        ));
        return Ok(true);
    }
    if drained {
        let accepted_all = refused.is_empty() && new_dead <= 0;
        cli::println(&if accepted_all {
            "delivered: the centre accepted everything; the outbox is empty".to_owned()
        } else {
            format!(
                "delivered, with refusals: the outbox is empty, {} dead letter(s)",
                stats.dead_letters
            )
        });
    } else {
        cli::println(&format!(
            "{} report(s) still waiting in the outbox; `duban-agent run` will keep trying",
            stats.reports
        ));
    }
    Ok(!refused.is_empty() || new_dead > 0)
}

pub(super) async fn submit(
    agent: Agent,
    item: Item,
    send_for: Duration,
) -> anyhow::Result<Outcome> {
    let done = agent.enqueue(&[item], true).await?;
    let seq = done.reports[0].0;
    cli::println(&if seq > 0 {
        format!("stored report seq {seq} in the outbox")
    } else {
        "stored the report in the outbox (provisional: this new outbox gets its seq from the centre first)".to_owned()
    });
    Ok(if send_and_report(&agent, send_for).await? {
        Outcome::Problems
    } else {
        Outcome::Done
    })
}

/// Signs, stores and sends one statement; prints what became of it.
async fn state(
    config: &Path,
    kind: duban_proto::pb::StatementKind,
    case: String,
    date: Option<String>,
    note: String,
    reference: String,
) -> anyhow::Result<Outcome> {
    use duban_agent::answer::{Said, say};
    use duban_proto::pb::StatementKind as K;
    let name = kind
        .as_str_name()
        .trim_start_matches("STATEMENT_KIND_")
        .to_lowercase();
    if let Some(date) = &date {
        date.parse::<jiff::civil::Date>()
            .map_err(|e| anyhow::anyhow!("--date {date:?} is not a date YYYY-MM-DD: {e}"))?;
    }
    match kind {
        K::Explain | K::RequestExtension => {
            anyhow::ensure!(date.is_some(), "{name} needs --date YYYY-MM-DD");
            anyhow::ensure!(
                !note.trim().is_empty(),
                "{name} needs --note with the reason"
            );
        }
        K::ClaimDone => anyhow::ensure!(
            !reference.trim().is_empty(),
            "done needs --reference: a document number, a URL or a note"
        ),
        _ => {}
    }
    anyhow::ensure!(
        note.len() <= 1024,
        "--note is {} bytes; at most 1024",
        note.len()
    );
    anyhow::ensure!(
        reference.len() <= 256,
        "--reference is {} bytes; at most 256",
        reference.len()
    );
    let agent = open(config).await?;
    let draft = duban_agent::outbox::StatementDraft {
        case_id: case.clone(),
        kind,
        date: date.unwrap_or_default(),
        note,
        reference,
    };
    let (stored, said) = say(&agent, draft).await?;
    Ok(match said {
        Said::Recorded(message) => {
            cli::println(&format!(
                "recorded: {name} on {case} (statement seq {}): {message}",
                stored.seq
            ));
            Outcome::Done
        }
        Said::Refused(reason, message) => {
            cli::println(&format!("REFUSED: {reason}: {message}"));
            Outcome::Problems
        }
        Said::Waiting(why) => {
            cli::println(&format!(
                "stored statement seq {} in the outbox; the centre has not answered yet ({why}); `duban-agent run` sends it",
                stored.seq
            ));
            Outcome::Done
        }
    })
}

pub(super) fn time_text(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

pub(super) async fn run(command: Command) -> anyhow::Result<Outcome> {
    match command {
        Command::Run { config, grace } => {
            let config = AgentConfig::read(&config.config)?;
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("install SIGHUP handler")?;
            // One permit per SIGHUP; a signal between two waits is kept, not lost.
            let hups = std::sync::Arc::new(tokio::sync::Notify::new());
            let notifier = hups.clone();
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    notifier.notify_one();
                }
            });
            let reload = move || {
                let hups = hups.clone();
                Box::pin(async move { hups.notified().await })
                    as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
            };
            daemon::run(config, grace, termination_signal(), reload).await?;
            Ok(Outcome::Done)
        }
        Command::Check {
            config,
            online,
            offline,
        } => {
            let mode = if offline {
                Online::Never
            } else if online {
                Online::Required
            } else {
                Online::IfReachable
            };
            let report = duban_agent::check::check(&config.config, mode).await?;
            cli::print(&report.render());
            Ok(if report.failures == 0 {
                Outcome::Done
            } else {
                Outcome::Problems
            })
        }
        Command::Collect {
            config,
            once,
            force,
            send_for,
        } => {
            anyhow::ensure!(
                once,
                "collect needs --once (the daemon that collects on schedule is `duban-agent run`)"
            );
            let agent = open(&config.config).await?;
            let mut failed = 0;
            for source in agent.config().sources.clone() {
                match agent.collect(&source, force).await {
                    Ok(done) => cli::println(&format!(
                        "{}: {} report(s) stored, {} item(s) unchanged since the centre accepted them (or still waiting){}",
                        source.name,
                        done.reports.len(),
                        done.unchanged,
                        if done.refused_before > 0 {
                            format!(
                                ", {} refused before and unchanged (duban-agent outbox dead)",
                                done.refused_before
                            )
                        } else {
                            String::new()
                        }
                    )),
                    Err(error) => {
                        failed += 1;
                        cli::println(&format!("{}: FAILED: {error:#}", source.name));
                    }
                }
            }
            let refused = send_and_report(&agent, send_for).await?;
            if failed > 0 {
                cli::println(&format!("{failed} source(s) failed"));
            }
            Ok(if failed > 0 || refused {
                Outcome::Problems
            } else {
                Outcome::Done
            })
        }
        Command::Alerts { config, json } => {
            let agent = open(&config.config).await?;
            let list = duban_agent::answer::open_alerts(&agent).await?;
            if json {
                let cases: Vec<serde_json::Value> = list
                    .cases
                    .iter()
                    .map(|c| {
                        serde_json::json!({
                            "case": c.case_id,
                            "alertname": c.alertname,
                            "severity": c.severity,
                            "summary": c.summary,
                            "deadline": c.deadline,
                            "original_deadline": c.original_deadline,
                            "escalation_level": c.escalation_level,
                            "recipients": c.recipients,
                            "record": c.record,
                        })
                    })
                    .collect();
                cli::println(&serde_json::to_string_pretty(&serde_json::json!({
                    "unit": list.unit_id,
                    "office": list.office,
                    "cases": cases,
                }))?);
                return Ok(Outcome::Done);
            }
            cli::println(&format!(
                "{} open alert case(s) for {}{}",
                list.cases.len(),
                list.unit_id,
                if list.office {
                    " (the supervising office: every case)"
                } else {
                    ""
                }
            ));
            for c in &list.cases {
                let deadline =
                    if c.original_deadline.is_empty() || c.original_deadline == c.deadline {
                        c.deadline.clone()
                    } else {
                        format!("{} (extended from {})", c.deadline, c.original_deadline)
                    };
                cli::println(&format!(
                    "\n{}\n  {} {} level {}, deadline {deadline}, to {}\n  {}",
                    c.case_id,
                    c.alertname,
                    c.severity,
                    c.escalation_level,
                    c.recipients.join(", "),
                    c.summary
                ));
                for line in &c.record {
                    cli::println(&format!("  | {line}"));
                }
            }
            Ok(Outcome::Done)
        }
        Command::Respond {
            config,
            what,
            case,
            date,
            note,
            reference,
        } => {
            use duban_proto::pb::StatementKind as K;
            let kind = match what {
                RespondKind::Ack => K::Acknowledge,
                RespondKind::Explain => K::Explain,
                RespondKind::Extend => K::RequestExtension,
                RespondKind::Done => K::ClaimDone,
            };
            state(&config.config, kind, case, date, note, reference).await
        }
        Command::Decide {
            config,
            what,
            case,
            date,
            note,
        } => {
            use duban_proto::pb::StatementKind as K;
            let kind = match what {
                DecideKind::Grant => K::GrantExtension,
                DecideKind::Refuse => K::RefuseExtension,
                DecideKind::Confirm => K::ConfirmDone,
                DecideKind::Reject => K::RejectDone,
            };
            state(&config.config, kind, case, date, note, String::new()).await
        }
        Command::Submit {
            config,
            indicator,
            period,
            value,
            note,
            send_for,
        } => {
            let period = period
                .parse()
                .map_err(|e| anyhow::anyhow!("--period: {e}"))?;
            anyhow::ensure!(value.is_finite(), "--value must be a finite number");
            let agent = open(&config.config).await?;
            let item = Item::Value {
                indicator,
                period,
                value,
                note,
            };
            submit(agent, item, send_for).await
        }
        Command::SubmitTask {
            config,
            task,
            milestone,
            period,
            percent,
            status,
            note,
            send_for,
        } => {
            let period = period
                .parse()
                .map_err(|e| anyhow::anyhow!("--period: {e}"))?;
            let status = status
                .map(|text| {
                    parse_status(&text).with_context(|| {
                        format!(
                            "--status {text:?} is not one of not_started, in_progress, blocked, done"
                        )
                    })
                })
                .transpose()?;
            let percent = match (percent, status) {
                (Some(p), _) => p,
                (None, Some(duban_proto::pb::TaskStatus::Done)) => 100.0,
                (None, _) => anyhow::bail!(
                    "--percent is needed (it may be left out only with --status done)"
                ),
            };
            anyhow::ensure!(
                (0.0..=100.0).contains(&percent),
                "--percent must be from 0 to 100"
            );
            let status = status.unwrap_or_else(|| status_from_percent(percent));
            check_done(status, percent).map_err(|m| anyhow::anyhow!("--status: {m}"))?;
            let agent = open(&config.config).await?;
            let item = Item::Task {
                task,
                milestone,
                period,
                percent,
                status,
                note,
            };
            submit(agent, item, send_for).await
        }
        Command::Outbox(OutboxCommand::Stats { config, json }) => {
            let agent = open(&config.config).await?;
            let stats = agent.outbox().stats().await?;
            if json {
                cli::println(&serde_json::to_string_pretty(&stats)?);
            } else {
                let age = stats
                    .oldest_created_at_ms
                    .map(|t| {
                        format!(
                            "{}s",
                            (jiff::Timestamp::now().as_millisecond() - t).max(0) / 1000
                        )
                    })
                    .unwrap_or_else(|| "—".into());
                cli::println(&format!(
                    "outbox {}\n  reports waiting  {}\n  bytes            {}\n  oldest age       {age}\n  dead letters     {}\n  next seq         {}{}",
                    agent.outbox().path().display(),
                    stats.reports,
                    stats.bytes,
                    stats.dead_letters,
                    stats.next_seq,
                    if stats.synced {
                        String::new()
                    } else {
                        format!(
                            " (new outbox: {} provisional report(s) get their seq once the centre answers)",
                            stats.provisional
                        )
                    }
                ));
            }
            Ok(Outcome::Done)
        }
        Command::Outbox(OutboxCommand::Dead {
            config,
            json,
            discard,
            yes,
        }) => {
            let agent = open(&config.config).await?;
            let dead = agent.outbox().dead_letters().await?;
            let refusals = agent.outbox().refusals().await?;
            let partial: Vec<_> = refusals.iter().filter(|r| !r.in_dead_letter).collect();
            if json {
                cli::println(&serde_json::to_string_pretty(&serde_json::json!({
                    "dead_letters": dead,
                    "refused_in_stored_reports": partial,
                }))?);
            } else {
                for d in &dead {
                    cli::println(&format!(
                        "seq {}  period {}  {}  {}  (unit {}, plan {}, failed {})",
                        d.seq,
                        d.period,
                        d.reason,
                        d.message,
                        d.unit,
                        d.audience,
                        time_text(d.failed_at_ms)
                    ));
                    for r in &d.refusals {
                        cli::println(&format!("    {}: {}: {}", r.item, r.code, r.message));
                    }
                }
                cli::println(&format!("{} dead letter(s)", dead.len()));
                if !partial.is_empty() {
                    cli::println("items refused in reports the centre stored:");
                    for r in &partial {
                        cli::println(&format!(
                            "    seq {}  period {}  {}: {}: {}",
                            r.seq, r.period, r.item, r.code, r.message
                        ));
                    }
                }
            }
            if discard {
                if !yes
                    && !confirm(&format!(
                        "discard {} dead letter(s) and {} recorded refusal(s)? [y/N] ",
                        dead.len(),
                        refusals.len()
                    ))?
                {
                    cli::println("nothing discarded");
                    return Ok(Outcome::Problems);
                }
                let deleted = agent.outbox().discard_dead().await?;
                cli::println(&format!(
                    "discarded {deleted} dead letter(s); `duban-agent collect --once` builds what the sources hold now"
                ));
            }
            Ok(Outcome::Done)
        }
        Command::Outbox(OutboxCommand::RetryDead { config }) => {
            let agent = open(&config.config).await?;
            let (moved, others) = agent
                .outbox()
                .retry_dead(agent.identity().signer(&agent.identity().key.current()))
                .await?;
            cli::println(&format!(
                "{moved} dead letter(s) back in the outbox; the daemon sends them next"
            ));
            if !others.is_empty() {
                cli::println(&format!(
                    "{} dead letter(s) kept: they were signed for another unit, plan or key than {} names (seq {:?}); resending them would be refused again. Discard them (`duban-agent outbox dead --discard`) and `duban-agent collect --once` to build them anew",
                    others.len(),
                    config.config.display(),
                    others
                ));
                return Ok(Outcome::Problems);
            }
            Ok(Outcome::Done)
        }
        Command::RotateKey { config } => {
            let config = AgentConfig::read(&config.config)?;
            let old = duban_proto::SigningKey::read_pkcs8_pem_file(&config.private_key)
                .with_context(|| format!("{}: private_key", config.file.display()))?;
            let started = duban_agent::rotate::start(&config.private_key)?;
            let public_pem = std::fs::read_to_string(&started.public_key)
                .with_context(|| format!("cannot read {}", started.public_key.display()))?;
            cli::println(&started.key_id.to_string());
            cli::eprintln(&format!(
                "{} {} (private, mode 0600), public key {}\n\
                 1. At the centre, register it for unit {unit} (copy the public key file there; it is printed below):\n   \
                    duban-aggregator keys add --unit {unit} --public-key {}\n\
                 2. The running agent offers the new key every 10 s and switches to it once the centre accepts it: its log says \"switched to the new signing key\", duban_agent_key_rotation_pending goes to 0, and the old key is kept as {}.\n\
                 3. Once the agent's outbox has drained (duban-agent outbox stats shows 0 reports), revoke the old key at the centre:\n   \
                    duban-aggregator keys revoke {}\n\
                 {public_pem}",
                if started.already_pending {
                    "a rotation is already pending; its key is"
                } else {
                    "new signing key written to"
                },
                duban_agent::rotate::pending_path(&config.private_key).display(),
                started.public_key.display(),
                started
                    .public_key
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                duban_agent::rotate::previous_path(&config.private_key).display(),
                old.key_id(),
                unit = config.unit,
            ));
            Ok(Outcome::Done)
        }
        Command::Keygen { out } => {
            let files = duban_agent::keygen::generate_into(&out)?;
            cli::println(&files.key_id.to_string());
            cli::eprintln(&format!(
                "wrote {} (private, mode 0600) and {}",
                files.private_key.display(),
                files.public_key.display()
            ));
            Ok(Outcome::Done)
        }
    }
}

/// Asks a yes/no question on the terminal; without a terminal the answer is no.
pub(super) fn confirm(question: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        cli::eprintln("not a terminal: give --yes to confirm");
        return Ok(false);
    }
    cli::print(question);
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// Resolves on SIGTERM or SIGINT. The SIGTERM handler is installed now, not on first poll, so
/// that a signal arriving during start-up is not fatal.
pub(super) fn termination_signal() -> impl std::future::Future<Output = ()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
}

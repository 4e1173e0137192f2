//! What each command does, once clap has parsed it.

use super::*;

impl DbArgs {
    fn file(&self) -> anyhow::Result<ServeFile> {
        Ok(match &self.config {
            Some(path) => ServeFile::read(path)?,
            None => ServeFile::default(),
        })
    }

    fn url(&self) -> anyhow::Result<String> {
        Ok(match &self.database_url {
            Some(url) => url.clone(),
            None => self
                .file()?
                .database_url
                .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned()),
        })
    }

    /// Opens for commands that write (keys add, keys revoke): created and migrated if needed.
    async fn open(&self) -> anyhow::Result<AnyStore> {
        let url = self.url()?;
        Ok(AnyStore::open(&url).await?)
    }

    /// Opens an existing database for commands that only read: never created, never migrated.
    async fn open_read_only(&self) -> anyhow::Result<AnyStore> {
        let url = self.url()?;
        Ok(AnyStore::open_read_only(&url).await?)
    }

    /// The plan: `--plan`, else `plan` of `--config`, else the embedded plan.
    fn plan(&self, arg: &PlanArg) -> anyhow::Result<plan::Plan> {
        match &arg.plan {
            Some(path) => load_plan(Some(path)),
            None => load_plan(self.file()?.plan.as_deref()),
        }
    }
}

impl PlanArg {
    fn load(&self) -> anyhow::Result<plan::Plan> {
        load_plan(self.plan.as_deref())
    }
}

pub(super) fn alertmanager_config(
    file: Option<&Path>,
    webhook_base: &str,
    receivers: Option<&Path>,
) -> anyhow::Result<String> {
    let plan = load_plan(file)?;
    let hand = match receivers {
        Some(path) => duban_aggregator::alerting::amconfig::HandWritten::read(path)
            .map_err(|e| anyhow::anyhow!(e))?,
        None => Default::default(),
    };
    duban_aggregator::alerting::amconfig::render(&plan, webhook_base, &hand)
        .map_err(|e| anyhow::anyhow!(e))
}

pub(super) async fn run(command: Command) -> anyhow::Result<()> {
    let now = SystemClock.now_ms();
    let output = match command {
        Command::Serve(args) => return serve(*args).await,
        Command::Plan(_) => unreachable!("handled without a runtime"),
        Command::Keys(KeysCommand::Add {
            unit,
            public_key,
            not_before,
            not_after,
            db,
            plan,
        }) => {
            let plan = db.plan(&plan)?;
            admin::keys_add(
                &db.open().await?,
                &plan,
                &unit,
                &public_key,
                not_before.as_deref(),
                not_after.as_deref(),
                now,
            )
            .await?
        }
        Command::Migrate {
            from: Some(from),
            to: Some(to),
            ..
        } => {
            let copied = duban_aggregator::store::copy::sqlite_to_postgres(
                &from,
                &to,
                &mut std::io::stderr(),
            )
            .await?;
            let rows: u64 = copied.tables.iter().map(|t| t.rows).sum();
            format!(
                "{} copied into {}: {rows} rows in {} tables, each verified by row count and content hash\n",
                duban_aggregator::store::redact(&from),
                duban_aggregator::store::redact(&to),
                copied.tables.len()
            )
        }
        Command::Archive {
            out,
            delete,
            db,
            plan,
        } => {
            let plan = db.plan(&plan)?;
            let today = jiff::Timestamp::from_millisecond(now)?
                .to_zoned(plan.tz.clone())
                .date();
            if delete && plan.window.end >= today {
                anyhow::bail!(
                    "plan {} runs until {} (its window); --delete removes only a closed plan, and nothing was written (without --delete, archive exports it)",
                    plan.id,
                    plan.window.end
                );
            }
            let url = db.url()?;
            let archived = duban_aggregator::store::archive::archive_plan(
                &url,
                &plan.id,
                &out,
                delete,
                &mut std::io::stderr(),
            )
            .await?;
            let rows: u64 = archived.tables.iter().map(|t| t.rows).sum();
            let mut text = format!(
                "plan {} archived into {}: {rows} rows in {} tables, each verified by row count and content hash\n",
                plan.id,
                out.display(),
                archived.tables.len()
            );
            match archived.deleted {
                Some(deleted) => text.push_str(&format!(
                    "{deleted} rows of plan {} deleted from {}\n",
                    plan.id,
                    duban_aggregator::store::redact(&url)
                )),
                None => {
                    text.push_str("nothing was deleted from the database (--delete does that)\n")
                }
            }
            text
        }
        Command::Migrate { db, .. } => {
            let url = db.url()?;
            AnyStore::open(&url).await?;
            format!(
                "{}: the schema is up to date\n",
                duban_aggregator::store::redact(&url)
            )
        }
        Command::Keys(KeysCommand::List { unit, json, db }) => {
            admin::keys_list(&db.open_read_only().await?, unit.as_deref(), json).await?
        }
        Command::Keys(KeysCommand::Revoke { key_id, db }) => {
            admin::keys_revoke(&db.open().await?, &key_id, now).await?
        }
        Command::Reports(ReportsCommand::List {
            unit,
            indicator,
            period,
            limit,
            json,
            db,
        }) => {
            let filter = ReportFilter {
                unit_id: unit,
                indicator_id: indicator,
                period,
                limit: Some(limit),
            };
            admin::reports_list(&db.open_read_only().await?, &filter, json).await?
        }
        Command::Status {
            as_of,
            go_live,
            json,
            db,
            plan,
        } => {
            let plan = db.plan(&plan)?;
            let at = as_of
                .as_deref()
                .map(parse_time_ms)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--as-of: {e}"))?
                .unwrap_or(now);
            let store = db.open_read_only().await?;
            let source = db
                .config
                .as_ref()
                .map_or("flags".to_owned(), |p| p.display().to_string());
            let mut alerts = db.file()?.alerts.unwrap_or_default();
            alerts.go_live = go_live.or(alerts.go_live);
            let mut policy = alerts.settle(&source)?.policy;
            if policy.go_live_ms.is_none() {
                policy.go_live_ms = store
                    .setting(duban_aggregator::serve::GO_LIVE_SETTING)
                    .await?
                    .and_then(|v| v.parse().ok());
            }
            admin::status(&store, &plan, at, &policy, json).await?
        }
        Command::AdminLog { json, db } => {
            admin::admin_log(&db.open_read_only().await?, json).await?
        }
        Command::Export {
            table,
            format,
            as_of,
            output,
            db,
            plan,
        } => {
            use duban_aggregator::web::export;
            if format == export::Format::Xlsx && output.is_none() {
                anyhow::bail!("--format xlsx writes a binary file: give --output FILE");
            }
            let plan = db.plan(&plan)?;
            let at = as_of
                .as_deref()
                .map(parse_time_ms)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--as-of: {e}"))?;
            let store = db.open_read_only().await?;
            let data =
                duban_aggregator::web::data::load(&store, &plan, at.unwrap_or(now), at.is_some())
                    .await?;
            let table = export::table(&plan, &data, &table)
                .ok_or_else(|| anyhow::anyhow!("no table {table:?}"))?;
            let bytes = export::render(&table, format, &plan.tz)?;
            match output {
                Some(path) => {
                    std::fs::write(&path, &bytes)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    cli::eprintln(&format!(
                        "wrote {} ({} rows) to {}",
                        table.name,
                        table.rows.len(),
                        path.display()
                    ));
                    return Ok(());
                }
                None => String::from_utf8(bytes)?,
            }
        }
        Command::DevCa {
            action: Some(DevCaCommand::Revoke { out, unit, cert }),
            ..
        } => {
            let cert = match (unit, cert) {
                (_, Some(cert)) => cert,
                (Some(unit), None) => out.join("units").join(format!("{unit}.crt")),
                (None, None) => anyhow::bail!("give --unit or --cert"),
            };
            admin::revoke_dev_cert(&out, &cert)?
        }
        Command::DevCa {
            action: None,
            out,
            units,
            server_names,
            plan,
        } => {
            let out = out.context("--out DIR is required")?;
            let plan = plan.load()?;
            let units = if units.is_empty() {
                plan.reporting_units()
                    .iter()
                    .map(|u| u.id.clone())
                    .collect()
            } else {
                units
            };
            admin::dev_ca(&out, &plan, &units, &server_names)?
        }
        Command::Supervision(SupervisionCommand::Report {
            as_of,
            json,
            db,
            plan,
        }) => {
            let plan = db.plan(&plan)?;
            let at = as_of
                .as_deref()
                .map(parse_time_ms)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--as-of: {e}"))?
                .unwrap_or(now);
            let store = db.open_read_only().await?;
            let record = duban_aggregator::supervision::record_at(&store, &plan, at).await?;
            if json {
                serde_json::to_string_pretty(&record)? + "\n"
            } else {
                duban_aggregator::supervision::report_text(&plan, &record)
            }
        }
        Command::Values(ValuesCommand::Show {
            indicator,
            json,
            db,
            plan,
        }) => {
            let plan = db.plan(&plan)?;
            admin::values_show(
                &db.open_read_only().await?,
                &plan,
                indicator.as_deref(),
                json,
            )
            .await?
        }
    };
    cli::print(&output);
    Ok(())
}

pub(super) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let file = args.db.file()?;
    let source = args
        .db
        .config
        .as_ref()
        .map_or("flags".to_owned(), |p| format!("{} and flags", p.display()));
    let file = file.merge(ServeFlags {
        grpc_listen: args.grpc_listen,
        http_listen: args.http_listen,
        database_url: args.db.database_url.clone(),
        plan: args.plan.plan.clone(),
        insecure_plaintext: args.insecure_plaintext,
        max_in_flight: args.max_in_flight,
        shutdown_grace_seconds: args.shutdown_grace_seconds,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        client_ca: args.client_ca,
        client_crls: args.client_crl,
        tls_reload_seconds: args.tls_reload_seconds,
        http_tls_cert: args.http_tls_cert,
        http_tls_key: args.http_tls_key,
        http_client_ca: args.http_client_ca,
        http_token_file: args.http_token_file,
        rate_limit: args.rate_limit,
        rate_limit_burst: args.rate_limit_burst,
        alertmanagers: args.alertmanager,
        webhooks: args.webhook,
        evaluate_every_seconds: args.evaluate_every_seconds,
        go_live: args.go_live,
    });
    let config = file.settle(&source)?;
    let plan = Arc::new(load_plan(config.plan.as_deref())?);
    let store = AnyStore::open(&config.database_url).await?;
    let grpc = tokio::net::TcpListener::bind(config.grpc_listen)
        .await
        .with_context(|| format!("cannot listen for gRPC on {}", config.grpc_listen))?;
    let http = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http_listen))?;
    let serve = Serve {
        plan,
        store,
        clock: Arc::new(SystemClock),
        tls: config.tls,
        security: config.security,
        max_in_flight: config.max_in_flight,
        shutdown_grace: config.shutdown_grace,
        alerts: config.alerts,
    };
    duban_aggregator::serve::run(
        serve,
        grpc,
        http,
        duban_aggregator::serve::termination_signal(),
    )
    .await?;
    Ok(())
}

pub(super) fn load_plan(file: Option<&Path>) -> anyhow::Result<plan::Plan> {
    let (name, result) = load(file);
    match result {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                tracing::debug!(%warning, "plan warning");
            }
            Ok(loaded.plan)
        }
        Err(errors) => anyhow::bail!("{name}: {errors}"),
    }
}

pub(super) fn load(file: Option<&Path>) -> (String, Result<plan::Loaded, plan::PlanErrors>) {
    match file {
        Some(path) => (path.display().to_string(), plan::load_file(path)),
        None => (
            plan::EMBEDDED_PLAN_NAME.to_owned(),
            plan::load_str(plan::EMBEDDED_PLAN, plan::EMBEDDED_PLAN_NAME),
        ),
    }
}

pub(super) fn print_errors(errors: &plan::PlanErrors) {
    for error in &errors.errors {
        cli::eprintln(&format!("error: {error}"));
    }
    let count = errors.errors.len();
    cli::eprintln(&format!(
        "{count} error{}: the plan is not valid",
        if count == 1 { "" } else { "s" }
    ));
}

pub(super) fn plan_check(file: Option<&Path>) -> ExitCode {
    let (name, result) = load(file);
    match result {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                cli::eprintln(&format!("warning: {warning}"));
            }
            let p = &loaded.plan;
            cli::println(&format!(
                "{name}: plan {} is valid: {} phases, {} units, {} unit groups, {} indicators, {} tasks ({} milestones), {} tracks ({} phases); {} warning{}",
                p.id,
                p.phases.len(),
                p.units.len(),
                p.groups.len(),
                p.indicators.len(),
                p.tasks.len(),
                p.tasks.iter().map(|t| t.milestones.len()).sum::<usize>(),
                p.tracks.len(),
                p.tracks.iter().map(|t| t.phases.len()).sum::<usize>(),
                loaded.warnings.len(),
                if loaded.warnings.len() == 1 { "" } else { "s" },
            ));
            ExitCode::SUCCESS
        }
        Err(errors) => {
            print_errors(&errors);
            ExitCode::FAILURE
        }
    }
}

pub(super) fn plan_show(file: Option<&Path>, json: bool) -> ExitCode {
    let (_, result) = load(file);
    match result {
        Ok(loaded) => {
            if json {
                let text = serde_json::to_string_pretty(&plan::show::to_json(&loaded.plan))
                    .expect("plan serializes");
                cli::println(&text);
            } else {
                cli::print(&plan::show::render(&loaded.plan));
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            print_errors(&errors);
            ExitCode::FAILURE
        }
    }
}

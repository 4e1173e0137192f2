//! Running the aggregator: gRPC (reports, health, reflection) and HTTP (metrics, health) on
//! listeners the caller binds, until `shutdown` resolves; then in-flight calls drain for at
//! most the grace period. Tests call [`run`] with port-0 listeners, `main` with the configured
//! addresses.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use duban_proto::pb::report_service_server::ReportServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::alerting::AlertSettings;
use crate::app::App;
use crate::clock::Clock;
use crate::grpc::limit::RateLimit;
use crate::grpc::{MAX_MESSAGE_BYTES, ReportServer};
use crate::keys::KeyRegistry;
use crate::metrics::Metrics;
use crate::plan::Plan;
use crate::store::{AnyStore, Store, StoreError};
use crate::tls::{Reloading, TlsFiles};

/// The settings key under which the go-live time in force is kept (Unix ms), for `status`.
pub const GO_LIVE_SETTING: &str = "go_live_ms";

/// What protects the listeners beyond the gRPC port's mTLS: the HTTP listener's TLS and
/// bearer token, how often TLS files are checked for changes, and the per-unit rate limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Security {
    /// TLS on the HTTP listener; with a client CA, clients must present a certificate it signed.
    pub http_tls: Option<TlsFiles>,
    /// A file holding the bearer token that every HTTP path but `/healthz` and `/readyz`
    /// requires; re-read when it changes.
    pub http_token_file: Option<PathBuf>,
    /// How often TLS files (and the token file) are checked for changes.
    pub reload_every: Duration,
    /// `None`: no per-unit rate limit.
    pub rate_limit: Option<RateLimit>,
}

impl Default for Security {
    fn default() -> Self {
        Security {
            http_tls: None,
            http_token_file: None,
            reload_every: crate::tls::DEFAULT_RELOAD_EVERY,
            rate_limit: Some(RateLimit::default()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Serve {
    pub plan: Arc<Plan>,
    pub store: AnyStore,
    pub clock: Arc<dyn Clock>,
    /// The gRPC listener's TLS files (a client CA is required); `None` means plaintext, which
    /// only an explicit `--insecure-plaintext` allows.
    pub tls: Option<TlsFiles>,
    pub security: Security,
    pub max_in_flight: usize,
    pub shutdown_grace: Duration,
    pub alerts: AlertSettings,
}

/// Why the aggregator could not serve, or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid TLS configuration: {0}")]
    Tls(crate::tls::TlsSetupError),
    #[error("{0}")]
    Token(String),
    #[error("{what}: {source}")]
    Store {
        what: &'static str,
        source: StoreError,
    },
    #[error("failed to build the reflection service: {0}")]
    Reflection(String),
    #[error("the listeners: {0}")]
    Listen(#[from] std::io::Error),
    #[error("the {0} server stopped: {1}")]
    Stopped(&'static str, String),
}

impl From<crate::tls::TlsSetupError> for ServeError {
    fn from(error: crate::tls::TlsSetupError) -> Self {
        ServeError::Tls(error)
    }
}

fn store_error(what: &'static str) -> impl FnOnce(StoreError) -> ServeError {
    move |source| ServeError::Store { what, source }
}

/// Serves until `shutdown` resolves, then drains for at most `shutdown_grace`.
pub async fn run(
    serve: Serve,
    grpc: TcpListener,
    http: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let metrics = Metrics::new(serve.store.backend());
    let grpc_tls = match &serve.tls {
        Some(files) => Some(Reloading::load(
            "grpc",
            files.clone(),
            vec![b"h2"],
            metrics.clone(),
        )?),
        None => None,
    };
    let http_tls = match &serve.security.http_tls {
        Some(files) => Some(Reloading::load(
            "http",
            files.clone(),
            vec![b"http/1.1"],
            metrics.clone(),
        )?),
        None => None,
    };
    let token = match &serve.security.http_token_file {
        Some(path) => Some(crate::http::Token::load(path).map_err(ServeError::Token)?),
        None => None,
    };
    warn_about_other_plans(&serve.store, &serve.plan).await?;
    let mut policy = serve.alerts.policy.clone();
    // By default the deployment goes live when it first serves: deadlines before that are
    // history, shown but never alerted (docs/PROGRESS.md). The go-live in force is recorded
    // for `status`.
    let first = serve
        .store
        .setting_or_insert("first_served_ms", &serve.clock.now_ms().to_string())
        .await
        .map_err(store_error("failed to read the deployment's settings"))?;
    let go_live = policy.go_live_ms.or_else(|| first.parse().ok());
    policy.go_live_ms = go_live;
    if let Some(go_live) = go_live {
        serve
            .store
            .set_setting(GO_LIVE_SETTING, &go_live.to_string())
            .await
            .map_err(store_error("failed to record the go-live time"))?;
        tracing::info!(
            go_live = %crate::progress::date_of_ms(go_live, &serve.plan.tz),
            "alerts are sent for deadlines from the go-live date on; earlier ones are shown, not alerted"
        );
    }
    let keys = Arc::new(KeyRegistry::default());
    keys.reload(&serve.store)
        .await
        .map_err(store_error("failed to load the key registry"))?;
    let app = App {
        plan: serve.plan.clone(),
        store: serve.store.clone(),
        clock: serve.clock.clone(),
        keys: keys.clone(),
        metrics,
        views: Default::default(),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    tokio::spawn(keys.clone().refresh_until(serve.store.clone(), stopped()));
    for reloading in grpc_tls.iter().chain(&http_tls) {
        tokio::spawn(
            reloading
                .clone()
                .watch_until(serve.security.reload_every, stopped()),
        );
    }
    if let Some(token) = &token {
        tokio::spawn(token.clone().watch_until(
            serve.security.reload_every,
            app.metrics.clone(),
            stopped(),
        ));
    }
    let evaluator = crate::alerting::Evaluator {
        plan: serve.plan.clone(),
        store: serve.store.clone(),
        clock: serve.clock.clone(),
        policy,
        notifier: crate::alerting::notify::Notifier::new(
            serve.alerts.sinks.clone(),
            app.metrics.alert_notifications.clone(),
            format!(
                "{}://{}",
                if http_tls.is_some() { "https" } else { "http" },
                http.local_addr()?
            ),
        ),
        metrics: app.metrics.clone(),
        every: serve.alerts.evaluate_every,
        resend_every: serve.alerts.resend_every,
        run_id: hex::encode(rand::random::<[u8; 8]>()),
        views: app.views.clone(),
    };
    if serve.alerts.evaluate {
        tokio::spawn(evaluator.run_until(stopped()));
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ReportServiceServer<ReportServer>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(duban_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let report_server = ReportServer::new(
        &app,
        serve.max_in_flight,
        serve.tls.is_some(),
        serve.security.rate_limit,
    );
    if let Some(limiter) = report_server.limiter() {
        let stop = stopped();
        tokio::spawn(async move {
            tokio::pin!(stop);
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tick.tick() => limiter.forget_idle(),
                }
            }
        });
    }
    let reports =
        ReportServiceServer::new(report_server).max_decoding_message_size(MAX_MESSAGE_BYTES);

    let grpc_addr = grpc.local_addr()?;
    let http_addr = http.local_addr()?;
    // Connections are renewed every MAX_CONNECTION_AGE (GOAWAY; calls in flight finish, clients
    // reconnect at once), so that a client certificate revoked, or a CA removed, while a
    // connection stays open is checked again within that time.
    let router = Server::builder()
        .max_connection_age(crate::tls::MAX_CONNECTION_AGE)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reports);
    let mut accept_tasks = Vec::new();
    let mut grpc_task = match grpc_tls {
        Some(config) => {
            let (incoming, task) = crate::tls::incoming(grpc, config);
            accept_tasks.push(task);
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped()))
        }
        None => {
            tracing::warn!(
                "serving gRPC WITHOUT TLS (--insecure-plaintext): reports and identities travel in clear; use only for tests"
            );
            let incoming = TcpIncoming::from(grpc).with_nodelay(Some(true));
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped()))
        }
    };
    let routes = crate::http::router(app.clone(), token);
    let mut http_task = match http_tls {
        Some(config) => {
            let (listener, task) = crate::tls::HttpsListener::new(http, config)?;
            accept_tasks.push(task);
            let server = axum::serve(listener, routes).with_graceful_shutdown(stopped());
            tokio::spawn(async move { server.await })
        }
        None => {
            let server = axum::serve(http, routes).with_graceful_shutdown(stopped());
            tokio::spawn(async move { server.await })
        }
    };
    tracing::info!(grpc = %grpc_addr, http = %http_addr, plan = %serve.plan.id, backend = serve.store.backend(), tls = serve.tls.is_some(), http_tls = serve.security.http_tls.is_some(), http_token = serve.security.http_token_file.is_some(), "aggregator serving");

    tokio::select! {
        _ = shutdown => tracing::info!(grace_seconds = serve.shutdown_grace.as_secs_f64(), "shutting down: draining in-flight calls"),
        result = &mut grpc_task => return Err(ServeError::Stopped("gRPC", format!("{result:?}"))),
        result = &mut http_task => return Err(ServeError::Stopped("HTTP", format!("{result:?}"))),
    }
    health
        .set_not_serving::<ReportServiceServer<ReportServer>>()
        .await;
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(serve.shutdown_grace, async {
        let grpc = grpc_task.await;
        let http = http_task.await;
        (grpc, http)
    })
    .await;
    // The port is free when this returns, so that a restart can bind it again at once.
    for task in accept_tasks {
        task.abort();
        let _ = task.await;
    }
    match drained {
        Ok((grpc, http)) => {
            grpc.map_err(|e| ServeError::Stopped("gRPC", e.to_string()))?
                .map_err(|e| ServeError::Stopped("gRPC", e.to_string()))?;
            http.map_err(|e| ServeError::Stopped("HTTP", e.to_string()))??;
            tracing::info!("drained; exiting");
        }
        Err(_) => tracing::warn!("grace period over with calls still in flight; exiting anyway"),
    }
    Ok(())
}

/// Warns when the database holds reports of another plan than the one served (a changed plan
/// id, or the wrong database): those reports are kept but count for nothing here.
async fn warn_about_other_plans(store: &AnyStore, plan: &Plan) -> Result<(), ServeError> {
    let others: Vec<String> = store
        .stored_plan_ids()
        .await
        .map_err(store_error("failed to read the database"))?
        .into_iter()
        .filter(|id| *id != plan.id)
        .collect();
    if !others.is_empty() {
        tracing::warn!(serving = %plan.id, stored = ?others, "the database holds reports of other plan ids than the plan served: a changed plan id, or the wrong database? Those reports are kept but are not counted");
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT. The SIGTERM handler is installed when this is called, not
/// on first poll, so that a signal arriving during start-up is not fatal.
pub fn termination_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    async move {
        #[cfg(unix)]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

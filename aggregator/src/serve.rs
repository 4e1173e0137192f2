//! Running the aggregator: gRPC (reports, health, reflection) and HTTP (metrics, health) on
//! listeners the caller binds, until `shutdown` resolves; then in-flight calls drain for at
//! most the grace period. Tests call [`run`] with port-0 listeners, `main` with the configured
//! addresses.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use duban_proto::pb::report_service_server::ReportServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::alerting::AlertSettings;
use crate::app::App;
use crate::clock::Clock;
use crate::grpc::{MAX_MESSAGE_BYTES, ReportServer};
use crate::keys::KeyRegistry;
use crate::metrics::Metrics;
use crate::plan::Plan;
use crate::store::{AnyStore, Store, StoreError};

/// The settings key under which the go-live time in force is kept (Unix ms), for `status`.
pub const GO_LIVE_SETTING: &str = "go_live_ms";

/// PEM contents of the server's TLS files.
#[derive(Clone)]
pub struct TlsMaterial {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub client_ca_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsMaterial")
    }
}

#[derive(Debug, Clone)]
pub struct Serve {
    pub plan: Arc<Plan>,
    pub store: AnyStore,
    pub clock: Arc<dyn Clock>,
    /// `None` means plaintext, which only an explicit `--insecure-plaintext` allows.
    pub tls: Option<TlsMaterial>,
    pub max_in_flight: usize,
    pub shutdown_grace: Duration,
    pub alerts: AlertSettings,
}

/// Why the aggregator could not serve, or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid TLS configuration: {0}")]
    Tls(#[from] crate::grpc::tls::TlsSetupError),
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
    let tls_config = match &serve.tls {
        Some(tls) => Some(crate::grpc::tls::server_config(
            &tls.cert_pem,
            &tls.key_pem,
            &tls.client_ca_pem,
        )?),
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
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    tokio::spawn(keys.clone().refresh_until(serve.store.clone(), stopped()));
    let evaluator = crate::alerting::Evaluator {
        plan: serve.plan.clone(),
        store: serve.store.clone(),
        clock: serve.clock.clone(),
        policy,
        notifier: crate::alerting::notify::Notifier::new(
            serve.alerts.sinks.clone(),
            app.metrics.alert_notifications.clone(),
            format!("http://{}", http.local_addr()?),
        ),
        metrics: app.metrics.clone(),
        every: serve.alerts.evaluate_every,
        resend_every: serve.alerts.resend_every,
        run_id: hex::encode(rand::random::<[u8; 8]>()),
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
    let reports = ReportServiceServer::new(ReportServer::new(
        &app,
        serve.max_in_flight,
        serve.tls.is_some(),
    ))
    .max_decoding_message_size(MAX_MESSAGE_BYTES);

    let grpc_addr = grpc.local_addr()?;
    let http_addr = http.local_addr()?;
    let router = Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reports);
    let mut accept_task = None;
    let mut grpc_task = match tls_config {
        Some(config) => {
            let (incoming, task) = crate::grpc::tls::incoming(grpc, config, app.metrics.clone());
            accept_task = Some(task);
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped()))
        }
        None => {
            tracing::warn!(
                "serving gRPC WITHOUT TLS (--insecure-plaintext): reports and identities travel in clear; use only for tests"
            );
            tokio::spawn(
                router.serve_with_incoming_shutdown(TcpListenerStream::new(grpc), stopped()),
            )
        }
    };
    let http_server =
        axum::serve(http, crate::http::router(app.clone())).with_graceful_shutdown(stopped());
    let mut http_task = tokio::spawn(async move { http_server.await });
    tracing::info!(grpc = %grpc_addr, http = %http_addr, plan = %serve.plan.id, backend = serve.store.backend(), tls = serve.tls.is_some(), "aggregator serving");

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
    if let Some(task) = accept_task {
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

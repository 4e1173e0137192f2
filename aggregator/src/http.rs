//! The HTTP side: `/metrics` (Prometheus text), `/healthz` (the process is up), `/readyz`
//! (the store answers and the plan is loaded), the JSON under `/api/v1/`, and the plan
//! office's web view (`crate::web`).

use axum::Json;
use std::future::Future;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::app::App;
use crate::store::Store;

/// Every route; with a `token`, all but `/healthz` and `/readyz` (the orchestrator's probes)
/// require `Authorization: Bearer <token>`.
pub fn router(app: App, token: Option<Token>) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/progress", get(progress))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/supervision", get(supervision))
        .route("/api/v1/cases", get(cases))
        .route("/api/v1/reporting", get(reporting))
        .merge(crate::web::routes());
    let guarded = match token {
        Some(token) => {
            guarded.route_layer(axum::middleware::from_fn_with_state(token, require_token))
        }
        None => guarded,
    };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .merge(guarded)
        .with_state(app)
}

/// The bearer token the HTTP side requires, read from a file (surrounding whitespace ignored)
/// and re-read when the file changes; a changed file that is empty or unreadable keeps the
/// token in force, and says so in the log.
#[derive(Clone)]
pub struct Token {
    path: std::path::PathBuf,
    current: std::sync::Arc<std::sync::RwLock<Vec<u8>>>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({})", self.path.display())
    }
}

/// Tokens shorter than this are refused: a token is a secret, not a password to remember.
pub const MIN_TOKEN_BYTES: usize = 16;

impl Token {
    fn read(path: &std::path::Path) -> Result<Vec<u8>, String> {
        let bytes = std::fs::read(path)
            .map_err(|e| format!("{}: the HTTP token: cannot read: {e}", path.display()))?;
        let token = bytes.trim_ascii();
        if token.len() < MIN_TOKEN_BYTES {
            return Err(format!(
                "{}: the HTTP token: expected at least {MIN_TOKEN_BYTES} bytes (e.g. `openssl rand -hex 32`), found {}",
                path.display(),
                token.len()
            ));
        }
        if !token.iter().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{}: the HTTP token: expected one line of printable ASCII without spaces",
                path.display()
            ));
        }
        Ok(token.to_vec())
    }

    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        Ok(Token {
            current: std::sync::Arc::new(std::sync::RwLock::new(Self::read(path)?)),
            path: path.to_owned(),
        })
    }

    /// Whether `presented` is the token, compared in constant time.
    pub fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        let current = self.current.read().expect("token lock");
        bool::from(current.as_slice().ct_eq(presented))
    }

    /// Re-reads the file every `every` until `stop` resolves.
    pub async fn watch_until(
        self,
        every: std::time::Duration,
        metrics: crate::metrics::Metrics,
        stop: impl Future<Output = ()>,
    ) {
        let mut tick = tokio::time::interval(every);
        tokio::pin!(stop);
        let mut last_error = None;
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {}
            }
            match Self::read(&self.path) {
                Ok(token) => {
                    last_error = None;
                    metrics
                        .tls_reload_failing
                        .with_label_values(&["http_token"])
                        .set(0);
                    let mut current = self.current.write().expect("token lock");
                    if *current != token {
                        *current = token;
                        metrics.tls_reloads.with_label_values(&["http_token"]).inc();
                        tracing::info!(file = %self.path.display(), "loaded a new HTTP token");
                    }
                }
                Err(error) if last_error.as_ref() != Some(&error) => {
                    metrics
                        .tls_reload_errors
                        .with_label_values(&["http_token"])
                        .inc();
                    metrics
                        .tls_reload_failing
                        .with_label_values(&["http_token"])
                        .set(1);
                    tracing::error!(%error, "the HTTP token in force stays in force");
                    last_error = Some(error);
                }
                Err(_) => {}
            }
        }
    }
}

async fn require_token(
    State(token): State<Token>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|value| value.as_bytes())
        .filter(|value| value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer "))
        .map(|value| &value[7..]);
    match presented {
        Some(presented) if token.matches(presented) => next.run(request).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"duban\"")],
            "this path requires `Authorization: Bearer <token>` (the aggregator's --http-token-file)\n",
        )
            .into_response(),
    }
}

async fn metrics(State(app): State<App>) -> impl IntoResponse {
    let plan = &app.plan;
    let now = app.now_ms();
    // The view (snapshot and progress, reused while nothing is written: App::view) feeds
    // progress and the 督办 record (its statements); every alert (open and resolved) feeds the
    // open-alert counts and the record. Taken first, so that the counters rendered include
    // this scrape's own computation.
    let taken = (
        app.view().await,
        app.store.alerts(&plan.id, 0).await,
        app.store.agents().await,
    );
    let mut body = app.metrics.render();
    body.push_str(&app.keys.render_metrics(now));
    match taken {
        (Ok(view), Ok(alerts), Ok(agents)) => {
            let mut state =
                crate::metrics::plan_state::plan_metrics(plan, &view.progress, &alerts, &agents);
            let record = crate::supervision::record(plan, &alerts, &view.snapshot.statements, now);
            state.push_str(&crate::metrics::plan_state::supervision_metrics(
                plan, &record,
            ));
            crate::metrics::plan_state::check_budget(plan, &state);
            body.push_str(&state);
        }
        (Err(error), _, _) | (_, Err(error), _) | (_, _, Err(error)) => {
            tracing::warn!(%error, "plan metrics unavailable for this scrape")
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

#[derive(Debug, serde::Deserialize)]
struct AsOf {
    /// RFC 3339 time or YYYY-MM-DD; default now.
    as_of: Option<String>,
}

/// The `as_of` of a query, or now; a bad one is the error response.
fn as_of(app: &App, query: &AsOf) -> Result<i64, Box<Response>> {
    match query
        .as_of
        .as_deref()
        .map(crate::clock::parse_time_ms)
        .transpose()
    {
        Ok(at) => Ok(at.unwrap_or_else(|| app.now_ms())),
        Err(error) => Err(Box::new(
            (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({ "error": format!("as_of: {error}") })),
            )
                .into_response(),
        )),
    }
}

/// Each unit's 督办 record (docs/PROGRESS.md, "督办 statistics") at `as_of`.
async fn supervision(State(app): State<App>, Query(query): Query<AsOf>) -> Response {
    let now = match as_of(&app, &query) {
        Ok(now) => now,
        Err(response) => return *response,
    };
    match crate::supervision::record_at(&app.store, &app.plan, now).await {
        Ok(record) => Json(record).into_response(),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "error": error.to_string() })),
        )
            .into_response(),
    }
}

/// The query of `/api/v1/progress`: [`AsOf`]'s, and whether to give the obligations.
#[derive(Debug, serde::Deserialize)]
struct ProgressQuery {
    as_of: Option<String>,
    /// `false` leaves the obligations out (everything else is the same); default `true`.
    obligations: Option<bool>,
}

async fn progress(State(app): State<App>, Query(query): Query<ProgressQuery>) -> Response {
    let obligations = query.obligations.unwrap_or(true);
    let query = AsOf { as_of: query.as_of };
    let json = |progress: &crate::progress::Progress| {
        if obligations {
            Json(progress).into_response()
        } else {
            Json(progress.summary()).into_response()
        }
    };
    let now = match as_of(&app, &query) {
        Ok(now) => now,
        Err(response) => return *response,
    };
    // A past `as_of` is a true history: only what had been received by then. Now is the
    // view, reused while nothing is written (App::view).
    let answer = if query.as_of.is_some() {
        crate::store::progress_as_of(&app.store, &app.plan, now)
            .await
            .map(|p| json(&p))
    } else {
        app.view().await.map(|view| json(&view.progress))
    };
    match answer {
        Ok(response) => response,
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "error": error.to_string() })),
        )
            .into_response(),
    }
}

/// The alerts open at `as_of` (default now).
async fn alerts(State(app): State<App>, Query(query): Query<AsOf>) -> Response {
    let now = match as_of(&app, &query) {
        Ok(now) => now,
        Err(response) => return *response,
    };
    match app.store.alerts(&app.plan.id, now).await {
        Ok(mut alerts) => {
            alerts.retain(|a| a.starts_at_ms <= now && a.ends_at_ms.is_none_or(|end| end > now));
            Json(serde_json::json!({ "plan": app.plan.id, "as_of_ms": now, "alerts": alerts }))
                .into_response()
        }
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "error": error.to_string() })),
        )
            .into_response(),
    }
}

/// The web view's state at `as_of`, or the error response.
async fn view_data(app: &App, query: &AsOf) -> Result<crate::web::data::Data, Response> {
    let now = as_of(app, query).map_err(|r| *r)?;
    crate::web::data::load(&app.store, &app.plan, now, query.as_of.is_some())
        .await
        .map_err(|error| {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({ "error": error.to_string() })),
            )
                .into_response()
        })
}

/// Every alert case fired by `as_of`, with its history (fired, notified, escalated, the
/// statements, resolved): what the web view's 督办记录 shows.
async fn cases(State(app): State<App>, Query(query): Query<AsOf>) -> Response {
    match view_data(&app, &query).await {
        Ok(data) => Json(serde_json::json!({
            "plan": app.plan.id,
            "as_of_ms": data.as_of_ms,
            "cases": crate::web::data::histories(&data),
        }))
        .into_response(),
        Err(response) => response,
    }
}

/// Each reporting unit's record at `as_of`: last report, completeness, timeliness, overdue
/// obligations, seq gaps, refused items (the web view's 报送情况).
async fn reporting(State(app): State<App>, Query(query): Query<AsOf>) -> Response {
    match view_data(&app, &query).await {
        Ok(data) => Json(serde_json::json!({
            "plan": app.plan.id,
            "as_of_ms": data.as_of_ms,
            "units": crate::web::data::reporting(&app.plan, &data),
        }))
        .into_response(),
        Err(response) => response,
    }
}

/// How long `/readyz` waits for the database: a probe that hangs while the database is down
/// would say nothing at all (found by the fault harness's postgres-restart scenario).
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

async fn ready(State(app): State<App>) -> impl IntoResponse {
    let answer = tokio::time::timeout(READY_TIMEOUT, app.store.ping())
        .await
        .unwrap_or_else(|_| {
            Err(crate::store::StoreError::Schema(format!(
                "the database did not answer within {} s",
                READY_TIMEOUT.as_secs()
            )))
        });
    match answer {
        Ok(()) => (
            StatusCode::OK,
            format!("ready: plan {}, {} keys\n", &app.plan.id, app.keys.len()),
        ),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {error}\n"),
        ),
    }
}

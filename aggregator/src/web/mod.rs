//! The plan office's window: read-only HTML pages served by the aggregator on its HTTP
//! listener, in Chinese (English with `?lang=en`), each at any `?as_of=`, and the exports.
//! Rendered on the server (maud, charts by plotters as inline SVG); nothing loads from
//! elsewhere, and every page reads and prints without JavaScript (`sort.js` only adds sorting
//! by a column). docs/OPERATIONS.md, "The web view", lists the pages.

pub mod chart;
pub mod data;
pub mod export;
pub mod lang;
pub mod layout;
pub mod pages;
pub mod record;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use maud::Markup;

use crate::app::App;
use export::Format;
use lang::Lang;
use layout::Ctx;

const STYLE: &str = include_str!("style.css");
const SORT: &str = include_str!("sort.js");

/// The query every page takes.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ViewQuery {
    /// RFC 3339 time or YYYY-MM-DD: the state as it was known then. Absent or empty: now.
    pub as_of: Option<String>,
    /// `en` for English; anything else is Chinese.
    pub lang: Option<String>,
    /// The 督办通报's first day (YYYY-MM-DD): only alerts fired from then on.
    pub since: Option<String>,
}

impl ViewQuery {
    fn as_of(&self) -> Option<&str> {
        self.as_of.as_deref().filter(|s| !s.is_empty())
    }
}

pub fn routes() -> Router<App> {
    Router::new()
        .route("/", get(overview))
        .route("/indicators/{id}", get(indicator))
        .route("/tasks", get(tasks))
        .route("/units", get(units))
        .route("/units/{id}", get(unit))
        .route("/alerts", get(alerts))
        .route("/alerts/report", get(report))
        .route("/export/{file}", get(export_file))
        .route(
            "/view/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route(
            "/view/sort.js",
            get(|| async { asset("text/javascript; charset=utf-8", SORT) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// An HTML error page with its status.
fn error_page(status: StatusCode, lang: Lang, message: &str) -> Response {
    let title = lang.t("出错了", "Error");
    let body = maud::html! {
        (maud::DOCTYPE)
        html lang=(lang.html()) {
            head { meta charset="utf-8"; title { (title) } link rel="stylesheet" href="/view/style.css"; }
            body { main { h1 { (title) } p.error { (message) } p { a href="/" { (lang.t("返回总览", "Back to the overview")) } } } }
        }
    };
    (status, Html(body.into_string())).into_response()
}

/// The state the page shows, at its `as_of`.
async fn load(app: &App, query: &ViewQuery) -> Result<(i64, data::Data), Response> {
    let lang = Lang::parse(query.lang.as_deref());
    let at = match query.as_of().map(crate::clock::parse_time_ms).transpose() {
        Ok(at) => at,
        Err(error) => {
            return Err(error_page(
                StatusCode::BAD_REQUEST,
                lang,
                &format!("as_of: {error}"),
            ));
        }
    };
    let as_of_ms = at.unwrap_or_else(|| app.now_ms());
    match data::load(&app.store, &app.plan, as_of_ms, at.is_some()).await {
        Ok(data) => Ok((as_of_ms, data)),
        Err(error) => Err(error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            lang,
            &format!("store: {error}"),
        )),
    }
}

fn ctx<'a>(app: &'a App, query: &ViewQuery, as_of_ms: i64, path: String) -> Ctx<'a> {
    Ctx {
        plan: &app.plan,
        lang: Lang::parse(query.lang.as_deref()),
        as_of: query.as_of().map(str::to_owned),
        as_of_ms,
        path,
    }
}

fn html(markup: Markup) -> Response {
    Html(markup.into_string()).into_response()
}

macro_rules! loaded {
    ($app:expr, $query:expr) => {
        match load(&$app, &$query).await {
            Ok(loaded) => loaded,
            Err(response) => return response,
        }
    };
}

async fn overview(State(app): State<App>, Query(query): Query<ViewQuery>) -> Response {
    let (at, data) = loaded!(app, query);
    html(pages::overview(&ctx(&app, &query, at, "/".into()), &data))
}

async fn indicator(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(query): Query<ViewQuery>,
) -> Response {
    let (at, data) = loaded!(app, query);
    let ctx = ctx(&app, &query, at, format!("/indicators/{id}"));
    match pages::indicator(&ctx, &data, &id) {
        Some(page) => html(page),
        None => not_found(
            &ctx,
            &format!("indicator {id:?} is not in plan {}", app.plan.id),
        ),
    }
}

async fn tasks(State(app): State<App>, Query(query): Query<ViewQuery>) -> Response {
    let (at, data) = loaded!(app, query);
    html(pages::tasks(&ctx(&app, &query, at, "/tasks".into()), &data))
}

async fn units(State(app): State<App>, Query(query): Query<ViewQuery>) -> Response {
    let (at, data) = loaded!(app, query);
    html(record::units(
        &ctx(&app, &query, at, "/units".into()),
        &data,
    ))
}

async fn unit(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(query): Query<ViewQuery>,
) -> Response {
    let (at, data) = loaded!(app, query);
    let ctx = ctx(&app, &query, at, format!("/units/{id}"));
    match record::unit(&ctx, &data, &id) {
        Some(page) => html(page),
        None => not_found(&ctx, &format!("unit {id:?} is not in plan {}", app.plan.id)),
    }
}

fn not_found(ctx: &Ctx, what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Html(layout::not_found(ctx, what).into_string()),
    )
        .into_response()
}

async fn alerts(State(app): State<App>, Query(query): Query<ViewQuery>) -> Response {
    let (at, data) = loaded!(app, query);
    html(record::alerts(
        &ctx(&app, &query, at, "/alerts".into()),
        &data,
    ))
}

/// The query's `since`, or the error page.
fn since(query: &ViewQuery) -> Result<Option<i64>, Box<Response>> {
    query
        .since
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(crate::clock::parse_time_ms)
        .transpose()
        .map_err(|error| {
            Box::new(error_page(
                StatusCode::BAD_REQUEST,
                Lang::parse(query.lang.as_deref()),
                &format!("since: {error}"),
            ))
        })
}

async fn report(State(app): State<App>, Query(query): Query<ViewQuery>) -> Response {
    let since = match since(&query) {
        Ok(since) => since,
        Err(response) => return *response,
    };
    let (at, mut data) = loaded!(app, query);
    if let Some(since) = since {
        data = data.since(&app.plan, since);
    }
    html(record::report(
        &ctx(&app, &query, at, "/alerts/report".into()),
        &data,
        since,
    ))
}

/// `/export/<table>.<csv|xlsx>`, at the query's `as_of`.
async fn export_file(
    State(app): State<App>,
    Path(file): Path<String>,
    Query(query): Query<ViewQuery>,
) -> Response {
    let lang = Lang::parse(query.lang.as_deref());
    let Some((name, format)) = file
        .rsplit_once('.')
        .and_then(|(name, ext)| Some((name, Format::parse(ext)?)))
        .filter(|(name, _)| export::TABLES.contains(name))
    else {
        return error_page(
            StatusCode::NOT_FOUND,
            lang,
            &format!(
                "no export {file:?}: the exports are {} as .csv or .xlsx",
                export::TABLES.join(", ")
            ),
        );
    };
    let since = match since(&query) {
        Ok(since) => since,
        Err(response) => return *response,
    };
    let (at, mut data) = loaded!(app, query);
    if let Some(since) = since {
        data = data.since(&app.plan, since);
    }
    let Some(table) = export::table(&app.plan, &data, name) else {
        return error_page(StatusCode::NOT_FOUND, lang, name);
    };
    match export::render(&table, format, &app.plan.tz) {
        Ok(bytes) => {
            let filename = format!(
                "duban-{}-{name}-{}.{}",
                app.plan.id,
                crate::progress::date_of_ms(at, &app.plan.tz),
                format.extension()
            );
            let disposition =
                HeaderValue::from_str(&format!("attachment; filename=\"{filename}\""))
                    .unwrap_or(HeaderValue::from_static("attachment"));
            (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(format.content_type()),
                    ),
                    (header::CONTENT_DISPOSITION, disposition),
                ],
                bytes,
            )
                .into_response()
        }
        Err(error) => error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            lang,
            &format!("export {name}: {error:#}"),
        ),
    }
}

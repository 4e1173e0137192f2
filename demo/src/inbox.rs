//! The units' inboxes: an HTTP endpoint taking Alertmanager-format webhooks, recording each
//! alert with the simulated day it arrived.

use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::net::TcpListener;

use duban_aggregator::plan::Plan;
use duban_host::clock::{Clock, ManualClock};
use jiff::civil::Date;

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
pub async fn start_inbox(
    clock: Arc<ManualClock>,
    plan: Arc<Plan>,
) -> anyhow::Result<(String, Inbox)> {
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

//! Sending alerts: always to the log; to every configured Alertmanager (`POST /api/v2/alerts`,
//! all active alerts re-sent every `resend_every`, resolved ones once with `endsAt`; identical
//! label sets deduplicate there); and to webhooks in Alertmanager's webhook format, grouped per
//! recipient, with retries. Only the replica that [`crate::store::Store::is_notifier`] names
//! evaluates the alert state and calls this (see [`crate::alerting::Evaluator::once`]).

use std::collections::BTreeMap;
use std::time::Duration;

use prometheus::IntCounterVec;
use serde_json::{Value, json};

use crate::store::{AlertChanges, AlertRow};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sinks {
    pub alertmanagers: Vec<String>,
    pub webhooks: Vec<String>,
}

#[derive(Clone)]
pub struct Notifier {
    sinks: Sinks,
    client: reqwest::Client,
    counter: IntCounterVec,
    external_url: String,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Notifier({:?})", self.sinks)
    }
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn am_alert(alert: &AlertRow, external_url: &str) -> Value {
    let mut value = json!({
        "labels": alert.labels,
        "annotations": alert.annotations,
        "startsAt": rfc3339(alert.starts_at_ms),
        "generatorURL": format!("{external_url}/api/v1/alerts"),
    });
    if let Some(end) = alert.ends_at_ms {
        value["endsAt"] = json!(rfc3339(end));
    }
    value
}

impl Notifier {
    pub fn new(sinks: Sinks, counter: IntCounterVec, external_url: String) -> Self {
        crate::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("HTTP client");
        Notifier {
            sinks,
            client,
            counter,
            external_url,
        }
    }

    async fn post(&self, sink: &str, url: &str, body: &Value, attempts: u32) -> bool {
        for attempt in 0..attempts {
            match self.client.post(url).json(body).send().await {
                Ok(response) if response.status().is_success() => {
                    self.counter.with_label_values(&[sink, "ok"]).inc();
                    return true;
                }
                Ok(response) => {
                    tracing::warn!(sink, url, status = %response.status(), attempt, "alert delivery refused")
                }
                Err(error) => tracing::warn!(sink, url, %error, attempt, "alert delivery failed"),
            }
            if attempt + 1 < attempts {
                tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
            }
        }
        self.counter.with_label_values(&[sink, "failed"]).inc();
        false
    }

    /// Logs the changes, and sends what each sink should get. `resend` says whether the
    /// active alerts are due for their periodic re-send to Alertmanager.
    pub async fn deliver(&self, changes: &AlertChanges, resend: bool) {
        for alert in &changes.fired {
            tracing::warn!(alertname = alert.labels.get("alertname").map(String::as_str), recipient = alert.labels.get("recipient").map(String::as_str), severity = alert.labels.get("severity").map(String::as_str), labels = ?alert.labels, summary = alert.annotations.get("summary").map(String::as_str), "alert firing");
        }
        for alert in &changes.resolved {
            tracing::info!(alertname = alert.labels.get("alertname").map(String::as_str), recipient = alert.labels.get("recipient").map(String::as_str), labels = ?alert.labels, "alert resolved");
        }
        self.counter
            .with_label_values(&["log", "ok"])
            .inc_by((changes.fired.len() + changes.resolved.len()) as u64);

        if !self.sinks.alertmanagers.is_empty()
            && (resend || !changes.fired.is_empty() || !changes.resolved.is_empty())
        {
            let batch: Vec<Value> = changes
                .active
                .iter()
                .chain(&changes.resolved)
                .map(|a| am_alert(a, &self.external_url))
                .collect();
            if !batch.is_empty() {
                let body = Value::Array(batch);
                for base in &self.sinks.alertmanagers {
                    self.post(
                        "alertmanager",
                        &format!("{}/api/v2/alerts", base.trim_end_matches('/')),
                        &body,
                        3,
                    )
                    .await;
                }
            }
        }

        if !self.sinks.webhooks.is_empty() {
            for (status, alerts) in [("firing", &changes.fired), ("resolved", &changes.resolved)] {
                let mut by_recipient: BTreeMap<&str, Vec<&AlertRow>> = BTreeMap::new();
                for alert in alerts {
                    by_recipient
                        .entry(
                            alert
                                .labels
                                .get("recipient")
                                .map(String::as_str)
                                .unwrap_or(""),
                        )
                        .or_default()
                        .push(alert);
                }
                for (recipient, group) in by_recipient {
                    let body = self.webhook_body(status, recipient, &group);
                    for url in &self.sinks.webhooks {
                        self.post("webhook", url, &body, 4).await;
                    }
                }
            }
        }
    }

    /// Alertmanager's webhook format (version 4), one group per recipient, named as the
    /// generated Alertmanager configuration names its receiver.
    fn webhook_body(&self, status: &str, recipient: &str, alerts: &[&AlertRow]) -> Value {
        json!({
            "version": "4",
            "groupKey": format!("{{}}:{{recipient=\"{recipient}\"}}"),
            "truncatedAlerts": 0,
            "status": status,
            "receiver": crate::alerting::amconfig::unit_receiver(recipient),
            "groupLabels": { "recipient": recipient },
            "commonLabels": { "recipient": recipient },
            "commonAnnotations": {},
            "externalURL": self.external_url,
            "alerts": alerts.iter().map(|a| {
                let mut v = am_alert(a, &self.external_url);
                v["status"] = json!(if a.ends_at_ms.is_some() { "resolved" } else { "firing" });
                v["fingerprint"] = json!(a.key);
                v["endsAt"] = json!(a.ends_at_ms.map(rfc3339).unwrap_or_else(|| "0001-01-01T00:00:00Z".into()));
                v
            }).collect::<Vec<_>>(),
        })
    }
}

/// The Alertmanager silence that keeps an acknowledged case quiet: every alert of the case
/// (its subject labels), except the escalation copies, until `quiet_until`.
pub fn quiet_silence(alert: &AlertRow, now_ms: i64) -> Option<(String, Value)> {
    let until = alert.annotations.get("quiet_until")?;
    let until_ms = until.parse::<jiff::Timestamp>().ok()?.as_millisecond();
    if until_ms <= now_ms {
        return None;
    }
    let acknowledged = alert.annotations.get("acknowledged")?;
    let case = alert.annotations.get("case")?;
    let mut matchers: Vec<Value> = ["alertname", "plan", "unit", "indicator", "period", "task", "milestone"]
        .iter()
        .filter_map(|name| {
            alert.labels.get(*name).map(|value| {
                serde_json::json!({ "name": name, "value": value, "isRegex": false, "isEqual": true })
            })
        })
        .collect();
    matchers.push(serde_json::json!({ "name": "role", "value": "escalation", "isRegex": false, "isEqual": false }));
    let silence = serde_json::json!({
        "matchers": matchers,
        "startsAt": rfc3339(now_ms),
        "endsAt": until,
        "createdBy": "duban",
        "comment": format!("督办: {case} acknowledged by {acknowledged}; quiet until {until}"),
    });
    // One silence per case, alert name and acknowledgement.
    let key = format!(
        "silence/{case}/{}/{acknowledged}",
        alert
            .labels
            .get("alertname")
            .map(String::as_str)
            .unwrap_or_default()
    );
    Some((key, silence))
}

impl Notifier {
    /// Whether this notifier sends to Alertmanager.
    pub fn has_alertmanagers(&self) -> bool {
        !self.sinks.alertmanagers.is_empty()
    }

    /// Creates `silence` in every Alertmanager; true when all took it.
    pub async fn silence(&self, silence: &Value) -> bool {
        let mut all = true;
        for base in &self.sinks.alertmanagers {
            all &= self
                .post(
                    "alertmanager",
                    &format!("{}/api/v2/silences", base.trim_end_matches('/')),
                    silence,
                    3,
                )
                .await;
        }
        all
    }
}

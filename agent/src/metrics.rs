//! The agent's self-metrics, defined in one place and pre-set so every series exists from the
//! first scrape. Served on `/metrics` when `[metrics] listen` is configured.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

#[derive(Clone)]
pub struct AgentMetrics {
    pub registry: Registry,
    pub outbox_reports: IntGauge,
    pub outbox_bytes: IntGauge,
    pub outbox_oldest_age_seconds: IntGauge,
    pub dead_letters: IntGauge,
    pub sent: IntCounterVec,
    pub failed: IntCounterVec,
    pub retries: IntCounter,
    pub last_success_timestamp_seconds: IntGauge,
    pub collection_errors: IntCounterVec,
    pub collections_refused: IntCounter,
    pub dropped: IntCounter,
    pub auth_held: IntGauge,
    pub client_cert_expiry_timestamp_seconds: IntGauge,
    pub tls_reload_errors: IntCounter,
    pub tls_reloads: IntCounter,
    pub tls_reload_failing: IntGauge,
    pub key_rotation_pending: IntGauge,
    pub outbox_moved_aside: IntCounter,
    pub items_refused: IntCounterVec,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentMetrics")
    }
}

/// Outcomes and codes the `sent` and `failed` counters are pre-set with.
pub const SENT_OUTCOMES: [&str; 3] = ["accepted", "duplicate", "partial"];
pub const FAILED_CODES: [&str; 11] = [
    "rejected_permanent",
    "rejected_retryable",
    "held_identity",
    "tls_client_refused",
    "tls_server_untrusted",
    "unavailable",
    "deadline_exceeded",
    "resource_exhausted",
    "unauthenticated",
    "permission_denied",
    "other",
];

impl AgentMetrics {
    pub fn new(sources: &[String]) -> Self {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let m = AgentMetrics {
            outbox_reports: gauge(
                "duban_agent_outbox_reports",
                "Reports waiting in the outbox.",
            ),
            outbox_bytes: gauge(
                "duban_agent_outbox_bytes",
                "Bytes of reports waiting in the outbox.",
            ),
            outbox_oldest_age_seconds: gauge(
                "duban_agent_outbox_oldest_age_seconds",
                "Age of the oldest report waiting (0 when empty).",
            ),
            dead_letters: gauge(
                "duban_agent_dead_letters",
                "Permanently refused reports kept in dead letters.",
            ),
            sent: counter_vec(
                "duban_agent_reports_sent_total",
                "Reports the aggregator acknowledged, by outcome.",
                "outcome",
            ),
            failed: counter_vec(
                "duban_agent_reports_failed_total",
                "Reports not acknowledged, by failure code.",
                "code",
            ),
            retries: counter(
                "duban_agent_retries_total",
                "Delivery attempts that will be retried.",
            ),
            last_success_timestamp_seconds: gauge(
                "duban_agent_last_success_timestamp_seconds",
                "When the aggregator last acknowledged a batch (Unix seconds).",
            ),
            collection_errors: counter_vec(
                "duban_agent_collection_errors_total",
                "Collections that failed, by source.",
                "source",
            ),
            collections_refused: counter(
                "duban_agent_collections_refused_total",
                "Collections refused because the outbox was full.",
            ),
            dropped: counter(
                "duban_agent_reports_dropped_total",
                "Reports deleted by the drop_oldest policy.",
            ),
            auth_held: gauge(
                "duban_agent_delivery_held_auth",
                "1 while delivery is held because the centre refuses this agent's identity (key, unit, plan or certificate).",
            ),
            client_cert_expiry_timestamp_seconds: gauge(
                "duban_agent_client_cert_expiry_timestamp_seconds",
                "When the client certificate expires (Unix seconds; 0 without TLS).",
            ),
            tls_reload_errors: counter(
                "duban_agent_tls_reload_errors_total",
                "Changed TLS files (CA, certificate, key) that could not be loaded; the material loaded before stays in use.",
            ),
            tls_reloads: counter(
                "duban_agent_tls_reloads_total",
                "Changed TLS files loaded while running (new connections use them).",
            ),
            tls_reload_failing: gauge(
                "duban_agent_tls_reload_failing",
                "1 while the TLS files, changed, cannot be loaded (the old ones stay in use).",
            ),
            key_rotation_pending: gauge(
                "duban_agent_key_rotation_pending",
                "1 while a key made by `duban-agent rotate-key` waits for the centre to register it.",
            ),
            outbox_moved_aside: counter(
                "duban_agent_outbox_moved_aside_total",
                "Corrupt outbox files moved aside.",
            ),
            items_refused: counter_vec(
                "duban_agent_items_refused_total",
                "Values and task updates the centre refused, by refusal code.",
                "code",
            ),
            registry,
        };
        for outcome in SENT_OUTCOMES {
            m.sent.with_label_values(&[outcome]);
        }
        for code in FAILED_CODES {
            m.failed.with_label_values(&[code]);
        }
        for source in sources {
            m.collection_errors.with_label_values(&[source.as_str()]);
        }
        for code in (1..)
            .map_while(|n| duban_proto::pb::RefusalCode::try_from(n).ok())
            .map(|c| c.as_str_name().trim_start_matches("REFUSAL_"))
        {
            m.items_refused.with_label_values(&[code]);
        }
        m
    }

    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding");
        String::from_utf8(buffer).expect("prometheus text is UTF-8")
    }

    pub fn observe_outbox(&self, stats: &crate::outbox::Stats, now_ms: i64) {
        self.outbox_reports.set(stats.reports);
        self.outbox_bytes.set(stats.bytes);
        self.outbox_oldest_age_seconds.set(
            stats
                .oldest_created_at_ms
                .map(|t| (now_ms - t).max(0) / 1000)
                .unwrap_or(0),
        );
        self.dead_letters.set(stats.dead_letters);
    }
}

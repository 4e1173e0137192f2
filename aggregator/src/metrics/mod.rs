//! Every ingest metric, defined in one place with its fixed label values, all pre-set to zero
//! so that dashboards and alert rules see every series from the first scrape.

pub mod plan_state;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::codes::{Reason, RefusalCode};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub received: IntCounter,
    pub accepted: IntCounter,
    pub partial: IntCounter,
    pub duplicate: IntCounter,
    pub rejected: IntCounterVec,
    pub refused_items: IntCounterVec,
    pub signature_failures: IntCounter,
    pub payloads_decoded: IntCounter,
    /// Signatures checked together, from all calls in flight.
    pub verify_batch_size: Histogram,
    /// Batches with a bad signature, checked again one by one.
    pub verify_batch_fallbacks: IntCounter,
    pub seq_gaps: IntCounter,
    pub security_events: IntCounterVec,
    pub overloaded: IntCounter,
    pub in_flight: IntGauge,
    pub store_errors: IntCounter,
    pub ingest_seconds: Histogram,
    pub store_seconds: Histogram,
    /// Reading the store and computing progress for `/metrics` and `/api/v1/progress`, when
    /// the last computation could not be reused.
    pub progress_seconds: Histogram,
    /// How each progress computation got its stored rows, by `read`: [`PROGRESS_READS`].
    pub progress_reads: IntCounterVec,
    /// How each progress computation was made, by `how`: [`PROGRESS_COMPUTATIONS`].
    pub progress_computations: IntCounterVec,
    pub alert_notifications: IntCounterVec,
    pub alerts_muted: IntGauge,
    pub alerts_before_go_live: IntGauge,
    pub hellos: IntCounterVec,
    /// 督办 statements received, by kind and result (`accepted`, `duplicate`, or the reason).
    pub statements: IntCounterVec,
    pub tls_handshake_failures: IntCounterVec,
    /// New TLS material that could not be loaded (the old stays in use), by listener.
    pub tls_reload_errors: IntCounterVec,
    /// New TLS material loaded while serving, by listener.
    pub tls_reloads: IntCounterVec,
    /// 1 while a listener's changed files cannot be loaded.
    pub tls_reload_failing: IntGaugeVec,
    /// The `notAfter` of the certificate each listener serves, in Unix seconds.
    pub tls_cert_not_after: IntGaugeVec,
    /// Calls turned away by the per-unit rate limit, by unit.
    pub rate_limited: IntCounterVec,
}

/// What is reloaded from files, as the `listener` label: each listener's TLS material, and
/// the HTTP bearer token.
pub const TLS_LISTENERS: [&str; 3] = ["grpc", "http", "http_token"];

/// How a progress computation got the stored rows, as the `read` label of
/// `duban_progress_reads_total`: read whole, updated with the rows written since the last
/// computation, or the last rows as they were (only the clock moved).
pub const PROGRESS_READS: [&str; 3] = ["whole", "changes", "reused"];

/// How a progress computation was made, as the `how` label of
/// `duban_progress_computations_total`: the last progress updated with what changed (linear in
/// it), or computed whole (linear in the plan's obligations).
pub const PROGRESS_COMPUTATIONS: [&str; 2] = ["updated", "whole"];

/// Why a TLS handshake failed, as the `reason` label of `duban_tls_handshake_failures_total`.
pub const TLS_FAILURE_REASONS: [&str; 10] = [
    "unknown_ca",
    "expired",
    "not_yet_valid",
    "revoked",
    "bad_certificate",
    "no_certificate",
    "client_refused_server_certificate",
    "not_tls",
    "timeout",
    "other",
];

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn histogram(registry: &Registry, name: &str, help: &str) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))
        .expect("valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("unique metric");
    h
}

impl Metrics {
    pub fn new(backend: &str) -> Self {
        let registry = Registry::new();
        let m = Metrics {
            received: counter(
                &registry,
                "duban_reports_received_total",
                "Signed reports received, whatever their outcome.",
            ),
            accepted: counter(
                &registry,
                "duban_reports_accepted_total",
                "Reports stored with every item accepted.",
            ),
            partial: counter(
                &registry,
                "duban_reports_partial_total",
                "Reports stored with some items refused.",
            ),
            duplicate: counter(
                &registry,
                "duban_reports_duplicate_total",
                "Reports already stored with the same bytes (success for the sender).",
            ),
            rejected: counter_vec(
                &registry,
                "duban_reports_rejected_total",
                "Reports rejected, by reason code.",
                &["reason"],
            ),
            refused_items: counter_vec(
                &registry,
                "duban_items_refused_total",
                "Values and task updates refused inside stored or rejected reports, by kind and code.",
                &["kind", "code"],
            ),
            signature_failures: counter(
                &registry,
                "duban_signature_failures_total",
                "Envelopes whose signature did not verify.",
            ),
            payloads_decoded: counter(
                &registry,
                "duban_payloads_decoded_total",
                "Payloads (reports and Hellos) decoded; only ever after their signature verified.",
            ),
            verify_batch_size: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "duban_verify_batch_size",
                        "Signatures verified together in one batch (from all calls in flight).",
                    )
                    .buckets(vec![
                        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0,
                    ]),
                )
                .expect("valid histogram");
                registry
                    .register(Box::new(h.clone()))
                    .expect("metric registered once");
                h
            },
            verify_batch_fallbacks: counter(
                &registry,
                "duban_verify_batch_fallbacks_total",
                "Signature batches that failed and were checked one by one to find the bad ones.",
            ),
            seq_gaps: counter(
                &registry,
                "duban_seq_gaps_total",
                "Sequence numbers skipped by agents (sum of gaps).",
            ),
            security_events: counter_vec(
                &registry,
                "duban_security_events_total",
                "Report id conflicts and seq replays.",
                &["kind"],
            ),
            overloaded: counter(
                &registry,
                "duban_requests_overloaded_total",
                "Calls answered RESOURCE_EXHAUSTED at the concurrency limit.",
            ),
            in_flight: gauge(
                &registry,
                "duban_requests_in_flight",
                "Submit and SubmitBatch calls being handled now (at most --max-in-flight).",
            ),
            store_errors: counter(
                &registry,
                "duban_store_errors_total",
                "Calls answered UNAVAILABLE because the store failed.",
            ),
            ingest_seconds: histogram(
                &registry,
                "duban_ingest_duration_seconds",
                "Time to handle one Submit or SubmitBatch call.",
            ),
            store_seconds: histogram(
                &registry,
                "duban_store_duration_seconds",
                "Time the store took to commit one call's reports.",
            ),
            progress_seconds: histogram(
                &registry,
                "duban_progress_duration_seconds",
                "Computing progress for /metrics, /api/v1/progress and the alert evaluation, when the last computation could not be reused (a write landed, 10 s of clock passed, or an evaluation asked for its own now); see duban_progress_reads_total for how the stored rows were read.",
            ),
            progress_reads: counter_vec(
                &registry,
                "duban_progress_reads_total",
                "Progress computations by how they got the stored rows: whole (the first, and on PostgreSQL once a minute), changes (the last rows updated with those written since), reused (nothing written, only the clock moved).",
                &["read"],
            ),
            progress_computations: counter_vec(
                &registry,
                "duban_progress_computations_total",
                "Progress computations by how they were made: updated (the last progress with the values written since taken in, and judged at the new time) or whole (the first, after a new statement or outage, once an obligation not received falls due, and on PostgreSQL once a minute).",
                &["how"],
            ),
            alert_notifications: counter_vec(
                &registry,
                "duban_alert_notifications_total",
                "Alert notifications by sink and result.",
                &["sink", "result"],
            ),
            alerts_muted: gauge(
                &registry,
                "duban_alerts_muted",
                "Alerts the last evaluation left out because a mute matched.",
            ),
            alerts_before_go_live: gauge(
                &registry,
                "duban_alerts_before_go_live",
                "Deadlines missed before the go-live time: shown, not alerted.",
            ),
            hellos: counter_vec(
                &registry,
                "duban_agent_hellos_total",
                "Agents' Hello calls, by result: ok (heartbeat recorded) or problem.",
                &["result"],
            ),
            statements: counter_vec(
                &registry,
                "duban_statements_total",
                "督办 statements (answers to alerts, the office's decisions) received, by kind and result: accepted, duplicate or the reason code.",
                &["kind", "result"],
            ),
            tls_handshake_failures: counter_vec(
                &registry,
                "duban_tls_handshake_failures_total",
                "gRPC connections whose TLS handshake failed, by reason.",
                &["reason"],
            ),
            tls_reload_errors: counter_vec(
                &registry,
                "duban_tls_reload_errors_total",
                "Changed TLS files (certificate, key, client CA, CRL) or HTTP token file that could not be loaded, by listener (grpc, http, http_token); what was loaded before stays in use.",
                &["listener"],
            ),
            tls_reloads: counter_vec(
                &registry,
                "duban_tls_reloads_total",
                "Changed TLS files (or HTTP token file) loaded while serving, by listener.",
                &["listener"],
            ),
            tls_reload_failing: gauge_vec(
                &registry,
                "duban_tls_reload_failing",
                "1 while a listener's changed TLS files (or the HTTP token file) cannot be loaded; what was loaded before stays in use.",
                &["listener"],
            ),
            tls_cert_not_after: gauge_vec(
                &registry,
                "duban_tls_cert_not_after_timestamp_seconds",
                "The notAfter of the certificate a listener serves (Unix seconds).",
                &["listener"],
            ),
            rate_limited: counter_vec(
                &registry,
                "duban_rate_limited_total",
                "Calls answered RESOURCE_EXHAUSTED by the per-unit rate limit, by unit.",
                &["unit"],
            ),
            registry,
        };
        for listener in TLS_LISTENERS {
            m.tls_reload_errors.with_label_values(&[listener]);
            m.tls_reloads.with_label_values(&[listener]);
            m.tls_reload_failing.with_label_values(&[listener]);
        }
        for read in PROGRESS_READS {
            m.progress_reads.with_label_values(&[read]);
        }
        for how in PROGRESS_COMPUTATIONS {
            m.progress_computations.with_label_values(&[how]);
        }
        for result in ["ok", "problem"] {
            m.hellos.with_label_values(&[result]);
        }
        for kind in crate::progress::cases::KINDS {
            for result in ["accepted", "duplicate"] {
                m.statements.with_label_values(&[kind, result]);
            }
        }
        for reason in TLS_FAILURE_REASONS {
            m.tls_handshake_failures.with_label_values(&[reason]);
        }
        for sink in ["log", "alertmanager", "webhook"] {
            for result in ["ok", "failed"] {
                m.alert_notifications.with_label_values(&[sink, result]);
            }
        }
        for reason in Reason::ALL {
            m.rejected.with_label_values(&[reason.name()]);
        }
        for kind in ["value", "task_update"] {
            for code in RefusalCode::ALL {
                m.refused_items.with_label_values(&[kind, code.name()]);
            }
        }
        for kind in ["report_id_conflict", "seq_replay"] {
            m.security_events.with_label_values(&[kind]);
        }
        let build_info = IntGaugeVec::new(
            Opts::new(
                "duban_build_info",
                "Build and runtime facts; the value is always 1.",
            ),
            &["version", "backend"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), backend])
            .set(1);
        m.registry
            .register(Box::new(build_info))
            .expect("unique metric");
        m
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding");
        String::from_utf8(buffer).expect("prometheus text is UTF-8")
    }
}

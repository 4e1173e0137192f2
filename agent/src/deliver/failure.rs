//! What went wrong with a call, read from its gRPC status: the label counted in the metrics,
//! whether it is a hold (a person must act), the centre's pushback, and a message naming the cause
//! (a TLS alert by its type, or by rustls's words where hyper kept only those).

use super::*;

/// A failed call, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The `code` label of `duban_agent_reports_failed_total`.
    pub label: &'static str,
    /// A person must fix something: hold the outbox and retry slowly.
    pub hold: bool,
    pub message: String,
    pub pushback: Option<Duration>,
}

pub(super) fn pushback(status: &tonic::Status) -> Option<Duration> {
    status
        .metadata()
        .get("grpc-retry-pushback-ms")?
        .to_str()
        .ok()?
        .parse()
        .ok()
        .map(Duration::from_millis)
}

/// The rustls error somewhere in a failed call's chain of causes, if any.
pub(super) fn rustls_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // io::Error's own source() skips the error it wraps.
        if let Some(tls) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        current = e.source();
    }
    None
}

/// What a TLS failure on the way to the centre says about this agent's files: the centre
/// refused its client certificate (an alert received during the handshake), or the agent does
/// not trust the centre's certificate. `None` for anything else.
pub(super) enum TlsRefusal {
    ClientRefused(String),
    ServerUntrusted(String),
}

/// The cause of a failed call, when it is a TLS refusal. The rustls error is found by type
/// where the stack kept it, and otherwise by the words rustls gives it (hyper's I/O errors
/// carry the rustls error as text only).
pub(super) fn tls_refusal(status: &tonic::Status) -> Option<TlsRefusal> {
    if let Some(tls) = rustls_error(status) {
        return match tls {
            rustls::Error::AlertReceived(alert) => {
                Some(TlsRefusal::ClientRefused(format!("{alert:?}")))
            }
            rustls::Error::InvalidCertificate(why) => {
                Some(TlsRefusal::ServerUntrusted(format!("{why:?}")))
            }
            _ => None,
        };
    }
    let mut text = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        text = cause.to_string();
        source = cause.source();
    }
    if let Some(alert) = text.strip_prefix("received fatal alert: ") {
        return Some(TlsRefusal::ClientRefused(alert.to_owned()));
    }
    text.strip_prefix("invalid peer certificate: ")
        .map(|why| TlsRefusal::ServerUntrusted(why.to_owned()))
}

/// Sorts a failed call into what the agent does about it.
pub fn classify(status: &tonic::Status) -> Failure {
    let failure = |label, hold, message: String| Failure {
        label,
        hold,
        message,
        pushback: None,
    };
    match tls_refusal(status) {
        Some(TlsRefusal::ClientRefused(alert)) => {
            return failure(
                "tls_client_refused",
                true,
                format!(
                    "the centre does not accept this certificate (TLS alert {alert}): [aggregator] cert must be signed by the CA the centre trusts for agents, not expired, with SAN URI spiffe://duban/unit/<unit>"
                ),
            );
        }
        Some(TlsRefusal::ServerUntrusted(why)) => {
            return failure(
                "tls_server_untrusted",
                true,
                format!(
                    "this agent does not trust the centre's certificate ({why}): check [aggregator] ca, and server_name if the endpoint's host differs from the certificate's"
                ),
            );
        }
        None => {}
    }
    match status.code() {
        tonic::Code::ResourceExhausted => Failure {
            pushback: pushback(status),
            ..failure("resource_exhausted", false, status.message().to_owned())
        },
        tonic::Code::Unauthenticated => failure(
            "unauthenticated",
            true,
            format!(
                "the centre refuses this agent's identity: {} (it needs a client certificate)",
                status.message()
            ),
        ),
        tonic::Code::PermissionDenied => failure(
            "permission_denied",
            true,
            format!(
                "the centre refuses this agent's certificate: {} (it must carry SAN URI spiffe://duban/unit/<unit>)",
                status.message()
            ),
        ),
        tonic::Code::Unavailable => failure("unavailable", false, describe(status)),
        tonic::Code::DeadlineExceeded => failure("deadline_exceeded", false, describe(status)),
        _ => failure("other", false, describe(status)),
    }
}

/// The status message with its causes, e.g. "transport error: connection refused".
pub(super) fn describe(status: &tonic::Status) -> String {
    let mut text = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

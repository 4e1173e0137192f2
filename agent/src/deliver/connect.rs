//! The connections to the centre: one lazily connecting client per endpoint with the configured
//! TLS, and the signed Hello.

use super::*;

/// One lazily connecting gRPC client per endpoint, with the configured TLS. Records the
/// client certificate's expiry in `metrics` when given.
pub fn clients(
    config: &AggregatorConfig,
    metrics: Option<&AgentMetrics>,
) -> Result<Vec<ReportServiceClient<Channel>>, DeliverError> {
    let tls = match &config.tls {
        None => None,
        Some(files) => {
            let read = |p: &std::path::Path| {
                std::fs::read(p)
                    .map_err(|e| DeliverError::Tls(format!("cannot read {}: {e}", p.display())))
            };
            let cert = read(&files.cert)?;
            if let (Some(metrics), Some(expiry)) = (metrics, crate::tls::certificate_expiry(&cert))
            {
                metrics.client_cert_expiry_timestamp_seconds.set(expiry);
            }
            let mut tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read(&files.ca)?))
                .identity(Identity::from_pem(cert, read(&files.key)?));
            if let Some(name) = &files.server_name {
                tls = tls.domain_name(name.clone());
            }
            Some(tls)
        }
    };
    let mut clients = Vec::new();
    for endpoint in &config.endpoints {
        let mut e = Endpoint::from_shared(endpoint.clone())
            .map_err(|e| DeliverError::Tls(format!("bad endpoint {endpoint}: {e}")))?
            .connect_timeout(Duration::from_secs(10))
            .timeout(config.timeout);
        if let Some(tls) = &tls {
            e = e
                .tls_config(tls.clone())
                .map_err(|e| DeliverError::Tls(e.to_string()))?;
        }
        clients
            .push(ReportServiceClient::new(e.connect_lazy()).max_decoding_message_size(16 << 20));
    }
    Ok(clients)
}

/// Sends one signed Hello and returns the centre's answer, or the classified failure.
pub async fn call_hello(
    client: &mut ReportServiceClient<Channel>,
    identity: &AgentIdentity,
    issued_at_ms: i64,
    (outbox_reports, dead_letters): (u64, u64),
    timeout: Duration,
) -> Result<pb::HelloResult, Failure> {
    let hello = pb::Hello {
        unit_id: identity.unit.clone(),
        key_id: Vec::new(),
        audience: identity.plan.clone(),
        issued_at_ms,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        outbox_reports,
        dead_letters,
    };
    let signed = envelope::sign_hello(&identity.key.current(), hello);
    match tokio::time::timeout(timeout + Duration::from_secs(1), client.hello(signed)).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(classify(&status)),
        Err(_) => Err(Failure {
            label: "deadline_exceeded",
            hold: false,
            message: "no answer within the timeout".into(),
            pushback: None,
        }),
    }
}

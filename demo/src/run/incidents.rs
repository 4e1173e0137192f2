//! The hard parts, done as a real client would: a stored report resent with the unit's own
//! identity, a copy altered after signing, a correction of a past value through the unit's
//! export.

use super::*;

pub(super) async fn client_for(
    shared: &Shared,
    unit: &str,
    grpc: SocketAddr,
) -> anyhow::Result<ReportServiceClient<tonic::transport::Channel>> {
    let read =
        |p: PathBuf| std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()));
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read(
            shared.layout.tls.join("ca.crt"),
        )?))
        .identity(tonic::transport::Identity::from_pem(
            read(shared.layout.tls.join(format!("units/{unit}.crt")))?,
            read(shared.layout.tls.join(format!("units/{unit}.key")))?,
        ))
        .domain_name("localhost");
    let channel =
        tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{}", grpc.port()))?
            .tls_config(tls)?
            .connect()
            .await
            .context("cannot connect to the demo aggregator")?;
    Ok(ReportServiceClient::new(channel))
}

pub(super) async fn submit_as(
    shared: &Shared,
    unit: &str,
    grpc: SocketAddr,
    report: pb::SignedReport,
) -> anyhow::Result<pb::SubmitResult> {
    let mut client = client_for(shared, unit, grpc).await?;
    Ok(client.submit(report).await.context("Submit")?.into_inner())
}

pub(super) fn outcome_text(result: &pb::SubmitResult) -> String {
    let outcome = pb::Outcome::try_from(result.outcome)
        .map(|o| o.as_str_name().trim_start_matches("OUTCOME_").to_owned())
        .unwrap_or_else(|_| result.outcome.to_string());
    let reason = pb::ReasonCode::try_from(result.reason)
        .ok()
        .filter(|r| *r != pb::ReasonCode::ReasonUnspecified)
        .map(|r| format!(" {}", r.as_str_name().trim_start_matches("REASON_")))
        .unwrap_or_default();
    format!("{outcome}{reason}")
}

/// A stored report of a unit not in `avoid`: its unit, report id, seq and envelope.
pub(super) async fn stored_envelope(
    store: &AnyStore,
    avoid: &BTreeSet<String>,
) -> anyhow::Result<Option<(String, Vec<u8>, i64, pb::SignedReport)>> {
    let reports = store
        .reports(&ReportFilter {
            limit: Some(500),
            ..Default::default()
        })
        .await?;
    for report in reports.iter().filter(|r| !avoid.contains(&r.unit_id)) {
        if let Some(env) = store.envelope(&report.unit_id, &report.report_id).await? {
            return Ok(Some((
                report.unit_id.clone(),
                report.report_id.clone(),
                report.seq,
                pb::SignedReport {
                    payload: env.payload,
                    payload_type: env.payload_type,
                    key_id: env.key_id,
                    signature: env.signature,
                },
            )));
        }
    }
    Ok(None)
}

/// Sends a stored report again, as its agent would after losing the acknowledgement.
pub(super) async fn resend(
    shared: &Shared,
    grpc: SocketAddr,
    store: &AnyStore,
    unit: &str,
    report_id: &[u8],
    seq: i64,
    envelope: pb::SignedReport,
) -> anyhow::Result<Check> {
    let result = submit_as(shared, unit, grpc, envelope).await?;
    let stored = store
        .reports(&ReportFilter {
            unit_id: Some(unit.to_owned()),
            ..Default::default()
        })
        .await?
        .iter()
        .filter(|r| r.report_id == report_id)
        .count();
    let answer = outcome_text(&result);
    let text = format!(
        "{unit} resent report seq {seq} as if its acknowledgement was lost: answered {answer}, stored {stored} time(s)"
    );
    Ok(if answer == "DUPLICATE" && stored == 1 {
        Check::passed(text)
    } else {
        Check::failed(text)
    })
}

/// Sends a copy of a stored report with its payload altered after signing.
pub(super) async fn send_tampered(
    shared: &Shared,
    grpc: SocketAddr,
    unit: &str,
    seq: i64,
    mut envelope: pb::SignedReport,
) -> anyhow::Result<Check> {
    let mut report = pb::Report::decode(envelope.payload.as_slice())?;
    // Always a different payload: the same bytes would be a duplicate.
    let what = if let Some(v) = report.values.first_mut() {
        let old = v.value;
        v.value = if old == 0.0 { 1.0 } else { old * 10.0 };
        format!("{} {old} → {}", v.indicator_id, v.value)
    } else if let Some(t) = report.task_updates.first_mut() {
        let old = t.percent_complete;
        t.percent_complete = if old >= 50.0 { 0.0 } else { 100.0 };
        format!(
            "{} {} {old}% → {}%",
            t.task_id, t.milestone_id, t.percent_complete
        )
    } else {
        report.period.push('9');
        "period".into()
    };
    envelope.payload = report.encode_to_vec();
    let result = submit_as(shared, unit, grpc, envelope).await?;
    let answer = outcome_text(&result);
    let text = format!(
        "a copy of {unit}'s report seq {seq} altered after signing ({what}): answered {answer}: {}",
        result.message
    );
    Ok(if answer == "REJECTED BAD_SIGNATURE" {
        Check::passed(text)
    } else {
        Check::failed(text)
    })
}

pub(super) type Correction = (String, String, Period, f64, f64);

/// A punctual unit corrects the oldest value it has reported (a revised statistic). Returns
/// the correction and how many reports it made.
pub(super) async fn correct_a_past_value(
    plan: &Plan,
    scenario: &Scenario,
    agents: &mut BTreeMap<String, DemoAgent>,
) -> anyhow::Result<(Option<Correction>, usize)> {
    let mut best: Option<(Period, String, String)> = None;
    for (unit, demo) in agents.iter() {
        if scenario.roles.late_units.contains(unit) {
            continue;
        }
        for (indicator, period) in demo.local.values.keys() {
            if plan
                .indicator(indicator)
                .is_some_and(|i| i.authoritative.as_deref() == Some(unit))
            {
                continue;
            }
            if best.as_ref().is_none_or(|(p, _, _)| period < p) {
                best = Some((*period, unit.clone(), indicator.clone()));
            }
        }
    }
    let Some((period, unit, indicator)) = best else {
        return Ok((None, 0));
    };
    let demo = agents.get_mut(&unit).expect("unit has an agent");
    let entry = demo
        .local
        .values
        .get_mut(&(indicator.clone(), period))
        .expect("the value exists");
    let old = entry.0;
    let new = if old.fract() == 0.0 {
        (old * 1.1).round().max(old + 1.0)
    } else {
        ((old * 1.1 + 0.01) * 100.0).round() / 100.0
    };
    let new = plan
        .indicator(&indicator)
        .and_then(|i| i.max)
        .map_or(new, |max| new.min(max));
    if new == old {
        return Ok((None, 0));
    }
    *entry = (
        new,
        "更正：统计口径调整 (corrected after a statistical revision)".into(),
    );
    let reports = demo.export_and_collect(Items::Values).await?.len();
    Ok((Some((unit, indicator, period, old, new)), reports))
}

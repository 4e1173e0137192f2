//! `reports list` and `values show`: what has arrived.

use super::*;

pub async fn reports_list(
    store: &AnyStore,
    filter: &ReportFilter,
    json: bool,
) -> Result<String, AdminError> {
    let reports = store.reports(filter).await?;
    if json {
        return Ok(serde_json::to_string_pretty(&reports)? + "\n");
    }
    let mut rows = vec![
        [
            "#",
            "unit",
            "period",
            "rev",
            "seq",
            "issued",
            "received",
            "values",
            "tasks",
            "refused",
            "report id",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for r in &reports {
        rows.push(vec![
            r.report_pk.to_string(),
            r.unit_id.clone(),
            r.period.clone(),
            r.revision.to_string(),
            r.seq.to_string(),
            time_text(Some(r.issued_at_ms)),
            time_text(Some(r.received_at_ms)),
            r.values_count.to_string(),
            r.task_updates_count.to_string(),
            r.refused_count.to_string(),
            hex::encode(&r.report_id),
        ]);
    }
    let mut out = table(&rows, 0);
    let _ = writeln!(
        out,
        "{} report{}",
        reports.len(),
        if reports.len() == 1 { "" } else { "s" }
    );
    Ok(out)
}

pub async fn values_show(
    store: &AnyStore,
    plan: &Plan,
    indicator: Option<&str>,
    json: bool,
) -> Result<String, AdminError> {
    if let Some(id) = indicator
        && plan.indicator(id).is_none()
    {
        return Err(AdminError::UnknownIndicator {
            indicator: id.to_owned(),
            plan: plan.id.clone(),
        });
    }
    let values = store.current_values(&plan.id, indicator).await?;
    if json {
        return Ok(serde_json::to_string_pretty(&values)? + "\n");
    }
    let mut rows = vec![
        [
            "indicator",
            "unit",
            "period",
            "value",
            "measure",
            "rev",
            "updated",
            "note",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for v in &values {
        let measure = plan
            .indicator(&v.indicator_id)
            .map(|i| i.measure.clone())
            .unwrap_or_default();
        rows.push(vec![
            v.indicator_id.to_string(),
            v.unit_id.to_string(),
            v.period.to_string(),
            v.value.to_string(),
            measure,
            v.revision.to_string(),
            time_text(Some(v.updated_at_ms)),
            v.note.clone(),
        ]);
    }
    let mut out = table(&rows, 0);
    let _ = writeln!(
        out,
        "{} current value{}",
        values.len(),
        if values.len() == 1 { "" } else { "s" }
    );
    Ok(out)
}

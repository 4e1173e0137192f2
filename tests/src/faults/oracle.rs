//! The oracle: what the senders sent and what the aggregator acknowledged, checked against what
//! the database holds once a scenario's faults have stopped.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use duban_aggregator::store::{AnyStore, ReportFilter, Store};
use duban_proto::pb;
use prost::Message;

use super::PLAN_ID;
use super::senders::on_own_runtime;

/// A report as sent, by (unit, report id).
#[derive(Debug, Clone)]
struct Sent {
    payload: Vec<u8>,
    signature: Vec<u8>,
    acked: bool,
    revision: u64,
    period: String,
    values: Vec<(String, f64)>,
}

/// Reports as sent, by (unit, report id).
type SentReports = HashMap<(String, Vec<u8>), Sent>;

/// What was sent and acknowledged, shared by every sender of a scenario.
#[derive(Debug, Clone, Default)]
pub struct Oracle(Arc<Mutex<SentReports>>);

impl Oracle {
    /// A report about to be sent for the first time.
    pub fn sent(&self, unit: &str, envelope: &pb::SignedReport) {
        let report = pb::Report::decode(envelope.payload.as_slice()).expect("our own report");
        self.0.lock().unwrap().insert(
            (unit.to_owned(), report.report_id.clone()),
            Sent {
                payload: envelope.payload.clone(),
                signature: envelope.signature.clone(),
                acked: false,
                revision: u64::from(report.revision),
                period: report.period.clone(),
                values: report
                    .values
                    .iter()
                    .map(|v| (v.indicator_id.clone(), v.value))
                    .collect(),
            },
        );
    }

    /// A report the aggregator answered ACCEPTED or DUPLICATE for.
    pub fn acked(&self, unit: &str, envelope: &pb::SignedReport) {
        let report = pb::Report::decode(envelope.payload.as_slice()).expect("our own report");
        if let Some(sent) = self
            .0
            .lock()
            .unwrap()
            .get_mut(&(unit.to_owned(), report.report_id))
        {
            sent.acked = true;
        }
    }

    /// (reports sent, reports acknowledged).
    pub fn counts(&self) -> (usize, usize) {
        let all = self.0.lock().unwrap();
        (all.len(), all.values().filter(|s| s.acked).count())
    }

    /// Checks the database at `url` against what was sent, for the units this oracle sent
    /// for: each problem found, in words.
    ///
    /// - an acknowledged report that is not stored: lost;
    /// - a report stored more than once, or stored with other bytes than were sent;
    /// - a stored report nobody sent;
    /// - a current value other than the one of the highest revision stored for its key (the
    ///   stored reports decide, since a report whose answer was lost may be stored), or a key
    ///   with more than one current value.
    pub fn check(&self, url: &str) -> Vec<String> {
        let sent = self.0.lock().unwrap().clone();
        let url = url.to_owned();
        on_own_runtime(move || async move { check(&url, sent).await })
    }
}

async fn check(url: &str, sent: SentReports) -> Vec<String> {
    let mut problems = Vec::new();
    let store = match AnyStore::open_read_only(url).await {
        Ok(store) => store,
        Err(e) => return vec![format!("cannot open the database: {e}")],
    };
    let stored = match store.reports(&ReportFilter::default()).await {
        Ok(rows) => rows,
        Err(e) => return vec![format!("cannot read the stored reports: {e}")],
    };
    // Only the units this oracle sent for: other units (real agents) have their own check.
    let units: std::collections::HashSet<&str> =
        sent.keys().map(|(unit, _)| unit.as_str()).collect();
    let mut copies: HashMap<(String, Vec<u8>), usize> = HashMap::new();
    for row in stored.iter().filter(|r| units.contains(r.unit_id.as_str())) {
        *copies
            .entry((row.unit_id.clone(), row.report_id.clone()))
            .or_default() += 1;
    }
    // The current value each key should have: the highest revision among the stored reports.
    let mut expected: BTreeMap<(String, String, String), (u64, f64)> = BTreeMap::new();
    for ((unit, id), n) in &copies {
        let Some(s) = sent.get(&(unit.clone(), id.clone())) else {
            problems.push(format!(
                "report {} of {unit} is stored but was never sent",
                hex::encode(id)
            ));
            continue;
        };
        if *n > 1 {
            problems.push(format!(
                "report {} of {unit} is stored {n} times",
                hex::encode(id)
            ));
        }
        match store.envelope(unit, id).await {
            Ok(Some(envelope))
                if envelope.payload == s.payload && envelope.signature == s.signature => {}
            Ok(Some(_)) => problems.push(format!(
                "report {} of {unit} is stored with other bytes than were sent",
                hex::encode(id)
            )),
            Ok(None) => problems.push(format!(
                "report {} of {unit} is listed but its envelope is missing",
                hex::encode(id)
            )),
            Err(e) => problems.push(format!("cannot read an envelope: {e}")),
        }
        for (indicator, value) in &s.values {
            let key = (unit.clone(), indicator.clone(), s.period.clone());
            let entry = expected.entry(key).or_insert((s.revision, *value));
            if s.revision > entry.0 {
                *entry = (s.revision, *value);
            }
        }
    }
    let mut lost = 0;
    for ((unit, id), s) in &sent {
        if s.acked && !copies.contains_key(&(unit.clone(), id.clone())) {
            lost += 1;
            if lost <= 10 {
                problems.push(format!(
                    "report {} of {unit} was acknowledged and is not stored",
                    hex::encode(id)
                ));
            }
        }
    }
    if lost > 10 {
        problems.push(format!(
            "... {lost} acknowledged reports are not stored in all"
        ));
    }
    let current = match store.current_values(PLAN_ID, None).await {
        Ok(rows) => rows,
        Err(e) => return vec![format!("cannot read the current values: {e}")],
    };
    let mut seen: BTreeMap<(String, String, String), f64> = BTreeMap::new();
    for row in current
        .into_iter()
        .filter(|r| units.contains(r.unit_id.as_str()))
    {
        let key = (
            row.unit_id.to_string(),
            row.indicator_id.to_string(),
            row.period.to_string(),
        );
        if seen.insert(key.clone(), row.value).is_some() {
            problems.push(format!("{key:?} has more than one current value"));
        }
    }
    for (key, (_, value)) in &expected {
        match seen.get(key) {
            Some(v) if v.to_bits() == value.to_bits() => {}
            Some(v) => problems.push(format!(
                "{key:?}: the current value is {v}, the last one stored says {value}"
            )),
            None => problems.push(format!("{key:?}: no current value")),
        }
    }
    for key in seen.keys() {
        if !expected.contains_key(key) {
            problems.push(format!("{key:?}: a current value no stored report gives"));
        }
    }
    problems
}

/// Checks a real agent's delivery against the database at `url`, once its faults have stopped:
///
/// - nothing waits in its outbox; what sits in its dead letters has a reason (listed in
///   `figures`);
/// - the unit's stored reports carry the seqs 1 to the outbox's last, each once (a seq the
///   outbox committed and the centre does not hold is a lost report), dead letters aside;
/// - no value is stored under two reports (an agent that signed the same items again under a
///   new seq would double them: the harness's sources never repeat a value);
/// - the unit's current values are `expected`, what its source said last.
pub fn check_agent(
    url: &str,
    agent: &crate::AgentSetup,
    expected: &BTreeMap<(String, String), f64>,
    figures: &mut Vec<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let stats = agent.outbox_stats();
    let waiting = stats["reports"].as_i64().unwrap_or(-1);
    if waiting != 0 {
        problems.push(format!(
            "{}: {waiting} report(s) still wait in the outbox",
            agent.unit
        ));
    }
    let mut dead_seqs = Vec::new();
    if stats["dead_letters"].as_i64().unwrap_or(0) > 0 {
        let out = agent.run(&["outbox", "dead", "--json"]);
        let dead: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        for letter in dead.as_array().into_iter().flatten() {
            let reason = letter["reason"].as_str().unwrap_or_default();
            if reason.is_empty() {
                problems.push(format!(
                    "{}: a dead letter without a reason: {letter}",
                    agent.unit
                ));
            }
            dead_seqs.extend(letter["seq"].as_i64());
            figures.push(format!(
                "{}: dead letter seq {} ({reason})",
                agent.unit, letter["seq"]
            ));
        }
    }
    let last_seq = stats["next_seq"].as_i64().unwrap_or(1) - 1;
    let (url, unit) = (url.to_owned(), agent.unit.clone());
    let (rows, items, current) = on_own_runtime(move || async move {
        let store = AnyStore::open_read_only(&url)
            .await
            .expect("open the database");
        let filter = ReportFilter {
            unit_id: Some(unit.clone()),
            ..ReportFilter::default()
        };
        (
            store.reports(&filter).await.expect("the reports"),
            store.stored_items(PLAN_ID).await.expect("the stored items"),
            store
                .current_values(PLAN_ID, None)
                .await
                .expect("the current values"),
        )
    });
    let mut seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    seqs.extend(&dead_seqs);
    // Seqs the agent signed again under a new seq (its log says so: a key it no longer uses,
    // a seq the centre held, a clock that was ahead): the new seq is the one to find.
    let log = agent.log();
    let resigned: Vec<i64> = log
        .lines()
        .filter_map(|l| l.split("old_seq=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter_map(|n| n.parse().ok())
        .collect();
    if !resigned.is_empty() {
        figures.push(format!(
            "{}: seqs signed again under a new seq: {resigned:?}",
            agent.unit
        ));
    }
    seqs.extend(&resigned);
    seqs.sort_unstable();
    let want: Vec<i64> = (1..=last_seq).collect();
    if seqs != want {
        let missing: Vec<i64> = want.iter().filter(|s| !seqs.contains(s)).copied().collect();
        problems.push(format!(
            "{}: the outbox committed seqs 1..={last_seq}; stored or dead: {} seqs, missing {:?}, twice {:?}",
            agent.unit,
            seqs.len(),
            &missing[..missing.len().min(10)],
            seqs.windows(2).filter(|w| w[0] == w[1]).map(|w| w[0]).collect::<Vec<_>>()
        ));
    }
    let mut fingerprints: HashMap<(String, String, u64), i64> = HashMap::new();
    for item in items.iter().filter(|i| i.unit_id == agent.unit) {
        if let Some(first) = fingerprints.insert(
            (
                item.subject.clone(),
                item.period.clone(),
                item.value.to_bits(),
            ),
            item.seq,
        ) {
            problems.push(format!(
                "{}: {} {} = {} stored under seq {first} and seq {}",
                agent.unit, item.subject, item.period, item.value, item.seq
            ));
        }
    }
    let mine: BTreeMap<(String, String), f64> = current
        .into_iter()
        .filter(|r| r.unit_id == agent.unit)
        .map(|r| ((r.indicator_id.to_string(), r.period.to_string()), r.value))
        .collect();
    if &mine != expected {
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(k, v)| mine.get(*k).map(|m| m.to_bits()) != Some(v.to_bits()))
            .take(5)
            .map(|(k, v)| format!("{k:?}: source {v}, current {:?}", mine.get(k)))
            .collect();
        problems.push(format!(
            "{}: the current values are not what the source said last ({} of {} keys differ; {})",
            agent.unit,
            expected
                .iter()
                .filter(|(k, v)| mine.get(*k).map(|m| m.to_bits()) != Some(v.to_bits()))
                .count(),
            expected.len(),
            wrong.join("; ")
        ));
    }
    problems
}

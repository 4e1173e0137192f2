//! The pure middle of ingest: given what the database holds for every key a group of reports
//! touches ([`Known`]), decide each report's outcome and every row to write ([`Decided`]).
//!
//! The rules are docs/PROTOCOL.md's, applied to the reports in order, each seeing what the
//! ones before it decided:
//! 1. A `(unit_id, report_id)` already stored is a duplicate when its payload hash is the same,
//!    a conflict (a security event) when it is not.
//! 2. Otherwise a `(key_id, seq)` already stored is a replay (a security event).
//! 3. Otherwise the report is new: it takes the next `report_pk`, advances its key's `max_seq`
//!    (the gap is counted from the unit's previous key after a rotation), and each value and
//!    task update goes to history and replaces the current row only when its
//!    `(revision, issued_at_ms, seq)` is greater, with an audit row.
//!
//! The backends (`sqlite.rs`, `postgres.rs`) only read [`Known`] and write [`Decided`] for a
//! whole group: SQLite in statements per table (of a few fixed sizes), PostgreSQL in one
//! statement for every table.

use std::collections::HashMap;

use duban_proto::KeyId;

use super::types::*;

/// The ordering key that decides which of two reports for one value wins.
pub(super) type Rank = (i64, i64, i64);

pub(super) fn rank(report: &NewReport) -> Rank {
    (
        i64::from(report.revision),
        report.issued_at_ms,
        seq_i64(report.seq),
    )
}

/// Seqs above i64::MAX cannot be stored; validation refuses them before this point.
pub(super) fn seq_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// A current row as far as deciding needs it: its value (or percent), rank and report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Current {
    pub value: f64,
    pub rank: Rank,
    pub report_pk: i64,
}

/// `(plan_id, indicator_id, unit_id, period)`.
pub(super) type ValueKey = (String, String, String, String);
/// `(plan_id, task_id, milestone_id, unit_id, period)`.
pub(super) type TaskKey = (String, String, String, String, String);

/// A signing key's row: its unit and the highest seq stored under it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct KeyState {
    pub unit_id: String,
    pub max_seq: i64,
}

/// What the database holds for the keys of one group, read before deciding.
#[derive(Debug, Default)]
pub(super) struct Known {
    /// Stored reports by `(unit_id, report_id)`: their payload hash.
    pub by_report_id: HashMap<(String, [u8; 16]), [u8; 32]>,
    /// Stored reports by `(key_id, seq)`: their report id.
    pub by_seq: HashMap<(KeyId, i64), Vec<u8>>,
    /// Every key of every unit in the group (for the rotation baseline of a key's first seq).
    pub keys: HashMap<KeyId, KeyState>,
    pub values: HashMap<ValueKey, Current>,
    pub tasks: HashMap<TaskKey, Current>,
}

impl Known {
    pub fn value_key(report: &NewReport, value: &NewValue) -> ValueKey {
        (
            report.plan_id.clone(),
            value.indicator_id.clone(),
            report.unit_id.clone(),
            report.period.clone(),
        )
    }

    pub fn task_key(report: &NewReport, update: &NewTaskUpdate) -> TaskKey {
        (
            report.plan_id.clone(),
            update.task_id.clone(),
            update.milestone_id.clone(),
            report.unit_id.clone(),
            report.period.clone(),
        )
    }
}

/// The final state of one current row after a group: written as an insert when no row was
/// stored before the group (`insert`), an update otherwise.
#[derive(Debug, Clone)]
pub(super) struct CurrentWrite<'a, T> {
    pub insert: bool,
    pub report: &'a NewReport,
    pub item: &'a T,
    pub report_pk: i64,
    /// When the row was first inserted (kept on update).
    pub first_received_at_ms: i64,
    pub first_issued_at_ms: i64,
}

#[derive(Debug, Clone)]
pub(super) struct AuditWrite<'a> {
    pub report: &'a NewReport,
    pub kind: &'static str,
    pub subject: String,
    pub old: Option<(f64, i64)>,
    pub new_value: f64,
    pub report_pk: i64,
}

#[derive(Debug, Clone)]
pub(super) struct SecurityWrite<'a> {
    pub report: &'a NewReport,
    pub kind: &'static str,
    pub detail: String,
}

/// Everything one group writes, table by table, in the order the rows were decided.
#[derive(Debug, Default)]
pub(super) struct Decided<'a> {
    /// One per report of the group, in order.
    pub outcomes: Vec<StoreOutcome>,
    pub reports: Vec<(i64, &'a NewReport)>,
    pub value_history: Vec<(i64, &'a NewReport, &'a NewValue)>,
    pub task_history: Vec<(i64, &'a NewReport, &'a NewTaskUpdate)>,
    pub values: Vec<CurrentWrite<'a, NewValue>>,
    pub tasks: Vec<CurrentWrite<'a, NewTaskUpdate>>,
    pub audit: Vec<AuditWrite<'a>>,
    pub security: Vec<SecurityWrite<'a>>,
    /// Keys whose `max_seq` rose, with the new value.
    pub key_seqs: Vec<(KeyId, i64)>,
}

/// Decides a group. `next_pk` hands out the `report_pk` of each new report in turn. `known`
/// is updated to what the database holds once [`Decided`] is written.
pub(super) fn decide<'a>(
    reports: impl IntoIterator<Item = &'a NewReport>,
    known: &mut Known,
    mut next_pk: impl FnMut() -> i64,
) -> Decided<'a> {
    let mut out = Decided::default();
    let mut value_rows: HashMap<ValueKey, usize> = HashMap::new();
    let mut task_rows: HashMap<TaskKey, usize> = HashMap::new();
    let mut key_rows: HashMap<KeyId, usize> = HashMap::new();
    for report in reports {
        let id = (report.unit_id.clone(), report.report_id);
        if let Some(hash) = known.by_report_id.get(&id) {
            if *hash == report.payload_sha256 {
                out.outcomes.push(StoreOutcome::Duplicate);
            } else {
                out.security.push(SecurityWrite {
                    report,
                    kind: "report_id_conflict",
                    detail: "same report id, different payload bytes".into(),
                });
                out.outcomes.push(StoreOutcome::Conflict);
            }
            continue;
        }
        let seq = seq_i64(report.seq);
        if let Some(existing) = known.by_seq.get(&(report.key_id, seq)) {
            out.security.push(SecurityWrite {
                report,
                kind: "seq_replay",
                detail: format!(
                    "seq {} already used by report {}",
                    report.seq,
                    hex::encode(existing)
                ),
            });
            out.outcomes.push(StoreOutcome::Replay {
                existing_report_id: existing.clone(),
            });
            continue;
        }

        let report_pk = next_pk();
        known.by_report_id.insert(id, report.payload_sha256);
        known
            .by_seq
            .insert((report.key_id, seq), report.report_id.to_vec());
        out.reports.push((report_pk, report));
        let seq_gap = advance_seq(known, report, &mut key_rows, &mut out.key_seqs);

        let rank = rank(report);
        let mut changed = 0;
        for value in &report.values {
            out.value_history.push((report_pk, report, value));
            let key = Known::value_key(report, value);
            let Some(old) = replaces(known.values.get(&key), rank) else {
                continue;
            };
            known.values.insert(
                key.clone(),
                Current {
                    value: value.value,
                    rank,
                    report_pk,
                },
            );
            let write = CurrentWrite {
                insert: old.is_none(),
                report,
                item: value,
                report_pk,
                first_received_at_ms: report.received_at_ms,
                first_issued_at_ms: report.issued_at_ms,
            };
            record(&mut out.values, &mut value_rows, key, write);
            out.audit.push(AuditWrite {
                report,
                kind: "value",
                subject: value.indicator_id.clone(),
                old: old.map(|c| (c.value, c.report_pk)),
                new_value: value.value,
                report_pk,
            });
            changed += 1;
        }
        for update in &report.task_updates {
            out.task_history.push((report_pk, report, update));
            let key = Known::task_key(report, update);
            let Some(old) = replaces(known.tasks.get(&key), rank) else {
                continue;
            };
            known.tasks.insert(
                key.clone(),
                Current {
                    value: update.percent,
                    rank,
                    report_pk,
                },
            );
            let write = CurrentWrite {
                insert: old.is_none(),
                report,
                item: update,
                report_pk,
                first_received_at_ms: report.received_at_ms,
                first_issued_at_ms: report.issued_at_ms,
            };
            record(&mut out.tasks, &mut task_rows, key, write);
            out.audit.push(AuditWrite {
                report,
                kind: "task",
                subject: format!("{}/{}", update.task_id, update.milestone_id),
                old: old.map(|c| (c.value, c.report_pk)),
                new_value: update.percent,
                report_pk,
            });
            changed += 1;
        }
        out.outcomes.push(StoreOutcome::Stored {
            report_pk,
            seq_gap,
            changed,
        });
    }
    out
}

/// `None` when the current row is as new as `rank` or newer (keep it); `Some(old)` when the
/// report replaces it, `old` being what it replaces (`None`: nothing yet).
fn replaces(current: Option<&Current>, rank: Rank) -> Option<Option<Current>> {
    match current {
        Some(current) if rank <= current.rank => None,
        other => Some(other.copied()),
    }
}

/// Keeps one write per current row: a later write in the group replaces an earlier one's
/// value but keeps whether the row is inserted and when it was first received.
fn record<'a, K: std::hash::Hash + Eq, T>(
    writes: &mut Vec<CurrentWrite<'a, T>>,
    rows: &mut HashMap<K, usize>,
    key: K,
    write: CurrentWrite<'a, T>,
) {
    match rows.get(&key) {
        Some(&i) => {
            let first = &writes[i];
            writes[i] = CurrentWrite {
                insert: first.insert,
                first_received_at_ms: first.first_received_at_ms,
                first_issued_at_ms: first.first_issued_at_ms,
                ..write
            };
        }
        None => {
            rows.insert(key, writes.len());
            writes.push(write);
        }
    }
}

/// Raises the key's `max_seq` and returns the gap. A key's first report counts its gap from
/// the highest seq of the unit's other keys (after `duban-agent rotate-key` the outbox goes on
/// counting where the previous key stopped), never more than `seq - 1`.
fn advance_seq(
    known: &mut Known,
    report: &NewReport,
    key_rows: &mut HashMap<KeyId, usize>,
    key_seqs: &mut Vec<(KeyId, i64)>,
) -> u64 {
    let seq = seq_i64(report.seq);
    let Some(state) = known.keys.get(&report.key_id) else {
        return 0;
    };
    let mut max_seq = state.max_seq;
    if seq <= max_seq {
        return 0;
    }
    if max_seq == 0 {
        let previous = known
            .keys
            .iter()
            .filter(|(id, k)| **id != report.key_id && k.unit_id == report.unit_id)
            .map(|(_, k)| k.max_seq)
            .max()
            .unwrap_or(0);
        max_seq = previous.min(seq - 1);
    }
    if let Some(state) = known.keys.get_mut(&report.key_id) {
        state.max_seq = seq;
    }
    match key_rows.get(&report.key_id) {
        Some(&i) => key_seqs[i].1 = seq,
        None => {
            key_rows.insert(report.key_id, key_seqs.len());
            key_seqs.push((report.key_id, seq));
        }
    }
    (seq - max_seq - 1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> KeyId {
        KeyId([n; 32])
    }

    fn report(id: u8, key_n: u8, seq: u64, revision: u32, issued: i64, value: f64) -> NewReport {
        NewReport {
            plan_id: "p".into(),
            unit_id: "u".into(),
            report_id: [id; 16],
            key_id: key(key_n),
            seq,
            issued_at_ms: issued,
            received_at_ms: 1000 + i64::from(id),
            period: "2018".into(),
            revision,
            payload: vec![id],
            payload_type: "t".into(),
            signature: vec![],
            payload_sha256: [id; 32],
            values: vec![NewValue {
                indicator_id: "i".into(),
                value,
                note: String::new(),
            }],
            task_updates: vec![],
            refused_count: 0,
        }
    }

    fn known_with_key(n: u8, max_seq: i64) -> Known {
        let mut known = Known::default();
        known.keys.insert(
            key(n),
            KeyState {
                unit_id: "u".into(),
                max_seq,
            },
        );
        known
    }

    fn counter(start: i64) -> impl FnMut() -> i64 {
        let mut next = start;
        move || {
            next += 1;
            next
        }
    }

    #[test]
    fn a_new_report_is_stored_with_history_current_row_and_audit() {
        let r = report(1, 1, 1, 0, 10, 5.0);
        let mut known = known_with_key(1, 0);
        let d = decide([&r], &mut known, counter(0));
        assert_eq!(
            d.outcomes,
            vec![StoreOutcome::Stored {
                report_pk: 1,
                seq_gap: 0,
                changed: 1
            }]
        );
        assert_eq!(d.reports.len(), 1);
        assert_eq!(d.value_history.len(), 1);
        assert!(d.values[0].insert);
        assert_eq!(d.audit[0].old, None);
        assert_eq!(d.key_seqs, vec![(key(1), 1)]);
    }

    #[test]
    fn duplicates_conflicts_and_replays_inside_one_group() {
        let first = report(1, 1, 1, 0, 10, 5.0);
        let mut conflicting = report(1, 1, 2, 0, 10, 6.0);
        conflicting.payload_sha256 = [9; 32];
        let replay = report(2, 1, 1, 0, 10, 7.0);
        let mut known = known_with_key(1, 0);
        let d = decide(
            [&first, &first, &conflicting, &replay],
            &mut known,
            counter(0),
        );
        assert_eq!(
            d.outcomes,
            vec![
                StoreOutcome::Stored {
                    report_pk: 1,
                    seq_gap: 0,
                    changed: 1
                },
                StoreOutcome::Duplicate,
                StoreOutcome::Conflict,
                StoreOutcome::Replay {
                    existing_report_id: vec![1; 16]
                },
            ]
        );
        let kinds: Vec<_> = d.security.iter().map(|s| s.kind).collect();
        assert_eq!(kinds, ["report_id_conflict", "seq_replay"]);
        assert_eq!(d.reports.len(), 1);
    }

    #[test]
    fn the_greatest_rank_wins_and_one_row_is_written_per_key() {
        let old = report(1, 1, 1, 0, 10, 1.0);
        let newer = report(2, 1, 2, 1, 5, 2.0);
        let late_older = report(3, 1, 3, 0, 99, 3.0);
        let mut known = known_with_key(1, 0);
        let d = decide([&old, &newer, &late_older], &mut known, counter(0));
        let changed: Vec<_> = d
            .outcomes
            .iter()
            .map(|o| match o {
                StoreOutcome::Stored { changed, .. } => *changed,
                _ => panic!("{o:?}"),
            })
            .collect();
        assert_eq!(changed, [1, 1, 0]);
        assert_eq!(d.values.len(), 1);
        let row = &d.values[0];
        assert!(row.insert);
        assert_eq!(row.item.value, 2.0);
        assert_eq!(row.report_pk, 2);
        assert_eq!(row.first_received_at_ms, old.received_at_ms);
        assert_eq!(d.audit.len(), 2);
        assert_eq!(d.audit[1].old, Some((1.0, 1)));
        assert_eq!(d.value_history.len(), 3);
        assert_eq!(known.values.values().next().map(|c| c.report_pk), Some(2));
    }

    #[test]
    fn a_stored_row_is_updated_only_by_a_greater_rank() {
        let mut known = known_with_key(1, 5);
        let key = Known::value_key(
            &report(1, 1, 1, 0, 0, 0.0),
            &report(1, 1, 1, 0, 0, 0.0).values[0],
        );
        known.values.insert(
            key,
            Current {
                value: 4.0,
                rank: (1, 50, 5),
                report_pk: 40,
            },
        );
        let tie = report(6, 1, 5, 1, 50, 9.0); // the same rank as the stored row: kept
        let lower = report(7, 1, 7, 1, 49, 9.0);
        let higher = report(8, 1, 8, 1, 51, 8.0);
        let d = decide([&tie, &lower, &higher], &mut known, counter(40));
        assert_eq!(d.values.len(), 1);
        assert!(!d.values[0].insert);
        assert_eq!(d.values[0].item.value, 8.0);
        assert_eq!(d.audit.len(), 1);
        assert_eq!(d.audit[0].old, Some((4.0, 40)));
    }

    #[test]
    fn seq_gaps_count_from_the_units_previous_key_after_a_rotation() {
        let mut known = known_with_key(1, 0);
        known.keys.insert(
            key(2),
            KeyState {
                unit_id: "u".into(),
                max_seq: 10,
            },
        );
        known.keys.insert(
            key(3),
            KeyState {
                unit_id: "other".into(),
                max_seq: 100,
            },
        );
        let a = report(1, 1, 12, 0, 10, 1.0);
        let b = report(2, 1, 15, 0, 11, 1.0);
        let c = report(3, 1, 13, 0, 12, 1.0);
        let d = decide([&a, &b, &c], &mut known, counter(0));
        let gaps: Vec<_> = d
            .outcomes
            .iter()
            .map(|o| match o {
                StoreOutcome::Stored { seq_gap, .. } => *seq_gap,
                _ => panic!("{o:?}"),
            })
            .collect();
        assert_eq!(gaps, [1, 2, 0]);
        assert_eq!(d.key_seqs, vec![(key(1), 15)]);
        // A key the store does not hold: no gap, no key row written.
        let unknown = report(4, 9, 3, 0, 10, 1.0);
        let d = decide([&unknown], &mut known, counter(10));
        assert!(matches!(
            d.outcomes[0],
            StoreOutcome::Stored { seq_gap: 0, .. }
        ));
        assert!(d.key_seqs.is_empty());
    }
}

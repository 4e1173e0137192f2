//! One conformance suite for every store backend: SQLite always, PostgreSQL when
//! `DUBAN_TEST_POSTGRES_URL` is set (CI sets it; elsewhere the PostgreSQL cases say they skipped).

mod support;

use duban_aggregator::store::*;
use duban_proto::{KeyId, SigningKey};
use sha2::{Digest, Sha256};

const PLAN: &str = "qingdao-ip-2017";

fn key() -> SigningKey {
    SigningKey::from_seed(&[9; 32])
}

fn report(report_id: u8, seq: u64, revision: u32, issued_at_ms: i64, value: f64) -> NewReport {
    let payload =
        format!("payload {report_id} {seq} {revision} {issued_at_ms} {value}").into_bytes();
    NewReport {
        plan_id: PLAN.into(),
        unit_id: "laoshan".into(),
        report_id: [report_id; 16],
        key_id: key().key_id(),
        seq,
        issued_at_ms,
        received_at_ms: issued_at_ms + 1_000,
        period: "2018Q1".into(),
        revision,
        payload_sha256: Sha256::digest(&payload).into(),
        payload,
        payload_type: duban_proto::PAYLOAD_TYPE.into(),
        signature: vec![7; 64],
        values: vec![NewValue {
            indicator_id: "pct-applications".into(),
            value,
            note: String::new(),
        }],
        task_updates: vec![NewTaskUpdate {
            task_id: "2-3-2".into(),
            milestone_id: "m1".into(),
            percent: value / 10.0,
            status: "in_progress".into(),
            note: String::new(),
        }],
        refused_count: 0,
    }
}

fn new_key(key_id: KeyId, unit: &str) -> NewKey {
    NewKey {
        key_id,
        unit_id: unit.into(),
        public_key: *key().public_key().raw(),
        not_before_ms: None,
        not_after_ms: Some(2_000_000_000_000),
        added_at_ms: 1,
    }
}

async fn stores_and_reads_back<S: Store>(store: &S) {
    store
        .add_key(new_key(key().key_id(), "laoshan"))
        .await
        .unwrap();
    let r = report(1, 1, 0, 1_000, 42.0);
    let outcomes = store.ingest(vec![r.clone()]).await.unwrap();
    assert!(
        matches!(
            outcomes[..],
            [StoreOutcome::Stored {
                seq_gap: 0,
                changed: 2,
                ..
            }]
        ),
        "{outcomes:?}"
    );
    let values = store.current_values(PLAN, None).await.unwrap();
    assert_eq!(values.len(), 1);
    assert_eq!(
        (
            values[0].value,
            values[0].unit_id.as_str(),
            values[0].period.as_str()
        ),
        (42.0, "laoshan", "2018Q1")
    );
    assert_eq!(values[0].first_received_at_ms, 2_000);
    let envelope = store
        .envelope("laoshan", &[1; 16])
        .await
        .unwrap()
        .expect("envelope kept");
    assert_eq!(
        envelope.payload, r.payload,
        "the envelope is kept byte for byte"
    );
    assert_eq!(envelope.signature, r.signature);
    let tasks = store.current_tasks(PLAN).await.unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].percent, 4.2);
    let listed = store
        .reports(&ReportFilter {
            indicator_id: Some("pct-applications".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert!(
        store
            .reports(&ReportFilter {
                unit_id: Some("shinan".into()),
                ..Default::default()
            })
            .await
            .unwrap()
            .is_empty()
    );
}

async fn duplicates_store_nothing_new<S: Store>(store: &S) {
    let r = report(1, 1, 0, 1_000, 42.0);
    store.ingest(vec![r.clone()]).await.unwrap();
    let outcomes = store.ingest(vec![r.clone(), r.clone()]).await.unwrap();
    assert_eq!(outcomes, [StoreOutcome::Duplicate, StoreOutcome::Duplicate]);
    assert_eq!(
        store.reports(&ReportFilter::default()).await.unwrap().len(),
        1
    );
    assert_eq!(
        store.audit(PLAN).await.unwrap().len(),
        2,
        "one audit row per first value and task"
    );
    assert!(store.security_events().await.unwrap().is_empty());
}

async fn same_id_other_bytes_is_a_conflict<S: Store>(store: &S) {
    store
        .ingest(vec![report(1, 1, 0, 1_000, 42.0)])
        .await
        .unwrap();
    let mut changed = report(1, 2, 0, 1_000, 43.0);
    changed.report_id = [1; 16];
    assert_eq!(
        store.ingest(vec![changed]).await.unwrap(),
        [StoreOutcome::Conflict]
    );
    assert_eq!(
        store.current_values(PLAN, None).await.unwrap()[0].value,
        42.0,
        "nothing overwritten"
    );
    let events = store.security_events().await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, "report_id_conflict");
}

async fn reused_seq_is_a_replay<S: Store>(store: &S) {
    store
        .ingest(vec![report(1, 5, 0, 1_000, 42.0)])
        .await
        .unwrap();
    let outcomes = store
        .ingest(vec![report(2, 5, 0, 2_000, 99.0)])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [StoreOutcome::Replay {
            existing_report_id: vec![1; 16]
        }]
    );
    assert_eq!(
        store.current_values(PLAN, None).await.unwrap()[0].value,
        42.0
    );
    assert_eq!(store.security_events().await.unwrap()[0].kind, "seq_replay");
}

async fn newest_revision_wins_and_late_older_does_not_overwrite<S: Store>(store: &S) {
    store
        .ingest(vec![report(1, 1, 0, 1_000, 10.0)])
        .await
        .unwrap();
    store
        .ingest(vec![report(2, 2, 1, 2_000, 11.0)])
        .await
        .unwrap();
    // An older revision arriving late (sent later with a newer seq) must not win.
    let outcomes = store
        .ingest(vec![report(3, 3, 0, 3_000, 9.0)])
        .await
        .unwrap();
    assert!(
        matches!(outcomes[..], [StoreOutcome::Stored { changed: 0, .. }]),
        "{outcomes:?}"
    );
    let value = &store
        .current_values(PLAN, Some("pct-applications"))
        .await
        .unwrap()[0];
    assert_eq!((value.value, value.revision), (11.0, 1));
    assert_eq!(
        value.first_received_at_ms, 2_000,
        "first receipt survives corrections"
    );
    // Same revision, later issued_at wins.
    store
        .ingest(vec![report(4, 4, 1, 4_000, 12.0)])
        .await
        .unwrap();
    assert_eq!(
        store.current_values(PLAN, None).await.unwrap()[0].value,
        12.0
    );
    let audit: Vec<(Option<f64>, f64)> = store
        .audit(PLAN)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.kind == "value")
        .map(|a| (a.old_value, a.new_value))
        .collect();
    assert_eq!(
        audit,
        [(None, 10.0), (Some(10.0), 11.0), (Some(11.0), 12.0)]
    );
}

/// The current value and the current task update, each with the revision it came from.
async fn current<S: Store>(store: &S) -> ((f64, i64), (f64, i64)) {
    let value = &store.current_values(PLAN, None).await.unwrap()[0];
    let task = &store.current_tasks(PLAN).await.unwrap()[0];
    ((value.value, value.revision), (task.percent, task.revision))
}

/// PROTOCOL.md: of all accepted reports for a value or a task update, the greatest
/// `(revision, issued_at_ms, seq)` is current, whatever order they arrive in; the others are
/// stored as evidence.
async fn the_greatest_revision_issued_at_seq_wins_for_values_and_tasks<S: Store>(store: &S) {
    // ((report id, seq, revision, issued_at, value), the current value after it); each report
    // also sets the task to value/10.
    type Arrival = ((u8, u64, u32, i64, f64), f64);
    let arrivals: [Arrival; 8] = [
        ((1, 10, 0, 1_000, 10.0), 10.0),
        ((2, 20, 1, 2_000, 11.0), 11.0), // higher revision
        ((3, 30, 0, 3_000, 9.0), 11.0),  // an older revision, late: stored, not current
        ((4, 40, 1, 4_000, 12.0), 12.0), // same revision, issued later
        ((5, 45, 1, 3_999, 15.0), 12.0), // same revision, issued earlier, newer seq: not current
        ((6, 35, 1, 4_000, 13.0), 12.0), // same revision and time, lower seq: not current
        ((7, 50, 1, 4_000, 14.0), 14.0), // same revision and time, higher seq
        ((8, 60, 2, 500, 16.0), 16.0),   // a higher revision wins even issued earliest
    ];
    for ((id, seq, revision, issued, value), current_value) in arrivals {
        let outcome = store
            .ingest(vec![report(id, seq, revision, issued, value)])
            .await
            .unwrap();
        assert!(
            matches!(outcome[..], [StoreOutcome::Stored { .. }]),
            "report {id}: {outcome:?}"
        );
        let ((v, v_rev), (t, t_rev)) = current(store).await;
        assert_eq!(v, current_value, "value after report {id}");
        assert_eq!(t, current_value / 10.0, "task update after report {id}");
        assert_eq!(v_rev, t_rev);
    }
    // Every report's items are kept as evidence, once each.
    let items = store.stored_items(PLAN).await.unwrap();
    assert_eq!(items.len(), 2 * arrivals.len());
    let values: Vec<(i64, f64)> = items
        .iter()
        .filter(|i| i.kind == "value")
        .map(|i| (i.seq, i.value))
        .collect();
    let sent: Vec<(i64, f64)> = arrivals
        .iter()
        .map(|((_, seq, _, _, value), _)| (*seq as i64, *value))
        .collect();
    assert_eq!(values, sent);
    assert!(
        items
            .iter()
            .filter(|i| i.kind == "task_update")
            .all(|i| i.subject == "2-3-2/m1")
    );
}

async fn seq_gaps_are_counted<S: Store>(store: &S) {
    store
        .add_key(new_key(key().key_id(), "laoshan"))
        .await
        .unwrap();
    let first = store
        .ingest(vec![report(1, 1, 0, 1_000, 1.0)])
        .await
        .unwrap();
    let second = store
        .ingest(vec![report(2, 5, 0, 2_000, 1.0)])
        .await
        .unwrap();
    assert!(matches!(
        first[..],
        [StoreOutcome::Stored { seq_gap: 0, .. }]
    ));
    assert!(
        matches!(second[..], [StoreOutcome::Stored { seq_gap: 3, .. }]),
        "{second:?}"
    );
    assert_eq!(store.keys(Some("laoshan")).await.unwrap()[0].max_seq, 5);
}

async fn keys_are_added_listed_and_revoked<S: Store>(store: &S) {
    let other = SigningKey::from_seed(&[10; 32]);
    store
        .add_key(new_key(key().key_id(), "laoshan"))
        .await
        .unwrap();
    store
        .add_key(new_key(other.key_id(), "shinan"))
        .await
        .unwrap();
    let again = store
        .add_key(new_key(key().key_id(), "laoshan"))
        .await
        .unwrap_err();
    assert!(matches!(again, StoreError::KeyExists(_)), "{again}");
    assert_eq!(store.keys(None).await.unwrap().len(), 2);
    let laoshan = store.keys(Some("laoshan")).await.unwrap();
    assert_eq!(laoshan.len(), 1);
    assert_eq!(laoshan[0].key_id, key().key_id());
    assert_eq!(laoshan[0].not_after_ms, Some(2_000_000_000_000));
    assert!(store.revoke_key(other.key_id(), 500).await.unwrap());
    assert!(
        store.revoke_key(other.key_id(), 900).await.unwrap(),
        "revoking twice keeps the first time"
    );
    assert_eq!(
        store.keys(Some("shinan")).await.unwrap()[0].revoked_at_ms,
        Some(500)
    );
    assert!(
        !store
            .revoke_key(SigningKey::from_seed(&[11; 32]).key_id(), 1)
            .await
            .unwrap()
    );
}

async fn a_batch_is_classified_in_order<S: Store>(store: &S) {
    let outcomes = store
        .ingest(vec![
            report(1, 1, 0, 1_000, 1.0),
            report(1, 1, 0, 1_000, 1.0),
            report(2, 1, 0, 1_000, 2.0),
            report(3, 2, 0, 1_500, 3.0),
        ])
        .await
        .unwrap();
    assert!(matches!(outcomes[0], StoreOutcome::Stored { .. }));
    assert_eq!(outcomes[1], StoreOutcome::Duplicate);
    assert!(matches!(outcomes[2], StoreOutcome::Replay { .. }));
    assert!(matches!(outcomes[3], StoreOutcome::Stored { .. }));
    assert_eq!(
        store.reports(&ReportFilter::default()).await.unwrap().len(),
        2
    );
}

async fn concurrent_replicas_store_once<S: Store + Clone + Send + Sync + 'static>(a: &S, b: &S) {
    let batch: Vec<NewReport> = (1..=40)
        .map(|i| report(i, u64::from(i), 0, 1_000 + i64::from(i), f64::from(i)))
        .collect();
    let (ra, rb) = tokio::join!(a.ingest(batch.clone()), b.ingest(batch.clone()));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    for (i, (x, y)) in ra.iter().zip(&rb).enumerate() {
        let stored = [x, y]
            .iter()
            .filter(|o| matches!(o, StoreOutcome::Stored { .. }))
            .count();
        let duplicate = [x, y]
            .iter()
            .filter(|o| **o == &StoreOutcome::Duplicate)
            .count();
        assert_eq!((stored, duplicate), (1, 1), "report {i}: {x:?} / {y:?}");
    }
    assert_eq!(a.reports(&ReportFilter::default()).await.unwrap().len(), 40);
}

fn wanted(name: &str, severity: &str) -> WantedAlert {
    let labels: std::collections::BTreeMap<String, String> = [
        ("alertname", name),
        ("severity", severity),
        ("lead_unit", "science-tech"),
        ("plan", PLAN),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    WantedAlert {
        key: format!("{name}/science-tech"),
        labels,
        annotations: Default::default(),
    }
}

async fn alerts_fire_once_escalate_and_resolve<S: Store>(store: &S) {
    let first = store
        .sync_alerts(
            PLAN,
            vec![
                wanted("TaskOverdue", "warning"),
                wanted("ReportOverdue", "warning"),
            ],
            1_000,
        )
        .await
        .unwrap();
    assert_eq!(
        (first.fired.len(), first.active.len(), first.resolved.len()),
        (2, 2, 0)
    );
    // Still active, escalated: not fired again, start kept.
    let second = store
        .sync_alerts(
            PLAN,
            vec![
                wanted("TaskOverdue", "critical"),
                wanted("ReportOverdue", "warning"),
            ],
            2_000,
        )
        .await
        .unwrap();
    assert!(second.fired.is_empty());
    let task = second
        .active
        .iter()
        .find(|a| a.key == "TaskOverdue/science-tech")
        .unwrap();
    assert_eq!(
        (task.starts_at_ms, task.labels["severity"].as_str()),
        (1_000, "critical")
    );
    // The cause of one is gone: it resolves with an end time.
    let third = store
        .sync_alerts(PLAN, vec![wanted("TaskOverdue", "critical")], 3_000)
        .await
        .unwrap();
    assert_eq!(third.resolved.len(), 1);
    assert_eq!(
        (third.resolved[0].key.as_str(), third.resolved[0].ends_at_ms),
        ("ReportOverdue/science-tech", Some(3_000))
    );
    let listed = store.alerts(PLAN, 3_000).await.unwrap();
    assert_eq!(listed.len(), 2, "open and just resolved");
    assert_eq!(
        store.alerts(PLAN, 3_001).await.unwrap().len(),
        1,
        "only the open one later"
    );
    // Firing again after resolving is a new firing with a new start.
    let again = store
        .sync_alerts(
            PLAN,
            vec![
                wanted("TaskOverdue", "critical"),
                wanted("ReportOverdue", "warning"),
            ],
            4_000,
        )
        .await
        .unwrap();
    assert_eq!(again.fired.len(), 1);
    assert_eq!(again.fired[0].starts_at_ms, 4_000);
    assert!(store.is_notifier().await.unwrap());
}

/// Replicas storing *different* reports for one value at once: every call succeeds (races are
/// retried inside the store) and the highest (revision, issued_at, seq) wins.
async fn racing_corrections_of_one_value<S: Store + Clone + Send + Sync + 'static>(a: &S, b: &S) {
    for round in 0..30u8 {
        let base = u64::from(round) * 2 + 1;
        let x = report(
            round * 2 + 1,
            base,
            u32::from(round) * 2,
            1_000,
            f64::from(round) * 2.0,
        );
        let y = report(
            round * 2 + 2,
            base + 1,
            u32::from(round) * 2 + 1,
            1_000,
            f64::from(round) * 2.0 + 1.0,
        );
        let (rx, ry) = tokio::join!(a.ingest(vec![x]), b.ingest(vec![y]));
        assert!(matches!(rx.unwrap()[..], [StoreOutcome::Stored { .. }]));
        assert!(matches!(ry.unwrap()[..], [StoreOutcome::Stored { .. }]));
    }
    let current = a.current_values(PLAN, None).await.unwrap();
    assert_eq!(current.len(), 1);
    assert_eq!((current[0].value, current[0].revision), (59.0, 59));
}

fn statement(id: u8, seq: i64, received_at_ms: i64, kind: &str, note: &str) -> NewStatement {
    NewStatement {
        plan_id: PLAN.into(),
        unit_id: "laoshan".into(),
        statement_id: vec![id; 16],
        key_id: key().key_id().as_bytes().to_vec(),
        seq,
        issued_at_ms: received_at_ms,
        received_at_ms,
        case_id: "report/pct-applications/2018Q1/laoshan".into(),
        kind: kind.into(),
        date: "2018-06-30".into(),
        note: note.into(),
        reference: String::new(),
        about_unit: String::new(),
        payload: format!("statement {id} {seq} {note}").into_bytes(),
        signature: vec![0; 64],
    }
}

async fn statements_are_new_resent_conflicting_or_replayed<S: Store>(store: &S) {
    let first = statement(1, 1, 1_000, "acknowledge", "");
    assert_eq!(
        store.add_statement(&first).await.unwrap(),
        StatementOutcome::Stored
    );
    // The same bytes again: a resend, nothing new.
    assert_eq!(
        store.add_statement(&first).await.unwrap(),
        StatementOutcome::Duplicate
    );
    // The same id with other bytes: a conflict.
    let changed = statement(1, 2, 2_000, "acknowledge", "changed");
    assert_eq!(
        store.add_statement(&changed).await.unwrap(),
        StatementOutcome::IdConflict
    );
    // Another statement under a seq already used: a replay.
    let replay = statement(2, 1, 3_000, "request_extension", "原因");
    assert_eq!(
        store.add_statement(&replay).await.unwrap(),
        StatementOutcome::SeqReplay
    );
    let second = statement(3, 2, 4_000, "request_extension", "原因");
    assert_eq!(
        store.add_statement(&second).await.unwrap(),
        StatementOutcome::Stored
    );
    // Read back in the order received, up to a time; the counter is the key's highest seq.
    let all = store.statements(PLAN, i64::MAX).await.unwrap();
    let kinds: Vec<(&str, i64)> = all.iter().map(|s| (s.kind.as_str(), s.seq)).collect();
    assert_eq!(kinds, [("acknowledge", 1), ("request_extension", 2)]);
    assert_eq!(all[1].note, "原因");
    assert_eq!(store.statements(PLAN, 3_999).await.unwrap().len(), 1);
    assert_eq!(
        store
            .statement_max_seq(key().key_id().as_bytes())
            .await
            .unwrap(),
        2
    );
    assert_eq!(store.statement_max_seq(&[7; 32]).await.unwrap(), 0);
}

async fn the_rows_changed_after_a_report_are_those_later_reports_wrote<S: Store>(store: &S) {
    store
        .add_key(new_key(key().key_id(), "laoshan"))
        .await
        .unwrap();
    let stored = |outcomes: Vec<StoreOutcome>| match outcomes[..] {
        [StoreOutcome::Stored { report_pk, .. }] => report_pk,
        _ => panic!("{outcomes:?}"),
    };
    let first = stored(
        store
            .ingest(vec![report(1, 1, 0, 1_000, 40.0)])
            .await
            .unwrap(),
    );
    assert_eq!(store.write_marker().await.unwrap().reports, first);
    let (values, tasks) = store.changed_after(PLAN, 0).await.unwrap();
    assert_eq!((values.len(), tasks.len()), (1, 1));
    let (values, tasks) = store.changed_after(PLAN, first).await.unwrap();
    assert!(
        values.is_empty() && tasks.is_empty(),
        "nothing since the first"
    );
    // A correction: the current row now carries the later report.
    let correction = stored(
        store
            .ingest(vec![report(2, 2, 1, 2_000, 41.0)])
            .await
            .unwrap(),
    );
    let (values, tasks) = store.changed_after(PLAN, first).await.unwrap();
    assert_eq!(
        values
            .iter()
            .map(|v| (v.value, v.report_pk, v.first_received_at_ms))
            .collect::<Vec<_>>(),
        [(41.0, correction, 2_000)],
        "the row as stored now, its first receipt kept"
    );
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].report_pk, correction);
    // A late report of a lower revision loses: stored, but no current row changes.
    let late = stored(
        store
            .ingest(vec![report(3, 3, 0, 3_000, 1.0)])
            .await
            .unwrap(),
    );
    assert_eq!(store.write_marker().await.unwrap().reports, late);
    let (values, tasks) = store.changed_after(PLAN, correction).await.unwrap();
    assert!(
        values.is_empty() && tasks.is_empty(),
        "{values:?} {tasks:?}"
    );
    assert!(
        store
            .changed_after("another-plan", 0)
            .await
            .unwrap()
            .0
            .is_empty()
    );
}

macro_rules! sqlite_cases {
    ($($case:ident),*) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let dir = tempfile::tempdir().unwrap();
                    let url = format!("sqlite://{}", dir.path().join("nested/duban.db").display());
                    let store = SqliteStore::open(&url).await.unwrap();
                    super::$case(&store).await;
                }
            )*
        }
    };
}

macro_rules! postgres_cases {
    ($($case:ident),*) => {
        mod postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(base) = support::postgres_url(concat!("postgres::", stringify!($case))) else { return };
                    let schema = support::PgSchema::create(&base).await;
                    let store = PgStore::open(&schema.url).await.unwrap();
                    super::$case(&store).await;
                }
            )*
        }
    };
}

sqlite_cases!(
    stores_and_reads_back,
    the_greatest_revision_issued_at_seq_wins_for_values_and_tasks,
    duplicates_store_nothing_new,
    same_id_other_bytes_is_a_conflict,
    reused_seq_is_a_replay,
    newest_revision_wins_and_late_older_does_not_overwrite,
    seq_gaps_are_counted,
    keys_are_added_listed_and_revoked,
    a_batch_is_classified_in_order,
    alerts_fire_once_escalate_and_resolve,
    statements_are_new_resent_conflicting_or_replayed,
    the_rows_changed_after_a_report_are_those_later_reports_wrote
);

postgres_cases!(
    stores_and_reads_back,
    the_greatest_revision_issued_at_seq_wins_for_values_and_tasks,
    duplicates_store_nothing_new,
    same_id_other_bytes_is_a_conflict,
    reused_seq_is_a_replay,
    newest_revision_wins_and_late_older_does_not_overwrite,
    seq_gaps_are_counted,
    keys_are_added_listed_and_revoked,
    a_batch_is_classified_in_order,
    alerts_fire_once_escalate_and_resolve,
    statements_are_new_resent_conflicting_or_replayed,
    the_rows_changed_after_a_report_are_those_later_reports_wrote
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("duban.db").display());
    {
        let store = SqliteStore::open(&url).await.unwrap();
        store
            .ingest(vec![report(1, 1, 0, 1_000, 42.0)])
            .await
            .unwrap();
    }
    let store = SqliteStore::open(&url).await.unwrap();
    assert_eq!(
        store.current_values(PLAN, None).await.unwrap()[0].value,
        42.0
    );
    assert_eq!(
        store
            .ingest(vec![report(1, 1, 0, 1_000, 42.0)])
            .await
            .unwrap(),
        [StoreOutcome::Duplicate]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_two_handles_on_one_file_store_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("duban.db").display());
    let a = SqliteStore::open(&url).await.unwrap();
    let b = SqliteStore::open(&url).await.unwrap();
    concurrent_replicas_store_once(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_replicas_store_once() {
    let Some(base) = support::postgres_url("postgres_two_replicas_store_once") else {
        return;
    };
    let schema = support::PgSchema::create(&base).await;
    let a = PgStore::open(&schema.url).await.unwrap();
    let b = PgStore::open(&schema.url).await.unwrap();
    concurrent_replicas_store_once(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_only_one_replica_is_the_webhook_notifier() {
    let Some(base) = support::postgres_url("postgres_only_one_replica_is_the_webhook_notifier")
    else {
        return;
    };
    let schema = support::PgSchema::create(&base).await;
    let a = PgStore::open(&schema.url).await.unwrap();
    let b = PgStore::open(&schema.url).await.unwrap();
    let (x, y) = (
        a.is_notifier().await.unwrap(),
        b.is_notifier().await.unwrap(),
    );
    assert!(x ^ y, "exactly one replica holds the lock: {x} {y}");
    assert_eq!(a.is_notifier().await.unwrap(), x, "and keeps it");
    drop(a);
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_racing_corrections_of_one_value() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("duban.db").display());
    let (a, b) = (
        SqliteStore::open(&url).await.unwrap(),
        SqliteStore::open(&url).await.unwrap(),
    );
    racing_corrections_of_one_value(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_racing_corrections_of_one_value() {
    let Some(base) = support::postgres_url("postgres_racing_corrections_of_one_value") else {
        return;
    };
    let schema = support::PgSchema::create(&base).await;
    let (a, b) = (
        PgStore::open(&schema.url).await.unwrap(),
        PgStore::open(&schema.url).await.unwrap(),
    );
    racing_corrections_of_one_value(&a, &b).await;
}

/// The progress view updated with what was written since the last one (the current rows of
/// later reports, the statements) equals one computed from the store read whole.
async fn a_view_updated_with_the_changes_equals_one_read_whole(store: &AnyStore) {
    use duban_aggregator::{app::ViewCache, metrics::Metrics};
    let plan = duban_aggregator::plan::embedded().plan;
    let metrics = Metrics::new("test");
    let views = ViewCache::default();
    let reads = |metrics: &Metrics| {
        ["whole", "changes"].map(|read| metrics.progress_reads.with_label_values(&[read]).get())
    };
    store
        .add_key(new_key(key().key_id(), "laoshan"))
        .await
        .unwrap();
    store.beat("centre", 0, i64::MAX / 4).await.unwrap();
    let now = 1_600_000_000_000;
    store
        .ingest(vec![report(1, 1, 0, 1_000, 40.0)])
        .await
        .unwrap();
    let first = views.view(store, &plan, &metrics, now, 0).await.unwrap();
    assert_eq!(reads(&metrics), [1, 0]);
    let sorted = |snapshot: &duban_aggregator::progress::Snapshot| {
        let mut values = snapshot.values.clone();
        values.sort_by(|a, b| {
            (&a.indicator_id, &a.period, &a.unit_id).cmp(&(&b.indicator_id, &b.period, &b.unit_id))
        });
        let mut tasks = snapshot.tasks.clone();
        tasks.sort_by(|a, b| {
            (&a.task_id, &a.milestone_id, &a.period, &a.unit_id).cmp(&(
                &b.task_id,
                &b.milestone_id,
                &b.period,
                &b.unit_id,
            ))
        });
        (
            values,
            tasks,
            snapshot.statements.clone(),
            snapshot.outages.clone(),
        )
    };
    let computations = |metrics: &Metrics| {
        ["whole", "updated"].map(|how| {
            metrics
                .progress_computations
                .with_label_values(&[how])
                .get()
        })
    };
    // Round one with the first view still held (the rows and the progress are copied, the
    // copy updated), round two with none held (they are taken): a correction and a new key,
    // then a statement (whole: a statement may move deadlines) and a correction, then a
    // correction alone (the last progress updated with it).
    let mut new_period = report(3, 3, 0, 3_000, 7.0);
    new_period.period = "2018Q2".into();
    let rounds = [
        (vec![report(2, 2, 1, 2_000, 41.0), new_period], None),
        (
            vec![report(4, 4, 2, 4_000, 42.0)],
            Some(statement(5, 5, 5_000, "acknowledge", "")),
        ),
        (vec![report(6, 6, 3, 6_000, 43.0)], None),
    ];
    let expected_computations = [[1, 1], [2, 1], [2, 2]];
    let mut held = Some(first);
    for (round, (reports, said)) in rounds.into_iter().enumerate() {
        let at = now + 1 + round as i64;
        store.ingest(reports).await.unwrap();
        if let Some(said) = said {
            store.add_statement(&said).await.unwrap();
        }
        let updated = views.view(store, &plan, &metrics, at, 0).await.unwrap();
        held.take();
        assert_eq!(reads(&metrics), [1, round as u64 + 1], "round {round}");
        assert_eq!(
            computations(&metrics),
            expected_computations[round],
            "round {round}"
        );
        let whole = snapshot(store, &plan, at).await.unwrap();
        assert_eq!(sorted(&updated.snapshot), sorted(&whole), "round {round}");
        assert_eq!(
            serde_json::to_value(&updated.progress).unwrap(),
            serde_json::to_value(duban_aggregator::progress::compute(&plan, &whole, at)).unwrap(),
            "round {round}"
        );
    }
    let values = &views
        .view(store, &plan, &metrics, now + 9, 0)
        .await
        .unwrap()
        .snapshot
        .values;
    assert_eq!(
        values
            .iter()
            .map(|v| (v.period.as_str(), v.value))
            .collect::<Vec<_>>(),
        [("2018Q1", 43.0), ("2018Q2", 7.0)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_view_updated_with_the_changes_equals_one_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("duban.db").display());
    a_view_updated_with_the_changes_equals_one_read_whole(&AnyStore::open(&url).await.unwrap())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_view_updated_with_the_changes_equals_one_read_whole() {
    let Some(base) =
        support::postgres_url("postgres_a_view_updated_with_the_changes_equals_one_read_whole")
    else {
        return;
    };
    let schema = support::PgSchema::create(&base).await;
    a_view_updated_with_the_changes_equals_one_read_whole(
        &AnyStore::open(&schema.url).await.unwrap(),
    )
    .await;
}

use super::*;

/// A clock standing still at 2026-12-01T00:00:00Z, so that nothing ages past `max_age`.
fn clock() -> Arc<dyn Clock> {
    Arc::new(duban_host::clock::ManualClock::new(1_796_083_200_000))
}

fn config(dir: &Path, max_bytes: u64, when_full: WhenFull) -> OutboxConfig {
    OutboxConfig {
        path: dir.join("outbox.db"),
        max_bytes,
        max_age: Duration::from_secs(86_400),
        when_full,
    }
}

fn value(period: &str, value: f64) -> Item {
    Item::Value {
        indicator: "pct-applications".into(),
        period: period.parse().unwrap(),
        value,
        note: "x".repeat(300),
    }
}

fn signer(key: &SigningKey) -> Signer<'_> {
    Signer {
        key,
        unit: "laoshan",
        audience: "qingdao-ip-2017",
    }
}

/// A new outbox, told by "the centre" that it holds nothing for this key yet.
async fn open_synced(config: &OutboxConfig) -> Outbox {
    open_synced_with(config, clock()).await
}

async fn open_synced_with(config: &OutboxConfig, clock: Arc<dyn Clock>) -> Outbox {
    let (outbox, opened) = Outbox::open(config, clock).await.unwrap();
    assert_eq!(opened, Opened::default());
    let key = SigningKey::generate();
    outbox
        .apply_centre_state(0, &[], signer(&key))
        .await
        .unwrap();
    outbox
}

fn decoded(p: &Pending) -> pb::Report {
    pb::Report::decode(p.envelope.payload.as_slice()).unwrap()
}

#[tokio::test]
async fn seq_rises_across_reopening_and_unchanged_items_build_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate();
    let config = config(dir.path(), 1 << 20, WhenFull::Refuse);
    let outbox = open_synced(&config).await;
    let first = outbox
        .enqueue(
            signer(&key),
            &[value("2018Q1", 1.0), value("2018Q2", 2.0)],
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        first.reports,
        [(1, "2018Q1".to_owned()), (2, "2018Q2".to_owned())]
    );
    let same = outbox
        .enqueue(signer(&key), &[value("2018Q1", 1.0)], false)
        .await
        .unwrap();
    assert_eq!((same.reports.len(), same.unchanged), (0, 1));
    drop(outbox);
    let (outbox, _) = Outbox::open(&config, clock()).await.unwrap();
    assert!(
        outbox.is_synced().await.unwrap(),
        "synced survives reopening"
    );
    let changed = outbox
        .enqueue(signer(&key), &[value("2018Q1", 1.5)], false)
        .await
        .unwrap();
    assert_eq!(changed.reports, [(3, "2018Q1".to_owned())]);
    let pending = outbox.pending(10).await.unwrap();
    let revisions: Vec<u32> = pending.iter().map(|p| decoded(p).revision).collect();
    assert_eq!(
        revisions,
        [0, 0, 1],
        "the correction of 2018Q1 carries a higher revision"
    );
    // What is stored verifies, byte for byte, as signed.
    for p in &pending {
        envelope::verify(&p.envelope, key.public_key()).unwrap();
    }
}

#[tokio::test]
async fn a_new_outbox_keeps_provisional_reports_until_the_centre_state_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate();
    let time = Arc::new(duban_host::clock::ManualClock::new(7));
    let (outbox, _) = Outbox::open(&config(dir.path(), 1 << 20, WhenFull::Refuse), time.clone())
        .await
        .unwrap();
    assert!(!outbox.is_synced().await.unwrap());
    let first = outbox
        .enqueue(
            signer(&key),
            &[value("2018Q1", 1.0), value("2018Q2", 1.0)],
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        first.reports,
        [(-1, "2018Q1".to_owned()), (-2, "2018Q2".to_owned())],
        "provisional: negative seqs in the order they were built"
    );
    time.set_ms(8);
    let later = outbox
        .enqueue(signer(&key), &[value("2018Q1", 2.0)], false)
        .await
        .unwrap();
    assert_eq!(later.reports, [(-3, "2018Q1".to_owned())]);
    assert!(
        outbox.pending(10).await.unwrap().is_empty(),
        "nothing goes out yet"
    );
    assert_eq!(outbox.stats().await.unwrap().provisional, 3);
    // The centre holds seq 41 under this key and revision 2 of 2018Q1 for the unit.
    let (next, signed) = outbox
        .apply_centre_state(41, &[("2018Q1".to_owned(), 2)], signer(&key))
        .await
        .unwrap();
    assert_eq!((next, signed), (45, 3));
    let pending = outbox.pending(10).await.unwrap();
    let got: Vec<(i64, u64, String, u32, i64, f64)> = pending
        .iter()
        .map(|p| {
            let r = envelope::verify(&p.envelope, key.public_key()).unwrap();
            (
                p.seq,
                r.seq,
                r.period,
                r.revision,
                r.issued_at_ms,
                r.values[0].value,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (42, 42, "2018Q1".to_owned(), 3, 7, 1.0),
            (43, 43, "2018Q2".to_owned(), 0, 7, 1.0),
            (44, 44, "2018Q1".to_owned(), 4, 8, 2.0),
        ],
        "seqs above the centre's in build order, revisions above the centre's, issue times kept"
    );
    assert_eq!(outbox.stats().await.unwrap().provisional, 0);
    // While waiting, the newest value is what change detection compares with.
    let same = outbox
        .enqueue(signer(&key), &[value("2018Q1", 2.0)], false)
        .await
        .unwrap();
    assert_eq!((same.reports.len(), same.unchanged), (0, 1));
    // A later answer never lowers anything.
    assert_eq!(
        outbox
            .apply_centre_state(5, &[], signer(&key))
            .await
            .unwrap(),
        (45, 0)
    );
}

#[tokio::test]
async fn change_detection_remembers_only_what_the_centre_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate();
    let outbox = open_synced(&config(dir.path(), 1 << 20, WhenFull::Refuse)).await;
    let items = [value("2018Q1", 1.0)];
    outbox.enqueue(signer(&key), &items, false).await.unwrap();
    // While it waits, the same value builds nothing new.
    let again = outbox.enqueue(signer(&key), &items, false).await.unwrap();
    assert_eq!((again.reports.len(), again.unchanged), (0, 1));
    // Refused for good: not taken for sent, but not built again while unchanged either (the
    // centre would refuse it again)...
    outbox
        .dead_letter(
            1,
            "REASON_NOTHING_VALID",
            "all 1 items were refused",
            &[(
                "value",
                0,
                "UNKNOWN_INDICATOR".into(),
                "no such indicator".into(),
            )],
        )
        .await
        .unwrap();
    let same = outbox.enqueue(signer(&key), &items, false).await.unwrap();
    assert_eq!((same.reports.len(), same.refused_before), (0, 1));
    assert_eq!(
        outbox.refusals().await.unwrap()[0].code,
        "UNKNOWN_INDICATOR"
    );
    // ...until the refusals are discarded (the centre's plan was fixed): then it is.
    assert_eq!(outbox.discard_dead().await.unwrap(), 1);
    let rebuilt = outbox.enqueue(signer(&key), &items, false).await.unwrap();
    assert_eq!(
        rebuilt.reports.len(),
        1,
        "a discarded refusal is built again"
    );
    // Accepted: remembered.
    outbox
        .ack(&[Ack {
            seq: rebuilt.reports[0].0,
            refused: vec![],
        }])
        .await
        .unwrap();
    let after = outbox.enqueue(signer(&key), &items, false).await.unwrap();
    assert_eq!((after.reports.len(), after.unchanged), (0, 1));
    // Stored with this item refused (PARTIAL).
    let two = [
        value("2018Q2", 1.0),
        Item::Value {
            indicator: "trademarks".into(),
            period: "2018Q2".parse().unwrap(),
            value: 5.0,
            note: String::new(),
        },
    ];
    let partial = outbox.enqueue(signer(&key), &two, false).await.unwrap();
    let seq = partial.reports[0].0;
    outbox
        .ack(&[Ack {
            seq,
            refused: vec![("value", 1, "NOT_A_REPORTER".into(), "not a reporter".into())],
        }])
        .await
        .unwrap();
    let next = outbox.enqueue(signer(&key), &two, false).await.unwrap();
    assert_eq!(
        (next.reports.len(), next.unchanged, next.refused_before),
        (0, 1, 1),
        "the accepted item is remembered as sent, the refused one as refused"
    );
    // Changed at the source, the refused item is built again.
    let fixed = [Item::Value {
        indicator: "trademarks".into(),
        period: "2018Q2".parse().unwrap(),
        value: 6.0,
        note: String::new(),
    }];
    assert_eq!(
        outbox
            .enqueue(signer(&key), &fixed, false)
            .await
            .unwrap()
            .reports
            .len(),
        1
    );
    let refusals = outbox.refusals().await.unwrap();
    let shown: Vec<(&str, &str, bool)> = refusals
        .iter()
        .map(|r| (r.item.as_str(), r.code.as_str(), r.in_dead_letter))
        .collect();
    assert_eq!(shown, [("value trademarks", "NOT_A_REPORTER", false)]);
}

#[tokio::test]
async fn when_full_refuse_keeps_everything_and_drop_oldest_makes_room() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate();
    let outbox = open_synced(&config(dir.path(), 1500, WhenFull::Refuse)).await;
    let quarters = ["2018Q1", "2018Q2", "2018Q3", "2018Q4", "2019Q1", "2019Q2"];
    let mut stored = 0;
    let mut refused = false;
    for (i, q) in quarters.iter().enumerate() {
        match outbox
            .enqueue(signer(&key), &[value(q, i as f64)], false)
            .await
        {
            Ok(done) => stored += done.reports.len(),
            Err(OutboxError::Full { .. }) => refused = true,
            Err(other) => panic!("{other}"),
        }
    }
    assert!(refused, "the limit was reached");
    let stats = outbox.stats().await.unwrap();
    assert_eq!(stats.reports as usize, stored, "nothing stored was dropped");
    assert!(stats.bytes <= 1500);

    let dir = tempfile::tempdir().unwrap();
    let outbox = open_synced(&config(dir.path(), 1500, WhenFull::DropOldest)).await;
    let mut dropped = 0;
    for (i, q) in quarters.iter().enumerate() {
        dropped += outbox
            .enqueue(signer(&key), &[value(q, i as f64)], false)
            .await
            .unwrap()
            .dropped;
    }
    assert!(dropped > 0);
    let pending = outbox.pending(10).await.unwrap();
    assert_eq!(pending.last().unwrap().seq, 6, "the newest is kept");
    assert_eq!(
        pending.first().unwrap().seq,
        1 + dropped as i64,
        "the oldest went first"
    );
}

#[tokio::test]
async fn drop_oldest_drops_the_oldest_provisional_reports_of_a_new_outbox() {
    // Before the centre answers, reports are provisional (-1, -2, …): the oldest is -1.
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate();
    let (outbox, _) = Outbox::open(&config(dir.path(), 1500, WhenFull::DropOldest), clock())
        .await
        .unwrap();
    let quarters = ["2018Q1", "2018Q2", "2018Q3", "2018Q4", "2019Q1", "2019Q2"];
    let mut dropped = 0;
    for (i, q) in quarters.iter().enumerate() {
        dropped += outbox
            .enqueue(signer(&key), &[value(q, i as f64)], false)
            .await
            .unwrap()
            .dropped;
    }
    assert!(dropped > 0);
    outbox
        .apply_centre_state(0, &[], signer(&key))
        .await
        .unwrap();
    let periods: Vec<String> = outbox
        .pending(10)
        .await
        .unwrap()
        .iter()
        .map(|p| {
            pb::Report::decode(p.envelope.payload.as_slice())
                .unwrap()
                .period
        })
        .collect();
    assert_eq!(
        periods,
        quarters[dropped as usize..],
        "the newest are kept, in the order they were built"
    );
}

#[tokio::test]
async fn dead_letters_are_kept_and_retried_only_for_the_same_identity() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate();
    let outbox = open_synced(&config(dir.path(), 1 << 20, WhenFull::Refuse)).await;
    outbox
        .enqueue(
            signer(&key),
            &[value("2018Q1", 1.0), value("2018Q2", 2.0)],
            false,
        )
        .await
        .unwrap();
    outbox
        .dead_letter(1, "REASON_NOTHING_VALID", "all refused", &[])
        .await
        .unwrap();
    let dead = outbox.dead_letters().await.unwrap();
    assert_eq!(
        (
            dead.len(),
            dead[0].seq,
            dead[0].reason.as_str(),
            dead[0].unit.as_str()
        ),
        (1, 1, "REASON_NOTHING_VALID", "laoshan")
    );
    assert_eq!(dead[0].refusals[0].item, "report");
    assert_eq!(
        outbox.pending(10).await.unwrap().len(),
        1,
        "the report behind it still waits to go"
    );
    // Signed for laoshan: a configuration now naming shinan does not resend it.
    let shinan = Signer {
        unit: "shinan",
        ..signer(&key)
    };
    assert_eq!(outbox.retry_dead(shinan).await.unwrap(), (0, vec![1]));
    assert_eq!(outbox.retry_dead(signer(&key)).await.unwrap(), (1, vec![]));
    assert_eq!(
        outbox
            .pending(10)
            .await
            .unwrap()
            .iter()
            .map(|p| p.seq)
            .collect::<Vec<_>>(),
        [1, 2]
    );
    outbox
        .dead_letter(2, "REASON_UNKNOWN_UNIT", "x", &[])
        .await
        .unwrap();
    assert_eq!(outbox.discard_dead().await.unwrap(), 1);
    assert!(outbox.dead_letters().await.unwrap().is_empty());
    assert!(outbox.refusals().await.unwrap().is_empty());
}

#[tokio::test]
async fn the_reports_signed_for_another_identity_are_found_across_pages() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate();
    let outbox = open_synced(&config(dir.path(), 1 << 30, WhenFull::Refuse)).await;
    // One report per month: more than a page of them, and one signed for another unit last.
    let months = IDENTITY_PAGE as i32 + 1;
    let items: Vec<Item> = (0..months)
        .map(|m| value(&format!("{}-{:02}", 2018 + m / 12, m % 12 + 1), 1.0))
        .collect();
    let built = outbox.enqueue(signer(&key), &items, false).await.unwrap();
    assert_eq!(built.reports.len(), months as usize);
    let shinan = Signer {
        unit: "shinan",
        ..signer(&key)
    };
    outbox
        .enqueue(shinan, &[value("2099-01", 2.0)], false)
        .await
        .unwrap();
    let all: Vec<i64> = outbox
        .pending(usize::MAX >> 1)
        .await
        .unwrap()
        .iter()
        .map(|p| p.seq)
        .collect();
    assert_eq!(all.len(), months as usize + 1);
    assert_eq!(
        outbox.signed_for_others(signer(&key), &[]).await.unwrap(),
        [*all.last().unwrap()]
    );
    assert_eq!(
        outbox.signed_for_others(shinan, &[]).await.unwrap(),
        all[..months as usize]
    );
}

#[tokio::test]
async fn rebuild_re_signs_the_same_items_under_a_new_seq_and_identity() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate();
    let outbox = open_synced_with(
        &config(dir.path(), 1 << 20, WhenFull::Refuse),
        Arc::new(duban_host::clock::ManualClock::new(1)),
    )
    .await;
    outbox
        .enqueue(signer(&key), &[value("2018Q1", 7.0)], false)
        .await
        .unwrap();
    let shinan = Signer {
        unit: "shinan",
        ..signer(&key)
    };
    assert_eq!(outbox.signed_for_others(shinan, &[]).await.unwrap(), [1]);
    assert_eq!(outbox.rebuild(1, shinan).await.unwrap(), Some(2));
    assert!(
        outbox
            .signed_for_others(shinan, &[])
            .await
            .unwrap()
            .is_empty()
    );
    let pending = outbox.pending(10).await.unwrap();
    let report = envelope::verify(&pending[0].envelope, key.public_key()).unwrap();
    assert_eq!(
        (
            pending.len(),
            report.seq,
            report.unit_id.as_str(),
            report.revision,
            report.issued_at_ms
        ),
        (1, 2, "shinan", 1, 1),
        "a new seq and revision, the same issue time"
    );
    assert_eq!(report.values[0].value, 7.0);
    assert_eq!(outbox.rebuild(1, shinan).await.unwrap(), None);
}

#[tokio::test]
async fn a_corrupt_outbox_is_moved_aside_and_its_counters_and_reports_carried_over() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate();
    let config = config(dir.path(), 1 << 20, WhenFull::Refuse);
    let outbox = open_synced(&config).await;
    outbox
        .apply_centre_state(99, &[], signer(&key))
        .await
        .unwrap();
    outbox
        .enqueue(
            signer(&key),
            &[value("2018Q1", 1.0), value("2018Q2", 2.0)],
            false,
        )
        .await
        .unwrap();
    outbox
        .ack(&[Ack {
            seq: 100,
            refused: vec![],
        }])
        .await
        .unwrap();
    let waiting = outbox.pending(10).await.unwrap();
    outbox.close().await;
    // Damage that keeps the data readable: a table the agent needs is gone.
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}", config.path.display()))
        .await
        .unwrap();
    sqlx::query("DROP TABLE refusals")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();

    let (outbox, opened) = Outbox::open(&config, clock()).await.unwrap();
    let moved = opened.moved_to.expect("moved aside");
    assert!(moved.exists(), "the old file is kept");
    assert_eq!(
        opened.salvaged,
        Some(Salvaged {
            next_seq: Some(102),
            reports: 1,
            dead_letters: 0,
            revisions: 2,
        })
    );
    assert!(outbox.is_synced().await.unwrap());
    let carried = outbox.pending(10).await.unwrap();
    assert_eq!(carried.len(), 1);
    assert_eq!(carried[0].envelope, waiting[0].envelope, "byte for byte");
    let next = outbox
        .enqueue(signer(&key), &[value("2018Q1", 3.0)], false)
        .await
        .unwrap();
    assert_eq!(next.reports, [(102, "2018Q1".to_owned())]);
    let revision = decoded(&outbox.pending(10).await.unwrap()[1]).revision;
    assert_eq!(revision, 1, "the period's revision continues too");

    // Garbage that cannot be read at all: a fresh outbox that is not synced.
    outbox.close().await;
    std::fs::write(
        &config.path,
        "this is not a database at all, not even close. ".repeat(100),
    )
    .unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", config.path.display()));
    }
    let (outbox, opened) = Outbox::open(&config, clock()).await.unwrap();
    assert_eq!(opened.salvaged.unwrap().next_seq, None);
    assert!(!outbox.is_synced().await.unwrap());
}

/// Acknowledgements of `reports`, every item accepted.
fn accepted(reports: &[Pending]) -> Vec<Ack> {
    reports
        .iter()
        .map(|p| Ack {
            seq: p.seq,
            refused: vec![],
        })
        .collect()
}

/// The waiting reports and bytes the statistics give, against the outbox counted afresh.
async fn totals_agree(outbox: &Outbox) -> (i64, i64) {
    let stats = outbox.stats().await.unwrap();
    let counted: (i64, i64) =
        sqlx::query_as("SELECT count(*), COALESCE(SUM(bytes), 0) FROM outbox")
            .fetch_one(&outbox.pool)
            .await
            .unwrap();
    assert_eq!((stats.reports, stats.bytes), counted);
    counted
}

#[tokio::test]
async fn the_kept_totals_follow_every_change_to_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate();
    // Too little room for six reports: the newest drop the oldest.
    let config = config(dir.path(), 1500, WhenFull::DropOldest);
    let outbox = open_synced(&config).await;
    assert_eq!(totals_agree(&outbox).await, (0, 0));
    let quarters = ["2018Q1", "2018Q2", "2018Q3", "2018Q4", "2019Q1", "2019Q2"];
    let mut dropped = 0;
    for (n, period) in quarters.iter().enumerate() {
        dropped += outbox
            .enqueue(signer(&key), &[value(period, n as f64)], false)
            .await
            .unwrap()
            .dropped;
        totals_agree(&outbox).await;
    }
    assert!(dropped > 0, "the limit dropped the oldest");
    let waiting = outbox.pending(10).await.unwrap();
    assert!(waiting.len() >= 2);
    outbox
        .dead_letter(waiting[0].seq, "INVALID_ARGUMENT", "refused", &[])
        .await
        .unwrap();
    totals_agree(&outbox).await;
    outbox.ack(&accepted(&waiting[1..])).await.unwrap();
    assert_eq!(totals_agree(&outbox).await, (0, 0));
    let (moved, _) = outbox.retry_dead(signer(&key)).await.unwrap();
    assert_eq!(moved, 1);
    assert_eq!(totals_agree(&outbox).await.0, 1);
    // Kept across reopening, as the file keeps them.
    drop(outbox);
    let (outbox, _) = Outbox::open(&config, clock()).await.unwrap();
    assert_eq!(totals_agree(&outbox).await.0, 1);
}

#[tokio::test]
async fn a_batch_acknowledged_at_once_remembers_the_later_of_two_reports_of_an_item() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate();
    let config = config(dir.path(), 1 << 20, WhenFull::Refuse);
    let outbox = open_synced(&config).await;
    for v in [1.0, 2.0] {
        let built = outbox
            .enqueue(signer(&key), &[value("2018Q1", v)], false)
            .await
            .unwrap();
        assert_eq!(built.reports.len(), 1, "a changed value is a new report");
    }
    let acks = accepted(&outbox.pending(10).await.unwrap());
    assert_eq!(acks.len(), 2);
    outbox.ack(&acks).await.unwrap();
    let latest = outbox
        .enqueue(signer(&key), &[value("2018Q1", 2.0)], false)
        .await
        .unwrap();
    assert_eq!(
        (latest.reports.len(), latest.unchanged),
        (0, 1),
        "the later report's value is the one the centre holds"
    );
    let earlier = outbox
        .enqueue(signer(&key), &[value("2018Q1", 1.0)], false)
        .await
        .unwrap();
    assert_eq!(
        earlier.reports.len(),
        1,
        "going back to the earlier value is a change"
    );
}

/// Collects one value of `pct-applications` for 2018Q1, as a source would.
async fn collect(outbox: &Outbox, key: &SigningKey, v: f64) -> Enqueued {
    outbox
        .enqueue(signer(key), &[value("2018Q1", v)], false)
        .await
        .unwrap()
}

/// The centre accepted report `seq` whole.
async fn acknowledge(outbox: &Outbox, seq: i64) {
    outbox
        .ack(&[Ack {
            seq,
            refused: Vec::new(),
        }])
        .await
        .unwrap();
}

/// Found by the fault harness's clock scenario: a report stuck in the outbox (refused for now)
/// while a later report with newer values for the same items was accepted made every
/// collection build those values again under a new seq, because change detection compared
/// with the stuck report's.
#[tokio::test]
async fn a_stuck_report_does_not_make_later_collections_resend_accepted_values() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate();
    let outbox = open_synced(&config(dir.path(), 1 << 20, WhenFull::Refuse)).await;
    let stuck = collect(&outbox, &key, 1.0).await;
    let newer = collect(&outbox, &key, 2.0).await;
    assert_eq!((stuck.reports[0].0, newer.reports[0].0), (1, 2));
    acknowledge(&outbox, 2).await;
    let again = collect(&outbox, &key, 2.0).await;
    assert_eq!(
        (again.reports.len(), again.unchanged),
        (0, 1),
        "the accepted newer value is unchanged, whatever waits behind"
    );
    // The stuck report goes through at last: the newer value stays the one remembered.
    acknowledge(&outbox, 1).await;
    let later = collect(&outbox, &key, 2.0).await;
    assert_eq!((later.reports.len(), later.unchanged), (0, 1));
    // A value changed while a report waits is still built, once.
    let changed = collect(&outbox, &key, 3.0).await;
    assert_eq!(changed.reports.len(), 1);
    let same = collect(&outbox, &key, 3.0).await;
    assert_eq!(same.reports.len(), 0);
}

/// Found by the same scenario: reports signed while the clock was an hour ahead waited in the
/// outbox until that hour came, though the clock had been put right. Signed again, issued now.
#[tokio::test]
async fn a_report_signed_while_the_clock_was_ahead_is_issued_again_now() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate();
    let clock = Arc::new(duban_host::clock::ManualClock::new(
        1_796_083_200_000 + 3_600_000,
    ));
    let outbox = open_synced_with(
        &config(dir.path(), 1 << 20, WhenFull::Refuse),
        clock.clone(),
    )
    .await;
    collect(&outbox, &key, 1.0).await;
    let revision = decoded(&outbox.pending(10).await.unwrap()[0]).revision;
    // A later report for the period is accepted meanwhile.
    collect(&outbox, &key, 2.0).await;
    acknowledge(&outbox, 2).await;
    clock.set_ms(1_796_083_200_000);
    let new_seq = outbox.restamp(1, signer(&key)).await.unwrap().unwrap();
    let pending = outbox.pending(10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].seq, new_seq);
    assert!(new_seq > 1);
    let report = decoded(&pending[0]);
    assert_eq!(report.issued_at_ms, 1_796_083_200_000);
    assert_eq!(report.values[0].value, 1.0);
    assert_eq!(
        report.revision, revision,
        "the same report issued again, not a correction: the later one stays current"
    );
    // Neither the re-signed report nor its acknowledgement makes the accepted value look
    // changed.
    let again = collect(&outbox, &key, 2.0).await;
    assert_eq!(again.reports.len(), 0);
    acknowledge(&outbox, new_seq).await;
    let after = collect(&outbox, &key, 2.0).await;
    assert_eq!(after.reports.len(), 0);
}

/// Found by the fault harness's sigterm scenario: the daemon starting while `outbox stats`
/// ran, on a new outbox, each took the other's half-made file for a corrupt one and moved it
/// aside (or failed). Opening is now one at a time (`<path>.lock`).
#[tokio::test]
async fn two_opening_a_new_outbox_at_once_neither_moves_it_aside() {
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 1 << 20, WhenFull::Refuse);
        let (a, b) = tokio::join!(
            Outbox::open(&config, clock()),
            Outbox::open(&config, clock())
        );
        let ((_, a), (_, b)) = (a.unwrap(), b.unwrap());
        assert_eq!(
            (a, b),
            (Opened::default(), Opened::default()),
            "round {round}"
        );
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("corrupt"))
            .collect();
        assert!(aside.is_empty(), "round {round}: {aside:?}");
    }
}

/// Found by the fault harness's agent-disk-full scenario: a COMMIT that failed on a full disk
/// ended the transaction inside SQLite while sqlx still counted it open, and the connection
/// went back to the pool that way. Every later write on it was refused ("attempted to call
/// begin_with at non-zero transaction depth"): the agent never collected or delivered again
/// after space returned. Here a raw `COMMIT` inside the transaction leaves the connection in
/// the same state that the full disk did.
#[tokio::test]
async fn after_a_commit_failed_on_a_full_disk_the_outbox_writes_again() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate();
    let outbox = open_synced(&config(dir.path(), 1 << 20, WhenFull::Refuse)).await;
    let mut tx = outbox.pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query("COMMIT").execute(&mut *tx).await.unwrap();
    assert!(
        tx.commit().await.is_err(),
        "sqlx counted the ended transaction open"
    );
    for round in 0..10 {
        let written = outbox
            .enqueue(signer(&key), &[value("2018Q1", f64::from(round))], false)
            .await;
        assert!(written.is_ok(), "round {round}: {written:?}");
    }
}

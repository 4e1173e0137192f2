//! Revoking a signing key reaches every replica: two aggregators on one PostgreSQL database,
//! the key revoked through one store, and each replica refusing the key by itself within its
//! registry's reload interval.

mod support;

use std::time::{Duration, Instant};

use duban_aggregator::keys::RELOAD_INTERVAL;
use duban_aggregator::store::{Actor, AdminAction, Store};
use duban_proto::pb;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_by_two_replicas_sharing_postgres() {
    let Some(base) = postgres_url("revocation across two replicas") else {
        return;
    };
    let schema = PgSchema::create(&base).await;
    let replica = || {
        TestServer::start(Options {
            database_url: Some(schema.url.clone()),
            ..Default::default()
        })
    };
    let (a, b) = (replica().await, replica().await);
    let mut seq = 0;
    let mut submit = async |server: &TestServer| {
        seq += 1;
        let mut client = server.client().await;
        client
            .submit(sign(
                &laoshan_key(),
                report(
                    "laoshan",
                    seq,
                    "2018Q1",
                    &[("pct-applications", seq as f64)],
                ),
            ))
            .await
            .unwrap()
            .into_inner()
    };
    for server in [&a, &b] {
        assert_eq!(submit(server).await.outcome(), pb::Outcome::Accepted);
    }

    // `keys revoke`, as the command does it: through one replica's database, with its record.
    let action = AdminAction {
        at_ms: NOW_MS - 1000,
        actor: Actor {
            os_user: "test".into(),
            host: "localhost".into(),
        },
        action: "keys.revoke".into(),
        subject: laoshan_key().key_id().to_string(),
        unit_id: "laoshan".into(),
        detail: String::new(),
    };
    a.store
        .revoke_key_recorded(laoshan_key().key_id(), NOW_MS - 1000, &action)
        .await
        .unwrap();
    let revoked = Instant::now();
    let mut delays = Vec::new();
    for (name, server) in [("a", &a), ("b", &b)] {
        loop {
            let result = submit(server).await;
            if result.reason() == pb::ReasonCode::ReasonKeyRevoked {
                assert_eq!(result.outcome(), pb::Outcome::Rejected);
                delays.push((name, revoked.elapsed()));
                break;
            }
            assert_eq!(
                result.outcome(),
                pb::Outcome::Accepted,
                "{}",
                result.message
            );
            // A guard against hanging, far above the interval: how soon is printed, not judged.
            assert!(
                revoked.elapsed() < Duration::from_secs(60),
                "replica {name} still accepts the key a minute after it was revoked (reload interval {RELOAD_INTERVAL:?})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!(
        "revocation refused by each replica after: {delays:?} (reload interval {RELOAD_INTERVAL:?})"
    );
    a.stop().await;
    b.stop().await;
}

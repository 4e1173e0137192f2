//! The per-unit rate limit against a real server: one unit flooding is answered
//! RESOURCE_EXHAUSTED with a retry delay and counted, while another unit sending at its usual
//! pace is never turned away. Its latency with and without the flood is printed (p50, p99 and
//! their ratio), not asserted: timing belongs to measurement, not to pass/fail.

mod support;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use duban_aggregator::grpc::limit::RateLimit;
use duban_aggregator::serve::Security;
use duban_proto::pb;
use support::*;

/// `calls` unary submits from shibei, one after another: each call's latency.
async fn victim_latencies(server: &TestServer, first_seq: u64, calls: u64) -> Vec<Duration> {
    let mut client = server.client().await;
    let mut latencies = Vec::new();
    for seq in first_seq..first_seq + calls {
        let signed = sign(
            &shibei_key(),
            report("shibei", seq, "2018Q1", &[("pct-applications", seq as f64)]),
        );
        let started = Instant::now();
        let answer = client.submit(signed).await;
        latencies.push(started.elapsed());
        let answer = answer.unwrap_or_else(|status| {
            panic!("shibei, sending at its usual pace, was turned away: {status:?}")
        });
        assert_eq!(answer.get_ref().outcome(), pb::Outcome::Accepted);
        // Its usual pace: a report every 5 ms at most.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    latencies
}

fn percentile(latencies: &[Duration], p: f64) -> Duration {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unit_flooding_is_limited_and_another_is_not() {
    let server = TestServer::start(Options {
        security: Some(Security {
            rate_limit: Some(RateLimit {
                per_second: NonZeroU32::new(200).unwrap(),
                burst: NonZeroU32::new(1000).unwrap(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    let unloaded = victim_latencies(&server, 1, 200).await;

    // laoshan floods: four callers, batches of 100 as fast as the answers come, ignoring the
    // retry delay. The batches are signed beforehand (and sent again when all have been sent),
    // so that the test's own signing does not take the cores from the server.
    let stop = Arc::new(AtomicBool::new(false));
    let (exhausted, accepted) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut flooders = Vec::new();
    let flood_began = Instant::now();
    for caller in 0..4u64 {
        let batches: Vec<Vec<pb::SignedReport>> = (0..20u64)
            .map(|batch| {
                (0..100u64)
                    .map(|n| {
                        let seq = caller * 1_000_000 + batch * 100 + n + 1;
                        sign(
                            &laoshan_key(),
                            report("laoshan", seq, "2018Q1", &[("pct-applications", 1.0)]),
                        )
                    })
                    .collect()
            })
            .collect();
        let mut client = server.client().await;
        let (stop, exhausted, accepted) = (stop.clone(), exhausted.clone(), accepted.clone());
        flooders.push(tokio::spawn(async move {
            let mut pushbacks = Vec::new();
            for reports in batches.iter().cycle() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let reports = reports.clone();
                match client
                    .submit_batch(pb::SubmitBatchRequest { reports })
                    .await
                {
                    Ok(_) => {
                        accepted.fetch_add(100, Ordering::SeqCst);
                    }
                    Err(status) => {
                        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                        let pushback: u64 = status
                            .metadata()
                            .get("grpc-retry-pushback-ms")
                            .expect("a retry delay")
                            .to_str()
                            .unwrap()
                            .parse()
                            .unwrap();
                        pushbacks.push(pushback);
                        exhausted.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            pushbacks
        }));
    }
    // The flood is on once laoshan has been turned away.
    let deadline = Instant::now() + Duration::from_secs(30);
    while exhausted.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "laoshan was never limited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let loaded = victim_latencies(&server, 1000, 200).await;
    stop.store(true, Ordering::SeqCst);
    let mut pushbacks = Vec::new();
    for flooder in flooders {
        pushbacks.extend(flooder.await.unwrap());
    }
    assert!(
        pushbacks.iter().all(|ms| (1..=60_000).contains(ms)),
        "{pushbacks:?}"
    );

    let limited = server
        .metric("duban_rate_limited_total{unit=\"laoshan\"}")
        .await;
    assert_eq!(limited, exhausted.load(Ordering::SeqCst) as f64);
    assert_eq!(
        server
            .try_metric("duban_rate_limited_total{unit=\"shibei\"}")
            .await
            .unwrap_or(0.0),
        0.0,
        "shibei was never limited"
    );
    // What laoshan got through is what its bucket allows: the burst, then the rate over the
    // flood's length (plus a second for the calls in flight when it stopped).
    let through = accepted.load(Ordering::SeqCst) as f64;
    let allowed = 1000.0 + 200.0 * (flood_began.elapsed().as_secs_f64() + 1.0);
    assert!(
        through <= allowed,
        "laoshan got {through} reports through, more than {allowed}"
    );

    let (p50_before, p99_before) = (percentile(&unloaded, 0.5), percentile(&unloaded, 0.99));
    let (p50_during, p99_during) = (percentile(&loaded, 0.5), percentile(&loaded, 0.99));
    println!(
        "shibei unary Submit latency: alone p50 {p50_before:?} p99 {p99_before:?}; \
         while laoshan floods (rejected {} times, {through} reports through) p50 {p50_during:?} \
         p99 {p99_during:?}; p99 ratio {:.2}",
        exhausted.load(Ordering::SeqCst),
        p99_during.as_secs_f64() / p99_before.as_secs_f64()
    );
    server.stop().await;
}

//! The per-unit rate limit: a token bucket per unit (GCRA, by `governor`), charged one token
//! per report (one per Hello, statement or alert query), so that one unit sending as fast as it
//! can cannot use up the capacity every other unit shares. A call over the limit is answered
//! `RESOURCE_EXHAUSTED` with `grpc-retry-pushback-ms` (when its tokens will be there) and
//! counted in `duban_rate_limited_total{unit}`. Buckets are per replica: with N replicas behind a
//! balancer, a unit may send up to N times the rate.

use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tonic::Status;

use crate::metrics::Metrics;

/// A unit's rate: reports per second, and how many may come at once after a quiet spell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

impl Default for RateLimit {
    /// 1,000 reports a second per unit, bursts of 20,000: far above what a unit's sources
    /// produce, so that only a runaway or hostile sender meets it.
    fn default() -> Self {
        RateLimit {
            per_second: NonZeroU32::new(1000).expect("non-zero"),
            burst: NonZeroU32::new(20_000).expect("non-zero"),
        }
    }
}

pub struct UnitLimiter {
    limiter: DefaultKeyedRateLimiter<String>,
    limit: RateLimit,
    metrics: Metrics,
}

impl std::fmt::Debug for UnitLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UnitLimiter({:?})", self.limit)
    }
}

impl UnitLimiter {
    pub fn new(limit: RateLimit, metrics: Metrics) -> Self {
        let quota = Quota::per_second(limit.per_second).allow_burst(limit.burst);
        UnitLimiter {
            limiter: RateLimiter::keyed(quota),
            limit,
            metrics,
        }
    }

    /// Takes `cost` tokens from `unit`'s bucket, or says when to come back.
    pub fn check(&self, unit: &str, cost: usize) -> Result<(), Status> {
        let cost =
            NonZeroU32::new(u32::try_from(cost.max(1)).unwrap_or(u32::MAX)).expect("at least 1");
        match self.limiter.check_key_n(&unit.to_owned(), cost) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                use governor::clock::Clock;
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                self.metrics.rate_limited.with_label_values(&[unit]).inc();
                let mut status = Status::resource_exhausted(format!(
                    "unit {unit} is over its rate limit of {} reports/s (bursts of {}); retry after the pushback delay",
                    self.limit.per_second, self.limit.burst
                ));
                let ms = wait.as_millis().clamp(1, 60_000);
                status.metadata_mut().insert(
                    "grpc-retry-pushback-ms",
                    ms.to_string().parse().expect("ascii"),
                );
                Err(status)
            }
            Err(_) => Err(Status::invalid_argument(format!(
                "a call of {cost} reports exceeds the per-unit burst of {}: send smaller batches",
                self.limit.burst
            ))),
        }
    }

    /// Drops the buckets of units that are back to full (memory stays bounded by the units
    /// sending now).
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: u32, burst: u32) -> UnitLimiter {
        UnitLimiter::new(
            RateLimit {
                per_second: NonZeroU32::new(per_second).unwrap(),
                burst: NonZeroU32::new(burst).unwrap(),
            },
            Metrics::new("sqlite"),
        )
    }

    #[test]
    fn each_unit_has_its_own_bucket() {
        let limits = limiter(1, 10);
        limits.check("laoshan", 10).unwrap();
        let status = limits.check("laoshan", 1).unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        let pushback: u64 = status
            .metadata()
            .get("grpc-retry-pushback-ms")
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=1000).contains(&pushback), "{pushback}");
        limits
            .check("shibei", 10)
            .expect("another unit is not slowed");
        assert_eq!(
            limits
                .metrics
                .rate_limited
                .with_label_values(&["laoshan"])
                .get(),
            1
        );
        assert_eq!(
            limits
                .metrics
                .rate_limited
                .with_label_values(&["shibei"])
                .get(),
            0
        );
        let status = limits.check("jimo", 11).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
}

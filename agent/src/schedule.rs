//! When each source runs: every N (with a fixed random phase) or on a cron expression, plus a
//! random splay, so that a thousand agents configured alike do not fire in the same second.

use std::str::FromStr;
use std::time::Duration;

use croner::Cron;
use rand::Rng;

/// When a source runs, as configured (`every` or `cron`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    Every(Duration),
    /// A cron expression, checked by [`parse_cron`] when the configuration is read.
    Cron(String),
}

pub fn parse_cron(expression: &str) -> Result<Cron, String> {
    Cron::from_str(expression).map_err(|e| format!("expected a cron expression such as \"0 2 * * *\" (minute hour day month weekday), got {expression:?}: {e}"))
}

/// The firing times of one source.
#[derive(Debug)]
pub struct Timer {
    schedule: Schedule,
    cron: Option<Cron>,
    splay: Duration,
    /// For `Every`: the next firing, in ms since the epoch.
    next_every_ms: Option<i64>,
}

fn random_below(limit: Duration) -> Duration {
    if limit.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_millis(rand::thread_rng().gen_range(0..limit.as_millis().max(1) as u64))
}

impl Timer {
    pub fn new(schedule: &Schedule, splay: Duration) -> Self {
        let cron = match schedule {
            Schedule::Cron(expression) => {
                Some(parse_cron(expression).expect("validated in config"))
            }
            Schedule::Every(_) => None,
        };
        Timer {
            schedule: schedule.clone(),
            cron,
            splay,
            next_every_ms: None,
        }
    }

    /// The next firing strictly after `now_ms`.
    pub fn next_after(&mut self, now_ms: i64) -> i64 {
        match &self.schedule {
            Schedule::Every(every) => {
                let every_ms = every.as_millis() as i64;
                let next = match self.next_every_ms {
                    // The first run comes after a random part of the splay: agents spread out.
                    None => now_ms + random_below(self.splay.min(*every)).as_millis() as i64,
                    Some(previous) => {
                        let mut next = previous + every_ms;
                        while next <= now_ms {
                            next += every_ms;
                        }
                        next
                    }
                };
                self.next_every_ms = Some(next);
                next
            }
            Schedule::Cron(_) => {
                let cron = self.cron.as_ref().expect("parsed");
                let now = jiff::Timestamp::from_millisecond(now_ms)
                    .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
                    .to_zoned(jiff::tz::TimeZone::system());
                let next = cron
                    .find_next_occurrence(&now, false)
                    .map(|z| z.timestamp().as_millisecond())
                    .unwrap_or(now_ms + 86_400_000);
                next + random_below(self.splay).as_millis() as i64
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_keeps_its_phase_and_spreads_the_first_run() {
        let mut timer = Timer::new(
            &Schedule::Every(Duration::from_secs(60)),
            Duration::from_secs(10),
        );
        let first = timer.next_after(1_000_000);
        assert!((1_000_000..1_010_000).contains(&first), "{first}");
        assert_eq!(timer.next_after(first), first + 60_000);
        // A late tick skips missed slots instead of bursting.
        assert_eq!(timer.next_after(first + 200_000), first + 240_000);
    }

    #[test]
    fn cron_fires_at_the_next_match_plus_splay() {
        let mut timer = Timer::new(
            &Schedule::Cron("*/5 * * * *".into()),
            Duration::from_secs(30),
        );
        let now = 1_700_000_000_000; // 2023-11-14T22:13:20Z
        let next = timer.next_after(now);
        let base = 1_700_000_100_000; // 22:15:00Z
        assert!((base..base + 30_000).contains(&next), "{next}");
        assert!(parse_cron("every tuesday").is_err());
    }
}

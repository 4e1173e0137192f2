//! Civil dates of the plan's time zone as instants.

use jiff::civil::Date;
use jiff::tz::TimeZone;

/// Milliseconds since the epoch of midnight starting `date` in `tz`.
pub fn start_of_day_ms(date: Date, tz: &TimeZone) -> i64 {
    date.to_zoned(tz.clone())
        .map(|z| z.timestamp().as_millisecond())
        .unwrap_or(i64::MAX)
}

/// The first instant after `date` ends in `tz` (midnight of the next day).
pub fn end_of_day_ms(date: Date, tz: &TimeZone) -> i64 {
    match date.tomorrow() {
        Ok(next) => start_of_day_ms(next, tz),
        Err(_) => i64::MAX,
    }
}

/// The civil date of an instant in `tz`.
pub fn date_of_ms(ms: i64, tz: &TimeZone) -> Date {
    jiff::Timestamp::from_millisecond(ms)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_zoned(tz.clone())
        .date()
}

pub const DAY_MS: i64 = 86_400_000;

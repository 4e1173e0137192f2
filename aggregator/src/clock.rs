//! The time source, shared with the agent (see [`duban_host::clock`]), and the one way times
//! are read from the command line, configuration files and query strings.

pub use duban_host::clock::{Clock, ManualClock, SystemClock};

/// Parses `2026-01-01T08:00:00Z` (RFC 3339) or `2026-01-01` (midnight UTC) into Unix ms.
pub fn parse_time_ms(text: &str) -> Result<i64, String> {
    if let Ok(ts) = text.parse::<jiff::Timestamp>() {
        return Ok(ts.as_millisecond());
    }
    if let Ok(date) = text.parse::<jiff::civil::Date>()
        && let Ok(zoned) = date.to_zoned(jiff::tz::TimeZone::UTC)
    {
        return Ok(zoned.timestamp().as_millisecond());
    }
    Err(format!(
        "{text:?} is not a time: expected RFC 3339 like 2026-01-01T08:00:00Z, or a date like 2026-01-01 (midnight UTC)"
    ))
}

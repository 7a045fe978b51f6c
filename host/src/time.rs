//! Time as the host hands it to the guest: nanoseconds since the Unix epoch, UTC.
//! The guest reads no clock; the host reads the wall clock (or an event's `at`).

use chrono::{DateTime, SecondsFormat, Utc};

/// Now, from the wall clock.
pub fn now() -> i64 {
    // Inside i64 nanoseconds until 2262; a clock past that is a broken clock.
    Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

/// `at` without its fraction of a second: a default anchor reads as
/// `2026-11-01T09:00:00Z`, not with nanoseconds nobody chose.
pub fn whole_second(at: i64) -> i64 {
    at - at.rem_euclid(1_000_000_000)
}

/// An RFC 3339 timestamp, any offset, as nanoseconds since the epoch in UTC.
pub fn parse_instant(text: &str) -> Result<i64, String> {
    let at = DateTime::parse_from_rfc3339(text).map_err(|_| {
        format!("expected an RFC 3339 timestamp such as 2025-01-31T09:00:00Z, found {text:?}")
    })?;
    at.timestamp_nanos_opt().ok_or_else(|| {
        format!("{text:?} is outside 1677-09-21 to 2262-04-11, the range creditgate counts in")
    })
}

/// An instant as RFC 3339 in UTC (`Z`), with fractional seconds only when present.
pub fn format_instant(nanos: i64) -> String {
    DateTime::from_timestamp_nanos(nanos).to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

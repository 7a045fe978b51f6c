//! Billing cycles: when email credits restart.
//!
//! Cycle `n` starts at the anchor plus `n` calendar months, on the anchor's day of
//! month clamped to the length of that month (Jan 31 → Feb 28 or 29 → Mar 31 →
//! Apr 30), at the anchor's time of day, in UTC. Each start is computed from the
//! anchor itself, never from the previous start, so a short month does not drag
//! later cycles earlier. Instants before the anchor belong to cycle 0.

use chrono::{DateTime, Datelike, Months, NaiveDateTime};

use crate::bindings::Instant;

/// One billing cycle of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cycle {
    /// Whole months since the anchor.
    pub index: u32,
    /// Nanoseconds since the Unix epoch.
    pub start: Instant,
    /// The next cycle's start, exclusive end of this one.
    pub end: Instant,
}

/// The cycle an instant falls in lies where an [`Instant`] cannot count (after
/// 2262-04-11, the end of nanoseconds in an i64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfRange;

/// The billing cycle of an account anchored at `anchor` that contains `now`.
pub fn cycle_at(anchor: Instant, now: Instant) -> Result<Cycle, OutOfRange> {
    let anchor_at = DateTime::from_timestamp_nanos(anchor).naive_utc();
    let now_at = DateTime::from_timestamp_nanos(now).naive_utc();
    let months = |at: NaiveDateTime| i64::from(at.year()) * 12 + i64::from(at.month0());
    // The month difference is right or one too many (when `now` is earlier in its
    // month than the anchor's day and time).
    let mut index =
        u32::try_from((months(now_at) - months(anchor_at)).max(0)).map_err(|_| OutOfRange)?;
    let mut start = start_of(anchor_at, index)?;
    if start > now && index > 0 {
        index -= 1;
        start = start_of(anchor_at, index)?;
    }
    let end = start_of(anchor_at, index.checked_add(1).ok_or(OutOfRange)?)?;
    Ok(Cycle { index, start, end })
}

/// `at` in RFC 3339, UTC, to the second (as the host prints instants), for messages.
pub fn format(at: Instant) -> String {
    DateTime::from_timestamp_nanos(at).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Cycle number `index` of an account anchored at `anchor`.
pub fn cycle_number(anchor: Instant, index: u32) -> Result<Cycle, OutOfRange> {
    let anchor_at = DateTime::from_timestamp_nanos(anchor).naive_utc();
    Ok(Cycle {
        index,
        start: start_of(anchor_at, index)?,
        end: start_of(anchor_at, index.checked_add(1).ok_or(OutOfRange)?)?,
    })
}

fn start_of(anchor: NaiveDateTime, index: u32) -> Result<Instant, OutOfRange> {
    anchor
        .checked_add_months(Months::new(index))
        .and_then(|at| at.and_utc().timestamp_nanos_opt())
        .ok_or(OutOfRange)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> Instant {
        DateTime::parse_from_rfc3339(rfc3339)
            .ok()
            .and_then(|t| t.timestamp_nanos_opt())
            .unwrap_or_else(|| panic!("bad test instant {rfc3339}"))
    }

    fn show(t: Instant) -> String {
        DateTime::from_timestamp_nanos(t).to_rfc3339()
    }

    #[test]
    fn month_end_anchor_clamps_each_month_independently() {
        let anchor = at("2024-01-31T09:30:00Z");
        let starts: Vec<String> = (0..5)
            .map(|n| show(start_of(DateTime::from_timestamp_nanos(anchor).naive_utc(), n).unwrap()))
            .collect();
        assert_eq!(
            starts,
            [
                "2024-01-31T09:30:00+00:00",
                "2024-02-29T09:30:00+00:00",
                "2024-03-31T09:30:00+00:00",
                "2024-04-30T09:30:00+00:00",
                "2024-05-31T09:30:00+00:00",
            ]
        );
    }

    #[test]
    fn boundaries_are_exact_to_the_nanosecond() {
        let anchor = at("2025-01-15T12:00:00Z");
        let c = cycle_at(anchor, at("2025-02-15T11:59:59.999999999Z")).unwrap();
        assert_eq!(
            (c.index, show(c.end)),
            (0, "2025-02-15T12:00:00+00:00".into())
        );
        let c = cycle_at(anchor, at("2025-02-15T12:00:00Z")).unwrap();
        assert_eq!(
            (c.index, show(c.start), show(c.end)),
            (
                1,
                "2025-02-15T12:00:00+00:00".into(),
                "2025-03-15T12:00:00+00:00".into()
            )
        );
    }

    #[test]
    fn offsets_are_compared_in_utc() {
        let anchor = at("2025-01-31T23:30:00-05:00"); // Feb 1, 04:30 UTC
        let c = cycle_at(anchor, at("2025-03-01T04:29:59Z")).unwrap();
        assert_eq!(
            (c.index, show(c.end)),
            (0, "2025-03-01T04:30:00+00:00".into())
        );
    }

    #[test]
    fn before_the_anchor_is_cycle_zero() {
        let anchor = at("2025-06-10T00:00:00Z");
        let c = cycle_at(anchor, at("2025-01-01T00:00:00Z")).unwrap();
        assert_eq!((c.index, c.start), (0, anchor));
    }

    #[test]
    fn years_later() {
        let anchor = at("2024-02-29T00:00:00Z");
        let c = cycle_at(anchor, at("2027-02-28T00:00:00Z")).unwrap();
        assert_eq!(
            (c.index, show(c.start)),
            (36, "2027-02-28T00:00:00+00:00".into())
        );
    }

    #[test]
    fn end_of_representable_time_is_an_error() {
        let anchor = at("2262-03-20T00:00:00Z");
        assert_eq!(
            cycle_at(anchor, at("2262-04-01T00:00:00Z")),
            Err(OutOfRange)
        );
    }
}

//! When an account's email credits run out at its current pace: a rule, so the
//! component computes it, where it computes usage ([`crate::engine`]).

use crate::bindings::Instant;
use crate::cycle::Cycle;

/// When `used` credits reach `limit` if sending goes on at the cycle's average
/// rate so far, `used / (now - start)`: at `start + ceil(limit * (now - start) /
/// used)`, the first nanosecond at which the pace has used `limit`. Exact integer
/// arithmetic (u128: a cycle is under 2^53 ns and a limit under 2^64, so the
/// product fits). None when nothing was sent, the limit is unlimited, or that
/// instant is at or after the reset: the credits last the cycle.
pub(crate) fn projected_exhaustion(
    used: u64,
    limit: Option<u64>,
    cycle: &Cycle,
    now: Instant,
) -> Option<Instant> {
    let limit = limit?;
    if used == 0 {
        return None;
    }
    let elapsed = u128::try_from(now.checked_sub(cycle.start)?).ok()?;
    let span = u128::from(limit)
        .checked_mul(elapsed)?
        .div_ceil(u128::from(used));
    let at = i128::from(cycle.start).checked_add(i128::try_from(span).ok()?)?;
    (at < i128::from(cycle.end)).then(|| Instant::try_from(at).ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000_000_000;

    fn cycle() -> Cycle {
        Cycle {
            index: 0,
            start: 1_000 * DAY,
            end: 1_030 * DAY,
        }
    }

    fn at(day: i64) -> Instant {
        cycle().start + day * DAY
    }

    /// The projection for `used` of `limit` credits on day `day` of [`cycle`].
    fn on_day(used: u64, limit: Option<u64>, day: i64) -> Option<Instant> {
        projected_exhaustion(used, limit, &cycle(), at(day))
    }

    #[test]
    fn the_pace_so_far_is_projected_to_the_limit() {
        // 100 of 1,000 in 2 days: 1,000 after 20 days, before the reset.
        assert_eq!(on_day(100, Some(1_000), 2), Some(at(20)));
        // Rounded up to the first nanosecond the pace has used the limit:
        // 3 in 1 ns at 3 per ns reaches 10 after 10/3 ns, so at 4 ns.
        let c = cycle();
        assert_eq!(
            projected_exhaustion(3, Some(10), &c, c.start + 1),
            Some(c.start + 4)
        );
    }

    #[test]
    fn nothing_sent_projects_nothing() {
        assert_eq!(on_day(0, Some(1_000), 5), None);
    }

    #[test]
    fn unlimited_credits_never_run_out() {
        assert_eq!(on_day(500, None, 1), None);
    }

    #[test]
    fn a_projection_at_or_after_the_reset_is_none() {
        // 100 of 1,000 in 3 days: 1,000 after 30 days, exactly at the reset.
        assert_eq!(on_day(100, Some(1_000), 3), None);
        // Slower still: after it.
        assert_eq!(on_day(100, Some(1_000), 4), None);
        // A nanosecond before the reset still counts; exactly at it does not.
        let c = cycle();
        assert_eq!(
            projected_exhaustion(1, Some(1), &c, c.end - 1),
            Some(c.end - 1)
        );
        let half = c.start + (c.end - c.start) / 2;
        assert_eq!(projected_exhaustion(1, Some(2), &c, half), None);
    }

    #[test]
    fn at_the_limit_already_it_is_now_and_past_it_earlier() {
        assert_eq!(on_day(1_000, Some(1_000), 7), Some(at(7)));
        // Over the limit (a shadow plan lets sends through): when the pace
        // passed it.
        assert_eq!(on_day(2_000, Some(1_000), 8), Some(at(4)));
        // A limit of 0 with sends: exhausted from the cycle's start.
        assert_eq!(on_day(5, Some(0), 1), Some(at(0)));
        // Sent at the cycle's very start: reached then.
        assert_eq!(on_day(5, Some(10), 0), Some(at(0)));
    }

    #[test]
    fn huge_limits_do_not_overflow() {
        assert_eq!(on_day(1, Some(u64::MAX), 29), None);
        assert_eq!(on_day(u64::MAX, Some(u64::MAX), 29), Some(at(29)));
    }
}

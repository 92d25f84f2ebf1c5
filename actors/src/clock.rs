//! The runtime's clock: one cheap counter read for deadlines and for the
//! wall-clock stamps on envelopes.
//!
//! A same-arbiter request reads the clock three times: its envelope's
//! creation time, the instant its timeout counts from, and the service's
//! expiry check. With std's clocks those are vDSO calls of 30–40 ns each,
//! about a tenth of the whole round trip. This module reads the CPU's
//! time-stamp counter instead (scaled to nanoseconds by [`quanta`], about
//! 10 ns), for both:
//!
//! - [`Instant`] is monotonic and is what every deadline in actorbus is
//!   measured on. Where the CPU has no invariant time-stamp counter, quanta
//!   falls back to the OS's monotonic clock, so it is never worse than std.
//! - [`wall_now`] (behind [`Timestamp::now`]) is wall-clock time in
//!   microseconds, computed from an [`Instant`] and a per-thread anchor: a
//!   reading of the system clock taken at most [`ANCHOR_RENEWAL`] ago. It
//!   follows the system clock, steps and NTP slewing included, within that
//!   window; between renewals it can be off by the two clocks' drift over
//!   100 ms (microseconds at most).
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use actorbus_actors::clock::{now, wall_now};
//! use actorbus_actors::envelope::Timestamp;
//!
//! let start = now();
//! let stamp = wall_now();
//! let system = Timestamp::from(SystemTime::now());
//! assert!(system.as_micros().abs_diff(stamp.as_micros()) < 1_000_000);
//! assert!(start.elapsed() < Duration::from_secs(5));
//! ```

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use crate::envelope::Timestamp;

/// A monotonic instant: see the [module docs](self). Read it with [`now`].
pub use quanta::Instant;

/// The current [`Instant`]. Same clock as `Instant::now()`, without its
/// look-up of a clock mocked on this thread (a thread-local access that
/// cost as much as the counter read).
#[inline]
pub fn now() -> Instant {
    static CLOCK: OnceLock<quanta::Clock> = OnceLock::new();
    CLOCK.get_or_init(quanta::Clock::new).now()
}

/// How old a thread's anchor may get before [`wall_now`] reads the system
/// clock again.
pub const ANCHOR_RENEWAL: Duration = Duration::from_millis(100);

thread_local! {
    /// The instant and the system clock's time (µs since the epoch) read
    /// together, last time this thread renewed them.
    static ANCHOR: Cell<Option<(Instant, u64)>> = const { Cell::new(None) };
}

/// The current wall-clock time: see the [module docs](self).
#[inline]
pub fn wall_now() -> Timestamp {
    wall_at(now())
}

/// The wall-clock time at `now`, an [`Instant`] the caller has just read:
/// for code that needs both clocks at one moment (a request's creation
/// stamp and the instant its timeout counts from) at the cost of one
/// counter read. `now` must be fresh: a stale one would anchor this
/// thread's wall clock that much in the past when it is renewed.
#[inline]
pub fn wall_at(now: Instant) -> Timestamp {
    let anchored = ANCHOR.with(|anchor| match anchor.get() {
        Some((at, micros)) => {
            let since = now.saturating_duration_since(at);
            (since < ANCHOR_RENEWAL).then(|| Timestamp(micros.saturating_add(since.as_micros() as u64)))
        }
        None => None,
    });
    anchored.unwrap_or_else(|| renew(now))
}

#[cold]
fn renew(now: Instant) -> Timestamp {
    let wall = Timestamp::from(SystemTime::now());
    // Anchored at `now`, read just before the system clock: the two
    // readings are tens of nanoseconds apart.
    let _ = ANCHOR.try_with(|anchor| anchor.set(Some((now, wall.as_micros()))));
    wall
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Between the system clock read just before and just after it, with a
    /// millisecond for the drift and the microsecond rounding.
    fn agrees_with_system_clock() {
        let before = Timestamp::from(SystemTime::now()).as_micros();
        let stamp = wall_now().as_micros();
        let after = Timestamp::from(SystemTime::now()).as_micros();
        assert!(before.saturating_sub(1_000) <= stamp && stamp <= after + 1_000, "{before} <= {stamp} <= {after}");
    }

    #[test]
    fn wall_clock_stamps_follow_the_system_clock_across_renewals() {
        let start = now();
        while start.elapsed() < ANCHOR_RENEWAL * 3 {
            agrees_with_system_clock();
            std::thread::sleep(Duration::from_millis(7));
        }
    }

    #[test]
    fn wall_clock_stamps_of_one_thread_move_back_at_most_by_the_drift() {
        let start = now();
        let mut last = wall_now();
        while start.elapsed() < ANCHOR_RENEWAL * 3 {
            let next = wall_now();
            // A renewal may move back by the drift since the last one, which
            // is microseconds, never a millisecond.
            assert!(next.as_micros() + 1_000 >= last.as_micros(), "{next:?} after {last:?}");
            last = next;
        }
    }
}

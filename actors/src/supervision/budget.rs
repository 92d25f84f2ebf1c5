//! Restart intensity and backoff.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// At most `max_restarts` restarts within `within`; one more and the
/// supervisor gives up and escalates. The default is 5 in 5 seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Intensity {
    /// Restarts allowed inside the window.
    pub max_restarts: u32,
    /// The sliding window.
    pub within: Duration,
}

impl Default for Intensity {
    fn default() -> Self {
        Intensity { max_restarts: 5, within: Duration::from_secs(5) }
    }
}

/// Exponential backoff between restarts: the n-th restart inside the intensity
/// window waits `min × 2^(n-1)`, at most `max`. Default 10 ms up to 1 s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first restart in a window.
    pub min: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Backoff {
    /// Restart at once (tests, and services whose restarts are cheap).
    pub const NONE: Backoff = Backoff { min: Duration::ZERO, max: Duration::ZERO };

    /// The delay before the `n`-th restart of a window (`n` from 1).
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { min: Duration::from_millis(10), max: Duration::from_secs(1) }
    }
}

/// Sliding-window restart accounting shared by every supervisor.
#[derive(Debug)]
pub(crate) struct RestartBudget {
    intensity: Intensity,
    backoff: Backoff,
    recent: VecDeque<Instant>,
}

impl RestartBudget {
    pub(crate) fn new(intensity: Intensity, backoff: Backoff) -> Self {
        RestartBudget { intensity, backoff, recent: VecDeque::new() }
    }

    /// Charges one restart at `now`: the delay to wait before it, or `None`
    /// when the intensity is exceeded.
    pub(crate) fn charge(&mut self, now: Instant) -> Option<Duration> {
        while self.recent.front().is_some_and(|t| now.duration_since(*t) >= self.intensity.within) {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.intensity.max_restarts as usize {
            return None;
        }
        self.recent.push_back(now);
        Some(self.backoff.delay(self.recent.len() as u32))
    }

    /// Forgets past restarts (after a parent restarted the whole subtree).
    pub(crate) fn reset(&mut self) {
        self.recent.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff::default();
        assert_eq!(b.delay(1), Duration::from_millis(10));
        assert_eq!(b.delay(2), Duration::from_millis(20));
        assert_eq!(b.delay(4), Duration::from_millis(80));
        assert_eq!(b.delay(60), Duration::from_secs(1));
        assert_eq!(Backoff::NONE.delay(3), Duration::ZERO);
    }

    #[test]
    fn intensity_is_a_sliding_window() {
        let mut budget =
            RestartBudget::new(Intensity { max_restarts: 2, within: Duration::from_secs(5) }, Backoff::NONE);
        let t0 = Instant::now();
        assert!(budget.charge(t0).is_some());
        assert!(budget.charge(t0 + Duration::from_secs(1)).is_some());
        assert!(budget.charge(t0 + Duration::from_secs(2)).is_none(), "third restart within 5 s");
        // The first restart leaves the window at t0 + 5 s.
        assert!(budget.charge(t0 + Duration::from_secs(5)).is_some());
    }
}

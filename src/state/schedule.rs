//! When the apply loop runs next: a small pure type, so its rules have table tests instead of
//! living in the loop's locals. The loop reports what an iteration did and adds the wait it
//! gets back to the clock.

use std::time::Duration;

/// Iterations re-planned without a pause before the loop slows to one per second.
pub const MAX_QUICK_ITERATIONS: u32 = 20;

/// The pause after an iteration that only waited (noops) or after too many quick ones.
const SLOW: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Failed iterations in a row (reported in the status).
    pub failures: u32,
    /// Iterations with steps since the last convergence.
    streak: u32,
    converged: bool,
    /// The re-check interval of a converged device, and the cap of the failure backoff.
    idle: Duration,
}

impl Schedule {
    pub fn new(idle: Duration) -> Schedule {
        Schedule {
            failures: 0,
            streak: 0,
            converged: false,
            idle,
        }
    }

    /// A new target: failures and the streak start again.
    pub fn new_target(&mut self) {
        self.failures = 0;
        self.streak = 0;
    }

    /// Nothing to do. Returns the wait and whether this is news (first convergence since work).
    pub fn converged(&mut self) -> (Duration, bool) {
        let news = !self.converged;
        self.converged = true;
        self.streak = 0;
        self.failures = 0;
        (self.idle, news)
    }

    /// Steps ran. Real progress is re-planned at once (steps are awaited); noops wait for
    /// something outside (a download, a container stopping); a target that keeps producing
    /// steps without converging is slowed down rather than spun on.
    pub fn progressed(&mut self, all_noop: bool) -> Duration {
        self.converged = false;
        self.streak += 1;
        if !all_noop && self.streak <= MAX_QUICK_ITERATIONS {
            Duration::ZERO
        } else {
            SLOW
        }
    }

    /// The iteration failed: `min(2^n × 500 ms, idle)` after the n-th failure in a row.
    pub fn failed(&mut self) -> Duration {
        self.converged = false;
        self.failures = self.failures.saturating_add(1);
        Duration::from_millis(500u64 << self.failures.min(20)).min(self.idle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(900);

    #[test]
    fn progress_is_replanned_at_once_up_to_the_limit_then_once_a_second() {
        let mut s = Schedule::new(IDLE);
        for _ in 0..MAX_QUICK_ITERATIONS {
            assert_eq!(s.progressed(false), Duration::ZERO);
        }
        assert_eq!(s.progressed(false), SLOW);
        // Convergence starts the streak again.
        assert_eq!(s.converged(), (IDLE, true));
        assert_eq!(s.progressed(false), Duration::ZERO);
    }

    #[test]
    fn waiting_iterations_pause_a_second() {
        let mut s = Schedule::new(IDLE);
        assert_eq!(s.progressed(true), SLOW);
    }

    #[test]
    fn failures_back_off_doubling_up_to_the_idle_interval() {
        let mut s = Schedule::new(Duration::from_secs(10));
        let waits: Vec<u64> = (0..6).map(|_| s.failed().as_millis() as u64).collect();
        assert_eq!(waits, [1000, 2000, 4000, 8000, 10_000, 10_000]);
        assert_eq!(s.failures, 6);
        s.new_target();
        assert_eq!(s.failures, 0);
        assert_eq!(s.failed(), Duration::from_secs(1));
    }

    #[test]
    fn convergence_is_news_once() {
        let mut s = Schedule::new(IDLE);
        assert!(s.converged().1);
        assert!(!s.converged().1);
        s.failed();
        assert!(s.converged().1, "after a failure it is news again");
        assert_eq!(s.failures, 0);
        s.progressed(false);
        assert!(s.converged().1);
    }
}

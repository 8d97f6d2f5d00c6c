//! Passive health: failures seen on real traffic eject an upstream for a while.
//!
//! `max_failures` connect errors or failure-coded answers within
//! `failure_window` eject an upstream for `recovery_time`; each further
//! ejection doubles that (with ±10% jitter) up to `max_recovery_time`, and
//! the doubling decays by one step for every `recovery_time` spent
//! un-ejected. The caller enforces `max_ejected_percent` across the set.

use crate::clock;
use crate::config::PassiveSpec;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
pub struct Ejection {
    /// Monotonic ms until which the upstream is ejected; 0 when never ejected.
    until_ms: AtomicU64,
    inner: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    failures: VecDeque<u64>,
    level: u32,
    ejections: u64,
}

/// What recording a failure decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Counted,
    /// The threshold was reached: eject for this long, if the cap allows.
    Eject(Duration),
}

impl Ejection {
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// Milliseconds of ejection left.
    pub fn remaining_ms(&self, now_ms: u64) -> u64 {
        self.until_ms.load(Ordering::Relaxed).saturating_sub(now_ms)
    }

    pub fn ejections(&self) -> u64 {
        self.inner.lock().map_or(0, |w| w.ejections)
    }

    /// Record one failure; returns whether the threshold is reached.
    pub fn record_failure(&self, spec: &PassiveSpec) -> Verdict {
        let now = clock::now_ms();
        if self.is_ejected(now) {
            return Verdict::Counted;
        }
        let Ok(mut w) = self.inner.lock() else {
            return Verdict::Counted;
        };
        let window_ms = spec.failure_window.as_millis() as u64;
        while w
            .failures
            .front()
            .is_some_and(|t| now.saturating_sub(*t) > window_ms)
        {
            w.failures.pop_front();
        }
        w.failures.push_back(now);
        if (w.failures.len() as u32) < spec.max_failures {
            return Verdict::Counted;
        }
        // Decay the backoff for the time spent healthy since the last ejection.
        let last_end = self.until_ms.load(Ordering::Relaxed);
        let recovery_ms = (spec.recovery_time.as_millis() as u64).max(1);
        if last_end > 0 {
            let healthy_steps = now.saturating_sub(last_end) / recovery_ms;
            w.level = w
                .level
                .saturating_sub(healthy_steps.min(u32::MAX as u64) as u32);
        }
        Verdict::Eject(backoff(spec, w.level))
    }

    /// Eject until `now + duration` (the caller checked the cap).
    pub fn eject(&self, duration: Duration) {
        if let Ok(mut w) = self.inner.lock() {
            w.failures.clear();
            w.level = w.level.saturating_add(1).min(32);
            w.ejections += 1;
        }
        self.until_ms.store(
            clock::now_ms() + duration.as_millis() as u64,
            Ordering::Relaxed,
        );
    }
}

/// `recovery_time * 2^level`, ±10% jitter, capped at `max_recovery_time`.
fn backoff(spec: &PassiveSpec, level: u32) -> Duration {
    let base = spec.recovery_time.saturating_mul(1u32 << level.min(20));
    let jitter = 0.9 + fastrand::f64() * 0.2;
    base.mul_f64(jitter).min(spec.max_recovery_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PassiveSpec {
        PassiveSpec {
            max_failures: 3,
            failure_window: Duration::from_secs(10),
            failure_codes: vec![502],
            recovery_time: Duration::from_secs(10),
            max_recovery_time: Duration::from_secs(35),
            max_ejected_percent: 50,
        }
    }

    #[test]
    fn threshold_then_doubling_backoff_with_cap() {
        let e = Ejection::default();
        let s = spec();
        assert_eq!(e.record_failure(&s), Verdict::Counted);
        assert_eq!(e.record_failure(&s), Verdict::Counted);
        let Verdict::Eject(first) = e.record_failure(&s) else {
            panic!("third failure must eject")
        };
        assert!((9_000..=11_000).contains(&first.as_millis()), "{first:?}");
        // Simulate the next round without waiting: the level has risen.
        e.eject(Duration::ZERO);
        for _ in 0..2 {
            e.record_failure(&s);
        }
        let Verdict::Eject(second) = e.record_failure(&s) else {
            panic!("must eject again")
        };
        assert!(
            (18_000..=22_000).contains(&second.as_millis()),
            "{second:?}"
        );
        e.eject(Duration::ZERO);
        e.eject(Duration::ZERO);
        for _ in 0..2 {
            e.record_failure(&s);
        }
        let Verdict::Eject(capped) = e.record_failure(&s) else {
            panic!("must eject")
        };
        assert_eq!(capped, Duration::from_secs(35));
        assert_eq!(e.ejections(), 3);
    }

    #[test]
    fn ejected_upstream_reports_remaining_time() {
        let e = Ejection::default();
        e.eject(Duration::from_secs(5));
        let now = clock::now_ms();
        assert!(e.is_ejected(now));
        assert!(e.remaining_ms(now) > 4_000);
        assert!(!e.is_ejected(now + 6_000));
    }
}

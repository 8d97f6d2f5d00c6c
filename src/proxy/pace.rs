//! How slowly a client may send its request body.
//!
//! Two limits, as nginx and Apache's mod_reqtimeout have them: no gap
//! between two reads longer than `timeouts.client_body` (Pingora's read
//! timeout, set per request), and a minimum average rate: the body may take
//! `timeouts.client_body` plus one second for every `limits.min_body_rate`
//! bytes received. A 1-byte trickle is cut after about a minute; a 5 MiB
//! body at 1 KiB/s would still pass. The check runs as bytes arrive (and,
//! for bodies read early, at the deadline itself), so answers that stream
//! for minutes are never affected.

use std::time::{Duration, Instant};

/// Why a body is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// No byte for `timeouts.client_body`.
    Gap,
    /// Below `limits.min_body_rate`.
    TooSlow,
}

#[derive(Debug, Clone)]
pub struct BodyPace {
    started: Instant,
    received: u64,
    grace: Duration,
    /// Bytes per second; 0: no minimum.
    min_rate: u64,
}

impl BodyPace {
    pub fn new(started: Instant, grace: Duration, min_rate: usize) -> BodyPace {
        BodyPace {
            started,
            received: 0,
            grace,
            min_rate: min_rate as u64,
        }
    }

    /// The time by which the body must have made more progress, if any.
    pub fn deadline(&self) -> Option<Instant> {
        if self.min_rate == 0 {
            return None;
        }
        let earned = Duration::from_secs_f64(self.received as f64 / self.min_rate as f64);
        Some(self.started + self.grace + earned)
    }

    /// Waiting for more bytes since `last_read`: when the body is cut, and
    /// why. A gap of `timeouts.client_body` is a timeout even when the
    /// minimum rate would cut it at the same moment.
    pub fn cut_at(&self, last_read: Instant) -> (Instant, Cut) {
        let gap = last_read + self.grace;
        match self.deadline() {
            Some(slow) if slow < gap => (slow, Cut::TooSlow),
            _ => (gap, Cut::Gap),
        }
    }

    /// Note `n` more bytes at `now`; false once the body is too slow.
    pub fn note(&mut self, n: usize, now: Instant) -> bool {
        self.received += n as u64;
        self.deadline().is_none_or(|d| now <= d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trickle_is_cut_after_the_grace_and_a_steady_body_is_not() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(60);
        let mut trickle = BodyPace::new(t0, grace, 1024);
        let mut cut_at = None;
        for second in (2..600).step_by(2) {
            if !trickle.note(1, t0 + Duration::from_secs(second)) {
                cut_at = Some(second);
                break;
            }
        }
        assert_eq!(
            cut_at,
            Some(62),
            "one byte every 2 s is cut just after the grace"
        );
        let mut steady = BodyPace::new(t0, grace, 1024);
        for second in 1..=3600 {
            assert!(
                steady.note(2048, t0 + Duration::from_secs(second)),
                "{second}"
            );
        }
        let paced = BodyPace::new(t0, grace, 1024);
        assert_eq!(paced.cut_at(t0), (t0 + grace, Cut::Gap));
        let mut fed = BodyPace::new(t0, grace, 1024);
        fed.note(1024 * 30, t0 + Duration::from_secs(1));
        let late = t0 + Duration::from_secs(80);
        assert_eq!(
            fed.cut_at(late),
            (t0 + Duration::from_secs(90), Cut::TooSlow)
        );
        let mut off = BodyPace::new(t0, grace, 0);
        assert!(off.note(1, t0 + Duration::from_secs(100_000)));
        assert_eq!(off.deadline(), None);
    }
}

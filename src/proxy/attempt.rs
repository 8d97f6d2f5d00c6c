//! One attempt at one relay, and the history of a request's attempts:
//! the one place where a relay's bookkeeping for a request is done, for
//! Pingora's path and the held path alike.
//!
//! An [`Attempt`] is an RAII value, like [`crate::drain::InFlight`]: it is
//! made from a route decision ([`Attempt::begin`]) or as the one fresh
//! retry of the same relay ([`Attempt::again`]), holds the relay's
//! in-flight count from then until it drops, and ends in one of its verbs:
//! - [`Attempts::fail`]: the relay failed the request, which leaves it
//!   (passive health, and whether another relay may be tried);
//! - [`Attempts::after_send`]: a connection failed before any answer
//!   ([`super::retry`] decides);
//! - [`Attempts::abandon`]: its answer is left for another relay, the pin
//!   moving with it or not ([`pin_stays`], `failover.move_pin`);
//! - [`Attempt::answered`]: its head came, a failure code or not;
//! - [`Attempt::finish`]: the request ended on it, counted once by
//!   [`Upstream::record_response`].
//!
//! The relay's capacity slot (`max_inflight`, [`crate::capacity`]) is held
//! here too: taken with the attempt ([`super::admission`]), given back by
//! its drop, so that no path can leak it.

use super::retry;
use crate::affinity::store::SessionRecord;
use crate::budgets::RetryBudget;
use crate::capacity::queue::Slot;
use crate::config::MovePin;
use crate::metrics::Metrics;
use crate::outcome::{
    AbandonReason, AffinityOutcome, RelayFailure, RepinReason, StreamOutcome, Usage,
};
use crate::state::State;
use crate::upstream::select::Tried;
use crate::upstream::{Upstream, UpstreamSet};
use pingora_core::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One attempt at one relay; its drop ends the relay's in-flight count.
pub struct Attempt {
    upstream: Arc<Upstream>,
    /// Its place in the generation's list (for [`Tried`]).
    index: usize,
    connect_started: Instant,
    /// The relay's capacity slot, when it is capped; dropped with the attempt.
    _slot: Option<Slot>,
}

impl Attempt {
    /// The attempt a route decision chose: upstream `index` of `set`.
    /// `slot`: its capacity slot, if the relay is capped.
    pub fn begin(set: &UpstreamSet, index: usize, slot: Option<Slot>) -> Option<Attempt> {
        let upstream = set.get(index)?.clone();
        upstream.start_request();
        Some(Attempt {
            upstream,
            index,
            connect_started: Instant::now(),
            _slot: slot,
        })
    }

    /// The one retry of the same relay on a fresh connection, after a
    /// pooled connection failed mid-request (not the relay's fault).
    /// The slot passes from the one to the other.
    pub fn again(mut previous: Attempt) -> Attempt {
        previous.upstream.start_request();
        Attempt {
            upstream: previous.upstream.clone(),
            index: previous.index,
            connect_started: Instant::now(),
            _slot: previous._slot.take(),
        }
    }

    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// A connection to the relay is open (`reused`: from the pool).
    pub fn connected(&self, reused: bool) {
        self.upstream
            .note_connection(reused, self.connect_started.elapsed());
    }

    /// The relay's answer head came with `code`; a failure code of
    /// `passive.failure_codes` counts against it. Is it a failure?
    pub fn answered(&self, set: &UpstreamSet, code: u16) -> bool {
        let failed = set.passive().failure_codes.contains(&code);
        if failed {
            set.record_failure(&self.upstream);
        }
        failed
    }

    /// The relay failed the request after its answer began (a cut, or
    /// silence): passive health.
    pub fn cut(&self, set: &UpstreamSet) {
        set.record_failure(&self.upstream);
    }

    /// A stream on this relay ended with `outcome`.
    pub fn stream(&self, outcome: StreamOutcome) {
        self.upstream.metrics.stream(outcome);
    }

    /// The answer reported `usage`.
    pub fn usage(&self, usage: &Usage) {
        self.upstream.metrics.count_usage(usage);
    }

    /// The stream's first event came `after` its head.
    pub fn first_event(&self, after: Duration) {
        self.upstream
            .metrics
            .first_event
            .observe(after.as_secs_f64());
    }

    /// The request ended on this attempt, with `code`.
    pub fn finish(
        self,
        code: u16,
        failed: bool,
        affinity: Option<AffinityOutcome>,
        took: Duration,
    ) {
        self.upstream.record_response(code, failed, affinity, took);
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.upstream.end_request();
    }
}

/// A request's attempts: the current one and what the earlier ones left.
#[derive(Default)]
pub struct Attempts {
    /// The attempt under way, holding its relay's in-flight count.
    pub current: Option<Attempt>,
    pub tried: Tried,
    /// Attempts made (the access log's `attempts`).
    pub made: u32,
    /// Why the last attempt's relay was left (the re-pin reason).
    pub left_because: Option<RepinReason>,
    /// The one retry on a fresh connection after a pooled one failed was used.
    pub fresh_retried: bool,
    /// The next attempt is that retry (same relay, fresh); read by the
    /// held path (Pingora's path knows it by the attempt still held).
    pub fresh_next: bool,
    /// The current attempt's answer is being left for another relay (its
    /// status, before the client saw any of it).
    pub abandoning: bool,
    /// An answer of this request was left for another relay.
    pub answer_retried: bool,
    /// The next attempt goes elsewhere without moving the session's pin
    /// (`failover.move_pin`).
    pub keep_pin: bool,
}

impl Attempts {
    /// Begin the attempt a route decision chose.
    pub fn begin(
        &mut self,
        set: &UpstreamSet,
        index: usize,
        slot: Option<Slot>,
    ) -> Option<&Attempt> {
        let attempt = Attempt::begin(set, index, slot)?;
        self.tried.add(index);
        Some(self.current.insert(attempt))
    }

    /// The current relay failed the request, which leaves it (`because`):
    /// count the failure; may another relay be tried?
    /// The current attempt could not connect (`e`): counted with its
    /// reason, then failed as [`Self::fail`] does.
    pub fn connect_failed(&mut self, state: &State, e: &Error, metrics: &Metrics) -> bool {
        if let Some(attempt) = &self.current {
            let why = RelayFailure::of(e);
            attempt.upstream.metrics.connect_failed(why);
            log::debug!(
                "upstream {}: connect failed ({}): {e}",
                attempt.upstream.id,
                why.label()
            );
        }
        self.fail(state, RepinReason::ConnectFailure, metrics)
    }

    pub fn fail(&mut self, state: &State, because: RepinReason, metrics: &Metrics) -> bool {
        if let Some(attempt) = self.current.take() {
            attempt
                .upstream
                .stats
                .errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            state.upstreams.record_failure(&attempt.upstream);
        }
        self.left_because = Some(because);
        let may_retry = may_retry(
            &self.tried,
            state.config.max_retries,
            state.upstreams.all().len(),
        );
        if may_retry {
            metrics.retries.inc();
        }
        may_retry
    }

    /// After `e` on an established connection, before any answer: retry,
    /// as [`retry::after_send`] decides? Once on a fresh connection to the
    /// same relay (`fresh_next`), or elsewhere (the relay is left).
    pub fn after_send(
        &mut self,
        state: &State,
        e: &Error,
        facts: retry::Attempt,
        metrics: &Metrics,
    ) -> bool {
        match retry::after_send(e, facts) {
            retry::AfterSend::Fail => false,
            retry::AfterSend::SameUpstreamFresh => {
                self.fresh_retried = true;
                self.fresh_next = true;
                self.left_because = Some(RepinReason::ConnectionLost);
                metrics.retries.inc();
                true
            }
            retry::AfterSend::Elsewhere => self.fail(state, RepinReason::ConnectionLost, metrics),
        }
    }

    /// May the current attempt's answer (not yet sent) be left for another
    /// relay? The request must be `replayable`, within
    /// `failover.max_retries`, with another usable relay, and within the
    /// retry budget (taken here).
    pub fn may_abandon(
        &self,
        replayable: bool,
        state: &State,
        budget: &RetryBudget,
        metrics: &Metrics,
        now: u64,
    ) -> bool {
        if !replayable
            || self.tried.len() > state.config.max_retries
            || crate::upstream::select::least_loaded(&state.upstreams, &self.tried, &[], now)
                .is_none()
        {
            return false;
        }
        let f = &state.config.failover;
        if budget.try_retry(now, f.retry_budget, f.retry_budget_min) {
            true
        } else {
            metrics.retry_budget_exhausted.inc();
            false
        }
    }

    /// Leave the current attempt's answer for another relay: count it
    /// (`reason`), decide whether the session's pin (`record`) moves with
    /// it, and feed passive health.
    pub fn abandon(
        &mut self,
        state: &State,
        record: Option<&SessionRecord>,
        reason: AbandonReason,
        metrics: &Metrics,
    ) {
        if let Some(attempt) = &self.current {
            let u = &attempt.upstream;
            u.metrics.abandoned(reason);
            // Only a failure of the pinned relay counts towards moving it.
            let pinned = record.filter(|r| r.upstream == u.id);
            self.keep_pin = pin_stays(state.config.failover.move_pin, pinned, self.keep_pin);
        }
        self.abandoning = true;
        self.answer_retried = true;
        self.fail(state, RepinReason::ErrorAnswer, metrics);
    }
}

/// After a failure, may another relay be tried? Within
/// `failover.max_retries`, and while an untried relay is left.
fn may_retry(tried: &Tried, max_retries: usize, relays: usize) -> bool {
    tried.len() <= max_retries && tried.len() < relays
}

/// An answer of the session's relay was left: does the pin stay where it
/// is (`failover.move_pin`)? `pinned`: the session's record, when the
/// relay left is the pinned one (each call counts one more failed answer
/// in a row); `before`: what was decided so far.
pub fn pin_stays(move_pin: MovePin, pinned: Option<&SessionRecord>, before: bool) -> bool {
    match (move_pin, pinned) {
        (_, None) => before,
        (MovePin::Never, _) => true,
        (MovePin::AtOnce, _) => false,
        (MovePin::AfterFailures(n), Some(r)) => r.failed_answer() < n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn state(extra: &str) -> State {
        let text = format!(
            "listen: [{{addr: 127.0.0.1:8080}}]\n\
             upstreams: [{{id: a, addr: 127.0.0.1:9001}}, {{id: b, addr: 127.0.0.1:9002}}, {{id: c, addr: 127.0.0.1:9003}}]\n\
             {extra}"
        );
        State::build(
            crate::config::parse(&text).expect("a valid config"),
            &Metrics::new(),
            1,
        )
    }

    fn inflight(state: &State, i: usize) -> i64 {
        state.upstreams.all()[i]
            .stats
            .inflight
            .load(Ordering::Relaxed)
    }

    #[test]
    fn an_attempt_holds_its_relays_in_flight_count_until_it_drops() {
        let state = state("");
        let metrics = Metrics::new();
        let mut attempts = Attempts::default();
        assert!(
            attempts.begin(&state.upstreams, 7, None).is_none(),
            "no such relay"
        );
        assert!(attempts.tried.is_empty());
        attempts.begin(&state.upstreams, 1, None).expect("relay b");
        assert_eq!(inflight(&state, 1), 1);
        // The fresh retry of the same relay: still one.
        let again = Attempt::again(attempts.current.take().expect("an attempt"));
        assert_eq!(inflight(&state, 1), 1);
        attempts.current = Some(again);
        // A failure leaves the relay: its count ends, its error is counted.
        assert!(attempts.fail(&state, RepinReason::ConnectFailure, &metrics));
        assert_eq!(inflight(&state, 1), 0);
        let b = &state.upstreams.all()[1];
        assert_eq!(b.stats.errors.load(Ordering::Relaxed), 1);
        assert_eq!(attempts.left_because, Some(RepinReason::ConnectFailure));
        assert_eq!(metrics.retries.get(), 1);
        // A request that ends on an attempt counts once, then lets go.
        attempts.begin(&state.upstreams, 2, None).expect("relay c");
        let c = attempts.current.take().expect("an attempt");
        c.finish(
            200,
            false,
            Some(AffinityOutcome::Hit),
            Duration::from_millis(3),
        );
        let c = &state.upstreams.all()[2];
        assert_eq!(inflight(&state, 2), 0);
        let s = &c.stats;
        let counted =
            [&s.requests, &s.errors, &s.keyed, &s.affinity_hits].map(|n| n.load(Ordering::Relaxed));
        assert_eq!(counted, [1, 0, 1, 1]);
        // Dropped without a verb (the request's context went away): no leak.
        attempts.begin(&state.upstreams, 0, None).expect("relay a");
        drop(attempts);
        assert_eq!(inflight(&state, 0), 0);
    }

    /// Each case: relays tried, `failover.max_retries`, relays in all, and
    /// whether another may be tried.
    #[test]
    fn another_relay_is_tried_within_the_retries_and_while_one_is_untried() {
        let cases = [
            (1, 2, 3, true),
            (2, 2, 3, true),
            (3, 2, 3, false),
            (3, 5, 3, false),
            (1, 0, 3, false),
            (1, 1, 1, false),
            (0, 0, 0, false),
        ];
        for (n, max_retries, relays, want) in cases {
            let mut tried = Tried::default();
            (0..n).for_each(|i| tried.add(i));
            assert_eq!(
                may_retry(&tried, max_retries, relays),
                want,
                "{n} tried of {relays}, {max_retries} retries"
            );
        }
    }

    /// The `failover.move_pin` matrix. Each case: the mode, the failed
    /// answers in a row the session had before (none: the relay left is
    /// not its pinned one), what was decided before, and whether the pin stays.
    #[test]
    fn the_pin_stays_as_move_pin_says() {
        let cases = [
            (MovePin::Never, None, false, false),
            (MovePin::Never, None, true, true),
            (MovePin::Never, Some(0), false, true),
            (MovePin::Never, Some(9), false, true),
            (MovePin::AtOnce, None, true, true),
            (MovePin::AtOnce, Some(0), true, false),
            (MovePin::AfterFailures(2), None, false, false),
            (MovePin::AfterFailures(2), Some(0), false, true),
            (MovePin::AfterFailures(2), Some(1), true, false),
            (MovePin::AfterFailures(1), Some(0), true, false),
            (MovePin::AfterFailures(0), Some(0), true, false),
        ];
        for (mode, failures, before, want) in cases {
            let record = SessionRecord::new("a".into(), None, 0, 0, 0);
            (0..failures.unwrap_or(0)).for_each(|_| {
                record.failed_answer();
            });
            let pinned = failures.map(|_| &record);
            assert_eq!(
                pin_stays(mode, pinned, before),
                want,
                "{mode:?} {failures:?} {before}"
            );
        }
    }

    /// Abandoning an answer: counted on its relay by reason, the relay
    /// left (an error answer), and the pin decided only when the relay was
    /// the session's own.
    #[test]
    fn an_abandoned_answer_leaves_its_relay_and_moves_the_pin_only_if_pinned_there() {
        let cases = [
            ("move_pin: at_once", "a", false),
            ("move_pin: at_once", "b", true),
            ("move_pin: never", "a", true),
            ("move_pin: after_failures\n  move_pin_after: 2", "a", true),
        ];
        for (mode, pinned_to, keep_pin) in cases {
            let state = state(&format!("failover:\n  {mode}\n"));
            let metrics = Metrics::new();
            let record = SessionRecord::new(pinned_to.into(), None, 0, 0, 0);
            let mut attempts = Attempts {
                keep_pin: true,
                ..Attempts::default()
            };
            attempts.begin(&state.upstreams, 0, None).expect("relay a");
            attempts.abandon(&state, Some(&record), AbandonReason::Status, &metrics);
            assert_eq!(attempts.keep_pin, keep_pin, "{mode}, pinned to {pinned_to}");
            assert!(attempts.abandoning && attempts.answer_retried, "{mode}");
            assert_eq!(attempts.left_because, Some(RepinReason::ErrorAnswer));
            assert!(attempts.current.is_none());
            assert_eq!(inflight(&state, 0), 0);
        }
    }
}

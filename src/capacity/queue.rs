//! One relay's admission: at most `limit` requests in flight (this edge's
//! grant of the relay's cap), and a bounded queue in front of it that is
//! fair across tenants: round robin between tenants, first in, first out
//! within one, so that one key's burst cannot starve the others.
//!
//! A [`Slot`] is one request in flight; its drop gives the slot to the next
//! waiter, or back. A waiter that leaves (its client went away, or its
//! deadline passed) leaves the queue at once; if a slot reached it as it
//! left, the slot goes on to the next. So no path leaks a slot.
//!
//! The gate also remembers its recent waits, for the fast failure
//! (`capacity.fast_fail_wait`): a request is refused at once while the
//! recent waits are long.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use crate::outcome::Refused;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// How many recent waits are kept, and for how long they count.
const RECENT_WAITS: usize = 32;
const RECENT_FOR: Duration = Duration::from_secs(30);

/// One relay's slots and queue.
pub struct Gate {
    state: Mutex<State>,
}

struct State {
    limit: usize,
    in_flight: usize,
    max_queue: usize,
    queued: usize,
    /// Tenants with waiters, in their round-robin order.
    tenants: VecDeque<Waiters>,
    next_ticket: u64,
    /// The waits of requests that queued (served or not), newest last.
    recent: VecDeque<(Instant, Duration)>,
    /// `relay_edge_upstream_queue_length`, set as the queue changes.
    length: Option<prometheus::IntGauge>,
    /// The most work (in flight and queued) since [`Gate::take_peak`].
    peak: usize,
}

struct Waiters {
    tenant: u64,
    queue: VecDeque<(u64, oneshot::Sender<()>)>,
}

/// One request in flight at the gate's relay; dropped, it frees the slot.
pub struct Slot {
    gate: Arc<Gate>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        state.release();
    }
}

impl Gate {
    pub fn new(limit: usize, max_queue: usize) -> Arc<Gate> {
        Gate::with_gauge(limit, max_queue, None)
    }

    /// A gate whose queue length is kept in `length`.
    pub fn with_gauge(
        limit: usize,
        max_queue: usize,
        length: Option<prometheus::IntGauge>,
    ) -> Arc<Gate> {
        Arc::new(Gate {
            state: Mutex::new(State {
                limit,
                in_flight: 0,
                max_queue,
                queued: 0,
                tenants: VecDeque::new(),
                next_ticket: 0,
                recent: VecDeque::new(),
                length,
                peak: 0,
            }),
        })
    }

    /// A new queue bound; waiters already queued stay.
    pub fn set_max_queue(&self, max_queue: usize) {
        self.lock().max_queue = max_queue;
    }

    /// The limit in force.
    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    /// A slot is free now, and nobody is waiting for one.
    pub fn has_room(&self) -> bool {
        let state = self.lock();
        state.in_flight < state.limit && state.queued == 0
    }

    /// A slot now, or none (without queueing).
    pub fn try_admit(self: &Arc<Self>) -> Option<Slot> {
        let mut state = self.lock();
        if state.in_flight < state.limit && state.queued == 0 {
            state.in_flight += 1;
            state.note_peak();
            return Some(Slot { gate: self.clone() });
        }
        None
    }

    /// The 90th percentile of the recent waits (those of the last 30 s,
    /// at least three of them), or zero.
    pub fn recent_p90(&self) -> Duration {
        let state = self.lock();
        let now = Instant::now();
        let mut waits: Vec<Duration> = state
            .recent
            .iter()
            .filter(|(at, _)| now.duration_since(*at) < RECENT_FOR)
            .map(|(_, w)| *w)
            .collect();
        if waits.len() < 3 {
            return Duration::ZERO;
        }
        waits.sort_unstable();
        waits[(waits.len() * 9).div_ceil(10) - 1]
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held cannot leave the counts torn
        // (each change is one statement), so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most work (in flight and queued) at once since the last call;
    /// the count starts again from the work there is now.
    pub fn take_peak(&self) -> usize {
        let mut state = self.lock();
        let now = state.in_flight + state.queued;
        std::mem::replace(&mut state.peak, now).max(now)
    }

    /// Requests in flight, and requests waiting.
    pub fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        (state.in_flight, state.queued)
    }

    /// A new limit (a new grant): more room admits waiters at once; less
    /// takes nothing from requests in flight, and the next releases shrink
    /// to it.
    pub fn set_limit(&self, limit: usize) {
        let mut state = self.lock();
        state.limit = limit;
        while state.in_flight < state.limit && state.hand_to_next() {
            state.in_flight += 1;
            state.note_peak();
        }
    }

    /// Admit a request of `tenant`, waiting in the queue until `deadline`
    /// if every slot is taken. Dropping the future leaves the queue.
    pub async fn admit(self: &Arc<Self>, tenant: u64, deadline: Instant) -> Result<Slot, Refused> {
        let queued_at = Instant::now();
        let (ticket, rx) = {
            let mut state = self.lock();
            if state.in_flight < state.limit && state.queued == 0 {
                state.in_flight += 1;
                state.note_peak();
                return Ok(Slot { gate: self.clone() });
            }
            if state.queued >= state.max_queue {
                return Err(Refused::QueueFull);
            }
            let (tx, rx) = oneshot::channel();
            let ticket = state.enqueue(tenant, tx);
            (ticket, rx)
        };
        let mut waiting = Waiting {
            gate: self.clone(),
            ticket,
            rx,
            done: false,
        };
        let admitted = match tokio::time::timeout_at(deadline, &mut waiting.rx).await {
            Ok(Ok(())) => {
                waiting.done = true;
                Ok(Slot { gate: self.clone() })
            }
            // The sender is never dropped unsent while the waiter is queued.
            Ok(Err(_)) | Err(_) => Err(Refused::TimedOut),
        };
        self.lock().note_wait(queued_at);
        admitted
    }
}

/// A waiter in the queue; dropped before it was admitted (a timeout, or the
/// client's future dropped), it leaves the queue, and a slot that reached
/// it as it left goes on.
struct Waiting {
    gate: Arc<Gate>,
    ticket: u64,
    rx: oneshot::Receiver<()>,
    done: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut state = self.gate.lock();
        if !state.remove(self.ticket) && self.rx.try_recv().is_ok() {
            // Admitted as it left: the slot is ours to pass on.
            state.release();
        }
    }
}

impl State {
    fn note_peak(&mut self) {
        self.peak = self.peak.max(self.in_flight + self.queued);
    }

    fn note_wait(&mut self, queued_at: Instant) {
        if self.recent.len() == RECENT_WAITS {
            self.recent.pop_front();
        }
        let now = Instant::now();
        self.recent.push_back((now, now.duration_since(queued_at)));
    }

    fn set_queued(&mut self, queued: usize) {
        self.queued = queued;
        if let Some(g) = &self.length {
            g.set(i64::try_from(queued).unwrap_or(i64::MAX));
        }
    }

    fn enqueue(&mut self, tenant: u64, tx: oneshot::Sender<()>) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.set_queued(self.queued + 1);
        self.note_peak();
        match self.tenants.iter_mut().find(|w| w.tenant == tenant) {
            Some(w) => w.queue.push_back((ticket, tx)),
            None => self.tenants.push_back(Waiters {
                tenant,
                queue: VecDeque::from([(ticket, tx)]),
            }),
        }
        ticket
    }

    /// Take waiter `ticket` out of the queue; false if it is not there.
    fn remove(&mut self, ticket: u64) -> bool {
        let found = self.tenants.iter_mut().enumerate().find_map(|(i, w)| {
            let at = w.queue.iter().position(|(t, _)| *t == ticket)?;
            w.queue.remove(at);
            Some((i, w.queue.is_empty()))
        });
        let Some((i, emptied)) = found else {
            return false;
        };
        self.set_queued(self.queued - 1);
        if emptied {
            self.tenants.remove(i);
        }
        true
    }

    /// Give one slot to the next waiter in round-robin order; false if no
    /// waiter is left to take it.
    fn hand_to_next(&mut self) -> bool {
        while let Some(mut w) = self.tenants.pop_front() {
            let Some((_, tx)) = w.queue.pop_front() else {
                continue;
            };
            self.set_queued(self.queued - 1);
            if !w.queue.is_empty() {
                self.tenants.push_back(w);
            }
            if tx.send(()).is_ok() {
                return true;
            }
        }
        false
    }

    /// A slot is free: to the next waiter while within the limit, else back.
    fn release(&mut self) {
        if self.in_flight > self.limit || !self.hand_to_next() {
            self.in_flight -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a runtime")
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(1)
    }

    #[test]
    fn past_the_limit_a_request_waits_for_a_slot_and_never_longer() {
        runtime().block_on(async {
            let gate = Gate::new(2, 10);
            let a = gate.admit(1, soon()).await.expect("a slot");
            let _b = gate.admit(1, soon()).await.expect("a slot");
            let waiting = tokio::spawn({
                let gate = gate.clone();
                async move { gate.admit(2, soon()).await.map(|_| ()) }
            });
            tokio::task::yield_now().await;
            assert_eq!(gate.counts(), (2, 1));
            drop(a);
            assert_eq!(waiting.await.expect("joined"), Ok(()));
            // The waiter's slot was dropped with its task.
            assert_eq!(gate.counts(), (1, 0));
            // Nothing frees a slot: the deadline ends the wait.
            let _c = gate.admit(3, soon()).await.expect("a slot");
            assert_eq!(gate.admit(3, soon()).await.err(), Some(Refused::TimedOut));
            assert_eq!(
                gate.counts(),
                (2, 0),
                "a waiter that timed out left the queue"
            );
        });
    }

    #[test]
    fn a_full_queue_refuses_at_once() {
        runtime().block_on(async {
            let gate = Gate::new(1, 2);
            let _held = gate.admit(1, soon()).await.expect("a slot");
            let queued: Vec<_> = (0..2)
                .map(|_| {
                    let gate = gate.clone();
                    tokio::spawn(async move { gate.admit(1, soon()).await.map(|_| ()) })
                })
                .collect();
            tokio::task::yield_now().await;
            assert_eq!(gate.admit(2, soon()).await.err(), Some(Refused::QueueFull));
            drop(queued);
        });
    }

    /// Tenant 1 queues three, then tenant 2 one: slots go 1, 2, 1, 1.
    #[test]
    fn the_queue_is_round_robin_across_tenants_and_in_order_within_one() {
        runtime().block_on(async {
            let gate = Gate::new(1, 10);
            let held = gate.admit(0, soon()).await.expect("a slot");
            let order = Arc::new(Mutex::new(Vec::new()));
            let mut tasks = Vec::new();
            for (tenant, name) in [(1, "1a"), (1, "1b"), (1, "1c"), (2, "2a")] {
                let (gate, order) = (gate.clone(), order.clone());
                tasks.push(tokio::spawn(async move {
                    let slot = gate.admit(tenant, soon()).await.expect("admitted");
                    order.lock().expect("order").push(name);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    drop(slot);
                }));
                tokio::task::yield_now().await;
            }
            drop(held);
            for t in tasks {
                t.await.expect("joined");
            }
            assert_eq!(*order.lock().expect("order"), ["1a", "2a", "1b", "1c"]);
            assert_eq!(gate.counts(), (0, 0));
        });
    }

    #[test]
    fn a_waiter_that_leaves_frees_its_place_and_no_slot_leaks() {
        runtime().block_on(async {
            let gate = Gate::new(1, 1);
            let held = gate.admit(1, soon()).await.expect("a slot");
            // A client that goes away while queued: its place is free at once.
            let gone = tokio::spawn({
                let gate = gate.clone();
                async move { gate.admit(2, soon()).await.map(|_| ()) }
            });
            tokio::task::yield_now().await;
            assert_eq!(gate.counts(), (1, 1));
            gone.abort();
            let _ = gone.await;
            assert_eq!(gate.counts(), (1, 0));
            // A waiter dropped just as the slot reached it passes the slot on.
            let mut racing = Box::pin(gate.admit(3, soon()));
            assert!(futures::poll!(&mut racing).is_pending());
            drop(held);
            drop(racing);
            assert_eq!(gate.counts(), (0, 0), "the slot came back");
        });
    }

    #[test]
    fn a_new_limit_admits_waiters_or_shrinks_as_slots_come_back() {
        runtime().block_on(async {
            let gate = Gate::new(1, 10);
            let a = gate.admit(1, soon()).await.expect("a slot");
            let waiters: Vec<_> = (0..2)
                .map(|_| {
                    let gate = gate.clone();
                    tokio::spawn(async move {
                        let slot = gate.admit(1, soon()).await;
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        slot.map(|_| ())
                    })
                })
                .collect();
            tokio::task::yield_now().await;
            gate.set_limit(3);
            assert_eq!(gate.counts(), (3, 0), "both waiters admitted at once");
            gate.set_limit(1);
            drop(a);
            assert_eq!(gate.counts(), (2, 0), "no slot taken back, none handed on");
            for w in waiters {
                assert_eq!(w.await.expect("joined"), Ok(()));
            }
            assert_eq!(gate.counts(), (0, 0));
        });
    }
}

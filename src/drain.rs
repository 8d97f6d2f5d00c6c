//! What is in flight in this process, and when a drain may end.
//!
//! [`Drain`] owns one edge-wide count of requests in flight: every request
//! holds an [`InFlight`] guard in its context from the moment its head is
//! read (early body reads included) until it is logged, whatever config
//! generation it runs on. Drains, upgrades and shutdowns wait on that count
//! and on nothing else.
//!
//! A drain (SIGTERM, or SIGQUIT after the socket hand-over) ends once nothing
//! has been in flight, and no request has started or ended, for `quiet`: a
//! keep-alive client sends its next request just after the last one ended,
//! even when that one was a stream that started minutes ago. Meanwhile
//! every response carries `Connection: close`, so a keep-alive client moves
//! to the new process with its next request instead of finding its
//! connection closed under it. What remains of the race: a client idle for
//! longer than `quiet` that sends on its old connection just as the process
//! exits; its request reached no relay, and the connection gets a FIN, which
//! well-behaved clients check before reuse.

use crate::clock;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Default)]
pub struct Drain {
    in_flight: AtomicI64,
    /// `clock::now_ms` when a request last started or ended.
    last_change_ms: AtomicU64,
    draining: AtomicBool,
}

/// One request in flight; counted until dropped.
pub struct InFlight(Arc<Drain>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drain {
    pub fn new() -> Arc<Drain> {
        Arc::new(Drain::default())
    }

    /// Count a request from now until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.touch();
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    fn touch(&self) {
        self.last_change_ms
            .store(clock::now_ms(), Ordering::Relaxed);
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The process is draining: responses close their connections.
    pub fn begin(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Nothing in flight, and no request started or ended within `quiet`.
    pub fn is_quiet(&self, quiet: Duration) -> bool {
        let since = clock::now_ms().saturating_sub(self.last_change_ms.load(Ordering::Relaxed));
        self.in_flight() == 0 && u128::from(since) >= quiet.as_millis()
    }

    /// Wait until the drain is quiet (checked every 25 ms).
    pub async fn until_quiet(&self, quiet: Duration) {
        while !self.is_quiet(quiet) {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Drain;
    use std::time::Duration;

    #[test]
    fn quiet_needs_no_request_in_flight_and_none_started_or_ended_lately() {
        let d = Drain::new();
        assert!(d.is_quiet(Duration::ZERO));
        let guard = d.enter();
        assert_eq!(d.in_flight(), 1);
        assert!(!d.is_quiet(Duration::ZERO));
        // A long request: its start is long past when it ends.
        d.last_change_ms
            .store(1, std::sync::atomic::Ordering::Relaxed);
        drop(guard);
        assert_eq!(d.in_flight(), 0);
        assert!(d.is_quiet(Duration::ZERO));
        assert!(
            !d.is_quiet(Duration::from_secs(3600)),
            "it just ended: the client may send again on its connection"
        );
    }
}

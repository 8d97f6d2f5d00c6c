//! Renews this edge's grants of capped relays in Redis
//! ([`crate::capacity::lease`]): each `capacity.sync_interval` for every
//! relay it has work for (and once more when it goes idle, to give its
//! grant back), and at once when work queues at a relay whose want grew.
//! Without Redis there is nothing to share: each edge's limit is the cap.
//!
//! On shutdown it goes on until this edge's work at every capped relay has
//! ended, so that a draining edge's streams stay counted.

use crate::affinity::redis_store::RedisStore;
use crate::capacity::{lease, SYNC_DUE};
use crate::clock;
use crate::state::{Edge, State};
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

/// A woken sync waits this long first, so that a burst asks once.
const DEBOUNCE: Duration = Duration::from_millis(5);

pub struct CapacitySync {
    pub edge: Arc<Edge>,
    pub redis: Arc<RedisStore>,
}

impl CapacitySync {
    /// Sync the relays that are due (`tick`: the regular round). Says
    /// whether this edge still has work or a grant at any capped relay, and
    /// when a woken relay that was not due yet will be.
    pub async fn round(&self, state: &State, tick: bool) -> (bool, Option<u64>) {
        let c = &state.config.capacity;
        let now = clock::now_ms();
        let (mut busy, mut later) = (false, None::<u64>);
        let syncs = state.upstreams.all().iter().filter_map(|u| {
            let capacity = u.capacity.as_ref()?;
            let (in_flight, queued) = capacity.work();
            let (want, holding) = lease::want(in_flight, queued, capacity.cap());
            let held = capacity.lease();
            busy |= want > 0 || held.listed;
            match lease::due(&held, want, capacity.limit(), tick, now) {
                Some(at) if at <= now => {}
                due => {
                    if let Some(at) = due {
                        later = Some(later.map_or(at, |l| l.min(at)));
                    }
                    capacity.refresh(now);
                    return None;
                }
            }
            let peak = u32::try_from(capacity.gate.take_peak()).unwrap_or(u32::MAX);
            let ask = lease::ask(want, peak, capacity.cap());
            Some(async move {
                let sent = clock::now_ms();
                let answer = self
                    .redis
                    .sync_capacity(&u.id, capacity.cap(), ask, holding, c.lease)
                    .await;
                capacity.synced(ask, sent, answer);
            })
        });
        futures::future::join_all(syncs.collect::<Vec<_>>()).await;
        (busy, later)
    }
}

#[async_trait]
impl BackgroundService for CapacitySync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut stopping = false;
        let mut tick = true;
        // The regular round keeps its pace however often work wakes us.
        let mut next_tick = tokio::time::Instant::now();
        loop {
            if tick {
                let interval = self.edge.state().config.capacity.sync_interval;
                next_tick = tokio::time::Instant::now().max(next_tick) + interval;
            }
            let state = self.edge.state();
            let (busy, later) = self.round(&state, tick).await;
            if stopping && !busy {
                return;
            }
            drop(state);
            // A woken relay not due yet is looked at again when it is.
            let recheck = later.map_or(Duration::ZERO, |at| {
                Duration::from_millis(at.saturating_sub(clock::now_ms()))
            });
            tick = tokio::select! {
                biased;
                _ = tokio::time::sleep_until(next_tick) => true,
                _ = tokio::time::sleep(recheck), if later.is_some() => false,
                _ = SYNC_DUE.notified() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    false
                }
                _ = shutdown.changed(), if !stopping => {
                    stopping = true;
                    true
                }
            };
        }
    }
}

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
    /// Sync the relays that are due (`tick`: the regular round); true if
    /// this edge still has work or a grant at any capped relay.
    pub async fn round(&self, state: &State, tick: bool) -> bool {
        let c = &state.config.capacity;
        let now = clock::now_ms();
        let mut busy = false;
        let syncs = state.upstreams.all().iter().filter_map(|u| {
            let capacity = u.capacity.as_ref()?;
            let (in_flight, queued) = capacity.work();
            let (want, holding) = lease::want(in_flight, queued, capacity.cap());
            let held = capacity.lease();
            busy |= want > 0 || held.listed;
            if !lease::due(&held, want, capacity.limit(), tick, now) {
                capacity.refresh(now);
                return None;
            }
            Some(async move {
                let sent = clock::now_ms();
                let answer = self
                    .redis
                    .sync_capacity(&u.id, capacity.cap(), want, holding, c.lease)
                    .await;
                capacity.synced(want, sent, answer);
            })
        });
        futures::future::join_all(syncs.collect::<Vec<_>>()).await;
        busy
    }
}

#[async_trait]
impl BackgroundService for CapacitySync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut stopping = false;
        let mut tick = true;
        loop {
            let state = self.edge.state();
            let busy = self.round(&state, tick).await;
            if stopping && !busy {
                return;
            }
            let interval = state.config.capacity.sync_interval;
            drop(state);
            tick = tokio::select! {
                _ = tokio::time::sleep(interval) => true,
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

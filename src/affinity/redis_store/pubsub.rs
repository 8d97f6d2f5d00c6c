//! Invalidations from other edges, by pub/sub: one session's id, the
//! drains' message, or a purge's (see [`super::purge`]). With Sentinel, it
//! listens on the master in use: a move of the master makes the
//! subscription anew there.

use super::*;
use futures::StreamExt;

impl RedisStore {
    /// Drop cached pins that another edge changed. Pub/sub messages reach
    /// every node of a cluster, so any node will do.
    pub(super) async fn subscribe(
        self: Arc<Self>,
        spec: Arc<RedisSpec>,
        subscribed: tokio::sync::oneshot::Sender<()>,
    ) {
        let mut subscribed = Some(subscribed);
        let mut backoff = Duration::from_millis(50);
        for attempt in 0usize.. {
            // With Sentinel, the master in use; a move ends the listening.
            let mut moved = self.link.master_watch();
            let master = moved.borrow_and_update().clone();
            match self.pubsub_client(&spec, attempt, master.as_ref()) {
                Ok(client) => match client.get_async_pubsub().await {
                    Ok(mut pubsub) => match pubsub.subscribe(pins_channel(&spec.prefix)).await {
                        Ok(()) => {
                            // Messages may have been missed while
                            // unsubscribed: every cached pin is asked again
                            // at its next use, and written back.
                            self.local.revalidate_all();
                            self.link.set_subscribed(true);
                            self.link.reseed_later();
                            if let Some(tx) = subscribed.take() {
                                let _ = tx.send(());
                            }
                            backoff = Duration::from_millis(50);
                            let why = self.listen(pubsub, moved).await;
                            self.link.set_subscribed(false);
                            self.local.revalidate_all();
                            log::warn!("redis pub/sub {why}; resubscribing");
                        }
                        Err(e) => log::warn!("redis subscribe failed ({:?} error)", e.kind()),
                    },
                    Err(e) => log::debug!("redis pub/sub unreachable ({:?} error)", e.kind()),
                },
                Err(e) => log::error!("redis pub/sub client ({:?} error)", e.kind()),
            }
            // Soon after a loss (Redis restarted: the re-seed should beat
            // other edges' placements), then at most once a second.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// Apply invalidations until the link is lost or stops answering its
    /// pings (a connection that died silently delivers nothing, and would
    /// leave cached pins trusted); says which.
    async fn listen(
        &self,
        pubsub: redis::aio::PubSub,
        mut moved: tokio::sync::watch::Receiver<Option<sentinel::Addr>>,
    ) -> &'static str {
        let (mut sink, mut messages) = pubsub.split();
        let every = Duration::from_millis(cost::PUBSUB_PING_MS);
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                msg = messages.next() => {
                    let Some(msg) = msg else { return "connection lost" };
                    let payload: String = msg.get_payload().unwrap_or_default();
                    if payload == Self::DRAINS_CHANGED {
                        self.refresh_drains().await;
                    } else if let Some(id) = SessionId::from_hex(&payload) {
                        self.local.invalidate(id);
                    } else if let Some(which) = purge::selector(&payload) {
                        self.forget_cached(&which);
                    }
                }
                _ = moved.changed() => return "left for the new master",
                _ = ping.tick() => {
                    let wait = self.batch_timeout().max(Duration::from_secs(2));
                    let pong = tokio::time::timeout(wait, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        return "connection did not answer a ping";
                    }
                }
            }
        }
    }
}

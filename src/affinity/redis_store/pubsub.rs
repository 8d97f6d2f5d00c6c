//! Invalidations from other edges, by pub/sub.

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
        let urls = spec.target.pubsub_urls();
        let mut subscribed = Some(subscribed);
        let mut backoff = Duration::from_millis(50);
        for attempt in 0usize.. {
            let url = urls[attempt % urls.len().max(1)];
            match redis::Client::open(url) {
                Ok(client) => match client.get_async_pubsub().await {
                    Ok(mut pubsub) => match pubsub.subscribe(pins_channel(&spec.prefix)).await {
                        Ok(()) => {
                            // Messages may have been missed while unsubscribed.
                            self.link.reseed_later();
                            if let Some(tx) = subscribed.take() {
                                let _ = tx.send(());
                            }
                            backoff = Duration::from_millis(50);
                            let mut messages = pubsub.on_message();
                            while let Some(msg) = messages.next().await {
                                let payload: String = msg.get_payload().unwrap_or_default();
                                if payload == Self::DRAINS_CHANGED {
                                    self.refresh_drains().await;
                                } else if let Some(id) = SessionId::from_hex(&payload) {
                                    self.local.invalidate(id);
                                }
                            }
                            log::warn!("redis pub/sub connection lost; resubscribing");
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
}

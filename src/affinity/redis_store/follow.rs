//! Following the master through a Sentinel failover (`redis.sentinel`).
//!
//! Two tasks per table, both off the request path. One stays subscribed to
//! `+switch-master` on a sentinel (any that answers, the next when it goes
//! away, pinged as pub/sub is), so that a failover is noticed even while
//! no call fails. The other asks the sentinels again whenever the link is
//! asked to (`Link::ask_sentinels`: that message, a call that failed as
//! `sentinel::reasks` says, a probe of a link that is down), one re-ask
//! at a time, until the master they name says it is one. A new master
//! gets a new connection, swapped in whole: requests take the one in
//! force at each call. Pub/sub follows the swap, and its resubscription
//! re-seeds the cached pins there, as after a Redis restart.

use super::link::{connect_master, ConnectError};
use super::sentinel;
use super::*;
use crate::config::{RedisTarget, SentinelSpec};
use futures::StreamExt;

impl RedisStore {
    /// True with `redis.sentinel`.
    pub(super) fn follows_sentinels(&self) -> bool {
        matches!(self.spec.load().target, RedisTarget::Sentinel(_))
    }

    /// Follow the master of the table of `generation` (with
    /// `redis.sentinel`; at once done otherwise). Ends when aborted.
    pub(super) async fn follow(self: Arc<Self>, generation: u64) {
        let spec = self.spec();
        let RedisTarget::Sentinel(s) = &spec.target else {
            return;
        };
        tokio::join!(self.watch_switches(s), self.reask_when_asked(s, generation));
    }

    /// Does the server in use say it is the master? If not (or it cannot
    /// say), the sentinels are asked again.
    pub(super) async fn answers_as_master(&self) -> bool {
        let (Some(conn), Some(at)) = (self.conn.load_full(), self.link.master()) else {
            return false;
        };
        let within = link::probe_timeout(&self.spec());
        let master = sentinel::confirm_master(&mut (*conn).clone(), &at, within)
            .await
            .is_ok();
        if !master {
            self.link.ask_sentinels();
        }
        master
    }

    /// The client for the pub/sub link of `attempt`: the master in use
    /// with `redis.sentinel`, else each URL in turn.
    pub(super) fn pubsub_client(
        &self,
        spec: &RedisSpec,
        attempt: usize,
        master: Option<&sentinel::Addr>,
    ) -> RedisResult<redis::Client> {
        match (&spec.target, master) {
            (RedisTarget::Sentinel(s), Some(at)) => {
                redis::Client::open(sentinel::data_node(s, at)?)
            }
            (RedisTarget::Sentinel(_), None) => {
                Err((redis::ErrorKind::ClientError, "no master known yet").into())
            }
            (target, _) => {
                let urls = target.pubsub_urls();
                match urls.get(attempt % urls.len().max(1)) {
                    Some(url) => redis::Client::open(*url),
                    None => Err((redis::ErrorKind::ClientError, "no URL").into()),
                }
            }
        }
    }

    /// Re-ask each time the link is asked to, and again (sooner if asked)
    /// until the sentinels name a master that says it is one.
    async fn reask_when_asked(&self, s: &SentinelSpec, generation: u64) {
        loop {
            self.link.sentinels_asked().await;
            let mut backoff = Duration::from_millis(25);
            for tries in 0u32.. {
                match self.reask(s, generation).await {
                    Ok(()) => break,
                    // Said once an episode; every try while it lasts is debug.
                    Err(e) if tries == 0 => log::warn!("redis sentinel: {e}; asking again"),
                    Err(e) => log::debug!("redis sentinel: {e}; asking again"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = self.link.sentinels_asked() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }

    /// Ask the sentinels where the master is. The same master: is it still
    /// one? Another: connect to it, check it, and swap.
    async fn reask(&self, s: &SentinelSpec, generation: u64) -> Result<(), ConnectError> {
        let spec = self.spec();
        let at = sentinel::ask_master(s, &self.link.sentinels, link::ask_timeout(&spec)).await?;
        if self.link.master().as_ref() == Some(&at) {
            return match self.conn.load_full() {
                Some(conn) => Ok(sentinel::confirm_master(
                    &mut (*conn).clone(),
                    &at,
                    link::probe_timeout(&spec),
                )
                .await?),
                None => Ok(()),
            };
        }
        let conn = connect_master(&spec, s, &at).await?;
        if *self.table.borrow() != generation {
            return Ok(());
        }
        // Nothing cached is trusted until pub/sub is made again there.
        self.link.set_subscribed(false);
        self.local.revalidate_all();
        self.conn.store(Some(Arc::new(conn)));
        let old = self.link.master();
        self.link.set_master(Some(at.clone()));
        log::warn!(
            "redis sentinel: master {:?} is at {at} now (was {}): following it",
            s.master,
            old.map_or_else(|| "unknown".into(), |o| o.to_string())
        );
        // In use at once (if it was down), and re-seeded.
        self.probe(generation).await;
        Ok(())
    }

    /// Stay subscribed to `+switch-master` on one sentinel that answers
    /// (the next when it goes away or stops answering pings); each
    /// (re)subscription asks the sentinels once, since a switch may have
    /// been missed meanwhile. The sentinel that tells of a switch is asked
    /// first: the others may not know of it yet.
    async fn watch_switches(&self, s: &SentinelSpec) {
        let mut backoff = Duration::from_millis(50);
        for attempt in 0usize.. {
            let order = self.link.sentinels.order(s);
            let Some(node) = order.get(attempt % order.len().max(1)) else {
                return;
            };
            let pubsub = async {
                let client = redis::Client::open(sentinel::sentinel_info(s, node))?;
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(sentinel::SWITCH_MASTER).await?;
                RedisResult::Ok(pubsub)
            };
            match tokio::time::timeout(link::ask_timeout(&self.spec()), pubsub).await {
                Ok(Ok(pubsub)) => {
                    self.link.ask_sentinels();
                    backoff = Duration::from_millis(50);
                    let why = self.listen_to_sentinel(pubsub, s, node).await;
                    log::info!(
                        "redis sentinel: the subscription to a sentinel {why}; moving to the next"
                    );
                }
                Ok(Err(e)) => log::debug!("redis sentinel unreachable ({:?} error)", e.kind()),
                Err(_) => log::debug!("redis sentinel did not answer in time"),
            }
            // Every sentinel is tried in turn before the pause grows.
            if (attempt + 1) % order.len().max(1) == 0 {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }

    /// Ask again on each switch of this master, until the link is lost or
    /// stops answering pings; says which.
    async fn listen_to_sentinel(
        &self,
        pubsub: redis::aio::PubSub,
        s: &SentinelSpec,
        node: &(String, u16),
    ) -> &'static str {
        let (mut sink, mut messages) = pubsub.split();
        let every = Duration::from_millis(cost::PUBSUB_PING_MS);
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                msg = messages.next() => {
                    let Some(msg) = msg else { return "was lost" };
                    let payload: String = msg.get_payload().unwrap_or_default();
                    if sentinel::reasks_on(msg.get_channel_name(), &payload, &s.master) {
                        log::info!("redis sentinel: {} of {:?}: asking where it is", sentinel::SWITCH_MASTER, s.master);
                        // It knows the new master: asked first.
                        self.link.sentinels.prefer(node);
                        self.link.ask_sentinels();
                    }
                }
                _ = ping.tick() => {
                    let wait = self.batch_timeout().max(Duration::from_secs(2));
                    let pong = tokio::time::timeout(wait, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        return "did not answer a ping";
                    }
                }
            }
        }
    }
}

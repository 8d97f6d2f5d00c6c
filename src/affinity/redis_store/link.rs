//! The connection to Redis (a single server or a cluster), and its state.
//!
//! [`Link`] is the state machine: *connecting* until the first connection
//! is up and subscribed or `connect_wait` has passed (then *settled*); *up*
//! while calls succeed; *down* after a call fails for a reason that is the
//! server's (a timeout, a lost connection, a cluster in trouble), until a
//! probe answers again. Which failures those are is the call policy's
//! (`calls.rs`): one record's failure leaves the link up, and a lost
//! connection is not yet an outage, since the connection manager
//! reconnects at once (after a Redis restart, the first call on the old
//! connection always fails, however long ago the restart was).

use crate::config::{RedisSpec, RedisTarget};
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The link's state, shared by the request path and the sync loop.
#[derive(Debug, Default)]
pub struct Link {
    /// The last call succeeded (or a probe did). While false, request
    /// paths skip Redis.
    up: AtomicBool,
    /// The first connection is made and subscribed, or given up on.
    settled: AtomicBool,
    /// Cached pins must be written back and re-read (after a reconnect or a
    /// resubscribe: Redis may have lost data, and messages may be missed).
    needs_reseed: AtomicBool,
    /// Wakes the sync loop when a re-seed is due: the sooner it runs after
    /// Redis lost its data, the fewer sessions another edge places anew.
    reseed_due: tokio::sync::Notify,
    /// Subscribed to the invalidations now: only then is a cached pin used
    /// without asking Redis.
    subscribed: AtomicBool,
}

impl Link {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Relaxed)
    }

    /// Invalidations reach this edge now.
    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    pub fn set_subscribed(&self, on: bool) {
        self.subscribed.store(on, Ordering::Release);
    }

    /// An outage: true if the link was up until now.
    pub fn went_down(&self) -> bool {
        self.up.swap(false, Ordering::Relaxed)
    }

    /// A probe answered: true if the link was down until now. Coming back
    /// means the table must be re-seeded.
    pub fn came_up(&self) -> bool {
        let was_down = !self.up.swap(true, Ordering::Relaxed);
        if was_down {
            self.reseed_later();
        }
        was_down
    }

    /// True the first time only.
    pub fn settle(&self) -> bool {
        !self.settled.swap(true, Ordering::Relaxed)
    }

    pub fn reseed_later(&self) {
        self.needs_reseed.store(true, Ordering::Relaxed);
        self.reseed_due.notify_one();
    }

    /// Resolves once a re-seed is asked for (at once if one was asked for
    /// since the last wait).
    pub async fn reseed_asked(&self) {
        self.reseed_due.notified().await;
    }

    /// True if a re-seed was due (and is now taken on).
    pub fn take_reseed(&self) -> bool {
        self.needs_reseed.swap(false, Ordering::Relaxed)
    }
}

/// A connection to a single Redis (reconnecting by itself) or to a cluster.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A connection to the configured Single Redis or Cluster.
pub async fn connect(spec: &RedisSpec) -> RedisResult<Conn> {
    match &spec.target {
        RedisTarget::Single(url) => {
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Duration::from_secs(1))
                .set_response_timeout(
                    spec.timeout
                        .max(Duration::from_millis(10))
                        .saturating_mul(4),
                )
                .set_number_of_retries(2)
                .set_max_delay(1000);
            let client = redis::Client::open(url.as_str())?;
            Ok(Conn::Single(
                client.get_connection_manager_with_config(config).await?,
            ))
        }
        RedisTarget::Cluster(urls) => {
            let client = redis::cluster::ClusterClient::builder(urls.iter().map(String::as_str))
                .connection_timeout(Duration::from_secs(1))
                .response_timeout(
                    spec.timeout
                        .max(Duration::from_millis(10))
                        .saturating_mul(4),
                )
                .retries(2)
                .build()?;
            Ok(Conn::Cluster(client.get_async_connection().await?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Link;

    #[test]
    fn the_link_goes_down_comes_up_and_asks_for_a_reseed_once() {
        let link = Link::default();
        assert!(!link.is_up() && !link.is_settled());
        assert!(link.settle());
        assert!(!link.settle(), "settles once");
        assert!(link.came_up());
        assert!(link.take_reseed(), "coming up means re-seeding");
        assert!(!link.take_reseed());
        assert!(!link.came_up(), "already up");
        assert!(link.went_down());
        assert!(!link.went_down(), "already down");
        assert!(!link.is_up());
        assert!(link.came_up());
        assert!(link.take_reseed());
    }
}

//! The connection to Redis (a single server, a cluster, or the master
//! that Redis Sentinel names), and its state.
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
//!
//! With `redis.sentinel`, the link also holds the master's address and
//! the sentinels it knows, and is asked to ask them again (see
//! `sentinel.rs` for when, `follow.rs` for the swap): the connection
//! manager itself reconnects to the address it was given, forever.

use super::sentinel::{self, Addr, AskError, Known};
use crate::config::{RedisSpec, RedisTarget, SentinelSpec};
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult, Value};
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
    /// With `redis.sentinel`: the master in use, as the sentinels named it
    /// and it confirmed. Pub/sub follows its changes.
    master: tokio::sync::watch::Sender<Option<Addr>>,
    /// Wakes the follower to ask the sentinels again. Asks made meanwhile
    /// fold into one: one re-ask runs at a time.
    reask_due: tokio::sync::Notify,
    /// The sentinels to ask, the last that answered first.
    pub sentinels: Known,
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

    /// The master in use (with `redis.sentinel`).
    pub fn master(&self) -> Option<Addr> {
        self.master.borrow().clone()
    }

    /// Told each change of the master.
    pub fn master_watch(&self) -> tokio::sync::watch::Receiver<Option<Addr>> {
        self.master.subscribe()
    }

    pub fn set_master(&self, at: Option<Addr>) {
        self.master.send_if_modified(|m| {
            let changed = *m != at;
            *m = at;
            changed
        });
    }

    /// Ask the sentinels where the master is (soon, in the background).
    pub fn ask_sentinels(&self) {
        self.reask_due.notify_one();
    }

    /// Resolves once the sentinels are to be asked again.
    pub async fn sentinels_asked(&self) {
        self.reask_due.notified().await;
    }
}

/// Why no connection was made. Only error kinds are shown.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{:?} error", .0.kind())]
    Redis(#[from] RedisError),
    #[error(transparent)]
    Sentinel(#[from] AskError),
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

/// The deadline of one answer: `redis.timeout` four times over (a
/// patient call's second attempt).
fn response_timeout(spec: &RedisSpec) -> Duration {
    spec.timeout
        .max(Duration::from_millis(10))
        .saturating_mul(4)
}

/// A connection to the configured single Redis, cluster, or the master the
/// sentinels name (and its address).
pub async fn connect(
    spec: &RedisSpec,
    sentinels: &Known,
) -> Result<(Conn, Option<Addr>), ConnectError> {
    match &spec.target {
        RedisTarget::Single(url) => Ok((Conn::Single(manager(url.as_str(), spec).await?), None)),
        RedisTarget::Cluster(urls) => {
            let client = redis::cluster::ClusterClient::builder(urls.iter().map(String::as_str))
                .connection_timeout(Duration::from_secs(1))
                .response_timeout(response_timeout(spec))
                .retries(2)
                .build()?;
            Ok((Conn::Cluster(client.get_async_connection().await?), None))
        }
        RedisTarget::Sentinel(s) => {
            let at = sentinel::ask_master(s, sentinels, ask_timeout(spec)).await?;
            Ok((connect_master(spec, s, &at).await?, Some(at)))
        }
    }
}

/// How long a connection may take to be made: with Sentinel, each
/// sentinel may be asked in turn first.
pub fn connect_deadline(spec: &RedisSpec) -> Duration {
    let asks = match &spec.target {
        RedisTarget::Sentinel(s) => s.nodes.len() as u32 + 1,
        _ => 0,
    };
    Duration::from_secs(2) + ask_timeout(spec).saturating_mul(asks)
}

/// How long the server in use may take to answer a probe (a PING, or
/// with Sentinel its ROLE) before it counts as unreachable.
pub fn probe_timeout(spec: &RedisSpec) -> Duration {
    spec.timeout.saturating_mul(10)
}

/// How long one sentinel, or a new master's ROLE, may take to answer.
pub fn ask_timeout(spec: &RedisSpec) -> Duration {
    spec.timeout
        .saturating_mul(20)
        .clamp(Duration::from_millis(250), Duration::from_secs(2))
}

/// A connection to the master at `at`, once it says it is one.
pub async fn connect_master(
    spec: &RedisSpec,
    s: &SentinelSpec,
    at: &Addr,
) -> Result<Conn, ConnectError> {
    let mut conn = manager(sentinel::data_node(s, at)?, spec).await?;
    sentinel::confirm_master(&mut conn, at, ask_timeout(spec)).await?;
    Ok(Conn::Single(conn))
}

/// A manager of one connection that reconnects by itself (to the same
/// address, whatever becomes of it).
async fn manager(
    info: impl IntoConnectionInfo,
    spec: &RedisSpec,
) -> RedisResult<ConnectionManager> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(1))
        .set_response_timeout(response_timeout(spec))
        .set_number_of_retries(2)
        .set_max_delay(1000);
    redis::Client::open(info)?
        .get_connection_manager_with_config(config)
        .await
}

#[cfg(test)]
mod tests {
    use super::{Addr, Link};
    use std::time::Duration;

    #[tokio::test]
    async fn asks_to_ask_the_sentinels_fold_into_one_and_a_move_is_told_once() {
        let link = Link::default();
        for _ in 0..3 {
            link.ask_sentinels();
        }
        let once = tokio::time::timeout(Duration::from_secs(1), link.sentinels_asked()).await;
        assert!(once.is_ok(), "asked");
        let twice = tokio::time::timeout(Duration::from_millis(20), link.sentinels_asked()).await;
        assert!(twice.is_err(), "three asks meanwhile are one re-ask");

        let mut moved = link.master_watch();
        let at = |port| Addr {
            host: "10.0.0.1".into(),
            port,
        };
        link.set_master(Some(at(6379)));
        assert!(moved.has_changed().unwrap_or(false));
        assert_eq!(moved.borrow_and_update().clone(), Some(at(6379)));
        link.set_master(Some(at(6379)));
        assert!(
            !moved.has_changed().unwrap_or(true),
            "the same master: no move"
        );
        link.set_master(Some(at(6380)));
        assert!(moved.has_changed().unwrap_or(false), "another: a move");
        assert_eq!(link.master(), Some(at(6380)));
    }

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

//! The shared affinity table in Redis, with a local cache in front.
//!
//! Layout (compact: see `benches/RESULTS.md` for the bytes per session):
//! - Sessions live in `buckets` hashes, `<prefix>b:<n>`, chosen by the id:
//!   field = id (16 raw bytes), value = `upstream, created, last seen, requests,
//!   errors` separated by tabs (times in ms since the epoch). Small hashes
//!   stay in Redis's compact encoding.
//! - Each upstream has an index set `<prefix>i:<upstream>` of its session
//!   ids (raw bytes): listing by upstream and counting need no scan.
//! - Expiry is ours: a sweeper walks a slice of the buckets every sync and
//!   removes sessions not seen for `ttl` (plus the renewal margin), taking
//!   them out of the index too. Renewals (last seen, counters) are batched
//!   and written at most once per `ttl / 20` per session.
//! - A hit in the local cache needs no Redis call. A miss reads one field.
//! - A session's first request claims its upstream atomically (a script on
//!   its bucket: keep the existing pin, else set ours); the loser adopts the
//!   winner's. A failover re-pin is a compare-and-set script that publishes
//!   the change. Admin pins, deletes and drains publish too; every edge drops
//!   the cached entry on the message, and `local_ttl` bounds staleness if a
//!   message is lost. Scripts touch one key, so they work on Redis Cluster;
//!   the index is updated next to them.
//! - Every call has `timeout`. When Redis fails, the store says it is
//!   degraded (new sessions are placed by consistent hashing, so edges still
//!   mostly agree) and keeps the pins it makes locally. Once Redis is back
//!   (or pub/sub resubscribes), every cached pin is written back with claim
//!   semantics, never overwriting another edge's, and the pin Redis then
//!   holds is adopted: lost Redis data and missed messages both heal.
//!
//! Nothing here logs or displays the Redis URL: it may hold a password.

use super::store::{
    now_ms, LiveDuration, LocalStore, LookupSource, SessionInfo, SessionRecord, SessionStore,
};
use super::SessionId;
use crate::config::{RedisSpec, RedisTarget};
use crate::metrics::Metrics;
use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use futures::StreamExt;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncCommands, Cmd, Pipeline, RedisFuture, RedisResult, Script, Value};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Claim: keep the pin in force (returned), or set ours (returns nil).
const CLAIM: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then return cur end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return false
";

/// Compare-and-set: replace the value only if its upstream is still ARGV[2]
/// (or the session is gone); publish. Returns {moved, value in force}.
const REPIN: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and string.match(cur, '^[^\t]*') ~= ARGV[2] then return {0, cur} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return {1, ARGV[3]}
";

/// Admin pin: move to upstream ARGV[2] keeping the rest of the record (or
/// ARGV[3] as a new record), with metadata ARGV[6] unless empty; publish.
/// Returns the old value or nil.
const PIN: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local value = ARGV[3]
if cur then
  local rest = string.match(cur, '^[^\t]*(\t.*)$')
  if rest then value = ARGV[2] .. rest end
end
if ARGV[6] ~= '' then
  local base = string.match(value, '^([^\t]*\t[^\t]*\t[^\t]*\t[^\t]*\t[^\t]*)')
  value = (base or value) .. '\t' .. ARGV[6]
end
redis.call('HSET', KEYS[1], ARGV[1], value)
redis.call('PUBLISH', ARGV[4], ARGV[5])
return cur or false
";

/// Forget: delete and publish. Returns the old value or nil.
const FORGET: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return cur or false
";

/// Renewal: set last seen ARGV[3] and add counter deltas, if the session is
/// still on upstream ARGV[2]. Returns 1 done, 0 missing, 2 moved elsewhere.
const TOUCH: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local up, c, l, r, e, rest = string.match(cur, '^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)(.*)$')
if not up then return 0 end
if up ~= ARGV[2] then return 2 end
redis.call('HSET', KEYS[1], ARGV[1], up .. '\t' .. c .. '\t' .. ARGV[3] .. '\t' .. (tonumber(r) + tonumber(ARGV[4])) .. '\t' .. (tonumber(e) + tonumber(ARGV[5])) .. rest)
return 1
";

/// Sweep one bucket: remove sessions last seen before ARGV[1]. Returns
/// {id, upstream, id, upstream, ...} of those removed.
const SWEEP: &str = r"
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local up, l = string.match(all[i + 1], '^([^\t]*)\t[^\t]*\t([^\t]*)')
  if (not l) or tonumber(l) < tonumber(ARGV[1]) then
    redis.call('HDEL', KEYS[1], all[i])
    out[#out + 1] = all[i]
    out[#out + 1] = up or ''
  end
end
return out
";

/// A session's record as stored in its bucket.
struct Stored {
    upstream: String,
    created_ms: u64,
    last_seen_ms: u64,
    requests: u64,
    errors: u64,
    /// What an admin `PUT` attached (a serialized JSON object).
    metadata: Option<String>,
}

impl Stored {
    /// The stored value of a new session.
    fn fresh(upstream: &str, now: u64) -> String {
        format!("{upstream}\t{now}\t{now}\t0\t0")
    }

    fn parse(value: &str) -> Option<Stored> {
        let mut parts = value.split('\t');
        let upstream = parts.next()?.to_string();
        let mut num = || {
            parts
                .next()
                .and_then(|p| p.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let (created_ms, last_seen_ms, requests, errors) = (num(), num(), num(), num());
        let metadata = parts.next().map(str::to_string);
        Some(Stored {
            upstream,
            created_ms,
            last_seen_ms,
            requests,
            errors,
            metadata,
        })
    }
}

/// A connection to a single Redis (reconnecting by itself) or to a cluster.
#[derive(Clone)]
enum Conn {
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

pub struct RedisStore {
    local: LocalStore,
    /// The settings in force; a reload replaces them (see `reconfigure`).
    spec: arc_swap::ArcSwap<RedisSpec>,
    ttl: LiveDuration,
    /// Bumped when a reload names another table (target, prefix or
    /// buckets): the sync loop and the subscriber start over on it.
    table: tokio::sync::watch::Sender<u64>,
    conn: ArcSwapOption<Conn>,
    /// The last call succeeded. While false, request paths skip Redis.
    up: AtomicBool,
    /// The first connection is made and subscribed, or `connect_wait` has
    /// passed without it. Until then requests wait (see `until_settled`).
    settled: AtomicBool,
    settled_watch: tokio::sync::watch::Sender<bool>,
    /// Cached pins must be written back and re-read (after a reconnect or a
    /// resubscribe: Redis may have lost data, and messages may be missed).
    needs_reseed: AtomicBool,
    /// Pins made while Redis was unreachable, to write once it is back.
    pending: Mutex<HashMap<SessionId, Arc<str>>>,
    metrics: Arc<Metrics>,
    /// Told the set of drained upstreams whenever it is learnt from Redis.
    drain_listener: OnceLock<DrainListener>,
    /// Every upstream id of the current config (for counts).
    upstream_ids: arc_swap::ArcSwap<Vec<Arc<str>>>,
    /// Sessions per upstream, as the index sets in Redis last said.
    shared_counts: arc_swap::ArcSwap<HashMap<Arc<str>, u64>>,
    /// Where the sweeper goes on.
    sweep_cursor: std::sync::atomic::AtomicU32,
    claim: Script,
    repin: Script,
    pin: Script,
    forget: Script,
    touch: Script,
    sweep: Script,
}

/// The pub/sub channel of a table's invalidations.
fn pins_channel(prefix: &str) -> String {
    format!("{prefix}pins")
}

/// Called with the set of drained upstream ids read from Redis.
pub type DrainListener = Box<dyn Fn(&HashSet<String>) + Send + Sync>;

impl RedisStore {
    pub fn new(spec: RedisSpec, ttl: Duration, metrics: Arc<Metrics>) -> RedisStore {
        RedisStore {
            local: LocalStore::front_cache(spec.local_cache_size, ttl, spec.local_ttl),
            spec: arc_swap::ArcSwap::from_pointee(spec),
            ttl: LiveDuration::new(ttl),
            table: tokio::sync::watch::Sender::new(0),
            conn: ArcSwapOption::empty(),
            up: AtomicBool::new(false),
            settled: AtomicBool::new(false),
            settled_watch: tokio::sync::watch::Sender::new(false),
            needs_reseed: AtomicBool::new(false),
            pending: Mutex::new(HashMap::new()),
            metrics,
            drain_listener: OnceLock::new(),
            upstream_ids: arc_swap::ArcSwap::from_pointee(Vec::new()),
            shared_counts: arc_swap::ArcSwap::from_pointee(HashMap::new()),
            sweep_cursor: std::sync::atomic::AtomicU32::new(fastrand::u32(..)),
            claim: Script::new(CLAIM),
            repin: Script::new(REPIN),
            pin: Script::new(PIN),
            forget: Script::new(FORGET),
            touch: Script::new(TOUCH),
            sweep: Script::new(SWEEP),
        }
    }

    /// Payload of the message that says the drained set changed.
    const DRAINS_CHANGED: &'static str = "drains";

    /// The settings in force.
    fn spec(&self) -> Arc<RedisSpec> {
        self.spec.load_full()
    }

    /// Where invalidations are published.
    fn channel(&self) -> String {
        pins_channel(&self.spec.load().prefix)
    }

    /// Apply a reloaded `redis` section (its `local_cache_size` is fixed at
    /// start). Timeouts, batching and `local_ttl` apply at once. Another
    /// target, prefix or bucket count is another table: requests skip Redis
    /// (as in an outage) until it is connected, and it is then seeded with
    /// every pin this edge has cached. Sessions that only the old table
    /// knew are not carried over.
    pub fn reconfigure(&self, spec: RedisSpec) {
        let old = self.spec();
        let spec = RedisSpec {
            local_cache_size: old.local_cache_size,
            ..spec
        };
        self.local.set_refresh(spec.local_ttl);
        let new_table = !spec.same_table(&old);
        self.spec.store(Arc::new(spec));
        if new_table {
            log::warn!("redis: another table (target, prefix or buckets changed): connecting to it; it will be seeded with the pins cached here");
            self.up.store(false, Ordering::Relaxed);
            self.table.send_modify(|n| *n += 1);
        }
    }

    fn drains_key(&self) -> String {
        format!("{}draining", self.spec.load().prefix)
    }

    /// Call `listener` with the drained upstreams each time they are read.
    pub fn on_drains(&self, listener: DrainListener) {
        if self.drain_listener.set(listener).is_err() {
            log::error!("drain listener set twice");
        }
    }

    /// Read the shared drained set and hand it to the listener.
    async fn refresh_drains(&self) {
        let Some(mut conn) = self.conn() else { return };
        if let Some(set) = self
            .call(
                "drains",
                conn.smembers::<_, HashSet<String>>(self.drains_key()),
            )
            .await
        {
            if let Some(listener) = self.drain_listener.get() {
                listener(&set);
            }
        }
    }

    /// The bucket hash that holds `id`.
    fn bucket(&self, id: SessionId) -> String {
        self.bucket_key((id.0 >> 96) as u32 % self.spec.load().buckets.max(1))
    }

    fn bucket_key(&self, n: u32) -> String {
        format!("{}b:{n}", self.spec.load().prefix)
    }

    fn index_key(&self, upstream: &str) -> String {
        format!("{}i:{upstream}", self.spec.load().prefix)
    }

    /// The upstream ids whose sessions are counted.
    pub fn set_upstreams(&self, ids: Vec<Arc<str>>) {
        self.upstream_ids.store(Arc::new(ids));
    }

    /// Renewals of one session are at least this far apart.
    fn renew_every_ms(&self) -> u64 {
        (self.ttl_ms() / 20).max(1)
    }

    /// Move `id` in the index from one upstream's set to another's.
    async fn reindex(&self, id: SessionId, from: Option<&str>, to: Option<&str>) {
        if from == to {
            return;
        }
        let Some(mut conn) = self.conn() else { return };
        let field = id.to_bytes();
        if let Some(from) = from {
            self.call(
                "index",
                conn.srem::<_, _, i64>(self.index_key(from), &field[..]),
            )
            .await;
        }
        if let Some(to) = to {
            self.call(
                "index",
                conn.sadd::<_, _, i64>(self.index_key(to), &field[..]),
            )
            .await;
        }
    }

    /// Claim `id` for `upstream` in Redis; the pin in force, if Redis answered.
    async fn claim_shared(
        &self,
        id: SessionId,
        upstream: &str,
        created_ms: u64,
    ) -> Option<Arc<SessionRecord>> {
        let mut conn = self.conn()?;
        let mut inv = self.claim.key(self.bucket(id));
        inv.arg(&id.to_bytes()[..])
            .arg(Stored::fresh(upstream, created_ms));
        let existing: Option<String> = self.call("claim", inv.invoke_async(&mut conn)).await?;
        match existing.as_deref().and_then(Stored::parse) {
            Some(s) => Some(
                self.local
                    .put(id, Arc::from(s.upstream.as_str()), s.created_ms),
            ),
            None => {
                self.reindex(id, None, Some(upstream)).await;
                Some(self.local.put(id, Arc::from(upstream), created_ms))
            }
        }
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.get().as_millis() as u64
    }

    /// A connection, unless Redis is known to be unreachable.
    fn conn(&self) -> Option<Conn> {
        if !self.up.load(Ordering::Relaxed) {
            return None;
        }
        self.conn.load_full().map(|c| (*c).clone())
    }

    /// Run one Redis call with the timeout, counting errors and latency.
    async fn call<T>(&self, what: &str, fut: impl Future<Output = RedisResult<T>>) -> Option<T> {
        self.call_within(what, self.spec.load().timeout, fut).await
    }

    /// The longer deadline of a background batch.
    fn batch_timeout(&self) -> Duration {
        self.spec.load().timeout.saturating_mul(20)
    }

    async fn call_within<T>(
        &self,
        what: &str,
        timeout: Duration,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Option<T> {
        let start = Instant::now();
        let result = tokio::time::timeout(timeout, fut).await;
        self.metrics
            .redis_duration
            .observe(start.elapsed().as_secs_f64());
        let failure = match result {
            Ok(Ok(v)) => return Some(v),
            Ok(Err(e)) => format!("{:?} error", e.kind()),
            Err(_) => format!("timeout after {timeout:?}"),
        };
        self.metrics.redis_errors.inc();
        if self.up.swap(false, Ordering::Relaxed) {
            log::warn!("redis {what} failed ({failure}): serving from the local cache and consistent hashing until it is back");
        }
        None
    }

    /// Remember a pin to write once Redis is back. Bounded by the local
    /// cache's size; the cache itself is written back on reconnect too.
    fn remember_pending(&self, id: SessionId, upstream: &Arc<str>) {
        if let Ok(mut p) = self.pending.lock() {
            if (p.len() as u64) < self.spec.load().local_cache_size || p.contains_key(&id) {
                p.insert(id, upstream.clone());
            }
        }
    }

    /// The table is known (connected, or given up on): requests may place.
    fn settle(&self, connected: bool) {
        if self.settled.swap(true, Ordering::Relaxed) {
            return;
        }
        self.settled_watch.send_replace(true);
        if connected {
            log::info!("redis connected and subscribed: the shared table is in use");
        } else {
            log::error!(
                "redis not reachable within redis.connect_wait ({:?}): serving DEGRADED, new sessions placed by consistent hashing until it is",
                self.spec.load().connect_wait
            );
        }
    }

    /// Connect (retrying until shutdown) and keep the store in sync: pub/sub
    /// invalidations, batched TTL renewals, and pins made during an outage.
    /// A reload that names another table starts this over on it. The first
    /// connection is tried at once; the store is settled when it is up and
    /// subscribed, or after `connect_wait` without it.
    pub async fn run(self: Arc<Self>, mut shutdown: pingora_core::server::ShutdownWatch) {
        let mut table = self.table.subscribe();
        let give_up = {
            let store = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(store.spec.load().connect_wait).await;
                store.settle(false);
            })
        };
        loop {
            let generation = *table.borrow_and_update();
            let Some(conn) = self.connect_until_up(&mut shutdown).await else {
                give_up.abort();
                return;
            };
            self.conn.store(Some(Arc::new(conn)));
            let (subscribed, on_subscribed) = tokio::sync::oneshot::channel();
            let subscriber = tokio::spawn(self.clone().subscribe(self.spec(), subscribed));
            // Up now, not one sync tick later.
            self.probe(generation).await;
            if !self.settled.load(Ordering::Relaxed) && self.up.load(Ordering::Relaxed) {
                // The timer settles the store if this never comes.
                let wait = self.spec.load().connect_wait;
                if let Ok(Ok(())) = tokio::time::timeout(wait, on_subscribed).await {
                    self.settle(true);
                }
            }
            let shut_down = self.sync_until(&mut shutdown, &mut table, generation).await;
            subscriber.abort();
            if shut_down {
                return;
            }
        }
    }

    /// A connection to the table now configured; `None` at shutdown.
    async fn connect_until_up(
        &self,
        shutdown: &mut pingora_core::server::ShutdownWatch,
    ) -> Option<Conn> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match tokio::time::timeout(Duration::from_secs(2), connect(&self.spec())).await {
                Ok(Ok(conn)) => return Some(conn),
                Ok(Err(e)) => log::warn!("redis unreachable ({:?} error); retrying", e.kind()),
                Err(_) => log::warn!("redis connect timed out; retrying"),
            }
            tokio::select! {
                _ = shutdown.changed() => return None,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// Before a graceful upgrade's new process takes the sockets (and before
    /// Pingora's runtimes exist): wait, up to `connect_wait`, until Redis
    /// answers a PING, so that the old process serves on meanwhile. True if
    /// it did.
    pub fn reachable_before_start(spec: &RedisSpec) -> bool {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return false;
        };
        rt.block_on(async {
            let deadline = tokio::time::Instant::now() + spec.connect_wait;
            loop {
                let ping = async {
                    let mut conn = connect(spec).await?;
                    redis::cmd("PING").query_async::<String>(&mut conn).await
                };
                if let Ok(Ok(_)) = tokio::time::timeout_at(deadline, ping).await {
                    return true;
                }
                if tokio::time::Instant::now() >= deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }

    /// Keep the connected table in sync until shutdown (true) or until a
    /// reload names another table (false).
    async fn sync_until(
        &self,
        shutdown: &mut pingora_core::server::ShutdownWatch,
        table: &mut tokio::sync::watch::Receiver<u64>,
        generation: u64,
    ) -> bool {
        let mut last_sync = Instant::now();
        loop {
            let tick = self.spec().sync_interval.min(Duration::from_secs(1));
            tokio::select! {
                _ = shutdown.changed() => {
                    self.sync().await;
                    return true;
                }
                _ = table.changed() => return false,
                _ = tokio::time::sleep(tick) => {}
            }
            if !self.up.load(Ordering::Relaxed) {
                self.probe(generation).await;
            }
            if self.up.load(Ordering::Relaxed) {
                if self.needs_reseed.swap(false, Ordering::Relaxed) {
                    self.reseed().await;
                }
                self.write_pending().await;
                if last_sync.elapsed() >= self.spec().sync_interval {
                    self.refresh_drains().await;
                    self.sync().await;
                    last_sync = Instant::now();
                }
            }
        }
    }

    /// Is Redis back? (The connection manager reconnects by itself.) Only
    /// while the connection is to the table of `generation`.
    async fn probe(&self, generation: u64) {
        let Some(cm) = self.conn.load_full() else {
            return;
        };
        let mut conn = (*cm).clone();
        let pong: RedisResult<String> = tokio::time::timeout(
            self.spec.load().timeout.saturating_mul(10),
            redis::cmd("PING").query_async(&mut conn),
        )
        .await
        .unwrap_or_else(|_| Err((redis::ErrorKind::IoError, "timeout").into()));
        if pong.is_ok()
            && *self.table.borrow() == generation
            && !self.up.swap(true, Ordering::Relaxed)
        {
            log::info!("redis is reachable; writing the pins made meanwhile");
            self.needs_reseed.store(true, Ordering::Relaxed);
            self.refresh_drains().await;
        }
    }

    /// Write the pins made during an outage, never overwriting another's.
    async fn write_pending(&self) {
        let pending: Vec<(SessionId, Arc<str>)> = match self.pending.lock() {
            Ok(mut p) if !p.is_empty() => p.drain().collect(),
            _ => return,
        };
        for (i, (id, upstream)) in pending.iter().enumerate() {
            if self.claim_shared(*id, upstream, now_ms()).await.is_none() {
                // Down again: keep what is left for the next round.
                for (id, up) in &pending[i..] {
                    self.remember_pending(*id, up);
                }
                return;
            }
        }
    }

    /// Write every cached pin back with claim semantics and adopt what Redis
    /// holds: Redis may have lost data (a restart without persistence), and
    /// invalidations may have been missed. Never overwrites another's pin.
    async fn reseed(&self) {
        for (id, record) in self.local.records() {
            if self
                .claim_shared(id, &record.upstream, record.created_ms)
                .await
                .is_none()
            {
                self.needs_reseed.store(true, Ordering::Relaxed);
                return;
            }
        }
    }

    /// Write last-seen times and counters of sessions used since their
    /// last renewal (at most once per `ttl / 20` each), sweep a slice of the
    /// buckets for expired sessions, and refresh the per-upstream counts.
    async fn sync(&self) {
        let every = self.renew_every_ms();
        let due: Vec<(SessionId, Arc<SessionRecord>)> = self
            .local
            .records()
            .into_iter()
            .filter(|(_, r)| r.needs_renewal(every))
            .collect();
        for chunk in due.chunks(self.spec.load().batch_size.max(1)) {
            let Some(conn) = self.conn() else { return };
            let calls = chunk.iter().map(|(id, r)| {
                let mut conn = conn.clone();
                let (dr, de) = r.take_deltas();
                let mut inv = self.touch.key(self.bucket(*id));
                inv.arg(&id.to_bytes()[..])
                    .arg(&*r.upstream)
                    .arg(r.last_seen_ms())
                    .arg(dr)
                    .arg(de);
                async move { inv.invoke_async::<i64>(&mut conn).await }
            });
            let all = async {
                futures::future::join_all(calls)
                    .await
                    .into_iter()
                    .collect::<RedisResult<Vec<i64>>>()
            };
            let Some(results) = self.call_within("renew", self.batch_timeout(), all).await else {
                continue;
            };
            for ((id, r), found) in chunk.iter().zip(results) {
                r.mark_renewed();
                if found == 0 {
                    // Gone from Redis (lost, or swept meanwhile): write it back.
                    self.remember_pending(*id, &r.upstream);
                }
            }
        }
        self.sweep_some().await;
        self.refresh_counts().await;
    }

    /// Sweep enough buckets per sync that all are swept every `ttl / 4`.
    async fn sweep_some(&self) {
        let buckets = self.spec.load().buckets.max(1);
        let per_round = (u64::from(buckets) * self.spec.load().sync_interval.as_millis() as u64
            / (self.ttl_ms() / 4).max(1))
        .clamp(1, u64::from(buckets)) as u32;
        // Seen within ttl, plus the renewal margin.
        let margin = self.renew_every_ms() + self.spec.load().sync_interval.as_millis() as u64;
        let cutoff = now_ms().saturating_sub(self.ttl_ms() + margin);
        for _ in 0..per_round {
            let n = self.sweep_cursor.fetch_add(1, Ordering::Relaxed) % buckets;
            let Some(mut conn) = self.conn() else { return };
            let mut inv = self.sweep.key(self.bucket_key(n));
            inv.arg(cutoff);
            let Some(removed) = self
                .call("sweep", inv.invoke_async::<Vec<Vec<u8>>>(&mut conn))
                .await
            else {
                return;
            };
            for pair in removed.chunks(2) {
                if let [id, upstream] = pair {
                    let upstream = String::from_utf8_lossy(upstream);
                    self.call(
                        "index",
                        conn.srem::<_, _, i64>(self.index_key(&upstream), &id[..]),
                    )
                    .await;
                    if let Some(id) = SessionId::from_bytes(id) {
                        self.local.invalidate(id);
                    }
                }
            }
        }
    }

    /// Sessions per upstream, from the index sets.
    async fn refresh_counts(&self) {
        let ids = self.upstream_ids.load_full();
        let Some(conn) = self.conn() else { return };
        let calls = ids.iter().map(|id| {
            let mut conn = conn.clone();
            let key = self.index_key(id);
            async move { conn.scard::<_, u64>(key).await }
        });
        let all = async {
            futures::future::join_all(calls)
                .await
                .into_iter()
                .collect::<RedisResult<Vec<u64>>>()
        };
        if let Some(counts) = self.call_within("count", self.batch_timeout(), all).await {
            self.shared_counts
                .store(Arc::new(ids.iter().cloned().zip(counts).collect()));
        }
    }

    /// One stored session as the admin API shows it.
    async fn info(&self, conn: &mut Conn, id: SessionId) -> Option<SessionInfo> {
        let value: Option<String> = self
            .call("get", conn.hget(self.bucket(id), &id.to_bytes()[..]))
            .await?;
        let s = Stored::parse(value.as_deref()?)?;
        let cached = self.local.get(id).await;
        let last_seen = s
            .last_seen_ms
            .max(cached.as_ref().map_or(0, |c| c.last_seen_unix_ms));
        let requests = s.requests.max(cached.as_ref().map_or(0, |c| c.requests));
        let errors = s.errors.max(cached.as_ref().map_or(0, |c| c.errors));
        Some(SessionInfo {
            id: id.to_hex(),
            upstream: s.upstream,
            created_unix_ms: s.created_ms,
            last_seen_unix_ms: last_seen,
            requests,
            errors,
            ttl_left_seconds: (last_seen + self.ttl_ms()).saturating_sub(now_ms()) / 1000,
            metadata: s.metadata.and_then(|m| serde_json::from_str(&m).ok()),
        })
    }

    /// Drop cached pins that another edge changed. Pub/sub messages reach
    /// every node of a cluster, so any node will do.
    async fn subscribe(
        self: Arc<Self>,
        spec: Arc<RedisSpec>,
        subscribed: tokio::sync::oneshot::Sender<()>,
    ) {
        let urls = spec.target.pubsub_urls();
        let mut subscribed = Some(subscribed);
        for attempt in 0usize.. {
            let url = urls[attempt % urls.len().max(1)];
            match redis::Client::open(url) {
                Ok(client) => match client.get_async_pubsub().await {
                    Ok(mut pubsub) => match pubsub.subscribe(pins_channel(&spec.prefix)).await {
                        Ok(()) => {
                            // Messages may have been missed while unsubscribed.
                            self.needs_reseed.store(true, Ordering::Relaxed);
                            if let Some(tx) = subscribed.take() {
                                let _ = tx.send(());
                            }
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
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// A connection to the configured Single Redis or Cluster.
async fn connect(spec: &RedisSpec) -> RedisResult<Conn> {
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

#[async_trait]
impl SessionStore for RedisStore {
    fn lookup_local(&self, id: SessionId) -> Option<Arc<SessionRecord>> {
        self.local.lookup_local(id)
    }

    fn apply_ttl(&self, ttl: Duration) {
        self.ttl.set(ttl);
        self.local.set_ttl(ttl);
    }

    async fn lookup(&self, id: SessionId) -> Option<(Arc<SessionRecord>, LookupSource)> {
        if let Some(r) = self.local.lookup_local(id) {
            return Some((r, LookupSource::Local));
        }
        let mut conn = self.conn()?;
        let value: Option<String> = self
            .call("lookup", conn.hget(self.bucket(id), &id.to_bytes()[..]))
            .await?;
        let s = Stored::parse(value.as_deref()?)?;
        Some((
            self.local
                .put(id, Arc::from(s.upstream.as_str()), s.created_ms),
            LookupSource::Shared,
        ))
    }

    async fn claim(&self, id: SessionId, upstream: Arc<str>) -> Arc<SessionRecord> {
        if let Some(record) = self.claim_shared(id, &upstream, now_ms()).await {
            return record;
        }
        self.remember_pending(id, &upstream);
        self.local.claim(id, upstream).await
    }

    async fn repin(&self, id: SessionId, from: &str, to: Arc<str>) -> Arc<SessionRecord> {
        if let Some(mut conn) = self.conn() {
            let mut inv = self.repin.key(self.bucket(id));
            inv.arg(&id.to_bytes()[..])
                .arg(from)
                .arg(Stored::fresh(&to, now_ms()))
                .arg(self.channel())
                .arg(id.to_hex());
            if let Some((moved, value)) = self
                .call("repin", inv.invoke_async::<(i64, String)>(&mut conn))
                .await
            {
                if let Some(s) = Stored::parse(&value) {
                    if moved == 1 {
                        self.reindex(id, Some(from), Some(&s.upstream)).await;
                    }
                    return self
                        .local
                        .put(id, Arc::from(s.upstream.as_str()), s.created_ms);
                }
            }
        }
        self.remember_pending(id, &to);
        self.local.repin(id, from, to).await
    }

    async fn set(&self, id: SessionId, upstream: Arc<str>, metadata: Option<String>) {
        if let Some(mut conn) = self.conn() {
            let mut inv = self.pin.key(self.bucket(id));
            inv.arg(&id.to_bytes()[..])
                .arg(&*upstream)
                .arg(Stored::fresh(&upstream, now_ms()))
                .arg(self.channel())
                .arg(id.to_hex())
                .arg(metadata.as_deref().unwrap_or(""));
            match self
                .call("pin", inv.invoke_async::<Option<String>>(&mut conn))
                .await
            {
                Some(old) => {
                    let old = old.as_deref().and_then(Stored::parse).map(|s| s.upstream);
                    self.reindex(id, old.as_deref(), Some(&upstream)).await;
                }
                None => self.remember_pending(id, &upstream),
            }
        }
        self.local.set(id, upstream, metadata).await;
    }

    async fn forget(&self, id: SessionId) -> bool {
        let local = self.local.forget(id).await;
        let Some(mut conn) = self.conn() else {
            return local;
        };
        let mut inv = self.forget.key(self.bucket(id));
        inv.arg(&id.to_bytes()[..])
            .arg(self.channel())
            .arg(id.to_hex());
        match self
            .call("forget", inv.invoke_async::<Option<String>>(&mut conn))
            .await
        {
            Some(Some(old)) => {
                let old = Stored::parse(&old).map(|s| s.upstream);
                self.reindex(id, old.as_deref(), None).await;
                true
            }
            Some(None) | None => local,
        }
    }

    async fn get(&self, id: SessionId) -> Option<SessionInfo> {
        // Without Redis, this edge's cached view is the best answer.
        let Some(mut conn) = self.conn() else {
            return self.local.get(id).await;
        };
        self.info(&mut conn, id).await
    }

    async fn list(&self, upstream: Option<&str>, limit: usize) -> Vec<SessionInfo> {
        let Some(mut conn) = self.conn() else {
            return self.local.list(upstream, limit).await;
        };
        let upstreams: Vec<Arc<str>> = match upstream {
            Some(u) => vec![Arc::from(u)],
            None => self.upstream_ids.load_full().to_vec(),
        };
        let mut out = Vec::new();
        for up in upstreams {
            let mut cursor = 0u64;
            loop {
                let mut scan = redis::cmd("SSCAN");
                scan.arg(self.index_key(&up))
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(100);
                let reply = scan.query_async::<(u64, Vec<Vec<u8>>)>(&mut conn);
                let Some((next, ids)) = self.call("list", reply).await else {
                    return out;
                };
                for id in ids.iter().filter_map(|i| SessionId::from_bytes(i)) {
                    if out.len() >= limit {
                        return out;
                    }
                    if let Some(info) = self.info(&mut conn, id).await {
                        out.push(info);
                    }
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        out
    }

    fn counts(&self) -> HashMap<Arc<str>, u64> {
        let shared = self.shared_counts.load_full();
        if shared.is_empty() {
            self.local.counts()
        } else {
            (*shared).clone()
        }
    }

    fn len(&self) -> u64 {
        let shared = self.shared_counts.load_full();
        if shared.is_empty() {
            self.local.len()
        } else {
            shared.values().sum()
        }
    }

    async fn share_drain(&self, upstream: &str, on: bool) -> bool {
        let Some(mut conn) = self.conn() else {
            return false;
        };
        let mut pipe = redis::pipe();
        if on {
            pipe.sadd(self.drains_key(), upstream).ignore();
        } else {
            pipe.srem(self.drains_key(), upstream).ignore();
        }
        pipe.publish(self.channel(), Self::DRAINS_CHANGED).ignore();
        self.call("drain", pipe.query_async::<()>(&mut conn))
            .await
            .is_some()
    }

    fn degraded(&self) -> bool {
        !self.up.load(Ordering::Relaxed)
    }

    fn settled(&self) -> bool {
        self.settled.load(Ordering::Relaxed)
    }

    async fn until_settled(&self) {
        let mut settled = self.settled_watch.subscribe();
        let wait = self.spec.load().connect_wait;
        // The sync service settles within `connect_wait`; the bound here
        // holds even if it never ran.
        let _ = tokio::time::timeout(wait, settled.wait_for(|s| *s)).await;
    }

    fn describe(&self) -> serde_json::Value {
        let pending = self.pending.lock().map_or(0, |p| p.len());
        serde_json::json!({
            "configured": true,
            "mode": "redis with a local cache",
            "connected": self.up.load(Ordering::Relaxed),
            "settled": self.settled.load(Ordering::Relaxed),
            "errors": self.metrics.redis_errors.get(),
            "pending_pins": pending,
            "local_cache_entries": self.local.len(),
            "buckets": self.spec.load().buckets,
            "prefix": self.spec.load().prefix,
        })
    }
}

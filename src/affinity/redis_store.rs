//! The shared affinity table in Redis, with a local cache in front.
//!
//! - Every session is one small hash, `<prefix><id hex>` → `u` (upstream id)
//!   and `c` (created, unix ms), with the table's TTL.
//! - A hit in the local cache needs no Redis call. A miss reads the hash.
//! - A session's first request claims its upstream atomically (a script:
//!   keep the existing pin, else set ours); the loser adopts the winner's.
//! - A failover re-pin is a compare-and-set script that moves the pin only if
//!   it still names the failed upstream, and publishes the change.
//! - Admin pins and deletes publish too; every edge drops the cached entry on
//!   the message. Admin drains go to a shared set (`<prefix>draining`) and are
//!   announced the same way; every edge applies the set it reads. Cached entries also expire after `local_ttl`, which bounds
//!   staleness if a message is lost.
//! - TTL renewals are batched: every `sync_interval`, sessions used since their
//!   last renewal get one `PEXPIRE` each, `batch_size` to a pipeline.
//! - Every call has `timeout`. When Redis fails, the store says it is
//!   degraded (new sessions are placed by consistent hashing, so edges still
//!   mostly agree) and keeps the pins it makes locally. Once Redis is back
//!   (or pub/sub resubscribes), every cached pin is written back with claim
//!   semantics, never overwriting another edge's, and the pin Redis then
//!   holds is adopted: lost Redis data and missed messages both heal.
//!
//! Nothing here logs or displays the Redis URL: it may hold a password.

use super::store::{now_ms, LocalStore, LookupSource, SessionInfo, SessionRecord, SessionStore};
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

/// Claim: keep the pin in force, or set ours. Returns {upstream, created}.
const CLAIM: &str = r"
local cur = redis.call('HGET', KEYS[1], 'u')
if cur then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {cur, redis.call('HGET', KEYS[1], 'c') or ARGV[2]}
end
redis.call('HSET', KEYS[1], 'u', ARGV[1], 'c', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {ARGV[1], ARGV[2]}
";

/// Compare-and-set: move the pin from ARGV[1] to ARGV[2] only if it still
/// names ARGV[1] (or is gone); publish the change. Returns {upstream, created}.
const REPIN: &str = r"
local cur = redis.call('HGET', KEYS[1], 'u')
if cur and cur ~= ARGV[1] then
  return {cur, redis.call('HGET', KEYS[1], 'c') or ARGV[3]}
end
redis.call('HSET', KEYS[1], 'u', ARGV[2])
redis.call('HSETNX', KEYS[1], 'c', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return {ARGV[2], redis.call('HGET', KEYS[1], 'c')}
";

/// Admin pin: set unconditionally and publish.
const PIN: &str = r"
redis.call('HSET', KEYS[1], 'u', ARGV[1])
redis.call('HSETNX', KEYS[1], 'c', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
";

/// Forget: delete and publish.
const FORGET: &str = r"
local n = redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return n
";

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
    spec: RedisSpec,
    ttl: Duration,
    channel: String,
    conn: ArcSwapOption<Conn>,
    /// The last call succeeded. While false, request paths skip Redis.
    up: AtomicBool,
    /// Cached pins must be written back and re-read (after a reconnect or a
    /// resubscribe: Redis may have lost data, and messages may be missed).
    needs_reseed: AtomicBool,
    /// Pins made while Redis was unreachable, to write once it is back.
    pending: Mutex<HashMap<SessionId, Arc<str>>>,
    metrics: Arc<Metrics>,
    /// Told the set of drained upstreams whenever it is learnt from Redis.
    drain_listener: OnceLock<DrainListener>,
    claim: Script,
    repin: Script,
    pin: Script,
    forget: Script,
}

type Pin = (String, u64);

/// Called with the set of drained upstream ids read from Redis.
pub type DrainListener = Box<dyn Fn(&HashSet<String>) + Send + Sync>;

impl RedisStore {
    pub fn new(spec: RedisSpec, ttl: Duration, metrics: Arc<Metrics>) -> RedisStore {
        RedisStore {
            local: LocalStore::front_cache(spec.local_cache_size, ttl, spec.local_ttl),
            channel: format!("{}pins", spec.prefix),
            spec,
            ttl,
            conn: ArcSwapOption::empty(),
            up: AtomicBool::new(false),
            needs_reseed: AtomicBool::new(false),
            pending: Mutex::new(HashMap::new()),
            metrics,
            drain_listener: OnceLock::new(),
            claim: Script::new(CLAIM),
            repin: Script::new(REPIN),
            pin: Script::new(PIN),
            forget: Script::new(FORGET),
        }
    }

    /// Payload of the message that says the drained set changed.
    const DRAINS_CHANGED: &'static str = "drains";

    fn drains_key(&self) -> String {
        format!("{}draining", self.spec.prefix)
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

    fn key(&self, id: SessionId) -> String {
        format!("{}{}", self.spec.prefix, id.to_hex())
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis() as u64
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
        self.call_within(what, self.spec.timeout, fut).await
    }

    /// The longer deadline of a background batch.
    fn batch_timeout(&self) -> Duration {
        self.spec.timeout * 20
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
            if (p.len() as u64) < self.spec.local_cache_size || p.contains_key(&id) {
                p.insert(id, upstream.clone());
            }
        }
    }

    fn adopt(&self, id: SessionId, (upstream, created): Pin) -> Arc<SessionRecord> {
        self.local.put(id, Arc::from(upstream.as_str()), created)
    }

    /// Connect (retrying until shutdown) and keep the store in sync: pub/sub
    /// invalidations, batched TTL renewals, and pins made during an outage.
    pub async fn run(self: Arc<Self>, mut shutdown: pingora_core::server::ShutdownWatch) {
        loop {
            match tokio::time::timeout(Duration::from_secs(2), self.connect()).await {
                Ok(Ok(conn)) => {
                    self.conn.store(Some(Arc::new(conn)));
                    break;
                }
                Ok(Err(e)) => log::warn!("redis unreachable ({:?} error); retrying", e.kind()),
                Err(_) => log::warn!("redis connect timed out; retrying"),
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        tokio::spawn(self.clone().subscribe());
        let mut tick = tokio::time::interval(self.spec.sync_interval.min(Duration::from_secs(1)));
        let mut last_sync = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    self.sync().await;
                    return;
                }
                _ = tick.tick() => {}
            }
            if !self.up.load(Ordering::Relaxed) {
                self.probe().await;
            }
            if self.up.load(Ordering::Relaxed) {
                if self.needs_reseed.swap(false, Ordering::Relaxed) {
                    self.reseed().await;
                }
                self.write_pending().await;
                if last_sync.elapsed() >= self.spec.sync_interval {
                    self.refresh_drains().await;
                    self.sync().await;
                    last_sync = Instant::now();
                }
            }
        }
    }

    async fn connect(&self) -> RedisResult<Conn> {
        match &self.spec.target {
            RedisTarget::Single(url) => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Duration::from_secs(1))
                    .set_response_timeout(self.spec.timeout.max(Duration::from_millis(10)) * 4)
                    .set_number_of_retries(2)
                    .set_max_delay(1000);
                let client = redis::Client::open(url.as_str())?;
                Ok(Conn::Single(
                    client.get_connection_manager_with_config(config).await?,
                ))
            }
            RedisTarget::Cluster(urls) => {
                let client =
                    redis::cluster::ClusterClient::builder(urls.iter().map(String::as_str))
                        .connection_timeout(Duration::from_secs(1))
                        .response_timeout(self.spec.timeout.max(Duration::from_millis(10)) * 4)
                        .retries(2)
                        .build()?;
                Ok(Conn::Cluster(client.get_async_connection().await?))
            }
        }
    }

    /// Is Redis back? (The connection manager reconnects by itself.)
    async fn probe(&self) {
        let Some(cm) = self.conn.load_full() else {
            return;
        };
        let mut conn = (*cm).clone();
        let pong: RedisResult<String> = tokio::time::timeout(
            self.spec.timeout * 10,
            redis::cmd("PING").query_async(&mut conn),
        )
        .await
        .unwrap_or_else(|_| Err((redis::ErrorKind::IoError, "timeout").into()));
        if pong.is_ok() && !self.up.swap(true, Ordering::Relaxed) {
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
            let Some(mut conn) = self.conn() else {
                // Down again: keep what is left for the next round.
                for (id, up) in &pending[i..] {
                    self.remember_pending(*id, up);
                }
                return;
            };
            let mut inv = self.claim.key(self.key(*id));
            inv.arg(&**upstream).arg(now_ms()).arg(self.ttl_ms());
            if let Some(pin) = self.call("claim", inv.invoke_async::<Pin>(&mut conn)).await {
                self.adopt(*id, pin);
            } else {
                self.remember_pending(*id, upstream);
            }
        }
    }

    /// Write every cached pin back with claim semantics and adopt what Redis
    /// holds: Redis may have lost data (a restart without persistence), and
    /// invalidations may have been missed. Never overwrites another's pin.
    async fn reseed(&self) {
        let records = self.local.records();
        for chunk in records.chunks(self.spec.batch_size.max(1)) {
            let Some(conn) = self.conn() else {
                self.needs_reseed.store(true, Ordering::Relaxed);
                return;
            };
            let calls = chunk.iter().map(|(id, r)| {
                let mut conn = conn.clone();
                let mut inv = self.claim.key(self.key(*id));
                inv.arg(&*r.upstream).arg(r.created_ms).arg(self.ttl_ms());
                async move { inv.invoke_async::<Pin>(&mut conn).await }
            });
            let all = async {
                futures::future::join_all(calls)
                    .await
                    .into_iter()
                    .collect::<RedisResult<Vec<Pin>>>()
            };
            match self.call_within("reseed", self.batch_timeout(), all).await {
                Some(pins) => {
                    for ((id, _), pin) in chunk.iter().zip(pins) {
                        self.adopt(*id, pin);
                    }
                }
                None => {
                    self.needs_reseed.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
    }

    /// Renew the TTL of sessions used since their last renewal; a session
    /// gone from Redis (lost, or expired meanwhile) is written back.
    async fn sync(&self) {
        let due: Vec<(SessionId, Arc<SessionRecord>)> = self
            .local
            .records()
            .into_iter()
            .filter(|(_, r)| r.needs_renewal())
            .collect();
        let ttl = self.ttl_ms() as i64;
        for chunk in due.chunks(self.spec.batch_size.max(1)) {
            let Some(mut conn) = self.conn() else { return };
            let renewed: Option<Vec<i64>> = match &mut conn {
                Conn::Single(_) => {
                    let mut pipe = redis::pipe();
                    for (id, _) in chunk {
                        pipe.pexpire(self.key(*id), ttl);
                    }
                    let fut = pipe.query_async::<Vec<i64>>(&mut conn);
                    self.call_within("renew", self.batch_timeout(), fut).await
                }
                // Keys of one batch sit on several nodes: one command each, concurrently.
                Conn::Cluster(c) => {
                    let calls = chunk.iter().map(|(id, _)| {
                        let mut c = c.clone();
                        let key = self.key(*id);
                        async move { c.pexpire::<_, i64>(key, ttl).await }
                    });
                    let all = async {
                        futures::future::join_all(calls)
                            .await
                            .into_iter()
                            .collect::<RedisResult<Vec<i64>>>()
                    };
                    self.call_within("renew", self.batch_timeout(), all).await
                }
            };
            let Some(results) = renewed else { continue };
            for ((id, r), found) in chunk.iter().zip(results) {
                r.mark_renewed();
                if found == 0 {
                    self.remember_pending(*id, &r.upstream);
                }
            }
        }
    }

    /// Drop cached pins that another edge changed. Pub/sub messages reach
    /// every node of a cluster, so any node will do.
    async fn subscribe(self: Arc<Self>) {
        let urls = self.spec.target.pubsub_urls();
        for attempt in 0usize.. {
            let url = urls[attempt % urls.len().max(1)];
            match redis::Client::open(url) {
                Ok(client) => match client.get_async_pubsub().await {
                    Ok(mut pubsub) => match pubsub.subscribe(&self.channel).await {
                        Ok(()) => {
                            // Messages may have been missed while unsubscribed.
                            self.needs_reseed.store(true, Ordering::Relaxed);
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

#[async_trait]
impl SessionStore for RedisStore {
    fn lookup_local(&self, id: SessionId) -> Option<Arc<SessionRecord>> {
        self.local.lookup_local(id)
    }

    async fn lookup(&self, id: SessionId) -> Option<(Arc<SessionRecord>, LookupSource)> {
        if let Some(r) = self.local.lookup_local(id) {
            return Some((r, LookupSource::Local));
        }
        let mut conn = self.conn()?;
        let key = self.key(id);
        let (upstream, created): (Option<String>, Option<u64>) =
            self.call("lookup", conn.hget(&key, &["u", "c"])).await?;
        let upstream = upstream?;
        Some((
            self.adopt(id, (upstream, created.unwrap_or(0))),
            LookupSource::Shared,
        ))
    }

    async fn claim(&self, id: SessionId, upstream: Arc<str>) -> Arc<SessionRecord> {
        if let Some(mut conn) = self.conn() {
            let mut inv = self.claim.key(self.key(id));
            inv.arg(&*upstream).arg(now_ms()).arg(self.ttl_ms());
            if let Some(pin) = self.call("claim", inv.invoke_async::<Pin>(&mut conn)).await {
                return self.adopt(id, pin);
            }
        }
        self.remember_pending(id, &upstream);
        self.local.claim(id, upstream).await
    }

    async fn repin(&self, id: SessionId, from: &str, to: Arc<str>) -> Arc<SessionRecord> {
        if let Some(mut conn) = self.conn() {
            let mut inv = self.repin.key(self.key(id));
            inv.arg(from)
                .arg(&*to)
                .arg(now_ms())
                .arg(self.ttl_ms())
                .arg(&self.channel)
                .arg(id.to_hex());
            if let Some(pin) = self.call("repin", inv.invoke_async::<Pin>(&mut conn)).await {
                return self.adopt(id, pin);
            }
        }
        self.remember_pending(id, &to);
        self.local.repin(id, from, to).await
    }

    async fn set(&self, id: SessionId, upstream: Arc<str>) {
        if let Some(mut conn) = self.conn() {
            let mut inv = self.pin.key(self.key(id));
            inv.arg(&*upstream)
                .arg(now_ms())
                .arg(self.ttl_ms())
                .arg(&self.channel)
                .arg(id.to_hex());
            if self
                .call("pin", inv.invoke_async::<i64>(&mut conn))
                .await
                .is_none()
            {
                self.remember_pending(id, &upstream);
            }
        }
        self.local.set(id, upstream).await;
    }

    async fn forget(&self, id: SessionId) -> bool {
        let local = self.local.forget(id).await;
        let Some(mut conn) = self.conn() else {
            return local;
        };
        let mut inv = self.forget.key(self.key(id));
        inv.arg(&self.channel).arg(id.to_hex());
        match self
            .call("forget", inv.invoke_async::<i64>(&mut conn))
            .await
        {
            Some(n) => n > 0 || local,
            None => local,
        }
    }

    async fn get(&self, id: SessionId) -> Option<SessionInfo> {
        let cached = self.local.get(id).await;
        // Without Redis, this edge's cached view is the best answer.
        let Some(mut conn) = self.conn() else {
            return cached;
        };
        let key = self.key(id);
        let reply: Option<((Option<String>, Option<u64>), i64)> = self
            .call(
                "get",
                redis::pipe()
                    .hget(&key, &["u", "c"])
                    .pttl(&key)
                    .query_async(&mut conn),
            )
            .await;
        let Some(((upstream, created), ttl_ms)) = reply else {
            return cached;
        };
        let upstream = upstream?;
        Some(SessionInfo {
            id: id.to_hex(),
            upstream,
            created_unix_ms: created.unwrap_or(0),
            last_seen_unix_ms: cached.as_ref().map_or(0, |c| c.last_seen_unix_ms),
            requests: cached.as_ref().map_or(0, |c| c.requests),
            errors: cached.as_ref().map_or(0, |c| c.errors),
            ttl_left_seconds: (ttl_ms.max(0) as u64) / 1000,
        })
    }

    fn list(&self, upstream: Option<&str>, limit: usize) -> Vec<SessionInfo> {
        self.local.list(upstream, limit)
    }

    fn counts(&self) -> HashMap<Arc<str>, u64> {
        self.local.counts()
    }

    fn len(&self) -> u64 {
        self.local.len()
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
        pipe.publish(&self.channel, Self::DRAINS_CHANGED).ignore();
        self.call("drain", pipe.query_async::<()>(&mut conn))
            .await
            .is_some()
    }

    fn degraded(&self) -> bool {
        !self.up.load(Ordering::Relaxed)
    }

    fn describe(&self) -> serde_json::Value {
        let pending = self.pending.lock().map_or(0, |p| p.len());
        serde_json::json!({
            "configured": true,
            "mode": "redis with a local cache",
            "connected": self.up.load(Ordering::Relaxed),
            "errors": self.metrics.redis_errors.get(),
            "pending_pins": pending,
            "local_cache_entries": self.local.len(),
            "sessions_scope": "this edge's local cache (list, counts)",
            "prefix": self.spec.prefix,
        })
    }
}

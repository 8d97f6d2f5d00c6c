//! The shared affinity table in Redis, with a local cache in front.
//!
//! Layout (compact: see `benches/RESULTS.md` for the bytes per session):
//! - Sessions live in `buckets` hashes, `<prefix>b:<n>`, chosen by the id:
//!   field = id (16 raw bytes), value = `upstream, created, last seen, requests,
//!   errors` separated by tabs (times in ms since the epoch). Small hashes
//!   stay in Redis's compact encoding.
//! - A tenant's new sessions of one clock hour are counted on
//!   `<prefix>t:{<tenant hex>}:new:<hour>` (the tenant in the hash tag),
//!   by one script (check, INCR, EXPIRE), once per new session of a tenant
//!   with `tenants.max_new_sessions_per_hour`.
//! - Each upstream has an index set `<prefix>i:<upstream>` of its session
//!   ids (raw bytes): listing by upstream and counting need no scan.
//! - Expiry is ours: a sweep removes sessions not seen for `ttl` (plus
//!   the renewal margin), taking them out of the index too. It is the
//!   fleet's work: each sync interval one edge wins a lease (a script on
//!   `<prefix>sweep`, which holds the shared bucket cursor) and sweeps that
//!   round's slice, every bucket once per `ttl`. Renewals (last seen,
//!   counters) are written at most once per `ttl / 4` per session, by each
//!   edge that served it, one pipeline per batch.
//! - A hit in the local cache needs no Redis call while the edge is
//!   subscribed to the invalidations: every (re)subscribe, reconnect or new
//!   table marks the whole cache for re-validation (see
//!   `LocalStore::revalidate_all`), and a renewal confirms a pin. A miss
//!   reads one field. [`cost`] has the cost model and its paces.
//! - A session's first request claims its upstream atomically (a script on
//!   its bucket: keep the existing pin, else set ours); the loser adopts the
//!   winner's. A failover re-pin is a compare-and-set script that publishes
//!   the change. Admin pins, deletes and drains publish too; every edge drops
//!   the cached entry on the message; `local_ttl` is the safety net beyond
//!   that. A purge or a bulk move publishes one message for all its pins. Scripts touch one key, so they work on Redis Cluster;
//!   the index is updated next to them.
//! - Every call has `timeout`. When Redis fails, the store says it is
//!   degraded (new sessions are placed by consistent hashing, so edges still
//!   mostly agree) and keeps the pins it makes locally. Once Redis is back
//!   (or pub/sub resubscribes), every cached pin is written back with claim
//!   semantics, never overwriting another edge's, and the pin Redis then
//!   holds is adopted: lost Redis data and missed messages both heal.
//!
//! Nothing here logs or displays the Redis URL: it may hold a password.
//!
//! The parts: [`record`] is the stored value's codec (versioned);
//! [`scripts`] holds the Lua scripts; [`link`] is the connection and its
//! state (up, settled); [`calls`] is the call policy (timeouts, the
//! patient retry, what a failure means, how the store degrades, what
//! becomes of an unreadable record); [`sync`] runs the background loop
//! (connect, renew, sweep, repair, write back); [`pubsub`] receives
//! invalidations and pings the link; [`drains`] shares admin drains with
//! every edge (they are not sessions); [`capacity`] renews this edge's
//! grants of capped relays on the same connection; [`purge`] forgets or
//! moves pins in bulk, in bounded batches; [`listing`] reads sessions for
//! the admin API; [`cost`] is the cost model and the paces it rests on;
//! with `redis.sentinel`, [`sentinel`] asks where the master is, and when,
//! and [`follow`] follows it.

mod calls;
mod capacity;
pub mod cost;
mod drains;
mod follow;
mod link;
mod listing;
mod pubsub;
mod purge;
pub mod record;
mod scripts;
mod sentinel;
mod sync;

pub use drains::DrainListener;

use super::store::{
    Interrupted, LiveDuration, LocalStore, LookupSource, Place, Purged, Selector, SessionInfo,
    SessionRecord, SessionStore, NEW_SESSION_WINDOW_SECS,
};
use super::{SessionId, TenantId};
use crate::clock::unix_ms;
use crate::config::RedisSpec;
use crate::metrics::Metrics;
use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use link::{Conn, Link};
use record::Stored;
use redis::{AsyncCommands, RedisResult};
use scripts::Scripts;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub struct RedisStore {
    local: LocalStore,
    /// The settings in force; a reload replaces them (see `reconfigure`).
    spec: arc_swap::ArcSwap<RedisSpec>,
    ttl: LiveDuration,
    /// Bumped when a reload names another table: the loops start over.
    table: tokio::sync::watch::Sender<u64>,
    conn: ArcSwapOption<Conn>,
    /// Up, settled, due for a re-seed; until settled, requests wait.
    link: Link,
    settled_watch: tokio::sync::watch::Sender<bool>,
    /// Pins made while Redis was unreachable, to write once it is back.
    pending: Mutex<HashMap<SessionId, Pending>>,
    metrics: Arc<Metrics>,
    /// Told the set of drained upstreams whenever it is learnt from Redis.
    drain_listener: OnceLock<DrainListener>,
    /// Every upstream id of the current config (for counts).
    upstream_ids: arc_swap::ArcSwap<Vec<Arc<str>>>,
    /// Sessions per upstream, as the index sets in Redis last said.
    shared_counts: arc_swap::ArcSwap<HashMap<Arc<str>, u64>>,
    /// This process, in the sweep lease's value (for an operator's eyes).
    holder: String,
    /// Where the index check goes on: (upstream number, SSCAN cursor).
    index_cursor: Mutex<(usize, u64)>,
    scripts: Scripts,
}

/// A pin made while Redis was unreachable: its upstream and tenant.
type Pending = (Arc<str>, Option<TenantId>);

/// The pub/sub channel of a table's invalidations.
fn pins_channel(prefix: &str) -> String {
    format!("{prefix}pins")
}

impl RedisStore {
    pub fn new(spec: RedisSpec, ttl: Duration, metrics: Arc<Metrics>) -> RedisStore {
        RedisStore {
            local: LocalStore::front_cache(spec.local_cache_size, ttl, spec.local_ttl),
            spec: arc_swap::ArcSwap::from_pointee(spec),
            ttl: LiveDuration::new(ttl),
            table: tokio::sync::watch::Sender::new(0),
            conn: ArcSwapOption::empty(),
            link: Link::default(),
            settled_watch: tokio::sync::watch::Sender::new(false),
            pending: Mutex::new(HashMap::new()),
            metrics,
            drain_listener: OnceLock::new(),
            upstream_ids: arc_swap::ArcSwap::from_pointee(Vec::new()),
            shared_counts: arc_swap::ArcSwap::from_pointee(HashMap::new()),
            holder: format!("{}-{:08x}", std::process::id(), fastrand::u32(..)),
            index_cursor: Mutex::new((0, 0)),
            scripts: Scripts::new(),
        }
    }

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
            self.link.set_subscribed(false);
            self.local.revalidate_all();
            log::warn!("redis: another table (target, prefix or buckets changed): connecting to it; it will be seeded with the pins cached here");
            self.link.went_down();
            self.table.send_modify(|n| *n += 1);
        }
    }

    /// The bucket hash that holds `id`.
    fn bucket(&self, id: SessionId) -> String {
        self.bucket_key((id.0 >> 96) as u32 % self.spec.load().buckets.max(1))
    }

    fn bucket_key(&self, n: u32) -> String {
        format!("{}b:{n}", self.spec.load().prefix)
    }

    /// A tenant's new-session count for one hour: the tenant's hash is the
    /// key's hash tag, so every per-tenant key lives on one cluster slot.
    fn tenant_key(&self, tenant: TenantId, hour: u64) -> String {
        format!(
            "{}t:{{{}}}:new:{hour}",
            self.spec.load().prefix,
            tenant.to_hex()
        )
    }

    fn index_key(&self, upstream: &str) -> String {
        format!("{}i:{upstream}", self.spec.load().prefix)
    }

    /// The upstream ids whose sessions are counted.
    pub fn set_upstreams(&self, ids: Vec<Arc<str>>) {
        self.upstream_ids.store(Arc::new(ids));
    }

    /// Renewals of one session are at least this far apart (`cost`).
    fn renew_every_ms(&self) -> u64 {
        cost::renew_every_ms(self.ttl_ms())
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
        tenant: Option<TenantId>,
        created_ms: u64,
    ) -> Option<Arc<SessionRecord>> {
        let put = |upstream: &str, tenant, created_ms, ticket| {
            self.local
                .put_confirmed(id, Arc::from(upstream), tenant, created_ms, ticket)
        };
        for _ in 0..2 {
            let conn = self.conn()?;
            let ticket = self.local.ticket();
            let (bucket, value) = (
                self.bucket(id),
                Stored::fresh_of(upstream, tenant, created_ms),
            );
            let existing: Option<String> = self
                .call_patiently("claim", || {
                    let mut inv = self.scripts.claim.key(&bucket);
                    inv.arg(&id.to_bytes()[..]).arg(&value);
                    let mut conn = conn.clone();
                    async move { inv.invoke_async(&mut conn).await }
                })
                .await?;
            let Some(value) = existing else {
                self.reindex(id, None, Some(upstream)).await;
                return Some(put(upstream, tenant, created_ms, ticket));
            };
            match Stored::parse(&value) {
                Ok(s) => return Some(put(&s.upstream, s.tenant, s.created_ms, ticket)),
                // Gone now: claim again.
                Err(why) if self.unreadable(id, &value, &why).await => continue,
                // Left alone: this edge pins the session for itself only.
                Err(_) => return Some(put(upstream, tenant, created_ms, ticket)),
            }
        }
        Some(self.local.put(id, Arc::from(upstream), tenant, created_ms))
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.get().as_millis() as u64
    }

    /// A connection, unless Redis is known to be unreachable.
    fn conn(&self) -> Option<Conn> {
        if !self.link.is_up() {
            return None;
        }
        self.conn.load_full().map(|c| (*c).clone())
    }

    /// Remember a pin to write once Redis is back. Bounded by the local
    /// cache's size; the cache itself is written back on reconnect too.
    fn remember_pending(&self, id: SessionId, upstream: &Arc<str>, tenant: Option<TenantId>) {
        if let Ok(mut p) = self.pending.lock() {
            if (p.len() as u64) < self.spec.load().local_cache_size || p.contains_key(&id) {
                p.insert(id, (upstream.clone(), tenant));
            }
        }
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    fn lookup_local(&self, id: SessionId) -> Option<Arc<SessionRecord>> {
        // Without the invalidations, a cached pin may be out of date: ask.
        if !self.link.is_subscribed() {
            return None;
        }
        self.local.lookup_local(id)
    }

    fn apply_ttl(&self, ttl: Duration) {
        self.ttl.set(ttl);
        self.local.set_ttl(ttl);
    }

    async fn lookup(&self, id: SessionId) -> Option<(Arc<SessionRecord>, LookupSource)> {
        if let Some(r) = self.lookup_local(id) {
            return Some((r, LookupSource::Local));
        }
        // Kept past `local_ttl`: what this edge knew, for when Redis cannot
        // answer (an outage must not move a known session).
        let stale = self.local.stale(id).map(|r| (r, LookupSource::Local));
        let Some(conn) = self.conn() else {
            return stale;
        };
        let (bucket, ticket) = (self.bucket(id), self.local.ticket());
        let value: Option<String> = match self
            .call_patiently("lookup", || {
                let (mut conn, bucket) = (conn.clone(), bucket.clone());
                async move { conn.hget(bucket, &id.to_bytes()[..]).await }
            })
            .await
        {
            Some(v) => v,
            None => return stale,
        };
        let Some(value) = value else {
            // Redis lost it (a restart without persistence): write back what
            // this edge knew, with claim semantics.
            let (r, _) = stale?;
            return match self
                .claim_shared(id, &r.upstream, r.tenant, r.created_ms)
                .await
            {
                Some(record) => Some((record, LookupSource::Shared)),
                None => Some((r, LookupSource::Local)),
            };
        };
        let s = match Stored::parse(&value) {
            Ok(s) => s,
            Err(why) => {
                // Placed anew (a newer format: for this edge only).
                self.unreadable(id, &value, &why).await;
                return None;
            }
        };
        let (upstream, tenant) = (Arc::from(s.upstream.as_str()), s.tenant);
        Some((
            self.local
                .put_confirmed(id, upstream, tenant, s.created_ms, ticket),
            LookupSource::Shared,
        ))
    }

    async fn claim(
        &self,
        id: SessionId,
        tenant: Option<TenantId>,
        upstream: Arc<str>,
    ) -> Arc<SessionRecord> {
        if let Some(record) = self.claim_shared(id, &upstream, tenant, unix_ms()).await {
            return record;
        }
        self.remember_pending(id, &upstream, tenant);
        self.local.claim(id, tenant, upstream).await
    }

    async fn repin(
        &self,
        id: SessionId,
        tenant: Option<TenantId>,
        from: &str,
        to: Arc<str>,
    ) -> Arc<SessionRecord> {
        if let Some(conn) = self.conn() {
            let ticket = self.local.ticket();
            let (bucket, value, channel) = (
                self.bucket(id),
                Stored::fresh_of(&to, tenant, unix_ms()),
                self.channel(),
            );
            if let Some((moved, value)) = self
                .call_patiently("repin", || {
                    let mut inv = self.scripts.repin.key(&bucket);
                    inv.arg(&id.to_bytes()[..])
                        .arg(from)
                        .arg(&value)
                        .arg(&channel)
                        .arg(id.to_hex());
                    let mut conn = conn.clone();
                    async move { inv.invoke_async::<(i64, String)>(&mut conn).await }
                })
                .await
            {
                if let Ok(s) = Stored::parse(&value) {
                    // A second run finds the first one's pin (ours) in force.
                    if moved == 1 || s.upstream == *to {
                        self.reindex(id, Some(from), Some(&s.upstream)).await;
                    }
                    let upstream = Arc::from(s.upstream.as_str());
                    return self
                        .local
                        .put_confirmed(id, upstream, s.tenant, s.created_ms, ticket);
                }
            }
        }
        self.remember_pending(id, &to, tenant);
        self.local.repin(id, tenant, from, to).await
    }

    async fn set(
        &self,
        id: SessionId,
        tenant: Option<TenantId>,
        upstream: Arc<str>,
        metadata: Option<String>,
    ) {
        if let Some(mut conn) = self.conn() {
            let mut inv = self.scripts.pin.key(self.bucket(id));
            inv.arg(&id.to_bytes()[..])
                .arg(&*upstream)
                .arg(Stored::fresh_of(&upstream, tenant, unix_ms()))
                .arg(self.channel())
                .arg(id.to_hex())
                .arg(metadata.as_deref().unwrap_or(""));
            match self
                .call("pin", inv.invoke_async::<Option<String>>(&mut conn))
                .await
            {
                Some(old) => {
                    let old = old
                        .as_deref()
                        .and_then(|v| Stored::parse(v).ok())
                        .map(|s| s.upstream);
                    self.reindex(id, old.as_deref(), Some(&upstream)).await;
                }
                None => self.remember_pending(id, &upstream, tenant),
            }
        }
        self.local.set(id, tenant, upstream, metadata).await;
    }

    async fn purge(&self, which: &Selector) -> Result<Purged, Interrupted> {
        self.purge_shared(which).await
    }

    async fn move_all(&self, from: &str, place: Place<'_>) -> Result<Purged, Interrupted> {
        self.move_shared(from, place).await
    }

    async fn forget(&self, id: SessionId) -> bool {
        let local = self.local.forget(id).await;
        let Some(mut conn) = self.conn() else {
            return local;
        };
        let mut inv = self.scripts.forget.key(self.bucket(id));
        inv.arg(&id.to_bytes()[..])
            .arg(self.channel())
            .arg(id.to_hex());
        match self
            .call("forget", inv.invoke_async::<Option<String>>(&mut conn))
            .await
        {
            Some(Some(old)) => {
                let old = Stored::parse(&old).ok().map(|s| s.upstream);
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
        self.list_shared(upstream, limit).await
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

    async fn count_new_session(&self, tenant: TenantId, hour: u64, limit: u64) -> Option<bool> {
        let mut conn = self.conn()?;
        let mut inv = self.scripts.new_session.key(self.tenant_key(tenant, hour));
        // Past its hour, the key is kept one more hour, then expires.
        inv.arg(limit).arg(2 * NEW_SESSION_WINDOW_SECS);
        let (counted, _n) = self
            .call("tenant", inv.invoke_async::<(i64, u64)>(&mut conn))
            .await?;
        Some(counted == 1)
    }

    async fn share_drain(&self, upstream: &str, on: bool) -> bool {
        self.write_drain(upstream, on).await
    }

    fn degraded(&self) -> bool {
        !self.link.is_up()
    }

    fn settled(&self) -> bool {
        self.link.is_settled()
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
            "connected": self.link.is_up(),
            "settled": self.link.is_settled(),
            "record_errors": self.metrics.redis_record_errors.get(),
            "errors": self.metrics.redis_errors.get(),
            "pending_pins": pending,
            "local_cache_entries": self.local.len(),
            "buckets": self.spec.load().buckets,
            "prefix": self.spec.load().prefix,
            "master": self.link.master().map(|m| m.to_string()),
        })
    }
}

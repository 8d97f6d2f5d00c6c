//! The background loop: connect, keep the table in sync, write back.

use super::calls::Failure;
use super::link::{connect, connect_deadline};
use super::sentinel::{Addr, Known};
use super::*;

impl RedisStore {
    /// The table is known (connected, or given up on): requests may place.
    fn settle(&self, connected: bool) {
        if !self.link.settle() {
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
            // Sentinels learnt for another table are not this one's.
            self.link.sentinels.reset();
            let Some((conn, master)) = self.connect_until_up(&mut shutdown).await else {
                give_up.abort();
                return;
            };
            self.conn.store(Some(Arc::new(conn)));
            self.link.set_master(master);
            let follower = tokio::spawn(self.clone().follow(generation));
            let (subscribed, on_subscribed) = tokio::sync::oneshot::channel();
            let subscriber = tokio::spawn(self.clone().subscribe(self.spec(), subscribed));
            // Up now, not one sync tick later.
            self.probe(generation).await;
            if !self.link.is_settled() && self.link.is_up() {
                // The timer settles the store if this never comes.
                let wait = self.spec.load().connect_wait;
                if let Ok(Ok(())) = tokio::time::timeout(wait, on_subscribed).await {
                    self.settle(true);
                }
            }
            let shut_down = self.sync_until(&mut shutdown, &mut table, generation).await;
            subscriber.abort();
            follower.abort();
            self.link.set_subscribed(false);
            if shut_down {
                return;
            }
        }
    }

    /// A connection to the table now configured; `None` at shutdown.
    async fn connect_until_up(
        &self,
        shutdown: &mut pingora_core::server::ShutdownWatch,
    ) -> Option<(Conn, Option<Addr>)> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let spec = self.spec();
            let connect = connect(&spec, &self.link.sentinels);
            match tokio::time::timeout(connect_deadline(&spec), connect).await {
                Ok(Ok(connected)) => return Some(connected),
                Ok(Err(e)) => log::warn!("redis unreachable ({e}); retrying"),
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
                    let (mut conn, _) = connect(spec, &Known::default()).await.ok()?;
                    redis::cmd("PING")
                        .query_async::<String>(&mut conn)
                        .await
                        .ok()
                };
                if let Ok(Some(_)) = tokio::time::timeout_at(deadline, ping).await {
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
        // Counts and drains at the first sync, then every few.
        let mut last_refresh: Option<Instant> = None;
        loop {
            let tick = self.spec().sync_interval.min(Duration::from_secs(1));
            tokio::select! {
                _ = shutdown.changed() => {
                    self.sync().await;
                    return true;
                }
                _ = table.changed() => return false,
                _ = tokio::time::sleep(tick) => {}
                _ = self.link.reseed_asked() => {}
            }
            if !self.link.is_up() {
                self.probe(generation).await;
            }
            if self.link.is_up() {
                if self.link.take_reseed() {
                    self.reseed().await;
                }
                self.write_pending().await;
                if last_sync.elapsed() >= self.spec().sync_interval {
                    self.sync().await;
                    last_sync = Instant::now();
                    let every = Duration::from_millis(cost::refresh_every_ms(
                        self.spec().sync_interval.as_millis() as u64,
                    ));
                    if last_refresh.is_none_or(|at| at.elapsed() >= every) {
                        self.refresh_drains().await;
                        self.refresh_counts().await;
                        last_refresh = Some(Instant::now());
                    }
                }
            }
        }
    }

    /// Is Redis back? (The connection manager reconnects by itself.) Only
    /// while the connection is to the table of `generation`.
    pub(super) async fn probe(&self, generation: u64) {
        if self.answers_ping().await && *self.table.borrow() == generation && self.link.came_up() {
            // Redis may have lost data, and messages may have been missed.
            self.local.revalidate_all();
            log::info!("redis is reachable; writing the pins made meanwhile");
            self.refresh_drains().await;
        }
    }

    /// Write the pins made during an outage, never overwriting another's.
    async fn write_pending(&self) {
        let pending: Vec<(SessionId, Pending)> = match self.pending.lock() {
            Ok(mut p) if !p.is_empty() => p.drain().collect(),
            _ => return,
        };
        for (i, (id, (upstream, tenant))) in pending.iter().enumerate() {
            let Some(record) = self.claim_shared(*id, upstream, *tenant, unix_ms()).await else {
                // Down again: keep what is left for the next round.
                for (id, (up, tenant)) in &pending[i..] {
                    self.remember_pending(*id, up, *tenant);
                }
                return;
            };
            // Another edge's pin won: the session moves to it.
            match record.upstream == *upstream {
                true => self.metrics.recovery_written.inc(),
                false => self.metrics.recovery_failed.inc(),
            }
        }
    }

    /// Write every cached pin back with claim semantics and adopt what Redis
    /// holds: Redis may have lost data (a restart without persistence), and
    /// invalidations may have been missed. Never overwrites another's pin.
    async fn reseed(&self) {
        for (id, record) in self.local.records() {
            if self
                .claim_shared(id, &record.upstream, record.tenant, record.created_ms)
                .await
                .is_none()
            {
                self.link.reseed_later();
                return;
            }
        }
    }

    /// Renew the sessions used since their last renewal (at most once per
    /// `ttl / 4` each), in pipelined batches; then, if this edge wins the
    /// fleet's lease for this round, sweep a slice of the buckets and check
    /// a slice of the index.
    async fn sync(&self) {
        self.renew().await;
        self.sweep_round().await;
    }

    /// Write last-seen times and counters, one pipeline per batch. A
    /// renewal also confirms the pin: a session in use is never read again.
    async fn renew(&self) {
        let every = self.renew_every_ms();
        let due: Vec<(SessionId, Arc<SessionRecord>)> = self
            .local
            .records()
            .into_iter()
            .filter(|(_, r)| r.needs_renewal(every))
            .collect();
        for chunk in due.chunks(self.spec.load().batch_size.max(1)) {
            let Some(conn) = self.conn() else { return };
            let ticket = self.local.ticket();
            let invocations: Vec<redis::ScriptInvocation<'_>> = chunk
                .iter()
                .map(|(id, r)| {
                    let (dr, de) = r.take_deltas();
                    let mut inv = self.scripts.touch.key(self.bucket(*id));
                    inv.arg(&id.to_bytes()[..])
                        .arg(&*r.upstream)
                        .arg(r.last_seen_ms())
                        .arg(dr)
                        .arg(de);
                    inv
                })
                .collect();
            let Some(results) = self.renew_batch(conn, &invocations).await else {
                continue;
            };
            let mut moved = Vec::new();
            for ((id, r), result) in chunk.iter().zip(results) {
                r.mark_renewed();
                match result {
                    Ok(1) => self.local.confirm(r, ticket),
                    // Moved elsewhere (a lost message?), or a newer format:
                    // read again at its next use.
                    Ok(2) => moved.push(*id),
                    // Gone from Redis (lost, or swept meanwhile): write it
                    // back, unless a purge dropped it here meanwhile (its
                    // first message comes before it deletes anything).
                    Ok(0) if self.local.holds(*id, r) => {
                        self.remember_pending(*id, &r.upstream, r.tenant)
                    }
                    Ok(0) => {}
                    Err(e) if Failure::of(&e) != Failure::Record => {
                        self.failed("renew", &e).await;
                        return;
                    }
                    // Malformed (3), or a script error on this record.
                    Ok(_) | Err(_) => self.discard_and_rewrite(*id, r).await,
                }
            }
            for id in moved {
                self.local.invalidate(id);
            }
        }
    }

    /// One batch of renewals in one pipeline (its script loaded first if
    /// Redis lost it). If one record's error fails the pipeline, each is
    /// run on its own, so that the others still land.
    async fn renew_batch(
        &self,
        conn: Conn,
        invocations: &[redis::ScriptInvocation<'_>],
    ) -> Option<Vec<RedisResult<i64>>> {
        let mut pipe = redis::pipe();
        for inv in invocations {
            pipe.invoke_script(inv);
        }
        let (timeout, start) = (self.batch_timeout(), Instant::now());
        let attempt = |mut conn: Conn| {
            let pipe = &pipe;
            async move { pipe.query_async::<Vec<i64>>(&mut conn).await }
        };
        let mut result = tokio::time::timeout(timeout, attempt(conn.clone())).await;
        if matches!(&result, Ok(Err(e)) if e.kind() == redis::ErrorKind::NoScriptError) {
            // Redis restarted: the pipeline does not load scripts by itself.
            let mut c = conn.clone();
            result = match self.scripts.touch.prepare_invoke().load_async(&mut c).await {
                Ok(_) => tokio::time::timeout(timeout, attempt(conn.clone())).await,
                Err(e) => Ok(Err(e)),
            };
        }
        let result = match result {
            Ok(Err(e)) if Failure::of(&e) == Failure::Record => {
                let calls = invocations.iter().map(|inv| {
                    let mut conn = conn.clone();
                    async move { inv.invoke_async::<i64>(&mut conn).await }
                });
                tokio::time::timeout(timeout, futures::future::join_all(calls))
                    .await
                    .map(Ok)
            }
            other => other.map(|r| r.map(|v| v.into_iter().map(Ok).collect())),
        };
        self.finish("renew", timeout, start, result, false).await
    }

    /// A record that failed its renewal: read it, discard it if it is
    /// malformed, and write this edge's pin back with claim semantics.
    async fn discard_and_rewrite(&self, id: SessionId, r: &Arc<SessionRecord>) {
        let Some(mut conn) = self.conn() else { return };
        let value: Option<Option<String>> = self
            .call("get", conn.hget(self.bucket(id), &id.to_bytes()[..]))
            .await;
        if let Some(Some(value)) = value {
            if let Err(why) = Stored::parse(&value) {
                self.unreadable(id, &value, &why).await;
            }
        }
        self.remember_pending(id, &r.upstream, r.tenant);
    }

    /// The sweep is the fleet's, not each edge's: an edge that wins the
    /// lease (one per sync interval, fleet-wide) sweeps the round's slice
    /// of buckets, from the shared cursor on, and checks a slice of the
    /// index. True if this edge swept.
    async fn sweep_round(&self) -> bool {
        let spec = self.spec();
        let buckets = spec.buckets.max(1);
        let sync_ms = spec.sync_interval.as_millis() as u64;
        let per_round = cost::buckets_per_round(buckets, sync_ms, self.ttl_ms());
        let Some(mut conn) = self.conn() else {
            return false;
        };
        let mut inv = self.scripts.lease.key(format!("{}sweep", spec.prefix));
        inv.arg(unix_ms())
            .arg(cost::lease_hold_ms(sync_ms))
            .arg(per_round)
            .arg(&self.holder);
        let Some(cursor) = self.call("lease", inv.invoke_async::<i64>(&mut conn)).await else {
            return false;
        };
        let Ok(cursor) = u64::try_from(cursor) else {
            return false;
        };
        self.metrics.redis_sweep_rounds.inc();
        self.sweep(cost::round_buckets(cursor, per_round, buckets))
            .await;
        self.prune_index_slice().await;
        true
    }

    /// Sweep the buckets of `visits` for expired sessions. Every fourth
    /// pass also repairs the index: every live session is added to its
    /// upstream's set (a crash between a script and its index write leaves
    /// it out); `prune_index_slice` removes the entries left over.
    async fn sweep(&self, visits: impl Iterator<Item = (u64, u32)>) {
        let buckets = self.spec.load().buckets;
        let cutoff = cost::sweep_cutoff_ms(
            unix_ms(),
            self.ttl_ms(),
            self.spec.load().sync_interval.as_millis() as u64,
        );
        for (visit, n) in visits {
            let Some(mut conn) = self.conn() else { return };
            let mut inv = self.scripts.sweep.key(self.bucket_key(n));
            inv.arg(cutoff)
                .arg(u8::from(cost::repairs_index(visit, buckets)));
            let Some((removed, live, malformed)) = self
                .call(
                    "sweep",
                    inv.invoke_async::<(Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<Vec<u8>>)>(&mut conn),
                )
                .await
            else {
                return;
            };
            for id in malformed.iter().filter_map(|id| SessionId::from_bytes(id)) {
                // Every edge drops its cached pin (and writes it back, with
                // claim semantics, at the session's next request); this
                // one writes back what it knows at once.
                self.metrics.redis_record_errors.inc();
                log::warn!(
                    "redis: session {} held a malformed record; removed",
                    id.to_hex()
                );
                self.call(
                    "publish",
                    conn.publish::<_, _, i64>(self.channel(), id.to_hex()),
                )
                .await;
                if let Some(r) = self.local.stale(id) {
                    self.remember_pending(id, &r.upstream, r.tenant);
                }
            }
            for expired in removed.chunks(3) {
                if let [id, upstream, life_ms] = expired {
                    // Each expiry is swept by one edge: observed once fleet-wide.
                    if let Some(ms) = std::str::from_utf8(life_ms)
                        .ok()
                        .and_then(|t| t.parse::<u64>().ok())
                    {
                        self.metrics.session_duration.observe(ms as f64 / 1000.0);
                    }
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
            self.index_live(&mut conn, &live).await;
        }
    }

    /// Put every live session of a swept bucket (`id, upstream` pairs) in
    /// its upstream's index set (SADD is idempotent).
    async fn index_live(&self, conn: &mut Conn, live: &[Vec<u8>]) {
        let mut by_upstream: HashMap<&[u8], Vec<&[u8]>> = HashMap::new();
        for pair in live.chunks(2) {
            if let [id, upstream] = pair {
                by_upstream.entry(upstream).or_default().push(id);
            }
        }
        for (upstream, ids) in by_upstream {
            let key = self.index_key(&String::from_utf8_lossy(upstream));
            if self
                .call("index", conn.sadd::<_, _, i64>(key, ids))
                .await
                .is_none()
            {
                return;
            }
        }
    }

    /// Check one slice of one upstream's index set (the next, each sync):
    /// remove the entries whose session is gone or pinned elsewhere.
    async fn prune_index_slice(&self) {
        let ids = self.upstream_ids.load_full();
        let slice = cost::index_checks_per_round(
            self.shared_counts.load().values().sum(),
            self.spec.load().sync_interval.as_millis() as u64,
            self.ttl_ms(),
        );
        let Some(mut conn) = self.conn() else { return };
        let (which, cursor) = match self.index_cursor.lock() {
            Ok(c) => *c,
            Err(_) => return,
        };
        let Some(upstream) = ids.get(which % ids.len().max(1)) else {
            return;
        };
        let key = self.index_key(upstream);
        let mut scan = redis::cmd("SSCAN");
        scan.arg(&key).arg(cursor).arg("COUNT").arg(slice);
        let Some((next, members)) = self
            .call("index", scan.query_async::<(u64, Vec<Vec<u8>>)>(&mut conn))
            .await
        else {
            return;
        };
        let checks = members
            .iter()
            .filter_map(|m| SessionId::from_bytes(m))
            .map(|id| {
                let mut conn = conn.clone();
                let bucket = self.bucket(id);
                async move {
                    let value: RedisResult<Option<String>> =
                        conn.hget(bucket, &id.to_bytes()[..]).await;
                    (id, value)
                }
            });
        let all = async { Ok(futures::future::join_all(checks).await) };
        let Some(values) = self.call_within("index", self.batch_timeout(), all).await else {
            return;
        };
        let stale: Vec<[u8; 16]> = values
            .into_iter()
            .filter_map(|(id, value)| match value {
                Ok(None) => Some(id.to_bytes()),
                Ok(Some(v)) => match Stored::parse(&v) {
                    Ok(s) if s.upstream != **upstream => Some(id.to_bytes()),
                    _ => None,
                },
                Err(_) => None,
            })
            .collect();
        if !stale.is_empty() {
            let stale: Vec<&[u8]> = stale.iter().map(|b| &b[..]).collect();
            self.call("index", conn.srem::<_, _, i64>(&key, stale))
                .await;
        }
        if let Ok(mut c) = self.index_cursor.lock() {
            *c = if next == 0 {
                (which + 1, 0)
            } else {
                (which, next)
            };
        }
    }

    /// Sessions per upstream, from the index sets.
    pub(super) async fn refresh_counts(&self) {
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
}

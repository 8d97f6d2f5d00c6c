//! Pins forgotten or moved in bulk, in batches that never hold Redis long.
//!
//! - **By upstream** (a purge, or an ejected relay's move): its index set
//!   `<prefix>i:<upstream>` is read with SSCAN, [`BATCH`] entries at a
//!   time. Each batch is deleted (or moved) by one script per bucket it
//!   touches, which acts on a pin only if it still names that upstream (a
//!   session moved meanwhile, or a stale index entry, is left alone), then
//!   taken out of the index with one SREM (a move adds its sessions to
//!   their new upstreams' sets). About 3 commands per pin: the script, its
//!   HGET, its HDEL or HSET.
//! - **By tenant, or all**: no index names a tenant's sessions (keeping
//!   one would cost every new session a write, for a rare admin act), so
//!   the buckets are walked, [`BUCKETS_PER_BATCH`] at a time, each by one
//!   script that reads the bucket (HGETALL: under 128 sessions when
//!   `redis.buckets` is sized as advised) and deletes what the purge
//!   selects; the index entries of what went are then removed per
//!   upstream. Three commands per bucket, whatever the tenant's size.
//!
//! Nothing reads the keyspace (no KEYS, no SCAN). The calls of one batch go
//! out together on the multiplexed connection (and to their own nodes on a
//! cluster: a pipeline may not cross slots there); between batches the
//! task yields. A record of a newer format is left alone.
//!
//! **Every edge is told, with one message for the whole purge, twice**:
//! before anything is deleted, so that no edge writes one of these pins
//! back from its cache meanwhile (a renewal that finds its pin gone writes
//! it back unless the pin was dropped here since), and once done, to drop
//! what was read from Redis while the purge ran. A move sends the second
//! only: a renewal of a moved pin finds it moved, and drops it.

use super::*;

/// Index entries read per SSCAN, so per batch.
pub const BATCH: usize = 500;

/// Buckets read per batch of a walk over the buckets.
pub const BUCKETS_PER_BATCH: u32 = 128;

/// The message that tells every edge to drop its cached pins that `which`
/// selects (see [`selector`]).
pub(super) fn message(which: &Selector) -> String {
    format!("pins {which}")
}

/// The selector of a purge message, if `payload` is one.
pub(super) fn selector(payload: &str) -> Option<Selector> {
    match payload.strip_prefix("pins ")?.split_once(' ') {
        Some(("upstream", id)) if !id.is_empty() => Some(Selector::Upstream(Arc::from(id))),
        Some(("tenant", hex)) => TenantId::from_hex(hex).map(Selector::Tenant),
        None if payload == "pins all" => Some(Selector::All),
        _ => None,
    }
}

/// How far a walk went: pins removed (or moved), and why it stopped early.
#[derive(Debug, Default)]
struct Walk {
    done: u64,
    stopped: Option<&'static str>,
}

impl Walk {
    fn finish(self, local: u64) -> Result<Purged, Interrupted> {
        let done = Purged {
            shared: Some(self.done),
            local,
        };
        match self.stopped {
            None => Ok(done),
            Some(why) => Err(Interrupted { done, why }),
        }
    }
}

/// What a walk over an index does with each pin.
#[derive(Clone, Copy)]
enum Act<'a> {
    Delete,
    /// Move where the function says (none: leave it).
    Move(Place<'a>),
}

const UNREACHABLE: &str = "redis is unreachable";
const FAILED: &str = "a redis call failed";

impl RedisStore {
    /// Drop this edge's cached and pending pins that `which` selects; how
    /// many were cached.
    pub(super) fn forget_cached(&self, which: &Selector) -> u64 {
        if let Ok(mut p) = self.pending.lock() {
            p.retain(|_, (upstream, tenant)| !which.matches_pin(upstream, *tenant));
        }
        self.local.drop_matching(which)
    }

    /// Tell every edge to drop its cached pins that `which` selects, and
    /// drop this edge's; how many it had.
    async fn announce(&self, conn: &mut Conn, which: &Selector) -> u64 {
        let publish = conn.publish::<_, _, i64>(self.channel(), message(which));
        self.call("purge", publish).await;
        self.forget_cached(which)
    }

    pub(super) async fn purge_shared(&self, which: &Selector) -> Result<Purged, Interrupted> {
        let Some(mut conn) = self.conn() else {
            return Walk {
                done: 0,
                stopped: Some(UNREACHABLE),
            }
            .finish(self.forget_cached(which));
        };
        let mut local = self.announce(&mut conn, which).await;
        let walk = match which {
            Selector::Upstream(u) => self.walk_index(&conn, u, Act::Delete).await,
            Selector::Tenant(t) => self.walk_buckets(&conn, Some(*t)).await,
            Selector::All => self.walk_buckets(&conn, None).await,
        };
        local += self.announce(&mut conn, which).await;
        self.refresh_counts().await;
        walk.finish(local)
    }

    pub(super) async fn move_shared(
        &self,
        from: &str,
        place: Place<'_>,
    ) -> Result<Purged, Interrupted> {
        let Some(mut conn) = self.conn() else {
            return Walk {
                done: 0,
                stopped: Some(UNREACHABLE),
            }
            .finish(0);
        };
        let walk = self.walk_index(&conn, from, Act::Move(place)).await;
        let local = self
            .announce(&mut conn, &Selector::Upstream(Arc::from(from)))
            .await;
        self.refresh_counts().await;
        walk.finish(local)
    }

    /// Delete or move every pin that `upstream`'s index names, a batch at a time.
    async fn walk_index(&self, conn: &Conn, upstream: &str, act: Act<'_>) -> Walk {
        let key = self.index_key(upstream);
        let mut walk = Walk::default();
        let script = match act {
            Act::Delete => &self.scripts.purge_ids,
            Act::Move(_) => &self.scripts.move_ids,
        };
        self.load(conn, script).await;
        let mut cursor = 0u64;
        loop {
            let mut scan = redis::cmd("SSCAN");
            scan.arg(&key).arg(cursor).arg("COUNT").arg(BATCH);
            let mut c = conn.clone();
            let reply = scan.query_async::<(u64, Vec<Vec<u8>>)>(&mut c);
            let Some((next, members)) =
                self.call_within("purge", self.batch_timeout(), reply).await
            else {
                walk.stopped = Some(FAILED);
                return walk;
            };
            let ids: Vec<SessionId> = members
                .iter()
                .filter_map(|m| SessionId::from_bytes(m))
                .collect();
            match self.index_batch(conn, upstream, &ids, act).await {
                Some(n) => walk.done += n,
                None => {
                    walk.stopped = Some(FAILED);
                    return walk;
                }
            }
            if next == 0 {
                return walk;
            }
            cursor = next;
            tokio::task::yield_now().await;
        }
    }

    /// One batch of an index walk: one script per bucket, then the index.
    /// How many pins it removed or moved; `None` if Redis failed.
    async fn index_batch(
        &self,
        conn: &Conn,
        upstream: &str,
        ids: &[SessionId],
        act: Act<'_>,
    ) -> Option<u64> {
        let targets: Vec<Option<Arc<str>>> = match act {
            Act::Delete => ids.iter().map(|_| None).collect(),
            Act::Move(place) => ids.iter().map(|id| place(*id)).collect(),
        };
        // Each bucket's share of the batch, by position in `ids`.
        let mut by_bucket: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, id) in ids.iter().enumerate() {
            if matches!(act, Act::Delete) || targets[i].is_some() {
                by_bucket.entry(self.bucket(*id)).or_default().push(i);
            }
        }
        let groups: Vec<(String, Vec<usize>)> = by_bucket.into_iter().collect();
        let invocations: Vec<redis::ScriptInvocation<'_>> = groups
            .iter()
            .map(|(bucket, members)| {
                let mut inv = match act {
                    Act::Delete => self.scripts.purge_ids.key(bucket),
                    Act::Move(_) => self.scripts.move_ids.key(bucket),
                };
                inv.arg(upstream);
                for &i in members {
                    inv.arg(&ids[i].to_bytes()[..]);
                    if let Some(to) = &targets[i] {
                        inv.arg(&**to);
                    }
                }
                inv
            })
            .collect();
        let codes = self.run_all::<Vec<i64>>(conn, &invocations).await?;
        let (mut done, mut unindex) = (0, Vec::new());
        let mut moved: HashMap<&str, Vec<[u8; 16]>> = HashMap::new();
        for ((_, members), codes) in groups.iter().zip(codes) {
            for (&i, code) in members.iter().zip(codes) {
                // 2: a newer format, left alone; 0: not pinned there (an
                // index entry that was stale).
                if code == 2 {
                    continue;
                }
                unindex.push(ids[i].to_bytes());
                if code == 1 {
                    done += 1;
                    if let Some(to) = &targets[i] {
                        moved.entry(to).or_default().push(ids[i].to_bytes());
                    }
                }
            }
        }
        let mut index = Vec::new();
        if !unindex.is_empty() {
            index.push(set_cmd("SREM", self.index_key(upstream), &unindex));
        }
        for (to, ids) in &moved {
            index.push(set_cmd("SADD", self.index_key(to), ids));
        }
        self.run_index(conn, &index).await?;
        Some(done)
    }

    /// Purge every bucket of the tenant (or every record), a batch of
    /// buckets at a time.
    async fn walk_buckets(&self, conn: &Conn, tenant: Option<TenantId>) -> Walk {
        let buckets = self.spec.load().buckets.max(1);
        let selects = tenant.map(TenantId::to_hex).unwrap_or_default();
        let mut walk = Walk::default();
        self.load(conn, &self.scripts.purge_bucket).await;
        for start in (0..buckets).step_by(BUCKETS_PER_BATCH as usize) {
            let invocations: Vec<redis::ScriptInvocation<'_>> = (start..buckets)
                .take(BUCKETS_PER_BATCH as usize)
                .map(|n| {
                    let mut inv = self.scripts.purge_bucket.key(self.bucket_key(n));
                    inv.arg(&selects);
                    inv
                })
                .collect();
            let Some(gone) = self.run_all::<Vec<Vec<u8>>>(conn, &invocations).await else {
                walk.stopped = Some(FAILED);
                return walk;
            };
            let mut by_upstream: HashMap<Vec<u8>, Vec<Vec<u8>>> = HashMap::new();
            for pairs in gone {
                for pair in pairs.chunks(2) {
                    if let [id, upstream] = pair {
                        walk.done += 1;
                        by_upstream
                            .entry(upstream.clone())
                            .or_default()
                            .push(id.clone());
                    }
                }
            }
            let index: Vec<redis::Cmd> = by_upstream
                .iter()
                .map(|(upstream, ids)| {
                    let key = self.index_key(&String::from_utf8_lossy(upstream));
                    set_cmd("SREM", key, ids)
                })
                .collect();
            if self.run_index(conn, &index).await.is_none() {
                walk.stopped = Some(FAILED);
                return walk;
            }
            tokio::task::yield_now().await;
        }
        walk
    }

    /// Load `script` once before a walk, so that its calls, sent together,
    /// do not each find it missing.
    async fn load(&self, conn: &Conn, script: &redis::Script) {
        let (mut conn, invocation) = (conn.clone(), script.prepare_invoke());
        let load = invocation.load_async(&mut conn);
        self.call_within("purge", self.batch_timeout(), load).await;
    }

    /// Run `invocations` at once (each on its own key); every answer, or
    /// `None` if any failed or the batch took longer than the batch timeout.
    async fn run_all<T: redis::FromRedisValue>(
        &self,
        conn: &Conn,
        invocations: &[redis::ScriptInvocation<'_>],
    ) -> Option<Vec<T>> {
        let calls = invocations.iter().map(|inv| {
            let mut conn = conn.clone();
            async move { inv.invoke_async::<T>(&mut conn).await }
        });
        let all = async {
            futures::future::join_all(calls)
                .await
                .into_iter()
                .collect::<RedisResult<Vec<T>>>()
        };
        self.call_within("purge", self.batch_timeout(), all).await
    }

    /// The index changes of one batch: each command on its own key, sent
    /// together (not as one pipeline, which may not cross slots on a
    /// cluster).
    async fn run_index(&self, conn: &Conn, index: &[redis::Cmd]) -> Option<()> {
        let calls = index.iter().map(|cmd| {
            let mut conn = conn.clone();
            async move { cmd.query_async::<redis::Value>(&mut conn).await }
        });
        let all = async {
            futures::future::join_all(calls)
                .await
                .into_iter()
                .collect::<RedisResult<Vec<_>>>()
        };
        self.call_within("purge", self.batch_timeout(), all)
            .await
            .map(drop)
    }
}

/// `SREM` or `SADD` of `members` on the set `key`.
fn set_cmd<M: AsRef<[u8]>>(verb: &str, key: String, members: &[M]) -> redis::Cmd {
    let mut cmd = redis::cmd(verb);
    cmd.arg(key);
    for m in members {
        cmd.arg(m.as_ref());
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each message reads back as the selector it was made from; anything
    /// else on the channel (a session's id, `drains`) is not a purge.
    #[test]
    fn purge_messages_read_back_and_nothing_else_is_one() {
        for which in [
            Selector::Upstream(Arc::from("relay-a")),
            Selector::Upstream(Arc::from("a:b.c")),
            Selector::Tenant(TenantId(0x0123_4567_89ab_cdef)),
            Selector::All,
        ] {
            assert_eq!(selector(&message(&which)), Some(which.clone()), "{which}");
        }
        for other in [
            "drains",
            "0123456789abcdef0123456789abcdef",
            "pins",
            "pins upstream ",
            "pins tenant xyz",
            "pins all of them",
            "pins everything",
        ] {
            assert_eq!(selector(other), None, "{other:?}");
        }
    }
}

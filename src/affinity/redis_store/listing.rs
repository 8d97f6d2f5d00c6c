//! Sessions as the admin API reads them from the shared table.

use super::*;

impl RedisStore {
    /// One stored session as the admin API shows it.
    pub(super) async fn info(&self, conn: &mut Conn, id: SessionId) -> Option<SessionInfo> {
        let value: Option<String> = self
            .call("get", conn.hget(self.bucket(id), &id.to_bytes()[..]))
            .await?;
        let s = Stored::parse(value.as_deref()?).ok()?;
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
            ttl_left_seconds: (last_seen + self.ttl_ms()).saturating_sub(unix_ms()) / 1000,
            metadata: s.metadata.and_then(|m| serde_json::from_str(&m).ok()),
        })
    }

    /// Sessions, optionally only those of one upstream, at most `limit`:
    /// from the index sets (SSCAN), each read from its bucket.
    pub(super) async fn list_shared(
        &self,
        upstream: Option<&str>,
        limit: usize,
    ) -> Vec<SessionInfo> {
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
}

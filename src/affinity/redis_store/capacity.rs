//! The capacity leases' one call, on the shared table's connection: this
//! edge's grant of a capped relay, `<prefix>cap:<relay>` (the script and
//! what a grant means are [`crate::capacity::lease`]'s).

use super::RedisStore;
use crate::capacity::lease::Grant;
use crate::clock;
use std::time::Duration;

impl RedisStore {
    /// Renew this edge's grant of `relay`, whose cap is `cap`: it `want`s
    /// that many slots and holds `in_flight`. `None` when Redis is down or
    /// did not answer in time.
    pub async fn sync_capacity(
        &self,
        relay: &str,
        cap: u32,
        want: u32,
        in_flight: u32,
        lease: Duration,
    ) -> Option<Grant> {
        let mut conn = self.conn()?;
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        // The grant lapses here before Redis reaps it: counted from now.
        let sent_ms = clock::now_ms();
        let mut inv = self
            .scripts
            .capacity
            .key(format!("{}cap:{relay}", self.spec.load().prefix));
        inv.arg(&self.holder)
            .arg(cap)
            .arg(want)
            .arg(in_flight)
            .arg(lease_ms);
        let (grant, fair, edges): (u32, u32, u32) =
            self.call("capacity", inv.invoke_async(&mut conn)).await?;
        Some(Grant {
            grant,
            fair,
            edges,
            until_ms: sent_ms.saturating_add(lease_ms),
        })
    }
}

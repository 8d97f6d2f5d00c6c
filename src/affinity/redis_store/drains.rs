//! Admin drains, shared with every edge through Redis. A drain is not a
//! session: it is a set of upstream ids (`<prefix>draining`) beside the
//! table, changed by the admin API, announced on the table's channel, and
//! read again on that message and every few syncs.

use super::RedisStore;
use redis::AsyncCommands;
use std::collections::HashSet;

/// Called with the set of drained upstream ids read from Redis.
pub type DrainListener = Box<dyn Fn(&HashSet<String>) + Send + Sync>;

impl RedisStore {
    /// Payload of the message that says the drained set changed.
    pub(super) const DRAINS_CHANGED: &'static str = "drains";

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
    pub(super) async fn refresh_drains(&self) {
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

    /// Add `upstream` to the shared drained set (or take it out) and tell
    /// every edge; false if Redis is out of use or did not answer.
    pub(super) async fn write_drain(&self, upstream: &str, on: bool) -> bool {
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
}

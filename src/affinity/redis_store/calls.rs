//! The Redis call policy: how long a call may take, what a failed call
//! means, and how the store degrades. Every call has `redis.timeout`; a
//! call a request waits on (a lookup, a claim, a re-pin) is made
//! patiently; a failure is one record's, a lost connection, or an outage,
//! and only an outage (or a request-path timeout) takes Redis out of use
//! until a probe answers. A record that cannot be read is counted, and
//! discarded unless it is of a newer format.

use super::record::Unreadable;
use super::{RedisStore, SessionId};
use redis::{ErrorKind, RedisError, RedisResult};
use std::future::Future;
use std::time::{Duration, Instant};

/// What a failed call means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Redis is unreachable, slow or unwell: every session is affected.
    Outage,
    /// The call's own key or value is at fault: one session is affected.
    Record,
    /// The connection was lost or could not be remade. The connection
    /// manager reconnects on this error: a call on the new connection tells
    /// whether Redis is down.
    Connection,
}

impl Failure {
    pub fn of(e: &RedisError) -> Failure {
        match e.kind() {
            // A script that failed on a value (`ERR user_script...`), a reply
            // of the wrong type, a key of the wrong type (`WRONGTYPE`).
            ErrorKind::ResponseError | ErrorKind::TypeError | ErrorKind::ExtensionError => {
                Failure::Record
            }
            _ if e.is_io_error() || e.is_connection_dropped() => Failure::Connection,
            _ => Failure::Outage,
        }
    }
}

impl RedisStore {
    /// Run one Redis call with the timeout, counting errors and latency. A
    /// lost connection marks Redis down; a slow answer does not (see
    /// `call_patiently`, whose timeouts do).
    pub(super) async fn call<T>(
        &self,
        what: &str,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Option<T> {
        self.call_within(what, self.spec.load().timeout, fut).await
    }

    /// A call whose failure would move a session (a lookup, a claim, a
    /// re-pin): a slow answer is waited for once more, four times as long,
    /// before Redis counts as down, and a lost connection is tried once more
    /// on the new one. A moved session costs a prompt cache; a first request
    /// that waits 200 ms more costs far less. Each of these calls gives the
    /// same answer when run twice (a claim or a re-pin that did land finds
    /// its own pin in force).
    pub(super) async fn call_patiently<T, Fut>(
        &self,
        what: &str,
        mut make: impl FnMut() -> Fut,
    ) -> Option<T>
    where
        Fut: Future<Output = RedisResult<T>>,
    {
        let timeout = self.spec.load().timeout;
        let start = Instant::now();
        match tokio::time::timeout(timeout, make()).await {
            // Slow: once more, patiently.
            Err(_) => {}
            // The connection was lost (Redis restarted?): once more, on the
            // connection the manager is making now.
            Ok(Err(e)) if Failure::of(&e) == Failure::Connection => {
                log::debug!(
                    "redis {what}: {} error; trying the new connection",
                    e.category()
                );
            }
            first => return self.finish(what, timeout, start, first, true).await,
        }
        let (start, timeout) = (Instant::now(), timeout.saturating_mul(4));
        let result = tokio::time::timeout(timeout, make()).await;
        self.finish(what, timeout, start, result, true).await
    }

    /// The longer deadline of a background batch.
    pub(super) fn batch_timeout(&self) -> Duration {
        self.spec.load().timeout.saturating_mul(20)
    }

    pub(super) async fn call_within<T>(
        &self,
        what: &str,
        timeout: Duration,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Option<T> {
        let start = Instant::now();
        let result = tokio::time::timeout(timeout, fut).await;
        self.finish(what, timeout, start, result, false).await
    }

    /// Count and classify the result of a call that began at `start`. Only
    /// a request-path call (`timeouts_mean_down`) takes a timeout for an
    /// outage: a slow sweep or renewal in the background must not send every
    /// request to degraded placement.
    pub(super) async fn finish<T>(
        &self,
        what: &str,
        timeout: Duration,
        start: Instant,
        result: Result<RedisResult<T>, tokio::time::error::Elapsed>,
        timeouts_mean_down: bool,
    ) -> Option<T> {
        self.metrics
            .redis_duration
            .observe(start.elapsed().as_secs_f64());
        match result {
            Ok(Ok(v)) => return Some(v),
            Ok(Err(e)) => self.failed(what, &e).await,
            Err(_) if !timeouts_mean_down => {
                // Slow, not down: the next request-path call will tell.
                log::debug!("redis {what}: no answer within {timeout:?}");
            }
            Err(_) => self.outage(what, &format!("timeout after {timeout:?}")),
        }
        None
    }

    /// A call answered with an error: say what it means for the link.
    pub(super) async fn failed(&self, what: &str, e: &redis::RedisError) {
        match Failure::of(e) {
            Failure::Record => {
                // One key's problem: Redis stays in use for every other session.
                self.metrics.redis_record_errors.inc();
                log::warn!("redis {what}: {} on one record", e.category());
            }
            Failure::Connection if self.answers_ping().await => {
                // A connection that died with a restart of Redis (or idle, in
                // a middlebox): the manager has made a new one, which works.
                self.metrics.redis_errors.inc();
                log::info!(
                    "redis {what}: the connection was lost ({} error) and is remade",
                    e.category()
                );
            }
            Failure::Connection | Failure::Outage => {
                self.outage(what, &format!("{} error", e.category()))
            }
        }
    }

    /// Does Redis answer a PING within the probe's deadline? (After a lost
    /// connection, on the one the manager makes now.)
    pub(super) async fn answers_ping(&self) -> bool {
        let Some(conn) = self.conn.load_full() else {
            return false;
        };
        let mut conn = (*conn).clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        matches!(
            tokio::time::timeout(self.spec.load().timeout.saturating_mul(10), ping).await,
            Ok(Ok(_))
        )
    }

    /// Redis is down, slow or unwell: stop using it until a probe answers.
    fn outage(&self, what: &str, failure: &str) {
        self.metrics.redis_errors.inc();
        if self.link.went_down() {
            log::warn!("redis {what} failed ({failure}): serving from the local cache and consistent hashing until it is back");
        }
    }

    /// A record of `id` that cannot be read: a newer format is left alone;
    /// a malformed one is counted, logged with the session's hash, and
    /// deleted (if it has not changed meanwhile) so that the session is
    /// placed anew. Returns true if the record is gone.
    pub(super) async fn unreadable(&self, id: SessionId, value: &str, why: &Unreadable) -> bool {
        self.metrics.redis_record_errors.inc();
        log::warn!("redis: session {} holds {why}", id.to_hex());
        if matches!(why, Unreadable::Newer(_)) {
            return false;
        }
        let Some(mut conn) = self.conn() else {
            return false;
        };
        let mut inv = self.scripts.discard.key(self.bucket(id));
        inv.arg(&id.to_bytes()[..])
            .arg(value)
            .arg(self.channel())
            .arg(id.to_hex());
        self.call("discard", inv.invoke_async::<i64>(&mut conn))
            .await
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::Failure;
    use redis::{ErrorKind, RedisError};

    #[test]
    fn failures_have_kinds() {
        let record = RedisError::from((ErrorKind::ResponseError, "ERR user_script:1: bad"));
        assert_eq!(Failure::of(&record), Failure::Record);
        let wrongtype = RedisError::from((ErrorKind::TypeError, "unexpected reply"));
        assert_eq!(Failure::of(&wrongtype), Failure::Record);
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(Failure::of(&io), Failure::Connection);
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(Failure::of(&refused), Failure::Connection);
        let loading = RedisError::from((ErrorKind::BusyLoadingError, "LOADING"));
        assert_eq!(Failure::of(&loading), Failure::Outage);
        let cluster = RedisError::from((ErrorKind::ClusterDown, "CLUSTERDOWN"));
        assert_eq!(Failure::of(&cluster), Failure::Outage);
    }
}

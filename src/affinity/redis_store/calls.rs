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
use tokio::time::error::Elapsed;

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

/// How one attempt at a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Answered,
    Failed(Failure),
    TimedOut,
}

impl Ended {
    fn of<T>(result: &Result<RedisResult<T>, Elapsed>) -> Ended {
        match result {
            Ok(Ok(_)) => Ended::Answered,
            Ok(Err(e)) => Ended::Failed(Failure::of(e)),
            Err(_) => Ended::TimedOut,
        }
    }
}

/// What a patient call does after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Try once more, within this deadline.
    Again(Duration),
    /// The attempt's result is the call's.
    Finish,
}

/// The patience of a call whose failure would move a session: after its
/// first attempt (number 1, made within `timeout`), a slow answer is waited
/// for once more, four times as long, and a lost connection (Redis
/// restarted?) is tried once more on the connection the manager is making
/// now, within the same longer deadline. Nothing else is tried again, and
/// nothing is tried a third time.
pub fn next_step(attempt: u32, ended: Ended, timeout: Duration) -> Step {
    match (attempt, ended) {
        (1, Ended::TimedOut | Ended::Failed(Failure::Connection)) => {
            Step::Again(timeout.saturating_mul(4))
        }
        _ => Step::Finish,
    }
}

/// What the end of a call means for the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// An answer: the call's value.
    Answer,
    /// One record's fault: counted (`redis_record_errors`); Redis stays in
    /// use for every other session.
    OneRecord,
    /// The connection was lost: if Redis answers a PING on the manager's new
    /// one, counted (`redis_errors`) and still in use; if not, an outage.
    AskPing,
    /// No answer in time, in the background: not down; the next
    /// request-path call will tell.
    Slow,
    /// Counted (`redis_errors`); Redis is out of use (new sessions are
    /// placed by consistent hashing) until a probe answers.
    Outage,
}

/// What a call's end means. Only a request-path call
/// (`timeouts_mean_down`) takes a timeout for an outage: a slow sweep or
/// renewal in the background must not send every request to degraded
/// placement. An error means the same whoever made the call.
pub fn verdict(ended: Ended, timeouts_mean_down: bool) -> Verdict {
    match ended {
        Ended::Answered => Verdict::Answer,
        Ended::Failed(Failure::Record) => Verdict::OneRecord,
        Ended::Failed(Failure::Connection) => Verdict::AskPing,
        Ended::Failed(Failure::Outage) => Verdict::Outage,
        Ended::TimedOut if timeouts_mean_down => Verdict::Outage,
        Ended::TimedOut => Verdict::Slow,
    }
}

/// What becomes of a stored record that cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// A newer format (another binary's): neither adopted nor overwritten;
    /// this edge places the session for itself only.
    LeftAlone,
    /// Malformed: deleted (if it has not changed meanwhile), so that the
    /// session is placed anew.
    Discarded,
}

pub fn fate(why: &Unreadable) -> Fate {
    match why {
        Unreadable::Newer(_) => Fate::LeftAlone,
        Unreadable::Malformed => Fate::Discarded,
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
        let (mut attempt, mut timeout) = (1, self.spec.load().timeout);
        loop {
            let start = Instant::now();
            let result = tokio::time::timeout(timeout, make()).await;
            match next_step(attempt, Ended::of(&result), timeout) {
                Step::Finish => return self.finish(what, timeout, start, result, true).await,
                Step::Again(longer) => {
                    if let Ok(Err(e)) = &result {
                        log::debug!(
                            "redis {what}: {} error; trying the new connection",
                            e.category()
                        );
                    }
                    (attempt, timeout) = (attempt + 1, longer);
                }
            }
        }
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
        result: Result<RedisResult<T>, Elapsed>,
        timeouts_mean_down: bool,
    ) -> Option<T> {
        self.metrics
            .redis_duration
            .observe(start.elapsed().as_secs_f64());
        match result {
            Ok(Ok(v)) => return Some(v),
            Ok(Err(e)) => self.failed(what, &e).await,
            Err(_) => match verdict(Ended::TimedOut, timeouts_mean_down) {
                Verdict::Slow => log::debug!("redis {what}: no answer within {timeout:?}"),
                _ => self.outage(what, &format!("timeout after {timeout:?}")),
            },
        }
        None
    }

    /// A call answered with an error: say what it means for the link.
    pub(super) async fn failed(&self, what: &str, e: &RedisError) {
        if self.follows_sentinels() && super::sentinel::reasks(e) {
            self.link.ask_sentinels();
        }
        // (Whoever made the call: only a timeout's verdict depends on it.)
        match verdict(Ended::Failed(Failure::of(e)), false) {
            Verdict::OneRecord => {
                self.metrics.redis_record_errors.inc();
                log::warn!("redis {what}: {} on one record", e.category());
            }
            Verdict::AskPing if self.answers_ping().await => {
                // A connection that died with a restart of Redis (or idle, in
                // a middlebox): the manager has made a new one, which works.
                self.metrics.redis_errors.inc();
                log::info!(
                    "redis {what}: the connection was lost ({} error) and is remade",
                    e.category()
                );
            }
            Verdict::AskPing | Verdict::Outage => {
                self.outage(what, &format!("{} error", e.category()))
            }
            // Not the verdict on an error.
            Verdict::Answer | Verdict::Slow => {}
        }
    }

    /// Does Redis answer a PING within the probe's deadline? (After a lost
    /// connection, on the one the manager makes now.) With Sentinel: does
    /// it say it is the master (`ROLE`)?
    pub(super) async fn answers_ping(&self) -> bool {
        if self.follows_sentinels() {
            return self.answers_as_master().await;
        }
        let Some(conn) = self.conn.load_full() else {
            return false;
        };
        let mut conn = (*conn).clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        matches!(
            tokio::time::timeout(super::link::probe_timeout(&self.spec.load()), ping).await,
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
        if fate(why) == Fate::LeftAlone {
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
    use super::{fate, next_step, verdict, Ended, Failure, Fate, Step, Verdict};
    use crate::affinity::redis_store::record::Stored;
    use crate::affinity::redis_store::RedisStore;
    use crate::affinity::SessionId;
    use crate::config::{RedisSpec, RedisTarget};
    use crate::metrics::Metrics;
    use redis::{ErrorKind, RedisError, RedisResult};
    use std::cell::{Cell, RefCell};
    use std::collections::VecDeque;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// An error a Redis call can end with.
    #[derive(Debug, Clone, Copy)]
    enum Fault {
        ScriptError,
        WrongType,
        Extension,
        Reset,
        Refused,
        Eof,
        Loading,
        ClusterDown,
        TryAgain,
        Auth,
    }

    fn error(fault: Fault) -> RedisError {
        use std::io::{Error, ErrorKind as Io};
        match fault {
            Fault::ScriptError => (ErrorKind::ResponseError, "ERR user_script:1: bad").into(),
            Fault::WrongType => (ErrorKind::TypeError, "unexpected reply").into(),
            Fault::Extension => (ErrorKind::ExtensionError, "WRONGTYPE").into(),
            Fault::Reset => Error::from(Io::ConnectionReset).into(),
            Fault::Refused => Error::from(Io::ConnectionRefused).into(),
            Fault::Eof => Error::from(Io::UnexpectedEof).into(),
            Fault::Loading => (ErrorKind::BusyLoadingError, "LOADING").into(),
            Fault::ClusterDown => (ErrorKind::ClusterDown, "CLUSTERDOWN").into(),
            Fault::TryAgain => (ErrorKind::TryAgain, "TRYAGAIN").into(),
            Fault::Auth => (ErrorKind::AuthenticationFailed, "WRONGPASS").into(),
        }
    }

    /// What counts as a failure, and whose: (case, error, failure).
    #[rustfmt::skip]
    const FAILURES: &[(&str, Fault, Failure)] = &[
        ("a script that failed on a value", Fault::ScriptError, Failure::Record),
        ("a reply of the wrong type",       Fault::WrongType,   Failure::Record),
        ("a key of the wrong type",         Fault::Extension,   Failure::Record),
        ("a connection reset",              Fault::Reset,       Failure::Connection),
        ("a connection refused",            Fault::Refused,     Failure::Connection),
        ("a connection closed mid-reply",   Fault::Eof,         Failure::Connection),
        ("Redis loading its data",          Fault::Loading,     Failure::Outage),
        ("a cluster down",                  Fault::ClusterDown, Failure::Outage),
        ("a cluster resharding",            Fault::TryAgain,    Failure::Outage),
        ("a wrong password",                Fault::Auth,        Failure::Outage),
    ];

    #[test]
    fn failures_have_kinds() {
        for &(name, fault, want) in FAILURES {
            assert_eq!(Failure::of(&error(fault)), want, "{name}");
        }
    }

    const T: Duration = Duration::from_millis(100);
    const T4: Duration = Duration::from_millis(400);
    const LOST: Ended = Ended::Failed(Failure::Connection);
    const RECORD: Ended = Ended::Failed(Failure::Record);
    const DOWN: Ended = Ended::Failed(Failure::Outage);

    /// (case, attempt just made, how it ended, its deadline, what next)
    #[rustfmt::skip]
    const STEPS: &[(&str, u32, Ended, Duration, Step)] = &[
        ("an answer is the call's",                      1, Ended::Answered, T,  Step::Finish),
        ("slow: once more, four times as long",          1, Ended::TimedOut, T,  Step::Again(T4)),
        ("a lost connection: once more, on the new one", 1, LOST,            T,  Step::Again(T4)),
        ("one record's fault: not tried again",          1, RECORD,          T,  Step::Finish),
        ("an outage: not tried again",                   1, DOWN,            T,  Step::Finish),
        ("answered the second time",                     2, Ended::Answered, T4, Step::Finish),
        ("slow twice: no third attempt",                 2, Ended::TimedOut, T4, Step::Finish),
        ("lost twice: no third attempt",                 2, LOST,            T4, Step::Finish),
        ("attempt 0 (none made): nothing more",          0, Ended::TimedOut, T,  Step::Finish),
        ("an attempt past the policy's",                 7, LOST,            T,  Step::Finish),
        ("the last attempt number",               u32::MAX, Ended::TimedOut, T,  Step::Finish),
        ("a zero deadline stays zero",                   1, Ended::TimedOut, Duration::ZERO, Step::Again(Duration::ZERO)),
        ("the longest deadline saturates",               1, LOST,            Duration::MAX,  Step::Again(Duration::MAX)),
    ];

    #[test]
    fn a_patient_call_tries_once_more_when_slow_or_disconnected() {
        for &(name, attempt, ended, timeout, want) in STEPS {
            assert_eq!(next_step(attempt, ended, timeout), want, "{name}");
        }
    }

    /// (case, how the call ended, made on the request path, what it means)
    #[rustfmt::skip]
    const VERDICTS: &[(&str, Ended, bool, Verdict)] = &[
        ("an answer, for a request",                     Ended::Answered, true,  Verdict::Answer),
        ("an answer, in the background",                 Ended::Answered, false, Verdict::Answer),
        ("one record's fault, for a request",            RECORD,          true,  Verdict::OneRecord),
        ("one record's fault, in the background",        RECORD,          false, Verdict::OneRecord),
        ("a lost connection, for a request",             LOST,            true,  Verdict::AskPing),
        ("a lost connection, in the background",         LOST,            false, Verdict::AskPing),
        ("an outage, for a request",                     DOWN,            true,  Verdict::Outage),
        ("an outage, in the background",                 DOWN,            false, Verdict::Outage),
        ("a timeout, for a request: down",               Ended::TimedOut, true,  Verdict::Outage),
        ("a timeout, in the background: slow, not down", Ended::TimedOut, false, Verdict::Slow),
    ];

    #[test]
    fn what_the_end_of_a_call_means() {
        for &(name, ended, request_path, want) in VERDICTS {
            assert_eq!(verdict(ended, request_path), want, "{name}");
        }
    }

    /// A store whose Redis was up and is not connected: calls run as given,
    /// and a PING after a lost connection goes unanswered.
    fn store(timeout: Duration) -> RedisStore {
        let spec = RedisSpec {
            target: RedisTarget::Single("redis://127.0.0.1:1/".into()),
            prefix: "t:".into(),
            timeout,
            local_ttl: Duration::from_secs(60),
            local_cache_size: 100,
            sync_interval: Duration::from_secs(10),
            batch_size: 10,
            buckets: 16,
            connect_wait: Duration::from_millis(10),
        };
        let store = RedisStore::new(spec, Duration::from_secs(3600), Arc::new(Metrics::new()));
        store.link.came_up();
        store
    }

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    /// One attempt's reply, as a test scripts it.
    #[derive(Debug, Clone, Copy)]
    enum Reply {
        Answer(i64),
        Fails(Fault),
        /// No answer, ever.
        Silent,
    }
    use Fault::{Eof, Loading, Refused, Reset, ScriptError, WrongType};
    use Reply::{Answer, Fails, Silent};

    /// A patient call: (case, its attempts' replies; what it returns,
    /// attempts made, record errors and errors counted, Redis still in use).
    type Patient = (
        &'static str,
        &'static [Reply],
        Option<i64>,
        u32,
        u64,
        u64,
        bool,
    );

    #[rustfmt::skip]
    const PATIENT: &[Patient] = &[
        ("answered at once",                         &[Answer(7)],                           Some(7), 1, 0, 0, true),
        ("slow, then answered",                      &[Silent, Answer(7)],                   Some(7), 2, 0, 0, true),
        ("slow twice: an outage",                    &[Silent, Silent],                      None,    2, 0, 1, false),
        ("lost, answered on the new connection",     &[Fails(Reset), Answer(7)],             Some(7), 2, 0, 0, true),
        ("refused, answered on the new connection",  &[Fails(Refused), Answer(7)],           Some(7), 2, 0, 0, true),
        ("lost twice, no PING answers: an outage",   &[Fails(Reset), Fails(Eof)],            None,    2, 0, 1, false),
        ("slow, then lost: an outage",               &[Silent, Fails(Reset)],                None,    2, 0, 1, false),
        ("lost, then slow: an outage",               &[Fails(Reset), Silent],                None,    2, 0, 1, false),
        ("one record's fault: not tried again",      &[Fails(ScriptError), Answer(7)],       None,    1, 1, 0, true),
        ("a reply of the wrong type: the same",      &[Fails(WrongType)],                    None,    1, 1, 0, true),
        ("slow, then one record's fault",            &[Silent, Fails(ScriptError)],          None,    2, 1, 0, true),
        ("loading: an outage at once",               &[Fails(Loading), Answer(7)],           None,    1, 0, 1, false),
        ("a cluster down: an outage at once",        &[Fails(Fault::ClusterDown)],           None,    1, 0, 1, false),
        ("a third attempt is never made",            &[Silent, Silent, Answer(7)],           None,    2, 0, 1, false),
        ("no reply scripted: silence",               &[],                                    None,    2, 0, 1, false),
    ];

    #[test]
    fn a_patient_call_returns_counts_and_degrades() {
        const TIMEOUT: Duration = Duration::from_millis(20);
        for &(name, script, returns, attempts, record_errors, errors, up) in PATIENT {
            let store = store(TIMEOUT);
            let replies = RefCell::new(script.iter().copied().collect::<VecDeque<_>>());
            let asked = Cell::new(0u32);
            let began = Instant::now();
            let got = block(store.call_patiently("test", || {
                asked.set(asked.get() + 1);
                let reply = replies.borrow_mut().pop_front();
                async move {
                    match reply {
                        Some(Answer(v)) => RedisResult::Ok(v),
                        Some(Fails(fault)) => Err(error(fault)),
                        Some(Silent) | None => std::future::pending().await,
                    }
                }
            }));
            let m = &store.metrics;
            assert_eq!(got, returns, "{name}: returns");
            assert_eq!(asked.get(), attempts, "{name}: attempts");
            assert_eq!(
                m.redis_record_errors.get(),
                record_errors,
                "{name}: record errors"
            );
            assert_eq!(m.redis_errors.get(), errors, "{name}: errors");
            assert_eq!(store.link.is_up(), up, "{name}: Redis in use");
            assert_eq!(
                m.redis_duration.get_sample_count(),
                1,
                "{name}: one call timed"
            );
            // How long it waited: a silent attempt its whole deadline, the
            // first `timeout`, the second four times that.
            let waited: Duration = (0..attempts as usize)
                .filter(|&i| matches!(script.get(i), Some(Silent) | None))
                .map(|i| if i == 0 { TIMEOUT } else { TIMEOUT * 4 })
                .sum();
            assert!(
                began.elapsed() >= waited,
                "{name}: waited {:?}",
                began.elapsed()
            );
        }
    }

    /// (case, stored value, what becomes of it: none if it reads)
    #[rustfmt::skip]
    const UNREADABLE: &[(&str, &str, Option<Fate>)] = &[
        ("format 1 reads",                            "relay-a\t1\t2\t3\t4",             None),
        ("format 1 with metadata reads",              "relay-a\t1\t2\t3\t4\t{\"t\":1}",  None),
        ("a slash past the start is no version mark", "relay/a\t1\t2\t3\t4",             None),
        ("a newer format is left alone",              "/2\trelay-a\t1\t2\t3\t4",         Some(Fate::LeftAlone)),
        ("a newer format of any layout",              "/9\t{\"future\":true}",           Some(Fate::LeftAlone)),
        ("a bare version mark counts as newer",       "/",                               Some(Fate::LeftAlone)),
        ("empty: discarded",                          "",                                Some(Fate::Discarded)),
        ("no upstream: discarded",                    "\t1\t2\t3\t4",                    Some(Fate::Discarded)),
        ("too few fields: discarded",                 "relay-a\t1\t2\t3",                Some(Fate::Discarded)),
        ("a time that is no number: discarded",       "relay-a\tx\t2\t3\t4",             Some(Fate::Discarded)),
        ("a negative count: discarded",               "relay-a\t1\t2\t-3\t4",            Some(Fate::Discarded)),
        ("spaces for tabs: discarded",                "relay-a 1 2 3 4",                 Some(Fate::Discarded)),
    ];

    #[test]
    fn an_unreadable_record_is_counted_and_left_alone_or_discarded() {
        let store = store(Duration::from_millis(20));
        let mut counted = 0;
        for &(name, value, want) in UNREADABLE {
            let why = match Stored::parse(value) {
                Ok(_) => {
                    assert_eq!(want, None, "{name}: it reads");
                    continue;
                }
                Err(why) => why,
            };
            assert_eq!(Some(fate(&why)), want, "{name}");
            // Without a connection nothing is deleted, and the caller keeps
            // its own pin for this edge; either way the record is counted.
            let gone = block(store.unreadable(SessionId(1), value, &why));
            assert!(!gone, "{name}: not gone");
            counted += 1;
            assert_eq!(
                store.metrics.redis_record_errors.get(),
                counted,
                "{name}: counted"
            );
        }
        assert_eq!(store.metrics.redis_errors.get(), 0);
        assert!(
            store.link.is_up(),
            "one record's problem: Redis stays in use"
        );
    }
}

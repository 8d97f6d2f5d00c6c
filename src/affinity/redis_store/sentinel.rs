//! Asking Redis Sentinel where the master is (`redis.sentinel`), and when.
//!
//! The sentinels are asked in turn, the one that answered last first, then
//! the configured ones, then those learnt from them (`SENTINEL sentinels`,
//! so that sentinels added later are found and gone ones skipped), as the
//! Sentinel client guidelines say. A master they name counts only once it
//! says so itself (`ROLE`): during a failover the promoted replica may not
//! be a master yet, and a demoted one is not any more.
//!
//! [`reasks`] and [`reasks_on`] decide when the link asks again: on a lost
//! connection, `READONLY`, `LOADING` or `MASTERDOWN` from the master, and
//! on a sentinel's `+switch-master` for this master. Nothing here runs per
//! request: the link asks only on those signs (`follow.rs` acts on them).

use crate::config::SentinelSpec;
use redis::aio::ConnectionLike;
use redis::{ConnectionAddr, ConnectionInfo, ErrorKind, RedisConnectionInfo, RedisError, Value};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The sentinels' channel of completed failovers.
pub const SWITCH_MASTER: &str = "+switch-master";

/// At most this many sentinels are learnt beyond the configured ones.
const MAX_LEARNT: usize = 16;

/// A server's address as Sentinel names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host.contains(':') {
            true => write!(f, "[{}]:{}", self.host, self.port),
            false => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// Why the sentinels gave no master to use. Only error kinds are shown:
/// nothing here quotes a reply, an address's credentials or a password.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("no sentinel answered ({} tried; the last: {:?} error)", .tried, .last.kind())]
    NoSentinel {
        tried: usize,
        #[source]
        last: RedisError,
    },
    #[error("the sentinels know no master named {0:?}")]
    UnknownMaster(String),
    #[error("{at}, which the sentinels name, is not a master (yet): its role is {role:?}")]
    NotMaster { at: Addr, role: String },
    #[error("the master is unreachable ({:?} error)", .0.kind())]
    Master(#[source] RedisError),
}

/// The sentinels to ask, in order.
#[derive(Debug, Default)]
pub struct Known(Mutex<KnownInner>);

#[derive(Debug, Default)]
struct KnownInner {
    /// The one that answered last.
    first: Option<(String, u16)>,
    /// Named by the sentinels, beyond the configured ones.
    learnt: Vec<(String, u16)>,
}

impl Known {
    /// The one that answered last, the configured ones, the learnt ones;
    /// each once.
    pub fn order(&self, spec: &SentinelSpec) -> Vec<(String, u16)> {
        let Ok(k) = self.0.lock() else {
            return spec.nodes.clone();
        };
        let mut all: Vec<(String, u16)> = Vec::new();
        for n in k.first.iter().chain(&spec.nodes).chain(&k.learnt) {
            if !all.contains(n) {
                all.push(n.clone());
            }
        }
        all
    }

    fn answered(&self, node: &(String, u16), others: Vec<(String, u16)>, spec: &SentinelSpec) {
        if let Ok(mut k) = self.0.lock() {
            k.first = Some(node.clone());
            if !others.is_empty() {
                k.learnt = others
                    .into_iter()
                    .filter(|n| !spec.nodes.contains(n))
                    .take(MAX_LEARNT)
                    .collect();
            }
        }
    }

    /// Ask `node` first next time.
    pub fn prefer(&self, node: &(String, u16)) {
        if let Ok(mut k) = self.0.lock() {
            k.first = Some(node.clone());
        }
    }

    /// Another configuration: forget what was learnt.
    pub fn reset(&self) {
        if let Ok(mut k) = self.0.lock() {
            *k = KnownInner::default();
        }
    }
}

/// How to reach a sentinel: its own password, no database.
pub fn sentinel_info(spec: &SentinelSpec, (host, port): &(String, u16)) -> ConnectionInfo {
    ConnectionInfo {
        addr: ConnectionAddr::Tcp(host.clone(), *port),
        redis: RedisConnectionInfo {
            password: spec.password.clone(),
            ..RedisConnectionInfo::default()
        },
    }
}

/// How to reach the data node at `at`: `redis.url`'s scheme, credentials
/// and database (plain, no password, database 0 without it), at the
/// address the sentinels named.
pub fn data_node(spec: &SentinelSpec, at: &Addr) -> redis::RedisResult<ConnectionInfo> {
    let mut info = match &spec.url {
        Some(url) => redis::IntoConnectionInfo::into_connection_info(url.as_str())?,
        None => ConnectionInfo {
            addr: ConnectionAddr::Tcp(String::new(), 0),
            redis: RedisConnectionInfo::default(),
        },
    };
    info.addr = match info.addr {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: at.host.clone(),
            port: at.port,
            insecure,
            tls_params,
        },
        ConnectionAddr::Tcp(..) | ConnectionAddr::Unix(_) => {
            ConnectionAddr::Tcp(at.host.clone(), at.port)
        }
    };
    Ok(info)
}

/// The master's address, as the first sentinel that answers names it
/// (each within `within`). That sentinel is asked first next time, and
/// the other sentinels it knows are learnt.
pub async fn ask_master(
    spec: &SentinelSpec,
    known: &Known,
    within: Duration,
) -> Result<Addr, AskError> {
    let order = known.order(spec);
    let (mut unknown, mut last) = (false, None);
    for node in &order {
        match ask_one(spec, node, within).await {
            Ok((Some(at), others)) => {
                known.answered(node, others, spec);
                return Ok(at);
            }
            // This sentinel does not monitor it; another may.
            Ok((None, _)) => unknown = true,
            Err(e) => last = Some(e),
        }
    }
    match (unknown, last) {
        (true, _) => Err(AskError::UnknownMaster(spec.master.clone())),
        (false, last) => Err(AskError::NoSentinel {
            tried: order.len(),
            last: last.unwrap_or_else(|| (ErrorKind::ClientError, "no sentinel").into()),
        }),
    }
}

/// One sentinel's answer: the master's address (none if it does not know
/// the name) and the other sentinels it knows.
async fn ask_one(
    spec: &SentinelSpec,
    node: &(String, u16),
    within: Duration,
) -> redis::RedisResult<(Option<Addr>, Vec<(String, u16)>)> {
    let client = redis::Client::open(sentinel_info(spec, node))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(within)
        .set_response_timeout(within);
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let mut get = redis::cmd("SENTINEL");
    get.arg("get-master-addr-by-name").arg(&spec.master);
    let addr: Option<(String, String)> = get.query_async(&mut conn).await?;
    let Some((host, port)) = addr else {
        return Ok((None, Vec::new()));
    };
    let port = port
        .parse()
        .map_err(|_| RedisError::from((ErrorKind::TypeError, "a sentinel named a bad port")))?;
    let mut others = redis::cmd("SENTINEL");
    others.arg("sentinels").arg(&spec.master);
    let others: Vec<HashMap<String, String>> =
        others.query_async(&mut conn).await.unwrap_or_default();
    let others = others
        .iter()
        .filter_map(|s| Some((s.get("ip")?.clone(), s.get("port")?.parse().ok()?)))
        .collect();
    Ok((Some(Addr { host, port }), others))
}

/// The server's role as it says itself (`master`, `slave`, `sentinel`),
/// asked with a PING in one round trip: a server loading its data answers
/// ROLE but not PING, and is no master to use yet.
async fn role<C: ConnectionLike>(conn: &mut C) -> redis::RedisResult<String> {
    let mut ask = redis::pipe();
    ask.cmd("PING").ignore().cmd("ROLE");
    let (reply,): (Vec<Value>,) = ask.query_async(conn).await?;
    match reply.first() {
        Some(first) => redis::from_redis_value(first),
        None => Err((ErrorKind::TypeError, "an empty ROLE reply").into()),
    }
}

/// Does the server at `at` (on `conn`) say, within `within`, that it is
/// a master, and answer a PING?
pub async fn confirm_master<C: ConnectionLike>(
    conn: &mut C,
    at: &Addr,
    within: Duration,
) -> Result<(), AskError> {
    let timed_out = || RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
    let role = tokio::time::timeout(within, role(conn))
        .await
        .unwrap_or_else(|_| Err(timed_out()))
        .map_err(AskError::Master)?;
    match role.as_str() {
        "master" => Ok(()),
        _ => Err(AskError::NotMaster {
            at: at.clone(),
            role,
        }),
    }
}

/// Does this failed call mean the master may have moved? A lost or
/// refused connection, or the server saying it is no master (`READONLY`:
/// demoted to a replica; `LOADING`: restarted or resyncing;
/// `MASTERDOWN`: a replica cut off from its master). A record's own
/// error, a missing script or a wrong password is no sign of a move.
pub fn reasks(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ReadOnly | ErrorKind::BusyLoadingError | ErrorKind::MasterDown
    ) || e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
}

/// Does a sentinel's message on `channel` say that `master` moved?
/// `+switch-master <name> <old ip> <old port> <new ip> <new port>`.
pub fn reasks_on(channel: &str, payload: &str, master: &str) -> bool {
    channel == SWITCH_MASTER && payload.split(' ').next() == Some(master)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SentinelSpec;

    fn spec(nodes: &[(&str, u16)], url: Option<&str>) -> SentinelSpec {
        SentinelSpec {
            master: "mymaster".into(),
            nodes: nodes.iter().map(|(h, p)| (h.to_string(), *p)).collect(),
            password: Some("sentinel-secret".into()),
            url: url.map(str::to_string),
        }
    }

    /// A failed call: (case, its error, whether the link asks again).
    #[test]
    fn which_failures_make_the_link_ask_the_sentinels_again() {
        use std::io::{Error, ErrorKind as Io};
        let server = |kind, code: &'static str| RedisError::from((kind, code));
        #[rustfmt::skip]
        let cases: Vec<(&str, RedisError, bool)> = vec![
            ("READONLY: the master was demoted",        server(ErrorKind::ReadOnly, "READONLY"),               true),
            ("LOADING: restarted, or resyncing",        server(ErrorKind::BusyLoadingError, "LOADING"),        true),
            ("MASTERDOWN: a replica without a master",  server(ErrorKind::MasterDown, "MASTERDOWN"),           true),
            ("a connection reset",                      Error::from(Io::ConnectionReset).into(),               true),
            ("a connection refused",                    Error::from(Io::ConnectionRefused).into(),             true),
            ("a connection closed mid-reply",           Error::from(Io::UnexpectedEof).into(),                 true),
            ("a broken pipe",                           Error::from(Io::BrokenPipe).into(),                    true),
            ("no answer within the client's deadline",  Error::from(Io::TimedOut).into(),                      true),
            ("a script failed on a value",              server(ErrorKind::ResponseError, "ERR user_script"),   false),
            ("a key of the wrong type",                 server(ErrorKind::ExtensionError, "WRONGTYPE"),        false),
            ("a reply of the wrong type",               server(ErrorKind::TypeError, "unexpected reply"),      false),
            ("a script not loaded",                     server(ErrorKind::NoScriptError, "NOSCRIPT"),          false),
            ("a wrong password",                        server(ErrorKind::AuthenticationFailed, "WRONGPASS"),  false),
            ("out of memory",                           server(ErrorKind::ExtensionError, "OOM"),              false),
            ("a cluster resharding",                    server(ErrorKind::TryAgain, "TRYAGAIN"),               false),
        ];
        for (name, error, want) in cases {
            assert_eq!(reasks(&error), want, "{name}");
        }
    }

    /// A sentinel's message: (case, channel, payload, whether to ask again).
    #[rustfmt::skip]
    const MESSAGES: &[(&str, &str, &str, bool)] = &[
        ("this master switched",               "+switch-master", "mymaster 127.0.0.1 6379 127.0.0.1 6380", true),
        ("this master, by a hostname",         "+switch-master", "mymaster redis-a 6379 redis-b 6379",     true),
        ("another master switched",            "+switch-master", "other 127.0.0.1 6379 127.0.0.1 6380",    false),
        ("a name that only starts like ours",  "+switch-master", "mymaster2 127.0.0.1 6379 127.0.0.1 6380", false),
        ("a name that ends like ours",         "+switch-master", "my 127.0.0.1 6379 127.0.0.1 6380",       false),
        ("an empty payload",                   "+switch-master", "",                                        false),
        ("the failover begun: not over yet",   "+try-failover",  "master mymaster 127.0.0.1 6379",          false),
        ("a replica promoted: not switched",   "+promoted-slave","slave 127.0.0.1:6380 127.0.0.1 6380 @ mymaster 127.0.0.1 6379", false),
        ("the master subjectively down",       "+sdown",         "master mymaster 127.0.0.1 6379",          false),
        ("a payload in the wrong channel",     "+failover-end",  "mymaster 127.0.0.1 6379 127.0.0.1 6380", false),
    ];

    #[test]
    fn only_a_switch_of_this_master_makes_the_link_ask_again() {
        for &(name, channel, payload, want) in MESSAGES {
            assert_eq!(reasks_on(channel, payload, "mymaster"), want, "{name}");
        }
    }

    #[test]
    fn the_last_sentinel_to_answer_is_asked_first_then_the_configured_then_the_learnt() {
        let spec = spec(&[("a", 1), ("b", 2)], None);
        let known = Known::default();
        let names =
            |k: &Known| -> Vec<String> { k.order(&spec).into_iter().map(|(h, _)| h).collect() };
        assert_eq!(names(&known), ["a", "b"]);
        let learnt = vec![("c".into(), 3), ("a".into(), 1), ("d".into(), 4)];
        known.answered(&("b".into(), 2), learnt, &spec);
        assert_eq!(names(&known), ["b", "a", "c", "d"], "each once");
        // A sentinel that says nothing of the others keeps what was learnt.
        known.answered(&("c".into(), 3), Vec::new(), &spec);
        assert_eq!(names(&known), ["c", "a", "b", "d"]);
        // Sentinels come and go: the learnt ones are the last answer's.
        known.answered(&("a".into(), 1), vec![("e".into(), 5)], &spec);
        assert_eq!(names(&known), ["a", "b", "e"]);
        let many = (0..100).map(|i| (format!("s{i}"), 1)).collect();
        known.answered(&("a".into(), 1), many, &spec);
        assert_eq!(known.order(&spec).len(), 2 + MAX_LEARNT, "bounded");
        // The sentinel that told of a switch is asked first.
        known.prefer(&("b".into(), 2));
        assert_eq!(names(&known)[0], "b");
        known.reset();
        assert_eq!(names(&known), ["a", "b"]);
    }

    #[test]
    fn a_data_node_keeps_the_urls_scheme_credentials_and_database_at_the_named_address() {
        let at = Addr {
            host: "10.0.0.9".into(),
            port: 6390,
        };
        let info = data_node(&spec(&[], Some("redis://:data-secret@mymaster/3")), &at)
            .expect("a valid URL");
        assert_eq!(info.addr, ConnectionAddr::Tcp("10.0.0.9".into(), 6390));
        assert_eq!(info.redis.password.as_deref(), Some("data-secret"));
        assert_eq!(info.redis.db, 3);
        let tls = data_node(&spec(&[], Some("rediss://h:1/0#insecure")), &at).expect("valid");
        assert!(matches!(
            tls.addr,
            ConnectionAddr::TcpTls { ref host, port: 6390, insecure: true, .. } if host == "10.0.0.9"
        ));
        let plain = data_node(&spec(&[], None), &at).expect("no URL: plain");
        assert_eq!(plain.addr, ConnectionAddr::Tcp("10.0.0.9".into(), 6390));
        assert_eq!((plain.redis.password, plain.redis.db), (None, 0));
        // The sentinels' password is theirs only.
        let s = sentinel_info(&spec(&[], None), &("h".into(), 26379));
        assert_eq!(s.redis.password.as_deref(), Some("sentinel-secret"));
        assert_eq!(s.redis.db, 0);
    }

    #[test]
    fn an_address_is_shown_as_host_and_port() {
        let v4 = Addr {
            host: "10.0.0.1".into(),
            port: 6379,
        };
        let v6 = Addr {
            host: "::1".into(),
            port: 6380,
        };
        assert_eq!(
            (v4.to_string(), v6.to_string()),
            ("10.0.0.1:6379".into(), "[::1]:6380".into())
        );
    }
}

//! The shared table: its Redis URL, cluster or sentinels, and its paces.

use super::*;

pub(super) fn redis_url(url: &str, path: &str, errs: &mut Errors) {
    // Never echo the URL: it may carry a password.
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        errs.push(path, "must start with redis:// or rediss://");
    } else if redis::Client::open(url).is_err() {
        errs.push(path, "is not a valid Redis URL");
    }
}

pub(super) fn redis_spec(r: RedisFile, errs: &mut Errors) -> RedisSpec {
    let RedisFile {
        url,
        cluster,
        sentinel,
        prefix,
        timeout,
        local_ttl,
        local_cache_size,
        sync_interval,
        batch_size,
        buckets,
        connect_wait,
    } = r;
    let target = redis_target(url, cluster, sentinel, errs);
    RedisSpec {
        target,
        prefix: prefix.unwrap_or_else(|| Defaults::REDIS_PREFIX.to_string()),
        timeout: duration(
            timeout,
            Defaults::REDIS_TIMEOUT,
            (MS, MINUTE),
            "redis.timeout",
            errs,
        ),
        local_ttl: duration(
            local_ttl,
            Defaults::REDIS_LOCAL_TTL,
            (MS, DAY),
            "redis.local_ttl",
            errs,
        ),
        local_cache_size: number(
            local_cache_size,
            Defaults::REDIS_LOCAL_CACHE_SIZE,
            (1, Limits::MAX_SESSIONS),
            "redis.local_cache_size",
            errs,
        ),
        sync_interval: duration(
            sync_interval,
            Defaults::REDIS_SYNC_INTERVAL,
            (10 * MS, HOUR),
            "redis.sync_interval",
            errs,
        ),
        batch_size: number(
            batch_size,
            Defaults::REDIS_BATCH_SIZE,
            (1, 100_000),
            "redis.batch_size",
            errs,
        ),
        buckets: number(
            buckets,
            Defaults::REDIS_BUCKETS,
            (1, 1 << 20),
            "redis.buckets",
            errs,
        ),
        connect_wait: duration(
            connect_wait,
            Defaults::REDIS_CONNECT_WAIT,
            (Duration::ZERO, 10 * MINUTE),
            "redis.connect_wait",
            errs,
        ),
    }
}

/// Where the table lives: `url`, `cluster`, or `sentinel` (with `url`, if
/// given, for the data nodes' scheme, credentials and database).
fn redis_target(
    url: Option<String>,
    cluster: Option<Vec<String>>,
    sentinel: Option<SentinelFile>,
    errs: &mut Errors,
) -> RedisTarget {
    if let Some(url) = &url {
        redis_url(url, "redis.url", errs);
    }
    match (url, cluster, sentinel) {
        (url, None, Some(s)) => RedisTarget::Sentinel(sentinel_spec(s, url, errs)),
        (Some(url), None, None) => RedisTarget::Single(url),
        (None, Some(urls), None) => {
            if urls.is_empty() {
                errs.push("redis.cluster", "needs at least one node URL");
            }
            for (i, url) in urls.iter().enumerate() {
                redis_url(url, &format!("redis.cluster[{i}]"), errs);
            }
            RedisTarget::Cluster(urls)
        }
        (url, Some(_), Some(s)) => {
            errs.push(
                "redis.sentinel",
                "cannot go with redis.cluster: Sentinel watches one master, a cluster is sharded",
            );
            // Its own mistakes are reported too.
            RedisTarget::Sentinel(sentinel_spec(s, url, errs))
        }
        (Some(_), Some(_), None) => {
            errs.push("redis", "needs exactly one of url and cluster");
            RedisTarget::Cluster(Vec::new())
        }
        (None, None, None) => {
            errs.push("redis", "needs one of url, cluster and sentinel");
            RedisTarget::Cluster(Vec::new())
        }
    }
}

/// `redis.sentinel`. Never echoes a value: a node written as a URL may
/// carry a password.
fn sentinel_spec(s: SentinelFile, url: Option<String>, errs: &mut Errors) -> SentinelSpec {
    let SentinelFile {
        master,
        nodes,
        password,
    } = s;
    let master = master.unwrap_or_default();
    if master.is_empty() {
        errs.push(
            "redis.sentinel.master",
            "is required: the name in the sentinels' `sentinel monitor` line",
        );
    } else if !master.chars().all(|c| c.is_ascii_graphic()) {
        errs.push(
            "redis.sentinel.master",
            "must be one word of printable ASCII, as Sentinel names masters",
        );
    }
    let nodes = nodes.unwrap_or_default();
    if nodes.is_empty() {
        errs.push(
            "redis.sentinel.nodes",
            "needs at least one sentinel, as host:port",
        );
    }
    let mut parsed: Vec<(String, u16)> = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let path = format!("redis.sentinel.nodes[{i}]");
        match sentinel_node(node) {
            Some(n) if parsed.contains(&n) => errs.push(path, "is listed twice"),
            Some(n) => parsed.push(n),
            None => errs.push(
                path,
                "must be host:port (a sentinel's address, e.g. 10.0.0.1:26379 or [::1]:26379)",
            ),
        }
    }
    if password.as_deref() == Some("") {
        errs.push(
            "redis.sentinel.password",
            "must not be empty (leave it out for sentinels without a password)",
        );
    }
    SentinelSpec {
        master,
        nodes: parsed,
        password,
        url,
    }
}

/// `host:port` (an IPv6 host in brackets), or `None`.
pub(crate) fn sentinel_node(node: &str) -> Option<(String, u16)> {
    let (host, port) = node.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = match host.strip_prefix('[') {
        Some(v6) => v6
            .strip_suffix(']')?
            .parse::<std::net::Ipv6Addr>()
            .ok()?
            .to_string(),
        None => host.to_string(),
    };
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':');
    (!host.is_empty() && host.chars().all(plain) && (host.contains(':') == node.starts_with('[')))
        .then_some((host, port))
}

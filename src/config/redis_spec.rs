//! The shared table's settings (`redis:`): where it lives (one Redis, a
//! cluster, or the master Redis Sentinel names) and its paces. Validated
//! and defaulted by `validate/shared_table.rs`; no serde.

use std::time::Duration;

#[derive(Clone, PartialEq)]
pub struct RedisSpec {
    pub target: RedisTarget,
    pub prefix: String,
    pub timeout: Duration,
    pub local_ttl: Duration,
    pub local_cache_size: u64,
    pub sync_interval: Duration,
    pub batch_size: usize,
    pub buckets: u32,
    /// At start, how long to wait for the first connection before serving
    /// degraded (placing sessions without the shared table).
    pub connect_wait: Duration,
}

/// Where the shared table lives. The URLs and passwords may be secret:
/// never log or display them.
#[derive(Clone, PartialEq)]
pub enum RedisTarget {
    Single(String),
    Cluster(Vec<String>),
    /// The master that Redis Sentinel names, followed through failovers.
    Sentinel(SentinelSpec),
}

/// `redis.sentinel`, with `redis.url` (if any) for the data nodes.
#[derive(Clone, PartialEq)]
pub struct SentinelSpec {
    /// The name in the sentinels' `sentinel monitor` lines.
    pub master: String,
    /// The sentinels as configured, (host, port); more are learnt from them.
    pub nodes: Vec<(String, u16)>,
    /// The sentinels' own password (their `requirepass`).
    pub password: Option<String>,
    /// `redis.url`: the data nodes' scheme, credentials and database; its
    /// host and port are not used (the sentinels name the master's).
    pub url: Option<String>,
}

impl RedisTarget {
    /// The URLs to subscribe to for invalidations (pub/sub is
    /// cluster-wide). None for Sentinel: the subscription follows the
    /// master the sentinels name.
    pub fn pubsub_urls(&self) -> Vec<&str> {
        match self {
            RedisTarget::Single(url) => vec![url.as_str()],
            RedisTarget::Cluster(urls) => urls.iter().map(String::as_str).collect(),
            RedisTarget::Sentinel(_) => Vec::new(),
        }
    }
}

impl RedisSpec {
    /// Same server(s), prefix and buckets: the same table, laid out the same.
    pub fn same_table(&self, other: &RedisSpec) -> bool {
        self.target == other.target && self.prefix == other.prefix && self.buckets == other.buckets
    }
}

impl std::fmt::Debug for RedisSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = match &self.target {
            RedisTarget::Single(_) => "single <redacted>".to_string(),
            RedisTarget::Cluster(urls) => format!("cluster of {} <redacted>", urls.len()),
            RedisTarget::Sentinel(s) => format!(
                "sentinel master {:?} of {} sentinels <redacted>",
                s.master,
                s.nodes.len()
            ),
        };
        f.debug_struct("RedisSpec")
            .field("target", &target)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

//! The shared table: its Redis URL or cluster, and its paces.

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
        prefix,
        timeout,
        local_ttl,
        local_cache_size,
        sync_interval,
        batch_size,
        buckets,
        connect_wait,
    } = r;
    let target = match (url, cluster) {
        (Some(url), None) => {
            redis_url(&url, "redis.url", errs);
            RedisTarget::Single(url)
        }
        (None, Some(urls)) => {
            if urls.is_empty() {
                errs.push("redis.cluster", "needs at least one node URL");
            }
            for (i, url) in urls.iter().enumerate() {
                redis_url(url, &format!("redis.cluster[{i}]"), errs);
            }
            RedisTarget::Cluster(urls)
        }
        _ => {
            errs.push("redis", "needs exactly one of url and cluster");
            RedisTarget::Cluster(Vec::new())
        }
    };
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

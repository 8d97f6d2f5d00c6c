//! Relay capacity: the queue in front of a capped relay, and the leases
//! that share its cap across edges (the caps are the upstreams').

use super::*;

pub(super) fn capacity_spec(c: CapacityFile, errs: &mut Errors) -> CapacitySpec {
    let CapacityFile {
        max_inflight: _,
        queue_max,
        queue_timeout,
        fast_fail_wait,
        sync_interval,
        lease,
        on_redis_down,
    } = c;
    let sync_interval = duration(
        sync_interval,
        Defaults::CAPACITY_SYNC_INTERVAL,
        (10 * MS, MINUTE),
        "capacity.sync_interval",
        errs,
    );
    let lease = duration(
        lease,
        Defaults::CAPACITY_LEASE,
        (20 * MS, 10 * MINUTE),
        "capacity.lease",
        errs,
    );
    if lease < 2 * sync_interval {
        // A lease must outlive one lost renewal.
        errs.push(
            "capacity.lease",
            "must be at least twice capacity.sync_interval",
        );
    }
    let on_redis_down = match on_redis_down.as_deref().unwrap_or("share") {
        "share" => OnRedisDown::Share,
        "closed" => OnRedisDown::Closed,
        "open" => OnRedisDown::Open,
        other => {
            errs.push(
                "capacity.on_redis_down",
                format!("{other:?}: must be share, closed or open"),
            );
            OnRedisDown::Share
        }
    };
    CapacitySpec {
        queue_max: number(
            queue_max,
            Defaults::QUEUE_MAX,
            (0, Limits::QUEUE_MAX),
            "capacity.queue_max",
            errs,
        ),
        queue_timeout: duration(
            queue_timeout,
            Defaults::QUEUE_TIMEOUT,
            (Duration::ZERO, HOUR),
            "capacity.queue_timeout",
            errs,
        ),
        fast_fail_wait: duration(
            fast_fail_wait,
            Defaults::FAST_FAIL_WAIT,
            (Duration::ZERO, HOUR),
            "capacity.fast_fail_wait",
            errs,
        ),
        sync_interval,
        lease,
        on_redis_down,
    }
}

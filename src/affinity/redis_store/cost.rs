//! What the shared table costs Redis, and the pacing decisions that make it
//! so: pure functions, so that the README's cost model and the code agree
//! (the model is [`Model::commands_per_s`], and its terms are the paces
//! below).
//!
//! Commands are counted as Redis's `INFO commandstats` counts them: a
//! script call is one `EVALSHA` plus every command it runs.

/// Renewals of one session, by each edge that serves it, are at least this
/// far apart: a quarter of the TTL. The sweep keeps a session this long
/// (plus a sync interval) past its TTL, so that an edge's unwritten renewal
/// never loses it.
pub fn renew_every_ms(ttl_ms: u64) -> u64 {
    (ttl_ms / 4).max(1)
}

/// Sessions last seen (as Redis has it) before this are swept.
pub fn sweep_cutoff_ms(now_ms: u64, ttl_ms: u64, sync_ms: u64) -> u64 {
    now_ms.saturating_sub(ttl_ms + renew_every_ms(ttl_ms) + sync_ms)
}

/// Buckets one sweep round covers, so that the fleet sweeps every bucket
/// once per `ttl` with one round per sync interval. The sweep is only the
/// collector: a session past its TTL may stay in Redis until its bucket's
/// turn (at most `ttl` more), and is counted meanwhile; its cost is per
/// bucket, whether the bucket holds one session or a hundred.
pub fn buckets_per_round(buckets: u32, sync_ms: u64, ttl_ms: u64) -> u32 {
    let buckets = buckets.max(1);
    (u64::from(buckets) * sync_ms / ttl_ms.max(1)).clamp(1, u64::from(buckets)) as u32
}

/// The visits of a round that starts at the fleet's shared `cursor`:
/// (visit number, bucket).
pub fn round_buckets(
    cursor: u64,
    per_round: u32,
    buckets: u32,
) -> impl Iterator<Item = (u64, u32)> {
    let buckets = u64::from(buckets.max(1));
    (0..u64::from(per_round)).map(move |i| {
        let visit = cursor.wrapping_add(i);
        (visit, (visit % buckets) as u32)
    })
}

/// Whether a visit also re-adds the bucket's live sessions to the index
/// (the repair of an index write a crash left out): every fourth pass.
pub fn repairs_index(visit: u64, buckets: u32) -> bool {
    (visit / u64::from(buckets.max(1))) % 4 == 0
}

/// How long a won sweep lease keeps the other edges out: a little less
/// than a sync interval, so that one round per interval is made however
/// the edges' ticks fall, and a dead holder delays the next round by one
/// interval at most.
pub fn lease_hold_ms(sync_ms: u64) -> u64 {
    (sync_ms * 9 / 10).max(1)
}

/// Index entries checked per round (the repair of entries a crash left
/// behind): every entry once per four TTLs, between 10 and 200 a round.
pub fn index_checks_per_round(indexed: u64, sync_ms: u64, ttl_ms: u64) -> usize {
    (indexed.saturating_mul(sync_ms) / ttl_ms.max(1).saturating_mul(4)).clamp(10, 200) as usize
}

/// Counts and the drained set are read again this often even without a
/// message (a message that says the drained set changed reads it at once).
pub fn refresh_every_ms(sync_ms: u64) -> u64 {
    sync_ms.saturating_mul(6)
}

/// The pub/sub link is pinged this often; no answer within the ping
/// timeout means it is lost (and every cached pin is asked again).
pub const PUBSUB_PING_MS: u64 = 30_000;

/// A fleet and its traffic, for [`Model::commands_per_s`].
#[derive(Debug, Clone, Copy)]
pub struct Model {
    /// Requests per second, fleet-wide.
    pub rps: f64,
    /// New sessions per second (in a steady state, as many expire).
    pub new_per_s: f64,
    /// Live sessions.
    pub sessions: f64,
    /// Sessions used within each renewal period (at most `sessions`).
    pub active: f64,
    /// Edges that serve each active session within a renewal period (1
    /// with a sticky balancer in front, up to `edges`).
    pub edges_per_session: f64,
    pub edges: f64,
    pub upstreams: f64,
    pub buckets: f64,
    pub ttl_s: f64,
    pub sync_s: f64,
}

/// Commands per second, by cause.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    /// First requests: a lookup (HGET) and a claim (EVALSHA, HGET, HSET)
    /// and its index write (SADD) on the edge that places it; a lookup on
    /// each other edge that serves it; at its end, the sweep's HDEL and SREM.
    pub sessions: f64,
    /// Renewals: EVALSHA, HGET, HSET per session, per edge that served it,
    /// per `ttl / 4`, in pipelined batches.
    pub renewals: f64,
    /// The sweep: EVALSHA and HGETALL per bucket, every bucket once per
    /// `ttl`, by one edge at a time; every fourth pass, one SADD per
    /// upstream found (the index repair).
    pub sweep: f64,
    /// Per edge: the lease attempt (EVALSHA, GET), counts (SCARD per
    /// upstream) and drains (SMEMBERS) every 6 syncs, a pub/sub PING every
    /// 30 s; fleet-wide: the lease won (SET) and the index check.
    pub housekeeping: f64,
}

impl Cost {
    pub fn total(&self) -> f64 {
        self.sessions + self.renewals + self.sweep + self.housekeeping
    }
}

impl Model {
    /// Commands per second. Lookups of cached pins cost nothing while the
    /// pub/sub link is up, and a renewal confirms a pin as well, so with
    /// `local_ttl` above `ttl / 4` a used pin is never read again.
    pub fn commands_per_s(&self) -> Cost {
        let renew_s = self.ttl_s / 4.0;
        let per_bucket = self.sessions / self.buckets.max(1.0);
        // Expected distinct upstreams among a bucket's sessions.
        let upstreams_found =
            self.upstreams * (1.0 - (1.0 - 1.0 / self.upstreams.max(1.0)).powf(per_bucket));
        let sync = self.sync_s.max(0.001);
        let checks = (self.sessions * sync / (4.0 * self.ttl_s.max(0.001))).clamp(10.0, 200.0);
        Cost {
            sessions: self.new_per_s * (5.0 + (self.edges_per_session - 1.0).max(0.0) + 2.0),
            renewals: self.active * self.edges_per_session * 3.0 / renew_s.max(0.001),
            sweep: self.buckets * (2.0 + upstreams_found / 4.0) / self.ttl_s.max(0.001),
            housekeeping: self.edges
                * (2.0 / sync + (self.upstreams + 1.0) / (6.0 * sync) + 1.0 / 30.0)
                + (1.0 + 2.0 + checks) / sync,
        }
    }

    pub fn per_request(&self) -> f64 {
        self.commands_per_s().total() / self.rps.max(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paces() {
        let (hour, sync) = (3_600_000, 10_000);
        assert_eq!(renew_every_ms(hour), 900_000);
        assert_eq!(renew_every_ms(0), 1, "never zero");
        assert_eq!(
            sweep_cutoff_ms(10_000_000, hour, sync),
            10_000_000 - 4_510_000
        );
        assert_eq!(sweep_cutoff_ms(5, hour, sync), 0, "saturates");
        // 16384 buckets every hour, one round per 10 s: 45 a round.
        assert_eq!(buckets_per_round(16384, sync, hour), 45);
        assert_eq!(buckets_per_round(4, 2_000, 2_000), 4, "at most all");
        assert_eq!(buckets_per_round(64, 200, 2_000), 6);
        assert_eq!(
            buckets_per_round(16384, 1, 3_600_000_000),
            1,
            "at least one"
        );
        assert_eq!(buckets_per_round(0, sync, 0), 1);
        assert_eq!(lease_hold_ms(sync), 9_000);
        assert_eq!(lease_hold_ms(0), 1);
        assert_eq!(index_checks_per_round(20_000, sync, hour), 13);
        assert_eq!(index_checks_per_round(0, sync, hour), 10);
        assert_eq!(index_checks_per_round(u64::MAX, sync, hour), 200);
        assert_eq!(refresh_every_ms(sync), 60_000);
    }

    #[test]
    fn a_round_continues_where_the_last_one_stopped_and_wraps() {
        let buckets = |c, n, b| round_buckets(c, n, b).map(|(_, b)| b).collect::<Vec<u32>>();
        assert_eq!(buckets(6, 4, 8), vec![6, 7, 0, 1]);
        assert_eq!(buckets(10, 4, 8), vec![2, 3, 4, 5]);
        assert_eq!(
            round_buckets(u64::MAX, 2, 3).count(),
            2,
            "wraps, no overflow"
        );
        assert_eq!(buckets(7, 2, 0), vec![0, 0]);
        // The index repair comes with every fourth pass over the buckets.
        let repaired: Vec<bool> = (0..40).step_by(8).map(|v| repairs_index(v, 8)).collect();
        assert_eq!(repaired, vec![true, false, false, false, true]);
        assert!(repairs_index(7, 8) && !repairs_index(8, 8));
    }

    fn bench_shape() -> Model {
        Model {
            rps: 2_000.0,
            new_per_s: 0.0,
            sessions: 20_000.0,
            active: 20_000.0,
            edges_per_session: 1.0,
            edges: 1.0,
            upstreams: 3.0,
            buckets: 16_384.0,
            ttl_s: 3_600.0,
            sync_s: 10.0,
        }
    }

    #[test]
    fn the_model_scales_with_sessions_and_traffic_not_edges_times_sessions() {
        let one = bench_shape().commands_per_s();
        let hundred = Model {
            edges: 100.0,
            ..bench_shape()
        }
        .commands_per_s();
        // Only the per-edge housekeeping grows with the edges.
        assert_eq!(
            (one.sessions, one.renewals, one.sweep),
            (hundred.sessions, hundred.renewals, hundred.sweep)
        );
        assert!(hundred.housekeeping < 100.0 * one.housekeeping);
        // 20,000 sessions renewed every 15 min: 66.7 commands/s.
        assert!((one.renewals - 66.67).abs() < 0.1, "{one:?}");
        // Idle (no renewals, no new sessions): the sweep and housekeeping.
        let idle = Model {
            active: 0.0,
            ..bench_shape()
        }
        .commands_per_s();
        assert!((idle.sweep - 10.43).abs() < 0.01, "{idle:?}");
        assert!(idle.total() < 13.0, "{idle:?}");
    }

    #[test]
    fn the_paper_fleet() {
        // 100 edges, 10,000 requests/s, 1M live sessions, 100 new a second,
        // 10 upstreams, a sticky balancer: renewals dominate.
        let m = Model {
            rps: 10_000.0,
            new_per_s: 100.0,
            sessions: 1e6,
            active: 1e6,
            edges_per_session: 1.0,
            edges: 100.0,
            upstreams: 10.0,
            buckets: 16_384.0,
            ttl_s: 3_600.0,
            sync_s: 10.0,
        };
        let c = m.commands_per_s();
        assert!((c.renewals - 3_333.3).abs() < 1.0, "{c:?}");
        assert!((c.sweep - 20.46).abs() < 0.1, "{c:?}");
        assert!(c.total() < 4_200.0 && m.per_request() < 0.42, "{c:?}");
    }
}

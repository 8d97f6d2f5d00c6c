//! A relay's cap shared across edges by leased grants (as in Doorman):
//! each busy edge holds a grant in `<prefix>cap:<relay>`, renewed each
//! `capacity.sync_interval`, that expires after `capacity.lease` unless
//! renewed. [`SCRIPT`] grants; [`limit`] turns what this edge holds into
//! the number of requests it may have in flight now.
//!
//! The script gives an edge what it wants within its max-min fair share
//! of the cap (water-filling over the wants of the edges that want some),
//! but never less than it holds in flight (those end by themselves) and
//! never more than the others leave, so the grants together never pass
//! the cap. Admission and release stay local: a lost release cannot leak
//! a slot, and a killed edge's grant is reaped once it expires.

use crate::config::OnRedisDown;

/// The sync script (Lua): reaps expired grants by Redis `TIME`, then
/// grants. Its decision is tested against a real Redis
/// (`tests/it/capacity.rs`).
pub const SCRIPT: &str = include_str!("lease.lua");

/// What the script last granted this edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Grant {
    /// Slots reserved for this edge (its in-flight work may still be above
    /// its fair share; the rest of the fleet counts it as taken).
    pub grant: u32,
    /// Its fair share now: no new work is admitted past it.
    pub fair: u32,
    /// Edges that wanted some of the cap, this one included.
    pub edges: u32,
    /// When the grant lapses, on this edge's clock ([`crate::clock::now_ms`]),
    /// counted from before the call: before Redis reaps it.
    pub until_ms: u64,
}

/// This edge's side of one relay's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Held {
    pub last: Option<Grant>,
    /// The last sync failed (Redis down or slow).
    pub failing: bool,
    /// This edge has a field in the relay's hash (it last wanted some).
    pub listed: bool,
    /// What the last sync asked for, and when it was sent.
    pub want_sent: u32,
    pub sent_ms: u64,
}

/// When a sync is due for a relay with `want` (see [`want`]) and `limit`
/// (at or before `now_ms`: now), or `None`. `tick`: the regular round (each
/// `capacity.sync_interval`), which renews every lease in use and says once
/// that an edge went idle; otherwise a wake-up because work queued: at
/// once if nothing can be admitted, else only if the want grew since the
/// last sync, [`WAKE_EVERY_MS`] after it.
pub fn due(held: &Held, want: u32, limit: usize, tick: bool, now_ms: u64) -> Option<u64> {
    if tick {
        return (want > 0 || held.listed || held.failing).then_some(now_ms);
    }
    if want == 0 {
        None
    } else if limit == 0 {
        Some(now_ms)
    } else if want > held.want_sent {
        Some(held.sent_ms + WAKE_EVERY_MS)
    } else {
        None
    }
}

/// The shortest gap between two syncs of one relay woken by queued work.
pub const WAKE_EVERY_MS: u64 = 50;

/// How many requests this edge may have in flight at a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Slots(usize),
    /// `on_redis_down: closed`: refuse, do not queue.
    Refuse,
}

/// The limit at a relay whose cap is `cap`. Alone (no Redis), the cap. With
/// Redis: a live grant, up to its fair share; no live grant while Redis
/// answers, nothing until a sync grants some (the first request asks for
/// it); no live grant while Redis fails, as `on_redis_down` says.
pub fn limit(cap: u32, shared: bool, held: &Held, now_ms: u64, on_down: OnRedisDown) -> Limit {
    if !shared {
        return Limit::Slots(cap as usize);
    }
    match held.last {
        Some(g) if now_ms < g.until_ms => return Limit::Slots(g.grant.min(g.fair) as usize),
        _ if !held.failing => return Limit::Slots(0),
        _ => {}
    }
    match on_down {
        OnRedisDown::Share => {
            let edges = held.last.map_or(1, |g| g.edges.max(1));
            Limit::Slots((cap / edges) as usize)
        }
        OnRedisDown::Closed => Limit::Refuse,
        OnRedisDown::Open => Limit::Slots(usize::MAX),
    }
}

/// A relay's work on this edge: what it wants (in flight and queued, within
/// the cap), and what it holds in flight.
pub fn want(in_flight: usize, queued: usize, cap: u32) -> (u32, u32) {
    let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    (clamp(in_flight + queued).min(cap), clamp(in_flight))
}

/// What a sync asks the script for: twice the most work this edge had at
/// once since the last sync (`peak`, see `Gate::take_peak`) or has now,
/// within the cap, so that a load that comes and goes, or grows a little,
/// is admitted at once instead of waiting for a sync each time it passes
/// its grant; nothing once it is idle (its grant is given back). Under
/// contention the fair shares are of these asks, so every edge's headroom
/// shrinks alike.
pub fn ask(want: u32, peak: u32, cap: u32) -> u32 {
    want.max(peak).saturating_mul(2).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use OnRedisDown::*;

    fn grant(grant: u32, fair: u32, edges: u32, until_ms: u64) -> Option<Grant> {
        Some(Grant {
            grant,
            fair,
            edges,
            until_ms,
        })
    }

    /// Each case: cap, shared, what this edge holds, the time, the policy,
    /// and the limit.
    #[test]
    fn the_limit_follows_the_live_grant_and_the_policy_once_it_lapses() {
        let held = |last, failing| Held {
            last,
            failing,
            ..Held::default()
        };
        let cases = [
            (
                "alone: the cap",
                8,
                false,
                held(None, false),
                0,
                Share,
                Limit::Slots(8),
            ),
            (
                "a live grant",
                8,
                true,
                held(grant(4, 4, 2, 100), false),
                50,
                Share,
                Limit::Slots(4),
            ),
            (
                "holding more than its share: no new work past the share",
                8,
                true,
                held(grant(6, 4, 2, 100), false),
                50,
                Share,
                Limit::Slots(4),
            ),
            (
                "less than its share left by the others",
                8,
                true,
                held(grant(1, 4, 2, 100), false),
                50,
                Share,
                Limit::Slots(1),
            ),
            (
                "never synced: wait for a grant",
                8,
                true,
                held(None, false),
                50,
                Share,
                Limit::Slots(0),
            ),
            (
                "lapsed while idle, Redis up: wait for a grant",
                8,
                true,
                held(grant(4, 4, 2, 100), false),
                100,
                Closed,
                Limit::Slots(0),
            ),
            (
                "Redis down, grant still live: kept",
                8,
                true,
                held(grant(4, 4, 2, 100), true),
                99,
                Closed,
                Limit::Slots(4),
            ),
            (
                "Redis down, lapsed, share: the cap over the edges last seen",
                8,
                true,
                held(grant(4, 4, 2, 100), true),
                100,
                Share,
                Limit::Slots(4),
            ),
            (
                "Redis down from the start, share: alone as far as it knows",
                8,
                true,
                held(None, true),
                0,
                Share,
                Limit::Slots(8),
            ),
            (
                "Redis down, lapsed, closed: refuse",
                8,
                true,
                held(grant(4, 4, 2, 100), true),
                100,
                Closed,
                Limit::Refuse,
            ),
            (
                "Redis down, lapsed, open: no cap",
                8,
                true,
                held(grant(4, 4, 2, 100), true),
                100,
                Open,
                Limit::Slots(usize::MAX),
            ),
        ];
        for (name, cap, shared, held, now, policy, expected) in cases {
            assert_eq!(limit(cap, shared, &held, now, policy), expected, "{name}");
        }
    }

    /// Each case: what was last sent, the want and limit now, whether it
    /// is the regular round, the time, and when a sync is due.
    #[test]
    fn a_sync_is_due_when_a_lease_is_in_use_or_the_want_grew() {
        let held = |listed, failing, want_sent, sent_ms| Held {
            last: None,
            failing,
            listed,
            want_sent,
            sent_ms,
        };
        let cases = [
            (
                "round, idle and unlisted: nothing",
                held(false, false, 0, 0),
                0,
                4,
                true,
                1000,
                None,
            ),
            (
                "round, busy: renew",
                held(true, false, 3, 0),
                3,
                4,
                true,
                1000,
                Some(1000),
            ),
            (
                "round, gone idle: say so once",
                held(true, false, 3, 0),
                0,
                4,
                true,
                1000,
                Some(1000),
            ),
            (
                "round, Redis failing: try again",
                held(false, true, 0, 0),
                0,
                4,
                true,
                1000,
                Some(1000),
            ),
            (
                "woken, want grew, nothing admitted: at once",
                held(true, false, 1, 990),
                2,
                0,
                false,
                1000,
                Some(1000),
            ),
            (
                "woken, want grew, some admitted: a little later",
                held(true, false, 1, 990),
                2,
                1,
                false,
                1000,
                Some(1040),
            ),
            (
                "woken, want grew, a while since: now",
                held(true, false, 1, 900),
                2,
                1,
                false,
                1000,
                Some(950),
            ),
            (
                "woken, a lapsed grant (want as sent): at once",
                held(true, false, 4, 0),
                4,
                0,
                false,
                1000,
                Some(1000),
            ),
            (
                "woken, saturated (want as sent): wait for the round",
                held(true, false, 8, 0),
                8,
                4,
                false,
                1000,
                None,
            ),
        ];
        for (name, held, want, limit, tick, now, expected) in cases {
            assert_eq!(due(&held, want, limit, tick, now), expected, "{name}");
        }
    }

    #[test]
    fn an_edge_wants_its_work_within_the_cap() {
        assert_eq!(want(0, 0, 4), (0, 0));
        assert_eq!(want(3, 0, 4), (3, 3));
        assert_eq!(want(2, 9, 4), (4, 2));
    }

    /// Each case: the work now, the peak since the last sync, the cap, and
    /// what is asked for.
    #[test]
    fn a_sync_asks_for_twice_the_recent_peak_within_the_cap() {
        let cases = [
            ("idle: give it back", 0, 0, 64, 0),
            ("idle now, busy since the last sync: keep some", 0, 3, 64, 6),
            ("busy: twice the work", 4, 2, 64, 8),
            ("never past the cap", 40, 50, 64, 64),
            ("a cap of one", 1, 1, 1, 1),
        ];
        for (name, want, peak, cap, expected) in cases {
            assert_eq!(ask(want, peak, cap), expected, "{name}");
        }
    }
}

//! Placing a new session (or a keyless request) on an upstream.
//!
//! - [`least_loaded`]: power of two random choices, comparing in-flight
//!   requests divided by weight.
//! - [`consistent`]: bounded-load consistent hashing on the session id, so
//!   that edges without a shared table mostly agree: walk the ring from the
//!   id's point and take the first eligible upstream whose load is within
//!   `load_factor` times the mean.
//!
//! Both skip upstreams that are unhealthy, ejected, draining, or already
//! tried by this request. Both prefer, while another choice is left, an
//! upstream with room under its cap ([`Upstream::has_room`]), and for a
//! new session one that is not `crowded` (over `affinity.max_session_share`
//! times the mean, see [`crowded`]): [`Prefer`] is tried from the most
//! demanding level down.

use super::{Upstream, UpstreamSet};
use crate::affinity::SessionId;
use siphasher::sip::SipHasher13;
use std::hash::Hasher;
use std::sync::Arc;

/// Upstreams this request has tried, without a heap allocation.
#[derive(Debug, Clone, Default)]
pub struct Tried {
    len: usize,
    items: [usize; Tried::CAPACITY],
}

impl Tried {
    /// Most upstreams one request may try: the first and its retries.
    pub const CAPACITY: usize = crate::config::Limits::MAX_RETRIES + 1;

    pub fn add(&mut self, index: usize) {
        if self.len < Self::CAPACITY && !self.contains(index) {
            self.items[self.len] = index;
            self.len += 1;
        }
    }

    pub fn contains(&self, index: usize) -> bool {
        self.items[..self.len].contains(&index)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The upstream tried last.
    pub fn last(&self) -> Option<usize> {
        self.len.checked_sub(1).map(|i| self.items[i])
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// How demanding a pass over the fleet is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Prefer {
    /// Room under its cap, and not crowded with sessions.
    RoomAndShare,
    /// Room under its cap.
    Room,
    /// Any usable upstream (a capped one queues the request).
    Any,
}

const PASSES: [Prefer; 3] = [Prefer::RoomAndShare, Prefer::Room, Prefer::Any];

fn eligible(
    u: &Upstream,
    index: usize,
    tried: &Tried,
    crowded: &[bool],
    prefer: Prefer,
    now_ms: u64,
) -> bool {
    let wanted = match prefer {
        Prefer::RoomAndShare => u.has_room() && !crowded.get(index).copied().unwrap_or(false),
        Prefer::Room => u.has_room(),
        Prefer::Any => true,
    };
    wanted && !tried.contains(index) && u.is_usable(now_ms)
}

/// Which upstreams hold more than `max_share` times their weighted mean of
/// the sessions (`sessions`, by index): they take no new sessions while
/// another can.
pub fn crowded(set: &UpstreamSet, sessions: &[u64], max_share: f64) -> Vec<bool> {
    let total: u64 = sessions.iter().sum();
    let weights: u64 = set.all().iter().map(|u| u64::from(u.spec.weight)).sum();
    if total == 0 || weights == 0 {
        return vec![false; set.all().len()];
    }
    set.all()
        .iter()
        .zip(sessions)
        .map(|(u, &n)| {
            let mean = total as f64 * f64::from(u.spec.weight) / weights as f64;
            n as f64 > max_share * mean
        })
        .collect()
}

/// Lower is better: in-flight requests per unit of weight.
fn load(u: &Upstream) -> u64 {
    u.inflight().max(0) as u64 * 1_000_000 / u64::from(u.spec.weight.max(1))
}

/// First eligible upstream at or after a random start.
fn probe(
    set: &UpstreamSet,
    start: usize,
    skip: Option<usize>,
    tried: &Tried,
    crowded: &[bool],
    prefer: Prefer,
    now_ms: u64,
) -> Option<usize> {
    let n = set.all().len();
    (0..n)
        .map(|k| (start + k) % n)
        .find(|&i| Some(i) != skip && eligible(&set.all()[i], i, tried, crowded, prefer, now_ms))
}

/// Power of two random choices on in-flight requests, weighted: both
/// candidates are drawn in proportion to weight, and the one with fewer
/// in-flight requests per unit of weight wins (the first drawn on a tie), so
/// an idle fleet gets new sessions in proportion to weight and a busy one by
/// load.
pub fn least_loaded(
    set: &UpstreamSet,
    tried: &Tried,
    crowded: &[bool],
    now_ms: u64,
) -> Option<usize> {
    if set.all().is_empty() {
        return None;
    }
    PASSES.into_iter().find_map(|prefer| {
        let a = probe(
            set,
            set.weighted_draw(),
            None,
            tried,
            crowded,
            prefer,
            now_ms,
        )?;
        let Some(b) = probe(
            set,
            set.weighted_draw(),
            Some(a),
            tried,
            crowded,
            prefer,
            now_ms,
        ) else {
            return Some(a);
        };
        let (la, lb) = (load(&set.all()[a]), load(&set.all()[b]));
        Some(if lb < la { b } else { a })
    })
}

/// Bounded-load consistent hashing on the session id.
pub fn consistent(
    set: &UpstreamSet,
    id: SessionId,
    load_factor: f64,
    tried: &Tried,
    crowded: &[bool],
    now_ms: u64,
) -> Option<usize> {
    PASSES
        .into_iter()
        .find_map(|prefer| consistent_pass(set, id, load_factor, tried, crowded, prefer, now_ms))
}

fn consistent_pass(
    set: &UpstreamSet,
    id: SessionId,
    load_factor: f64,
    tried: &Tried,
    crowded: &[bool],
    prefer: Prefer,
    now_ms: u64,
) -> Option<usize> {
    let ring = set.ring();
    if ring.points.is_empty() {
        return None;
    }
    let (mut total, mut usable) = (0i64, 0i64);
    for (i, u) in set.all().iter().enumerate() {
        if eligible(u, i, tried, crowded, prefer, now_ms) {
            total += u.inflight().max(0);
            usable += 1;
        }
    }
    if usable == 0 {
        return None;
    }
    let bound = ((total + 1) as f64 * load_factor / usable as f64).ceil() as i64;
    let start = ring.points.partition_point(|(p, _)| *p < id.ring_point());
    let mut first_eligible = None;
    for k in 0..ring.points.len() {
        let index = ring.points[(start + k) % ring.points.len()].1 as usize;
        let u = &set.all()[index];
        if !eligible(u, index, tried, crowded, prefer, now_ms) {
            continue;
        }
        if u.inflight() < bound {
            return Some(index);
        }
        first_eligible.get_or_insert(index);
    }
    first_eligible
}

/// The consistent-hash ring: virtual nodes in proportion to weight.
pub struct Ring {
    points: Vec<(u64, u32)>,
}

impl Ring {
    const POINTS_PER_WEIGHT: u32 = 64;

    pub fn new(list: &[Arc<Upstream>]) -> Ring {
        let mut points = Vec::new();
        for (index, u) in list.iter().enumerate() {
            for v in 0..u
                .spec
                .weight
                .saturating_mul(Self::POINTS_PER_WEIGHT)
                .min(4096)
            {
                let mut h = SipHasher13::new_with_keys(0x72696e67, 0x706f696e74);
                h.write(u.id.as_bytes());
                h.write_u32(v);
                points.push((h.finish(), index as u32));
            }
        }
        points.sort_unstable();
        Ring { points }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::metrics::Metrics;
    use crate::state::State;

    fn state(weights: &[u32], extra: &str) -> State {
        let mut yaml = String::from("listen: [{addr: 127.0.0.1:8080}]\nupstreams:\n");
        for (i, w) in weights.iter().enumerate() {
            yaml.push_str(&format!(
                "  - {{id: u{i}, addr: 127.0.0.1:{}, weight: {w}}}\n",
                9000 + i
            ));
        }
        yaml.push_str(extra);
        State::build(config::parse(&yaml).expect("valid"), &Metrics::new(), 1)
    }

    fn shares(s: &State, pick: impl Fn(u128) -> Option<usize>) -> Vec<f64> {
        let mut counts = vec![0usize; s.upstreams.all().len()];
        for i in 0..20_000u128 {
            counts[pick(i).expect("an upstream")] += 1;
        }
        counts.iter().map(|c| *c as f64 / 20_000.0).collect()
    }

    #[test]
    fn idle_fleet_gets_sessions_in_proportion_to_weight() {
        let s = state(&[1, 1, 2], "");
        let now = crate::clock::now_ms();
        let got = shares(&s, |_| {
            least_loaded(&s.upstreams, &Tried::default(), &[], now)
        });
        for (got, want) in got.iter().zip([0.25, 0.25, 0.5]) {
            assert!((got - want).abs() < 0.03, "shares {got} vs {want}");
        }
    }

    #[test]
    fn busy_upstreams_lose_and_tried_or_drained_ones_are_skipped() {
        let s = state(&[1, 1, 1], "");
        let now = crate::clock::now_ms();
        for _ in 0..50 {
            s.upstreams.all()[0].start_request();
        }
        let got = shares(&s, |_| {
            least_loaded(&s.upstreams, &Tried::default(), &[], now)
        });
        assert!(got[0] < 0.2, "a loaded upstream still got {}", got[0]);
        let mut tried = Tried::default();
        tried.add(1);
        s.upstreams.all()[2].set_draining(true);
        assert!((0..100).all(|_| least_loaded(&s.upstreams, &tried, &[], now) == Some(0)));
        tried.add(0);
        assert_eq!(least_loaded(&s.upstreams, &tried, &[], now), None);
    }

    #[test]
    fn consistent_hashing_is_stable_spread_and_bounded() {
        let s = state(&[1, 1, 1, 1], "");
        let now = crate::clock::now_ms();
        let pick = |i: u128| {
            consistent(
                &s.upstreams,
                SessionId(i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834)),
                1.25,
                &Tried::default(),
                &[],
                now,
            )
        };
        let first: Vec<_> = (0..1000).map(pick).collect();
        let again: Vec<_> = (0..1000).map(pick).collect();
        assert_eq!(first, again, "the same id must land on the same upstream");
        for share in shares(&s, pick) {
            assert!((0.15..0.35).contains(&share), "share {share}");
        }
        // A loaded upstream over the bound passes its sessions on.
        for _ in 0..100 {
            s.upstreams.all()[0].start_request();
        }
        assert!((0..1000).all(|i| pick(i) != Some(0)));
    }

    /// Each case: weights, sessions per upstream, `max_session_share`, and
    /// which are crowded.
    #[test]
    fn an_upstream_is_crowded_past_its_share_of_the_sessions() {
        type Case = (&'static [u32], &'static [u64], f64, &'static [bool]);
        let cases: [Case; 7] = [
            (&[1, 1, 1], &[0, 0, 0], 2.0, &[false, false, false]),
            (&[1, 1, 1], &[3, 0, 0], 2.0, &[true, false, false]),
            (&[1, 1, 1], &[2, 1, 0], 2.0, &[false, false, false]),
            (&[1, 1], &[10, 0], 2.0, &[false, false]),
            // Weighted: relay 0's share is half the sessions.
            (&[2, 1, 1], &[3, 1, 0], 1.5, &[false, false, false]),
            (&[2, 1, 1], &[4, 0, 0], 1.5, &[true, false, false]),
            (
                &[1, 1, 1, 1],
                &[5, 1, 1, 1],
                2.0,
                &[true, false, false, false],
            ),
        ];
        for (weights, sessions, share, want) in cases {
            let s = state(weights, "");
            assert_eq!(
                crowded(&s.upstreams, sessions, share),
                want,
                "{weights:?} {sessions:?} {share}"
            );
        }
    }

    /// Placement prefers room under a cap, then a share within bounds, and
    /// falls back to any usable upstream.
    #[test]
    fn placement_prefers_room_then_share_then_anything_usable() {
        let s = state(&[1, 1, 1], "capacity: {max_inflight: 1}\n");
        let now = crate::clock::now_ms();
        let none = Tried::default();
        let full = s.upstreams.all()[0].capacity.clone().expect("capped");
        let _held = full.try_admit().expect("a slot");
        let crowded = [false, true, false];
        for _ in 0..100 {
            assert_eq!(least_loaded(&s.upstreams, &none, &crowded, now), Some(2));
            let id = SessionId(fastrand::u128(..));
            assert_eq!(
                consistent(&s.upstreams, id, 1.25, &none, &crowded, now),
                Some(2)
            );
        }
        // Only the full one and the crowded one left: room wins.
        let mut tried = Tried::default();
        tried.add(2);
        assert_eq!(least_loaded(&s.upstreams, &tried, &crowded, now), Some(1));
        // Only the full one left: it is still placed there (to queue).
        tried.add(1);
        assert_eq!(least_loaded(&s.upstreams, &tried, &crowded, now), Some(0));
    }
}

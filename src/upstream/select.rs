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
//! tried by this request.

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
    /// Most upstreams one request may try (the config caps `max_retries` below this).
    pub const CAPACITY: usize = 16;

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

fn eligible(u: &Upstream, index: usize, tried: &Tried, now_ms: u64) -> bool {
    !tried.contains(index) && u.is_usable(now_ms)
}

/// Lower is better: in-flight requests per unit of weight.
fn load(u: &Upstream) -> u64 {
    (u.inflight().max(0) as u64 + 1) * 1_000_000 / u64::from(u.spec.weight.max(1))
}

/// First eligible upstream at or after a random start.
fn probe(
    set: &UpstreamSet,
    start: usize,
    skip: Option<usize>,
    tried: &Tried,
    now_ms: u64,
) -> Option<usize> {
    let n = set.all().len();
    (0..n)
        .map(|k| (start + k) % n)
        .find(|&i| Some(i) != skip && eligible(&set.all()[i], i, tried, now_ms))
}

/// Power of two random choices on in-flight requests, weighted.
pub fn least_loaded(set: &UpstreamSet, tried: &Tried, now_ms: u64) -> Option<usize> {
    let n = set.all().len();
    if n == 0 {
        return None;
    }
    let a = probe(set, fastrand::usize(..n), None, tried, now_ms)?;
    let Some(b) = probe(set, fastrand::usize(..n), Some(a), tried, now_ms) else {
        return Some(a);
    };
    let (la, lb) = (load(&set.all()[a]), load(&set.all()[b]));
    Some(if lb < la { b } else { a })
}

/// Bounded-load consistent hashing on the session id.
pub fn consistent(
    set: &UpstreamSet,
    id: SessionId,
    load_factor: f64,
    tried: &Tried,
    now_ms: u64,
) -> Option<usize> {
    let ring = set.ring();
    if ring.points.is_empty() {
        return None;
    }
    let (mut total, mut usable) = (0i64, 0i64);
    for (i, u) in set.all().iter().enumerate() {
        if eligible(u, i, tried, now_ms) {
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
        if !eligible(u, index, tried, now_ms) {
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

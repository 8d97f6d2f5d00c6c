//! The dashboard's memory: the last 15 minutes of every upstream at a
//! fixed resolution, kept in the process.
//!
//! A background task takes a [`Sample`] of the cumulative counters every
//! [`RESOLUTION`]; a point is the difference of two samples, so nothing is
//! added to the request path. The last point is the interval still under
//! way (from the last sample to now), so that traffic shows at once. The
//! same samples give the indicators their 15-minute window
//! ([`crate::indicators`]).

use crate::metrics::AffinityOutcome;
use crate::state::Edge;
use crate::upstream::Upstream;
use prometheus::core::Metric;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const RESOLUTION: Duration = Duration::from_secs(10);
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Samples kept: one more than the points of a full window.
const SAMPLES: usize = (WINDOW.as_secs() / RESOLUTION.as_secs()) as usize + 1;

/// One upstream's cumulative counters.
#[derive(Clone, Default, Debug)]
pub struct Counters {
    pub requests: u64,
    pub errors: u64,
    pub keyed: u64,
    pub affinity_hits: u64,
    pub connects: u64,
    pub connect_micros: u64,
    /// `relay_edge_request_duration_seconds`: (upper bound, cumulative count).
    pub durations: Vec<(f64, u64)>,
    /// input, cache_read, cache_creation, output.
    pub tokens: [u64; 4],
}

impl Counters {
    fn of(edge: &Edge, u: &Upstream) -> Counters {
        let s = &u.stats;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let metric = u.metrics.duration.metric();
        let durations = metric
            .get_histogram()
            .get_bucket()
            .iter()
            .map(|b| (b.upper_bound(), b.cumulative_count()))
            .collect();
        Counters {
            requests: load(&s.requests),
            errors: load(&s.errors),
            keyed: load(&s.keyed),
            affinity_hits: load(&s.affinity_hits),
            connects: load(&s.connects),
            connect_micros: load(&s.connect_micros),
            durations,
            tokens: edge.metrics.tokens_of(&u.id),
        }
    }

    /// What happened between `earlier` and `self` (a counter that went
    /// back, as after a reload rebuilt its upstream, counts from zero).
    pub fn since(&self, earlier: Option<&Counters>) -> Counters {
        let Some(e) = earlier else {
            return self.clone();
        };
        let d = |now: u64, then: u64| if now >= then { now - then } else { now };
        Counters {
            requests: d(self.requests, e.requests),
            errors: d(self.errors, e.errors),
            keyed: d(self.keyed, e.keyed),
            affinity_hits: d(self.affinity_hits, e.affinity_hits),
            connects: d(self.connects, e.connects),
            connect_micros: d(self.connect_micros, e.connect_micros),
            durations: self
                .durations
                .iter()
                .map(|&(bound, n)| {
                    let then = e
                        .durations
                        .iter()
                        .find(|(b, _)| *b == bound)
                        .map_or(0, |&(_, n)| n);
                    (bound, d(n, then))
                })
                .collect(),
            tokens: [0, 1, 2, 3].map(|i| d(self.tokens[i], e.tokens[i])),
        }
    }

    /// The 99th percentile of the durations, as the upper bound of its
    /// bucket, in milliseconds; none without requests.
    pub fn p99_ms(&self) -> Option<f64> {
        let total = self.durations.last().map_or(0, |&(_, n)| n).max(
            // Requests past the last bound are only in the total.
            self.requests,
        );
        if total == 0 {
            return None;
        }
        let rank = (total as f64 * 0.99).ceil() as u64;
        let bound = self
            .durations
            .iter()
            .find(|&&(_, n)| n >= rank)
            .or(self.durations.last())
            .map(|&(b, _)| b)?;
        Some(bound * 1000.0)
    }

    pub fn add(&mut self, other: &Counters) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.keyed += other.keyed;
        self.affinity_hits += other.affinity_hits;
        self.connects += other.connects;
        self.connect_micros += other.connect_micros;
        for i in 0..4 {
            self.tokens[i] += other.tokens[i];
        }
    }
}

/// Every upstream's counters, and the edge-wide ones, at one moment.
#[derive(Clone, Debug)]
pub struct Sample {
    pub at_ms: u64,
    pub upstreams: Vec<(Arc<str>, Counters)>,
    /// Keyed requests by affinity outcome, in [`AffinityOutcome`] order.
    pub affinity: [u64; 3],
}

impl Sample {
    pub fn take(edge: &Edge) -> Sample {
        Sample {
            at_ms: crate::clock::unix_ms(),
            upstreams: edge
                .state()
                .upstreams
                .all()
                .iter()
                .map(|u| (u.id.clone(), Counters::of(edge, u)))
                .collect(),
            affinity: AffinityOutcome::ALL.map(|o| edge.metrics.affinity_requests(o)),
        }
    }

    fn of(&self, id: &str) -> Option<&Counters> {
        self.upstreams
            .iter()
            .find(|(u, _)| &**u == id)
            .map(|(_, c)| c)
    }

    /// The sum over every upstream of what happened since `earlier`.
    pub fn total_since(&self, earlier: Option<&Sample>) -> Counters {
        let mut total = Counters::default();
        for (id, c) in &self.upstreams {
            total.add(&c.since(earlier.and_then(|e| e.of(id))));
        }
        total
    }
}

#[derive(Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    /// Take a sample (every [`RESOLUTION`]), forgetting the oldest past the window.
    pub fn record(&self, edge: &Edge) {
        let sample = Sample::take(edge);
        if let Ok(mut samples) = self.samples.lock() {
            samples.push_back(sample);
            while samples.len() > SAMPLES {
                samples.pop_front();
            }
        }
    }

    /// The oldest sample kept: the start of the indicators' window.
    pub fn oldest(&self) -> Option<Sample> {
        self.samples.lock().ok()?.front().cloned()
    }

    /// `GET /api/history`: per upstream, one point per interval, oldest
    /// first, the last one the interval under way.
    pub fn json(&self, edge: &Edge) -> Value {
        let mut samples: Vec<Sample> = match self.samples.lock() {
            Ok(s) => s.iter().cloned().collect(),
            Err(_) => Vec::new(),
        };
        samples.push(Sample::take(edge));
        let ids: Vec<Arc<str>> = edge
            .state()
            .upstreams
            .all()
            .iter()
            .map(|u| u.id.clone())
            .collect();
        let mut series: HashMap<&str, Vec<Value>> = HashMap::new();
        for pair in samples.windows(2) {
            let (before, after) = (&pair[0], &pair[1]);
            for id in &ids {
                let Some(now) = after.of(id) else { continue };
                let d = now.since(before.of(id));
                series.entry(id).or_default().push(json!({
                    "t_ms": after.at_ms,
                    "requests": d.requests,
                    "errors": d.errors,
                    "p99_ms": d.p99_ms(),
                    "affinity_hit_rate": ratio(d.affinity_hits, d.keyed),
                }));
            }
        }
        json!({
            "resolution_seconds": RESOLUTION.as_secs(),
            "window_seconds": WINDOW.as_secs(),
            "upstreams": ids.iter().map(|id| json!({
                "id": &**id,
                "points": series.remove(&**id).unwrap_or_default(),
            })).collect::<Vec<_>>(),
        })
    }
}

/// `part / whole`, or null when there is no whole.
pub fn ratio(part: u64, whole: u64) -> Value {
    if whole == 0 {
        Value::Null
    } else {
        json!(part as f64 / whole as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_is_the_bound_of_the_bucket_holding_the_99th_request() {
        let c = Counters {
            requests: 200,
            durations: vec![(0.001, 100), (0.01, 197), (0.1, 199), (1.0, 200)],
            ..Counters::default()
        };
        assert_eq!(c.p99_ms(), Some(100.0));
        assert_eq!(Counters::default().p99_ms(), None);
    }

    #[test]
    fn a_counter_that_went_back_counts_from_zero() {
        let before = Counters {
            requests: 50,
            ..Counters::default()
        };
        let after = Counters {
            requests: 7,
            ..Counters::default()
        };
        assert_eq!(after.since(Some(&before)).requests, 7);
        let later = Counters {
            requests: 60,
            ..Counters::default()
        };
        assert_eq!(later.since(Some(&before)).requests, 10);
    }
}

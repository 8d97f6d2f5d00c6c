//! The dashboard's memory: the last 15 minutes of every upstream at a
//! fixed resolution, kept in the process.
//!
//! A background task takes a [`Sample`] of the cumulative counters every
//! [`RESOLUTION`]; a point is the difference of two samples, so nothing is
//! added to the request path. Only the last sample is kept whole; each
//! interval keeps its differences and its p99, so 500 upstreams cost a few
//! MiB, not the histograms' buckets 90 times over. The last point is the interval still under
//! way (from the last sample to now), so that traffic shows at once. The
//! same samples give the indicators their 15-minute window
//! ([`crate::indicators`]).

use crate::metrics::Metrics;
use crate::outcome::AffinityOutcome;
use crate::upstream::Upstream;
use prometheus::core::Metric;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const RESOLUTION: Duration = Duration::from_secs(10);
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Samples a full window spans: one more than its intervals.
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
    fn of(u: &Upstream, metrics: &Metrics) -> Counters {
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
            tokens: metrics.tokens_of(&u.id),
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

/// Every upstream's counters, and the edge-wide ones, at one moment. Only
/// the last one is kept: intervals are stored as their differences.
#[derive(Clone, Debug)]
pub struct Sample {
    pub at_ms: u64,
    /// The upstreams' ids, in the config's order.
    pub order: Vec<Arc<str>>,
    pub upstreams: HashMap<Arc<str>, Counters>,
    /// Keyed requests by affinity outcome, in [`AffinityOutcome`] order.
    pub affinity: [u64; 3],
}

impl Sample {
    /// The counters of `upstreams` and of `metrics` now.
    pub fn take(upstreams: &[Arc<Upstream>], metrics: &Metrics) -> Sample {
        Sample {
            at_ms: crate::clock::unix_ms(),
            order: upstreams.iter().map(|u| u.id.clone()).collect(),
            upstreams: upstreams
                .iter()
                .map(|u| (u.id.clone(), Counters::of(u, metrics)))
                .collect(),
            affinity: AffinityOutcome::ALL.map(|o| metrics.affinity_requests(o)),
        }
    }
}

/// What happened between two samples: per upstream, the counters' growth
/// and the interval's p99 (the buckets themselves are not kept).
#[derive(Clone, Debug)]
struct Interval {
    end_ms: u64,
    upstreams: HashMap<Arc<str>, (Counters, Option<f64>)>,
    affinity: [u64; 3],
}

impl Interval {
    fn between(before: &Sample, after: &Sample) -> Interval {
        let upstreams = after
            .upstreams
            .iter()
            .map(|(id, now)| {
                let mut d = now.since(before.upstreams.get(id));
                let p99 = d.p99_ms();
                d.durations = Vec::new();
                (id.clone(), (d, p99))
            })
            .collect();
        Interval {
            end_ms: after.at_ms,
            upstreams,
            affinity: [0, 1, 2].map(|i| after.affinity[i].saturating_sub(before.affinity[i])),
        }
    }
}

/// The indicators' window: what happened in the last 15 minutes.
pub struct Window {
    /// Summed over every upstream.
    pub total: Counters,
    pub affinity: [u64; 3],
}

#[derive(Default)]
struct Kept {
    last: Option<Sample>,
    intervals: VecDeque<Interval>,
}

#[derive(Default)]
pub struct History {
    kept: Mutex<Kept>,
}

impl History {
    /// Keep `sample` (taken every [`RESOLUTION`]) and the interval since the
    /// last one, forgetting the oldest past the window.
    pub fn record(&self, sample: Sample) {
        if let Ok(mut kept) = self.kept.lock() {
            if let Some(last) = &kept.last {
                let interval = Interval::between(last, &sample);
                kept.intervals.push_back(interval);
                while kept.intervals.len() > SAMPLES - 1 {
                    kept.intervals.pop_front();
                }
            }
            kept.last = Some(sample);
        }
    }

    /// The kept intervals and the one under way (from the last sample to
    /// `now`, a sample taken now).
    fn intervals(&self, now: &Sample) -> Vec<Interval> {
        let Ok(kept) = self.kept.lock() else {
            return Vec::new();
        };
        let mut all: Vec<Interval> = kept.intervals.iter().cloned().collect();
        if let Some(last) = &kept.last {
            all.push(Interval::between(last, now));
        }
        all
    }

    /// What happened within the window up to `now`, for the indicators.
    pub fn window(&self, now: &Sample) -> Window {
        let mut w = Window {
            total: Counters::default(),
            affinity: [0; 3],
        };
        for interval in self.intervals(now) {
            for (c, _) in interval.upstreams.values() {
                w.total.add(c);
            }
            for i in 0..3 {
                w.affinity[i] += interval.affinity[i];
            }
        }
        w
    }

    /// `GET /api/history`: per upstream (in the config's order), one point
    /// per interval, oldest first, the last one the interval under way (up
    /// to `now`).
    pub fn points(&self, now: &Sample) -> Vec<(Arc<str>, Vec<Point>)> {
        let intervals = self.intervals(now);
        now.order
            .iter()
            .map(|id| {
                let points = intervals
                    .iter()
                    .filter_map(|i| {
                        let (d, p99) = i.upstreams.get(id)?;
                        Some(Point {
                            t_ms: i.end_ms,
                            requests: d.requests,
                            errors: d.errors,
                            p99_ms: *p99,
                            affinity_hit_rate: ratio(d.affinity_hits, d.keyed),
                        })
                    })
                    .collect();
                (id.clone(), points)
            })
            .collect()
    }
}

/// One upstream's interval, as the dashboard draws it.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The interval's end.
    pub t_ms: u64,
    pub requests: u64,
    pub errors: u64,
    pub p99_ms: Option<f64>,
    pub affinity_hit_rate: Option<f64>,
}

/// `part / whole`, or none when there is no whole.
pub fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Edge;

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
    fn intervals_keep_differences_and_the_current_one_shows_at_once() {
        let edge = Edge::new(
            crate::config::parse(
                "listen: [{addr: 127.0.0.1:8080}]\nupstreams: [{id: a, addr: 127.0.0.1:9001}, {id: b, addr: 127.0.0.1:9002}]\n",
            )
            .expect("valid config"),
        );
        let serve = |n: u64, seconds: f64| {
            let state = edge.state();
            let a = &state.upstreams.all()[0];
            a.stats.requests.fetch_add(n, Ordering::Relaxed);
            a.stats.keyed.fetch_add(n, Ordering::Relaxed);
            a.stats.affinity_hits.fetch_add(n - 1, Ordering::Relaxed);
            for _ in 0..n {
                a.metrics.duration.observe(seconds);
            }
        };
        edge.history.record(edge.sample());
        serve(10, 0.02);
        edge.history.record(edge.sample());
        serve(4, 2.0);
        let h = edge.history.points(&edge.sample());
        let a = &h[0].1;
        assert_eq!(a.len(), 2, "{h:?}");
        assert_eq!((a[0].requests, a[0].p99_ms), (10, Some(25.0)));
        assert_eq!(a[0].affinity_hit_rate, Some(0.9));
        assert_eq!((a[1].requests, a[1].p99_ms), (4, Some(2500.0)));
        assert_eq!(h[1].1[0].requests, 0);
        let w = edge.history.window(&edge.sample());
        assert_eq!(
            (w.total.requests, w.total.keyed, w.total.affinity_hits),
            (14, 14, 12)
        );
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

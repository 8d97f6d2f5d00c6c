//! The seed's service indicators, each against its alert threshold.
//!
//! [`INDICATORS`] is the one table of names and thresholds: the dashboard
//! and `relay-edge ctl status` show it through `/api/stats`, and a test
//! checks that `contrib/prometheus/relay-edge-rules.yml` fires at the same
//! values. Rates are taken over the dashboard's 15-minute window
//! ([`crate::history`]); states (pool use, health) are taken now.

use crate::history::ratio;
use crate::history::Window;
use crate::metrics::Metrics;
use crate::outcome::AffinityOutcome;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadWhen {
    Above,
    Below,
}

#[derive(Debug)]
pub struct Indicator {
    pub name: &'static str,
    pub title: &'static str,
    pub threshold: f64,
    pub bad_when: BadWhen,
    /// `ratio` (0 to 1) or `seconds`.
    pub unit: &'static str,
}

const fn indicator(
    name: &'static str,
    title: &'static str,
    threshold: f64,
    bad_when: BadWhen,
    unit: &'static str,
) -> Indicator {
    Indicator {
        name,
        title,
        threshold,
        bad_when,
        unit,
    }
}

pub const INDICATORS: [Indicator; 8] = [
    indicator("error_rate", "Error rate", 0.05, BadWhen::Above, "ratio"),
    indicator(
        "cache_hit_rate",
        "Cache hit rate",
        0.80,
        BadWhen::Below,
        "ratio",
    ),
    indicator(
        "pool_utilisation",
        "Pool utilisation",
        0.90,
        BadWhen::Above,
        "ratio",
    ),
    indicator(
        "mean_connect_time",
        "Mean connect time",
        5.0,
        BadWhen::Above,
        "seconds",
    ),
    indicator(
        "healthy_ratio",
        "Healthy upstreams",
        0.95,
        BadWhen::Below,
        "ratio",
    ),
    indicator(
        "session_survival",
        "Session survival",
        0.90,
        BadWhen::Below,
        "ratio",
    ),
    indicator(
        "recovery_success",
        "Recovery success",
        0.95,
        BadWhen::Below,
        "ratio",
    ),
    indicator(
        "affinity_success",
        "Affinity success",
        0.90,
        BadWhen::Below,
        "ratio",
    ),
];

/// Sessions created, counted in 60 slots that together span the TTL: how
/// many were created within the last TTL, for the survival ratio.
pub struct Births {
    /// (slot epoch, count) per slot.
    slots: Mutex<[(u64, u64); 60]>,
}

impl Default for Births {
    fn default() -> Self {
        Births {
            slots: Mutex::new([(0, 0); 60]),
        }
    }
}

impl Births {
    fn width_ms(ttl_ms: u64) -> u64 {
        (ttl_ms / 60).max(1000)
    }

    pub fn note(&self, now_ms: u64, ttl_ms: u64) {
        let epoch = now_ms / Self::width_ms(ttl_ms);
        if let Ok(mut slots) = self.slots.lock() {
            let slot = &mut slots[(epoch % 60) as usize];
            if slot.0 != epoch {
                *slot = (epoch, 0);
            }
            slot.1 += 1;
        }
    }

    /// Sessions created within the last `ttl_ms`.
    pub fn within(&self, now_ms: u64, ttl_ms: u64) -> u64 {
        let now = now_ms / Self::width_ms(ttl_ms);
        let Ok(slots) = self.slots.lock() else {
            return 0;
        };
        slots
            .iter()
            .filter(|(epoch, _)| *epoch + 60 > now && *epoch <= now)
            .map(|(_, n)| n)
            .sum()
    }
}

/// Live sessions against those created within the last TTL, at most 1;
/// 1 when none were created.
pub fn session_survival(live: u64, created: u64) -> f64 {
    if created == 0 {
        1.0
    } else {
        (live as f64 / created as f64).min(1.0)
    }
}

/// Every indicator's value now; none where there is nothing to measure.
fn values(window: &Window, m: &Metrics) -> [Option<f64>; 8] {
    let Window {
        total: window,
        affinity,
    } = window;
    let [input, cache_read, cache_creation, _] = window.tokens;
    let affinity = {
        let hits = affinity[AffinityOutcome::Hit as usize];
        let moved = affinity[AffinityOutcome::Moved as usize];
        ratio(hits, hits + moved)
    };
    let written = m.recovery_written.get();
    let recovery = ratio(written, written + m.recovery_failed.get());
    let mean_connect = match window.connects {
        0 => None,
        n => Some(window.connect_micros as f64 / n as f64 / 1e6),
    };
    [
        ratio(window.errors, window.requests),
        ratio(cache_read, input + cache_read + cache_creation),
        Some(m.pool_utilisation.get()),
        mean_connect,
        Some(m.upstream_healthy_ratio.get()),
        Some(m.session_survival.get()),
        recovery,
        affinity,
    ]
}

/// One indicator now: its value (none where there is nothing to measure,
/// or no finite value) and its verdict (none without a value).
pub struct Reading {
    pub indicator: &'static Indicator,
    pub value: Option<f64>,
    pub ok: Option<bool>,
}

/// Every indicator: rates over `window`, states from the gauges of
/// `metrics` (refreshed by the caller).
pub fn readings(window: &Window, metrics: &Metrics) -> Vec<Reading> {
    INDICATORS
        .iter()
        .zip(values(window, metrics))
        .map(|(i, value)| {
            // JSON has no NaN or infinity: such a value is no value.
            let value = value.filter(|v| v.is_finite());
            Reading {
                indicator: i,
                value,
                ok: value.map(|v| match i.bad_when {
                    BadWhen::Above => v <= i.threshold,
                    BadWhen::Below => v >= i.threshold,
                }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn births_are_counted_within_the_ttl_only() {
        let b = Births::default();
        let ttl = 3_600_000;
        b.note(0, ttl);
        b.note(1_000, ttl);
        b.note(ttl / 2, ttl);
        assert_eq!(b.within(ttl / 2, ttl), 3);
        assert_eq!(
            b.within(ttl + 60_000, ttl),
            1,
            "the first two are past the TTL"
        );
        assert_eq!(b.within(3 * ttl, ttl), 0);
    }

    #[test]
    fn survival_is_capped_and_defined_without_births() {
        assert_eq!(session_survival(5, 0), 1.0);
        assert_eq!(session_survival(90, 100), 0.9);
        assert_eq!(session_survival(500, 100), 1.0);
    }
}

//! One upstream's metric handles, resolved once when the upstream is built
//! ([`super::Metrics::for_upstream`]), so that the request path never looks
//! a label set up; and the token kinds of `relay_edge_tokens_total`.

use super::{Metrics, COMMON_CODES};
use crate::outcome::{AbandonReason, Refused, RelayFailure, StreamOutcome, Usage};
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};

/// The `kind` labels of `relay_edge_tokens_total`, in [`Usage`] order.
pub struct TokenKind;

impl TokenKind {
    pub const ALL: [&'static str; 4] = [
        "input",
        "cache_read_input",
        "cache_creation_input",
        "output",
    ];
}

/// One upstream's pre-resolved metric handles.
pub struct UpstreamMetrics {
    pub healthy: IntGauge,
    pub inflight: IntGauge,
    pub sessions: IntGauge,
    pub duration: Histogram,
    pub ejections: IntCounter,
    pub(super) codes: [(u16, IntCounter); COMMON_CODES.len()],
    pub(super) requests: IntCounterVec,
    pub(super) id: String,
    /// Time from a stream's head to its first event.
    pub first_event: Histogram,
    /// Time to open a new connection.
    pub connect: Histogram,
    pub(super) streams: [IntCounter; StreamOutcome::ALL.len()],
    pub(super) tokens: [IntCounter; 4],
    pub(super) abandoned: [IntCounter; AbandonReason::ALL.len()],
    pub(super) connect_failures: [IntCounter; RelayFailure::ALL.len()],
}

impl UpstreamMetrics {
    /// Count an answered attempt left for another upstream.
    pub fn abandoned(&self, reason: AbandonReason) {
        self.abandoned[reason as usize].inc();
    }

    /// Count a connection to it that could not be opened, and why.
    pub fn connect_failed(&self, why: RelayFailure) {
        self.connect_failures[why as usize].inc();
    }

    /// Count one stream's end.
    pub fn stream(&self, outcome: StreamOutcome) {
        self.streams[outcome as usize].inc();
    }

    /// Count the tokens an answer reported.
    pub fn count_usage(&self, u: &Usage) {
        for (counter, n) in
            self.tokens
                .iter()
                .zip([u.input, u.cache_read, u.cache_creation, u.output])
        {
            if n > 0 {
                counter.inc_by(n);
            }
        }
    }

    pub fn count_response(&self, code: u16) {
        match self.codes.iter().find(|(c, _)| *c == code) {
            Some((_, counter)) => counter.inc(),
            None => self
                .requests
                .with_label_values(&[&self.id, &code.to_string()])
                .inc(),
        }
    }
}

/// A capped upstream's handles (made only for a capped one, so that an
/// uncapped relay shows no grant).
pub struct CapacityMetrics {
    pub queue_length: IntGauge,
    pub queue_wait: Histogram,
    pub grant: IntGauge,
    /// In [`Refused::ALL`] order.
    pub rejections: [IntCounter; Refused::ALL.len()],
}

/// The per-upstream series of the registry.
impl Metrics {
    /// Resolve a capped upstream's capacity handles.
    pub fn for_capacity(&self, id: &str) -> CapacityMetrics {
        CapacityMetrics {
            queue_length: self.upstream_queue_length.with_label_values(&[id]),
            queue_wait: self.upstream_queue_wait.with_label_values(&[id]),
            grant: self.upstream_grant.with_label_values(&[id]),
            rejections: Refused::ALL
                .map(|r| self.capacity_rejections.with_label_values(&[id, r.label()])),
        }
    }

    /// Drop a capped upstream's capacity series (it is gone, or uncapped).
    pub fn forget_capacity(&self, id: &str) {
        let _ = self.upstream_queue_length.remove_label_values(&[id]);
        let _ = self.upstream_queue_wait.remove_label_values(&[id]);
        let _ = self.upstream_grant.remove_label_values(&[id]);
        for r in Refused::ALL {
            let _ = self
                .capacity_rejections
                .remove_label_values(&[id, r.label()]);
        }
    }

    /// Resolve one upstream's handles.
    pub fn for_upstream(&self, id: &str) -> UpstreamMetrics {
        UpstreamMetrics {
            healthy: self.upstream_healthy.with_label_values(&[id]),
            inflight: self.upstream_inflight.with_label_values(&[id]),
            sessions: self.upstream_sessions.with_label_values(&[id]),
            duration: self.request_duration.with_label_values(&[id]),
            ejections: self.ejections.with_label_values(&[id]),
            codes: COMMON_CODES
                .map(|c| (c, self.requests.with_label_values(&[id, &c.to_string()]))),
            requests: self.requests.clone(),
            id: id.to_string(),
            first_event: self.first_event.with_label_values(&[id]),
            connect: self.connect.with_label_values(&[id]),
            streams: StreamOutcome::ALL.map(|o| self.streams.with_label_values(&[id, o.label()])),
            tokens: TokenKind::ALL.map(|k| self.tokens.with_label_values(&[id, k])),
            abandoned: AbandonReason::ALL
                .map(|r| self.abandoned.with_label_values(&[id, r.label()])),
            connect_failures: RelayFailure::ALL
                .map(|r| self.connect_failures.with_label_values(&[id, r.label()])),
        }
    }

    /// Drop the per-upstream series of an upstream that is gone.
    pub fn forget_upstream(&self, id: &str) {
        let _ = self.upstream_healthy.remove_label_values(&[id]);
        let _ = self.upstream_inflight.remove_label_values(&[id]);
        let _ = self.upstream_sessions.remove_label_values(&[id]);
        let _ = self.request_duration.remove_label_values(&[id]);
        let _ = self.ejections.remove_label_values(&[id]);
        let _ = self.first_event.remove_label_values(&[id]);
        let _ = self.connect.remove_label_values(&[id]);
        for outcome in StreamOutcome::ALL {
            let _ = self.streams.remove_label_values(&[id, outcome.label()]);
        }
        for kind in TokenKind::ALL {
            let _ = self.tokens.remove_label_values(&[id, kind]);
        }
        for reason in AbandonReason::ALL {
            let _ = self.abandoned.remove_label_values(&[id, reason.label()]);
        }
        for why in RelayFailure::ALL {
            let _ = self
                .connect_failures
                .remove_label_values(&[id, why.label()]);
        }
        self.forget_capacity(id);
    }

    /// Tokens each upstream reported, by kind (for `/api/stats`).
    pub fn tokens_of(&self, upstream: &str) -> [u64; 4] {
        TokenKind::ALL.map(|k| {
            self.tokens
                .get_metric_with_label_values(&[upstream, k])
                .map_or(0, |c| c.get())
        })
    }
}

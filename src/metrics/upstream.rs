//! One upstream's metric handles, resolved once when the upstream is built
//! ([`super::Metrics::for_upstream`]), so that the request path never looks
//! a label set up; and the token kinds of `relay_edge_tokens_total`.

use super::COMMON_CODES;
use crate::outcome::{AbandonReason, StreamOutcome, Usage};
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
}

impl UpstreamMetrics {
    /// Count an answered attempt left for another upstream.
    pub fn abandoned(&self, reason: AbandonReason) {
        self.abandoned[reason as usize].inc();
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

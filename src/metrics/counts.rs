//! What the request path counts on the registry's own handles: re-pins,
//! purged pins, affinity outcomes, tenants' refusals, clients' errors and failures, and
//! requests that reached no upstream.

use super::Metrics;
use crate::outcome::{
    AffinityOutcome, ClientError, FailureCause, PurgeReason, RejectReason, RepinReason,
};
use prometheus::IntCounter;

impl Metrics {
    /// Count one re-pin.
    pub fn repin(&self, reason: RepinReason) {
        self.repins[reason as usize].inc();
    }

    /// Count `n` re-pins of one reason at once (a bulk move).
    pub fn repins(&self, reason: RepinReason, n: u64) {
        self.repins[reason as usize].inc_by(n);
    }

    /// Count `n` pins a purge this edge ran forgot.
    pub fn purged(&self, reason: PurgeReason, n: u64) {
        self.purged[reason as usize].inc_by(n);
    }

    /// Count one keyed request's affinity outcome.
    pub fn affinity_request(&self, outcome: AffinityOutcome) {
        self.affinity_requests[outcome as usize].inc();
    }

    /// Keyed requests of one outcome so far.
    pub fn affinity_requests(&self, outcome: AffinityOutcome) -> u64 {
        self.affinity_requests[outcome as usize].get()
    }

    /// A request refused for a tenant's limit.
    pub fn tenant_rejection(&self, reason: RejectReason) {
        self.tenant_rejections[reason as usize].inc();
    }

    /// Requests refused for a tenant's limit, by reason, so far.
    pub fn tenant_rejections(&self, reason: RejectReason) -> u64 {
        self.tenant_rejections[reason as usize].get()
    }

    /// Count one error given to a client.
    pub fn client_failure(&self, cause: FailureCause) {
        self.client_failures
            .with_label_values(&[cause.label()])
            .inc();
    }

    /// Count one client mistake or early leave.
    pub fn client_error(&self, reason: ClientError) {
        self.client_errors[reason as usize].inc();
        crate::logging::client_error(reason);
    }

    /// Re-pins of every reason.
    pub fn repins_total(&self) -> u64 {
        self.repins.iter().map(IntCounter::get).sum()
    }

    /// Count a request that reached no upstream.
    pub fn count_unrouted(&self, code: u16) {
        self.requests
            .with_label_values(&["none", &code.to_string()])
            .inc();
    }
}

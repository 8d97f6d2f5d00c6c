//! What request bodies read early hold of the edge (set at each scrape
//! from the body budgets, [`crate::budgets::BodyBudget`]).

use super::{register, Reg};
use prometheus::IntGauge;

pub struct BodyGauges {
    /// Bytes of bodies read early held in memory (`limits.body_read_memory`).
    pub memory: IntGauge,
    /// Bytes of bodies read early spilled to disk (`limits.body_disk`).
    pub spill: IntGauge,
}

impl BodyGauges {
    pub(super) fn new(r: &Reg) -> BodyGauges {
        let gauge = |name: &str, help: &str| {
            register(
                r,
                IntGauge::new(name, help).expect("static metric definition"),
            )
        };
        BodyGauges {
            memory: gauge(
                "relay_edge_body_memory_bytes",
                "Bytes of request bodies read early (for a JSON key, a held stream or a replay) held in memory, counted at their share of Content-Length.",
            ),
            spill: gauge(
                "relay_edge_body_spill_bytes",
                "Bytes of request bodies read early spilled to unlinked files in limits.body_spill_dir, counted at their share of Content-Length.",
            ),
        }
    }
}

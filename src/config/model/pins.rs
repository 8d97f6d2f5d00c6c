//! What becomes of a relay's pins when it leaves placement: removed or
//! drained (`upstreams[].on_remove`), or ejected (`failover.on_eject`).

/// What becomes of a relay's pins when a reload removes it or it is drained
/// (`upstreams[].on_remove`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnRemove {
    /// Each session moves at its next request (reason `removed` or
    /// `draining`).
    #[default]
    Move,
    /// Its pins are purged at once, on every edge of the shared table; each
    /// session's next request is placed anew.
    Purge,
}

/// What a passive ejection does to the relay's pins (`failover.on_eject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnEject {
    /// Nothing by itself: a session moves when its next request reaches an
    /// edge that has ejected the relay.
    #[default]
    Keep,
    /// The edge that ejects it re-pins every session pinned to it at once.
    Move,
}

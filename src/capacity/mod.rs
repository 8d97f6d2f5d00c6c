//! Relay capacity (issue 21, under construction on this branch): a cap of
//! in-flight requests per relay, with a fair queue in front of it, and the
//! grant each edge holds of a cap shared across edges.
//!
//! - [`queue`]: one relay's admission: the local slots (the grant), a
//!   bounded queue fair across tenants (round robin between tenants, first
//!   in, first out within one), and [`queue::Slot`], given back by its drop.
//! - [`grant`]: how much of a relay's cap one edge may hold, given what it
//!   wants and what the other edges hold.
//!
//! Nothing here is wired to the proxy yet: the attempt will take a slot
//! (`proxy::attempt`), and the Redis lease will set each gate's limit.

pub mod grant;
pub mod queue;

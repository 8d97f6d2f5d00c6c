//! The process's two clocks, each in milliseconds: a cheap monotonic one
//! since process start, for state that lives in atomics and never leaves
//! the process (ejection deadlines, the drain's quiet time); and wall time
//! since the Unix epoch, for what outlives the process or crosses to
//! another (the affinity table's times, which Redis shares between edges
//! and an upgrade hands to the next process) and for what people read.

use std::sync::OnceLock;
use std::time::Instant;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since the process's clock epoch; never 0. Monotonic, and
/// meaningless outside this process.
pub fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

/// Milliseconds since the Unix epoch (wall time; 0 if the system clock is
/// set before 1970). A session's created and last-seen times are these.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

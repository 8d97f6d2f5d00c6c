//! Logging: env_logger, with a level that a reload can change.
//!
//! `server.log_level` is one level for the whole process, so it is applied
//! as the `log` crate's global maximum, which any thread can change at any
//! time. `RUST_LOG`, when set, is an operator's override (module filters
//! and all): it wins at start and a reload leaves it alone.

use log::LevelFilter;

/// `RUST_LOG` is set: it, not the config, decides what is logged.
fn overridden() -> bool {
    std::env::var_os("RUST_LOG").is_some_and(|v| !v.is_empty())
}

/// Install the logger at `level` (a validated `server.log_level`).
pub fn init(level: &str) {
    if overridden() {
        env_logger::Builder::new().parse_env("RUST_LOG").init();
        return;
    }
    env_logger::Builder::new()
        .filter_level(LevelFilter::Trace)
        .init();
    set_level(level);
}

/// Apply `level` from a reloaded config, unless `RUST_LOG` overrides it.
/// Returns whether the level changed.
pub fn set_level(level: &str) -> bool {
    if overridden() {
        return false;
    }
    let level = level.parse().unwrap_or(LevelFilter::Info);
    let changed = log::max_level() != level;
    log::set_max_level(level);
    changed
}

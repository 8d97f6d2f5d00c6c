//! Turns the serde mirror into the checked [`Config`], collecting every
//! error. Every duration and number is bounded here, so that nothing that
//! combines them later (a timeout times a factor, a backoff doubling, a ring
//! of virtual nodes per unit of weight) can overflow.

mod affinity;
mod capacity;
mod fleet;
mod presets;
mod process;
mod proxy;
mod shared_table;
mod spill;
mod tenants;
mod traffic;

use super::file::*;
use super::model::*;
use super::FieldError;
pub use affinity::json_pointer;
use affinity::*;
use capacity::*;
pub use fleet::upstream_id_problem;
use fleet::*;
pub use process::admin_only;
use process::*;
use proxy::*;
use regex::Regex;
use shared_table::*;
use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;
use tenants::*;
use traffic::*;

/// Collects errors, each with its path.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(path, message));
    }
}

const MS: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// `value` (or `default`) within `min..=max`, or an error at `path`.
fn duration(
    value: Option<Duration>,
    default: Duration,
    (min, max): (Duration, Duration),
    path: &str,
    errs: &mut Errors,
) -> Duration {
    let d = value.unwrap_or(default);
    if d < min || d > max {
        errs.push(
            path,
            format!(
                "must be from {} to {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        );
        return default;
    }
    d
}

/// `value` (or `default`) within `min..=max`, or an error at `path`.
fn number<T: PartialOrd + Display + Copy>(
    value: Option<T>,
    default: T,
    (min, max): (T, T),
    path: &str,
    errs: &mut Errors,
) -> T {
    let n = value.unwrap_or(default);
    if n < min || n > max {
        errs.push(path, format!("must be from {min} to {max}"));
        return default;
    }
    n
}

/// Validate a parsed file into the model, or return every error found.
pub fn validate(raw: FileConfig) -> Result<Config, Vec<FieldError>> {
    let FileConfig {
        listen,
        upstreams,
        health_check,
        passive_health,
        affinity,
        timeouts,
        failover,
        streams,
        redis,
        admin,
        server,
        reload,
        limits,
        access_log,
        tenants,
        capacity,
    } = raw;
    let mut errs = Errors::default();

    let listeners = listeners(listen, &mut errs);
    let default_cap = match capacity.max_inflight {
        Some(0) => {
            errs.push("capacity.max_inflight", "must be from 1 to 1000000");
            None
        }
        cap => cap,
    };
    let on_remove = on_remove(&upstreams, &mut errs);
    let upstreams = upstream_specs(upstreams, default_cap, &mut errs);
    let health = health(health_check, &mut errs);
    let passive = passive(passive_health, &mut errs);
    let affinity = affinity_spec(affinity.unwrap_or_default(), &mut errs);
    let timeouts = timeouts_spec(timeouts, &mut errs);
    let max_retries = number(
        failover.max_retries,
        Defaults::MAX_RETRIES,
        (0, Limits::MAX_RETRIES),
        "failover.max_retries",
        &mut errs,
    );
    let failover = failover_spec(failover, &mut errs);
    let streams = streams_spec(streams, &mut errs);
    let redis = redis.map(|r| redis_spec(r, &mut errs));
    let admin = admin_spec(admin, &mut errs);
    let server = server_spec(server, &mut errs);
    let limits = limits_spec(limits, &mut errs);
    let access_log = access_log_spec(access_log, &mut errs);
    let tenants = tenants_spec(tenants, &mut errs);
    let capacity = capacity_spec(capacity, &mut errs);
    let ReloadFile { watch, debounce } = reload;
    let reload = ReloadSpec {
        watch,
        debounce: duration(
            debounce,
            Defaults::RELOAD_DEBOUNCE,
            (Duration::ZERO, HOUR),
            "reload.debounce",
            &mut errs,
        ),
    };

    if errs.0.is_empty() {
        Ok(Config {
            listeners,
            upstreams,
            health,
            passive,
            affinity,
            timeouts,
            max_retries,
            failover,
            streams,
            redis,
            admin,
            server,
            reload,
            limits,
            access_log,
            tenants,
            capacity,
            on_remove,
        })
    } else {
        Err(errs.0)
    }
}

fn socket_addr(text: &str, path: &str, errs: &mut Errors) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse() {
        return Some(addr);
    }
    match text.to_socket_addrs().ok().and_then(|mut a| a.next()) {
        Some(addr) => Some(addr),
        None => {
            errs.push(path, format!("invalid socket address {text:?}"));
            None
        }
    }
}

fn placeholder_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

#[cfg(test)]
mod tests;

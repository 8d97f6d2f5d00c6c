//! Logging: env_logger, with a level that a reload can change, and quiet
//! about clients.
//!
//! `server.log_level` is one level for the whole process, so it is applied
//! as the `log` crate's global maximum, which any thread can change at any
//! time. `RUST_LOG`, when set, is an operator's override (module filters
//! and all): it wins at start and a reload leaves it alone.
//!
//! A malformed, slow or vanished client is not an error of the edge, and an
//! attacker must not be able to fill the journal with them. Each is counted
//! by reason (`relay_edge_client_errors_total`) and logged at debug; at most
//! once a minute a warning sums them up. Pingora logs a client that fails
//! during its request head at ERROR ("Fail to proxy: Downstream ..."): such
//! lines are logged at debug here too.
//!
//! Under systemd, with the journal on our stderr (`JOURNAL_STREAM` names
//! that descriptor's device and inode), each line starts with its syslog
//! priority (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug) and has no
//! timestamp of its own: journald stamps it, and `journalctl -p warning -u
//! relay-edge` selects by it. Anywhere else, lines stay as they are.

use crate::outcome::ClientError;
use log::{Level, LevelFilter, Log, Metadata, Record};
use std::sync::atomic::{AtomicU64, Ordering};

/// How often, at most, client errors are summed up at warn.
const CLIENT_ERROR_SUMMARY_MS: u64 = 60_000;

/// `RUST_LOG` is set: it, not the config, decides what is logged.
fn overridden() -> bool {
    std::env::var_os("RUST_LOG").is_some_and(|v| !v.is_empty())
}

/// Our stderr is the journal's stream: the device and inode of descriptor 2
/// are those `JOURNAL_STREAM` names (a child whose stderr was redirected
/// may inherit the variable, so it alone is not enough).
fn journal_on_stderr() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // Safety: fstat only writes into `st`, which is plain data.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    st.st_dev as u64 == dev && st.st_ino as u64 == ino
}

/// The syslog priority of a level, as journald reads it from a line's start.
fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

fn builder() -> env_logger::Builder {
    let mut builder = env_logger::Builder::new();
    if journal_on_stderr() {
        builder.format(|buf, record| {
            use std::io::Write;
            writeln!(
                buf,
                "<{}>{}: {}",
                syslog_priority(record.level()),
                record.target(),
                record.args()
            )
        });
    }
    builder
}

/// Install the logger at `level` (a validated `server.log_level`).
pub fn init(level: &str) {
    let inner = if overridden() {
        builder().parse_env("RUST_LOG").build()
    } else {
        builder().filter_level(LevelFilter::Trace).build()
    };
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(QuietAboutClients { inner })).is_ok() {
        log::set_max_level(max);
    }
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

/// Log one client error at debug, and sum them up at warn at most once a
/// minute.
pub fn client_error(reason: ClientError) {
    static SINCE_SUMMARY: AtomicU64 = AtomicU64::new(0);
    static LAST_SUMMARY_MS: AtomicU64 = AtomicU64::new(0);
    log::debug!("client error: {}", reason.label());
    SINCE_SUMMARY.fetch_add(1, Ordering::Relaxed);
    let now = crate::clock::now_ms();
    let last = LAST_SUMMARY_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) < CLIENT_ERROR_SUMMARY_MS
        || LAST_SUMMARY_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    let count = SINCE_SUMMARY.swap(0, Ordering::Relaxed);
    log::warn!(
        "{count} client errors since the last summary (latest: {}); \
         relay_edge_client_errors_total counts them by reason",
        reason.label()
    );
}

/// env_logger, with Pingora's ERROR lines about failing clients lowered to
/// debug (they are counted where relay-edge sees them).
struct QuietAboutClients {
    inner: env_logger::Logger,
}

impl QuietAboutClients {
    fn about_a_client(record: &Record) -> bool {
        record.level() == Level::Error
            && record.target().starts_with("pingora")
            && record
                .args()
                .as_str()
                .map_or_else(|| record.args().to_string(), str::to_string)
                .starts_with("Fail to proxy: Downstream")
    }
}

impl Log for QuietAboutClients {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if !Self::about_a_client(record) {
            return self.inner.log(record);
        }
        if log::max_level() >= LevelFilter::Debug {
            self.inner.log(
                &Record::builder()
                    .args(*record.args())
                    .level(Level::Debug)
                    .target(record.target())
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .build(),
            );
        }
    }

    fn flush(&self) {
        self.inner.flush()
    }
}

//! The signals Pingora leaves to us, one handler each, the reload on a
//! change of a watched file, and the end of a drain.
//!
//! - SIGHUP (whose default action would kill the process) reloads the
//!   config in-process ([`on_hup`]).
//! - With `reload.watch`, a change of the config file, or of a TLS
//!   listener's certificate or key, reloads too, once it has stayed
//!   unchanged for `reload.debounce` ([`FileWatch`]).
//! - SIGUSR1 reopens the access log's file, after logrotate moved it
//!   ([`on_usr1`]).
//! - SIGUSR2 starts a graceful binary upgrade from inside ([`on_usr2`],
//!   see [`crate::upgrade`]).
//! - On SIGTERM (or SIGQUIT after the socket hand-over) Pingora closes the
//!   listeners, then keeps the process for the whole `grace_period` even
//!   when nothing is left to finish. [`drain_then_exit`] exits as soon as
//!   the drain is quiet (nothing in flight in any generation, and no request
//!   started for `server.drain_quiet`), so a drain takes as long as the
//!   longest open request or stream, and never longer than `grace_period`.
//!
//! One loop takes the signals one at a time: a reload, a reopen and an
//! upgrade never overlap, and a shutdown waits for the one under way.

use crate::state::Edge;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How often the watched files are looked at.
const WATCH_EVERY: Duration = Duration::from_millis(250);

pub struct SignalService {
    edge: Arc<Edge>,
    /// The watched files' stamps as they were when the edge was built: a
    /// change made before this service's thread starts (after the edge is
    /// ready, on a busy machine) is still a change.
    loaded: Vec<FileStamp>,
}

impl SignalService {
    pub fn new(edge: Arc<Edge>) -> SignalService {
        let loaded = watched_stamps(&edge);
        SignalService { edge, loaded }
    }
}

#[async_trait]
impl BackgroundService for SignalService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut hup), Ok(mut usr1), Ok(mut usr2)) = (
            signal(SignalKind::hangup()),
            signal(SignalKind::user_defined1()),
            signal(SignalKind::user_defined2()),
        ) else {
            log::error!("cannot install the SIGHUP, SIGUSR1 and SIGUSR2 handlers");
            return;
        };
        let edge = &self.edge;
        let mut tick = tokio::time::interval(WATCH_EVERY);
        let mut watch = FileWatch::new(self.loaded.clone());
        loop {
            tokio::select! {
                _ = tick.tick() => on_tick(edge, &mut watch).await,
                _ = shutdown.changed() => break,
                _ = hup.recv() => on_hup(edge).await,
                _ = usr1.recv() => on_usr1(edge),
                _ = usr2.recv() => on_usr2(edge).await,
            }
        }
        drain_then_exit(edge).await;
    }
}

/// SIGHUP: reload the config. The outcome is logged and counted by
/// `reload`.
async fn on_hup(edge: &Edge) {
    log::info!("SIGHUP received: reloading the config");
    let _ = edge.reload().await;
}

/// SIGUSR1: reopen the access log.
fn on_usr1(edge: &Edge) {
    log::info!("SIGUSR1 received: reopening the access log");
    edge.access_log.reopen();
}

/// SIGUSR2: start the binary again and hand it the sockets.
async fn on_usr2(edge: &Edge) {
    let Some(path) = edge.config_path.as_deref() else {
        return;
    };
    let sock = edge.state().config.server.upgrade_sock.clone();
    log::info!("SIGUSR2 received: starting the new binary to hand the sockets to");
    let save = || crate::upgrade::save_table(edge, &sock);
    match crate::upgrade::hand_over(path, &sock, save).await {
        Ok(pid) => log::info!("handing the listening sockets to process {pid}, then draining"),
        Err(e) => log::error!("upgrade abandoned, serving on: {e}"),
    }
}

/// Every [`WATCH_EVERY`]: with `reload.watch`, reload once the watched
/// files have changed and then stayed unchanged for `reload.debounce`.
async fn on_tick(edge: &Edge, watch: &mut FileWatch) {
    let spec = edge.state().config.reload.clone();
    if !spec.watch || edge.config_path.is_none() {
        return;
    }
    if watch.observe(watched_stamps(edge), Instant::now(), spec.debounce) {
        log::info!("config file or a TLS certificate changed: reloading");
        let _ = edge.reload().await;
    }
}

/// After the listeners closed: wait for the drain to be quiet, flush the
/// access log, and exit.
async fn drain_then_exit(edge: &Edge) {
    edge.drain.begin();
    log::info!(
        "draining: waiting for {} in-flight requests",
        edge.in_flight()
    );
    let quiet = edge.state().config.server.drain_quiet;
    edge.drain.until_quiet(quiet).await;
    log::info!("drained: nothing in flight for {quiet:?}, exiting");
    // The last requests' lines reach the access log before the exit.
    edge.access_log.flush(Duration::from_secs(2));
    std::process::exit(0);
}

/// When a file was last changed, and its size: a change of either is a
/// change of the file.
type FileStamp = Option<(SystemTime, u64)>;

fn file_stamp(path: &Path) -> FileStamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The stamps of every file a reload reads: the config file, then each TLS
/// listener's certificate and key (a renewal replaces them).
fn watched_stamps(edge: &Edge) -> Vec<FileStamp> {
    let config = edge.config_path.as_deref().into_iter();
    config
        .chain(edge.certificates.paths())
        .map(file_stamp)
        .collect()
}

/// The debounce of a file change: a change is acted on once the stamps
/// have stayed as they are for the debounce, and only once.
struct FileWatch {
    seen: Vec<FileStamp>,
    changed_at: Option<Instant>,
}

impl FileWatch {
    fn new(loaded: Vec<FileStamp>) -> FileWatch {
        FileWatch {
            seen: loaded,
            changed_at: None,
        }
    }

    /// The stamps `now` were read at `at`: is it time to reload?
    fn observe(&mut self, now: Vec<FileStamp>, at: Instant, debounce: Duration) -> bool {
        if now != self.seen {
            self.seen = now;
            self.changed_at = Some(at);
            false
        } else if self
            .changed_at
            .is_some_and(|t| at.saturating_duration_since(t) >= debounce)
        {
            self.changed_at = None;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(len: u64) -> FileStamp {
        Some((SystemTime::UNIX_EPOCH, len))
    }

    /// Each case: the stamps seen at each tick (milliseconds from the
    /// start), and the ticks that reload, with a 1-second debounce.
    #[test]
    fn a_change_reloads_once_it_has_stayed_for_the_debounce() {
        type Ticks<'a> = &'a [(u64, &'a [FileStamp])];
        let cases: &[(&str, Ticks, &[u64])] = &[
            (
                "nothing changes",
                &[(0, &[stamp(1)]), (2000, &[stamp(1)])],
                &[],
            ),
            (
                "a change, then quiet",
                &[
                    (0, &[stamp(2)]),
                    (500, &[stamp(2)]),
                    (1000, &[stamp(2)]),
                    (3000, &[stamp(2)]),
                ],
                &[1000],
            ),
            (
                "a change that keeps changing waits for the last one",
                &[
                    (0, &[stamp(2)]),
                    (900, &[stamp(3)]),
                    (1800, &[stamp(3)]),
                    (1900, &[stamp(3)]),
                ],
                &[1900],
            ),
            (
                "a file that disappears is a change",
                &[(0, &[None]), (1000, &[None])],
                &[1000],
            ),
            (
                "a certificate added to the watched files is a change",
                &[(0, &[stamp(1), stamp(5)]), (1000, &[stamp(1), stamp(5)])],
                &[1000],
            ),
        ];
        for (name, ticks, want) in cases {
            let start = Instant::now();
            let mut watch = FileWatch::new(vec![stamp(1)]);
            let got: Vec<u64> = ticks
                .iter()
                .filter(|(ms, stamps)| {
                    let at = start + Duration::from_millis(*ms);
                    watch.observe(stamps.to_vec(), at, Duration::from_secs(1))
                })
                .map(|(ms, _)| *ms)
                .collect();
            assert_eq!(&got, want, "{name}");
        }
    }
}

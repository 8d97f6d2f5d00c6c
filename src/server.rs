//! Wires a Pingora server from a validated config: the proxy service on
//! every listener, the admin service, the health-check service, the
//! readiness latch, and the signal service (SIGHUP, SIGUSR2, and leaving as
//! soon as a drain is done). Pingora's own `ServerConf` is derived from our
//! config, so one YAML file is all an operator writes.
//!
//! Readiness is decided here: the edge is ready once the first health-check
//! round has finished and, with `redis`, once the shared table is connected
//! (or `redis.connect_wait` has passed). Then `/readyz` answers 200, the pid
//! file is written and systemd is told `READY=1`.

use crate::admin::AdminService;
use crate::affinity::redis_store::RedisStore;
use crate::config::model::ThreadModel;
use crate::config::Config;
use crate::downstream::workers::ProxyWorkers;
use crate::downstream::ClientConnections;
use crate::proxy::EdgeProxy;
use crate::ready_file::{Listening, ReadyFile, Role};
use crate::state::Edge;
use crate::upstream::health::HealthService;
use async_trait::async_trait;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;
use pingora_proxy::HttpProxy;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("listener {addr}: cannot load its TLS certificate or key")]
    Tls {
        addr: String,
        #[source]
        source: crate::certificates::CertError,
    },
}

/// Pingora's server settings, from ours.
pub fn server_conf(config: &Config) -> ServerConf {
    let s = &config.server;
    ServerConf {
        threads: s.threads,
        work_stealing: s.work_stealing,
        upstream_keepalive_pool_size: s.pool_size,
        // Attempts, not retries: each upstream tried may take two (a pooled
        // connection, then a fresh one); `proxy::retry` bounds the rest.
        max_retries: (config.max_retries + 1).saturating_mul(2),
        grace_period_seconds: Some(s.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(s.shutdown_timeout.as_secs()),
        pid_file: s.pid_file.clone(),
        upgrade_sock: s.upgrade_sock.clone(),
        daemon: false,
        ..ServerConf::default()
    }
}

/// Build the server and the shared edge state. Nothing is bound until the
/// server runs.
pub fn build(
    config: Config,
    config_path: Option<std::path::PathBuf>,
    upgrade: bool,
) -> Result<(Server, Arc<Edge>), BuildError> {
    if let (true, Some(redis)) = (upgrade, &config.redis) {
        // Pingora takes the old process's sockets in `bootstrap`; meet
        // Redis first, so the old process serves while we connect.
        if !RedisStore::reachable_before_start(redis) {
            log::error!("redis not reachable within redis.connect_wait: taking the sockets anyway");
        }
    }
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(&config));
    server.bootstrap();

    let certificates = crate::certificates::Certificates::load(&config.listeners)
        .map_err(|(addr, source)| BuildError::Tls { addr, source })?;
    let edge = Edge::with_path(config.clone(), config_path, certificates);
    edge.export_certificates();
    if upgrade {
        // `bootstrap` returned: the old process has handed over its sockets,
        // and saved its in-process table just before.
        crate::upgrade::take_table(&edge, &config.server.upgrade_sock);
    }
    let ready = ReadyFile::from_env();
    match config.server.thread_model {
        ThreadModel::Workers => {
            let conf = server.configuration.clone();
            server.add_service(ProxyWorkers::new(
                edge.clone(),
                conf,
                &config,
                ready.clone(),
            ));
        }
        ThreadModel::Pingora => {
            let proxy = pingora_proxy_service(&server, &edge, &config, ready.clone());
            server.add_service(proxy);
        }
    }

    let mut admin = Service::new(
        "relay-edge admin".to_string(),
        AdminService { edge: edge.clone() },
    );
    admin.threads = Some(1);
    let mut admin = Listening::new(admin, Role::Admin, ready);
    admin.add_tcp(&config.admin.listen.to_string());

    let health = background_service(
        "relay-edge health checks",
        HealthService { edge: edge.clone() },
    );
    let signals = background_service(
        "relay-edge signals",
        SignalService {
            edge: edge.clone(),
            loaded_stamp: watched_stamps(&edge),
        },
    );
    let readiness = background_service("relay-edge readiness", Readiness { edge: edge.clone() });
    let history = background_service("relay-edge history", HistorySampler { edge: edge.clone() });

    server.add_service(admin);
    server.add_service(health);
    server.add_service(signals);
    server.add_service(readiness);
    server.add_service(history);
    if let Some(redis) = &edge.redis {
        server.add_service(background_service(
            "relay-edge redis",
            RedisSync {
                store: redis.clone(),
            },
        ));
    }
    Ok((server, edge))
}

/// The proxy as Pingora's own listening service (`thread_model: pingora`):
/// one `ClientConnections` for all of Pingora's threads.
fn pingora_proxy_service(
    server: &Server,
    edge: &Arc<Edge>,
    config: &Config,
    ready: Arc<ReadyFile>,
) -> Listening<ClientConnections> {
    let mut inner = HttpProxy::new(EdgeProxy::new(edge.clone()), server.configuration.clone());
    inner.handle_init_modules();
    let proxy = Service::new(
        "relay-edge proxy".to_string(),
        ClientConnections::new(Arc::new(inner), edge.clone(), Arc::default(), 0),
    );
    let mut proxy = Listening::new(proxy, Role::Proxy, ready);
    for listener in &config.listeners {
        let addr = listener.addr.to_string();
        match edge.certificates.tls_settings(&addr) {
            None => proxy.add_tcp(&addr),
            Some(settings) => proxy.add_tls_with_settings(&addr, settings),
        }
    }
    proxy
}

/// Latches readiness once upstream health and the shared table are known.
struct Readiness {
    edge: Arc<Edge>,
}

#[async_trait]
impl BackgroundService for Readiness {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let known = async {
            let _ = self.edge.health_known.subscribe().wait_for(|k| *k).await;
            self.edge.store.until_settled().await;
        };
        tokio::select! {
            _ = known => {}
            _ = shutdown.changed() => return,
        }
        if self.edge.mark_ready() {
            crate::supervision::announce_ready(&self.edge.state().config.server.pid_file);
        }
    }
}

/// When a file was last changed, and its size: a change of either is a
/// change of the file.
type FileStamp = Option<(std::time::SystemTime, u64)>;

fn file_stamp(path: &std::path::Path) -> FileStamp {
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

/// Connects to Redis and keeps the shared table in sync, on its own runtime.
struct RedisSync {
    store: Arc<RedisStore>,
}

#[async_trait]
impl BackgroundService for RedisSync {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.store.clone().run(shutdown).await;
    }
}

/// Samples the counters for the dashboard's history every
/// [`crate::history::RESOLUTION`].
struct HistorySampler {
    edge: Arc<Edge>,
}

#[async_trait]
impl BackgroundService for HistorySampler {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut every = tokio::time::interval(crate::history::RESOLUTION);
        loop {
            tokio::select! {
                _ = every.tick() => self.edge.history.record(&self.edge),
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Signals Pingora leaves to us, and the end of a drain.
///
/// - SIGHUP (whose default action would kill the process) reloads the
///   config in-process; so does a change of the file, or of a TLS
///   listener's certificate or key, with `reload.watch`, once it has stayed
///   unchanged for `reload.debounce`.
/// - SIGUSR2 starts a graceful binary upgrade from inside (see
///   [`crate::upgrade`]).
/// - SIGUSR1 reopens the access log's file (after logrotate moved it).
/// - On SIGTERM (or SIGQUIT after the socket hand-over) Pingora closes the
///   listeners, then keeps the process for the whole `grace_period` even
///   when nothing is left to finish. This service exits as soon as the
///   drain is quiet (nothing in flight in any generation, and no request
///   started for `server.drain_quiet`), so a drain takes as long as the
///   longest open request or stream, and never longer than `grace_period`.
struct SignalService {
    edge: Arc<Edge>,
    /// The watched files' modification times and lengths as they were when
    /// the edge was built: a change made before this service's thread
    /// starts (after the edge is ready, on a busy machine) is still a change.
    loaded_stamp: Vec<FileStamp>,
}

impl SignalService {
    /// SIGUSR2: start the binary again and hand it the sockets.
    async fn upgrade(&self) {
        let Some(path) = self.edge.config_path.as_deref() else {
            return;
        };
        let sock = self.edge.state().config.server.upgrade_sock.clone();
        log::info!("SIGUSR2 received: starting the new binary to hand the sockets to");
        let edge = &self.edge;
        let save = || crate::upgrade::save_table(edge, &sock);
        match crate::upgrade::hand_over(path, &sock, save).await {
            Ok(pid) => log::info!("handing the listening sockets to process {pid}, then draining"),
            Err(e) => log::error!("upgrade abandoned, serving on: {e}"),
        }
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
        let mut watch = tokio::time::interval(std::time::Duration::from_millis(250));
        let mut seen = self.loaded_stamp.clone();
        let mut changed_at: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                _ = watch.tick() => {
                    let spec = self.edge.state().config.reload.clone();
                    if !spec.watch || self.edge.config_path.is_none() {
                        continue;
                    }
                    let now = watched_stamps(&self.edge);
                    if now != seen {
                        seen = now;
                        changed_at = Some(std::time::Instant::now());
                    } else if changed_at.is_some_and(|t| t.elapsed() >= spec.debounce) {
                        changed_at = None;
                        log::info!("config file or a TLS certificate changed: reloading");
                        let _ = self.edge.reload().await;
                    }
                }
                _ = shutdown.changed() => break,
                _ = hup.recv() => {
                    log::info!("SIGHUP received: reloading the config");
                    // The outcome is logged and counted by `reload`.
                    let _ = self.edge.reload().await;
                }
                _ = usr1.recv() => {
                    log::info!("SIGUSR1 received: reopening the access log");
                    self.edge.access_log.reopen();
                }
                _ = usr2.recv() => self.upgrade().await,
            }
        }
        self.edge.drain.begin();
        log::info!(
            "draining: waiting for {} in-flight requests",
            self.edge.in_flight()
        );
        let quiet = self.edge.state().config.server.drain_quiet;
        self.edge.drain.until_quiet(quiet).await;
        log::info!("drained: nothing in flight for {quiet:?}, exiting");
        // The last requests' lines reach the access log before the exit.
        self.edge
            .access_log
            .flush(std::time::Duration::from_secs(2));
        std::process::exit(0);
    }
}

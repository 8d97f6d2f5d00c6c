//! Wires a Pingora server from a validated config: the proxy service on
//! every listener, the admin service, and the background services of
//! [`crate::services`] (health checks, readiness, history, Redis, signals).
//! Pingora's own `ServerConf` is derived from our config, so one YAML file
//! is all an operator writes.

use crate::access_log::AccessLog;
use crate::admin::AdminService;
use crate::affinity::redis_store::RedisStore;
use crate::config::model::ThreadModel;
use crate::config::Config;
use crate::downstream::workers::ProxyWorkers;
use crate::downstream::ClientConnections;
use crate::metrics::Metrics;
use crate::proxy::EdgeProxy;
use crate::ready_file::{Listening, ReadyFile, Role};
use crate::state::{Edge, Parts};
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
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
    let metrics = Arc::new(Metrics::new());
    // The access log's writer thread starts with the server's, here.
    let access_log = AccessLog::start(
        &config.access_log,
        metrics.access_log_lines.clone(),
        metrics.access_log_dropped.clone(),
    );
    let parts = Parts {
        config_path,
        certificates,
        metrics,
        access_log,
    };
    let edge = Edge::with_parts(config.clone(), parts);
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

    server.add_service(admin);
    crate::services::add_all(&mut server, &edge);
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

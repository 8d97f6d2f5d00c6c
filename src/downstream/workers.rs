//! The proxy's worker threads (`server.thread_model: workers`, the
//! default), run as nginx runs its workers.
//!
//! Each worker is a thread with its own single-threaded runtime. It accepts
//! client connections from the listening sockets itself, serves them to
//! their end, and keeps its own upstream connection pools (Pingora's and the
//! held streams'). A connection, the upstream connections it uses and the
//! tasks that watch them while idle never leave the thread that accepted
//! it:
//! - no readiness event and no pooled connection crosses threads;
//! - Pingora takes a pooled connection only after the task watching it has
//!   let it go. When that task runs on another thread, the hand-over can
//!   lose a race: the connection is closed, a new one is opened, and an
//!   ERROR is logged (cloudflare/pingora#998). On one thread it cannot.
//!
//! The listening sockets are bound once, here, or taken over from the old
//! process in a graceful upgrade. Both go through Pingora's table of
//! listening descriptors, which also hands them on to the next process (a
//! socket on port 0 under the port it got: [`crate::ready_file`]).
//! Each worker accepts on its own duplicate of each socket, registered with
//! its own runtime, and closes it as soon as shutdown begins. The kernel
//! gives each new connection to one of the workers waiting for one.
//!
//! The affinity table, health, metrics, budgets and the drain are the
//! edge's, shared by every worker.

use super::ClientConnections;
use crate::config::Config;
use crate::outcome::ClientError;
use crate::proxy::EdgeProxy;
use crate::ready_file::{bind, ReadyFile, Role};
use crate::state::Edge;
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::listeners::tls::Acceptor;
use pingora_core::listeners::DEFAULT_L4_WRITE_BUFFER_SIZE;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest, Stream};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{ListenFds, ShutdownWatch};
use pingora_core::services::Service;
use pingora_proxy::HttpProxy;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

/// One listening socket to serve: its address, and TLS when configured.
struct Endpoint {
    /// The address as configured: the key of Pingora's descriptor table.
    addr: String,
    tls: Option<Arc<Acceptor>>,
}

/// The proxy service: binds the listeners and runs the workers.
pub struct ProxyWorkers {
    edge: Arc<Edge>,
    conf: Arc<ServerConf>,
    endpoints: Vec<Endpoint>,
    threads: usize,
    ready: Arc<ReadyFile>,
}

impl ProxyWorkers {
    /// The service for `config`'s listeners. TLS listeners serve the
    /// certificates of `edge.certificates`, read (and checked, so that a bad
    /// one stops the start) before the edge was built. The addresses bound
    /// are reported to `ready`.
    pub fn new(
        edge: Arc<Edge>,
        conf: Arc<ServerConf>,
        config: &Config,
        ready: Arc<ReadyFile>,
    ) -> ProxyWorkers {
        let mut endpoints = Vec::new();
        for listener in &config.listeners {
            let addr = listener.addr.to_string();
            let tls = edge
                .certificates
                .tls_settings(&addr)
                .map(|s| Arc::new(s.build()));
            endpoints.push(Endpoint { addr, tls });
        }
        ProxyWorkers {
            edge,
            conf,
            endpoints,
            threads: config.server.threads,
            ready,
        }
    }

    /// Each endpoint's listening socket: the one handed over by the old
    /// process, or a new one, entered in the table for the next.
    fn listen(&self, fds: Option<&ListenFds>) -> Result<Vec<std::net::TcpListener>, String> {
        self.endpoints
            .iter()
            .map(|endpoint| {
                let handed_over = fds.and_then(|t| t.lock().get(&endpoint.addr).copied());
                let listener = match handed_over {
                    // Safety: a descriptor of the table nobody else took;
                    // this service serves each of its addresses once.
                    Some(fd) => unsafe { std::net::TcpListener::from_raw_fd(fd) },
                    None => {
                        let listener = bind(&endpoint.addr)
                            .map_err(|e| format!("listener {}: cannot bind: {e}", endpoint.addr))?;
                        if let Some(table) = fds {
                            let key = crate::ready_file::table_key(&endpoint.addr, &listener);
                            table.lock().add(key, listener.as_raw_fd());
                        }
                        listener
                    }
                };
                listener
                    .set_nonblocking(true)
                    .map_err(|e| format!("listener {}: {e}", endpoint.addr))?;
                Ok(listener)
            })
            .collect()
    }
}

#[async_trait]
impl Service for ProxyWorkers {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        mut shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let listeners = match self.listen(fds.as_ref()) {
            Ok(l) => l,
            Err(e) => {
                log::error!("{e}");
                eprintln!("relay-edge: {e}");
                std::process::exit(1);
            }
        };
        let bound = listeners.iter().zip(&self.endpoints);
        let bound = bound.map(|(l, e)| l.local_addr().map_or(e.addr.clone(), |a| a.to_string()));
        self.ready.bound(Role::Proxy, bound.collect());
        let open = Arc::new(AtomicUsize::new(0));
        let mut finished = Vec::new();
        for i in 0..self.threads {
            let mut own = Vec::new();
            for (listener, endpoint) in listeners.iter().zip(&self.endpoints) {
                match listener.try_clone() {
                    Ok(l) => own.push((l, endpoint.tls.clone())),
                    Err(e) => log::error!("worker {i}: cannot share {}: {e}", endpoint.addr),
                }
            }
            let (done, finished_rx) = tokio::sync::oneshot::channel();
            let worker = Worker {
                edge: self.edge.clone(),
                conf: self.conf.clone(),
                open: open.clone(),
                listeners: own,
                shutdown: shutdown.clone(),
            };
            match std::thread::Builder::new()
                .name(format!("relay-edge-worker-{i}"))
                .spawn(move || worker.run(done))
            {
                Ok(_) => finished.push(finished_rx),
                Err(e) => log::error!("cannot start worker {i}: {e}"),
            }
        }
        if finished.is_empty() {
            log::error!("no proxy worker could start");
            std::process::exit(1);
        }
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        // The workers close their own copies; this closes the last one
        // (after a hand-over, the next process holds the socket).
        drop(listeners);
        for f in finished {
            let _ = f.await;
        }
    }

    fn name(&self) -> &str {
        "relay-edge proxy"
    }

    /// This service's own runtime only waits; the workers serve.
    fn threads(&self) -> Option<usize> {
        Some(1)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(self.endpoints.iter().map(|e| e.addr.clone()).collect())
    }
}

/// One worker thread, before it starts.
struct Worker {
    edge: Arc<Edge>,
    conf: Arc<ServerConf>,
    open: Arc<AtomicUsize>,
    listeners: Vec<(std::net::TcpListener, Option<Arc<Acceptor>>)>,
    shutdown: ShutdownWatch,
}

impl Worker {
    /// Serve until shutdown and the drain are done (then `done`), and on
    /// until the process exits, for what is still open.
    fn run(self, done: tokio::sync::oneshot::Sender<()>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                log::error!("cannot start a worker's runtime: {e}");
                let _ = done.send(());
                return;
            }
        };
        let Worker {
            edge,
            conf,
            open,
            listeners,
            shutdown,
        } = self;
        runtime.block_on(async move {
            let mut proxy = HttpProxy::new(EdgeProxy::new(edge.clone()), conf);
            proxy.handle_init_modules();
            let connections = Arc::new(ClientConnections::new(
                Arc::new(proxy),
                edge,
                open,
                DEFAULT_L4_WRITE_BUFFER_SIZE,
            ));
            let mut accepting = Vec::new();
            for (listener, tls) in listeners {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => accepting.push(tokio::spawn(accept(
                        l,
                        tls,
                        connections.clone(),
                        shutdown.clone(),
                    ))),
                    Err(e) => log::error!("a worker cannot listen: {e}"),
                }
            }
            futures::future::join_all(accepting).await;
            connections.cleanup().await;
            let _ = done.send(());
            std::future::pending::<()>().await
        })
    }
}

/// Accept connections until shutdown begins; then close this copy of the
/// socket.
async fn accept(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<Acceptor>>,
    connections: Arc<ClientConnections>,
    mut shutdown: ShutdownWatch,
) {
    while !*shutdown.borrow() {
        let accepted = tokio::select! {
            biased;
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                tokio::spawn(serve(
                    tcp,
                    peer,
                    tls.clone(),
                    connections.clone(),
                    shutdown.clone(),
                ));
            }
            Err(e) if out_of_resources(&e) => {
                // Out of descriptors or memory: accept fails at once until
                // something closes, so wait a little rather than spin.
                log::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // A connection reset before it was taken, and the like: only
            // that connection is lost.
            Err(e) => log::debug!("accept failed: {e}"),
        }
    }
}

/// Errors that repeat at once until something is released.
fn out_of_resources(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// One accepted connection, served by this worker to its end.
async fn serve(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<Acceptor>>,
    connections: Arc<ClientConnections>,
    shutdown: ShutdownWatch,
) {
    let _ = tcp.set_nodelay(true);
    let mut l4 = L4Stream::from(tcp);
    let digest = SocketDigest::from_raw_fd(l4.as_raw_fd());
    let _ = digest.peer_addr.set(Some(peer.into()));
    l4.set_socket_digest(digest);
    let stream: Stream = match tls {
        None => Box::new(l4),
        Some(acceptor) => {
            let within = connections.edge.state().config.timeouts.client_header;
            let metrics = &connections.edge.metrics;
            // Boxed: the connection's task would be as large as the
            // handshake for as long as the connection lives.
            let handshake = Box::pin(acceptor.tls_handshake(l4));
            match tokio::time::timeout(within, handshake).await {
                Ok(Ok(tls)) => Box::new(tls),
                Ok(Err(e)) => {
                    log::debug!("TLS handshake with {peer} failed: {e}");
                    metrics.client_error(ClientError::TlsHandshake);
                    return;
                }
                Err(_) => {
                    log::debug!("TLS handshake with {peer} took longer than {within:?}");
                    metrics.client_error(ClientError::TlsHandshake);
                    return;
                }
            }
        }
    };
    ServerApp::process_new(&connections, stream, &shutdown).await;
}

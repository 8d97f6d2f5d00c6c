//! Where relay-edge really listens, for a program that started it on port 0
//! (the integration tests do, so that no test races another for a port).
//!
//! A listener or the admin service configured on port 0 (`127.0.0.1:0`)
//! gets its port from the kernel. The workers
//! ([`crate::downstream::workers`]) bind their sockets themselves; for
//! Pingora's listening services (the admin service, and the proxy with
//! `server.thread_model: pingora`), [`Listening`] binds a port-0 address
//! first. Either way the socket is entered in Pingora's table of listening
//! descriptors under its real address ([`table_key`]): Pingora's listener
//! takes it from there instead of binding, and a graceful upgrade hands it
//! on under that address (the next process's config must name that port).
//!
//! With `RELAY_EDGE_READY_FILE=<path>` in the environment, once the proxy's
//! listeners and the admin listener are bound ([`ReadyFile`]), relay-edge
//! writes, to a temporary file beside `path` renamed to `path` (a reader
//! never sees half of it):
//!
//! ```text
//! {"listeners": ["127.0.0.1:41234"], "admin": "127.0.0.1:41235"}
//! ```
//!
//! An address with a fixed port that Pingora binds (the admin's, and the
//! proxy's with `thread_model: pingora`) is listed as configured, just
//! before Pingora binds it.

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::server::{ListenFds, RuntimeOpts, ShutdownWatch};
use pingora_core::services::listening::Service as ListeningService;
use pingora_core::services::Service;
use std::net::SocketAddr;
use std::os::fd::IntoRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The environment variable that names the ready file.
pub const ENV: &str = "RELAY_EDGE_READY_FILE";

/// Backlog of each listening socket, as Pingora's (the kernel caps it at
/// `net.core.somaxconn`).
const BACKLOG: i32 = 65535;

/// Bind a listening socket on `addr` as Pingora does (`SO_REUSEADDR`).
pub fn bind(addr: &str) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// The key of `listener`, bound for the configured address `configured`,
/// in Pingora's table: the address itself, or the real one for port 0.
pub fn table_key(configured: &str, listener: &std::net::TcpListener) -> String {
    match (port_zero(configured), listener.local_addr()) {
        (true, Ok(real)) => real.to_string(),
        _ => configured.to_string(),
    }
}

fn port_zero(addr: &str) -> bool {
    addr.parse::<SocketAddr>().is_ok_and(|a| a.port() == 0)
}

/// Whose addresses a report carries.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// The proxy's listeners.
    Proxy,
    /// The admin listener.
    Admin,
}

/// The addresses bound so far; the file is written once both roles have
/// reported. Without the environment variable it only collects.
#[derive(Debug, Default)]
pub struct ReadyFile {
    path: Option<PathBuf>,
    bound: Mutex<(Option<Vec<String>>, Option<String>)>,
}

impl ReadyFile {
    /// The ready file named by [`ENV`], if set.
    pub fn from_env() -> Arc<ReadyFile> {
        Arc::new(ReadyFile {
            path: std::env::var_os(ENV).map(PathBuf::from),
            bound: Mutex::default(),
        })
    }

    /// `role`'s sockets are bound, at `addrs`.
    pub fn bound(&self, role: Role, addrs: Vec<String>) {
        let mut bound = self.bound.lock().unwrap_or_else(|e| e.into_inner());
        match role {
            Role::Proxy => bound.0 = Some(addrs),
            Role::Admin => bound.1 = addrs.into_iter().next(),
        }
        let (Some(path), (Some(listeners), Some(admin))) = (&self.path, &*bound) else {
            return;
        };
        let text = serde_json::json!({"listeners": listeners, "admin": admin}).to_string();
        if let Err(e) = write(path, &text) {
            log::error!("cannot write the ready file {}: {e}", path.display());
        }
    }
}

/// Write `text` to a temporary file beside `path`, then rename it there.
fn write(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// One of Pingora's listening services, whose TCP endpoints are added as
/// it starts: an address on port 0 is bound here first and entered in the
/// table under its real address. Reports its addresses to [`ReadyFile`].
pub struct Listening<A> {
    service: ListeningService<A>,
    /// As configured, with TLS settings for a TLS listener.
    endpoints: Vec<(String, Option<TlsSettings>)>,
    role: Role,
    ready: Arc<ReadyFile>,
}

impl<A> Listening<A> {
    pub fn new(service: ListeningService<A>, role: Role, ready: Arc<ReadyFile>) -> Listening<A> {
        Listening {
            service,
            endpoints: Vec::new(),
            role,
            ready,
        }
    }

    /// A plain TCP endpoint on `addr`.
    pub fn add_tcp(&mut self, addr: &str) {
        self.endpoints.push((addr.to_string(), None));
    }

    /// A TLS endpoint on `addr`.
    pub fn add_tls_with_settings(&mut self, addr: &str, settings: TlsSettings) {
        self.endpoints.push((addr.to_string(), Some(settings)));
    }
}

/// Bind `addr` (port 0) and enter the socket in `table`: its real address.
fn bind_into(table: &ListenFds, addr: &str) -> std::io::Result<String> {
    let listener = bind(addr)?;
    // Pingora's listener takes the descriptor as it is: it must not block.
    listener.set_nonblocking(true)?;
    let key = table_key(addr, &listener);
    // The table owns the descriptor now; Pingora's listener takes it.
    table.lock().add(key.clone(), listener.into_raw_fd());
    Ok(key)
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> Service for Listening<A> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        let mut bound = Vec::new();
        for (addr, tls) in std::mem::take(&mut self.endpoints) {
            let addr = match fds.as_ref().filter(|_| port_zero(&addr)) {
                Some(table) => bind_into(table, &addr).unwrap_or_else(|e| {
                    log::error!("listener {addr}: cannot bind: {e}");
                    eprintln!("relay-edge: listener {addr}: cannot bind: {e}");
                    std::process::exit(1);
                }),
                None => addr,
            };
            match tls {
                None => self.service.add_tcp(&addr),
                Some(settings) => self.service.add_tls_with_settings(&addr, None, settings),
            }
            bound.push(addr);
        }
        self.ready.bound(self.role, bound);
        self.service
            .start_service(fds, shutdown, listeners_per_fd)
            .await
    }

    fn name(&self) -> &str {
        self.service.name()
    }

    fn threads(&self) -> Option<usize> {
        self.service.threads()
    }

    fn runtime_opts_override(&self, global: &RuntimeOpts) -> Option<RuntimeOpts> {
        self.service.runtime_opts_override(global)
    }

    /// As configured: the keys of the descriptors an upgrade hands over.
    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(self.endpoints.iter().map(|(a, _)| a.clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_is_keyed_by_the_port_it_got() {
        let listener = bind("127.0.0.1:0").expect("bind");
        let real = listener.local_addr().expect("addr");
        assert_ne!(real.port(), 0);
        assert_eq!(table_key("127.0.0.1:0", &listener), real.to_string());
        let fixed = real.to_string();
        assert_eq!(table_key(&fixed, &listener), fixed);
    }

    #[test]
    fn the_file_is_written_once_both_roles_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ready.json");
        let ready = ReadyFile {
            path: Some(path.clone()),
            bound: Mutex::default(),
        };
        ready.bound(Role::Admin, vec!["127.0.0.1:2".into()]);
        assert!(!path.exists(), "not before the proxy's listeners");
        ready.bound(Role::Proxy, vec!["127.0.0.1:1".into(), "[::1]:3".into()]);
        let text = std::fs::read_to_string(&path).expect("written");
        let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(
            json,
            serde_json::json!({"listeners": ["127.0.0.1:1", "[::1]:3"], "admin": "127.0.0.1:2"})
        );
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
    }
}

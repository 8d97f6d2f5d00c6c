//! A real relay-edge child process ([`Edge`], killed on drop) and the
//! builder that starts it ([`TestEdge`]).
//!
//! Every edge listens on port 0, for its proxy listener and its admin
//! listener alike, and reports the addresses it got in its ready file
//! (`RELAY_EDGE_READY_FILE`, see `relay_edge::ready_file`): no test races
//! another for a port. The config file then says `127.0.0.1:0`; a test
//! whose config is read by another process (`relay-edge ctl`, an upgrade's
//! successor) asks for the real ports in it with
//! [`TestEdge::ports_in_config`].

use super::http::{request, Response};
use super::wait::{eventually, until, until_blocking};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::net::TcpStream;

pub const BIN: &str = env!("CARGO_BIN_EXE_relay-edge");

/// The health check every edge gets unless the test says otherwise
/// ([`TestEdge::own_health_check`]).
const HEALTH_CHECK: &str = "health_check: {path: /health, interval: 200ms, timeout: 200ms}\n";

/// The ready file's name in the edge's directory.
const READY_FILE: &str = "ready.json";

/// How long an edge has to bind its sockets, then to become ready.
const START_WITHIN: Duration = Duration::from_secs(20);

/// How to start a relay-edge: `TestEdge::new(body)`, options, then
/// [`TestEdge::start`]. Without options: two proxy threads, a grace period
/// of 0 s, plain TCP, no admin token, and the standard health check.
pub struct TestEdge {
    body: String,
    threads: usize,
    grace_period: String,
    tls: Option<(PathBuf, PathBuf)>,
    token: Option<String>,
    server_extra: String,
    env: Vec<(String, OsString)>,
    journal: bool,
    health_check: bool,
    listen_port: u16,
    ports_in_config: bool,
}

impl TestEdge {
    /// An edge whose config is `body` (upstreams, affinity, ...) after the
    /// test's own `listen`, `admin` and `server` sections.
    pub fn new(body: &str) -> TestEdge {
        TestEdge {
            body: body.to_string(),
            threads: 2,
            grace_period: "0s".to_string(),
            tls: None,
            token: None,
            server_extra: String::new(),
            env: Vec::new(),
            journal: false,
            health_check: true,
            listen_port: 0,
            ports_in_config: false,
        }
    }

    /// `server.threads`: proxy worker threads.
    pub fn threads(mut self, threads: usize) -> TestEdge {
        self.threads = threads;
        self
    }

    /// `server.grace_period`: how long a drain may take.
    pub fn grace(mut self, grace_period: &str) -> TestEdge {
        self.grace_period = grace_period.to_string();
        self
    }

    /// The proxy listener speaks TLS with `cert` and `key`.
    pub fn tls(mut self, cert: &Path, key: &Path) -> TestEdge {
        self.tls = Some((cert.to_path_buf(), key.to_path_buf()));
        self
    }

    /// `admin.token_file` holds `token`; the admin helpers present it.
    pub fn token(mut self, token: &str) -> TestEdge {
        self.token = Some(token.to_string());
        self
    }

    /// `extra` (`key: value, ...`) is added to the `server` mapping.
    pub fn server(mut self, extra: &str) -> TestEdge {
        self.server_extra = extra.to_string();
        self
    }

    /// `key` is set to `value` in the process's environment.
    pub fn env(mut self, key: &str, value: impl Into<OsString>) -> TestEdge {
        self.env.push((key.to_string(), value.into()));
        self
    }

    /// Started as systemd starts it with its output to the journal:
    /// `JOURNAL_STREAM` names the log file it writes to.
    pub fn journal(mut self) -> TestEdge {
        self.journal = true;
        self
    }

    /// No standard health check is added: `body` has its own
    /// `health_check` section.
    pub fn own_health_check(mut self) -> TestEdge {
        self.health_check = false;
        self
    }

    /// The proxy listener on this fixed port rather than port 0, for a test
    /// that compares what the edge says of its listener as configured (a
    /// TLS certificate's `listener`) with the address it listens on.
    pub fn listen_port(mut self, port: u16) -> TestEdge {
        self.listen_port = port;
        self
    }

    /// Once the edge has bound its sockets, write their real ports into its
    /// config file in place of port 0, for another process that reads the
    /// file: `relay-edge ctl` (the admin address), an upgrade's successor
    /// (it takes over the sockets by the addresses its config names). The
    /// running edge still holds port 0 as its config: a reload reports the
    /// listeners as needing an upgrade.
    pub fn ports_in_config(mut self) -> TestEdge {
        self.ports_in_config = true;
        self
    }

    /// Start relay-edge and wait until it is ready.
    pub async fn start(self) -> Edge {
        let edge = self.start_unready().await;
        edge.wait_ready(START_WITHIN).await;
        edge
    }

    /// Start relay-edge and wait until its sockets are bound, not until it
    /// is ready.
    pub async fn start_unready(self) -> Edge {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display();
        let tls = self.tls.as_ref().map_or(String::new(), |(c, k)| {
            format!(", tls: {{cert: {}, key: {}}}", c.display(), k.display())
        });
        let token_file = self.token.as_ref().map_or(String::new(), |token| {
            let file = dir.path().join("admin.token");
            std::fs::write(&file, format!("{token}\n")).expect("write the token");
            std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("token file mode");
            format!(", token_file: {}", file.display())
        });
        let mut yaml = format!(
            "listen: [{{addr: 127.0.0.1:{port}{tls}}}]\nadmin: {{listen: 127.0.0.1:0{token_file}}}\nserver: {{threads: {threads}, pid_file: {d}/pid, upgrade_sock: {d}/upgrade.sock, log_level: info, grace_period: {grace}, shutdown_timeout: 1s{server_extra}}}\n{body}",
            port = self.listen_port,
            threads = self.threads,
            grace = self.grace_period,
            server_extra = if self.server_extra.is_empty() {
                String::new()
            } else {
                format!(", {}", self.server_extra)
            },
            body = self.body,
        );
        if self.health_check {
            yaml.push_str(HEALTH_CHECK);
        }
        let conf = dir.path().join("relay-edge.yaml");
        std::fs::write(&conf, &yaml).expect("write config");
        let ready_file = dir.path().join(READY_FILE);
        let log = std::fs::File::create(dir.path().join("relay-edge.log")).expect("log file");
        let mut command = Command::new(BIN);
        if self.journal {
            use std::os::unix::fs::MetadataExt;
            let meta = log.metadata().expect("log file metadata");
            command.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        }
        let child = command
            .arg("-c")
            .arg(&conf)
            .env(relay_edge::ready_file::ENV, &ready_file)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("relay-edge starts");
        let mut edge = Edge {
            child,
            // Until the ready file says where.
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
            token: self.token,
        };
        let (addr, admin) = edge.bound(&ready_file).await;
        (edge.addr, edge.admin) = (addr, admin);
        if self.ports_in_config {
            edge.rewrite(
                &format!("listen: [{{addr: 127.0.0.1:{}", self.listen_port),
                &format!("listen: [{{addr: {addr}"),
            );
            edge.rewrite(
                "admin: {listen: 127.0.0.1:0",
                &format!("admin: {{listen: {admin}"),
            );
        }
        edge
    }
}

/// A relay-edge child process; killed on drop.
pub struct Edge {
    child: Child,
    /// The proxy listener's address.
    pub addr: SocketAddr,
    /// The admin listener's address.
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    /// The admin token, when one is configured ([`TestEdge::token`]).
    pub token: Option<String>,
}

impl Edge {
    /// The proxy and admin addresses of the ready file at `path`, once it is
    /// there; fails at once if the process exits first.
    async fn bound(&mut self, path: &Path) -> (SocketAddr, SocketAddr) {
        match ready_addresses(path, &mut self.child).await {
            Some(bound) => bound,
            None => panic!("relay-edge bound no sockets:\n{}", self.log()),
        }
    }

    /// Wait until `/readyz` answers 200 and the proxy port accepts.
    pub async fn wait_ready(&self, within: Duration) {
        let ready = until(within, || async {
            match self.admin_request("GET", "/readyz", b"").await {
                Ok(r) if r.status == 200 && TcpStream::connect(self.addr).await.is_ok() => Some(()),
                _ => None,
            }
        })
        .await;
        assert!(
            ready.is_some(),
            "relay-edge did not become ready:\n{}",
            self.log()
        );
    }

    /// One admin request, with the token when one is configured.
    pub async fn admin_request(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> std::io::Result<Response> {
        let bearer = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer
            .iter()
            .map(|b| ("authorization", b.as_str()))
            .collect();
        request(self.admin, method, path, &headers, body).await
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("relay-edge.log")).unwrap_or_default()
    }

    /// Replace `from` (which must be there) with `to` in the config file.
    pub fn rewrite(&self, from: &str, to: &str) {
        let path = self.config_path();
        let text = std::fs::read_to_string(&path).expect("read config");
        assert!(text.contains(from), "config lacks {from:?}");
        std::fs::write(&path, text.replace(from, to)).expect("write config");
    }

    /// The process id of this relay-edge.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The directory of its config, pid file, upgrade socket and logs.
    pub fn dir_path(&self) -> &Path {
        self.dir.path()
    }

    /// Where it said which addresses it bound.
    pub fn ready_file(&self) -> PathBuf {
        self.dir.path().join(READY_FILE)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("relay-edge.yaml")
    }

    /// Start a second relay-edge on the same config with `--upgrade`, ready
    /// to take this one's sockets once it gets SIGQUIT. The config must name
    /// the ports this one got ([`TestEdge::ports_in_config`]).
    pub async fn start_upgrade(&self) -> Child {
        let config = std::fs::read_to_string(self.config_path()).expect("read config");
        assert!(
            config.contains(&format!("addr: {}", self.addr)),
            "start the edge with .ports_in_config(): the successor takes the sockets its config names"
        );
        let sock = self.dir.path().join("upgrade.sock");
        let log = std::fs::File::create(self.dir.path().join("upgrade.log")).expect("log file");
        let child = Command::new(BIN)
            .arg("-c")
            .arg(self.config_path())
            .arg("--upgrade")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("relay-edge --upgrade starts");
        eventually(
            Duration::from_secs(10),
            "the new process waits on the upgrade socket",
            || async { sock.exists() },
        )
        .await;
        child
    }

    pub fn upgrade_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("upgrade.log")).unwrap_or_default()
    }

    /// Send a signal (`TERM`, `INT`, `HUP`, ...) to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Wait up to `within` for the process to exit; its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        until_blocking(within, || self.child.try_wait().ok().flatten()).and_then(|s| s.code())
    }

    /// The process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        request(self.addr, "GET", path, headers, b"")
            .await
            .expect("proxy answers")
    }

    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        request(self.addr, "POST", path, headers, body)
            .await
            .expect("proxy answers")
    }

    pub async fn admin_json(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> (u16, serde_json::Value) {
        let r = self
            .admin_request(method, path, body)
            .await
            .expect("admin answers");
        (
            r.status,
            serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.admin_request("GET", "/metrics", b"")
            .await
            .expect("admin answers")
            .text()
    }

    /// The admin view of one upstream.
    pub async fn upstream(&self, id: &str) -> serde_json::Value {
        let (_, list) = self.admin_json("GET", "/api/upstreams", b"").await;
        list.as_array()
            .and_then(|l| l.iter().find(|u| u["id"] == id).cloned())
            .expect("upstream listed")
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first proxy listener's and the admin listener's addresses in the
/// ready file at `path` (see `relay_edge::ready_file`), once `child` has
/// written it; `None` if `child` exits first or it takes too long.
pub async fn ready_addresses(path: &Path, child: &mut Child) -> Option<(SocketAddr, SocketAddr)> {
    let text = until(START_WITHIN, || {
        let exited = !matches!(child.try_wait(), Ok(None));
        let text = std::fs::read_to_string(path).ok();
        async move {
            match text {
                Some(text) => Some(Some(text)),
                None if exited => Some(None),
                None => None,
            }
        }
    })
    .await
    .flatten()?;
    let json: serde_json::Value = serde_json::from_str(&text).expect("the ready file is JSON");
    let addr = |v: &serde_json::Value| -> SocketAddr {
        v.as_str()
            .and_then(|a| a.parse().ok())
            .expect("a socket address in the ready file")
    };
    Some((addr(&json["listeners"][0]), addr(&json["admin"])))
}

/// The old process completes `stream` (an SSE response), then exits 0.
pub async fn finishes_its_stream_and_exits(
    old: &mut Edge,
    stream: tokio::task::JoinHandle<std::io::Result<Response>>,
) {
    let r = stream
        .await
        .expect("task")
        .expect("the old process finishes its stream");
    assert!(r.text().contains("message_stop"), "{}", r.text());
    let code = tokio::task::block_in_place(|| old.wait_exit(Duration::from_secs(20)));
    assert_eq!(
        code,
        Some(0),
        "the old process exits once drained:\n{}",
        old.log()
    );
}

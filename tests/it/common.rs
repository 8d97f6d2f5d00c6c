//! Test support: a real relay-edge child process on ephemeral ports, demo
//! upstreams in-process, a raw HTTP/1.1 client, and polling with deadlines.

#![allow(dead_code)]

use relay_edge::demo::DemoUpstream;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A free loopback port, never handed out twice in this test process (the
/// kernel may offer a just-released port again before its new owner binds it).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub async fn upstreams(names: &[&str]) -> Vec<DemoUpstream> {
    let mut ups = Vec::new();
    for name in names {
        ups.push(
            DemoUpstream::start(name, "127.0.0.1:0".parse().expect("addr"))
                .await
                .expect("upstream listens"),
        );
    }
    ups
}

pub fn upstreams_yaml<'a>(ups: impl IntoIterator<Item = &'a DemoUpstream>) -> String {
    let mut y = String::from("upstreams:\n");
    for u in ups {
        y.push_str(&format!("  - {{id: {}, addr: {}}}\n", u.name, u.addr));
    }
    y
}

/// A relay-edge child process; killed on drop.
pub struct Edge {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    /// The admin token, when one is configured (`start_with_admin_token`).
    pub token: Option<String>,
}

pub const BIN: &str = env!("CARGO_BIN_EXE_relay-edge");

impl Edge {
    /// Start relay-edge with `body` (upstreams, affinity, ...) plus test
    /// listeners, and wait until it is ready.
    pub async fn start(body: &str) -> Edge {
        Edge::start_with_threads(body, 2).await
    }

    /// As [`Edge::start`], with `threads` proxy worker threads.
    pub async fn start_with_threads(body: &str, threads: usize) -> Edge {
        Edge::start_full(body, threads, None).await
    }

    /// As [`Edge::start`]; with `tls` (cert, key) the proxy listener speaks TLS.
    pub async fn start_full(
        body: &str,
        threads: usize,
        tls: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Edge {
        Edge::start_opts(body, threads, tls, "0s").await
    }

    /// The general form: `grace_period` is how long a drain may take.
    pub async fn start_opts(
        body: &str,
        threads: usize,
        tls: Option<(&std::path::Path, &std::path::Path)>,
        grace_period: &str,
    ) -> Edge {
        Edge::launch(body, threads, tls, grace_period, &[]).await
    }

    /// As [`Edge::start_opts`] without TLS, with `env` set for the process.
    pub async fn start_with_env(
        body: &str,
        grace_period: &str,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Edge {
        Edge::launch(body, 1, None, grace_period, env).await
    }

    async fn launch(
        body: &str,
        threads: usize,
        tls: Option<(&std::path::Path, &std::path::Path)>,
        grace_period: &str,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Edge {
        let edge = Edge::spawn(body, threads, tls, grace_period, env, Spawn::default());
        edge.wait_ready(Duration::from_secs(20)).await;
        edge
    }

    /// As [`Edge::start`] with one thread and a 10 s grace period, with
    /// `server_extra` (`key: value, ...`) added to the `server` mapping.
    pub async fn start_with_server(body: &str, server_extra: &str) -> Edge {
        let spawn = Spawn {
            server_extra,
            ..Spawn::default()
        };
        let edge = Edge::spawn(body, 1, None, "10s", &[], spawn);
        edge.wait_ready(Duration::from_secs(20)).await;
        edge
    }

    /// As [`Edge::start`] with one thread, with `admin.token_file` holding
    /// `token`; the admin helpers below present it.
    pub async fn start_with_admin_token(body: &str, token: &str) -> Edge {
        let spawn = Spawn {
            admin_token: Some(token),
            ..Spawn::default()
        };
        let edge = Edge::spawn(body, 1, None, "0s", &[], spawn);
        edge.wait_ready(Duration::from_secs(20)).await;
        edge
    }

    /// Start relay-edge (one thread) without waiting for it to be ready.
    pub fn spawn_unready(body: &str) -> Edge {
        Edge::spawn(body, 1, None, "0s", &[], Spawn::default())
    }

    /// Wait until `/readyz` answers 200 and the proxy port accepts.
    pub async fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(r) = self.admin_request("GET", "/readyz", b"").await {
                if r.status == 200 && TcpStream::connect(self.addr).await.is_ok() {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "relay-edge did not become ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Start relay-edge (one thread) as systemd starts it with its output
    /// to the journal: `JOURNAL_STREAM` names the log file it writes to.
    pub async fn start_as_journal_writer(body: &str) -> Edge {
        let spawn = Spawn {
            journal: true,
            ..Spawn::default()
        };
        let edge = Edge::spawn(body, 1, None, "0s", &[], spawn);
        edge.wait_ready(Duration::from_secs(20)).await;
        edge
    }

    /// Start relay-edge, as `how` says.
    fn spawn(
        body: &str,
        threads: usize,
        tls: Option<(&std::path::Path, &std::path::Path)>,
        grace_period: &str,
        env: &[(&str, &std::ffi::OsStr)],
        how: Spawn,
    ) -> Edge {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let d = dir.path().display();
        let tls = tls.map_or(String::new(), |(c, k)| {
            format!(", tls: {{cert: {}, key: {}}}", c.display(), k.display())
        });
        let token_file = how.admin_token.map_or(String::new(), |token| {
            let file = dir.path().join("admin.token");
            std::fs::write(&file, format!("{token}\n")).expect("write the token");
            std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("token file mode");
            format!(", token_file: {}", file.display())
        });
        let mut yaml = format!(
            "listen: [{{addr: {addr}{tls}}}]\nadmin: {{listen: {admin}{token_file}}}\nserver: {{threads: {threads}, pid_file: {d}/pid, upgrade_sock: {d}/upgrade.sock, log_level: info, grace_period: {grace_period}, shutdown_timeout: 1s{server_extra}}}\n{body}",
            server_extra = if how.server_extra.is_empty() {
                String::new()
            } else {
                format!(", {}", how.server_extra)
            }
        );
        if !body.contains("health_check") {
            yaml.push_str("health_check: {path: /health, interval: 200ms, timeout: 200ms}\n");
        }
        let conf = dir.path().join("relay-edge.yaml");
        std::fs::write(&conf, &yaml).expect("write config");
        let log = std::fs::File::create(dir.path().join("relay-edge.log")).expect("log file");
        let mut command = Command::new(BIN);
        if how.journal {
            use std::os::unix::fs::MetadataExt;
            let meta = log.metadata().expect("log file metadata");
            command.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        }
        let child = command
            .arg("-c")
            .arg(&conf)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("relay-edge starts");
        Edge {
            child,
            addr,
            admin,
            dir,
            token: how.admin_token.map(str::to_string),
        }
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
    pub fn dir_path(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("relay-edge.yaml")
    }

    /// Start a second relay-edge on the same config with `--upgrade`, ready
    /// to take this one's sockets once it gets SIGQUIT.
    pub async fn start_upgrade(&self) -> Child {
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
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
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

/// How [`Edge::spawn`] starts relay-edge.
#[derive(Default)]
struct Spawn<'a> {
    /// With `JOURNAL_STREAM` naming its log file, as systemd starts it with
    /// its output to the journal.
    journal: bool,
    /// With `admin.token_file` holding this token.
    admin_token: Option<&'a str>,
    /// Added to the `server` mapping (`key: value, ...`).
    server_extra: &'a str,
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        relay_edge::demo::find_header(&self.headers, name)
    }

    /// Which demo upstream answered.
    pub fn upstream(&self) -> String {
        self.header("x-upstream").unwrap_or("none").to_string()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client connection that can carry several requests (keep-alive).
pub struct Conn {
    stream: BufReader<TcpStream>,
    buf: Vec<u8>,
}

pub fn raw_request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        out.push_str("host: relay.test\r\n");
    }
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"))
        && (method != "GET" || !body.is_empty())
    {
        out.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        Ok(Conn {
            stream: BufReader::new(TcpStream::connect(addr).await?),
            buf: Vec::new(),
        })
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.get_mut().write_all(bytes).await
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        self.send_raw(&raw_request(method, path, headers, body))
            .await?;
        self.read_response(|_| {}).await
    }

    /// Wait for the server to close the connection; true on a clean close.
    pub async fn read_eof(&mut self) -> bool {
        loop {
            match self.fill().await {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Read one response; `on_data` sees each piece of body as it arrives.
    pub async fn read_response(
        &mut self,
        mut on_data: impl FnMut(&[u8]),
    ) -> std::io::Result<Response> {
        let eof = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed");
        let (status, headers, head_len) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut hs);
            if let Ok(httparse::Status::Complete(n)) = resp.parse(&self.buf) {
                let headers = relay_edge::demo::owned_headers(resp.headers);
                break (resp.code.unwrap_or(0), headers, n);
            }
            if self.fill().await? == 0 {
                return Err(eof());
            }
        };
        self.buf.drain(..head_len);
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let line_end = loop {
                    if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break p;
                    }
                    if self.fill().await? == 0 {
                        return Err(eof());
                    }
                };
                let size = usize::from_str_radix(
                    String::from_utf8_lossy(&self.buf[..line_end])
                        .split(';')
                        .next()
                        .unwrap_or("")
                        .trim(),
                    16,
                )
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk size")
                })?;
                self.buf.drain(..line_end + 2);
                while self.buf.len() < size + 2 {
                    if self.fill().await? == 0 {
                        return Err(eof());
                    }
                }
                if size == 0 {
                    self.buf.drain(..2);
                    break;
                }
                on_data(&self.buf[..size]);
                body.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
            }
        } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            while self.buf.len() < len {
                if self.fill().await? == 0 {
                    return Err(eof());
                }
            }
            body = self.buf.drain(..len).collect();
            on_data(&body);
        } else if status != 204 && status != 304 && !(100..200).contains(&status) {
            while self.fill().await? > 0 {}
            body = std::mem::take(&mut self.buf);
            on_data(&body);
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

/// Send `GET path` on a fresh connection and read the streamed response in
/// the background; returns once its first body bytes have arrived (the
/// stream is under way).
pub async fn open_stream(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> tokio::task::JoinHandle<std::io::Result<Response>> {
    open_stream_with(addr, "GET", path, headers, b"").await
}

/// [`open_stream`] with any method and body.
pub async fn open_stream_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> tokio::task::JoinHandle<std::io::Result<Response>> {
    let mut conn = Conn::open(addr).await.expect("connect");
    conn.send_raw(&raw_request(method, path, headers, body))
        .await
        .expect("send");
    let (started, on_start) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut started = Some(started);
        conn.read_response(|data| {
            if !data.is_empty() {
                if let Some(tx) = started.take() {
                    let _ = tx.send(());
                }
            }
        })
        .await
    });
    on_start.await.expect("the stream started");
    task
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

/// One request on a fresh connection.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut conn = Conn::open(addr).await?;
    conn.request(method, path, headers, body).await
}

/// Poll `cond` until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A Messages-API style body of about `size` bytes with `metadata.user_id`
/// at its very end.
pub fn messages_body(size: usize, user_id: &str) -> Vec<u8> {
    let head = r#"{"model":"claude-x","messages":[{"role":"user","content":""#;
    let tail =
        format!(r#""}}],"max_tokens":16,"stream":false,"metadata":{{"user_id":"{user_id}"}}}}"#);
    let fill = size.saturating_sub(head.len() + tail.len());
    let mut body = Vec::with_capacity(size);
    body.extend_from_slice(head.as_bytes());
    body.extend((0..fill).map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789 "[i % 37]));
    body.extend_from_slice(tail.as_bytes());
    body
}

/// A real `redis-server` child process on a free port; killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    pub password: Option<String>,
    extra: Vec<String>,
    /// Serves TLS only (on `port`), with a self-signed certificate.
    tls: bool,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub async fn start(password: Option<&str>) -> RedisServer {
        RedisServer::start_with(password, &[]).await
    }

    /// Start with extra `redis-server` arguments.
    pub async fn start_with(password: Option<&str>, extra: &[&str]) -> RedisServer {
        let mut server = RedisServer::unstarted();
        server.password = password.map(str::to_string);
        server.extra = extra.iter().map(|s| s.to_string()).collect();
        server.spawn().await;
        server
    }

    /// A server with a port and a URL that is not running yet (`spawn` starts it).
    pub fn unstarted() -> RedisServer {
        RedisServer {
            child: None,
            port: free_port(),
            password: None,
            extra: Vec::new(),
            tls: false,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// A TLS-only server with a self-signed certificate for `cert`/`key`.
    pub async fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            password: None,
            extra: Vec::new(),
            tls: true,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        server.extra = [
            "--tls-port",
            &server.port.to_string(),
            "--port",
            "0",
            "--tls-cert-file",
            &cert,
        ]
        .iter()
        .chain(&[
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &cert,
            "--tls-auth-clients",
            "no",
        ])
        .map(|s| s.to_string())
        .collect();
        server.spawn().await;
        server
    }

    pub async fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(self.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let Some(pw) = &self.password {
            cmd.args(["--requirepass", pw]);
        }
        cmd.args(&self.extra);
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("redis-server could not start ({e}); install it with: apt-get install -y redis-server")
        });
        self.child = Some(child);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().expect("addr");
        let tls = self.tls;
        eventually(Duration::from_secs(10), "redis-server answers", || async {
            let Ok(mut s) = TcpStream::connect(addr).await else {
                return false;
            };
            if tls {
                // A TLS port: accepting the connection is enough.
                return true;
            }
            if s.write_all(b"PING\r\n").await.is_err() {
                return false;
            }
            let mut buf = [0u8; 64];
            matches!(s.read(&mut buf).await, Ok(n) if n > 0)
        })
        .await;
    }

    pub fn url(&self) -> String {
        if self.tls {
            return format!("rediss://127.0.0.1:{}/0#insecure", self.port);
        }
        match &self.password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// Run `redis-cli` against this server.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &self.port.to_string(), "--no-auth-warning"]);
        if self.tls {
            cmd.args(["--tls", "--insecure"]);
        }
        if let Some(pw) = &self.password {
            cmd.args(["-a", pw]);
        }
        let out = cmd
            .args(args)
            .output()
            .expect("redis-cli runs (apt-get install -y redis-tools)");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Sessions stored in this server's bucket hashes (default prefix).
    pub fn stored_sessions(&self) -> usize {
        let script = "local n = 0 for _, k in ipairs(redis.call('KEYS', 'relay-edge:b:*')) do n = n + redis.call('HLEN', k) end return n";
        self.cli(&["EVAL", script, "0"]).parse().unwrap_or(0)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port (empty: nothing is persisted).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A 3-master Redis Cluster on loopback, made with `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let node = RedisServer::start_with(
                None,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                ],
            )
            .await;
            nodes.push(node);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs (apt-get install -y redis-tools)");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes };
        for node in &cluster.nodes {
            eventually(Duration::from_secs(20), "cluster state ok", || async {
                node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok")
            })
            .await;
        }
        cluster
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

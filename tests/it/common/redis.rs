//! Real `redis-server` children on free ports (a single server, with a
//! password, over TLS, or three as a cluster), killed on drop.
//!
//! Their ports come from [`free_port`]: a redis-server cannot be told to
//! take port 0 and say which port it got.

use super::free_port;
use super::wait::eventually;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

    /// Start again on the same port with `extra` arguments added (its
    /// data too, if it was saved: the directory is kept).
    pub async fn restart_with(&mut self, extra: &[&str]) {
        self.extra.extend(extra.iter().map(|s| s.to_string()));
        self.restart().await;
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

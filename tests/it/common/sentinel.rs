//! A real Redis Sentinel deployment on loopback: a master, a replica
//! (`--replicaof`) and three `redis-sentinel` children, each with its own
//! config file in a temporary directory; all killed on drop.

use super::free_port;
use super::redis::RedisServer;
use super::wait::eventually;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One `redis-sentinel` child on a free port.
pub struct Sentinel {
    child: Option<Child>,
    pub port: u16,
    password: Option<String>,
    dir: tempfile::TempDir,
}

impl Sentinel {
    /// Start a sentinel that monitors `name` at `master_port` with quorum
    /// 2, notices a master down after 1 s, and may retry a failover after
    /// 5 s. `data_password` is the data nodes' (`auth-pass`), `password`
    /// its own (`requirepass`, and what it gives the other sentinels).
    fn start(
        name: &str,
        master_port: u16,
        data_password: Option<&str>,
        password: Option<&str>,
    ) -> Sentinel {
        let (port, dir) = (free_port(), tempfile::tempdir().expect("tempdir"));
        let mut conf = format!(
            "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {}\n\
             sentinel monitor {name} 127.0.0.1 {master_port} 2\n\
             sentinel down-after-milliseconds {name} 1000\n\
             sentinel failover-timeout {name} 5000\n\
             sentinel parallel-syncs {name} 1\n",
            dir.path().display()
        );
        if let Some(pw) = data_password {
            conf.push_str(&format!("sentinel auth-pass {name} {pw}\n"));
        }
        if let Some(pw) = password {
            conf.push_str(&format!("requirepass {pw}\nsentinel sentinel-pass {pw}\n"));
        }
        let path = dir.path().join("sentinel.conf");
        std::fs::write(&path, conf).expect("write sentinel.conf");
        let child = Command::new("redis-sentinel")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-sentinel could not start ({e}); install it with: apt-get install -y redis-sentinel")
            });
        Sentinel {
            child: Some(child),
            port,
            password: password.map(str::to_string),
            dir,
        }
    }

    /// Run `redis-cli` against this sentinel.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &self.port.to_string(), "--no-auth-warning"]);
        if let Some(pw) = &self.password {
            cmd.args(["-a", pw]);
        }
        let out = cmd
            .args(args)
            .output()
            .expect("redis-cli runs (apt-get install -y redis-tools)");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stop (`STOP`) or continue (`CONT`) the process: a stopped sentinel
    /// keeps its connections open and answers nothing.
    pub fn signal(&self, name: &str) {
        let Some(child) = &self.child else { return };
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(child.id().to_string())
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{name} failed");
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A master, its replica and three sentinels that agree on them.
pub struct SentinelSet {
    pub name: String,
    pub master: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<Sentinel>,
}

impl SentinelSet {
    /// Start them all and wait until the replica is in sync and every
    /// sentinel knows the replica and the two other sentinels.
    pub async fn start(data_password: Option<&str>, password: Option<&str>) -> SentinelSet {
        let name = "relay-edge-master".to_string();
        let master = RedisServer::start(data_password).await;
        let port = master.port.to_string();
        let mut replica_args = vec!["--replicaof", "127.0.0.1", &port];
        if let Some(pw) = data_password {
            replica_args.extend(["--masterauth", pw]);
        }
        let replica = RedisServer::start_with(data_password, &replica_args).await;
        eventually(
            Duration::from_secs(10),
            "the replica is in sync",
            || async {
                replica
                    .cli(&["INFO", "replication"])
                    .contains("master_link_status:up")
            },
        )
        .await;
        let sentinels = (0..3)
            .map(|_| Sentinel::start(&name, master.port, data_password, password))
            .collect();
        let set = SentinelSet {
            name,
            master,
            replica,
            sentinels,
        };
        for s in &set.sentinels {
            eventually(
                Duration::from_secs(20),
                "the sentinels know each other and the replica",
                || async {
                    let info = fields(&s.cli(&["SENTINEL", "master", &set.name]));
                    info.get("num-other-sentinels").map(String::as_str) == Some("2")
                        && info.get("num-slaves").map(String::as_str) == Some("1")
                        && s.cli(&["SENTINEL", "ckquorum", &set.name])
                            .starts_with("OK")
                },
            )
            .await;
        }
        set
    }

    /// The `nodes:` of `redis.sentinel`, as YAML flow items.
    pub fn nodes_yaml(&self) -> String {
        SentinelSet::nodes_yaml_of(&self.sentinels)
    }

    /// The `nodes:` of `redis.sentinel` for some of the sentinels.
    pub fn nodes_yaml_of(sentinels: &[Sentinel]) -> String {
        let nodes: Vec<String> = sentinels
            .iter()
            .map(|s| format!("'{}'", s.addr()))
            .collect();
        nodes.join(", ")
    }

    /// The master's port as a sentinel that answers names it.
    pub fn named_master_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let reply = s.cli(&["SENTINEL", "get-master-addr-by-name", &self.name]);
            reply.lines().nth(1)?.trim().parse().ok()
        })
    }

    /// Every sentinel that answers names the master at `port`.
    pub fn all_name(&self, port: u16) -> bool {
        self.sentinels.iter().all(|s| {
            let reply = s.cli(&["SENTINEL", "get-master-addr-by-name", &self.name]);
            reply.is_empty() || reply.lines().nth(1).map(str::trim) == Some(&port.to_string())
        })
    }

    /// `SENTINEL FAILOVER` through the first sentinel that takes it.
    pub fn failover(&self) {
        let mut said = Vec::new();
        for s in &self.sentinels {
            match s.cli(&["SENTINEL", "FAILOVER", &self.name]) {
                ok if ok == "OK" => return,
                other => said.push(other),
            }
        }
        panic!("no sentinel took the failover: {said:?}");
    }
}

/// The replication offset a server has reached (`INFO replication`):
/// `master_repl_offset` on a master, `slave_repl_offset` on a replica.
pub fn repl_offset(server: &RedisServer, field: &str) -> u64 {
    server
        .cli(&["INFO", "replication"])
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:"))?.trim().parse().ok())
        .unwrap_or(0)
}

/// A reply of alternating names and values, as a map.
fn fields(reply: &str) -> std::collections::HashMap<String, String> {
    let lines: Vec<&str> = reply.lines().map(str::trim).collect();
    lines
        .chunks(2)
        .filter_map(|p| Some((p.first()?.to_string(), p.get(1)?.to_string())))
        .collect()
}

//! The serde mirror of the YAML file: what operators write, field for field.
//!
//! Nothing here is validated beyond its shape; [`super::model`] turns it into
//! the checked model. Every struct denies unknown keys so that a typo is an
//! error, never a silently ignored setting.

use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Vec<ListenFile>,
    pub upstreams: Vec<UpstreamFile>,
    #[serde(default)]
    pub health_check: HealthCheckFile,
    #[serde(default)]
    pub passive_health: PassiveHealthFile,
    pub affinity: Option<AffinityFile>,
    #[serde(default)]
    pub timeouts: TimeoutsFile,
    #[serde(default)]
    pub failover: FailoverFile,
    pub redis: Option<RedisFile>,
    #[serde(default)]
    pub admin: AdminFile,
    #[serde(default)]
    pub server: ServerFile,
    #[serde(default)]
    pub reload: ReloadFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadFile {
    #[serde(default)]
    pub watch: bool,
    #[serde(default, with = "humantime_serde")]
    pub debounce: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    pub addr: String,
    pub tls: Option<ListenTlsFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenTlsFile {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub id: String,
    pub addr: String,
    pub weight: Option<u32>,
    pub tls: Option<UpstreamTlsFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsFile {
    /// Server name to send and verify; defaults to the host part of `addr`.
    pub sni: Option<String>,
    #[serde(default = "yes")]
    pub verify: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    pub path: Option<String>,
    pub host: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    pub healthy_after: Option<usize>,
    pub unhealthy_after: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealthFile {
    pub max_failures: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub failure_window: Option<Duration>,
    pub failure_codes: Option<Vec<u16>>,
    #[serde(default, with = "humantime_serde")]
    pub recovery_time: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub max_recovery_time: Option<Duration>,
    pub max_ejected_percent: Option<u8>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AffinityFile {
    #[serde(default)]
    pub keys: Vec<KeySourceFile>,
    #[serde(default)]
    pub claude_code: bool,
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    pub max_sessions: Option<u64>,
    pub max_body_bytes: Option<usize>,
    pub balance: Option<BalanceFile>,
    pub load_factor: Option<f64>,
    pub hash_secret: Option<String>,
}

/// One key source. Exactly one of `header`, `cookie`, `query` and `json` is set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySourceFile {
    pub header: Option<String>,
    pub cookie: Option<String>,
    pub query: Option<String>,
    pub json: Option<String>,
    pub regex: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BalanceFile {
    LeastLoaded,
    Consistent,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    #[serde(default, with = "humantime_serde")]
    pub connect: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub read: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub write: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub pool_idle: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverFile {
    pub max_retries: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisFile {
    pub url: Option<String>,
    pub cluster: Option<Vec<String>>,
    pub prefix: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub local_ttl: Option<Duration>,
    pub local_cache_size: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    pub sync_interval: Option<Duration>,
    pub batch_size: Option<usize>,
    pub buckets: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub listen: Option<String>,
    pub token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub threads: Option<usize>,
    pub work_stealing: Option<bool>,
    pub pool_size: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub grace_period: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub shutdown_timeout: Option<Duration>,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
    pub log_level: Option<String>,
}

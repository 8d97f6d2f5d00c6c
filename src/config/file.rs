//! The serde mirror of the YAML file: what operators write, field for field.
//!
//! Nothing here is validated beyond its shape; [`super::validate`] turns it
//! into the checked model. [`read`] takes the document apart section by
//! section, and list by item, so that one mistake never hides another: every
//! unknown key (collected with `serde_ignored`) and every section or item of
//! the wrong shape (named with `serde_path_to_error`) is reported, and what
//! could be read is still validated. Messages about the `redis`, `admin` and
//! `affinity` sections never quote the value, which may be a secret.

use super::FieldError;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::{Mapping, Value};
use std::time::Duration;

/// The whole file. List items keep their index in the file, so that a
/// later error names the item the operator wrote even when an earlier one
/// could not be read.
#[derive(Debug, Default)]
pub struct FileConfig {
    pub listen: Vec<(usize, ListenFile)>,
    pub upstreams: Vec<(usize, UpstreamFile)>,
    pub health_check: HealthCheckFile,
    pub passive_health: PassiveHealthFile,
    pub affinity: Option<AffinityFile>,
    pub timeouts: TimeoutsFile,
    pub failover: FailoverFile,
    pub streams: StreamsFile,
    pub redis: Option<RedisFile>,
    pub admin: AdminFile,
    pub server: ServerFile,
    pub reload: ReloadFile,
    pub limits: LimitsFile,
    pub access_log: AccessLogFile,
    pub tenants: TenantsFile,
    pub capacity: CapacityFile,
}

/// The path of an error about the document as a whole.
pub const WHOLE_FILE: &str = "(file)";

/// Read the document into its sections; every problem found goes to `errs`.
pub fn read(text: &str, errs: &mut Vec<FieldError>) -> FileConfig {
    let mut map = match serde_yaml::from_str::<Value>(text) {
        Ok(Value::Mapping(map)) => map,
        Ok(Value::Null) => Mapping::new(),
        Ok(_) => {
            errs.push(FieldError::new(WHOLE_FILE, "must be a mapping of settings"));
            return FileConfig::default();
        }
        Err(e) => {
            // A syntax error names its line and column, not the content.
            errs.push(FieldError::new(WHOLE_FILE, format!("not valid YAML: {e}")));
            return FileConfig::default();
        }
    };
    let mut take = |name: &str| map.remove(name);
    let config = FileConfig {
        listen: list(take("listen"), "listen", errs),
        upstreams: list(take("upstreams"), "upstreams", errs),
        health_check: section(take("health_check"), "health_check", errs).unwrap_or_default(),
        passive_health: section(take("passive_health"), "passive_health", errs).unwrap_or_default(),
        affinity: section(take("affinity"), "affinity", errs),
        timeouts: section(take("timeouts"), "timeouts", errs).unwrap_or_default(),
        failover: section(take("failover"), "failover", errs).unwrap_or_default(),
        streams: section(take("streams"), "streams", errs).unwrap_or_default(),
        redis: section(take("redis"), "redis", errs),
        admin: section(take("admin"), "admin", errs).unwrap_or_default(),
        server: section(take("server"), "server", errs).unwrap_or_default(),
        reload: section(take("reload"), "reload", errs).unwrap_or_default(),
        limits: section(take("limits"), "limits", errs).unwrap_or_default(),
        access_log: section(take("access_log"), "access_log", errs).unwrap_or_default(),
        tenants: section(take("tenants"), "tenants", errs).unwrap_or_default(),
        capacity: section(take("capacity"), "capacity", errs).unwrap_or_default(),
    };
    for key in map.keys() {
        match key.as_str() {
            Some(k) => errs.push(FieldError::new(k, "unknown field")),
            None => errs.push(FieldError::new(WHOLE_FILE, "setting names must be strings")),
        }
    }
    config
}

/// Only the `admin` section (see [`super::load_admin`]).
pub fn read_admin(text: &str, errs: &mut Vec<FieldError>) -> AdminFile {
    match serde_yaml::from_str::<Value>(text) {
        Ok(Value::Mapping(mut map)) => {
            section(map.remove("admin"), "admin", errs).unwrap_or_default()
        }
        Ok(Value::Null) => AdminFile::default(),
        Ok(_) => {
            errs.push(FieldError::new(WHOLE_FILE, "must be a mapping of settings"));
            AdminFile::default()
        }
        Err(e) => {
            errs.push(FieldError::new(WHOLE_FILE, format!("not valid YAML: {e}")));
            AdminFile::default()
        }
    }
}

/// Sections whose values may be secrets (a Redis URL, a token file, the
/// hash secret): their messages never quote a value.
fn may_hold_secrets(path: &str) -> bool {
    ["redis", "admin", "affinity"]
        .iter()
        .any(|s| path == *s || path.starts_with(&format!("{s}.")))
}

/// One section, `None` when it is absent or could not be read.
fn section<T: DeserializeOwned>(
    value: Option<Value>,
    path: &str,
    errs: &mut Vec<FieldError>,
) -> Option<T> {
    match value? {
        Value::Null => None,
        value => one(value, path, errs),
    }
}

/// A list whose items are read one by one, each with its index.
fn list<T: DeserializeOwned>(
    value: Option<Value>,
    path: &str,
    errs: &mut Vec<FieldError>,
) -> Vec<(usize, T)> {
    match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(items)) => items
            .into_iter()
            .enumerate()
            .filter_map(|(i, item)| Some((i, one(item, &format!("{path}[{i}]"), errs)?)))
            .collect(),
        Some(_) => {
            errs.push(FieldError::new(path, "must be a list"));
            Vec::new()
        }
    }
}

fn one<T: DeserializeOwned>(value: Value, path: &str, errs: &mut Vec<FieldError>) -> Option<T> {
    let mut unknown = Vec::new();
    let mut on_unknown = |p: serde_ignored::Path<'_>| unknown.push(ignored_path(&p));
    let de = serde_ignored::Deserializer::new(value, &mut on_unknown);
    let result: Result<T, _> = serde_path_to_error::deserialize(de);
    for key in unknown {
        errs.push(FieldError::new(join(path, &key), "unknown field"));
    }
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            let at = join(path, &e.path().to_string());
            let message = if may_hold_secrets(&at) {
                redact_values(&e.inner().to_string())
            } else {
                e.inner().to_string()
            };
            errs.push(FieldError::new(at, message));
            None
        }
    }
}

/// `parent.child`, or `parent` alone for the section's root (`.`).
fn join(parent: &str, child: &str) -> String {
    match child {
        "" | "." => parent.to_string(),
        c if parent.is_empty() => c.to_string(),
        c if c.starts_with('[') => format!("{parent}{c}"),
        c => format!("{parent}.{c}"),
    }
}

/// serde_ignored's path as `keys[0].name`.
fn ignored_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        Path::Map { parent, key } => join(&ignored_path(parent), key),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}

/// Replace every value a serde message quotes with `…`: serde puts a
/// string between double quotes and any other value (an integer, a float,
/// a bool, a character) between backticks, as in
/// ``invalid type: integer `42`, expected a string``. A sequence or a map is
/// named by its kind alone. What is left is the kind of value and what was
/// expected, which come from the types, not from the file.
fn redact_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut open: Option<char> = None;
    for c in message.chars() {
        match open {
            Some(q) if c == q => {
                out.push('…');
                out.push(c);
                open = None;
            }
            Some(_) => {}
            None if c == '"' || c == '`' => {
                out.push(c);
                open = Some(c);
            }
            None => out.push(c),
        }
    }
    if open.is_some() {
        // An unclosed quote: nothing after it is shown.
        out.push('…');
    }
    out
}

#[cfg(test)]
mod redaction_tests {
    use super::redact_values;

    #[test]
    fn no_quoted_or_backticked_value_survives() {
        let cases = [
            (
                "invalid type: integer `4242424243`, expected a string",
                "invalid type: integer `…`, expected a string",
            ),
            (
                "invalid type: floating point `42.5`, expected a string",
                "invalid type: floating point `…`, expected a string",
            ),
            (
                "invalid type: boolean `true`, expected a string",
                "invalid type: boolean `…`, expected a string",
            ),
            (
                "invalid value: string \"hunter2\", expected a duration",
                "invalid value: string \"…\", expected a duration",
            ),
            (
                "invalid type: sequence, expected a string",
                "invalid type: sequence, expected a string",
            ),
            ("unterminated \"hunter2", "unterminated \"…"),
            ("mixed `a\"b` then \"c`d\"", "mixed `…` then \"…\""),
        ];
        for (message, want) in cases {
            assert_eq!(redact_values(message), want, "{message}");
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ReloadFile {
    #[serde(default)]
    pub watch: bool,
    #[serde(default, with = "humantime_serde")]
    pub debounce: Option<Duration>,
}

#[derive(Debug, Deserialize)]
pub struct ListenFile {
    pub addr: String,
    pub tls: Option<ListenTlsFile>,
}

#[derive(Debug, Deserialize)]
pub struct ListenTlsFile {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
pub struct UpstreamFile {
    pub id: String,
    pub addr: String,
    pub weight: Option<u32>,
    pub tls: Option<UpstreamTlsFile>,
    pub max_inflight: Option<u32>,
    /// `move` or `purge`: what becomes of its pins when it is removed or drained.
    pub on_remove: Option<String>,
    /// An egress proxy URL; may hold a password (never printed).
    pub proxy: Option<String>,
}

#[derive(Debug, Deserialize)]
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
pub struct AffinityFile {
    #[serde(default)]
    pub keys: Vec<KeySourceFile>,
    #[serde(default)]
    pub claude_code: bool,
    #[serde(default)]
    pub presets: Vec<String>,
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    pub max_sessions: Option<u64>,
    pub max_body_bytes: Option<usize>,
    pub balance: Option<BalanceFile>,
    pub load_factor: Option<f64>,
    pub hash_secret: Option<String>,
    pub outcome_header: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub pin_wait: Option<Duration>,
    pub max_session_share: Option<f64>,
}

/// One key source. Exactly one of `header`, `cookie`, `query` and `json` is set.
#[derive(Debug, Default, Deserialize)]
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
pub struct TimeoutsFile {
    #[serde(default, with = "humantime_serde")]
    pub connect: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub read: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub write: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub pool_idle: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub client_idle: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub client_header: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub client_body: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
pub struct LimitsFile {
    pub max_connections: Option<usize>,
    pub max_header_bytes: Option<usize>,
    pub max_uri_bytes: Option<usize>,
    pub body_read_memory: Option<usize>,
    pub body_memory_per_request: Option<usize>,
    pub body_disk: Option<usize>,
    pub body_spill_dir: Option<String>,
    pub min_body_rate: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
pub struct FailoverFile {
    pub max_retries: Option<usize>,
    pub retry_on_status: Option<Vec<u16>>,
    pub retry_on_error_events: Option<Vec<String>>,
    pub retry_budget: Option<f64>,
    pub retry_budget_min: Option<u32>,
    pub move_pin: Option<String>,
    pub move_pin_after: Option<u32>,
    /// `keep` or `move`: what an ejection does to the relay's pins.
    pub on_eject: Option<String>,
}

/// Relay capacity: the default cap, the queue in front of a capped relay,
/// and how the cap is shared across edges.
#[derive(Debug, Default, Deserialize)]
pub struct CapacityFile {
    pub max_inflight: Option<u32>,
    pub queue_max: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub queue_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub fast_fail_wait: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub sync_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub lease: Option<Duration>,
    pub on_redis_down: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamsFile {
    pub hold_first_event: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    pub first_event_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
pub struct AccessLogFile {
    pub enabled: Option<bool>,
    pub format: Option<String>,
    pub path: Option<String>,
    pub sample: Option<f64>,
    pub query: Option<bool>,
    pub buffer: Option<usize>,
}

#[derive(Debug, Deserialize)]
pub struct RedisFile {
    pub url: Option<String>,
    pub cluster: Option<Vec<String>>,
    pub sentinel: Option<SentinelFile>,
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
    #[serde(default, with = "humantime_serde")]
    pub connect_wait: Option<Duration>,
}

/// `redis.sentinel`: the master's name, the sentinels, their own password.
#[derive(Default, Deserialize)]
pub struct SentinelFile {
    pub master: Option<String>,
    pub nodes: Option<Vec<String>>,
    pub password: Option<String>,
}

impl std::fmt::Debug for SentinelFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelFile")
            .field("master", &self.master)
            .field("nodes", &self.nodes)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct TenantsFile {
    /// Header names; `authorization` is the bearer token.
    pub from: Option<Vec<String>>,
    pub max_new_sessions_per_hour: Option<u64>,
    pub max_inflight_per_session: Option<u32>,
    pub top: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
pub struct AdminFile {
    pub listen: Option<String>,
    pub token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ServerFile {
    pub threads: Option<usize>,
    pub thread_model: Option<String>,
    pub work_stealing: Option<bool>,
    pub pool_size: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub grace_period: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub shutdown_timeout: Option<Duration>,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
    pub log_level: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub drain_quiet: Option<Duration>,
}

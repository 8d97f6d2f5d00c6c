//! The validated configuration model: what the rest of relay-edge runs on.
//!
//! It has no serde: every value here has been checked and defaulted by
//! [`super::validate`]. The defaults live in one place, [`Defaults`]. The
//! shared table's settings are in `redis_spec.rs` (re-exported here).

mod pins;

pub use pins::{OnEject, OnRemove};

pub use super::redis_spec::{RedisSpec, RedisTarget, SentinelSpec};
use regex::Regex;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    pub listeners: Vec<Listener>,
    pub upstreams: Vec<UpstreamSpec>,
    pub health: HealthSpec,
    pub passive: PassiveSpec,
    pub affinity: AffinitySpec,
    pub timeouts: Timeouts,
    pub max_retries: usize,
    pub failover: FailoverSpec,
    pub streams: StreamsSpec,
    pub redis: Option<RedisSpec>,
    pub admin: AdminSpec,
    pub server: ServerSpec,
    pub reload: ReloadSpec,
    pub limits: LimitsSpec,
    pub access_log: AccessLogSpec,
    pub tenants: TenantsSpec,
    pub capacity: CapacitySpec,
    /// `upstreams[].on_remove` by id: not in the specs, as it shapes no
    /// connection (a change must not rebuild a relay's peer in a reload).
    pub on_remove: std::collections::HashMap<String, OnRemove>,
}

impl Config {
    /// What becomes of upstream `id`'s pins when it is removed or drained.
    pub fn on_remove(&self, id: &str) -> OnRemove {
        self.on_remove.get(id).copied().unwrap_or(OnRemove::Move)
    }
}

/// Tenants: where a request's tenant comes from, and its limits.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantsSpec {
    /// Tried in order; the first present names the tenant. Empty: tenants
    /// are off (sessions are not namespaced, no tenant limit applies).
    pub from: Vec<TenantSource>,
    /// New sessions one tenant may create per clock hour (held across
    /// edges through Redis when it is configured, per edge otherwise).
    pub max_new_sessions_per_hour: Option<u64>,
    /// Requests of one session in flight at once, per edge.
    pub max_inflight_per_session: Option<u32>,
    /// How many tenants `/api/stats` and the dashboard show in each ranking.
    pub top: usize,
}

/// Where a tenant's credential is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantSource {
    /// A request header's value (lower-case name).
    Header(http::HeaderName),
    /// The `Authorization` header's bearer token (its whole value when it
    /// is not `Bearer …`).
    Authorization,
}

/// When an answered attempt is abandoned for another upstream, and what
/// that does to the session's pin.
#[derive(Debug, Clone, PartialEq)]
pub struct FailoverSpec {
    /// Statuses of a relay's answer that are tried elsewhere (before any
    /// byte of it reached the client).
    pub retry_on_status: Vec<u16>,
    /// Types of an SSE stream's first `event: error` that are tried elsewhere.
    pub retry_on_error_events: Vec<String>,
    /// Retries of answered attempts, as a share of the requests of the last
    /// ten seconds (Envoy's retry budget): a fleet-wide overload must not
    /// become a retry storm.
    pub retry_budget: f64,
    /// Retries allowed in any ten seconds whatever the share says.
    pub retry_budget_min: u32,
    pub move_pin: MovePin,
    pub on_eject: OnEject,
}

impl FailoverSpec {
    /// Can an answer ever be tried on another upstream?
    pub fn may_retry_answers(&self, max_retries: usize) -> bool {
        max_retries > 0
            && (!self.retry_on_status.is_empty() || !self.retry_on_error_events.is_empty())
    }
}

/// What a retried answer (an overload, an error status) does to the pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MovePin {
    /// Retry elsewhere; the next request goes back to the pinned relay.
    Never,
    /// Move after this many such failures of the session in a row (on this
    /// edge); each failure before that is retried elsewhere.
    AfterFailures(u32),
    /// Move with the first one.
    AtOnce,
}

/// The access log: one line per request, written off the request path.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogSpec {
    pub enabled: bool,
    pub format: AccessLogFormat,
    /// Fixed at start (a reload reports a change as needing an upgrade).
    pub path: AccessLogPath,
    /// The share of requests logged, from 0 to 1.
    pub sample: f64,
    /// Log the query string with the path.
    pub query: bool,
    /// Lines queued for the writer; past that they are dropped and counted.
    /// Fixed at start.
    pub buffer: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// One JSON object per line.
    Json,
    /// nginx's and Apache's combined format, then relay-edge's fields as
    /// `key=value`.
    Combined,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogPath {
    Stdout,
    /// Appended to; reopened on SIGUSR1 (for logrotate).
    File(PathBuf),
}

/// Relay capacity: the queue in front of a capped relay, and how its cap
/// is shared across the edges of one Redis (leased grants).
#[derive(Debug, Clone, PartialEq)]
pub struct CapacitySpec {
    /// Requests that may wait for one relay; past it, 529.
    pub queue_max: usize,
    /// The longest wait in the queue; past it, 529.
    pub queue_timeout: Duration,
    /// While the relay's recent waits (their 90th percentile) are longer,
    /// a request that would wait gets 529 at once.
    pub fast_fail_wait: Duration,
    /// How often a busy edge renews its grant of each capped relay.
    pub sync_interval: Duration,
    /// How long a grant lasts unrenewed (a killed edge's share is free
    /// after it).
    pub lease: Duration,
    pub on_redis_down: OnRedisDown,
}

/// What an edge admits to a capped relay once its grant has expired and
/// Redis cannot renew it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRedisDown {
    /// The cap divided by the edges last seen.
    Share,
    /// Nothing: 529.
    Closed,
    /// No cap.
    Open,
}

impl OnRedisDown {
    pub fn label(self) -> &'static str {
        match self {
            OnRedisDown::Share => "share",
            OnRedisDown::Closed => "closed",
            OnRedisDown::Open => "open",
        }
    }
}

/// Streaming (SSE) answers: held until their first event, and their
/// deadlines. The time to the response head is `timeouts.read`.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamsSpec {
    /// Hold a streaming request's response head until its first event, so
    /// that an overloaded or silent relay can still be left.
    pub hold_first_event: bool,
    /// From the response head to the first complete event.
    pub first_event_timeout: Duration,
    /// The longest silence between two reads of a stream after its first
    /// event. There is no total deadline: generations run for minutes.
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReloadSpec {
    /// Reload when the config file changes.
    pub watch: bool,
    /// How long the file must stay unchanged before it is read.
    pub debounce: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSpec {
    pub id: String,
    /// Where the edge connects: the relay, or its proxy when `proxy` is set
    /// (resolved at load and at each reload, never per request).
    pub addr: SocketAddr,
    /// The egress proxy the relay is reached through (`upstreams[].proxy`).
    pub proxy: Option<super::UpstreamProxy>,
    pub weight: u32,
    pub tls: Option<UpstreamTls>,
    /// Requests and streams in flight at this relay, across every edge
    /// that shares the Redis (`upstreams[].max_inflight`, else
    /// `capacity.max_inflight`); `None`: no cap.
    pub max_inflight: Option<u32>,
}

impl UpstreamSpec {
    /// The relay's address as operators read it: its own, or the one its
    /// proxy is asked for.
    pub fn relay_addr(&self) -> String {
        match &self.proxy {
            Some(p) => p.target.to_string(),
            None => self.addr.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    pub sni: String,
    pub verify: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthSpec {
    /// `Some(path)`: HTTP GET expecting 2xx. `None`: TCP connect.
    pub path: Option<String>,
    pub host: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_after: usize,
    pub unhealthy_after: usize,
}

#[derive(Debug, Clone)]
pub struct PassiveSpec {
    pub max_failures: u32,
    pub failure_window: Duration,
    pub failure_codes: Vec<u16>,
    pub recovery_time: Duration,
    pub max_recovery_time: Duration,
    pub max_ejected_percent: u8,
}

#[derive(Debug, Clone)]
pub struct AffinitySpec {
    pub keys: Vec<KeySpec>,
    pub ttl: Duration,
    pub max_sessions: u64,
    pub max_body_bytes: usize,
    pub balance: Balance,
    pub load_factor: f64,
    pub hash_secret: String,
    /// The response header that says what affinity did (`hit`, `new`,
    /// `moved`); `None`: not sent.
    pub outcome_header: Option<http::HeaderName>,
    /// How long a request waits for its pinned relay to have room before
    /// it is moved to a relay that has (the pin follows, reason `capacity`).
    pub pin_wait: Duration,
    /// A relay with more sessions than this times the mean takes no new
    /// ones (while another can).
    pub max_session_share: f64,
}

#[derive(Debug, Clone)]
pub struct KeySpec {
    pub source: KeySourceSpec,
    pub extract: Extract,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySourceSpec {
    Header(String),
    Cookie(String),
    Query(String),
    /// JSON pointer tokens, already unescaped (`~1` -> `/`, `~0` -> `~`).
    Json(Vec<String>),
}

/// How the key is taken from the raw value of its source.
#[derive(Debug, Clone)]
pub enum Extract {
    Whole,
    /// The first capture group (or the whole match if it has none).
    Regex(Regex),
    /// Claude Code's `metadata.user_id`: a JSON string holding `session_id`,
    /// or the older `user_<hex>_account_<uuid>_session_<uuid>`.
    ClaudeUserId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    LeastLoaded,
    Consistent,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    pub pool_idle: Duration,
    /// How long an idle keep-alive client connection is kept (whole seconds).
    pub client_idle: Duration,
    /// The whole request head must arrive within this (nginx's
    /// `client_header_timeout`, HAProxy's `timeout http-request`): from the
    /// connection's start for its first request, from the first byte for
    /// the next ones.
    pub client_header: Duration,
    /// The longest gap between two reads of a request body
    /// (nginx's `client_body_timeout`).
    pub client_body: Duration,
}

impl Timeouts {
    /// The same settings for upstream connections (`client_idle` aside).
    pub fn same_for_upstreams(&self, other: &Timeouts) -> bool {
        let Timeouts {
            connect,
            read,
            write,
            pool_idle,
            client_idle: _,
            client_header: _,
            client_body: _,
        } = self;
        (*connect, *read, *write, *pool_idle)
            == (other.connect, other.read, other.write, other.pool_idle)
    }
}

/// What one client, and all of them together, may hold of the edge.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsSpec {
    /// Open client connections per edge; past it new ones are closed at once.
    pub max_connections: usize,
    /// The request line and header fields together (answered 431).
    pub max_header_bytes: usize,
    /// The request target (answered 414).
    pub max_uri_bytes: usize,
    /// Bytes of request bodies held at once for their JSON keys, edge-wide.
    pub body_read_memory: usize,
    /// Bytes of one such body kept in memory; the rest goes to disk.
    pub body_memory_per_request: usize,
    /// Bytes of such bodies on disk at once, edge-wide (0: none spill).
    pub body_disk: usize,
    /// Where spilled bodies go (in unlinked files).
    pub body_spill_dir: std::path::PathBuf,
    /// A request body must keep up this average, in bytes per second, once
    /// `timeouts.client_body` has passed; 0 turns it off.
    pub min_body_rate: usize,
}

#[derive(Debug, Clone)]
pub struct AdminSpec {
    pub listen: SocketAddr,
    pub token: Option<String>,
    /// Set when the token file can be read by every user (ssh refuses such
    /// a key; relay-edge warns).
    pub token_file_warning: Option<String>,
}

impl AdminSpec {
    /// The one rule that keeps admin closed: a listener on `listen` without
    /// a token is an error unless it serves loopback only. It is checked
    /// against the listener that really serves: the file's at start, the
    /// running one on a reload (a listener moves only with an upgrade).
    /// Port 0 changes nothing: it binds the same address.
    pub fn exposure_error(listen: SocketAddr, token: Option<&str>) -> Option<String> {
        if token.is_some() || listen.ip().is_loopback() {
            return None;
        }
        Some(format!(
            "{listen} is not a loopback address: set admin.token_file first"
        ))
    }
}

/// How the proxy's threads share the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadModel {
    /// Each thread runs its own event loop, accepts its own client
    /// connections, and keeps its own upstream pool, as nginx's workers do
    /// (`downstream::workers`).
    Workers,
    /// Pingora's own runtime: connections and pooled-connection watchers
    /// spread over its threads (`work_stealing` applies).
    Pingora,
}

#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub threads: usize,
    pub thread_model: ThreadModel,
    pub work_stealing: bool,
    pub pool_size: usize,
    pub grace_period: Duration,
    pub shutdown_timeout: Duration,
    pub pid_file: String,
    pub upgrade_sock: String,
    pub log_level: String,
    /// A drain ends once nothing was in flight, and nothing started, this long.
    pub drain_quiet: Duration,
}

/// The bounds validation enforces, where other code depends on them.
pub struct Limits;

impl Limits {
    /// Other upstreams one request may try after the first.
    pub const MAX_RETRIES: usize = 15;
    /// Virtual nodes on the ring grow with weight.
    pub const MAX_WEIGHT: u32 = 1000;
    pub const MAX_SESSIONS: u64 = 1_000_000_000;
    pub const MAX_BODY_BYTES: usize = 1 << 30;
    pub const MAX_BODY_DISK: usize = 1 << 40;
    pub const MAX_CONNECTIONS: usize = 10_000_000;
    /// Pingora's own header limit is about 1 MiB; ours stays below it.
    pub const MAX_HEADER_BYTES: usize = 512 * 1024;
    pub const TENANTS_TOP: usize = 100;
    pub const MAX_NEW_SESSIONS_PER_HOUR: u64 = 100_000_000;
    pub const MAX_INFLIGHT_PER_SESSION: u32 = 1_000_000;
    pub const MAX_INFLIGHT: u32 = 1_000_000;
    pub const QUEUE_MAX: usize = 1_000_000;
}

/// Every default in one place; `conf/relay-edge.yaml` documents the same values.
pub struct Defaults;

impl Defaults {
    pub const ACCESS_LOG_BUFFER: usize = 8192;
    pub const WEIGHT: u32 = 1;
    pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
    pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
    pub const HEALTHY_AFTER: usize = 1;
    pub const UNHEALTHY_AFTER: usize = 2;
    pub const MAX_FAILURES: u32 = 5;
    pub const FAILURE_WINDOW: Duration = Duration::from_secs(10);
    pub const FAILURE_CODES: [u16; 3] = [502, 503, 504];
    pub const RECOVERY_TIME: Duration = Duration::from_secs(30);
    pub const MAX_RECOVERY_TIME: Duration = Duration::from_secs(300);
    pub const MAX_EJECTED_PERCENT: u8 = 50;
    pub const TTL: Duration = Duration::from_secs(3600);
    pub const MAX_SESSIONS: u64 = 1_000_000;
    pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
    pub const LOAD_FACTOR: f64 = 1.25;
    /// A prompt cache is worth a short wait.
    pub const PIN_WAIT: Duration = Duration::from_millis(500);
    pub const MAX_SESSION_SHARE: f64 = 2.0;
    pub const QUEUE_MAX: usize = 256;
    /// Below the SDKs' own request timeouts (10 minutes), and long enough
    /// for a few answers of a busy relay to end.
    pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);
    pub const FAST_FAIL_WAIT: Duration = Duration::from_secs(10);
    pub const CAPACITY_SYNC_INTERVAL: Duration = Duration::from_secs(1);
    pub const CAPACITY_LEASE: Duration = Duration::from_secs(3);
    pub const OUTCOME_HEADER: &'static str = "x-relay-edge-affinity";
    pub const HASH_SECRET: &'static str = "relay-edge default affinity secret";
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
    pub const READ_TIMEOUT: Duration = Duration::from_secs(600);
    pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const POOL_IDLE: Duration = Duration::from_secs(90);
    /// nginx's `keepalive_timeout`.
    pub const CLIENT_IDLE: Duration = Duration::from_secs(75);
    /// HAProxy's usual `timeout http-request`; nginx's default is 60 s.
    pub const CLIENT_HEADER: Duration = Duration::from_secs(10);
    /// nginx's `client_body_timeout`.
    pub const CLIENT_BODY: Duration = Duration::from_secs(60);
    pub const MAX_CONNECTIONS: usize = 100_000;
    /// nginx's `large_client_header_buffers` allow 4 x 8 KiB.
    pub const MAX_HEADER_BYTES: usize = 32 * 1024;
    /// nginx's request-line limit is one 8 KiB buffer.
    pub const MAX_URI_BYTES: usize = 8 * 1024;
    pub const BODY_READ_MEMORY: usize = 256 * 1024 * 1024;
    /// nginx's `client_body_buffer_size` is 8 or 16 KiB; a Claude Code
    /// body (about 87 KB, growing with the conversation) mostly fits.
    pub const BODY_MEMORY_PER_REQUEST: usize = 1024 * 1024;
    pub const BODY_DISK: usize = 4 * 1024 * 1024 * 1024;
    /// Disk, not RAM (unlike a tmpfs `/tmp`), present everywhere, and
    /// private and writable under the unit's `PrivateTmp=true`.
    pub const BODY_SPILL_DIR: &'static str = "/var/tmp";
    pub const MIN_BODY_RATE: usize = 1024;
    pub const DRAIN_QUIET: Duration = Duration::from_secs(1);
    pub const REDIS_CONNECT_WAIT: Duration = Duration::from_secs(5);
    pub const MAX_RETRIES: usize = 2;
    /// The statuses relays answer when overloaded or broken; 529 is
    /// Anthropic's `overloaded_error`.
    pub const RETRY_ON_STATUS: [u16; 6] = [429, 500, 502, 503, 504, 529];
    pub const RETRY_ON_ERROR_EVENTS: [&'static str; 3] =
        ["overloaded_error", "api_error", "server_error"];
    /// Envoy's default retry budget is 20% of active requests.
    pub const RETRY_BUDGET: f64 = 0.2;
    pub const RETRY_BUDGET_MIN: u32 = 10;
    /// A relay overloaded for a moment keeps its sessions (and their prompt
    /// caches); one that fails a session three times in a row loses it.
    pub const MOVE_PIN_AFTER: u32 = 3;
    pub const FIRST_EVENT_TIMEOUT: Duration = Duration::from_secs(60);
    /// Above the relays' own 600 s.
    pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(900);
    pub const ADMIN_LISTEN: &'static str = "127.0.0.1:9900";
    pub const POOL_SIZE: usize = 1024;
    pub const GRACE_PERIOD: Duration = Duration::from_secs(600);
    pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
    pub const PID_FILE: &'static str = "/tmp/relay-edge.pid";
    pub const UPGRADE_SOCK: &'static str = "/tmp/relay-edge-upgrade.sock";
    pub const LOG_LEVEL: &'static str = "info";
    pub const RELOAD_DEBOUNCE: Duration = Duration::from_millis(500);
    pub const REDIS_PREFIX: &'static str = "relay-edge:";
    pub const REDIS_TIMEOUT: Duration = Duration::from_millis(50);
    pub const REDIS_LOCAL_TTL: Duration = Duration::from_secs(20 * 60);
    pub const REDIS_LOCAL_CACHE_SIZE: u64 = 200_000;
    pub const REDIS_SYNC_INTERVAL: Duration = Duration::from_secs(10);
    pub const REDIS_BATCH_SIZE: usize = 500;
    pub const REDIS_BUCKETS: u32 = 16384;
    /// The `claude_code: true` preset's header.
    pub const CLAUDE_CODE_HEADER: &'static str = "x-claude-code-session-id";
    pub const CLAUDE_CODE_POINTER: &'static str = "/metadata/user_id";
    /// Where a tenant comes from: the Anthropic API key header, then the
    /// bearer token (OpenAI-style clients).
    pub const TENANTS_FROM: [&'static str; 2] = ["x-api-key", "authorization"];
    pub const TENANTS_TOP: usize = 10;
}

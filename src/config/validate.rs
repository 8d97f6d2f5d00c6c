//! Turns the serde mirror into the checked [`Config`], collecting every
//! error. Every duration and number is bounded here, so that nothing that
//! combines them later (a timeout times a factor, a backoff doubling, a ring
//! of virtual nodes per unit of weight) can overflow.

use super::file::*;
use super::model::*;
use super::FieldError;
use regex::Regex;
use std::collections::HashSet;
use std::fmt::Display;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// Collects errors, each with its path.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(path, message));
    }
}

const MS: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// `value` (or `default`) within `min..=max`, or an error at `path`.
fn duration(
    value: Option<Duration>,
    default: Duration,
    (min, max): (Duration, Duration),
    path: &str,
    errs: &mut Errors,
) -> Duration {
    let d = value.unwrap_or(default);
    if d < min || d > max {
        errs.push(
            path,
            format!(
                "must be from {} to {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        );
        return default;
    }
    d
}

/// `value` (or `default`) within `min..=max`, or an error at `path`.
fn number<T: PartialOrd + Display + Copy>(
    value: Option<T>,
    default: T,
    (min, max): (T, T),
    path: &str,
    errs: &mut Errors,
) -> T {
    let n = value.unwrap_or(default);
    if n < min || n > max {
        errs.push(path, format!("must be from {min} to {max}"));
        return default;
    }
    n
}

/// Validate a parsed file into the model, or return every error found.
pub fn validate(raw: FileConfig) -> Result<Config, Vec<FieldError>> {
    let FileConfig {
        listen,
        upstreams,
        health_check,
        passive_health,
        affinity,
        timeouts,
        failover,
        streams,
        redis,
        admin,
        server,
        reload,
        limits,
        access_log,
    } = raw;
    let mut errs = Errors::default();

    let listeners = listeners(listen, &mut errs);
    let upstreams = upstream_specs(upstreams, &mut errs);
    let health = health(health_check, &mut errs);
    let passive = passive(passive_health, &mut errs);
    let affinity = affinity_spec(affinity.unwrap_or_default(), &mut errs);
    let timeouts = timeouts_spec(timeouts, &mut errs);
    let max_retries = number(
        failover.max_retries,
        Defaults::MAX_RETRIES,
        (0, Limits::MAX_RETRIES),
        "failover.max_retries",
        &mut errs,
    );
    let failover = failover_spec(failover, &mut errs);
    let streams = streams_spec(streams, &mut errs);
    let redis = redis.map(|r| redis_spec(r, &mut errs));
    let admin = admin_spec(admin, &mut errs);
    let server = server_spec(server, &mut errs);
    let limits = limits_spec(limits, &mut errs);
    let access_log = access_log_spec(access_log, &mut errs);
    let ReloadFile { watch, debounce } = reload;
    let reload = ReloadSpec {
        watch,
        debounce: duration(
            debounce,
            Defaults::RELOAD_DEBOUNCE,
            (Duration::ZERO, HOUR),
            "reload.debounce",
            &mut errs,
        ),
    };

    if errs.0.is_empty() {
        Ok(Config {
            listeners,
            upstreams,
            health,
            passive,
            affinity,
            timeouts,
            max_retries,
            failover,
            streams,
            redis,
            admin,
            server,
            reload,
            limits,
            access_log,
        })
    } else {
        Err(errs.0)
    }
}

fn socket_addr(text: &str, path: &str, errs: &mut Errors) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse() {
        return Some(addr);
    }
    match text.to_socket_addrs().ok().and_then(|mut a| a.next()) {
        Some(addr) => Some(addr),
        None => {
            errs.push(path, format!("invalid socket address {text:?}"));
            None
        }
    }
}

fn placeholder_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

fn listeners(listen: Vec<(usize, ListenFile)>, errs: &mut Errors) -> Vec<Listener> {
    if listen.is_empty() {
        errs.push("listen", "at least one listener is required");
    }
    let mut seen = HashSet::new();
    listen
        .into_iter()
        .map(|(i, ListenFile { addr, tls })| {
            let path = format!("listen[{i}].addr");
            let addr = socket_addr(&addr, &path, errs).unwrap_or_else(placeholder_addr);
            if addr.port() != 0 && !seen.insert(addr) {
                errs.push(&path, format!("duplicate listener {addr}"));
            }
            let tls = tls.map(|ListenTlsFile { cert, key }| {
                for (field, file) in [("cert", &cert), ("key", &key)] {
                    if !std::path::Path::new(file).is_file() {
                        errs.push(
                            format!("listen[{i}].tls.{field}"),
                            format!("no such file {file:?}"),
                        );
                    }
                }
                TlsFiles {
                    cert: PathBuf::from(cert),
                    key: PathBuf::from(key),
                }
            });
            Listener { addr, tls }
        })
        .collect()
}

fn upstream_specs(upstreams: Vec<(usize, UpstreamFile)>, errs: &mut Errors) -> Vec<UpstreamSpec> {
    if upstreams.is_empty() {
        errs.push("upstreams", "at least one upstream is required");
    }
    let mut ids = HashSet::new();
    upstreams
        .into_iter()
        .map(
            |(
                i,
                UpstreamFile {
                    id,
                    addr,
                    weight,
                    tls,
                },
            )| {
                if id.is_empty()
                    || id.len() > 128
                    || id.chars().any(|c| c.is_whitespace() || c == '/')
                {
                    errs.push(
                        format!("upstreams[{i}].id"),
                        "must be 1 to 128 characters, without spaces or '/'",
                    );
                } else if !ids.insert(id.clone()) {
                    errs.push(format!("upstreams[{i}].id"), format!("duplicate id {id:?}"));
                }
                let weight = number(
                    weight,
                    Defaults::WEIGHT,
                    (1, Limits::MAX_WEIGHT),
                    &format!("upstreams[{i}].weight"),
                    errs,
                );
                let host = addr
                    .rsplit_once(':')
                    .map_or(addr.as_str(), |(h, _)| h)
                    .to_string();
                let sock = socket_addr(&addr, &format!("upstreams[{i}].addr"), errs)
                    .unwrap_or_else(placeholder_addr);
                let tls = tls.map(|UpstreamTlsFile { sni, verify }| UpstreamTls {
                    sni: sni.unwrap_or(host),
                    verify,
                });
                UpstreamSpec {
                    id,
                    addr: sock,
                    weight,
                    tls,
                }
            },
        )
        .collect()
}

fn health(h: HealthCheckFile, errs: &mut Errors) -> HealthSpec {
    let HealthCheckFile {
        path,
        host,
        interval,
        timeout,
        healthy_after,
        unhealthy_after,
    } = h;
    if let Some(p) = &path {
        if !p.starts_with('/') {
            errs.push("health_check.path", "must start with '/'");
        }
    }
    let interval = duration(
        interval,
        Defaults::HEALTH_INTERVAL,
        (10 * MS, HOUR),
        "health_check.interval",
        errs,
    );
    let timeout = duration(
        timeout,
        Defaults::HEALTH_TIMEOUT.min(interval),
        (MS, MINUTE),
        "health_check.timeout",
        errs,
    );
    HealthSpec {
        path,
        host,
        interval,
        timeout,
        healthy_after: number(
            healthy_after,
            Defaults::HEALTHY_AFTER,
            (1, 1000),
            "health_check.healthy_after",
            errs,
        ),
        unhealthy_after: number(
            unhealthy_after,
            Defaults::UNHEALTHY_AFTER,
            (1, 1000),
            "health_check.unhealthy_after",
            errs,
        ),
    }
}

fn passive(p: PassiveHealthFile, errs: &mut Errors) -> PassiveSpec {
    let PassiveHealthFile {
        max_failures,
        failure_window,
        failure_codes,
        recovery_time,
        max_recovery_time,
        max_ejected_percent,
    } = p;
    let failure_codes = failure_codes.unwrap_or_else(|| Defaults::FAILURE_CODES.to_vec());
    for (i, code) in failure_codes.iter().enumerate() {
        if !(100..=599).contains(code) {
            errs.push(
                format!("passive_health.failure_codes[{i}]"),
                format!("{code} is not an HTTP status"),
            );
        }
    }
    let recovery_time = duration(
        recovery_time,
        Defaults::RECOVERY_TIME,
        (MS, DAY),
        "passive_health.recovery_time",
        errs,
    );
    let max_recovery_time = duration(
        max_recovery_time,
        Defaults::MAX_RECOVERY_TIME.max(recovery_time),
        (MS, 7 * DAY),
        "passive_health.max_recovery_time",
        errs,
    );
    if max_recovery_time < recovery_time {
        errs.push(
            "passive_health.max_recovery_time",
            "must not be below recovery_time",
        );
    }
    PassiveSpec {
        max_failures: number(
            max_failures,
            Defaults::MAX_FAILURES,
            (1, 1_000_000),
            "passive_health.max_failures",
            errs,
        ),
        failure_window: duration(
            failure_window,
            Defaults::FAILURE_WINDOW,
            (MS, DAY),
            "passive_health.failure_window",
            errs,
        ),
        failure_codes,
        recovery_time,
        max_recovery_time,
        max_ejected_percent: number(
            max_ejected_percent,
            Defaults::MAX_EJECTED_PERCENT,
            (0, 100),
            "passive_health.max_ejected_percent",
            errs,
        ),
    }
}

fn affinity_spec(a: AffinityFile, errs: &mut Errors) -> AffinitySpec {
    let AffinityFile {
        keys,
        claude_code,
        ttl,
        max_sessions,
        max_body_bytes,
        balance,
        load_factor,
        hash_secret,
        outcome_header,
    } = a;
    let mut specs = Vec::new();
    if claude_code {
        specs.push(KeySpec {
            source: KeySourceSpec::Header(Defaults::CLAUDE_CODE_HEADER.to_string()),
            extract: Extract::Whole,
        });
        specs.push(KeySpec {
            source: KeySourceSpec::Json(
                json_pointer(Defaults::CLAUDE_CODE_POINTER).unwrap_or_default(),
            ),
            extract: Extract::ClaudeUserId,
        });
    }
    for (i, k) in keys.into_iter().enumerate() {
        if let Some(spec) = key_spec(k, &format!("affinity.keys[{i}]"), errs) {
            specs.push(spec);
        }
    }
    let load_factor = load_factor.unwrap_or(Defaults::LOAD_FACTOR);
    if !((1.0..=100.0).contains(&load_factor)) {
        errs.push("affinity.load_factor", "must be a number from 1.0 to 100");
    }
    let hash_secret = hash_secret.unwrap_or_else(|| Defaults::HASH_SECRET.to_string());
    if hash_secret.is_empty() {
        errs.push("affinity.hash_secret", "must not be empty");
    }
    let outcome_header = match outcome_header.as_deref() {
        None => http::HeaderName::from_static(Defaults::OUTCOME_HEADER).into(),
        Some("") => None,
        Some(name) => match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                errs.push(
                    "affinity.outcome_header",
                    format!("{name:?} is not a header name"),
                );
                None
            }
        },
    };
    AffinitySpec {
        outcome_header,
        keys: specs,
        ttl: duration(
            ttl,
            Defaults::TTL,
            (SECOND, 365 * DAY),
            "affinity.ttl",
            errs,
        ),
        max_sessions: number(
            max_sessions,
            Defaults::MAX_SESSIONS,
            (1, Limits::MAX_SESSIONS),
            "affinity.max_sessions",
            errs,
        ),
        max_body_bytes: number(
            max_body_bytes,
            Defaults::MAX_BODY_BYTES,
            (0, Limits::MAX_BODY_BYTES),
            "affinity.max_body_bytes",
            errs,
        ),
        balance: match balance {
            None | Some(BalanceFile::LeastLoaded) => Balance::LeastLoaded,
            Some(BalanceFile::Consistent) => Balance::Consistent,
        },
        load_factor,
        hash_secret,
    }
}

/// Parse an RFC 6901 JSON pointer into its unescaped tokens.
pub fn json_pointer(pointer: &str) -> Option<Vec<String>> {
    let rest = pointer.strip_prefix('/')?;
    Some(
        rest.split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect(),
    )
}

fn key_spec(k: KeySourceFile, path: &str, errs: &mut Errors) -> Option<KeySpec> {
    let KeySourceFile {
        header,
        cookie,
        query,
        json,
        regex,
    } = k;
    let mut sources = Vec::new();
    if let Some(h) = header {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            errs.push(
                format!("{path}.header"),
                format!("invalid header name {h:?}"),
            );
        }
        sources.push(KeySourceSpec::Header(h.to_ascii_lowercase()));
    }
    if let Some(c) = cookie {
        sources.push(KeySourceSpec::Cookie(c));
    }
    if let Some(q) = query {
        sources.push(KeySourceSpec::Query(q));
    }
    if let Some(j) = json {
        match json_pointer(&j) {
            Some(tokens) => sources.push(KeySourceSpec::Json(tokens)),
            None => {
                errs.push(
                    format!("{path}.json"),
                    format!("invalid JSON pointer {j:?}: must start with '/'"),
                );
                return None;
            }
        }
    }
    if sources.len() != 1 {
        errs.push(path, "needs exactly one of header, cookie, query, json");
        return None;
    }
    let extract = match regex {
        None => Extract::Whole,
        Some(r) => match Regex::new(&r) {
            Ok(re) => Extract::Regex(re),
            Err(e) => {
                errs.push(format!("{path}.regex"), format!("invalid regex: {e}"));
                return None;
            }
        },
    };
    sources.pop().map(|source| KeySpec { source, extract })
}

fn redis_url(url: &str, path: &str, errs: &mut Errors) {
    // Never echo the URL: it may carry a password.
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        errs.push(path, "must start with redis:// or rediss://");
    } else if redis::Client::open(url).is_err() {
        errs.push(path, "is not a valid Redis URL");
    }
}

fn redis_spec(r: RedisFile, errs: &mut Errors) -> RedisSpec {
    let RedisFile {
        url,
        cluster,
        prefix,
        timeout,
        local_ttl,
        local_cache_size,
        sync_interval,
        batch_size,
        buckets,
        connect_wait,
    } = r;
    let target = match (url, cluster) {
        (Some(url), None) => {
            redis_url(&url, "redis.url", errs);
            RedisTarget::Single(url)
        }
        (None, Some(urls)) => {
            if urls.is_empty() {
                errs.push("redis.cluster", "needs at least one node URL");
            }
            for (i, url) in urls.iter().enumerate() {
                redis_url(url, &format!("redis.cluster[{i}]"), errs);
            }
            RedisTarget::Cluster(urls)
        }
        _ => {
            errs.push("redis", "needs exactly one of url and cluster");
            RedisTarget::Cluster(Vec::new())
        }
    };
    RedisSpec {
        target,
        prefix: prefix.unwrap_or_else(|| Defaults::REDIS_PREFIX.to_string()),
        timeout: duration(
            timeout,
            Defaults::REDIS_TIMEOUT,
            (MS, MINUTE),
            "redis.timeout",
            errs,
        ),
        local_ttl: duration(
            local_ttl,
            Defaults::REDIS_LOCAL_TTL,
            (MS, DAY),
            "redis.local_ttl",
            errs,
        ),
        local_cache_size: number(
            local_cache_size,
            Defaults::REDIS_LOCAL_CACHE_SIZE,
            (1, Limits::MAX_SESSIONS),
            "redis.local_cache_size",
            errs,
        ),
        sync_interval: duration(
            sync_interval,
            Defaults::REDIS_SYNC_INTERVAL,
            (10 * MS, HOUR),
            "redis.sync_interval",
            errs,
        ),
        batch_size: number(
            batch_size,
            Defaults::REDIS_BATCH_SIZE,
            (1, 100_000),
            "redis.batch_size",
            errs,
        ),
        buckets: number(
            buckets,
            Defaults::REDIS_BUCKETS,
            (1, 1 << 20),
            "redis.buckets",
            errs,
        ),
        connect_wait: duration(
            connect_wait,
            Defaults::REDIS_CONNECT_WAIT,
            (Duration::ZERO, 10 * MINUTE),
            "redis.connect_wait",
            errs,
        ),
    }
}

fn statuses(codes: &[u16], path: &str, errs: &mut Errors) {
    for (i, code) in codes.iter().enumerate() {
        if !(100..=599).contains(code) {
            errs.push(
                format!("{path}[{i}]"),
                format!("{code} is not an HTTP status"),
            );
        }
    }
}

fn failover_spec(f: FailoverFile, errs: &mut Errors) -> FailoverSpec {
    let FailoverFile {
        max_retries: _,
        retry_on_status,
        retry_on_error_events,
        retry_budget,
        retry_budget_min,
        move_pin,
        move_pin_after,
    } = f;
    let retry_on_status = retry_on_status.unwrap_or_else(|| Defaults::RETRY_ON_STATUS.to_vec());
    statuses(&retry_on_status, "failover.retry_on_status", errs);
    let move_pin_after = number(
        move_pin_after,
        Defaults::MOVE_PIN_AFTER,
        (1, 1000),
        "failover.move_pin_after",
        errs,
    );
    let move_pin = match move_pin.as_deref().unwrap_or("after_failures") {
        "never" => MovePin::Never,
        "after_failures" => MovePin::AfterFailures(move_pin_after),
        "at_once" => MovePin::AtOnce,
        other => {
            errs.push(
                "failover.move_pin",
                format!("{other:?}: must be never, after_failures or at_once"),
            );
            MovePin::AfterFailures(move_pin_after)
        }
    };
    FailoverSpec {
        retry_on_status,
        retry_on_error_events: retry_on_error_events.unwrap_or_else(|| {
            Defaults::RETRY_ON_ERROR_EVENTS
                .iter()
                .map(|s| s.to_string())
                .collect()
        }),
        retry_budget: number(
            retry_budget,
            Defaults::RETRY_BUDGET,
            (0.0, 1.0),
            "failover.retry_budget",
            errs,
        ),
        retry_budget_min: number(
            retry_budget_min,
            Defaults::RETRY_BUDGET_MIN,
            (0, 1_000_000),
            "failover.retry_budget_min",
            errs,
        ),
        move_pin,
    }
}

fn access_log_spec(a: AccessLogFile, errs: &mut Errors) -> AccessLogSpec {
    let AccessLogFile {
        enabled,
        format,
        path,
        sample,
        query,
        buffer,
    } = a;
    let format = match format.as_deref() {
        None | Some("json") => AccessLogFormat::Json,
        Some("combined") => AccessLogFormat::Combined,
        Some(other) => {
            errs.push(
                "access_log.format",
                format!("must be json or combined, not {other:?}"),
            );
            AccessLogFormat::Json
        }
    };
    let path = match path.as_deref() {
        None | Some("stdout") => AccessLogPath::Stdout,
        Some("") => {
            errs.push("access_log.path", "must be stdout or a file path");
            AccessLogPath::Stdout
        }
        Some(p) => AccessLogPath::File(PathBuf::from(p)),
    };
    let sample = sample.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample) {
        errs.push("access_log.sample", "must be from 0 to 1");
    }
    AccessLogSpec {
        enabled: enabled.unwrap_or(true),
        format,
        path,
        sample: sample.clamp(0.0, 1.0),
        query: query.unwrap_or(false),
        buffer: number(
            buffer,
            Defaults::ACCESS_LOG_BUFFER,
            (16, 1 << 20),
            "access_log.buffer",
            errs,
        ),
    }
}

fn streams_spec(s: StreamsFile, errs: &mut Errors) -> StreamsSpec {
    let StreamsFile {
        hold_first_event,
        first_event_timeout,
        idle_timeout,
    } = s;
    StreamsSpec {
        hold_first_event: hold_first_event.unwrap_or(true),
        first_event_timeout: duration(
            first_event_timeout,
            Defaults::FIRST_EVENT_TIMEOUT,
            (MS, HOUR),
            "streams.first_event_timeout",
            errs,
        ),
        idle_timeout: duration(
            idle_timeout,
            Defaults::STREAM_IDLE_TIMEOUT,
            (MS, DAY),
            "streams.idle_timeout",
            errs,
        ),
    }
}

fn timeouts_spec(t: TimeoutsFile, errs: &mut Errors) -> Timeouts {
    let TimeoutsFile {
        connect,
        read,
        write,
        pool_idle,
        client_idle,
        client_header,
        client_body,
    } = t;
    let client_idle = duration(
        client_idle,
        Defaults::CLIENT_IDLE,
        (SECOND, DAY),
        "timeouts.client_idle",
        errs,
    );
    if client_idle.subsec_nanos() != 0 {
        errs.push("timeouts.client_idle", "must be whole seconds");
    }
    Timeouts {
        connect: duration(
            connect,
            Defaults::CONNECT_TIMEOUT,
            (MS, 10 * MINUTE),
            "timeouts.connect",
            errs,
        ),
        read: duration(
            read,
            Defaults::READ_TIMEOUT,
            (MS, DAY),
            "timeouts.read",
            errs,
        ),
        write: duration(
            write,
            Defaults::WRITE_TIMEOUT,
            (MS, DAY),
            "timeouts.write",
            errs,
        ),
        pool_idle: duration(
            pool_idle,
            Defaults::POOL_IDLE,
            (MS, DAY),
            "timeouts.pool_idle",
            errs,
        ),
        client_idle,
        client_header: duration(
            client_header,
            Defaults::CLIENT_HEADER,
            (MS, HOUR),
            "timeouts.client_header",
            errs,
        ),
        client_body: duration(
            client_body,
            Defaults::CLIENT_BODY,
            (MS, HOUR),
            "timeouts.client_body",
            errs,
        ),
    }
}

fn limits_spec(l: LimitsFile, errs: &mut Errors) -> LimitsSpec {
    let LimitsFile {
        max_connections,
        max_header_bytes,
        max_uri_bytes,
        body_read_memory,
        min_body_rate,
    } = l;
    let max_header_bytes = number(
        max_header_bytes,
        Defaults::MAX_HEADER_BYTES,
        (1024, Limits::MAX_HEADER_BYTES),
        "limits.max_header_bytes",
        errs,
    );
    LimitsSpec {
        max_connections: number(
            max_connections,
            Defaults::MAX_CONNECTIONS,
            (1, Limits::MAX_CONNECTIONS),
            "limits.max_connections",
            errs,
        ),
        max_header_bytes,
        max_uri_bytes: number(
            max_uri_bytes,
            Defaults::MAX_URI_BYTES.min(max_header_bytes),
            (64, max_header_bytes),
            "limits.max_uri_bytes",
            errs,
        ),
        body_read_memory: number(
            body_read_memory,
            Defaults::BODY_READ_MEMORY,
            (0, Limits::MAX_BODY_BYTES * 64),
            "limits.body_read_memory",
            errs,
        ),
        min_body_rate: number(
            min_body_rate,
            Defaults::MIN_BODY_RATE,
            (0, Limits::MAX_BODY_BYTES),
            "limits.min_body_rate",
            errs,
        ),
    }
}

/// The `admin` section alone (for `relay-edge ctl`).
pub fn admin_only(a: AdminFile) -> Result<AdminSpec, Vec<FieldError>> {
    let mut errs = Errors::default();
    let spec = admin_spec(a, &mut errs);
    match errs.0.is_empty() {
        true => Ok(spec),
        false => Err(errs.0),
    }
}

fn admin_spec(a: AdminFile, errs: &mut Errors) -> AdminSpec {
    let AdminFile { listen, token_file } = a;
    let listen_text = listen.unwrap_or_else(|| Defaults::ADMIN_LISTEN.to_string());
    let parsed = socket_addr(&listen_text, "admin.listen", errs);
    let mut token_file_warning = None;
    let token = token_file.and_then(|file| match read_token(&file) {
        Ok(t) if t.len() > MAX_TOKEN_BYTES => {
            errs.push(
                "admin.token_file",
                format!("{file:?} is longer than {MAX_TOKEN_BYTES} bytes"),
            );
            None
        }
        Ok(t) if !t.trim().is_empty() => {
            token_file_warning = world_readable_warning(&file);
            Some(t.trim().to_string())
        }
        Ok(_) => {
            errs.push("admin.token_file", format!("{file:?} is empty"));
            None
        }
        Err(e) => {
            errs.push("admin.token_file", format!("cannot read {file:?}: {e}"));
            None
        }
    });
    if let Some(error) = parsed.and_then(|l| AdminSpec::exposure_error(l, token.as_deref())) {
        errs.push("admin.listen", error);
    }
    AdminSpec {
        listen: parsed.unwrap_or_else(placeholder_addr),
        token,
        token_file_warning,
    }
}

/// A token longer than this is a mistake (or `/dev/zero`): it is refused,
/// and never read further.
const MAX_TOKEN_BYTES: usize = 4096;

fn read_token(file: &str) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(file)?
        .take(MAX_TOKEN_BYTES as u64 + 1)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// A warning when every user may read the token file.
fn world_readable_warning(file: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(file).ok()?.permissions().mode();
    (mode & 0o004 != 0).then(|| {
        format!(
            "admin.token_file: {file:?} is readable by every user (mode {:o}): chmod 600 it",
            mode & 0o777
        )
    })
}

fn server_spec(s: ServerFile, errs: &mut Errors) -> ServerSpec {
    let ServerFile {
        threads,
        thread_model,
        work_stealing,
        pool_size,
        grace_period,
        shutdown_timeout,
        pid_file,
        upgrade_sock,
        log_level,
        drain_quiet,
    } = s;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let log_level = log_level.unwrap_or_else(|| Defaults::LOG_LEVEL.to_string());
    if log_level.parse::<log::LevelFilter>().is_err() {
        errs.push(
            "server.log_level",
            format!("{log_level:?} is not one of off, error, warn, info, debug, trace"),
        );
    }
    let thread_model = match thread_model.as_deref().unwrap_or("workers") {
        "workers" => ThreadModel::Workers,
        "pingora" => ThreadModel::Pingora,
        other => {
            errs.push(
                "server.thread_model",
                format!("{other:?}: must be workers or pingora"),
            );
            ThreadModel::Workers
        }
    };
    if thread_model == ThreadModel::Workers && work_stealing == Some(true) {
        errs.push(
            "server.work_stealing",
            "applies to server.thread_model: pingora only (workers never share connections)",
        );
    }
    ServerSpec {
        threads: number(threads, cores, (1, 1024), "server.threads", errs),
        thread_model,
        work_stealing: work_stealing.unwrap_or(false),
        pool_size: number(
            pool_size,
            Defaults::POOL_SIZE,
            (0, 1_000_000),
            "server.pool_size",
            errs,
        ),
        grace_period: duration(
            grace_period,
            Defaults::GRACE_PERIOD,
            (Duration::ZERO, 7 * DAY),
            "server.grace_period",
            errs,
        ),
        shutdown_timeout: duration(
            shutdown_timeout,
            Defaults::SHUTDOWN_TIMEOUT,
            (Duration::ZERO, HOUR),
            "server.shutdown_timeout",
            errs,
        ),
        pid_file: pid_file.unwrap_or_else(|| Defaults::PID_FILE.to_string()),
        upgrade_sock: upgrade_sock.unwrap_or_else(|| Defaults::UPGRADE_SOCK.to_string()),
        log_level,
        drain_quiet: duration(
            drain_quiet,
            Defaults::DRAIN_QUIET,
            (Duration::ZERO, HOUR),
            "server.drain_quiet",
            errs,
        ),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{parse, ConfigError};

    const BASE: &str =
        "listen: [{addr: 127.0.0.1:8080}]\nupstreams: [{id: a, addr: 127.0.0.1:9001}]\n";

    fn errors(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(_) => vec![],
            Err(e) => e.lines(),
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(BASE).expect("valid");
        assert_eq!(c.upstreams[0].weight, 1);
        assert_eq!(c.affinity.max_body_bytes, 32 * 1024 * 1024);
        assert!(c.timeouts.pool_idle < std::time::Duration::from_secs(600));
        assert!(c.affinity.keys.is_empty());
    }

    #[test]
    fn bad_values_are_named_by_path() {
        let cases = [
            ("listen: [{addr: 127.0.0.1:8080}]\nupstreams: [{id: a, addr: 127.0.0.1:1}, {id: b, addr: 127.0.0.1:2}, {id: c, addr: x}]\n",
             "upstreams[2].addr: invalid socket address \"x\""),
            ("listen: [{addr: 127.0.0.1:8080}]\nupstreams: [{id: a, addr: 127.0.0.1:1}, {id: a, addr: 127.0.0.1:2}]\n",
             "upstreams[1].id: duplicate id \"a\""),
            (&format!("{BASE}affinity: {{keys: [{{header: x, cookie: y}}]}}\n"), "affinity.keys[0]: needs exactly one of"),
            (&format!("{BASE}affinity: {{keys: [{{json: metadata}}]}}\n"), "affinity.keys[0].json: invalid JSON pointer"),
            (&format!("{BASE}affinity: {{keys: [{{header: x, regex: '('}}]}}\n"), "affinity.keys[0].regex: invalid regex"),
            (&format!("{BASE}admin: {{listen: 0.0.0.0:9900}}\n"), "admin.listen: 0.0.0.0:9900 is not a loopback address"),
            // Port 0 binds the same address: it needs a token as much.
            (&format!("{BASE}admin: {{listen: 0.0.0.0:0}}\n"), "admin.listen: 0.0.0.0:0 is not a loopback address"),
            (&format!("{BASE}admin: {{listen: '[::]:0'}}\n"), "admin.listen: [::]:0 is not a loopback address"),
            (&format!("{BASE}admin: {{listen: '[::]:9900'}}\n"), "admin.listen: [::]:9900 is not a loopback address"),
            (&format!("{BASE}passive_health: {{max_ejected_percent: 101}}\n"), "passive_health.max_ejected_percent"),
            ("listen: []\nupstreams: []\n", "listen: at least one listener is required"),
        ];
        for (text, want) in cases {
            let got = errors(text);
            assert!(
                got.iter().any(|l| l.starts_with(want)),
                "want {want:?} in {got:?}"
            );
        }
    }

    #[test]
    fn a_world_readable_token_file_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "secret\n").expect("write");
        let text = format!(
            "{BASE}admin: {{listen: '[::1]:0', token_file: {}}}\n",
            file.display()
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let quiet = crate::config::parse(&text).expect("valid");
        assert_eq!(quiet.admin.token_file_warning, None);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let warned = crate::config::parse(&text).expect("still valid");
        let warning = warned.admin.token_file_warning.expect("a warning");
        assert!(
            warning.contains("readable by every user (mode 644)"),
            "{warning}"
        );
        assert!(!warning.contains("secret"), "{warning}");
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_errors_with_paths() {
        let got = errors(&format!("{BASE}health_check: {{intervall: 1s}}\n"));
        assert!(
            got[0].contains("health_check") && got[0].contains("unknown field"),
            "{got:?}"
        );
        let got = errors(&format!("{BASE}health_check: {{interval: soon}}\n"));
        assert!(got[0].contains("health_check.interval"), "{got:?}");
    }

    #[test]
    fn every_mistake_is_reported_each_with_its_path() {
        let text = "listen: [{addr: 127.0.0.1:8080}]\n\
            upstreams: [{id: a, addr: 127.0.0.1:1}, {id: b, addr: nowhere}, {id: c, adr: 127.0.0.1:3}]\n\
            colour: blue\n\
            health_check: {interval: soon}\n\
            timeouts: {connect: 1000d}\n\
            redis: {url: 'redis://h:1', bukets: 3}\n\
            server: {threads: 0}\n";
        let got = errors(text);
        for want in [
            "upstreams[1].addr: invalid socket address",
            "upstreams[2].adr: unknown field",
            "upstreams[2]: missing field `addr`",
            "colour: unknown field",
            "health_check.interval:",
            "timeouts.connect: must be from 1ms to 10m",
            "redis.bukets: unknown field",
            "server.threads: must be from 1 to 1024",
        ] {
            assert!(
                got.iter().any(|l| l.starts_with(want)),
                "want {want:?} in {got:?}"
            );
        }
        assert_eq!(got.len(), 8, "{got:?}");
    }

    #[test]
    fn durations_and_numbers_are_bounded() {
        let cases = [
            (
                "timeouts: {read: 400000000000s}",
                "timeouts.read: must be from",
            ),
            (
                "redis: {url: 'redis://h:1', timeout: 1000000h}",
                "redis.timeout",
            ),
            (
                "passive_health: {max_recovery_time: 100000000d}",
                "passive_health.max_recovery_time",
            ),
            (
                "upstreams: [{id: a, addr: 127.0.0.1:1, weight: 4000000000}]",
                "upstreams[0].weight",
            ),
            ("redis: {url: 'redis://h:1', buckets: 0}", "redis.buckets"),
            (
                "failover: {max_retries: 99}",
                "failover.max_retries: must be from 0 to 15",
            ),
            ("affinity: {ttl: 0s}", "affinity.ttl"),
            (
                "timeouts: {client_idle: 1500ms}",
                "timeouts.client_idle: must be whole seconds",
            ),
        ];
        for (yaml, want) in cases {
            let text = if yaml.starts_with("upstreams") {
                format!("listen: [{{addr: 127.0.0.1:8080}}]\n{yaml}\n")
            } else {
                format!("{BASE}{yaml}\n")
            };
            let got = errors(&text);
            assert!(
                got.iter().any(|l| l.starts_with(want)),
                "want {want:?} in {got:?}"
            );
        }
    }

    #[test]
    fn no_message_quotes_a_secret() {
        let secret = "hunter2-secret";
        for yaml in [
            format!("redis: {{url: ['redis://:{secret}@h:1']}}"),
            format!("redis: {{url: 'redis://:{secret}@h:1', timeout: 'redis://:{secret}@h'}}"),
            format!("redis: {{url: 'redis://:{secret}@h:1', buckets: '{secret}'}}"),
            format!("redis: {{cluster: 'redis://:{secret}@h:1'}}"),
            format!("affinity: {{hash_secret: [{secret}]}}"),
            format!("admin: {{token_file: [{secret}]}}"),
        ] {
            let got = errors(&format!("{BASE}{yaml}\n"));
            assert!(!got.is_empty(), "{yaml} is invalid");
            assert!(got.iter().all(|l| !l.contains(secret)), "{got:?}");
        }
        // A secret of the wrong type: serde quotes scalars in backticks.
        for (secret, shown) in [
            ("4242424243", "4242424243"),
            ("4242.4243", "4242.4243"),
            ("0x4242abcd", "1111665613"),
            ("true", "true"),
            ("[4242424243, 77]", "4242424243"),
            ("{k: 4242424243}", "4242424243"),
        ] {
            for yaml in [
                format!("affinity: {{hash_secret: {secret}}}"),
                format!("redis: {{url: {secret}}}"),
                format!("redis: {{url: 'redis://h:1', prefix: {secret}}}"),
                format!("redis: {{url: 'redis://h:1', username: {secret}}}"),
                format!("admin: {{token_file: {secret}}}"),
            ] {
                let got = errors(&format!("{BASE}{yaml}\n"));
                assert!(!got.is_empty(), "{yaml} is invalid");
                assert!(got.iter().all(|l| !l.contains(shown)), "{yaml}: {got:?}");
            }
        }
    }

    #[test]
    fn redis_needs_one_target_and_valid_urls() {
        let cases = [
            (
                "redis: {url: 'redis://a:1', cluster: ['redis://b:2']}",
                "redis: needs exactly one of url and cluster",
            ),
            (
                "redis: {prefix: x}",
                "redis: needs exactly one of url and cluster",
            ),
            (
                "redis: {cluster: []}",
                "redis.cluster: needs at least one node URL",
            ),
            (
                "redis: {cluster: ['redis://ok:1', 'tcp://x']}",
                "redis.cluster[1]: must start with redis://",
            ),
            (
                "redis: {url: 'redis://h:1', timeout: 0s}",
                "redis.timeout: must be from 1ms to 1m",
            ),
        ];
        for (yaml, want) in cases {
            let got = errors(&format!("{BASE}{yaml}\n"));
            assert!(
                got.iter().any(|l| l.starts_with(want)),
                "want {want:?} in {got:?}"
            );
        }
        let ok = parse(&format!(
            "{BASE}redis: {{cluster: ['redis://a:1', 'redis://:pw@b:2']}}\n"
        ))
        .expect("valid");
        let debug = format!("{:?}", ok.redis);
        assert!(
            !debug.contains("pw@") && debug.contains("cluster of 2"),
            "{debug}"
        );
    }

    #[test]
    fn redis_url_is_never_echoed() {
        let got = errors(&format!(
            "{BASE}redis: {{url: 'http://user:hunter2@host'}}\n"
        ));
        assert!(got.iter().all(|l| !l.contains("hunter2")), "{got:?}");
        assert!(matches!(
            parse(&format!(
                "{BASE}redis: {{url: 'http://user:hunter2@host'}}\n"
            )),
            Err(ConfigError::Invalid(_))
        ));
    }
}

//! Every Prometheus metric relay-edge exports, in one struct, in base units.
//!
//! The request path never looks a label set up: per-upstream handles are
//! resolved once when an upstream is built ([`UpstreamMetrics`], in
//! [`upstream`]), and the common status codes of `relay_edge_requests_total`
//! are resolved with them. The words of the labels are [`crate::outcome`]'s.

mod bodies;
mod counts;
mod upstream;

pub use upstream::{CapacityMetrics, TokenKind, UpstreamMetrics};

use crate::outcome::{
    AffinityOutcome, ClientError, FailureCause, PurgeReason, RejectReason, RepinReason,
};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::cell::RefCell;

/// Status codes whose request counters are resolved ahead of time.
/// The statuses of requests that reach no upstream: refused as malformed
/// or slow, left by their client, or with no upstream to take them.
const UNROUTED_CODES: [u16; 6] = [400, 408, 499, 502, 503, 504];

const COMMON_CODES: [u16; 14] = [
    200, 201, 204, 400, 401, 403, 404, 408, 429, 500, 502, 503, 504, 529,
];

pub struct Metrics {
    registry: Registry,
    /// Every metric family's name, empty or not.
    names: Vec<String>,
    /// Requests answered, by upstream (`none` when no upstream was reached) and status code.
    pub requests: IntCounterVec,
    /// Time from request start to the end of the response, by upstream.
    pub request_duration: HistogramVec,
    /// 1 while an upstream passes its health checks and is not ejected, else 0.
    pub upstream_healthy: IntGaugeVec,
    /// Requests in flight to each upstream.
    pub upstream_inflight: IntGaugeVec,
    /// The expiry (notAfter, seconds since the epoch) of each TLS listener's
    /// certificate in force.
    pub tls_certificate_expiry: IntGaugeVec,
    /// Sessions pinned to each upstream.
    pub upstream_sessions: IntGaugeVec,
    /// Affinity table lookups by result: local_hit, redis_hit, miss.
    pub affinity_lookups: IntCounterVec,
    /// Sessions moved to another upstream, by reason.
    pub affinity_repins: IntCounterVec,
    /// Failed Redis calls that mean an outage (timeouts, lost connections).
    pub redis_errors: IntCounter,
    /// Redis calls that failed on one record, and unreadable records.
    pub redis_record_errors: IntCounter,
    /// Sweep rounds this edge made for the fleet (it held the sweep lease).
    pub redis_sweep_rounds: IntCounter,
    /// Latency of Redis calls.
    pub redis_duration: Histogram,
    /// Config reloads by result: ok, error.
    pub config_reloads: IntCounterVec,
    /// Successful config loads since start (1 after start-up).
    pub config_generation: IntGauge,
    /// Passive ejections of upstreams.
    pub ejections: IntCounterVec,
    /// Attempts retried: on another upstream, or once on a fresh connection.
    pub retries: IntCounter,
    /// Answered attempts left for another upstream, by upstream and reason.
    pub abandoned: IntCounterVec,
    pub connect_failures: IntCounterVec,
    /// Retries the retry budget refused.
    pub retry_budget_exhausted: IntCounter,
    /// Streaming answers by upstream and outcome.
    streams: IntCounterVec,
    /// Requests served by a relay other than the session's own.
    pub cold_moves: IntCounter,
    first_event: HistogramVec,
    tokens: IntCounterVec,
    /// Errors the edge gave clients, by cause.
    pub client_failures: IntCounterVec,
    /// Client mistakes and early leaves, by reason.
    client_errors: [IntCounter; ClientError::ALL.len()],
    /// Open client connections (HTTP/1.x).
    pub client_connections: IntGauge,
    pub lookup_local_hit: IntCounter,
    pub lookup_shared_hit: IntCounter,
    pub lookup_miss: IntCounter,
    repins: [IntCounter; RepinReason::ALL.len()],
    /// Pins forgotten by purges this edge ran, by reason.
    purged: [IntCounter; PurgeReason::ALL.len()],
    /// Keyed requests by affinity outcome, in [`AffinityOutcome`] order.
    affinity_requests: [IntCounter; AffinityOutcome::ALL.len()],
    /// `limits.max_connections`: the cap on open client connections.
    pub client_connections_max: IntGauge,
    /// Open client connections against their cap (set at each scrape).
    pub pool_utilisation: Gauge,
    /// Share of upstreams that are usable (set at each scrape).
    pub upstream_healthy_ratio: Gauge,
    /// Sessions this edge placed anew.
    pub sessions_created: IntCounter,
    /// Sessions in the table, as this edge sees it (set at each scrape).
    pub sessions_live: IntGauge,
    /// Live sessions against those created within the last TTL.
    pub session_survival: Gauge,
    /// Pins made while Redis was unreachable, written back after it came back.
    pub recovery_written: IntCounter,
    /// ... and those whose write-back failed.
    pub recovery_failed: IntCounter,
    /// A session's life, first request to last, observed when it expires.
    pub session_duration: Histogram,
    connect: HistogramVec,
    pub access_log_lines: IntCounter,
    pub access_log_dropped: IntCounter,
    /// Requests refused for a tenant's limit (429), by reason.
    tenant_rejections: [IntCounter; RejectReason::ALL.len()],
    /// Requests waiting for each capped relay.
    upstream_queue_length: IntGaugeVec,
    /// Time in a capped relay's queue, admitted at once included.
    upstream_queue_wait: HistogramVec,
    /// Requests a capped relay's queue refused, by reason.
    capacity_rejections: IntCounterVec,
    /// Requests this edge may have in flight at each capped relay now.
    upstream_grant: IntGaugeVec,
    /// Requests whose pinned relay was full, by what came of the wait
    /// (`served` there, or `spilled` to another relay).
    pub pin_waits: IntCounterVec,
    pub bodies: bodies::BodyGauges,
}

/// The registry, and the names of what was registered in it.
struct Reg {
    registry: Registry,
    names: RefCell<Vec<String>>,
}

fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Reg, c: C) -> C {
    for desc in c.desc() {
        r.names.borrow_mut().push(desc.fq_name.clone());
    }
    // Registration fails only for a duplicate name, which the names below rule out.
    if let Err(e) = r.registry.register(Box::new(c.clone())) {
        log::error!("metric registration failed: {e}");
    }
    c
}

fn counter(r: &Reg, name: &str, help: &str) -> IntCounter {
    register(
        r,
        IntCounter::new(name, help).expect("static metric definition"),
    )
}

fn gauge(r: &Reg, name: &str, help: &str) -> Gauge {
    register(r, Gauge::new(name, help).expect("static metric definition"))
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Reg {
            registry: Registry::new(),
            names: RefCell::new(Vec::new()),
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels)
                    .expect("static metric definition"),
            )
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition"),
            )
        };
        let requests = counter_vec(
            "relay_edge_requests_total",
            "Requests answered, by upstream and status code.",
            &["upstream", "code"],
        );
        let request_duration = register(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "relay_edge_request_duration_seconds",
                    "Time from request start to the end of the response, in seconds.",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0, 300.0, 600.0,
                ]),
                &["upstream"],
            )
            .expect("static metric definition"),
        );
        let upstream_healthy = gauge_vec(
            "relay_edge_upstream_healthy",
            "1 while the upstream passes health checks and is not ejected, else 0.",
            &["upstream"],
        );
        let tls_certificate_expiry = gauge_vec(
            "relay_edge_tls_certificate_expiry_seconds",
            "When the certificate a TLS listener serves expires (its notAfter), in seconds since the epoch.",
            &["listener"],
        );
        let upstream_inflight = gauge_vec(
            "relay_edge_upstream_inflight",
            "Requests in flight to the upstream.",
            &["upstream"],
        );
        let upstream_sessions = gauge_vec(
            "relay_edge_upstream_sessions",
            "Sessions pinned to the upstream.",
            &["upstream"],
        );
        let affinity_lookups = counter_vec(
            "relay_edge_affinity_lookups_total",
            "Affinity table lookups, by result (local_hit, redis_hit, miss).",
            &["result"],
        );
        let affinity_repins = counter_vec(
            "relay_edge_affinity_repins_total",
            "Sessions moved to another upstream, by reason.",
            &["reason"],
        );
        let redis_errors = register(
            &r,
            IntCounter::new(
                "relay_edge_redis_errors_total",
                "Failed Redis calls that mean an outage.",
            )
            .expect("static metric definition"),
        );
        let redis_record_errors = register(
            &r,
            IntCounter::new(
                "relay_edge_redis_record_errors_total",
                "Redis calls that failed on one record, and unreadable records.",
            )
            .expect("static metric definition"),
        );
        let redis_sweep_rounds = register(
            &r,
            IntCounter::new(
                "relay_edge_redis_sweep_rounds_total",
                "Sweep rounds this edge made for the fleet (it held the sweep lease).",
            )
            .expect("static metric definition"),
        );
        let redis_duration = register(
            &r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "relay_edge_redis_duration_seconds",
                    "Latency of Redis calls, in seconds.",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                ]),
            )
            .expect("static metric definition"),
        );
        let config_reloads = counter_vec(
            "relay_edge_config_reloads_total",
            "Config reloads, by result (ok, error).",
            &["result"],
        );
        let config_generation = register(
            &r,
            IntGauge::new(
                "relay_edge_config_generation",
                "Successful config loads since start.",
            )
            .expect("static metric definition"),
        );
        let ejections = counter_vec(
            "relay_edge_upstream_ejections_total",
            "Passive ejections of the upstream.",
            &["upstream"],
        );
        let retries = register(
            &r,
            IntCounter::new(
                "relay_edge_retries_total",
                "Attempts retried: on another upstream, or once on a fresh connection.",
            )
            .expect("static metric definition"),
        );
        let connect_failures = counter_vec(
            "relay_edge_upstream_connect_failures_total",
            "Connections to a relay that could not be opened, by upstream and reason (proxy, connect, tls, timeout, error).",
            &["upstream", "reason"],
        );
        let abandoned = counter_vec(
            "relay_edge_attempts_abandoned_total",
            "Answered attempts left for another upstream before the client saw them, by upstream and reason (status, error_event, first_event_timeout, closed_before_first_event).",
            &["upstream", "reason"],
        );
        let retry_budget_exhausted = register(
            &r,
            IntCounter::new(
                "relay_edge_retry_budget_exhausted_total",
                "Retries of answered attempts refused by failover.retry_budget: the answer went to the client as it was.",
            )
            .expect("static metric definition"),
        );
        let cold_moves = register(
            &r,
            IntCounter::new(
                "relay_edge_cold_moves_total",
                "Requests of a known session served by another relay than its own (a re-pin, or an answer tried elsewhere): each starts that relay's prompt cache cold.",
            )
            .expect("static metric definition"),
        );
        let streams = counter_vec(
            "relay_edge_streams_total",
            "Streaming (SSE) answers by upstream and how they ended (completed, relay_cut, client_cut, first_event_timeout, idle_timeout).",
            &["upstream", "outcome"],
        );
        let first_event = register(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "relay_edge_stream_first_event_seconds",
                    "Time from a stream's response head to its first whole event, in seconds.",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ]),
                &["upstream"],
            )
            .expect("static metric definition"),
        );
        let tokens = counter_vec(
            "relay_edge_tokens_total",
            "Tokens the relays reported in their answers' usage, by upstream and kind (input, cache_read_input, cache_creation_input, output).",
            &["upstream", "kind"],
        );
        let client_failures = counter_vec(
            "relay_edge_client_failures_total",
            "Errors the edge gave clients, by cause.",
            &["cause"],
        );
        for cause in FailureCause::ALL {
            client_failures.with_label_values(&[cause.label()]);
        }
        let client_errors_vec = counter_vec(
            "relay_edge_client_errors_total",
            "Client mistakes and early leaves (never the edge's failures), by reason.",
            &["reason"],
        );
        let client_errors =
            ClientError::ALL.map(|e| client_errors_vec.with_label_values(&[e.label()]));
        let client_connections = register(
            &r,
            IntGauge::new("relay_edge_client_connections", "Open client connections.")
                .expect("static metric definition"),
        );
        for result in ["ok", "error"] {
            config_reloads.with_label_values(&[result]);
        }
        let lookup_local_hit = affinity_lookups.with_label_values(&["local_hit"]);
        let lookup_shared_hit = affinity_lookups.with_label_values(&["redis_hit"]);
        let lookup_miss = affinity_lookups.with_label_values(&["miss"]);
        let repins = RepinReason::ALL.map(|r| affinity_repins.with_label_values(&[r.label()]));
        let purged_vec = counter_vec(
            "relay_edge_affinity_purged_total",
            "Pins forgotten by purges this edge ran (with Redis: removed from the shared table), by reason (admin, on_remove).",
            &["reason"],
        );
        let purged = PurgeReason::ALL.map(|r| purged_vec.with_label_values(&[r.label()]));
        let affinity_requests_vec = counter_vec(
            "relay_edge_affinity_requests_total",
            "Keyed requests by affinity outcome: hit (the session's own upstream), new, moved (served elsewhere).",
            &["outcome"],
        );
        let affinity_requests =
            AffinityOutcome::ALL.map(|o| affinity_requests_vec.with_label_values(&[o.label()]));
        let client_connections_max = register(
            &r,
            IntGauge::new(
                "relay_edge_client_connections_max",
                "limits.max_connections: the cap on open client connections.",
            )
            .expect("static metric definition"),
        );
        let pool_utilisation = gauge(
            &r,
            "relay_edge_pool_utilisation_ratio",
            "Open client connections against limits.max_connections, from 0 to 1.",
        );
        let upstream_healthy_ratio = gauge(
            &r,
            "relay_edge_upstream_healthy_ratio",
            "Share of the configured upstreams that are healthy and not ejected, from 0 to 1.",
        );
        let sessions_created = counter(
            &r,
            "relay_edge_sessions_created_total",
            "Sessions this edge placed anew.",
        );
        let sessions_live = register(
            &r,
            IntGauge::new(
                "relay_edge_sessions_live",
                "Sessions in the affinity table, as this edge sees it.",
            )
            .expect("static metric definition"),
        );
        let session_survival = gauge(
            &r,
            "relay_edge_session_survival_ratio",
            "Live sessions against the sessions created within the last affinity.ttl (1 when none were), from 0 to 1.",
        );
        let recovery = counter_vec(
            "relay_edge_redis_recovery_pins_total",
            "Pins made while Redis was unreachable and written back after it returned, by result (written, failed).",
            &["result"],
        );
        let recovery_written = recovery.with_label_values(&["written"]);
        let recovery_failed = recovery.with_label_values(&["failed"]);
        let session_duration = register(
            &r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "relay_edge_session_duration_seconds",
                    "A session's life, from its first request to its last, observed when it expires (with Redis: by the edge whose sweep removed it), in seconds.",
                )
                .buckets(vec![
                    1.0, 10.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0,
                    86400.0,
                ]),
            )
            .expect("static metric definition"),
        );
        let connect = register(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "relay_edge_upstream_connect_seconds",
                    "Time to open a new connection to the upstream (TCP and TLS), in seconds.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ]),
                &["upstream"],
            )
            .expect("static metric definition"),
        );
        let upstream_queue_length = gauge_vec(
            "relay_edge_upstream_queue_length",
            "Requests waiting for the capped upstream (upstreams[].max_inflight).",
            &["upstream"],
        );
        let upstream_queue_wait = register(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "relay_edge_upstream_queue_wait_seconds",
                    "Time a request to a capped upstream waited for a slot (0 when admitted at once), in seconds.",
                )
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ]),
                &["upstream"],
            )
            .expect("static metric definition"),
        );
        let capacity_rejections = counter_vec(
            "relay_edge_capacity_rejections_total",
            "Requests refused with 529 at a capped upstream, by reason (queue_full, timeout, fast_fail, redis_down).",
            &["upstream", "reason"],
        );
        let upstream_grant = gauge_vec(
            "relay_edge_upstream_grant",
            "Requests this edge may have in flight at the capped upstream now (its grant of the cap).",
            &["upstream"],
        );
        let pin_waits = counter_vec(
            "relay_edge_capacity_pin_waits_total",
            "Requests whose pinned upstream was at its cap, by what came of the wait (served, spilled).",
            &["outcome"],
        );
        for outcome in ["served", "spilled"] {
            pin_waits.with_label_values(&[outcome]);
        }
        let access_log_lines = counter(
            &r,
            "relay_edge_access_log_lines_total",
            "Access log lines written.",
        );
        let access_log_dropped = counter(
            &r,
            "relay_edge_access_log_dropped_total",
            "Access log lines dropped because the writer's queue was full (access_log.buffer).",
        );
        let tenant_rejections_vec = counter_vec(
            "relay_edge_tenant_rejections_total",
            "Requests refused with 429 for a tenant's limit, by reason (new_sessions: tenants.max_new_sessions_per_hour; session_inflight: tenants.max_inflight_per_session).",
            &["reason"],
        );
        let tenant_rejections =
            RejectReason::ALL.map(|r| tenant_rejections_vec.with_label_values(&[r.label()]));
        // The answers the edge gives when no upstream is reached, exported
        // at 0 (the per-upstream series are, in `for_upstream`).
        for code in UNROUTED_CODES {
            requests.with_label_values(&["none", &code.to_string()]);
        }
        let bodies = bodies::BodyGauges::new(&r);
        Metrics {
            bodies,
            tls_certificate_expiry,
            registry: r.registry,
            names: r.names.into_inner(),
            affinity_requests,
            client_connections_max,
            pool_utilisation,
            upstream_healthy_ratio,
            sessions_created,
            sessions_live,
            session_survival,
            recovery_written,
            recovery_failed,
            session_duration,
            connect,
            access_log_lines,
            access_log_dropped,
            tenant_rejections,
            upstream_queue_length,
            upstream_queue_wait,
            capacity_rejections,
            upstream_grant,
            pin_waits,
            requests,
            request_duration,
            upstream_healthy,
            upstream_inflight,
            upstream_sessions,
            affinity_lookups,
            affinity_repins,
            redis_errors,
            redis_record_errors,
            redis_sweep_rounds,
            redis_duration,
            config_reloads,
            config_generation,
            ejections,
            retries,
            abandoned,
            connect_failures,
            retry_budget_exhausted,
            streams,
            cold_moves,
            first_event,
            tokens,
            client_failures,
            client_errors,
            client_connections,
            lookup_local_hit,
            lookup_shared_hit,
            lookup_miss,
            repins,
            purged,
        }
    }

    /// The name of every metric family relay-edge exports.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::error!("metrics encoding failed: {e}");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests;

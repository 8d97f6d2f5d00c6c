//! The words relay-edge uses for what happened to a request: why a
//! session moved, why pins were purged, how a stream ended, why an attempt failed or was
//! abandoned, why a relay could not be reached, why a capped relay or a tenant's limit refused one, what a
//! client did wrong, what
//! affinity did, and the tokens an answer reported. They sit at the bottom of the tree, so that the proxy,
//! the metrics, the logs and the dashboard share one vocabulary without
//! importing each other. Each word's `label` is its metric label value.

/// Why a session moved to another upstream: the `reason` label of
/// `relay_edge_affinity_repins_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepinReason {
    Unhealthy,
    Ejected,
    Draining,
    Removed,
    ConnectFailure,
    /// The connection to the upstream failed after the request was sent.
    ConnectionLost,
    /// The upstream answered with a retried status or error event, often
    /// enough for `failover.move_pin`.
    ErrorAnswer,
    /// Its relay stayed at its cap past `affinity.pin_wait` while another
    /// had room.
    Capacity,
}

impl RepinReason {
    pub const ALL: [RepinReason; 8] = [
        RepinReason::Unhealthy,
        RepinReason::Ejected,
        RepinReason::Draining,
        RepinReason::Removed,
        RepinReason::ConnectFailure,
        RepinReason::ConnectionLost,
        RepinReason::ErrorAnswer,
        RepinReason::Capacity,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RepinReason::Unhealthy => "unhealthy",
            RepinReason::Ejected => "ejected",
            RepinReason::Draining => "draining",
            RepinReason::Removed => "removed",
            RepinReason::ConnectFailure => "connect_failure",
            RepinReason::ConnectionLost => "connection_lost",
            RepinReason::ErrorAnswer => "error_answer",
            RepinReason::Capacity => "capacity",
        }
    }
}

/// Why pins were purged: the `reason` label of
/// `relay_edge_affinity_purged_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeReason {
    /// `DELETE /api/sessions?...`, or `relay-edge ctl purge`.
    Admin,
    /// A relay with `upstreams[].on_remove: purge` was removed by a reload,
    /// or drained.
    OnRemove,
}

impl PurgeReason {
    pub const ALL: [PurgeReason; 2] = [PurgeReason::Admin, PurgeReason::OnRemove];

    pub fn label(self) -> &'static str {
        match self {
            PurgeReason::Admin => "admin",
            PurgeReason::OnRemove => "on_remove",
        }
    }
}

/// Why a capped relay's gate did not admit a request (the `reason` of
/// `relay_edge_capacity_rejections_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue was full.
    QueueFull,
    /// It waited until its deadline.
    TimedOut,
    /// The recent waits were too long to join the queue.
    FastFail,
    /// `capacity.on_redis_down: closed`, with no live grant.
    RedisDown,
}

impl Refused {
    pub const ALL: [Refused; 4] = [
        Refused::QueueFull,
        Refused::TimedOut,
        Refused::FastFail,
        Refused::RedisDown,
    ];

    /// The `reason` label of `relay_edge_capacity_rejections_total`.
    pub fn label(self) -> &'static str {
        match self {
            Refused::QueueFull => "queue_full",
            Refused::TimedOut => "timeout",
            Refused::FastFail => "fast_fail",
            Refused::RedisDown => "redis_down",
        }
    }
}

/// Why a tenant's request was refused (`relay_edge_tenant_rejections_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// `max_new_sessions_per_hour`.
    NewSessions,
    /// `max_inflight_per_session`.
    SessionInflight,
}

impl RejectReason {
    pub const ALL: [RejectReason; 2] = [RejectReason::NewSessions, RejectReason::SessionInflight];

    pub fn label(self) -> &'static str {
        match self {
            RejectReason::NewSessions => "new_sessions",
            RejectReason::SessionInflight => "session_inflight",
        }
    }

    /// The `rate_limit_error` message the client reads.
    pub fn message(self) -> &'static str {
        match self {
            RejectReason::NewSessions => {
                "relay-edge: this API key created too many new sessions this hour"
            }
            RejectReason::SessionInflight => {
                "relay-edge: too many requests of this session in flight at once"
            }
        }
    }
}

/// How a streaming (SSE) answer ended: the `outcome` label of
/// `relay_edge_streams_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamOutcome {
    /// Its protocol's end was seen (`message_stop`, `response.completed`,
    /// `[DONE]`).
    Completed,
    /// The relay ended or broke it before that end (or before its first
    /// event).
    RelayCut,
    /// The client left.
    ClientCut,
    /// No first event within `streams.first_event_timeout`.
    FirstEventTimeout,
    /// Silent for `streams.idle_timeout` after its first event.
    IdleTimeout,
    /// Its body ended cleanly in a protocol the edge does not know (not
    /// the relay's failure).
    Unrecognised,
}

impl StreamOutcome {
    pub const ALL: [StreamOutcome; 6] = [
        StreamOutcome::Completed,
        StreamOutcome::RelayCut,
        StreamOutcome::ClientCut,
        StreamOutcome::FirstEventTimeout,
        StreamOutcome::IdleTimeout,
        StreamOutcome::Unrecognised,
    ];

    pub fn label(self) -> &'static str {
        match self {
            StreamOutcome::Completed => "completed",
            StreamOutcome::RelayCut => "relay_cut",
            StreamOutcome::ClientCut => "client_cut",
            StreamOutcome::FirstEventTimeout => "first_event_timeout",
            StreamOutcome::IdleTimeout => "idle_timeout",
            StreamOutcome::Unrecognised => "unrecognised",
        }
    }
}

/// Why an answered attempt was left for another upstream: the `reason`
/// label of `relay_edge_attempts_abandoned_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbandonReason {
    /// A status of `failover.retry_on_status`.
    Status,
    /// A stream's first event was an error of `failover.retry_on_error_events`.
    ErrorEvent,
    /// No first event within `streams.first_event_timeout`.
    FirstEventTimeout,
    /// The stream ended before its first event.
    ClosedBeforeFirstEvent,
}

impl AbandonReason {
    pub const ALL: [AbandonReason; 4] = [
        AbandonReason::Status,
        AbandonReason::ErrorEvent,
        AbandonReason::FirstEventTimeout,
        AbandonReason::ClosedBeforeFirstEvent,
    ];

    pub fn label(self) -> &'static str {
        match self {
            AbandonReason::Status => "status",
            AbandonReason::ErrorEvent => "error_event",
            AbandonReason::FirstEventTimeout => "first_event_timeout",
            AbandonReason::ClosedBeforeFirstEvent => "closed_before_first_event",
        }
    }
}

/// Why a client got an error from the edge: the `cause` label of
/// `relay_edge_client_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCause {
    /// No healthy upstream could take the request (503).
    NoUpstream,
    /// Every connect attempt failed (502).
    Connect,
    /// The relay's egress proxy refused or failed the tunnel (502).
    Proxy,
    /// The upstream connection was lost before the response began (502).
    ConnectionLost,
    /// The upstream did not answer in time (504).
    Timeout,
    /// The upstream sent something that is not HTTP (502).
    BadUpstreamResponse,
    /// The response had begun and was cut (the client sees a short body).
    Cut,
    /// The request was malformed (400).
    BadRequest,
    /// Anything else (500).
    Internal,
    /// A capped relay's queue refused the request (529).
    Capacity,
}

impl FailureCause {
    pub const ALL: [FailureCause; 10] = [
        FailureCause::NoUpstream,
        FailureCause::Connect,
        FailureCause::Proxy,
        FailureCause::ConnectionLost,
        FailureCause::Timeout,
        FailureCause::BadUpstreamResponse,
        FailureCause::Cut,
        FailureCause::BadRequest,
        FailureCause::Internal,
        FailureCause::Capacity,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FailureCause::NoUpstream => "no_upstream",
            FailureCause::Connect => "connect",
            FailureCause::Proxy => "proxy",
            FailureCause::ConnectionLost => "connection_lost",
            FailureCause::Timeout => "timeout",
            FailureCause::BadUpstreamResponse => "bad_upstream_response",
            FailureCause::Cut => "cut",
            FailureCause::BadRequest => "bad_request",
            FailureCause::Internal => "internal",
            FailureCause::Capacity => "capacity",
        }
    }
}

/// What a client did wrong, or how it left: the `reason` label of
/// `relay_edge_client_errors_total`. Each is the client's doing, never a
/// failure of the edge or an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientError {
    /// The request head did not arrive within `timeouts.client_header` (408).
    HeaderTimeout,
    /// The request head exceeded `limits.max_header_bytes` (431).
    HeaderTooLarge,
    /// The request target exceeded `limits.max_uri_bytes` (414).
    UriTooLong,
    /// The head was refused by the HTTP parser (400 or 405).
    Malformed,
    /// The client closed its connection in the middle of a request head.
    ClosedInHeader,
    /// A gap between two body reads exceeded `timeouts.client_body` (408).
    BodyTimeout,
    /// The body fell below `limits.min_body_rate` (408).
    BodyTooSlow,
    /// The client left before its response was complete (logged as 499).
    ClosedEarly,
    /// The connection came past `limits.max_connections` and was closed.
    ConnectionLimit,
    /// The TLS handshake failed, or took longer than `timeouts.client_header`.
    TlsHandshake,
}

impl ClientError {
    pub const ALL: [ClientError; 10] = [
        ClientError::HeaderTimeout,
        ClientError::HeaderTooLarge,
        ClientError::UriTooLong,
        ClientError::Malformed,
        ClientError::ClosedInHeader,
        ClientError::BodyTimeout,
        ClientError::BodyTooSlow,
        ClientError::ClosedEarly,
        ClientError::ConnectionLimit,
        ClientError::TlsHandshake,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ClientError::HeaderTimeout => "header_timeout",
            ClientError::HeaderTooLarge => "header_too_large",
            ClientError::UriTooLong => "uri_too_long",
            ClientError::Malformed => "malformed",
            ClientError::ClosedInHeader => "closed_in_header",
            ClientError::BodyTimeout => "body_timeout",
            ClientError::BodyTooSlow => "body_too_slow",
            ClientError::ClosedEarly => "closed_early",
            ClientError::ConnectionLimit => "connection_limit",
            ClientError::TlsHandshake => "tls_handshake",
        }
    }
}

/// What affinity did for one keyed request: the `outcome` label of
/// `relay_edge_affinity_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AffinityOutcome {
    /// The session's own upstream served it.
    Hit,
    /// The session was new and was placed.
    New,
    /// Another upstream served it (a re-pin, or an answer tried elsewhere).
    Moved,
}

impl AffinityOutcome {
    pub const ALL: [AffinityOutcome; 3] = [
        AffinityOutcome::Hit,
        AffinityOutcome::New,
        AffinityOutcome::Moved,
    ];

    pub fn label(self) -> &'static str {
        match self {
            AffinityOutcome::Hit => "hit",
            AffinityOutcome::New => "new",
            AffinityOutcome::Moved => "moved",
        }
    }
}

/// Tokens a stream (or a JSON answer) reported.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub cache_read: u64,
    pub cache_creation: u64,
    pub output: u64,
}

/// Why a connection to a relay, or an active check of it, failed: the
/// `reason` of `relay_edge_upstream_connect_failures_total` (never
/// `status`), and `check_failure` in `/api/upstreams`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayFailure {
    /// The relay's egress proxy refused or failed the tunnel.
    Proxy,
    Connect,
    Tls,
    Timeout,
    /// An active check's answer was not 2xx.
    Status,
    Error,
}

impl RelayFailure {
    pub const ALL: [RelayFailure; 6] = [
        RelayFailure::Proxy,
        RelayFailure::Connect,
        RelayFailure::Tls,
        RelayFailure::Timeout,
        RelayFailure::Status,
        RelayFailure::Error,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RelayFailure::Proxy => "proxy",
            RelayFailure::Connect => "connect",
            RelayFailure::Tls => "tls",
            RelayFailure::Timeout => "timeout",
            RelayFailure::Status => "status",
            RelayFailure::Error => "error",
        }
    }

    /// Why an attempt or a check that ended with `e` failed.
    pub fn of(e: &pingora_core::Error) -> RelayFailure {
        use pingora_core::ErrorType::*;
        match e.etype() {
            ConnectProxyFailure => RelayFailure::Proxy,
            ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
                RelayFailure::Timeout
            }
            ConnectRefused | ConnectNoRoute | ConnectError | ConnectionClosed | SocketError => {
                RelayFailure::Connect
            }
            TLSHandshakeFailure | InvalidCert | HandshakeError => RelayFailure::Tls,
            CustomCode(..) => RelayFailure::Status,
            _ => RelayFailure::Error,
        }
    }
}

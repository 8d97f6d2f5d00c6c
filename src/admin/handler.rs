//! The admin routes, as a pure function of the request and the edge's state.
//!
//! ```text
//! GET    /healthz                       200 while the process serves
//! GET    /readyz                        200 once upstream health is known, else 503
//! GET    /metrics                       Prometheus text format
//! GET    /api/stats                     upstreams, sessions, affinity, redis, config,
//!                                       indicators, the last reload
//! GET    /api/history                   per upstream, the last 15 minutes in 10 s points
//! GET    /api/upstreams                 per upstream: health, ejection, drain, load, counters
//! POST   /api/upstreams/{id}/drain      no new sessions; existing ones move off
//! POST   /api/upstreams/{id}/undrain
//! GET    /api/sessions?upstream=ID&limit=N
//! GET    /api/sessions/{key}            {key}: the client's key, URL-encoded; with a status
//! PUT    /api/sessions/{key}            body {"upstream": "ID", "metadata": {...}} (metadata optional)
//! DELETE /api/sessions/{key}
//!                                       each takes ?tenant=HASH (the tenant's hex hash, as
//!                                       /api/stats shows it): the session of that tenant
//! DELETE /api/sessions?upstream=ID | ?tenant=HASH | ?all=true
//!                                       purge those pins, on every edge (`pins`)
//! POST   /api/reload                    200 with the new generation, or 400 with the errors
//! GET    /                              the HTML dashboard
//! ```
//!
//! With a token configured, every route but the dashboard's page needs
//! `Authorization: Bearer <token>`, compared in constant time. Errors share one JSON shape:
//! `{"error": "..."}`. Every JSON answer is a view of [`super::views`].

mod pins;

use super::views::{
    AffinityView, CapacityView, CertificateView, ConfigView, DeletedView, ErrorView, HealthView,
    HistoryPointView, HistoryView, IndicatorView, ListenerView, PinRequest, ReadyView,
    SessionCountView, SessionListView, SessionView, StatsView, TenantRejectionsView, TenantView,
    TenantsView, TokensView, UpstreamHistoryView, UpstreamView,
};
use crate::affinity::store::SessionInfo;
use crate::clock;
use crate::indicators::BadWhen;
use crate::outcome::RepinReason;
use crate::state::Edge;
use crate::tenants::limits::RejectReason;
use crate::tenants::top::{top_by, Snapshot};
use crate::tenants::TenantId;
use crate::upstream::Upstream;
use http::StatusCode;
use percent_encoding::percent_decode_str;
use serde::Serialize;
use serde_json::Value;
use std::sync::atomic::Ordering;
use subtle::ConstantTimeEq;

pub struct AdminRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub authorization: Option<&'a [u8]>,
    pub body: &'a [u8],
}

#[derive(Debug)]
pub struct AdminResponse {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl AdminResponse {
    /// A view, pretty-printed. It goes through a [`Value`], whose objects
    /// sort their keys: every answer lists its fields in alphabetical
    /// order, whatever order its view declares them in.
    fn json<T: Serialize>(status: StatusCode, view: &T) -> Self {
        let body = serde_json::to_value(view)
            .and_then(|value| serde_json::to_vec_pretty(&value))
            .unwrap_or_default();
        AdminResponse {
            status,
            content_type: "application/json",
            body,
        }
    }

    fn ok<T: Serialize>(view: &T) -> Self {
        Self::json(StatusCode::OK, view)
    }

    pub fn error(status: StatusCode, message: &str) -> Self {
        Self::json(
            status,
            &ErrorView {
                error: message.to_string(),
                errors: None,
            },
        )
    }

    /// The body as JSON (for tests and callers that inspect replies).
    pub fn json_body(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

const DASHBOARD: &str = include_str!("dashboard.html");

fn authorized(edge: &Edge, auth: Option<&[u8]>) -> bool {
    let state = edge.state();
    let Some(token) = &state.config.admin.token else {
        return true;
    };
    let Some(presented) = auth.and_then(|a| a.strip_prefix(b"Bearer ")) else {
        return false;
    };
    presented.ct_eq(token.as_bytes()).into()
}

pub async fn handle(edge: &Edge, req: AdminRequest<'_>) -> AdminResponse {
    // The dashboard page holds no data and asks for the token itself; every
    // call it makes presents it.
    let page = req.method == "GET" && req.path.trim_matches('/').is_empty();
    if !page && !authorized(edge, req.authorization) {
        return AdminResponse::error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    let segments: Vec<&str> = req
        .path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    match (req.method, segments.as_slice()) {
        ("GET", []) => AdminResponse {
            status: StatusCode::OK,
            content_type: "text/html; charset=utf-8",
            body: DASHBOARD.as_bytes().to_vec(),
        },
        ("GET", ["healthz"]) => AdminResponse::ok(&HealthView {
            status: "ok".into(),
        }),
        ("GET", ["readyz"]) => match edge.is_ready() {
            true => AdminResponse::ok(&ReadyView {
                ready: true,
                reason: None,
            }),
            false => AdminResponse::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &ReadyView {
                    ready: false,
                    reason: Some("first health-check round not finished".into()),
                },
            ),
        },
        ("GET", ["metrics"]) => {
            edge.refresh_scrape_gauges();
            AdminResponse {
                status: StatusCode::OK,
                content_type: "text/plain; version=0.0.4",
                body: edge.metrics.render(),
            }
        }
        ("GET", ["api", "stats"]) => AdminResponse::ok(&stats(edge)),
        ("GET", ["api", "history"]) => AdminResponse::ok(&history(edge)),
        ("GET", ["api", "upstreams"]) => AdminResponse::ok(&upstreams(edge)),
        ("POST", ["api", "upstreams", id, action @ ("drain" | "undrain")]) => {
            pins::drain(edge, id, *action == "drain").await
        }
        ("GET", ["api", "sessions"]) => list_sessions(edge, req.query).await,
        ("DELETE", ["api", "sessions"]) => pins::purge(edge, req.query).await,
        (method, ["api", "sessions", key]) => session(edge, method, key, req.query, req.body).await,
        ("POST", ["api", "reload"]) => match edge.reload().await {
            Ok(report) => AdminResponse::ok(&report),
            Err(errors) => AdminResponse::json(
                StatusCode::BAD_REQUEST,
                &ErrorView {
                    error: "config rejected; the running config stays".into(),
                    errors: Some(errors),
                },
            ),
        },
        (
            _,
            ["healthz" | "readyz" | "metrics"]
            | []
            | ["api", "stats" | "history" | "upstreams" | "sessions" | "reload"],
        )
        | (_, ["api", "upstreams", _, "drain" | "undrain"]) => {
            AdminResponse::error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => AdminResponse::error(StatusCode::NOT_FOUND, "no such route"),
    }
}

/// An upstream's token counts (input, cache_read, cache_creation, output).
fn tokens_view([input, cache_read, cache_creation, output]: [u64; 4]) -> TokensView {
    let prompt = input + cache_read + cache_creation;
    TokensView {
        input,
        cache_read_input: cache_read,
        cache_creation_input: cache_creation,
        output,
        cache_read_ratio: (prompt > 0).then(|| cache_read as f64 / prompt as f64),
    }
}

fn upstream_view(u: &Upstream, sessions: u64, now: u64, tokens: [u64; 4]) -> UpstreamView {
    let s = &u.stats;
    let connects = s.connects.load(Ordering::Relaxed);
    let reused = s.reused.load(Ordering::Relaxed);
    let mean_connect_ms = match connects {
        0 => None,
        n => Some(s.connect_micros.load(Ordering::Relaxed) as f64 / n as f64 / 1000.0),
    };
    let pooled_reuse_ratio = match connects + reused {
        0 => None,
        n => Some(reused as f64 / n as f64),
    };
    UpstreamView {
        id: u.id.to_string(),
        addr: u.spec.relay_addr(),
        proxy: u.spec.proxy.as_ref().map(|p| p.shown()),
        weight: u.spec.weight,
        tls: u.spec.tls.is_some(),
        healthy: u.health.is_healthy(),
        check_failure: u.health.last_failure().map(|f| f.label().to_string()),
        ejected: u.ejection.is_ejected(now),
        ejected_for_seconds: u.ejection.remaining_ms(now) as f64 / 1000.0,
        ejections: u.ejection.ejections(),
        draining: u.is_draining(),
        unusable: u.unusable(now).map(|r| r.label().to_string()),
        inflight: u.inflight(),
        sessions,
        requests: s.requests.load(Ordering::Relaxed),
        errors: s.errors.load(Ordering::Relaxed),
        connections_opened: connects,
        mean_connect_ms,
        pooled_reuse_ratio,
        tokens: tokens_view(tokens),
        capacity: u.capacity.as_ref().and_then(|c| {
            let (inflight, queued) = c.work();
            let lease = c.lease();
            Some(CapacityView {
                max_inflight: u.spec.max_inflight?,
                grant: u64::try_from(c.limit()).ok().filter(|&n| n != u64::MAX),
                inflight: inflight as u64,
                queued: queued as u64,
                recent_wait_p90_ms: c.gate.recent_p90().as_secs_f64() * 1000.0,
                edges: lease.last.map(|g| g.edges),
                redis_failing: lease.failing,
                lease_left_ms: lease.last.map(|g| g.until_ms.saturating_sub(now)),
            })
        }),
    }
}

fn upstreams(edge: &Edge) -> Vec<UpstreamView> {
    let counts = edge.store.counts();
    let now = clock::now_ms();
    edge.state()
        .upstreams
        .all()
        .iter()
        .map(|u| {
            let sessions = counts.get(&u.id).copied().unwrap_or(0);
            upstream_view(u, sessions, now, edge.metrics.tokens_of(&u.id))
        })
        .collect()
}

/// `GET /api/history`, from a sample taken now.
fn history(edge: &Edge) -> HistoryView {
    let upstreams = edge
        .history
        .points(&edge.sample())
        .into_iter()
        .map(|(id, points)| UpstreamHistoryView {
            id: id.to_string(),
            points: points
                .into_iter()
                .map(|p| HistoryPointView {
                    t_ms: p.t_ms,
                    requests: p.requests,
                    errors: p.errors,
                    p99_ms: p.p99_ms,
                    affinity_hit_rate: p.affinity_hit_rate,
                })
                .collect(),
        })
        .collect();
    HistoryView {
        resolution_seconds: crate::history::RESOLUTION.as_secs(),
        window_seconds: crate::history::WINDOW.as_secs(),
        upstreams,
    }
}

/// The indicators for `/api/stats`: value, threshold and verdict.
fn indicators(edge: &Edge) -> Vec<IndicatorView> {
    edge.indicators()
        .into_iter()
        .map(|r| IndicatorView {
            name: r.indicator.name.to_string(),
            title: r.indicator.title.to_string(),
            value: r.value,
            threshold: r.indicator.threshold,
            bad_when: match r.indicator.bad_when {
                BadWhen::Above => "above",
                BadWhen::Below => "below",
            }
            .to_string(),
            unit: r.indicator.unit.to_string(),
            ok: r.ok,
        })
        .collect()
}

fn stats(edge: &Edge) -> StatsView {
    let state = edge.state();
    let m = &edge.metrics;
    let (local, shared, miss) = (
        m.lookup_local_hit.get(),
        m.lookup_shared_hit.get(),
        m.lookup_miss.get(),
    );
    let lookups = local + shared + miss;
    let c = &state.config;
    StatsView {
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_seconds: edge.started.elapsed().map_or(0, |d| d.as_secs()),
        ready: edge.is_ready(),
        upstreams: upstreams(edge),
        sessions: SessionCountView {
            count: edge.store.len(),
            max: c.affinity.max_sessions,
        },
        affinity: AffinityView {
            lookups,
            local_hits: local,
            redis_hits: shared,
            misses: miss,
            hit_rate: (lookups > 0).then(|| (local + shared) as f64 / lookups as f64),
            repins: m.repins_total(),
        },
        redis: edge.store.describe(),
        certificates: certificates(edge),
        indicators: indicators(edge),
        last_reload: edge.last_reload.load_full().map(|r| (*r).clone()),
        config: ConfigView {
            generation: state.generation,
            listeners: c
                .listeners
                .iter()
                .map(|l| ListenerView {
                    addr: l.addr.to_string(),
                    tls: l.tls.is_some(),
                })
                .collect(),
            upstreams: c.upstreams.len(),
            key_sources: c.affinity.keys.len(),
            ttl_seconds: c.affinity.ttl.as_secs(),
            balance: format!("{:?}", c.affinity.balance),
            max_retries: c.max_retries,
            last_reload_error: edge.last_reload_error.load_full().map(|e| (*e).clone()),
        },
        tenants: tenants(edge, c.tenants.top, !c.tenants.from.is_empty()),
    }
}

/// `/api/stats` `tenants`: the top `n` of this edge's table by each measure.
fn tenants(edge: &Edge, n: usize, enabled: bool) -> TenantsView {
    let table = &edge.tenants.top;
    let all = table.snapshot();
    let rows = |measure: fn(&Snapshot) -> u64| {
        top_by(&all, n, measure)
            .into_iter()
            .map(|(t, s)| TenantView {
                tenant: t.to_hex(),
                requests: s.requests,
                inflight: s.inflight,
                rejections: s.rejections,
                sessions_created: s.sessions_created,
            })
            .collect()
    };
    TenantsView {
        enabled,
        tracked: all.len(),
        capacity: table.capacity(),
        rejections: TenantRejectionsView {
            new_sessions: edge.metrics.tenant_rejections(RejectReason::NewSessions),
            session_inflight: edge
                .metrics
                .tenant_rejections(RejectReason::SessionInflight),
        },
        by_requests: rows(|s| s.requests),
        by_inflight: rows(|s| s.inflight),
        by_rejections: rows(|s| s.rejections),
        by_sessions_created: rows(|s| s.sessions_created),
    }
}

/// The certificate each TLS listener serves: its subject and expiry.
fn certificates(edge: &Edge) -> Vec<CertificateView> {
    let now = crate::clock::unix_ms() as i64 / 1000;
    edge.certificates
        .all()
        .iter()
        .map(|l| {
            let c = l.current();
            CertificateView {
                listener: l.addr.clone(),
                cert_file: l.files.cert.display().to_string(),
                subject: c.subject.clone(),
                not_after: crate::certificates::expiry_text(c.not_after),
                expires_in_days: (c.not_after - now) as f64 / 86_400.0,
            }
        })
        .collect()
}

/// What happens to a session on its next request, as this edge sees it.
fn session_status(edge: &Edge, upstream: &str) -> &'static str {
    let state = edge.state();
    let Some(u) = state
        .upstreams
        .index_of(upstream)
        .and_then(|i| state.upstreams.get(i))
    else {
        return "moving: upstream removed";
    };
    match u.unusable(clock::now_ms()) {
        None => "active",
        Some(RepinReason::Draining) => "moving: upstream draining",
        Some(RepinReason::Ejected) => "moving: upstream ejected",
        Some(_) => "moving: upstream unhealthy",
    }
}

fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<std::borrow::Cow<'q, str>> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode_str(v).decode_utf8_lossy())
    })
}

async fn list_sessions(edge: &Edge, query: Option<&str>) -> AdminResponse {
    let upstream = query_param(query, "upstream");
    let limit = match query_param(query, "limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) => n.min(10_000),
        Some(Err(_)) => {
            return AdminResponse::error(StatusCode::BAD_REQUEST, "limit must be a number")
        }
    };
    let sessions = edge.store.list(upstream.as_deref(), limit).await;
    AdminResponse::ok(&SessionListView {
        sessions: sessions
            .into_iter()
            .map(|info| session_view(info, None))
            .collect(),
    })
}

/// A session as the API shows it; `status` for a `GET` of that one session.
fn session_view(session: SessionInfo, status: Option<&str>) -> SessionView {
    SessionView {
        session,
        status: status.map(String::from),
    }
}

async fn session(
    edge: &Edge,
    method: &str,
    key: &str,
    query: Option<&str>,
    body: &[u8],
) -> AdminResponse {
    let raw = percent_decode_str(key).collect::<Vec<u8>>();
    if raw.is_empty() {
        return AdminResponse::error(StatusCode::BAD_REQUEST, "empty session key");
    }
    // The session of one tenant: its id is namespaced as the proxy does it.
    let tenant = match query_param(query, "tenant") {
        None => None,
        Some(hex) => match TenantId::from_hex(&hex) {
            Some(t) => Some(t),
            None => return AdminResponse::error(StatusCode::BAD_REQUEST, pins::BAD_TENANT),
        },
    };
    let state = edge.state();
    let hasher = state.keys.hasher();
    let id = hasher.namespaced(tenant, hasher.id(&raw));
    match method {
        "GET" => match edge.store.get(id).await {
            Some(info) => {
                let status = session_status(edge, &info.upstream);
                AdminResponse::ok(&session_view(info, Some(status)))
            }
            None => AdminResponse::error(StatusCode::NOT_FOUND, "no such session"),
        },
        "PUT" => {
            const SHAPE: &str =
                r#"body must be {"upstream": "ID", "metadata": {...}} (metadata optional)"#;
            let bad = |message| AdminResponse::error(StatusCode::BAD_REQUEST, message);
            // Read as a `Value` first: only an object is a pin (serde would
            // also read the struct from an array), and a repeated key counts
            // once, with its last value.
            let Ok(body @ Value::Object(_)) = serde_json::from_slice::<Value>(body) else {
                return bad(SHAPE);
            };
            let Ok(PinRequest {
                upstream: target,
                metadata,
            }) = serde_json::from_value::<PinRequest>(body)
            else {
                return bad(SHAPE);
            };
            let metadata = match metadata {
                None => None,
                Some(m @ Value::Object(_)) => Some(m.to_string()),
                Some(_) => return bad("metadata must be a JSON object"),
            };
            if metadata.as_ref().is_some_and(|m| m.len() > 4096) {
                return bad("metadata must stay under 4 KiB");
            }
            let Some(u) = state
                .upstreams
                .index_of(&target)
                .and_then(|i| state.upstreams.get(i))
            else {
                return bad("no such upstream");
            };
            edge.store.set(id, tenant, u.id.clone(), metadata).await;
            match edge.store.get(id).await {
                Some(info) => AdminResponse::ok(&session_view(info, None)),
                None => {
                    AdminResponse::error(StatusCode::INTERNAL_SERVER_ERROR, "pin was not stored")
                }
            }
        }
        "DELETE" => match edge.store.forget(id).await {
            true => AdminResponse::ok(&DeletedView { deleted: true }),
            false => AdminResponse::error(StatusCode::NOT_FOUND, "no such session"),
        },
        _ => AdminResponse::error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    }
}

#[cfg(test)]
mod tests;

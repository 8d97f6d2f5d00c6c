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
//! POST   /api/reload                    200 with the new generation, or 400 with the errors
//! GET    /                              the HTML dashboard
//! ```
//!
//! With a token configured, every route but the dashboard's page needs
//! `Authorization: Bearer <token>`, compared in constant time. Errors share one JSON shape:
//! `{"error": "..."}`.

use crate::clock;
use crate::outcome::RepinReason;
use crate::state::Edge;
use crate::upstream::Upstream;
use percent_encoding::percent_decode_str;
use serde_json::{json, Value};
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
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl AdminResponse {
    fn json(status: u16, value: &Value) -> Self {
        AdminResponse {
            status,
            content_type: "application/json",
            body: serde_json::to_vec_pretty(value).unwrap_or_default(),
        }
    }

    pub fn error(status: u16, message: &str) -> Self {
        Self::json(status, &json!({ "error": message }))
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
        return AdminResponse::error(401, "missing or wrong bearer token");
    }
    let segments: Vec<&str> = req
        .path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    match (req.method, segments.as_slice()) {
        ("GET", []) => AdminResponse {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: DASHBOARD.as_bytes().to_vec(),
        },
        ("GET", ["healthz"]) => AdminResponse::json(200, &json!({ "status": "ok" })),
        ("GET", ["readyz"]) => match edge.is_ready() {
            true => AdminResponse::json(200, &json!({ "ready": true })),
            false => AdminResponse::json(
                503,
                &json!({ "ready": false, "reason": "first health-check round not finished" }),
            ),
        },
        ("GET", ["metrics"]) => {
            edge.refresh_scrape_gauges();
            AdminResponse {
                status: 200,
                content_type: "text/plain; version=0.0.4",
                body: edge.metrics.render(),
            }
        }
        ("GET", ["api", "stats"]) => AdminResponse::json(200, &stats(edge)),
        ("GET", ["api", "history"]) => AdminResponse::json(200, &edge.history.json(&edge.sample())),
        ("GET", ["api", "upstreams"]) => AdminResponse::json(200, &Value::Array(upstreams(edge))),
        ("POST", ["api", "upstreams", id, action @ ("drain" | "undrain")]) => {
            drain(edge, id, *action == "drain").await
        }
        ("GET", ["api", "sessions"]) => list_sessions(edge, req.query).await,
        (method, ["api", "sessions", key]) => session(edge, method, key, req.body).await,
        ("POST", ["api", "reload"]) => match edge.reload().await {
            Ok(report) => AdminResponse::json(200, &json!(report)),
            Err(errors) => AdminResponse::json(
                400,
                &json!({ "error": "config rejected; the running config stays", "errors": errors }),
            ),
        },
        (
            _,
            ["healthz" | "readyz" | "metrics"]
            | []
            | ["api", "stats" | "history" | "upstreams" | "sessions" | "reload"],
        )
        | (_, ["api", "upstreams", _, "drain" | "undrain"]) => {
            AdminResponse::error(405, "method not allowed")
        }
        _ => AdminResponse::error(404, "no such route"),
    }
}

/// What an upstream's answers reported of tokens, and the share of prompt
/// tokens read from its cache: the proof that affinity keeps caches warm.
fn tokens_json([input, cache_read, cache_creation, output]: [u64; 4]) -> Value {
    let prompt = input + cache_read + cache_creation;
    json!({
        "input": input,
        "cache_read_input": cache_read,
        "cache_creation_input": cache_creation,
        "output": output,
        "cache_read_ratio": if prompt == 0 { Value::Null } else { json!(cache_read as f64 / prompt as f64) },
    })
}

fn upstream_json(u: &Upstream, sessions: u64, now: u64, tokens: [u64; 4]) -> Value {
    let s = &u.stats;
    let connects = s.connects.load(Ordering::Relaxed);
    let reused = s.reused.load(Ordering::Relaxed);
    let mean_connect_ms = match connects {
        0 => Value::Null,
        n => json!(s.connect_micros.load(Ordering::Relaxed) as f64 / n as f64 / 1000.0),
    };
    let reuse_ratio = match connects + reused {
        0 => Value::Null,
        n => json!(reused as f64 / n as f64),
    };
    json!({
        "id": &*u.id,
        "addr": u.spec.addr.to_string(),
        "weight": u.spec.weight,
        "tls": u.spec.tls.is_some(),
        "healthy": u.health.is_healthy(),
        "ejected": u.ejection.is_ejected(now),
        "ejected_for_seconds": u.ejection.remaining_ms(now) as f64 / 1000.0,
        "ejections": u.ejection.ejections(),
        "draining": u.is_draining(),
        "unusable": u.unusable(now).map(|r| r.label()),
        "inflight": u.inflight(),
        "sessions": sessions,
        "requests": s.requests.load(Ordering::Relaxed),
        "errors": s.errors.load(Ordering::Relaxed),
        "connections_opened": connects,
        "mean_connect_ms": mean_connect_ms,
        "pooled_reuse_ratio": reuse_ratio,
        "tokens": tokens_json(tokens),
    })
}

fn upstreams(edge: &Edge) -> Vec<Value> {
    let counts = edge.store.counts();
    let now = clock::now_ms();
    edge.state()
        .upstreams
        .all()
        .iter()
        .map(|u| {
            let sessions = counts.get(&u.id).copied().unwrap_or(0);
            upstream_json(u, sessions, now, edge.metrics.tokens_of(&u.id))
        })
        .collect()
}

fn stats(edge: &Edge) -> Value {
    let state = edge.state();
    let m = &edge.metrics;
    let (local, shared, miss) = (
        m.lookup_local_hit.get(),
        m.lookup_shared_hit.get(),
        m.lookup_miss.get(),
    );
    let lookups = local + shared + miss;
    let repins = m.repins_total();
    let c = &state.config;
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": edge.started.elapsed().map_or(0, |d| d.as_secs()),
        "ready": edge.is_ready(),
        "upstreams": upstreams(edge),
        "sessions": { "count": edge.store.len(), "max": c.affinity.max_sessions },
        "affinity": {
            "lookups": lookups,
            "local_hits": local,
            "redis_hits": shared,
            "misses": miss,
            "hit_rate": if lookups == 0 { Value::Null } else { json!((local + shared) as f64 / lookups as f64) },
            "repins": repins,
        },
        "redis": edge.store.describe(),
        "certificates": certificates(edge),
        "indicators": edge.indicators(),
        "last_reload": edge.last_reload.load_full().map(|r| json!(*r)),
        "config": {
            "generation": state.generation,
            "listeners": c.listeners.iter().map(|l| json!({"addr": l.addr.to_string(), "tls": l.tls.is_some()})).collect::<Vec<_>>(),
            "upstreams": c.upstreams.len(),
            "key_sources": c.affinity.keys.len(),
            "ttl_seconds": c.affinity.ttl.as_secs(),
            "balance": format!("{:?}", c.affinity.balance),
            "max_retries": c.max_retries,
            "last_reload_error": edge.last_reload_error.load_full().map(|e| json!(*e)),
        },
    })
}

/// The certificate each TLS listener serves: its subject and expiry.
fn certificates(edge: &Edge) -> Value {
    let now = crate::clock::unix_ms() as i64 / 1000;
    let listeners = edge.certificates.all().iter().map(|l| {
        let c = l.current();
        json!({
            "listener": l.addr,
            "cert_file": l.files.cert.display().to_string(),
            "subject": c.subject,
            "not_after": crate::certificates::expiry_text(c.not_after),
            "expires_in_days": (c.not_after - now) as f64 / 86_400.0,
        })
    });
    Value::Array(listeners.collect())
}

async fn drain(edge: &Edge, id: &str, on: bool) -> AdminResponse {
    let state = edge.state();
    let Some(u) = state
        .upstreams
        .index_of(id)
        .and_then(|i| state.upstreams.get(i))
    else {
        return AdminResponse::error(404, "no such upstream");
    };
    u.set_draining(on);
    let shared = edge.store.share_drain(&u.id, on).await;
    log::info!(
        "upstream {} {}",
        u.id,
        if on { "draining" } else { "undrained" }
    );
    AdminResponse::json(
        200,
        &json!({ "id": &*u.id, "draining": on, "shared": shared }),
    )
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
        Some(Err(_)) => return AdminResponse::error(400, "limit must be a number"),
    };
    let sessions = edge.store.list(upstream.as_deref(), limit).await;
    AdminResponse::json(200, &json!({ "sessions": sessions }))
}

async fn session(edge: &Edge, method: &str, key: &str, body: &[u8]) -> AdminResponse {
    let raw = percent_decode_str(key).collect::<Vec<u8>>();
    if raw.is_empty() {
        return AdminResponse::error(400, "empty session key");
    }
    let state = edge.state();
    let id = state.keys.hasher().id(&raw);
    match method {
        "GET" => match edge.store.get(id).await {
            Some(info) => {
                let mut body = json!(info);
                body["status"] = json!(session_status(edge, &info.upstream));
                AdminResponse::json(200, &body)
            }
            None => AdminResponse::error(404, "no such session"),
        },
        "PUT" => {
            const SHAPE: &str =
                r#"body must be {"upstream": "ID", "metadata": {...}} (metadata optional)"#;
            let Some(body) = serde_json::from_slice::<Value>(body).ok() else {
                return AdminResponse::error(400, SHAPE);
            };
            let Some(target) = body.get("upstream").and_then(Value::as_str) else {
                return AdminResponse::error(400, SHAPE);
            };
            let metadata = match body.get("metadata") {
                None => None,
                Some(m @ Value::Object(_)) => Some(m.to_string()),
                Some(_) => return AdminResponse::error(400, "metadata must be a JSON object"),
            };
            if metadata.as_ref().is_some_and(|m| m.len() > 4096) {
                return AdminResponse::error(400, "metadata must stay under 4 KiB");
            }
            let Some(u) = state
                .upstreams
                .index_of(target)
                .and_then(|i| state.upstreams.get(i))
            else {
                return AdminResponse::error(400, "no such upstream");
            };
            edge.store.set(id, u.id.clone(), metadata).await;
            match edge.store.get(id).await {
                Some(info) => AdminResponse::json(200, &json!(info)),
                None => AdminResponse::error(500, "pin was not stored"),
            }
        }
        "DELETE" => match edge.store.forget(id).await {
            true => AdminResponse::json(200, &json!({ "deleted": true })),
            false => AdminResponse::error(404, "no such session"),
        },
        _ => AdminResponse::error(405, "method not allowed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use std::sync::Arc;

    fn edge(extra: &str) -> Arc<Edge> {
        let text = format!(
            "listen: [{{addr: 127.0.0.1:8080}}]\nupstreams: [{{id: a, addr: 127.0.0.1:9001}}, {{id: b, addr: 127.0.0.1:9002}}]\naffinity: {{keys: [{{header: x-session-id}}]}}\n{extra}"
        );
        Edge::new(config::parse(&text).expect("valid config"))
    }

    fn call(
        edge: &Edge,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: &str,
    ) -> AdminResponse {
        let (path, query) = path
            .split_once('?')
            .map_or((path, None), |(p, q)| (p, Some(q)));
        let req = AdminRequest {
            method,
            path,
            query,
            authorization: auth.map(str::as_bytes),
            body: body.as_bytes(),
        };
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(handle(edge, req))
    }

    #[test]
    fn routes_without_sockets() {
        let e = edge("");
        assert_eq!(
            call(&e, "GET", "/readyz", None, "").status,
            503,
            "not ready before the first health round"
        );
        let _ = e.mark_ready();
        // In order: each step may depend on the one before.
        let steps: &[(&str, &str, &str, u16)] = &[
            ("GET", "/healthz", "", 200),
            ("GET", "/readyz", "", 200),
            ("POST", "/api/upstreams/a/drain", "", 200),
            ("POST", "/api/upstreams/zz/drain", "", 404),
            ("GET", "/api/upstreams/a/drain", "", 405),
            ("PUT", "/api/sessions/alice", r#"{"upstream":"b"}"#, 200),
            ("PUT", "/api/sessions/alice", r#"{"upstream":"zz"}"#, 400),
            (
                "PUT",
                "/api/sessions/alice",
                r#"{"upstream":"b","metadata":[1]}"#,
                400,
            ),
            (
                "PUT",
                "/api/sessions/alice",
                r#"{"upstream":"b","metadata":{"team":"red"}}"#,
                200,
            ),
            ("PUT", "/api/sessions/alice", r#"{"upstream":"b"}"#, 200),
            ("GET", "/api/sessions/alice", "", 200),
            ("GET", "/api/sessions?limit=x", "", 400),
            ("POST", "/api/reload", "", 400),
            ("GET", "/nowhere", "", 404),
        ];
        for (method, path, body, status) in steps {
            assert_eq!(
                call(&e, method, path, None, body).status,
                *status,
                "{method} {path}"
            );
        }
        let ups = call(&e, "GET", "/api/upstreams", None, "").json_body();
        assert_eq!(
            (ups[0]["draining"].clone(), ups[1]["healthy"].clone()),
            (json!(true), json!(true))
        );
        let s = call(&e, "GET", "/api/sessions/alice", None, "").json_body();
        assert_eq!(s["upstream"], "b");
        assert_eq!(s["status"], "active");
        assert_eq!(
            s["metadata"],
            json!({"team": "red"}),
            "a later pin keeps the metadata"
        );
        assert_eq!(s["id"], e.state().keys.hasher().id(b"alice").to_hex());
        let listed = call(&e, "GET", "/api/sessions?upstream=b&limit=5", None, "").json_body();
        assert_eq!(listed["sessions"].as_array().map(Vec::len), Some(1));
        assert_eq!(
            call(&e, "DELETE", "/api/sessions/alice", None, "").status,
            200
        );
        assert_eq!(
            call(&e, "DELETE", "/api/sessions/alice", None, "").status,
            404
        );
        let stats = call(&e, "GET", "/api/stats", None, "").json_body();
        assert_eq!(
            (
                stats["config"]["upstreams"].clone(),
                stats["sessions"]["count"].clone()
            ),
            (json!(2), json!(0))
        );
        let metrics = call(&e, "GET", "/metrics", None, "");
        assert!(String::from_utf8_lossy(&metrics.body).contains("relay_edge_config_generation 1"));
    }

    #[test]
    fn token_is_required_when_configured() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "tok\n").expect("write");
        let e = edge(&format!("admin: {{token_file: {}}}\n", file.display()));
        assert_eq!(call(&e, "GET", "/healthz", None, "").status, 401);
        assert_eq!(
            call(&e, "GET", "/", None, "").status,
            200,
            "the page asks for the token itself"
        );
        assert_eq!(call(&e, "GET", "/api/stats", None, "").status, 401);
        assert_eq!(
            call(&e, "GET", "/healthz", Some("Bearer to"), "").status,
            401
        );
        assert_eq!(
            call(&e, "GET", "/healthz", Some("Basic tok"), "").status,
            401
        );
        assert_eq!(
            call(&e, "GET", "/healthz", Some("Bearer tok"), "").status,
            200
        );
    }
}

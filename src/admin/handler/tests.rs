//! The admin handler's tests: every route, with and without a token, on an
//! in-process edge.

use super::*;
use crate::config;
use serde_json::json;
use std::sync::Arc;

fn edge(extra: &str) -> Arc<Edge> {
    let text = format!(
        "listen: [{{addr: 127.0.0.1:8080}}]\nupstreams: [{{id: a, addr: 127.0.0.1:9001}}, {{id: b, addr: 127.0.0.1:9002}}]\naffinity: {{keys: [{{header: x-session-id}}]}}\n{extra}"
    );
    Edge::new(config::parse(&text).expect("valid config"))
}

fn call(edge: &Edge, method: &str, path: &str, auth: Option<&str>, body: &str) -> AdminResponse {
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
        ("DELETE", "/api/sessions", "", 400),
        ("DELETE", "/api/sessions?all=true&upstream=a", "", 400),
        ("DELETE", "/api/sessions?upstream=a", "", 200),
        ("PUT", "/api/sessions", "", 405),
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

/// What the handler writes is what `ctl` reads: the answer reads as its
/// view, and the view writes the same bytes again (no field lost or added).
fn reads_back<T: serde::de::DeserializeOwned + Serialize>(what: &str, r: AdminResponse) {
    let view: T = match serde_json::from_slice(&r.body) {
        Ok(view) => view,
        Err(e) => panic!("{what}: {e}: {}", String::from_utf8_lossy(&r.body)),
    };
    let again = AdminResponse::json(r.status, &view).body;
    assert_eq!(
        String::from_utf8_lossy(&again),
        String::from_utf8_lossy(&r.body),
        "{what}"
    );
}

#[test]
fn every_answer_reads_back_as_its_view() {
    use crate::admin::views::*;
    let e = edge("");
    reads_back::<ReadyView>("not ready", call(&e, "GET", "/readyz", None, ""));
    let _ = e.mark_ready();
    e.history.record(e.sample());
    let pin = r#"{"upstream":"b","metadata":{"team":"red"}}"#;
    let answers: [(&str, &str, &str); 4] = [
        ("PUT", "/api/sessions/alice", pin),
        ("GET", "/api/sessions/alice", ""),
        ("POST", "/api/upstreams/a/drain", ""),
        ("GET", "/api/upstreams/a/drain", ""),
    ];
    let [put, get, drain, wrong] = answers.map(|(m, p, b)| call(&e, m, p, None, b));
    reads_back::<SessionView>("PUT session", put);
    reads_back::<SessionView>("GET session", get);
    reads_back::<DrainView>("drain", drain);
    reads_back::<ErrorView>("405", wrong);
    let get = |path| call(&e, "GET", path, None, "");
    reads_back::<ReadyView>("ready", get("/readyz"));
    reads_back::<HealthView>("healthz", get("/healthz"));
    reads_back::<SessionListView>("sessions", get("/api/sessions"));
    reads_back::<Vec<UpstreamView>>("upstreams", get("/api/upstreams"));
    reads_back::<HistoryView>("history", get("/api/history"));
    reads_back::<StatsView>("stats", get("/api/stats"));
    reads_back::<ErrorView>("reload", call(&e, "POST", "/api/reload", None, ""));
    reads_back::<DeletedView>(
        "DELETE session",
        call(&e, "DELETE", "/api/sessions/alice", None, ""),
    );
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

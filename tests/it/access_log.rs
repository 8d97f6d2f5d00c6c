//! The access log: one line per request with what happened to it, written
//! off the request path, reopened on SIGUSR1, sampled or off.

use crate::common::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

async fn until_lines(path: &Path, n: usize) -> Vec<String> {
    eventually(
        Duration::from_secs(10),
        &format!("{n} access log lines"),
        || async { lines(path).len() >= n },
    )
    .await;
    let found = lines(path);
    assert_eq!(found.len(), n, "exactly {n} lines: {found:#?}");
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_is_one_json_line_and_sigusr1_reopens_the_file() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let edge = TestEdge::new(&format!(
        "{}affinity: {{keys: [{{header: x-session-id}}]}}\naccess_log: {{path: {}, query: true}}\n",
        upstreams_yaml(&ups),
        log.display()
    ))
    .start()
    .await;
    let key = [("x-session-id", "alice")];
    let first = edge.post("/v1/messages", &key, b"{}").await;
    let again = edge.post("/v1/messages", &key, b"{}").await;
    let stream = edge.post("/v1/messages", &key, br#"{"stream":true}"#).await;
    let unkeyed = edge.get("/v1/models?page=2", &[]).await;
    for r in [&first, &again, &stream, &unkeyed] {
        assert_eq!(r.status, 200);
    }
    let parsed: Vec<Value> = until_lines(&log, 4)
        .await
        .iter()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
        .collect();
    // Lines are written as requests end; find each by what it says.
    let find = |what: &str, f: &dyn Fn(&Value) -> bool| {
        parsed
            .iter()
            .find(|v| f(v))
            .cloned()
            .unwrap_or_else(|| panic!("no line for {what}: {parsed:#?}"))
    };
    let new = find("the first request", &|v| v["affinity"] == "new");
    let stream_line = find("the stream", &|v| v["stream"] == "completed");
    let hit = find("the second request", &|v| {
        v["affinity"] == "hit" && v["stream"].is_null()
    });
    let none = find("the unkeyed request", &|v| v["affinity"] == "none");

    let home = first.upstream();
    for v in [&new, &hit, &stream_line] {
        assert_eq!(v["upstream"], home.as_str(), "{v}");
        assert_eq!(v["method"], "POST");
        assert_eq!(v["path"], "/v1/messages");
        assert_eq!(v["status"], 200);
        assert_eq!(v["attempts"], 1);
        let session = v["session"].as_str().expect("a short session hash");
        assert!(session.len() == 12 && session.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(v["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:")));
        let head = v["upstream_head_ms"].as_f64().expect("time to the head");
        assert!(v["total_ms"].as_f64().expect("total time") >= head, "{v}");
    }
    assert_eq!(new["session"], hit["session"]);
    assert_eq!(new["bytes_in"], 2);
    assert_eq!(new["bytes_out"], first.body.len());
    assert_eq!(stream_line["bytes_out"], stream.body.len());
    assert!(
        stream_line["first_event_ms"].as_f64().is_some(),
        "{stream_line}"
    );
    assert_eq!(
        stream_line["cache_read_tokens"], 900,
        "the demo relay's usage"
    );
    assert!(new["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(
        none["path"], "/v1/models?page=2",
        "access_log.query keeps the query"
    );
    assert_eq!(none["session"], Value::Null);
    assert!(
        !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("alice"),
        "raw keys never reach the log"
    );

    // logrotate: the file is moved away, then SIGUSR1.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    edge.signal("USR1");
    eventually(Duration::from_secs(10), "the log reopened", || async {
        log.exists()
    })
    .await;
    edge.post("/v1/messages", &key, b"{}").await;
    until_lines(&log, 1).await;
    assert_eq!(lines(&rotated).len(), 4, "the rotated file is left alone");
    let metrics = edge.metrics().await;
    assert!(
        metrics.contains("relay_edge_access_log_lines_total 5"),
        "{metrics}"
    );
    assert!(metrics.contains("relay_edge_access_log_dropped_total 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_combined_format_is_nginx_combined_then_the_edge_fields() {
    let ups = upstreams(&["relay-a"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let edge = TestEdge::new(&format!(
        "{}affinity: {{keys: [{{header: x-session-id}}]}}\naccess_log: {{path: {}, format: combined}}\n",
        upstreams_yaml(&ups),
        log.display()
    ))
    .start()
    .await;
    let r = edge
        .post(
            "/v1/messages?secret=1",
            &[
                ("x-session-id", "bob"),
                ("user-agent", "claude-cli/2.0 \"test\""),
            ],
            b"{}",
        )
        .await;
    let line = until_lines(&log, 1).await.remove(0);
    let (head, fields) = line
        .split_once("\" upstream=")
        .unwrap_or_else(|| panic!("combined, then fields: {line}"));
    assert!(head.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(
        head.contains(&format!(
            "\"POST /v1/messages HTTP/1.1\" 200 {} \"-\" \"claude-cli/2.0 \\x22test\\x22",
            r.body.len()
        )),
        "{line}"
    );
    assert!(fields.starts_with("relay-a session="), "{line}");
    assert!(
        fields.contains(" affinity=new attempts=1 bytes_in=2 "),
        "{line}"
    );
    assert!(!line.contains("secret"), "no query by default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_at_zero_logs_nothing_and_a_reload_turns_it_on() {
    let ups = upstreams(&["relay-a"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let edge = TestEdge::new(&format!(
        "{}access_log: {{path: {}, sample: 0}}\n",
        upstreams_yaml(&ups),
        log.display()
    ))
    .start()
    .await;
    for _ in 0..20 {
        assert_eq!(edge.get("/v1/models", &[]).await.status, 200);
    }
    // Counted in the same logging phase that would have queued the line.
    eventually(Duration::from_secs(5), "20 requests counted", || async {
        edge.metrics()
            .await
            .contains("relay_edge_requests_total{code=\"200\",upstream=\"relay-a\"} 20")
    })
    .await;
    assert!(edge
        .metrics()
        .await
        .contains("relay_edge_access_log_lines_total 0"));
    assert_eq!(lines(&log).len(), 0);
    edge.rewrite("sample: 0", "sample: 1");
    assert_eq!(edge.admin_json("POST", "/api/reload", b"").await.0, 200);
    edge.get("/v1/models", &[]).await;
    until_lines(&log, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_file_that_cannot_be_opened_stops_the_start_with_its_path() {
    let ups = upstreams(&["relay-a"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("c.yaml");
    std::fs::write(
        &conf,
        format!(
            "listen: [{{addr: 127.0.0.1:{}}}]\n{}access_log: {{path: {}/no/such/dir/access.log}}\nadmin: {{listen: 127.0.0.1:{}}}\n",
            free_port(),
            upstreams_yaml(&ups),
            dir.path().display(),
            free_port()
        ),
    )
    .expect("write config");
    let out = std::process::Command::new(BIN)
        .arg("-c")
        .arg(&conf)
        .output()
        .expect("relay-edge runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("access_log.path: cannot open") && stderr.contains("no/such/dir"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_requests_lines_are_written_before_a_graceful_exit() {
    let ups = upstreams(&["relay-a"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    // No quiet time after the drain: the exit follows the last request.
    let mut edge = TestEdge::new(&format!(
        "{}access_log: {{path: {}}}\n",
        upstreams_yaml(&ups),
        log.display()
    ))
    .threads(1)
    .grace("10s")
    .server("drain_quiet: 0s")
    .start()
    .await;
    for _ in 0..50 {
        assert_eq!(edge.get("/v1/models", &[]).await.status, 200);
    }
    // At once: the writer takes its queue only every 25 ms.
    edge.signal("TERM");
    assert_eq!(edge.wait_exit(Duration::from_secs(20)), Some(0));
    assert_eq!(lines(&log).len(), 50);
}

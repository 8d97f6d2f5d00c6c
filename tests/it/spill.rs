//! Large bodies read early spill to disk past `limits.body_memory_per_request`:
//! they still route by a key near their end, reach the relay byte for byte
//! on both paths and on a retry, hold no more than their share of memory
//! while they stall, leave no named file behind, and fall through intact
//! when the disk budget is full.

use crate::common::*;
use relay_edge::demo::{DemoUpstream, Fault};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const MIB: usize = 1024 * 1024;

/// A Claude Code shaped body of about `size` bytes: `messages`, `system`
/// and `tools` first, `metadata.user_id` near the end, then `stream`.
fn claude_body(size: usize, user_id: &str, stream: bool) -> Vec<u8> {
    let mut messages = String::with_capacity(size);
    let mut n = 0;
    while messages.len() < size {
        if n > 0 {
            messages.push(',');
        }
        messages.push_str(&format!(
            r#"{{"role":"user","content":[{{"type":"text","text":"turn {n}: edit \"src/main.rs\" at line {n}, caf\u00e9"}}]}}"#
        ));
        n += 1;
    }
    format!(
        r#"{{"model":"claude-x","messages":[{messages}],"system":[{{"type":"text","text":"You are Claude Code."}}],"tools":[{{"name":"Bash","input_schema":{{"type":"object"}}}}],"metadata":{{"user_id":"{user_id}"}},"max_tokens":32000,"thinking":{{"type":"enabled","budget_tokens":1024}},"context_management":{{}},"stream":{stream}}}"#
    )
    .into_bytes()
}

fn config(ups: &[DemoUpstream], dir: &std::path::Path, limits: &str) -> String {
    format!(
        "{}affinity: {{keys: [{{json: /metadata/user_id}}, {{header: x-session-id}}]}}\n\
         limits: {{body_memory_per_request: 65536, body_spill_dir: {}{limits}}}\n",
        upstreams_yaml(ups),
        dir.display()
    )
}

fn last_body(ups: &[DemoUpstream], name: &str) -> Vec<u8> {
    let up = ups.iter().find(|u| u.name == name).expect("upstream");
    up.recorded().pop().expect("a recorded request").body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spilled_body_routes_by_its_key_and_arrives_byte_for_byte_on_both_paths_and_on_a_retry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    // Health checks that a relay busy recording a 4 MiB body still passes
    // (the tests' default times out after 200 ms): the retry needs the
    // other relay healthy.
    let edge = TestEdge::new(&format!(
        "{}health_check: {{path: /health, interval: 200ms, timeout: 10s}}\n",
        config(&ups, dir.path(), "")
    ))
    .own_health_check()
    .start()
    .await;
    for (key, home, stream) in [
        ("spill-json-a", "relay-a", false),
        ("spill-json-b", "relay-b", false),
        ("spill-sse-a", "relay-a", true),
        ("spill-sse-b", "relay-b", true),
    ] {
        let (status, _) = edge
            .admin_json(
                "PUT",
                &format!("/api/sessions/{key}"),
                format!(r#"{{"upstream":"{home}"}}"#).as_bytes(),
            )
            .await;
        assert_eq!(status, 200);
        let body = claude_body(4 * MIB, key, stream);
        let r = edge
            .post(
                "/v1/messages?beta=true",
                &[("content-type", "application/json")],
                &body,
            )
            .await;
        assert_eq!(r.status, 200, "{key}: {}", r.text());
        assert_eq!(r.upstream(), home, "{key} goes where its pin says");
        if stream {
            assert!(r.text().contains("message_stop"), "{key}: a whole stream");
        }
        assert!(
            last_body(&ups, home) == body,
            "{key}: the relay got the body byte for byte"
        );

        // The pinned relay is overloaded once: the other one gets the same bytes.
        let other = if home == "relay-a" {
            "relay-b"
        } else {
            "relay-a"
        };
        let relay = ups.iter().find(|u| u.name == home).expect("home");
        relay.fail_next(1, Fault::Status(529));
        let r = edge
            .post(
                "/v1/messages?beta=true",
                &[("content-type", "application/json")],
                &body,
            )
            .await;
        assert_eq!(r.status, 200, "{key} retried: {}", r.text());
        assert_eq!(r.upstream(), other, "{key}: the retry went elsewhere");
        assert!(
            last_body(&ups, home) == body && last_body(&ups, other) == body,
            "{key}: both attempts sent the body byte for byte"
        );
    }
    let metrics = edge.metrics().await;
    assert_eq!(
        gauge(&metrics, "relay_edge_body_spill_bytes"),
        0,
        "{metrics}"
    );
    assert_eq!(
        gauge(&metrics, "relay_edge_body_memory_bytes"),
        0,
        "{metrics}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("dir").count(),
        0,
        "no named file is left"
    );
}

fn gauge(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} in {metrics}"))
}

/// The resident memory of a process, in bytes.
fn rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// The sizes of the files a process holds open in `dir` (unlinked ones
/// included, as `/proc` shows them).
fn open_files_in(pid: u32, dir: &std::path::Path) -> Vec<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.filter_map(|fd| {
        let fd = fd.ok()?.path();
        let target = std::fs::read_link(&fd).ok()?;
        target
            .starts_with(dir)
            .then(|| std::fs::metadata(&fd).ok().map(|m| m.len()))
            .flatten()
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_32_mib_bodies_hold_their_memory_share_and_spill_the_rest_unlinked() {
    const CLIENTS: usize = 3;
    const DECLARED: usize = 32 * MIB;
    const SENT: usize = 31 * MIB;
    let dir = tempfile::tempdir().expect("tempdir");
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = TestEdge::new(&format!(
        "{}timeouts: {{client_body: 60s}}\n",
        config(&ups, dir.path(), "")
    ))
    .start()
    .await;
    let before = rss(edge.pid());
    let body = claude_body(DECLARED - 4096, "stalled", false);
    assert!(body.len() <= DECLARED, "within affinity.max_body_bytes");
    let mut stallers = Vec::new();
    for _ in 0..CLIENTS {
        let mut c = TcpStream::connect(edge.addr).await.expect("connect");
        c.write_all(
            format!(
                "POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .expect("head");
        c.write_all(&body[..SENT]).await.expect("31 MiB");
        stallers.push(c);
    }
    // Every body's bytes but what sits in socket buffers are in its file.
    eventually(
        Duration::from_secs(60),
        "the stalled bodies are on disk",
        || async {
            let sizes = open_files_in(edge.pid(), dir.path());
            sizes.len() == CLIENTS && sizes.iter().all(|&s| s as usize >= SENT - 8 * MIB)
        },
    )
    .await;
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("dir").count(),
        0,
        "the spill files have no name"
    );
    let metrics = edge.metrics().await;
    let memory = gauge(&metrics, "relay_edge_body_memory_bytes") as usize;
    let spilled = gauge(&metrics, "relay_edge_body_spill_bytes") as usize;
    assert!(memory <= CLIENTS * 65536, "memory held: {memory}");
    assert_eq!(spilled, CLIENTS * (body.len() - 65536), "disk held");
    let grown = rss(edge.pid()).saturating_sub(before);
    assert!(
        grown < 24 * MIB,
        "{CLIENTS} x {SENT} bytes read, but the edge grew by {grown} bytes"
    );
    drop(stallers);
    eventually(
        Duration::from_secs(10),
        "the stalled bodies give their shares back",
        || async {
            let metrics = edge.metrics().await;
            gauge(&metrics, "relay_edge_body_spill_bytes") == 0
                && gauge(&metrics, "relay_edge_body_memory_bytes") == 0
                && open_files_in(edge.pid(), dir.path()).is_empty()
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_with_no_room_on_disk_falls_through_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    for limits in [", body_disk: 1048576", ", body_disk: 0"] {
        let edge = TestEdge::new(&config(&ups, dir.path(), limits))
            .start()
            .await;
        let home = edge
            .get("/", &[("x-session-id", "by-header")])
            .await
            .upstream();
        let body = claude_body(4 * MIB, "by-body", false);
        let r = edge
            .post(
                "/v1/messages",
                &[
                    ("content-type", "application/json"),
                    ("x-session-id", "by-header"),
                ],
                &body,
            )
            .await;
        assert_eq!(r.status, 200, "{limits}: {}", r.text());
        assert_eq!(r.upstream(), home, "{limits}: keyed by the next source");
        assert!(last_body(&ups, &home) == body, "{limits}: intact");
        let (status, _) = edge.admin_json("GET", "/api/sessions/by-body", b"").await;
        assert_eq!(status, 404, "{limits}: the body was not read for its key");
    }
}

#[test]
fn a_missing_spill_directory_fails_the_check_with_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("edge.yaml");
    std::fs::write(
        &file,
        "listen: [{addr: 127.0.0.1:0}]\nupstreams: [{id: a, addr: 127.0.0.1:9}]\nlimits: {body_spill_dir: /nonexistent/relay-edge-bodies}\n",
    )
    .expect("write");
    let out = std::process::Command::new(BIN)
        .arg("-c")
        .arg(&file)
        .arg("--check")
        .output()
        .expect("relay-edge runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("limits.body_spill_dir: /nonexistent/relay-edge-bodies"),
        "{stderr}"
    );
}

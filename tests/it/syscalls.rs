//! What a request costs in syscalls, counted with `strace` on the running
//! edge: counts, not times, so they hold on a busy machine.

use crate::common::*;
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `strace` attached to every thread of a process, logging its writes.
struct Trace {
    child: Child,
    log: std::path::PathBuf,
}

impl Trace {
    async fn attach(pid: u32, dir: &std::path::Path) -> Trace {
        let log = dir.join("strace.log");
        let child = Command::new("strace")
            .args([
                "-f",
                "-qq",
                "-s",
                "16",
                "-e",
                "trace=write,writev,sendto,sendmsg",
            ])
            .arg("-o")
            .arg(&log)
            .args(["-p", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("strace is missing: apt-get install -y strace");
        eventually(
            Duration::from_secs(10),
            "strace holds every thread",
            || async { threads(pid).iter().all(|tid| traced(pid, *tid)) },
        )
        .await;
        Trace { child, log }
    }

    /// Detach, and return each write: (file descriptor, its first bytes).
    fn finish(mut self) -> Vec<(u32, String)> {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let text = std::fs::read_to_string(&self.log).expect("strace's log");
        text.lines().filter_map(write_of).collect()
    }
}

fn threads(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn traced(pid: u32, tid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0"))
    })
}

/// `1234 sendto(9, "HTTP/1.1 200 OK\r\n"..., 812, ...) = 812` or
/// `1234 writev(9, [{iov_base="POST /v1/me"...`: the descriptor and the
/// first quoted bytes.
fn write_of(line: &str) -> Option<(u32, String)> {
    let call = line.split_once(' ').map_or(line, |(_, rest)| rest);
    let (_, args) = call.split_once('(')?;
    let fd = args.split(',').next()?.trim().parse().ok()?;
    let text = args.split_once('"').map_or("", |(_, t)| t);
    Some((fd, text.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_that_came_at_once_leaves_in_one_write() {
    let ups = upstreams(&["relay-a"]).await;
    let edge = TestEdge::new(&upstreams_yaml(&ups))
        .threads(1)
        .start()
        .await;
    // Claude Code's shape: over 64 KiB, `"stream": true` last.
    let body = String::from_utf8(messages_body(90 * 1024, "one-write")).expect("text");
    let body = body.replace(r#""stream":false,"#, "");
    let body = format!("{},\"stream\":true}}", &body[..body.len() - 1]).into_bytes();
    let mut conn = Conn::open(edge.addr).await.expect("connect");
    let path = "/v1/messages?sse=30&burst=1";
    let warm = conn.request("POST", path, &[], &body).await.expect("warm");
    assert_eq!(warm.status, 200, "{}", warm.text());
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = Trace::attach(edge.pid(), dir.path()).await;
    const REQUESTS: usize = 40;
    for i in 0..REQUESTS {
        let r = conn
            .request("POST", path, &[], &body)
            .await
            .expect("stream");
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert!(
            r.text().ends_with("data: {\"type\":\"message_stop\"}\n\n"),
            "request {i} is whole: {}",
            r.text()
        );
    }
    let writes = trace.finish();
    let answers: Vec<u32> = writes
        .iter()
        .filter(|(_, text)| text.starts_with("HTTP/1.1 200"))
        .map(|(fd, _)| *fd)
        .collect();
    assert_eq!(answers.len(), REQUESTS, "one answer head per request");
    let client = answers[0];
    // Writes to connections (not the log's, nor a thread's wake-up), but
    // the health checks'.
    let socket = |fd: u32| {
        std::fs::read_link(format!("/proc/{}/fd/{fd}", edge.pid()))
            .is_ok_and(|to| to.to_string_lossy().starts_with("socket:"))
    };
    let mut per_fd: HashMap<u32, usize> = HashMap::new();
    for (fd, text) in &writes {
        if socket(*fd) && !text.starts_with("GET /health") {
            *per_fd.entry(*fd).or_default() += 1;
        }
    }
    // The head, the 32 events and the end: one write each time.
    assert_eq!(
        per_fd.get(&client).copied(),
        Some(REQUESTS),
        "writes to the client: {per_fd:?}"
    );
    // To the relay: one head per request (Pingora's client writes the body
    // after it, in as many writes as the relay's socket takes at once).
    let heads = writes
        .iter()
        .filter(|(fd, text)| *fd != client && text.starts_with("POST /v1/"))
        .count();
    assert_eq!(heads, REQUESTS, "request heads to the relay: {per_fd:?}");
}

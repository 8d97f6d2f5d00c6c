//! Hostile and careless clients: none can make the edge hold more than its
//! limits, none is kept past its deadlines, pipelined requests are answered
//! in order, and what clients do wrong is counted and logged quietly, never
//! as the edge's failure.

use crate::common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The value of one sample (`name{labels}`) in a Prometheus text page.
fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn client_errors(text: &str, reason: &str) -> u64 {
    sample(
        text,
        &format!("relay_edge_client_errors_total{{reason=\"{reason}\"}}"),
    )
}

/// Everything the edge sends before it closes the connection (at most 20 s).
async fn until_closed(conn: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn error_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(" ERROR ")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_and_targets_are_refused_as_they_arrive() {
    let ups = upstreams(&["relay-a"]).await;
    let edge = TestEdge::new(&format!(
        "{}limits: {{max_header_bytes: 16384, max_uri_bytes: 4096}}\n",
        upstreams_yaml(&ups)
    ))
    .start()
    .await;

    // A complete 100 KiB header, and a 60,000-byte URI.
    let pad = "a".repeat(100 * 1024);
    let r = request(edge.addr, "GET", "/v1/x", &[("x-pad", &pad)], b"")
        .await
        .expect("answer");
    assert_eq!(r.status, 431, "{}", r.text());
    assert!(r.text().contains("invalid_request_error"), "{}", r.text());
    let uri = format!("/v1/{}", "u".repeat(60_000));
    let r = request(edge.addr, "GET", &uri, &[], b"")
        .await
        .expect("answer");
    assert_eq!(r.status, 414, "{}", r.text());

    // A header that never ends is refused once it passes the limit: the
    // edge does not wait for (or hold) Pingora's 1 MiB.
    let mut conn = TcpStream::connect(edge.addr).await.expect("connect");
    conn.write_all(b"GET /v1/x HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    let line = format!("x-pad: {}\r\n", "b".repeat(1000));
    let mut refused = false;
    for _ in 0..1000 {
        if conn.write_all(line.as_bytes()).await.is_err() {
            refused = true;
            break;
        }
        let mut peek = [0u8; 1];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(1), conn.peek(&mut peek)).await
        {
            refused = n > 0;
            break;
        }
    }
    assert!(refused, "a 1 MB header was read without an answer");
    let answer = until_closed(&mut conn).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // Just within the limits is fine.
    let fits = "c".repeat(12 * 1024);
    let r = edge.get("/v1/x", &[("x-pad", &fits)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        ups[0].requests(),
        1,
        "only the request within limits reached the relay"
    );
    let metrics = edge.metrics().await;
    assert_eq!(client_errors(&metrics, "header_too_large"), 2, "{metrics}");
    assert_eq!(client_errors(&metrics, "uri_too_long"), 1, "{metrics}");
    assert!(error_lines(&edge.log()).is_empty(), "{}", edge.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_and_slow_bodies_are_cut_with_408() {
    let ups = upstreams(&["relay-a"]).await;
    let edge = TestEdge::new(&format!(
        "{}affinity: {{keys: [{{json: /metadata/user_id}}, {{header: x-session-id}}]}}\ntimeouts: {{client_header: 1s, client_body: 3s}}\nlimits: {{min_body_rate: 100}}\n",
        upstreams_yaml(&ups)
    ))
    .start()
    .await;

    // Slowloris: a header byte every 100 ms never completes the head.
    let slowloris = async {
        let mut conn = TcpStream::connect(edge.addr).await.expect("connect");
        conn.write_all(b"GET /v1/x HTTP/1.1\r\nhost: x\r\n")
            .await
            .expect("write");
        for _ in 0..200 {
            if conn.write_all(b"x").await.is_err() {
                break;
            }
            let mut peek = [0u8; 1];
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(100), conn.peek(&mut peek)).await
            {
                break;
            }
        }
        until_closed(&mut conn).await
    };
    // A body trickled a byte every 100 ms: under 100 B/s once the 3 s grace
    // is over (and no gap near 3 s, even on a busy machine). Once read early for its JSON key (a Content-Length), once
    // streamed through (chunked: never read early).
    let trickle = |framing: &'static str, byte: &'static [u8]| async move {
        let mut conn = TcpStream::connect(edge.addr).await.expect("connect");
        conn.write_all(
            format!("POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-session-id: s\r\ncontent-type: application/json\r\n{framing}\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        for _ in 0..200 {
            if conn.write_all(byte).await.is_err() {
                break;
            }
            let mut peek = [0u8; 1];
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(100), conn.peek(&mut peek)).await
            {
                break;
            }
        }
        until_closed(&mut conn).await
    };
    // A body that stops: the gap limit.
    let stalled = async {
        let mut conn = TcpStream::connect(edge.addr).await.expect("connect");
        conn.write_all(b"POST /v1/x HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n{")
            .await
            .expect("write");
        until_closed(&mut conn).await
    };
    let (head, early, streamed, gap) = tokio::join!(
        slowloris,
        trickle("content-length: 1000", b" "),
        trickle("transfer-encoding: chunked", b"1\r\n \r\n"),
        stalled
    );
    assert!(head.starts_with("HTTP/1.1 408"), "slowloris got {head:?}");
    assert!(
        early.starts_with("HTTP/1.1 408"),
        "early-read trickle got {early:?}"
    );
    assert!(
        streamed.starts_with("HTTP/1.1 408"),
        "streamed trickle got {streamed:?}"
    );
    assert!(gap.starts_with("HTTP/1.1 408"), "stalled body got {gap:?}");
    for answer in [&head, &early, &streamed, &gap] {
        assert!(answer.contains(r#""type":"error""#), "{answer}");
    }

    // Body errors are counted once the request has ended, which may be
    // just after the client read its answer.
    let want = [
        ("header_timeout", 1),
        ("body_too_slow", 2),
        ("body_timeout", 1),
    ];
    let counts = || async {
        let metrics = edge.metrics().await;
        want.map(|(reason, _)| (reason, client_errors(&metrics, reason)))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while counts().await != want && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(counts().await, want, "each cut counted by reason");
    assert!(error_lines(&edge.log()).is_empty(), "{}", edge.log());
    // A prompt client on the same edge is served.
    let r = edge
        .post(
            "/v1/x",
            &[("x-session-id", "ok")],
            &messages_body(200_000, "u"),
        )
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_at_once_and_counted() {
    let ups = upstreams(&["relay-a"]).await;
    let edge = TestEdge::new(&format!(
        "{}limits: {{max_connections: 3}}\ntimeouts: {{client_header: 30s}}\n",
        upstreams_yaml(&ups)
    ))
    .start()
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut conn = Conn::open(edge.addr).await.expect("connect");
        let r = conn
            .request("GET", "/v1/x", &[], b"")
            .await
            .expect("served");
        assert_eq!(r.status, 200);
        held.push(conn);
    }
    let mut extra = TcpStream::connect(edge.addr)
        .await
        .expect("accepted, then closed");
    let _ = extra
        .write_all(&raw_request("GET", "/v1/x", &[], b""))
        .await;
    assert_eq!(
        until_closed(&mut extra).await,
        "",
        "nothing is served past the limit"
    );
    let metrics = edge.metrics().await;
    assert_eq!(client_errors(&metrics, "connection_limit"), 1, "{metrics}");
    assert_eq!(
        sample(&metrics, "relay_edge_client_connections"),
        3,
        "{metrics}"
    );
    drop(held.pop());
    eventually(Duration::from_secs(10), "a freed slot serves", || async {
        match Conn::open(edge.addr).await {
            Ok(mut c) => c
                .request("GET", "/v1/x", &[], b"")
                .await
                .is_ok_and(|r| r.status == 200),
            Err(_) => false,
        }
    })
    .await;
    assert_eq!(ups[0].requests(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = TestEdge::new(&format!(
        "{}affinity: {{keys: [{{json: /metadata/user_id}}, {{header: x-session-id}}]}}\n",
        upstreams_yaml(&ups)
    ))
    .start()
    .await;
    for count in [3usize, 30] {
        let mut packet = Vec::new();
        for i in 0..count {
            let key = format!("pipelined-{count}-{i}");
            match i % 3 {
                0 => packet.extend(raw_request(
                    "GET",
                    &format!("/status/{}", 440 + i),
                    &[("x-session-id", &key)],
                    b"",
                )),
                1 => packet.extend(raw_request(
                    "POST",
                    &format!("/status/{}", 440 + i),
                    &[("content-type", "application/json")],
                    &messages_body(2_000, &key),
                )),
                _ => packet.extend(raw_request(
                    "POST",
                    &format!("/status/{}", 440 + i),
                    &[("x-session-id", &key)],
                    b"{\"plain\":true}",
                )),
            }
        }
        let mut conn = Conn::open(edge.addr).await.expect("connect");
        conn.send_raw(&packet).await.expect("send");
        for i in 0..count {
            let r = conn
                .read_response(|_| {})
                .await
                .unwrap_or_else(|e| panic!("answer {i} of {count}: {e}"));
            assert_eq!(r.status as usize, 440 + i, "answer {i} of {count} in order");
        }
        // The connection stays open for more.
        let r = conn.request("GET", "/v1/x", &[], b"").await.expect("after");
        assert_eq!(r.status, 200);
    }
    // Bodies arrived whole, and every key was pinned.
    let recorded: Vec<_> = ups.iter().flat_map(|u| u.recorded()).collect();
    let posts = recorded.iter().filter(|r| r.method == "POST").count();
    assert_eq!(posts, 2 + 20);
    for r in recorded.iter().filter(|r| r.method == "POST") {
        assert_eq!(
            r.header("content-length"),
            Some(r.body.len().to_string()).as_deref()
        );
    }
    let (_, sessions) = edge.admin_json("GET", "/api/sessions?limit=100", b"").await;
    assert_eq!(
        sessions["sessions"].as_array().map_or(0, Vec::len),
        33,
        "{sessions}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_tell_client_leaves_and_cut_responses_apart_and_logs_stay_quiet() {
    let ups = upstreams(&["relay-a"]).await;
    let edge = TestEdge::new(&format!(
        "{}affinity: {{keys: [{{json: /metadata/user_id}}, {{header: x-session-id}}]}}\npassive_health: {{max_failures: 100}}\n",
        upstreams_yaml(&ups)
    ))
    .start()
    .await;

    // The relay cuts its stream after the head: a 502 and a failure, not a 200.
    let mut conn = Conn::open(edge.addr).await.expect("connect");
    conn.send_raw(&raw_request(
        "GET",
        "/reset",
        &[("x-session-id", "cut")],
        b"",
    ))
    .await
    .expect("send");
    let _ = conn.read_response(|_| {}).await;
    // A client that leaves in the middle of a body read early for its key.
    let body = messages_body(300_000, "leaver");
    let mut conn = TcpStream::connect(edge.addr).await.expect("connect");
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.expect("head");
    conn.write_all(&body[..100_000])
        .await
        .expect("part of the body");
    drop(conn);
    // 100 malformed heads, and 50 clients that leave in the middle of one.
    for _ in 0..100 {
        let mut conn = TcpStream::connect(edge.addr).await.expect("connect");
        let _ = conn
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nBad Header\r\n\r\n")
            .await;
        let answer = until_closed(&mut conn).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
    for _ in 0..50 {
        let mut conn = TcpStream::connect(edge.addr).await.expect("connect");
        let _ = conn
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-half: ")
            .await;
        drop(conn);
    }

    eventually(
        Duration::from_secs(10),
        "every client error counted",
        || async {
            let m = edge.metrics().await;
            client_errors(&m, "malformed") == 100
                && client_errors(&m, "closed_in_header") == 50
                && client_errors(&m, "closed_early") == 1
                && m.contains("relay_edge_requests_total{code=\"502\",upstream=\"relay-a\"} 1")
                && m.contains("relay_edge_requests_total{code=\"499\",upstream=\"none\"} 1")
        },
    )
    .await;
    let metrics = edge.metrics().await;
    let requests = |upstream: &str, code: u16| {
        sample(
            &metrics,
            &format!("relay_edge_requests_total{{code=\"{code}\",upstream=\"{upstream}\"}}"),
        )
    };
    assert_eq!(requests("relay-a", 502), 1, "the cut stream: {metrics}");
    assert_eq!(requests("relay-a", 200), 0, "{metrics}");
    assert_eq!(requests("none", 499), 1, "the client that left: {metrics}");
    assert_eq!(requests("none", 500), 0, "{metrics}");
    assert_eq!(
        sample(&metrics, "relay_edge_client_failures_total{cause=\"cut\"}"),
        1,
        "{metrics}"
    );
    assert_eq!(edge.upstream("relay-a").await["errors"], 1);
    // Only the cut stream is an ERROR (of the relay's); what the clients
    // did is summed up by one warning.
    let log = edge.log();
    let errors = error_lines(&log);
    assert!(
        errors.len() == 1 && errors[0].contains("Fail to proxy: Upstream"),
        "{log}"
    );
    let warnings = log
        .lines()
        .filter(|l| l.contains("client errors since"))
        .count();
    assert!(warnings <= 1, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_past_the_read_budget_stream_through_intact() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = TestEdge::new(&format!(
        "{}affinity: {{keys: [{{json: /metadata/user_id}}, {{header: x-session-id}}]}}\nlimits: {{body_read_memory: 500000}}\ntimeouts: {{client_body: 30s}}\n",
        upstreams_yaml(&ups)
    ))
    .start()
    .await;
    // One client takes 400 kB of the budget and stalls.
    let mut staller = TcpStream::connect(edge.addr).await.expect("connect");
    staller
        .write_all(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 400000\r\n\r\n{\"metadata\":")
        .await
        .expect("head");
    // A 200 kB body finds no room: it is not read early, so its header key
    // routes it, and it reaches the relay whole.
    eventually(
        Duration::from_secs(10),
        "the staller holds its budget",
        || async {
            let body = messages_body(200_000, "json-key");
            let r = edge
                .post("/v1/messages", &[("x-session-id", "header-key")], &body)
                .await;
            assert_eq!(r.status, 200);
            let (_, s) = edge
                .admin_json("GET", "/api/sessions/header-key", b"")
                .await;
            s["upstream"].is_string()
        },
    )
    .await;
    let body = messages_body(200_000, "json-key");
    let r = edge
        .post("/v1/messages", &[("x-session-id", "header-key")], &body)
        .await;
    assert_eq!(r.status, 200);
    let got = ups
        .iter()
        .flat_map(|u| u.recorded())
        .rfind(|r| r.header("x-session-id") == Some("header-key"))
        .expect("recorded");
    assert!(got.body == body, "the body reached the relay byte for byte");
    // Once the staller leaves, bodies are read early again.
    drop(staller);
    eventually(
        Duration::from_secs(10),
        "the budget is free again",
        || async {
            let r = edge
                .post(
                    "/v1/messages",
                    &[("x-session-id", "other")],
                    &messages_body(200_000, "json-again"),
                )
                .await;
            assert_eq!(r.status, 200);
            let (status, _) = edge
                .admin_json("GET", "/api/sessions/json-again", b"")
                .await;
            status == 200
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_sends_is_closed_at_the_head_deadline() {
    let ups = upstreams(&["relay-a"]).await;
    let edge = TestEdge::new(&format!(
        "{}timeouts: {{client_header: 500ms}}\n",
        upstreams_yaml(&ups)
    ))
    .start()
    .await;
    let mut silent = TcpStream::connect(edge.addr).await.expect("connect");
    assert_eq!(
        until_closed(&mut silent).await,
        "",
        "closed, with no answer it never asked for"
    );
    // A keep-alive connection's deadline starts at its next head's first
    // byte: idling between requests (up to client_idle) is not a slow head.
    let mut conn = Conn::open(edge.addr).await.expect("connect");
    assert_eq!(
        conn.request("GET", "/v1/x", &[], b"")
            .await
            .expect("first")
            .status,
        200
    );
    // The idle time is the thing under test: longer than client_header.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        conn.request("GET", "/v1/x", &[], b"")
            .await
            .expect("second")
            .status,
        200
    );
    let metrics = edge.metrics().await;
    assert_eq!(client_errors(&metrics, "header_timeout"), 1, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_leave_mid_request_neither_move_their_session_nor_eject_its_relay() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    // Passive health as shipped: three failures eject a relay.
    let edge = TestEdge::new(&format!(
        "{}affinity: {{keys: [{{header: x-session-id}}]}}\n",
        upstreams_yaml(&ups)
    ))
    .start()
    .await;
    let home = edge
        .get("/v1/x", &[("x-session-id", "esc")])
        .await
        .upstream();
    let relay = ups.iter().find(|u| u.name == home).expect("home");
    // Five times: the request reaches the relay, which is slow to answer,
    // and the client gives up (Esc in Claude Code, a load tool stopping).
    for i in 1..=5 {
        let mut conn = TcpStream::connect(edge.addr).await.expect("connect");
        conn.write_all(&raw_request(
            "GET",
            "/hang",
            &[("x-session-id", "esc")],
            b"",
        ))
        .await
        .expect("send");
        eventually(
            Duration::from_secs(10),
            "the relay has the request",
            || async {
                relay
                    .recorded()
                    .iter()
                    .filter(|r| r.path == "/hang")
                    .count()
                    == i
            },
        )
        .await;
        drop(conn);
        eventually(Duration::from_secs(10), "the leave counted", || async {
            sample(
                &edge.metrics().await,
                &format!("relay_edge_requests_total{{code=\"499\",upstream=\"{home}\"}}"),
            ) == i as u64
        })
        .await;
    }
    let metrics = edge.metrics().await;
    for u in &ups {
        let ejections = format!(
            "relay_edge_upstream_ejections_total{{upstream=\"{}\"}}",
            u.name
        );
        assert_eq!(sample(&metrics, &ejections), 0, "{metrics}");
    }
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("relay_edge_affinity_repins_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
    // Only the request that reached it went to the relay: none was run
    // again, there or elsewhere.
    let hangs: usize = ups
        .iter()
        .map(|u| u.recorded().iter().filter(|r| r.path == "/hang").count())
        .sum();
    assert_eq!(hangs, 5);
    let r = edge.get("/v1/x", &[("x-session-id", "esc")]).await;
    assert_eq!(
        (r.upstream(), r.header("x-relay-edge-affinity")),
        (home, Some("hit"))
    );
}

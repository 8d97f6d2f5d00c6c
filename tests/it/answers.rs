//! Answers that are failures: an overloaded or broken relay's status is
//! tried on another relay before the client sees it, within the retry
//! budget, and the session's pin moves only as `failover.move_pin` says.

use crate::common::*;
use relay_edge::demo::{DemoUpstream, Fault};
use std::time::Duration;

fn config(ups: &[DemoUpstream], failover: &str) -> String {
    format!(
        "{}affinity: {{keys: [{{header: x-session-id}}]}}\nhealth_check: {{interval: 60s}}\nfailover: {{{failover}}}\n{}",
        upstreams_yaml(ups),
        // Each left answer is a passive-health failure too; these tests keep
        // the relays from being ejected for them, to see the pin policy alone.
        "passive_health: {max_failures: 1000}\n"
    )
}

/// The upstream `key` is pinned to, and the other one.
async fn home_of<'a>(
    edge: &Edge,
    ups: &'a [DemoUpstream],
    key: &str,
) -> (&'a DemoUpstream, &'a DemoUpstream) {
    let home = edge.get("/v1/x", &[("x-session-id", key)]).await.upstream();
    let (a, b) = (&ups[0], &ups[1]);
    if a.name == home {
        (a, b)
    } else {
        (b, a)
    }
}

fn counter(metrics: &str, line_start: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_answer_is_served_elsewhere_and_the_pin_moves_after_three_in_a_row() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = TestEdge::new(&config(&ups, "max_retries: 2"))
        .own_health_check()
        .start()
        .await;
    let (home, other) = home_of(&edge, &ups, "busy").await;
    // Two 529s in a row: each answer comes from the other relay, and the
    // session stays pinned home (its prompt cache is there).
    for round in 1..=2 {
        home.fail_next(1, Fault::Status(529));
        let r = edge
            .post("/v1/messages", &[("x-session-id", "busy")], b"{}")
            .await;
        assert_eq!(
            (r.status, r.upstream()),
            (200, other.name.clone()),
            "round {round}: {}",
            r.text()
        );
        let back = edge.get("/v1/x", &[("x-session-id", "busy")]).await;
        assert_eq!(back.upstream(), home.name, "round {round}: the pin stays");
    }
    // Each good answer from home started the count over; three failures in
    // a row move the pin with the third, by the same compare-and-set as
    // failover.
    home.fail_next(3, Fault::Status(529));
    for round in 1..=3 {
        let r = edge
            .post("/v1/messages", &[("x-session-id", "busy")], b"{}")
            .await;
        assert_eq!(
            (r.status, r.upstream()),
            (200, other.name.clone()),
            "round {round}"
        );
    }
    let moved = edge.get("/v1/x", &[("x-session-id", "busy")]).await;
    assert_eq!(
        moved.upstream(),
        other.name,
        "the third failure in a row moved the pin"
    );
    let metrics = edge.metrics().await;
    assert_eq!(
        counter(
            &metrics,
            &format!(
                "relay_edge_attempts_abandoned_total{{reason=\"status\",upstream=\"{}\"}}",
                home.name
            )
        ),
        5,
        "{metrics}"
    );
    assert_eq!(
        edge.upstream(&home.name).await["errors"],
        5,
        "passive health saw each"
    );
    // Counted as each request is logged, just after its answer.
    eventually(
        Duration::from_secs(5),
        "each answer from elsewhere is a cold move",
        || async { counter(&edge.metrics().await, "relay_edge_cold_moves_total") == 5 },
    )
    .await;
    assert_eq!(
        counter(
            &metrics,
            "relay_edge_affinity_repins_total{reason=\"error_answer\"}"
        ),
        1,
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("repins"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The client never saw a 529: every answer counted was a 200.
    assert_eq!(
        counter(
            &metrics,
            &format!(
                "relay_edge_requests_total{{code=\"529\",upstream=\"{}\"}}",
                home.name
            )
        ),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_pin_at_once_and_never() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let at_once = TestEdge::new(&config(&ups, "move_pin: at_once"))
        .own_health_check()
        .start()
        .await;
    let (home, other) = home_of(&at_once, &ups, "k").await;
    home.fail_next(1, Fault::Status(503));
    let r = at_once
        .post("/v1/messages", &[("x-session-id", "k")], b"{}")
        .await;
    assert_eq!(r.upstream(), other.name);
    assert_eq!(r.header("x-relay-edge-affinity"), Some("moved"));
    let next = at_once.get("/v1/x", &[("x-session-id", "k")]).await;
    assert_eq!(next.upstream(), other.name);
    assert_eq!(next.header("x-relay-edge-affinity"), Some("hit"));
    let first = at_once.get("/v1/x", &[("x-session-id", "k-new")]).await;
    assert_eq!(first.header("x-relay-edge-affinity"), Some("new"));
    let keyless = at_once.get("/v1/x", &[]).await;
    assert_eq!(keyless.header("x-relay-edge-affinity"), None, "no session");

    let never = TestEdge::new(&config(&ups, "move_pin: never"))
        .own_health_check()
        .start()
        .await;
    let (home, other) = home_of(&never, &ups, "k2").await;
    for _ in 0..4 {
        home.fail_next(1, Fault::Status(429));
        let r = never
            .post("/v1/messages", &[("x-session-id", "k2")], b"{}")
            .await;
        assert_eq!(r.upstream(), other.name);
    }
    assert_eq!(
        never
            .get("/v1/x", &[("x-session-id", "k2")])
            .await
            .upstream(),
        home.name
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_relay_is_overloaded_the_client_gets_the_last_529_as_it_was() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = TestEdge::new(&config(&ups, "max_retries: 2"))
        .own_health_check()
        .start()
        .await;
    for u in &ups {
        u.fail_next(1, Fault::Status(529));
    }
    let r = edge
        .post("/v1/messages", &[("x-session-id", "all")], b"{}")
        .await;
    assert_eq!(r.status, 529, "{}", r.text());
    let body: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "overloaded_error");
    assert_eq!(
        ups.iter().map(DemoUpstream::requests).sum::<usize>(),
        2,
        "each relay tried once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_bounds_retries_in_a_fleet_wide_overload() {
    let ups = upstreams(&["relay-a", "relay-b", "relay-c"]).await;
    // 10% of recent requests, at least 2 in any ten seconds.
    let edge = TestEdge::new(&config(
        &ups,
        "max_retries: 2, retry_budget: 0.1, retry_budget_min: 2",
    ))
    .own_health_check()
    .start()
    .await;
    for u in &ups {
        u.fail_next(1000, Fault::Status(529));
    }
    let mut statuses = Vec::new();
    for i in 0..20 {
        let r = edge
            .post("/v1/messages", &[("x-session-id", &format!("s{i}"))], b"{}")
            .await;
        statuses.push(r.status);
    }
    assert!(statuses.iter().all(|&s| s == 529), "{statuses:?}");
    // 20 requests: at most max(2, 10% of 20) = 2 retries, not 40. The
    // first request took both; every other one's retry was refused.
    let attempts: usize = ups.iter().map(DemoUpstream::requests).sum();
    assert_eq!(attempts, 22, "20 first attempts and 2 retries");
    let metrics = edge.metrics().await;
    assert_eq!(
        counter(&metrics, "relay_edge_retry_budget_exhausted_total"),
        19,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claude_code_sized_body_is_replayed_whole_to_the_next_relay() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = TestEdge::new(&config(&ups, "max_retries: 1"))
        .own_health_check()
        .start()
        .await;
    let (home, other) = home_of(&edge, &ups, "big").await;
    let body = messages_body(300 * 1024, "u");
    home.fail_next(1, Fault::Status(500));
    let r = edge
        .post("/v1/messages", &[("x-session-id", "big")], &body)
        .await;
    assert_eq!(
        (r.status, r.upstream()),
        (200, other.name.clone()),
        "{}",
        r.text()
    );
    let got = other.recorded().pop().expect("recorded");
    assert!(got.body == body, "the retried body arrived byte for byte");
    assert!(home.recorded().pop().expect("recorded").body == body);
}

const STREAM: &[u8] = br#"{"model":"claude-x","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

fn stream_config(ups: &[DemoUpstream]) -> String {
    format!(
        "{}streams: {{first_event_timeout: 500ms, idle_timeout: 500ms}}\n",
        config(ups, "max_retries: 2, move_pin: never")
    )
}

/// The events of an SSE body, as (event name, data) pairs.
fn events(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let field = |name: &str| {
                e.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap_or("")
                    .trim()
                    .to_string()
            };
            (field("event:"), field("data:"))
        })
        .collect()
}

fn stream_count(metrics: &str, upstream: &str, outcome: &str) -> u64 {
    counter(
        metrics,
        &format!("relay_edge_streams_total{{outcome=\"{outcome}\",upstream=\"{upstream}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_relay_fails_before_its_first_event_is_served_whole_by_another() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    // `timeouts.read` is far longer than `first_event_timeout` (500 ms): a
    // relay that sends no head at all is left within the latter.
    let edge = TestEdge::new(&format!("{}timeouts: {{read: 60s}}\n", stream_config(&ups)))
        .own_health_check()
        .start()
        .await;
    let (home, other) = home_of(&edge, &ups, "s").await;
    let faults = [
        (
            Fault::FirstEventError("overloaded_error".into()),
            "error_event",
        ),
        (Fault::Status(529), "status"),
        (Fault::SilentBeforeFirstEvent, "first_event_timeout"),
        (Fault::CloseBeforeFirstEvent, "closed_before_first_event"),
        (Fault::NoHead, "first_event_timeout"),
    ];
    let mut left = std::collections::HashMap::new();
    for (fault, reason) in faults {
        let left = left.entry(reason).or_insert(0);
        *left += 1;
        home.fail_next(1, fault.clone());
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            edge.post("/v1/messages", &[("x-session-id", "s")], STREAM),
        )
        .await
        .unwrap_or_else(|_| panic!("{fault:?}: no answer within 30 s"));
        assert_eq!(
            (r.status, r.upstream()),
            (200, other.name.clone()),
            "{fault:?}: {}",
            r.text()
        );
        assert_eq!(
            r.header("x-relay-edge-affinity"),
            Some("moved"),
            "{fault:?}"
        );
        assert_eq!(
            r.header("content-type"),
            Some("text/event-stream"),
            "{fault:?}: {}",
            r.text()
        );
        let ev = events(&r.body);
        assert_eq!(
            ev.first().map(|e| e.0.as_str()),
            Some("message_start"),
            "{fault:?}: {ev:?}"
        );
        assert!(ev[0]
            .1
            .contains(&format!("\"upstream\":\"{}\"", other.name)));
        assert_eq!(
            ev.last().map(|e| e.0.as_str()),
            Some("message_stop"),
            "{fault:?}"
        );
        assert!(
            ev.iter().all(|e| e.0 != "error"),
            "{fault:?}: no error reached the client"
        );
        let metrics = edge.metrics().await;
        assert_eq!(
            counter(
                &metrics,
                &format!(
                    "relay_edge_attempts_abandoned_total{{reason=\"{reason}\",upstream=\"{}\"}}",
                    home.name
                )
            ),
            *left,
            "{fault:?}"
        );
    }
    let metrics = edge.metrics().await;
    assert_eq!(
        stream_count(&metrics, &other.name, "completed"),
        5,
        "{metrics}"
    );
    // Usage of the five completed streams: 100 input, 900 cache reads, 10 out each.
    let tokens = |kind: &str| {
        counter(
            &metrics,
            &format!(
                "relay_edge_tokens_total{{kind=\"{kind}\",upstream=\"{}\"}}",
                other.name
            ),
        )
    };
    assert_eq!(
        (
            tokens("input"),
            tokens("cache_read_input"),
            tokens("output")
        ),
        (500, 4500, 50)
    );
    // The session stayed home (move_pin: never) and streams from there.
    let r = edge
        .post("/v1/messages", &[("x-session-id", "s")], STREAM)
        .await;
    assert_eq!(r.upstream(), home.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_after_its_first_event_ends_with_an_error_event_and_is_not_retried() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = TestEdge::new(&stream_config(&ups))
        .own_health_check()
        .start()
        .await;
    let (home, _) = home_of(&edge, &ups, "c").await;
    let cases = [
        (
            Fault::CutAfter(3),
            "relay_cut",
            "the relay's stream was cut",
        ),
        (Fault::SilentAfter(3), "idle_timeout", "fell silent"),
    ];
    for (fault, outcome, message) in cases {
        home.fail_next(1, fault.clone());
        let before = home.requests();
        let r = edge
            .post("/v1/messages", &[("x-session-id", "c")], STREAM)
            .await;
        assert_eq!(
            (r.status, r.upstream()),
            (200, home.name.clone()),
            "{fault:?}"
        );
        let ev = events(&r.body);
        let names: Vec<&str> = ev.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "error"
            ],
            "{fault:?}: {}",
            r.text()
        );
        let error: serde_json::Value = serde_json::from_str(&ev[4].1).expect("JSON");
        assert_eq!(error["type"], "error");
        assert_eq!(error["error"]["type"], "api_error");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains(message),
            "{error}"
        );
        assert_eq!(
            home.requests(),
            before + 1,
            "{fault:?}: not retried once under way"
        );
        let metrics = edge.metrics().await;
        assert_eq!(stream_count(&metrics, &home.name, outcome), 1, "{fault:?}");
    }
    // An error event after content is the relay's own end: passed through
    // as it is, not retried, and counted as a cut.
    home.fail_next(1, Fault::ErrorAfter(2));
    let r = edge
        .post("/v1/messages", &[("x-session-id", "c")], STREAM)
        .await;
    let ev = events(&r.body);
    assert_eq!(
        ev.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "error"
        ]
    );
    assert!(
        ev[3].1.contains("overloaded_error"),
        "the relay's own event"
    );
    let metrics = edge.metrics().await;
    assert_eq!(stream_count(&metrics, &home.name, "relay_cut"), 2);
    // Per-request counts are written once the request is logged, just after
    // the client has its end.
    eventually(
        Duration::from_secs(5),
        "each cut counted as an error",
        || async { edge.upstream(&home.name).await["errors"] == 3 },
    )
    .await;
}

/// One call through `edge` with the real Anthropic Python SDK
/// (`tests/sdk/anthropic_client.py`): what it returned or raised.
async fn sdk_call(edge: &Edge, session: &str, mode: &str) -> serde_json::Value {
    // The edge runs in its own process: a blocking wait here is fine.
    let root = env!("CARGO_MANIFEST_DIR");
    let script = format!("{root}/tests/sdk/anthropic_client.py");
    // scripts/test.sh installs the SDK in this virtualenv.
    let venv = format!("{root}/target/sdk-venv/bin/python3");
    let python = if std::path::Path::new(&venv).exists() {
        venv
    } else {
        "python3".to_string()
    };
    let out = std::process::Command::new(&python)
        .args([
            script.as_str(),
            &format!("http://{}", edge.addr),
            session,
            mode,
        ])
        .output()
        .expect("python3 runs (apt-get install -y python3; pip install anthropic)");
    assert!(
        out.status.success(),
        "the SDK script failed (pip install anthropic): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_sdk_gets_clean_streams_and_the_errors_it_expects() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = TestEdge::new(&stream_config(&ups))
        .own_health_check()
        .start()
        .await;
    // The SDK sends its API key (`test-key`): the session is that tenant's.
    let home = edge
        .get(
            "/v1/x",
            &[("x-session-id", "sdk"), ("x-api-key", "test-key")],
        )
        .await
        .upstream();
    let (home, other) = if ups[0].name == home {
        (&ups[0], &ups[1])
    } else {
        (&ups[1], &ups[0])
    };
    // An overloaded first event never reaches the SDK: the stream comes whole
    // from the other relay.
    home.fail_next(1, Fault::FirstEventError("overloaded_error".into()));
    let r = sdk_call(&edge, "sdk", "stream").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["text"], "0 1 2 3 4 ");
    assert_eq!(other.requests(), 1);
    // A relay that takes the request and sends nothing at all is left
    // within streams.first_event_timeout (500 ms), long before
    // timeouts.read (10 minutes) or the SDK's own 30 s.
    home.fail_next(1, Fault::NoHead);
    let r = sdk_call(&edge, "sdk", "stream").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["text"], "0 1 2 3 4 ");
    assert_eq!(other.requests(), 2);
    // Cut, or silent, after content: the SDK raises on the edge's error event.
    for fault in [Fault::CutAfter(3), Fault::SilentAfter(3)] {
        home.fail_next(1, fault.clone());
        let r = sdk_call(&edge, "sdk", "stream").await;
        assert_eq!(
            (&r["ok"], &r["error_class"], &r["error_type"]),
            (
                &serde_json::json!(false),
                &serde_json::json!("APIStatusError"),
                &serde_json::json!("api_error")
            ),
            "{fault:?}: {r}"
        );
    }
    // Every relay overloaded: a real 529 with the relay's overloaded_error.
    for u in &ups {
        u.fail_next(1, Fault::Status(529));
    }
    let r = sdk_call(&edge, "sdk", "create").await;
    assert_eq!(
        (&r["status"], &r["error_type"]),
        (
            &serde_json::json!(529),
            &serde_json::json!("overloaded_error")
        ),
        "{r}"
    );
    assert_eq!(r["error_class"], "OverloadedError", "{r}");
    // No relay at all: the edge's own 503, in the shape the SDK reads.
    for u in &ups {
        u.kill();
    }
    let r = sdk_call(&edge, "sdk-2", "stream").await;
    assert_eq!(r["ok"], false, "{r}");
    assert!(matches!(r["status"].as_u64(), Some(502 | 503)), "{r}");
    assert_eq!(r["error_class"], "InternalServerError", "{r}");
    assert!(
        matches!(
            r["error_type"].as_str(),
            Some("api_error" | "overloaded_error")
        ),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_usage_is_read_from_json_answers_and_streams_alike() {
    let ups = upstreams(&["relay-a"]).await;
    let edge = TestEdge::new(&stream_config(&ups))
        .own_health_check()
        .start()
        .await;
    // The demo relay reports 100 input tokens, 900 read from the cache and
    // 10 output tokens, in a JSON answer's tail and in a stream's events.
    let json = edge
        .post(
            "/v1/messages",
            &[("x-session-id", "t")],
            br#"{"stream":false}"#,
        )
        .await;
    assert_eq!(json.status, 200);
    let stream = edge
        .post("/v1/messages", &[("x-session-id", "t")], STREAM)
        .await;
    assert_eq!(
        events(&stream.body).last().map(|e| e.0.clone()).as_deref(),
        Some("message_stop")
    );
    // Counted when Pingora hands the edge the end of the JSON answer.
    eventually(
        Duration::from_secs(5),
        "both answers' usage counted",
        || async { edge.upstream("relay-a").await["tokens"]["input"] == 200 },
    )
    .await;
    let tokens = edge.upstream("relay-a").await["tokens"].clone();
    assert_eq!(tokens["cache_read_input"], 1800, "{tokens}");
    assert_eq!(tokens["output"], 20, "{tokens}");
    assert_eq!(tokens["cache_read_ratio"], 0.9, "{tokens}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_a_stream_and_a_relay_with_no_head_are_told_apart() {
    let ups = upstreams(&["relay-a"]).await;
    let edge = TestEdge::new(&format!(
        "{}timeouts: {{read: 300ms}}\n",
        stream_config(&ups)
    ))
    .own_health_check()
    .start()
    .await;
    // The client reads the first event of a slow stream, then leaves.
    let reader = open_stream_with(
        edge.addr,
        "POST",
        "/v1/messages?sse=50&gap_ms=100",
        &[("x-session-id", "leaver")],
        STREAM,
    )
    .await;
    reader.abort();
    eventually(Duration::from_secs(10), "the leave counted", || async {
        stream_count(&edge.metrics().await, "relay-a", "client_cut") == 1
    })
    .await;
    // A relay that never sends a head: timeouts.read, then the edge's 504
    // in the Anthropic shape (a timeout is not retried: the relay may be
    // running it).
    let r = edge.post("/hang", &[("x-session-id", "h")], STREAM).await;
    assert_eq!(r.status, 504, "{}", r.text());
    let body: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    assert_eq!(
        (&body["type"], &body["error"]["type"]),
        (&serde_json::json!("error"), &serde_json::json!("api_error"))
    );
    // A silent relay with no other to try: the edge's 504, and the stream
    // counted as timed out before its first event.
    ups[0].fail_next(1, Fault::SilentBeforeFirstEvent);
    let r = edge
        .post("/v1/messages", &[("x-session-id", "h")], STREAM)
        .await;
    assert_eq!(r.status, 504, "{}", r.text());
    let metrics = edge.metrics().await;
    assert_eq!(
        stream_count(&metrics, "relay-a", "first_event_timeout"),
        1,
        "{metrics}"
    );
    assert_eq!(
        stream_count(&metrics, "relay-a", "relay_cut"),
        0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_of_every_protocol_that_end_cleanly_keep_their_session_and_their_relay() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    // Passive health as shipped: three failures eject a relay.
    let edge = TestEdge::new(&format!(
        "{}affinity: {{keys: [{{header: session-id}}]}}\nhealth_check: {{interval: 60s}}\n",
        upstreams_yaml(&ups)
    ))
    .own_health_check()
    .start()
    .await;
    let body = br#"{"model":"gpt-x","stream":true,"input":"hi"}"#;
    let mut served = Vec::new();
    for round in 0..4 {
        for path in ["/v1/responses", "/v1/chat/completions", "/v1/other"] {
            let r = edge.post(path, &[("session-id", "codex-1")], body).await;
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            let text = r.text();
            let end = match path {
                "/v1/responses" => "event: response.completed",
                "/v1/chat/completions" => "data: [DONE]",
                _ => "event: tick",
            };
            assert!(text.contains(end), "{path} round {round}: {text}");
            assert!(
                !text.contains("relay-edge"),
                "{path}: no error of the edge's: {text}"
            );
            served.push(r.upstream());
        }
    }
    assert!(
        served.iter().all(|u| *u == served[0]),
        "the session stayed on one relay: {served:?}"
    );
    let home = served[0].clone();
    let metrics = edge.metrics().await;
    assert_eq!(stream_count(&metrics, &home, "completed"), 8, "{metrics}");
    assert_eq!(
        stream_count(&metrics, &home, "unrecognised"),
        4,
        "{metrics}"
    );
    assert_eq!(stream_count(&metrics, &home, "relay_cut"), 0, "{metrics}");
    assert_eq!(
        counter(
            &metrics,
            &format!("relay_edge_upstream_ejections_total{{upstream=\"{home}\"}}")
        ),
        0,
        "{metrics}"
    );
    // OpenAI's usage (1000 input of which 900 cached, 10 out) as Anthropic's.
    let tokens = |kind: &str| {
        counter(
            &metrics,
            &format!("relay_edge_tokens_total{{kind=\"{kind}\",upstream=\"{home}\"}}"),
        )
    };
    assert_eq!(
        (
            tokens("input"),
            tokens("cache_read_input"),
            tokens("output")
        ),
        (800, 7200, 80)
    );
    // A stream cut by its relay is the relay's failure, and ends with the
    // edge's error event.
    let home_relay = ups.iter().find(|u| u.name == home).expect("home");
    home_relay.fail_next(1, Fault::CutAfter(3));
    let r = edge
        .post("/v1/responses", &[("session-id", "codex-1")], body)
        .await;
    assert_eq!(stream_count(&edge.metrics().await, &home, "relay_cut"), 1);
    assert!(r.text().contains("event: error"), "{}", r.text());
}

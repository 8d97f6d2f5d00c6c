//! Body keys: any size up to the limit, key at the very end, body byte-exact.

use crate::common::*;

const SID: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";

async fn two_upstreams_edge(extra: &str) -> (Vec<relay_edge::demo::DemoUpstream>, Edge) {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = TestEdge::new(&format!("{}{extra}", upstreams_yaml(&ups)))
        .start()
        .await;
    (ups, edge)
}

fn body_of(ups: &[relay_edge::demo::DemoUpstream], name: &str) -> Vec<u8> {
    let up = ups.iter().find(|u| u.name == name).expect("upstream");
    up.recorded().pop().expect("a recorded request").body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_key_at_the_end_of_bodies_of_every_size_routes_and_arrives_byte_exact() {
    let (ups, edge) = two_upstreams_edge(
        "affinity:\n  keys: [{json: /metadata/user_id}, {header: x-session-id}]\n",
    )
    .await;
    for size in [1024, 64 * 1024 + 1, 5 * 1024 * 1024] {
        for key in [
            "session-one",
            "session-two",
            "session-three",
            "session-four",
        ] {
            // Where the header-keyed twin of this session lives.
            let twin = edge.get("/", &[("x-session-id", key)]).await;
            assert_eq!(twin.status, 200, "{}", twin.text());
            let home = twin.upstream();
            let body = messages_body(size, key);
            assert!(body.ends_with(format!(r#""user_id":"{key}"}}}}"#).as_bytes()));
            let r = edge
                .post(
                    "/v1/messages?beta=true",
                    &[("content-type", "application/json")],
                    &body,
                )
                .await;
            assert_eq!(r.status, 200, "size {size}: {}", r.text());
            assert_eq!(
                r.upstream(),
                home,
                "size {size} key {key}: the body key must route like the same key in a header"
            );
            assert!(
                body_of(&ups, &home) == body,
                "size {size}: the upstream must get the body byte for byte"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_not_json_or_chunked_fall_back_whole() {
    let (ups, edge) = two_upstreams_edge(
        "affinity:\n  max_body_bytes: 100000\n  keys: [{json: /metadata/user_id}, {header: x-session-id}]\n",
    )
    .await;
    let home = edge
        .get("/", &[("x-session-id", "fallback")])
        .await
        .upstream();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("over the limit", messages_body(150_000, "other-key")),
        (
            "not JSON",
            b"this is not json {\"metadata\":{\"user_id\":\"other-key\"}}".to_vec(),
        ),
        (
            "truncated JSON",
            br#"{"metadata":{"user_id":"other-key""#.to_vec(),
        ),
    ];
    for (what, body) in cases {
        let r = edge
            .post("/v1/messages", &[("x-session-id", "fallback")], &body)
            .await;
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        assert_eq!(
            r.upstream(),
            home,
            "{what}: must fall back to the header key"
        );
        assert!(body_of(&ups, &home) == body, "{what}: must arrive whole");
    }
    // A chunked body is not read early, and still arrives whole.
    let payload = br#"{"metadata":{"user_id":"other-key"}}"#;
    let mut raw = b"POST /v1/messages HTTP/1.1\r\nhost: t\r\nx-session-id: fallback\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    raw.extend_from_slice(format!("{:x}\r\n", payload.len()).as_bytes());
    raw.extend_from_slice(payload);
    raw.extend_from_slice(b"\r\n0\r\n\r\n");
    let mut conn = Conn::open(edge.addr).await.expect("connect");
    conn.send_raw(&raw).await.expect("send");
    let r = conn.read_response(|_| {}).await.expect("response");
    assert_eq!((r.status, r.upstream()), (200, home.clone()));
    assert_eq!(body_of(&ups, &home), payload.to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_and_the_body_still_arrives() {
    let (ups, edge) = two_upstreams_edge("affinity: {keys: [{json: /metadata/user_id}]}\n").await;
    let body = messages_body(200_000, "expecting");
    let mut conn = Conn::open(edge.addr).await.expect("connect");
    let head = format!("POST /v1/messages HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n", body.len());
    conn.send_raw(head.as_bytes()).await.expect("send head");
    let interim = conn.read_response(|_| {}).await.expect("100 Continue");
    assert_eq!(interim.status, 100);
    conn.send_raw(&body).await.expect("send body");
    let r = conn.read_response(|_| {}).await.expect("response");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(body_of(&ups, &r.upstream()) == body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_preset_follows_the_header_and_both_user_id_shapes() {
    let (ups, edge) = two_upstreams_edge("affinity: {claude_code: true}\n").await;
    let mut homes = std::collections::HashSet::new();
    for i in 0..20 {
        let sid = format!("{}{i:02}", &SID[..34]);
        let home = edge
            .get(
                "/v1/messages?beta=true",
                &[("x-claude-code-session-id", &sid)],
            )
            .await
            .upstream();
        homes.insert(home.clone());
        let device = "f".repeat(64);
        let modern = format!(
            r#"{{\"device_id\":\"{device}\",\"account_uuid\":\"\",\"session_id\":\"{sid}\"}}"#
        );
        let legacy =
            format!("user_{device}_account_11111111-2222-3333-4444-555555555555_session_{sid}");
        for user_id in [modern, legacy] {
            // Claude Code's bodies are over 64 KiB even for one word.
            let body = messages_body(90_000, &user_id);
            let r = edge.post("/v1/messages?beta=true", &[], &body).await;
            assert_eq!(r.upstream(), home, "user_id {user_id}");
            assert!(body_of(&ups, &home) == body);
        }
    }
    assert_eq!(homes.len(), 2, "sessions should use both upstreams");
}

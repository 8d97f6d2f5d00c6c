//! TLS listeners, and TLS upstreams with SNI. The TLS upstream is a second
//! relay-edge with a TLS listener in front of a demo relay.

use crate::common::*;
use std::process::Command;

/// A self-signed certificate for `localhost`, made with the openssl CLI.
pub fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("the openssl CLI is needed for TLS tests: apt-get install -y openssl");
    assert!(
        out.status.success(),
        "openssl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_and_tls_upstream_with_sni() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = self_signed(dir.path());
    let ups = upstreams(&["relay-a"]).await;
    // The TLS "relay": relay-edge terminating TLS in front of the demo relay.
    let tls_relay = Edge::start_full(&upstreams_yaml(&ups), 1, Some((&cert, &key))).await;
    // One worker thread: see the pooling note in README.
    let front = Edge::start_with_threads(&format!(
        "upstreams:\n  - {{id: relay-tls, addr: '{}', tls: {{sni: localhost, verify: false}}}}\nhealth_check: {{interval: 200ms}}\naffinity: {{keys: [{{header: x-session-id}}]}}\n",
        tls_relay.addr
    ), 1)
    .await;
    for i in 0..5 {
        let r = front
            .get("/v1/x", &[("x-session-id", &format!("t{i}"))])
            .await;
        assert_eq!(
            (r.status, r.upstream()),
            (200, "relay-a".to_string()),
            "{}",
            r.text()
        );
    }
    assert_eq!(
        front.upstream("relay-tls").await["connections_opened"],
        1,
        "TLS connections are pooled too"
    );
    // Streams, held until their first event, go over the held path's own
    // pool: over TLS too, and pooled (one more connection for both).
    for _ in 0..2 {
        let r = front
            .post(
                "/v1/messages",
                &[("x-session-id", "t0")],
                br#"{"stream":true}"#,
            )
            .await;
        assert_eq!((r.status, r.upstream()), (200, "relay-a".to_string()));
        assert!(r.text().contains("event: message_stop"), "{}", r.text());
    }
    assert_eq!(
        front.upstream("relay-tls").await["connections_opened"],
        2,
        "the held path pools its TLS connection"
    );

    // And a client speaking TLS to the TLS listener.
    let out = Command::new("curl")
        .args(["-sk", "-D", "-", "-H", "x-session-id: c"])
        .arg(format!("https://localhost:{}/v1/x", tls_relay.addr.port()))
        .output()
        .expect("curl is needed for TLS tests: apt-get install -y curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.contains("x-upstream: relay-a"),
        "{text}"
    );
}

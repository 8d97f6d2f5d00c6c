//! TLS listeners, and TLS upstreams with SNI. The TLS upstream is a second
//! relay-edge with a TLS listener in front of a demo relay.

use crate::common::*;
use std::process::Command;
use std::time::Duration;

/// A self-signed certificate for `localhost`, made with the openssl CLI.
pub fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    self_signed_named(dir, "localhost", "")
}

/// A self-signed certificate whose subject is `CN=<cn>` (for `localhost`),
/// as `<prefix>cert.pem` and `<prefix>key.pem` in `dir`.
pub fn self_signed_named(
    dir: &std::path::Path,
    cn: &str,
    prefix: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    certificate(dir, cn, prefix, &[])
}

/// A self-signed certificate for `localhost` that a verifying client takes
/// once it trusts it (an end entity: `CA:FALSE`, which rustls requires), as
/// `leaf-cert.pem` and `leaf-key.pem` in `dir`.
pub fn self_signed_leaf(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    certificate(
        dir,
        "localhost",
        "leaf-",
        &["-addext", "basicConstraints=critical,CA:FALSE"],
    )
}

fn certificate(
    dir: &std::path::Path,
    cn: &str,
    prefix: &str,
    extra: &[&str],
) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (
        dir.join(format!("{prefix}cert.pem")),
        dir.join(format!("{prefix}key.pem")),
    );
    let subject = format!("/CN={cn}");
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &subject,
        ])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(extra)
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
    let tls_relay = TestEdge::new(&upstreams_yaml(&ups))
        .threads(1)
        .tls(&cert, &key)
        .start()
        .await;
    // One worker thread: see the pooling note in README.
    let front = TestEdge::new(&format!(
        "upstreams:\n  - {{id: relay-tls, addr: '{}', tls: {{sni: localhost, verify: false}}}}\nhealth_check: {{interval: 200ms}}\naffinity: {{keys: [{{header: x-session-id}}]}}\n",
        tls_relay.addr
    ))
    .threads(1)
    .own_health_check()
    .start()
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

/// The subject of the certificate a real TLS client (`openssl s_client`)
/// is served by `addr` on a new handshake.
fn served_subject(addr: std::net::SocketAddr) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -subject"
        ))
        .output()
        .expect("the openssl CLI is needed for TLS tests: apt-get install -y openssl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Replace `to`'s contents with `from`'s as certbot does: a new file moved
/// over the old one.
fn replace_file(from: &std::path::Path, to: &std::path::Path) {
    let staged = to.with_extension("new");
    std::fs::copy(from, &staged).expect("copy");
    std::fs::rename(&staged, to).expect("rename");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_after_a_reload_and_a_broken_one_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = self_signed_named(dir.path(), "first.test", "");
    let (second_cert, second_key) = self_signed_named(dir.path(), "second.test", "2-");
    let (third_cert, _) = self_signed_named(dir.path(), "third.test", "3-");
    let ups = upstreams(&["relay-a"]).await;
    let edge = TestEdge::new(&upstreams_yaml(&ups))
        .threads(1)
        .tls(&cert, &key)
        .listen_port(free_port())
        .start()
        .await;
    assert!(served_subject(edge.addr).contains("CN = first.test"));
    let (_, stats) = edge.admin_json("GET", "/api/stats", b"").await;
    assert_eq!(stats["certificates"][0]["listener"], edge.addr.to_string());
    assert!(stats["certificates"][0]["subject"]
        .as_str()
        .is_some_and(|s| s.contains("first.test")));
    let days = stats["certificates"][0]["expires_in_days"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(days > 1.0 && days <= 2.0, "{days}");
    let expiry = format!(
        "relay_edge_tls_certificate_expiry_seconds{{listener=\"{}\"}}",
        edge.addr
    );
    assert!(edge.metrics().await.contains(&expiry));

    // An established connection, made with the first certificate.
    let mut open = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &edge.addr.to_string()])
        .args(["-servername", "localhost"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_client");

    // Renewed: the files are replaced, then a reload.
    replace_file(&second_cert, &cert);
    replace_file(&second_key, &key);
    let (code, report) = edge.admin_json("POST", "/api/reload", b"").await;
    assert_eq!(code, 200, "{report}");
    assert_eq!(
        report["certificates_renewed"],
        serde_json::json!([edge.addr.to_string()]),
        "{report}"
    );
    assert!(served_subject(edge.addr).contains("CN = second.test"));
    // The connection made before goes on, with its own certificate.
    {
        use std::io::{Read, Write};
        let stdin = open.stdin.as_mut().expect("stdin");
        stdin
            .write_all(b"GET /v1/x HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .expect("send on the old connection");
        let mut answer = String::new();
        let _ = open
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let _ = open.wait();
    }

    // A key that is not the certificate's: the reload is refused with the
    // key's path, and the certificate in force stays.
    replace_file(&third_cert, &cert);
    let (code, refused) = edge.admin_json("POST", "/api/reload", b"").await;
    assert_eq!(code, 400, "{refused}");
    let errors = refused["errors"].to_string();
    assert!(
        errors.contains(&key.display().to_string()) && errors.contains("does not match"),
        "{errors}"
    );
    assert!(served_subject(edge.addr).contains("CN = second.test"));
    // Nor does a file that is not a certificate.
    std::fs::write(&cert, "not a certificate\n").expect("write");
    let (code, refused) = edge.admin_json("POST", "/api/reload", b"").await;
    assert_eq!(code, 400, "{refused}");
    assert!(
        refused["errors"]
            .to_string()
            .contains(&cert.display().to_string()),
        "{refused}"
    );
    assert!(served_subject(edge.addr).contains("CN = second.test"));
    assert!(!edge.log().contains("PRIVATE KEY"), "no key in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_certificate_is_served_once_its_files_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = self_signed_named(dir.path(), "first.test", "");
    let (second_cert, second_key) = self_signed_named(dir.path(), "second.test", "2-");
    let ups = upstreams(&["relay-a"]).await;
    let edge = TestEdge::new(&format!(
        "{}reload: {{watch: true, debounce: 100ms}}\n",
        upstreams_yaml(&ups)
    ))
    .threads(1)
    .tls(&cert, &key)
    .start()
    .await;
    assert!(served_subject(edge.addr).contains("CN = first.test"));
    replace_file(&second_key, &key);
    replace_file(&second_cert, &cert);
    eventually(
        Duration::from_secs(20),
        "the new certificate served",
        || async { served_subject(edge.addr).contains("CN = second.test") },
    )
    .await;
}

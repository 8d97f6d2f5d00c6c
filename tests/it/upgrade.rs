//! Graceful binary upgrade: Pingora's socket hand-over, driven by this config.

use crate::common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_takes_the_sockets_while_the_old_one_finishes_its_streams() {
    let ups = upstreams(&["relay-a"]).await;
    let mut old = Edge::start_opts(&upstreams_yaml(&ups), 1, None, "30s").await;
    let mut new = old.start_upgrade().await;

    // A stream that runs across the hand-over, on the old process.
    let mut conn = Conn::open(old.addr).await.expect("connect");
    conn.send_raw(&raw_request(
        "GET",
        "/v1/messages?sse=8&gap_ms=250",
        &[],
        b"",
    ))
    .await
    .expect("send");
    let (stream, started) = stream_in_background(conn);
    started.await.expect("the stream started");
    old.signal("QUIT");

    // New connections are served all along: first by the old process, then by the new one.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut served = 0;
    while std::time::Instant::now() < deadline && old.alive() {
        let r = request(old.addr, "GET", "/v1/x", &[], b"")
            .await
            .expect("the listener never goes away");
        assert_eq!(r.status, 200);
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = stream
        .await
        .expect("task")
        .expect("the old process finishes its stream");
    assert!(r.text().contains("message_stop"), "{}", r.text());
    let code = tokio::task::block_in_place(|| old.wait_exit(Duration::from_secs(20)));
    assert_eq!(
        code,
        Some(0),
        "the old process exits once drained:\n{}",
        old.log()
    );
    assert!(served > 0);

    // The new process owns the sockets now, the admin service's too.
    let r = request(old.addr, "GET", "/v1/x", &[], b"")
        .await
        .expect("served by the new process");
    assert_eq!(r.status, 200);
    let (code, _) = old.admin_json("GET", "/readyz", b"").await;
    assert_eq!(code, 200, "{}", old.upgrade_log());
    assert!(matches!(new.try_wait(), Ok(None)), "the new process runs");
    let _ = new.kill();
    let _ = new.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_load_fails_no_request() {
    // The pins live in Redis, so they survive the change of process.
    let redis = RedisServer::start(None).await;
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let conf = format!(
        "{}affinity: {{keys: [{{header: x-session-id}}]}}\nredis: {{url: '{}'}}\n",
        upstreams_yaml(&ups),
        redis.url()
    );
    let mut old = Edge::start_opts(&conf, 1, None, "30s").await;
    eventually(Duration::from_secs(20), "redis connected", || async {
        old.admin_json("GET", "/api/stats", b"").await.1["redis"]["connected"] == true
    })
    .await;
    let mut new = old.start_upgrade().await;
    let addr = old.addr;
    let old_ref = &mut old;
    let load = crate::reload::under_load(addr, &["relay-a", "relay-b"], || async move {
        old_ref.signal("QUIT");
        let code = tokio::task::block_in_place(|| old_ref.wait_exit(Duration::from_secs(30)));
        assert_eq!(code, Some(0), "the old process exits after its streams end");
    })
    .await;
    eprintln!("upgrade under load: {load:?}");
    assert!(load.requests > 100, "the load ran: {load:?}");
    assert_eq!(
        (load.failures, load.broken, load.moved),
        (0, 0, 0),
        "{load:?}"
    );
    // Pingora drops idle keep-alive connections when a drain starts; a
    // request sent on one at that moment is resent by the client, at most
    // once per client connection (a reconnect may land on the old process
    // again while both hold the listener).
    assert!(load.retried <= 16, "{load:?}");
    assert!(
        matches!(new.try_wait(), Ok(None)),
        "the new process runs:\n{}",
        old.upgrade_log()
    );
    let _ = new.kill();
    let _ = new.wait();
}

//! The in-process table's tests.

use super::*;

pub(super) fn up(s: &str) -> Arc<str> {
    Arc::from(s)
}

pub(super) fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

#[test]
fn claim_keeps_the_first_pin_and_counts_per_upstream() {
    let s = LocalStore::new(100, Duration::from_secs(60));
    let id = SessionId(1);
    assert!(s.lookup_local(id).is_none());
    assert_eq!(&*block(s.claim(id, None, up("a"))).upstream, "a");
    assert_eq!(&*block(s.claim(id, None, up("b"))).upstream, "a");
    assert_eq!(s.counts().get("a"), Some(&1));
    assert_eq!(s.len(), 1);
}

#[test]
fn repin_is_compare_and_set() {
    let s = LocalStore::new(100, Duration::from_secs(60));
    let id = SessionId(2);
    block(s.claim(id, None, up("a")));
    s.lookup_local(id).expect("pinned").record(true);
    assert_eq!(&*block(s.repin(id, None, "zzz", up("b"))).upstream, "a");
    assert_eq!(&*block(s.repin(id, None, "a", up("b"))).upstream, "b");
    let info = block(s.get(id)).expect("info");
    assert_eq!(
        (info.upstream.as_str(), info.requests, info.errors),
        ("b", 1, 1)
    );
    let counts = s.counts();
    assert_eq!((counts.get("a"), counts.get("b")), (None, Some(&1)));
}

#[test]
fn bounded_with_lru_eviction_and_forget() {
    let s = LocalStore::new(10, Duration::from_secs(60));
    for i in 0..100u128 {
        block(s.claim(SessionId(i), None, up("a")));
    }
    assert!(s.len() <= 10, "len {}", s.len());
    assert_eq!(s.counts().get("a").copied().unwrap_or(0), s.len());
    let last = SessionId(99);
    assert!(block(s.forget(last)));
    assert!(block(s.get(last)).is_none());
}

#[test]
fn an_exported_table_is_imported_whole_but_for_gone_sessions() {
    let old = LocalStore::new(100, Duration::from_secs(3600));
    old.put(SessionId(1), Arc::from("a"), None, unix_ms() - 5_000);
    old.put(SessionId(2), Arc::from("b"), None, unix_ms());
    let mut handed = old.export();
    handed.push(HandedSession {
        id: SessionId(3).to_hex(),
        upstream: "a".into(),
        tenant: None,
        created_ms: 0,
        last_seen_ms: unix_ms() - 7_200_000,
        requests: 1,
        errors: 0,
    });
    handed.push(HandedSession {
        id: "not hex".into(),
        ..handed[0].clone()
    });
    let new = LocalStore::new(100, Duration::from_secs(3600));
    assert_eq!(
        new.import(handed),
        2,
        "the gone and the unreadable are skipped"
    );
    let one = new.lookup_local(SessionId(1)).expect("taken over");
    assert_eq!((&*one.upstream, one.created_ms > 0), ("a", true));
    assert_eq!(new.counts().get("b").copied(), Some(1));
    assert!(new.lookup_local(SessionId(3)).is_none());
}

#[test]
fn sliding_ttl_expires_idle_sessions() {
    let s = LocalStore::new(10, Duration::from_millis(200));
    let id = SessionId(7);
    block(s.claim(id, None, up("a")));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    // Gone at once for lookups; from the counts once a sweep has run.
    while block(s.get(id)).is_some() || s.counts().contains_key("a") {
        assert!(
            std::time::Instant::now() < deadline,
            "session never expired"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_shortened_ttl_applies_at_the_next_use() {
    let s = LocalStore::new(10, Duration::from_secs(3600));
    let id = SessionId(8);
    block(s.claim(id, None, up("a")));
    std::thread::sleep(Duration::from_millis(30));
    assert!(s.lookup_local(id).is_some(), "used within the TTL");
    s.set_ttl(Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(30));
    assert!(s.lookup_local(id).is_none(), "idle past the new TTL");
    assert_eq!(s.counts().get("a"), None);
    s.set_ttl(Duration::from_secs(3600));
    block(s.claim(id, None, up("b")));
    let left = block(s.get(id)).map(|i| i.ttl_left_seconds);
    assert!(matches!(left, Some(3599..=3600)), "ttl left {left:?}");
}

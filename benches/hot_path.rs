//! Micro-benchmarks of the request path's own pieces: key extraction from a
//! header, a cookie and a 1 MiB JSON body; the affinity-table lookup (local
//! hit); placement across 500 upstreams; cloning the peer; the in-flight
//! guard every request holds; the scan of a request head as it arrives; and
//! an access log line's formatting (on the writer's thread).
//!
//! Run with `cargo bench`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pingora_http::RequestHeader;
use relay_edge::affinity::json_scan::stream::StreamScan;
use relay_edge::affinity::store::{LocalStore, SessionStore};
use relay_edge::affinity::{KeyHasher, SessionId};
use relay_edge::clock;
use relay_edge::config;
use relay_edge::metrics::Metrics;
use relay_edge::state::State;
use relay_edge::upstream::select::{self, Tried};
use std::sync::Arc;
use std::time::Duration;

fn state(upstreams: usize, keys: &str) -> State {
    let mut yaml = String::from("listen: [{addr: 127.0.0.1:8080}]\nupstreams:\n");
    for i in 0..upstreams {
        yaml.push_str(&format!(
            "  - {{id: relay-{i}, addr: 127.0.0.{}:{}}}\n",
            1 + i / 60000,
            1024 + i % 60000
        ));
    }
    yaml.push_str(keys);
    let config = config::parse(&yaml).expect("bench config is valid");
    State::build(config, &Metrics::new(), 1)
}

fn request(headers: &[(&str, &str)]) -> RequestHeader {
    let mut r = RequestHeader::build("POST", b"/v1/messages?beta=true", None).expect("request");
    for (k, v) in headers {
        r.append_header(k.to_string(), *v).expect("header");
    }
    r
}

fn key_extraction(c: &mut Criterion) {
    let s = state(2, "affinity: {keys: [{header: x-session-id}, {cookie: session_id}, {json: /metadata/user_id}]}\n");
    let common = [
        ("content-type", "application/json"),
        ("anthropic-version", "2023-06-01"),
        ("user-agent", "claude-cli/2.1.0"),
    ];
    let by_header = request(&[
        common[0],
        common[1],
        common[2],
        ("x-session-id", "9f6c1c2e-1111-4222-8333-444455556666"),
    ]);
    c.bench_function("key/header", |b| {
        b.iter(|| black_box(s.keys.from_head(black_box(&by_header))))
    });
    let by_cookie = request(&[
        common[0],
        common[1],
        ("cookie", "theme=dark; session_id=9f6c1c2e-1111; lang=en"),
    ]);
    c.bench_function("key/cookie", |b| {
        b.iter(|| black_box(s.keys.from_head(black_box(&by_cookie))))
    });
    let by_body = request(&common);
    let mut body = br#"{"model":"m","messages":["#.to_vec();
    while body.len() < 1024 * 1024 {
        body.extend_from_slice(
            br#"{"role":"user","content":[{"type":"text","text":"lorem ipsum dolor sit amet"}]},"#,
        );
    }
    body.extend_from_slice(br#"{"role":"user","content":"end"}],"metadata":{"user_id":"user_ab_account_x_session_9f6c1c2e-1111-4222-8333-444455556666"}}"#);
    c.bench_function("key/json_1MiB_key_at_end", |b| {
        b.iter(|| black_box(s.keys.resume_with_body(&by_body, Some(black_box(&body)), 2)))
    });
    // The shape of a real Claude Code body: a few long strings (system
    // prompt, tool descriptions), then the metadata.
    let mut long = br#"{"model":"m","system":""#.to_vec();
    long.resize(1024 * 1024, b'x');
    long.extend_from_slice(br#"","messages":[{"role":"user","content":"hi"}],"metadata":{"user_id":"user_ab_account_x_session_9f6c1c2e-1111-4222-8333-444455556666"}}"#);
    c.bench_function("key/json_1MiB_long_string_key_at_end", |b| {
        b.iter(|| black_box(s.keys.resume_with_body(&by_body, Some(black_box(&long)), 2)))
    });
    // The same bodies scanned as they arrive (a spilled body), in 16 KiB
    // reads, for the key and `"stream"`, as `proxy::body` does.
    let streamed = |body: &[u8]| {
        let mut pointers = s.keys.body_pointers(2);
        pointers.push(vec!["stream".to_string()]);
        let mut scan = StreamScan::new(pointers, 64 * 1024).expect("two pointers");
        for chunk in body.chunks(16 * 1024) {
            scan.feed(chunk);
        }
        scan.finish()
    };
    c.bench_function("key/json_stream_1MiB_key_at_end", |b| {
        b.iter(|| black_box(streamed(black_box(&body))))
    });
    c.bench_function("key/json_stream_1MiB_long_string_key_at_end", |b| {
        b.iter(|| black_box(streamed(black_box(&long))))
    });
}

fn table_lookup(c: &mut Criterion) {
    let store = LocalStore::new(1_000_000, Duration::from_secs(3600));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let hasher = KeyHasher::new("bench");
    let up: Arc<str> = Arc::from("relay-1");
    let ids: Vec<SessionId> = (0..10_000)
        .map(|i| hasher.id(format!("key-{i}").as_bytes()))
        .collect();
    for id in &ids {
        rt.block_on(store.claim(*id, None, up.clone()));
    }
    let mut i = 0;
    c.bench_function("table/local_hit_10k_sessions", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            black_box(store.lookup_local(ids[i]))
        })
    });
    c.bench_function("table/keyed_hash_36B", |b| {
        b.iter(|| black_box(hasher.id(black_box(b"9f6c1c2e-1111-4222-8333-444455556666"))))
    });
}

fn placement(c: &mut Criterion) {
    let s = state(500, "");
    let tried = Tried::default();
    let now = clock::now_ms();
    c.bench_function("place/least_loaded_500", |b| {
        b.iter(|| black_box(select::least_loaded(&s.upstreams, &tried, &[], now)))
    });
    let id = SessionId(0x1234_5678_9abc_def0_1234_5678_9abc_def0);
    c.bench_function("place/consistent_500", |b| {
        b.iter(|| {
            black_box(select::consistent(
                &s.upstreams,
                black_box(id),
                1.25,
                &tried,
                &[],
                now,
            ))
        })
    });
    let u = s.upstreams.get(7).expect("upstream");
    c.bench_function("peer/clone_template", |b| b.iter(|| black_box(u.peer())));
}

fn in_flight(c: &mut Criterion) {
    let drain = relay_edge::drain::Drain::new();
    c.bench_function("drain/in_flight_guard", |b| {
        b.iter(|| drop(black_box(drain.enter())))
    });
}

/// The head scan every request's bytes pass (downstream::head): a Claude
/// Code head (about 1.3 KiB, 20 header fields) in one read and in 64-byte
/// pieces.
fn head_scan(c: &mut Criterion) {
    use relay_edge::downstream::head::{HeadScan, Verdict};
    let mut head = String::from("POST /v1/messages?beta=true HTTP/1.1\r\nhost: relay.example\r\n");
    for i in 0..18 {
        head.push_str(&format!("x-header-{i}: {}\r\n", "v".repeat(60)));
    }
    head.push_str("\r\n");
    let bytes = head.as_bytes();
    c.bench_function("head/scan_1.3KiB_one_read", |b| {
        b.iter(|| {
            let mut scan = HeadScan::new(32 * 1024, 8 * 1024);
            assert!(matches!(scan.feed(black_box(bytes)), Verdict::Complete(_)));
        })
    });
    c.bench_function("head/scan_1.3KiB_in_64B_reads", |b| {
        b.iter(|| {
            let mut scan = HeadScan::new(32 * 1024, 8 * 1024);
            let mut last = Verdict::Incomplete;
            for piece in black_box(bytes).chunks(64) {
                last = scan.feed(piece);
            }
            assert!(matches!(last, Verdict::Complete(_)));
        })
    });
}

/// What a held stream's scan costs (proxy::sse): one text delta event as
/// relays send it (about 150 bytes, one chunk each), the two usage events,
/// and a whole 30-event stream; and the first-event check.
fn stream_scan(c: &mut Criterion) {
    use relay_edge::proxy::sse::{first_event, StreamScan};
    let delta = br#"event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello, here is some text "}}

"#;
    let start = br#"event: message_start
data: {"type":"message_start","message":{"id":"msg_01","type":"message","role":"assistant","model":"claude-x","content":[],"usage":{"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":90000,"output_tokens":1}}}

"#;
    let end = br#"event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":120}}

event: message_stop
data: {"type":"message_stop"}

"#;
    c.bench_function("sse/scan_one_delta_event", |b| {
        let mut scan = StreamScan::default();
        b.iter(|| scan.feed(black_box(delta)))
    });
    c.bench_function("sse/scan_message_start_with_usage", |b| {
        let mut scan = StreamScan::default();
        b.iter(|| scan.feed(black_box(start)))
    });
    c.bench_function("sse/scan_30_event_stream", |b| {
        b.iter(|| {
            let mut scan = StreamScan::default();
            scan.feed(black_box(start));
            for _ in 0..28 {
                scan.feed(black_box(delta));
            }
            scan.feed(black_box(end));
            assert!(scan.completed);
        })
    });
    c.bench_function("sse/first_event_check", |b| {
        b.iter(|| first_event(black_box(start)))
    });
    // Is a body a streaming request? A 1 MiB body that is not (the load
    // bench's scenario e), and a Claude Code sized one that is.
    let mut big = br#"{"model":"m","stream":false,"messages":[{"role":"user","content":""#.to_vec();
    big.resize(1024 * 1024, b'x');
    big.extend_from_slice(br#""}],"metadata":{"user_id":"u"}}"#);
    let pointer = ["stream".to_string()];
    c.bench_function("held/json_scan_of_stream_1MiB (the check before)", |b| {
        b.iter(|| relay_edge::affinity::json_scan::find(black_box(&big), &pointer))
    });
    c.bench_function("held/wants_stream_1MiB_no", |b| {
        b.iter(|| relay_edge::proxy::stream_request::wants_stream(black_box(&big)))
    });
    let mut cc = br#"{"model":"m","system":""#.to_vec();
    cc.resize(90 * 1024, b'x');
    cc.extend_from_slice(br#"","messages":[{"role":"user","content":"hi"}],"metadata":{"user_id":"u"},"stream":true}"#);
    c.bench_function("held/wants_stream_90KiB_yes", |b| {
        b.iter(|| {
            assert!(relay_edge::proxy::stream_request::wants_stream(black_box(
                &cc
            )))
        })
    });
}

fn access_log_line(c: &mut Criterion) {
    use relay_edge::access_log::{Entry, Formatter};
    use relay_edge::config::model::AccessLogFormat;
    use relay_edge::outcome::{AffinityOutcome, StreamOutcome};
    let entry = Entry {
        at: std::time::SystemTime::now(),
        client: "10.0.0.7:51234".parse().ok(),
        method: http::Method::POST,
        version: http::Version::HTTP_11,
        target: smallvec::SmallVec::from_slice(b"/v1/messages?beta=true"),
        status: 200,
        upstream: Some("relay-a".into()),
        session: Some(SessionId(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef)),
        affinity: Some(AffinityOutcome::Hit),
        moved_reason: None,
        attempts: 1,
        bytes_in: 91_342,
        bytes_out: 18_211,
        upstream_head: Some(Duration::from_micros(640_200)),
        first_event: Some(Duration::from_micros(812_400)),
        total: Duration::from_micros(9_321_700),
        stream: Some(StreamOutcome::Completed),
        usage: Some(relay_edge::outcome::Usage {
            input: 12,
            cache_read: 41_877,
            cache_creation: 0,
            output: 377,
        }),
        referer: None,
        user_agent: Some("claude-cli/2.0.14 (external, cli)".into()),
    };
    let mut f = Formatter::default();
    for (name, format) in [
        ("access_log/json_line", AccessLogFormat::Json),
        ("access_log/combined_line", AccessLogFormat::Combined),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| black_box(f.format(black_box(&entry), format).len()))
        });
    }
}

criterion_group!(
    benches,
    key_extraction,
    table_lookup,
    placement,
    in_flight,
    head_scan,
    stream_scan,
    access_log_line
);
criterion_main!(benches);

//! Test support: real relay-edge child processes on ports they bind
//! themselves ([`edge`]), demo upstreams in-process (here), a raw HTTP/1.1
//! client ([`http`]), real `redis-server` children ([`redis`]), a real
//! Sentinel deployment ([`sentinel`]), real clients' command lines run to a
//! deadline ([`cli`]) through a recording tap ([`tap`]), and polling with
//! deadlines ([`wait`]).

#![allow(dead_code)]

pub mod cli;
pub mod edge;
pub mod http;
pub mod redis;
pub mod sentinel;
pub mod tap;
pub mod wait;

pub use cli::every_stream_completed_on;
pub use edge::{finishes_its_stream_and_exits, ready_addresses, Edge, TestEdge, BIN};
pub use http::{messages_body, open_stream, open_stream_with, raw_request, request, Conn};
pub use redis::{RedisCluster, RedisServer};
pub use sentinel::{repl_offset, SentinelSet};
pub use tap::{assert_each_header_reached_as_sent, Tap};
pub use wait::eventually;

use relay_edge::demo::DemoUpstream;
use std::net::TcpListener;

/// A free loopback port, never handed out twice in this test process (the
/// kernel may offer a just-released port again before its new owner binds
/// it). Only for what cannot take port 0: a `redis-server`, an address
/// nothing listens on, or a port a test must know before the start.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub async fn upstreams(names: &[&str]) -> Vec<DemoUpstream> {
    let mut ups = Vec::new();
    for name in names {
        ups.push(
            DemoUpstream::start(name, "127.0.0.1:0".parse().expect("addr"))
                .await
                .expect("upstream listens"),
        );
    }
    ups
}

pub fn upstreams_yaml<'a>(ups: impl IntoIterator<Item = &'a DemoUpstream>) -> String {
    let mut y = String::from("upstreams:\n");
    for u in ups {
        y.push_str(&format!("  - {{id: {}, addr: {}}}\n", u.name, u.addr));
    }
    y
}

/// The value of one Prometheus series (`name{labels}` as exported), 0 when
/// it is not there.
pub fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

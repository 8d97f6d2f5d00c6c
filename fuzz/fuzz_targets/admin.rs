//! The admin router, its path decoding and its JSON bodies, on one edge
//! (in-process table, no token): any method, path, query and body gets an
//! answer with a status and a JSON or page body, never a panic.
//!
//! Input: `METHOD PATH[?QUERY]\n` then the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_edge::admin::handler::{handle, AdminRequest};
use relay_edge::state::Edge;
use std::sync::{Arc, OnceLock};

struct World {
    runtime: tokio::runtime::Runtime,
    edge: Arc<Edge>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let config = relay_edge::config::parse(
            "listen: [{addr: 127.0.0.1:1}]\nupstreams: [{id: relay-a, addr: 127.0.0.1:2}, {id: relay-b, addr: 127.0.0.1:3}]\naffinity: {max_sessions: 1000}\n",
        )
        .expect("valid");
        let edge = runtime.block_on(async { Edge::new(config) });
        World { runtime, edge }
    })
}

fuzz_target!(|data: &[u8]| {
    let line_end = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let Ok(line) = std::str::from_utf8(&data[..line_end]) else {
        return;
    };
    let body = data.get(line_end + 1..).unwrap_or(&[]);
    let (method, target) = line.split_once(' ').unwrap_or((line, "/"));
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let w = world();
    let response = w.runtime.block_on(handle(
        &w.edge,
        AdminRequest {
            method,
            path,
            query,
            authorization: None,
            body,
        },
    ));
    assert!((200..600).contains(&response.status.as_u16()));
    assert!(!response.body.is_empty() || response.status == 204);
});

//! `relay-edge-demo-upstream ADDR...`: stand-in relays for the README demo.
//! Each address gets one upstream named `relay-a`, `relay-b`, ...

use relay_edge::demo::DemoUpstream;
use std::net::SocketAddr;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addrs: Vec<SocketAddr> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    if addrs.is_empty() {
        eprintln!(
            "usage: relay-edge-demo-upstream ADDR [ADDR...]   e.g. 127.0.0.1:9001 127.0.0.1:9002"
        );
        std::process::exit(2);
    }
    let mut running = Vec::new();
    for (i, addr) in addrs.into_iter().enumerate() {
        let name = format!("relay-{}", (b'a' + (i % 26) as u8) as char);
        match DemoUpstream::start(&name, addr).await {
            Ok(up) => {
                println!("{name} listening on {}", up.addr);
                running.push(up);
            }
            Err(e) => {
                eprintln!("cannot listen on {addr}: {e}");
                std::process::exit(1);
            }
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

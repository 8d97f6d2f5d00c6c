//! Client connections: what the edge lets a client hold before its request
//! reaches the proxy, and the loop over each connection's requests.
//!
//! - At most `limits.max_connections` open at once; one more is closed the
//!   moment it is accepted, and counted.
//! - Each request head is held to `limits.max_header_bytes`,
//!   `limits.max_uri_bytes` and `timeouts.client_header` as it arrives
//!   ([`gate`]), well below Pingora's own 1 MiB limit.
//! - HTTP/1.1 pipelining is on: requests that arrive together are answered
//!   in order.
//! - A drain keeps idle keep-alive connections open until it is quiet:
//!   Pingora would close them the moment its listeners close, under clients
//!   about to send ([`crate::drain`]).
//!
//! - Between two requests a connection waits outside Pingora, holding only
//!   its socket ([`idle`]).
//!
//! HTTP/2 (negotiated by TLS ALPN) goes to Pingora's own loop as it is.
//!
//! With `server.thread_model: workers` (the default), [`workers`] accepts
//! the connections and runs one [`ClientConnections`] per worker thread;
//! with `pingora`, Pingora's listening service runs one for all threads.

pub mod gate;
pub mod head;
pub mod idle;
pub mod workers;

use crate::outcome::ClientError;
use crate::proxy::EdgeProxy;
use crate::state::Edge;
use async_trait::async_trait;
use gate::{GatedStream, HeadLimits};
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct ClientConnections {
    pub proxy: Arc<HttpProxy<EdgeProxy>>,
    pub edge: Arc<Edge>,
    /// Open client connections, across every worker.
    open: Arc<AtomicUsize>,
    /// Bytes of small writes each connection gathers (see [`gate`]): the
    /// workers' connections have no L4 write buffer of Pingora's.
    write_buffer: usize,
    /// Closes the connections waiting between requests, once drained.
    closing: idle::Closing,
}

impl ClientConnections {
    /// `open` counts the connections of every `ClientConnections` that
    /// shares it, for `limits.max_connections`.
    pub fn new(
        proxy: Arc<HttpProxy<EdgeProxy>>,
        edge: Arc<Edge>,
        open: Arc<AtomicUsize>,
        write_buffer: usize,
    ) -> ClientConnections {
        ClientConnections {
            proxy,
            edge,
            open,
            write_buffer,
            closing: idle::Closing::default(),
        }
    }

    fn head_limits(&self) -> HeadLimits {
        let config = &self.edge.state().config;
        HeadLimits {
            max_head: config.limits.max_header_bytes,
            max_uri: config.limits.max_uri_bytes,
            deadline: config.timeouts.client_header,
        }
    }

    /// Serve HTTP/1.x requests on `stream` until it closes.
    async fn serve_http1(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) {
        let metrics = self.edge.metrics.clone();
        let stream: Stream = Box::new(GatedStream::new(
            stream,
            self.head_limits(),
            metrics,
            self.write_buffer,
        ));
        let mut session = ServerSession::new_http1(stream);
        // As Pingora's own loop: the first request gets no keep-alive once
        // shutting down; the proxy sets its own after that.
        session.set_keepalive((!*shutdown.borrow()).then_some(60));
        session.set_pipelining_enabled(true);
        loop {
            let reused = self.proxy.process_new_http(session, shutdown).await;
            let Some((stream, settings)) = reused.map(|r| r.consume()) else {
                return;
            };
            let Ok(mut gated) = stream.into_any().downcast::<GatedStream>() else {
                // Not reachable: every HTTP/1 connection here is gated.
                log::error!("a client connection lost its gate: closing it");
                return;
            };
            gated.watch_next_head(self.head_limits());
            // Wait for the next request here, not inside Pingora.
            if let idle::Between::Wait(within) = idle::between(settings.as_ref()) {
                if !idle::next_bytes(&mut gated, within, &self.closing).await {
                    return;
                }
            }
            let stream: Stream = gated;
            session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
        }
    }
}

/// One open client connection, counted until dropped.
struct Open<'a> {
    count: &'a AtomicUsize,
    gauge: &'a prometheus::IntGauge,
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

#[async_trait]
impl ServerApp for ClientConnections {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let max = self.edge.state().config.limits.max_connections;
        if self.open.fetch_add(1, Ordering::Relaxed) >= max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            self.edge.metrics.client_error(ClientError::ConnectionLimit);
            return None;
        }
        self.edge.metrics.client_connections.inc();
        let _open = Open {
            count: &self.open,
            gauge: &self.edge.metrics.client_connections,
        };
        if matches!(
            stream.selected_alpn_proto(),
            Some(ALPN::H2) | Some(ALPN::Custom(_))
        ) {
            return ServerApp::process_new(&self.proxy, stream, shutdown).await;
        }
        self.serve_http1(stream, shutdown).await;
        None
    }

    /// Called once the listeners are closed.
    async fn cleanup(&self) {
        self.edge.drain.begin();
        let quiet = self.edge.state().config.server.drain_quiet;
        self.edge.drain.until_quiet(quiet).await;
        self.closing.close();
        self.proxy.http_cleanup().await;
    }
}

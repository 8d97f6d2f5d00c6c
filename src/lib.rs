//! relay-edge: an edge HTTP proxy, on Pingora, that keeps every LLM API
//! session on the relay that holds its state.
//!
//! ```text
//! client ──► listener ──► downstream (connection limit; head size and deadline)
//!                           │
//!                           ▼
//!                         proxy::request_filter ── affinity::keys ──► SessionId
//!                           │ (JSON key: proxy::body reads the body, keeps it for replay)
//!                           ▼
//!                         proxy::upstream_peer ── proxy::route ──► affinity::store (pin?)
//!                           │                         │   (local cache; Redis on a miss:
//!                           │                         │    affinity::redis_store)
//!                           │                         └─ upstream::select (new session)
//!                           ▼
//!                         upstream (pooled HttpPeer) ──► response streamed back (SSE too)
//!                           │ connect failure: upstream::ejection, retry elsewhere, re-pin
//!                           ▼
//!                         proxy::logging ──► metrics, session counters, access_log (queued)
//!
//! upstream::health  background service: active checks of every upstream
//! redis sync        background service: pub/sub invalidations, batched TTL renewals,
//!                   write-back after an outage
//! purge             pins forgotten or moved in bulk (admin, on_remove, on_eject)
//! admin             its own listener: JSON API, /metrics, dashboard (history, indicators)
//! history           background service: a sample of the counters every 10 s
//! access log        its own thread: formats and writes the queued lines
//! ctl               `relay-edge ctl`: the admin API from the command line
//! ```
//!
//! [`server::build`] wires the Pingora server from a validated [`config::Config`].

pub mod access_log;
pub mod admin;
pub mod affinity;
pub mod budgets;
pub mod capacity;
pub mod certificates;
pub mod clock;
pub mod config;
pub mod ctl;
pub mod demo;
pub mod downstream;
pub mod drain;
pub mod history;
pub mod indicators;
pub mod logging;
pub mod metrics;
pub mod outcome;
pub mod proxy;
pub mod purge;
pub mod ready_file;
pub mod reload;
pub mod server;
pub mod services;
pub mod state;
pub mod supervision;
pub mod tenants;
pub mod upgrade;
pub mod upstream;

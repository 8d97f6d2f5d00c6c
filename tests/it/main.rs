//! Integration tests: the real relay-edge binary against real upstream
//! servers on ephemeral ports. One test binary, so Pingora links once.

mod access_log;
mod admin;
mod agents;
mod answers;
mod bad_input;
mod bodies;
mod capacity;
mod codex;
mod common;
mod config_files;
mod contrib;
mod ctl;
mod dashboard;
mod drain;
mod failover;
mod framing;
mod hostile;
mod idle;
mod opencode;
mod operations_guide;
mod package;
mod proxies;
mod purge;
mod ready_file;
mod redis_cost;
pub mod reload;
mod routing;
mod secrets;
mod sentinel;
mod shared_table;
mod spill;
mod syscalls;
mod systemd;
mod tenants;
mod tls;
mod upgrade;

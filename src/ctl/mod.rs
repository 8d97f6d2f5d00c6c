//! `relay-edge ctl`: the admin API of a running edge, from the command line,
//! as `haproxy`'s stats socket and `nginx -s` are to their operators.
//!
//! The address and the token come from the `admin` section of the edge's
//! own config file (`-c`, else `$RELAY_EDGE_CONFIG`, else
//! [`DEFAULT_CONFIG`]); the rest of the file is not read, so a file being
//! edited still serves `ctl reload`, which reports what is wrong with it. Each command is one
//! admin request; the answer is read as its view ([`crate::admin::views`])
//! and printed as a table for people, or printed as the API's JSON with
//! `--json`. Every error says what to do next.

use crate::admin::views::{ErrorView, PinRequest, UpstreamView};
use crate::config;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

mod text;

use text::*;

pub const DEFAULT_CONFIG: &str = "/etc/relay-edge/relay-edge.yaml";

/// The largest admin reply read (a list of 10,000 sessions is a few MiB).
const MAX_REPLY: u64 = 64 << 20;

#[derive(clap::Args, Debug)]
pub struct CtlArgs {
    /// Print the admin API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Version, uptime, generation, sessions, affinity, Redis, the last
    /// reload and the indicators.
    Status,
    /// Every upstream: state, load and counters.
    Upstreams,
    /// Take no new sessions on upstream ID; its sessions move off.
    Drain { id: String },
    /// Let upstream ID take sessions again.
    Undrain { id: String },
    /// Where session KEY (as the client sends it) is pinned.
    Session {
        key: String,
        /// The session of this tenant (its hash, as `status` shows it).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Pin session KEY to upstream ID.
    Pin {
        key: String,
        id: String,
        /// The session of this tenant (its hash, as `status` shows it).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Forget session KEY: its next request is placed anew.
    Forget {
        key: String,
        /// The session of this tenant (its hash, as `status` shows it).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Forget pins in bulk, on every edge that shares the table: their
    /// sessions' next requests are placed anew.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["upstream", "tenant", "all"])))]
    Purge {
        /// Every pin to upstream ID.
        #[arg(long, value_name = "ID")]
        upstream: Option<String>,
        /// Every pin of this tenant's sessions (its hash, as `status` shows it).
        #[arg(long, value_name = "HASH")]
        tenant: Option<String>,
        /// Every pin.
        #[arg(long)]
        all: bool,
    },
    /// Reload the config file of the running edge.
    Reload,
}

/// What a command failed on: printed as `relay-edge ctl: <message>`.
struct Failure(String);

/// Run one ctl command; `config` is the `-c` argument, if given.
pub fn run(config: Option<PathBuf>, args: CtlArgs) -> ExitCode {
    let path = config
        .or_else(|| std::env::var_os("RELAY_EDGE_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    match execute(&path, &args) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(Failure(message)) => {
            eprintln!("relay-edge ctl: {message}");
            ExitCode::from(1)
        }
    }
}

fn execute(path: &Path, args: &CtlArgs) -> Result<String, Failure> {
    let admin = Admin::from_config(path)?;
    let key_path = |key: &str, tenant: &Option<String>| match tenant {
        None => format!("/api/sessions/{}", encode(key)),
        Some(t) => format!("/api/sessions/{}?tenant={}", encode(key), encode(t)),
    };
    let (method, route, body) = match &args.command {
        Command::Status => ("GET", "/api/stats".to_string(), None),
        Command::Upstreams => ("GET", "/api/upstreams".to_string(), None),
        Command::Drain { id } => ("POST", format!("/api/upstreams/{}/drain", encode(id)), None),
        Command::Undrain { id } => (
            "POST",
            format!("/api/upstreams/{}/undrain", encode(id)),
            None,
        ),
        Command::Session { key, tenant } => ("GET", key_path(key, tenant), None),
        Command::Pin { key, id, tenant } => {
            let pin = PinRequest {
                upstream: id.clone(),
                metadata: None,
            };
            let body = serde_json::to_string(&pin)
                .map_err(|e| Failure(format!("cannot write the pin's body: {e}")))?;
            ("PUT", key_path(key, tenant), Some(body))
        }
        Command::Forget { key, tenant } => ("DELETE", key_path(key, tenant), None),
        Command::Purge {
            upstream,
            tenant,
            all,
        } => {
            let query = match (upstream, tenant) {
                (Some(id), _) => format!("upstream={}", encode(id)),
                (_, Some(t)) => format!("tenant={}", encode(t)),
                _ => format!("all={all}"),
            };
            ("DELETE", format!("/api/sessions?{query}"), None)
        }
        Command::Reload => ("POST", "/api/reload".to_string(), None),
    };
    let (status, body) = admin.call(method, &route, body.as_deref())?;
    if status == 401 {
        return Err(Failure(format!(
            "the admin API at {} refused the token. admin.token_file in {} must hold the running edge's token; after changing the file, reload the edge (systemctl reload relay-edge) so that it reads it too.",
            admin.addr,
            path.display()
        )));
    }
    if !(200..300).contains(&status) {
        return Err(Failure(refusal(&args.command, status, &body)));
    }
    if args.json {
        let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        return Ok(format!("{}\n", pretty(&value)));
    }
    Ok(match &args.command {
        Command::Status => status_text(&admin.read(&body)?),
        Command::Upstreams => upstreams_table(&admin.read::<Vec<UpstreamView>>(&body)?),
        Command::Drain { id } => drain_text(id, &admin.read(&body)?),
        Command::Undrain { id } => format!(
            "{id}: takes sessions again{}\n",
            shared_note(&admin.read(&body)?)
        ),
        Command::Session { key, .. } | Command::Pin { key, .. } => {
            session_text(key, &admin.read(&body)?)
        }
        Command::Forget { key, .. } => {
            format!("{key}: forgotten; its next request is placed anew\n")
        }
        Command::Purge { .. } => purge_text(&admin.read(&body)?),
        Command::Reload => reload_text(&admin.read(&body)?),
    })
}

/// What the API's refusal means for this command, and what to do.
fn refusal(command: &Command, status: u16, body: &[u8]) -> String {
    let error = serde_json::from_slice::<ErrorView>(body).ok();
    let said = error
        .as_ref()
        .map_or("no reason given", |e| e.error.as_str());
    match (command, status) {
        (Command::Drain { id } | Command::Undrain { id } | Command::Pin { id, .. }, 404 | 400)
            if said.contains("upstream") =>
        {
            format!(
                "no upstream {id:?} in the running config; `relay-edge ctl upstreams` lists them"
            )
        }
        (Command::Session { key, .. } | Command::Forget { key, .. }, 404) => {
            format!("no session {key:?}: it has no pin (never seen, expired or forgotten); its next request is placed anew")
        }
        (Command::Purge { .. }, 400) => {
            format!("the edge refused the purge: {said}; see `relay-edge ctl purge --help`")
        }
        (Command::Purge { .. }, 503) => format!(
            "{said}. Pins are left in the shared table: check the redis section of `relay-edge ctl status`, then run the purge again"
        ),
        (Command::Reload, 400) => {
            let mut text = String::from(
                "the config file was rejected; the running config stays. Fix these and run `relay-edge ctl reload` again:",
            );
            for e in error.iter().flat_map(|e| e.errors.iter().flatten()) {
                let _ = write!(text, "\n  {e}");
            }
            text
        }
        _ => format!("the admin API answered {status}: {said}"),
    }
}

/// The admin listener of the running edge, and its token.
struct Admin {
    addr: SocketAddr,
    token: Option<String>,
}

impl Admin {
    fn from_config(path: &Path) -> Result<Admin, Failure> {
        let admin = config::load_admin(path).map_err(|e| {
            let mut text = format!("cannot use the config {}:", path.display());
            for line in e.lines() {
                let _ = write!(text, "\n  {line}");
            }
            text.push_str("\nctl reads admin.listen and admin.token_file from the edge's config: pass it with -c FILE or $RELAY_EDGE_CONFIG, and run as root or as a member of the relay-edge group.");
            Failure(text)
        })?;
        let mut addr = admin.listen;
        // A listener on every address is reached on loopback.
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        Ok(Admin {
            addr,
            token: admin.token,
        })
    }

    /// One request on its own connection: the status and the body.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, Vec<u8>), Failure> {
        let unreachable = |e: std::io::Error| {
            Failure(format!(
                "cannot reach the admin API at {}: {e}. Is relay-edge running (systemctl status relay-edge), and is this its config (admin.listen)?",
                self.addr
            ))
        };
        let mut stream =
            TcpStream::connect_timeout(&self.addr, Duration::from_secs(3)).map_err(unreachable)?;
        // A reload may take a while: it waits for health checks of new upstreams.
        let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
        let body = body.unwrap_or("");
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if !body.is_empty() {
            request.push_str("Content-Type: application/json\r\n");
        }
        if let Some(token) = &self.token {
            let _ = write!(request, "Authorization: Bearer {token}\r\n");
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream.write_all(request.as_bytes()).map_err(unreachable)?;
        // Bounded: whatever answers on that port, ctl does not hold more.
        let mut reply = Vec::new();
        stream
            .take(MAX_REPLY)
            .read_to_end(&mut reply)
            .map_err(unreachable)?;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let head_len = match response.parse(&reply) {
            Ok(httparse::Status::Complete(n)) => n,
            _ => {
                return Err(Failure(format!(
                    "{} did not answer as relay-edge's admin API does; is admin.listen right?",
                    self.addr
                )))
            }
        };
        let status = response.code.unwrap_or(0);
        reply.drain(..head_len);
        Ok((status, reply))
    }

    /// A successful answer, read as the view its route answers with.
    fn read<T: DeserializeOwned>(&self, body: &[u8]) -> Result<T, Failure> {
        serde_json::from_slice(body).map_err(|e| {
            Failure(format!(
                "the admin API at {} answered in a shape this ctl cannot read ({e}); `relay-edge ctl --json` prints it as it came",
                self.addr
            ))
        })
    }
}

/// Everything but RFC 3986's unreserved characters, so that a key or an
/// id is one path segment whatever it holds.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn encode(text: &str) -> String {
    utf8_percent_encode(text, SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::views::ReloadReport;

    #[test]
    fn tables_align_their_columns() {
        let t = table(
            &["ID", "STATE"],
            &[
                vec!["relay-a".into(), "healthy".into()],
                vec!["b".into(), "draining".into()],
            ],
        );
        assert_eq!(t, "ID       STATE\nrelay-a  healthy\nb        draining\n");
    }

    #[test]
    fn a_reload_report_is_read_as_its_view() {
        let report: ReloadReport = serde_json::from_str(
            r#"{"generation": 3, "took_ms": 12.3456, "added": ["x", "y"], "removed": [],
                "changed": ["z"], "needs_upgrade": ["listen"], "certificates_renewed": []}"#,
        )
        .expect("a reload's answer");
        let text = reload_text(&report);
        assert!(text.starts_with(
            "reloaded: generation 3 in 12.35 ms\nadded      x, y\nremoved    -\nchanged    z\nNOT APPLIED listen "
        ), "{text}");
    }

    /// What a purge and a drain that purged print, with Redis and without.
    #[test]
    fn a_purge_says_what_went_where() {
        use crate::admin::views::{DrainView, PurgeView};
        let purge = |removed, local, shared| PurgeView {
            purged: "upstream relay-a".into(),
            removed,
            local,
            shared,
        };
        let cases = [
            (
                purge(1100, 40, true),
                "purged upstream relay-a: 1100 pins removed from redis; every edge dropped its cached ones (40 here); their sessions are placed anew\n",
            ),
            (
                purge(1, 1, false),
                "purged upstream relay-a: 1 pin removed from this edge's table; their sessions are placed anew\n",
            ),
        ];
        for (view, want) in cases {
            assert_eq!(purge_text(&view), want);
        }
        let drained = |purged, purge_error: Option<&str>| DrainView {
            id: "relay-a".into(),
            draining: true,
            shared: true,
            purged,
            purge_error: purge_error.map(String::from),
        };
        let cases = [
            (drained(None, None), "relay-a: draining; it takes no new sessions and its sessions move off (every edge on this Redis follows)\n"),
            (drained(Some(7), None), "relay-a: draining; it takes no new sessions, and its 7 pins were purged (on_remove: purge) (every edge on this Redis follows)\n"),
            (drained(Some(2), Some("redis is unreachable")), "relay-a: draining; it takes no new sessions, and its 2 pins were purged (on_remove: purge) (every edge on this Redis follows)\nthe purge stopped: redis is unreachable; run `relay-edge ctl purge --upstream relay-a`\n"),
        ];
        for (view, want) in cases {
            assert_eq!(drain_text("relay-a", &view), want);
        }
    }

    #[test]
    fn keys_are_encoded_whole_into_one_path_segment() {
        assert_eq!(encode("relay-a/b c?"), "relay-a%2Fb%20c%3F");
    }
}

//! An upstream's egress proxy (`upstreams[].proxy`), as the validated
//! config holds it: which protocol, where the proxy is, how the relay is
//! named to it, and the credentials. Nothing here prints a password: the
//! `Debug` and the URL shown to operators leave it out.

use std::fmt;
use std::net::SocketAddr;

/// How the edge asks the proxy for a connection to the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// `socks5://`: the relay's name is resolved by the edge, at load.
    Socks5,
    /// `socks5h://`: the proxy resolves the relay's name.
    Socks5h,
    /// `http://`: an HTTP `CONNECT` (the proxy resolves the relay's name).
    HttpConnect,
}

impl ProxyProtocol {
    pub fn scheme(self) -> &'static str {
        match self {
            ProxyProtocol::Socks5 => "socks5",
            ProxyProtocol::Socks5h => "socks5h",
            ProxyProtocol::HttpConnect => "http",
        }
    }
}

/// The relay, as the proxy is asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyTarget {
    /// An address (`socks5://`, or a relay written as an IP address).
    Addr(SocketAddr),
    /// A name the proxy resolves (`socks5h://`, `http://`).
    Name { host: String, port: u16 },
}

impl fmt::Display for ProxyTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyTarget::Addr(addr) => write!(f, "{addr}"),
            ProxyTarget::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// A proxy user and password, percent-decoded. `Debug` shows the user only.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyCredentials {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for ProxyCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyCredentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// One upstream's egress proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamProxy {
    pub protocol: ProxyProtocol,
    /// The proxy as written (`host:port`), for display. Its address,
    /// resolved at load and at each reload, is the upstream's `addr`.
    pub authority: String,
    pub target: ProxyTarget,
    pub credentials: Option<ProxyCredentials>,
}

impl UpstreamProxy {
    /// The proxy's URL without its password (`socks5h://user@host:port`):
    /// what `--check`, logs, the admin API and `ctl` show.
    pub fn shown(&self) -> String {
        let scheme = self.protocol.scheme();
        match &self.credentials {
            Some(c) => format!("{scheme}://{}@{}", c.user, self.authority),
            None => format!("{scheme}://{}", self.authority),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neither_debug_nor_the_shown_url_holds_the_password() {
        let proxy = UpstreamProxy {
            protocol: ProxyProtocol::Socks5h,
            authority: "egress.internal:1080".into(),
            target: ProxyTarget::Name {
                host: "relay.example".into(),
                port: 443,
            },
            credentials: Some(ProxyCredentials {
                user: "alice".into(),
                password: "s3cret-pass".into(),
            }),
        };
        assert_eq!(proxy.shown(), "socks5h://alice@egress.internal:1080");
        let debug = format!("{proxy:?} {:#?}", proxy);
        assert!(!debug.contains("s3cret-pass"), "{debug}");
        assert!(debug.contains("alice"), "{debug}");
    }
}

//! Connections to a relay through its egress proxy (`upstreams[].proxy`).
//!
//! [`Tunnel`] is the `custom_l4` connector of a proxied relay's peer. The
//! peer's address is the proxy's, so that Pingora's pool check (a
//! `getpeername` against the peer address) accepts a pooled tunnel. The
//! connector dials that address, asks the proxy for the relay (SOCKS5, or
//! an HTTP `CONNECT` in [`connect`]), and hands Pingora the stream; TLS to a
//! relay then runs inside the tunnel, with the relay's SNI and
//! verification. The pool key is [`group_key`], since Pingora's own leaves
//! out `custom_l4`. Every failure is a `ConnectProxyFailure` (a timeout a
//! `ConnectTimedout`), bounded by the connector itself: Pingora's
//! `connection_timeout` does not wrap a custom connector.

mod connect;

use crate::config::{ProxyProtocol, ProxyTarget, UpstreamProxy};
use async_trait::async_trait;
use pingora_core::connectors::L4Connect;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::{Error, ErrorType, OrErr, Result};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_socks::tcp::Socks5Stream;

/// The connector of one proxied relay.
pub struct Tunnel {
    proxy: UpstreamProxy,
    /// The bound on dialing the proxy and its handshake together.
    within: Duration,
}

impl Tunnel {
    pub fn new(proxy: UpstreamProxy, within: Duration) -> Tunnel {
        Tunnel { proxy, within }
    }

    async fn open(&self, addr: std::net::SocketAddr) -> Result<TcpStream> {
        let tcp = TcpStream::connect(addr)
            .await
            .or_err_with(ErrorType::ConnectProxyFailure, || {
                format!("cannot connect to proxy {}", self.proxy.shown())
            })?;
        tcp.set_nodelay(true)
            .or_err(ErrorType::ConnectProxyFailure, "setting TCP_NODELAY")?;
        match self.proxy.protocol {
            ProxyProtocol::Socks5 | ProxyProtocol::Socks5h => self.socks5(tcp).await,
            ProxyProtocol::HttpConnect => {
                let authorization = self.proxy.credentials.as_ref().map(connect::basic);
                connect::handshake(tcp, &self.proxy.target, authorization.as_deref()).await
            }
        }
        .map_err(|e| e.more_context(format!("through proxy {}", self.proxy.shown())))
    }

    async fn socks5(&self, tcp: TcpStream) -> Result<TcpStream> {
        let refused = |e: tokio_socks::Error| {
            Error::because(
                ErrorType::ConnectProxyFailure,
                format!("SOCKS5 to {}", self.proxy.target),
                e,
            )
        };
        let stream = match (&self.proxy.target, &self.proxy.credentials) {
            (ProxyTarget::Addr(a), None) => Socks5Stream::connect_with_socket(tcp, *a).await,
            (ProxyTarget::Addr(a), Some(c)) => {
                Socks5Stream::connect_with_password_and_socket(tcp, *a, &c.user, &c.password).await
            }
            (ProxyTarget::Name { host, port }, None) => {
                Socks5Stream::connect_with_socket(tcp, (host.as_str(), *port)).await
            }
            (ProxyTarget::Name { host, port }, Some(c)) => {
                Socks5Stream::connect_with_password_and_socket(
                    tcp,
                    (host.as_str(), *port),
                    &c.user,
                    &c.password,
                )
                .await
            }
        };
        Ok(stream.map_err(refused)?.into_inner())
    }
}

/// Without the password: `PeerOptions` prints its `custom_l4`.
impl fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tunnel({} to {})", self.proxy.shown(), self.proxy.target)
    }
}

#[async_trait]
impl L4Connect for Tunnel {
    async fn connect(&self, addr: &SocketAddr) -> Result<Stream> {
        let SocketAddr::Inet(addr) = addr else {
            return Error::e_explain(ErrorType::ConnectProxyFailure, "a proxy is a TCP address");
        };
        match tokio::time::timeout(self.within, self.open(*addr)).await {
            Ok(tcp) => Ok(tcp?.into()),
            Err(_) => Error::e_explain(
                ErrorType::ConnectTimedout,
                format!(
                    "no tunnel through proxy {} within {:?}",
                    self.proxy.shown(),
                    self.within
                ),
            ),
        }
    }
}

/// The pool key of relay `id` behind `proxy`: two relays behind one proxy,
/// or one proxy under two users, never share a pooled connection.
pub fn group_key(id: &str, proxy: &UpstreamProxy) -> u64 {
    let mut h = siphasher::sip::SipHasher13::new();
    id.hash(&mut h);
    proxy.target.to_string().hash(&mut h);
    proxy.shown().hash(&mut h);
    proxy.credentials.as_ref().map(|c| &c.user).hash(&mut h);
    // Never 0: Pingora's default group key.
    h.finish().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProxyCredentials;

    fn proxy(user: Option<&str>, target: &str) -> UpstreamProxy {
        UpstreamProxy {
            protocol: ProxyProtocol::Socks5h,
            authority: "127.0.0.1:1080".into(),
            target: ProxyTarget::Name {
                host: target.into(),
                port: 443,
            },
            credentials: user.map(|u| ProxyCredentials {
                user: u.into(),
                password: "hunter2".into(),
            }),
        }
    }

    #[test]
    fn group_keys_part_relays_targets_and_users() {
        let a = group_key("relay-a", &proxy(Some("alice"), "a.example"));
        let keys = [
            a,
            group_key("relay-b", &proxy(Some("alice"), "a.example")),
            group_key("relay-a", &proxy(Some("bob"), "a.example")),
            group_key("relay-a", &proxy(None, "a.example")),
            group_key("relay-a", &proxy(Some("alice"), "b.example")),
        ];
        let distinct: std::collections::HashSet<u64> = keys.iter().copied().collect();
        assert_eq!(distinct.len(), keys.len(), "{keys:?}");
        // The same relay behind the same proxy and user: one pool.
        assert_eq!(a, group_key("relay-a", &proxy(Some("alice"), "a.example")));
    }

    #[test]
    fn its_debug_has_no_password() {
        let t = Tunnel::new(proxy(Some("alice"), "a.example"), Duration::from_secs(1));
        let shown = format!("{t:?}");
        assert_eq!(
            shown,
            "Tunnel(socks5h://alice@127.0.0.1:1080 to a.example:443)"
        );
    }
}

//! `upstreams[].proxy`: a URL checked into an [`UpstreamProxy`]. The proxy's
//! own name is resolved here, at load and at each reload; the relay's only
//! for `socks5://` (the other two let the proxy resolve it). No message
//! echoes the URL, which may hold a password.

use super::*;
use crate::config::{ProxyCredentials, ProxyProtocol, ProxyTarget, UpstreamProxy};
use percent_encoding::percent_decode_str;

/// SOCKS5 carries a user and a password in at most 255 bytes each (RFC 1929).
const SOCKS_FIELD_MAX: usize = 255;

/// The proxy named by `url` for the relay at `relay` (`host:port`, as
/// written in `addr`), and the address to connect to: the proxy's. Errors
/// go to `errs` under `path`.
pub(super) fn upstream_proxy(
    url: &str,
    relay: &str,
    path: &str,
    errs: &mut Errors,
) -> Option<(UpstreamProxy, SocketAddr)> {
    let mut fail = |message: String| {
        errs.push(path, message);
        None
    };
    let Ok(parsed) = url::Url::parse(url) else {
        return fail(
            "not a proxy URL: socks5h://user:pass@host:port, socks5://… or http://…".into(),
        );
    };
    let protocol = match parsed.scheme() {
        "socks5h" => ProxyProtocol::Socks5h,
        "socks5" => ProxyProtocol::Socks5,
        "http" => ProxyProtocol::HttpConnect,
        "https" => {
            return fail("a TLS connection to the proxy (https://) is not supported: use http:// (CONNECT; TLS to the relay runs inside it) or socks5h://".into())
        }
        // The scheme is not echoed: in `user:pass@host` it is the user.
        _ => return fail("the scheme must be socks5h://, socks5:// or http://".into()),
    };
    let Some(host) = parsed.host_str().filter(|h| !h.is_empty()) else {
        return fail("the proxy URL needs a host".into());
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = match protocol {
        ProxyProtocol::HttpConnect => parsed.port_or_known_default(),
        _ => parsed.port(),
    };
    let Some(port) = port else {
        return fail("the proxy URL needs a port (socks5h://host:1080)".into());
    };
    if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() || parsed.fragment().is_some()
    {
        return fail("the proxy URL has no path, query or fragment".into());
    }
    let credentials = match credentials(&parsed, protocol) {
        Ok(c) => c,
        Err(message) => return fail(message),
    };
    let Some(addr) = (host.as_str(), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
    else {
        return fail(format!("cannot resolve the proxy's host {host:?}"));
    };
    let target = match target(relay, protocol) {
        Ok(t) => t,
        Err(message) => {
            errs.push(path.replace(".proxy", ".addr"), message);
            return None;
        }
    };
    let authority = match addr {
        SocketAddr::V6(_) if host.contains(':') => format!("[{host}]:{port}"),
        _ => format!("{host}:{port}"),
    };
    let proxy = UpstreamProxy {
        protocol,
        authority,
        target,
        credentials,
    };
    Some((proxy, addr))
}

/// The URL's user and password, percent-decoded; none when it has no user.
fn credentials(
    url: &url::Url,
    protocol: ProxyProtocol,
) -> Result<Option<ProxyCredentials>, String> {
    let decode = |s: &str| {
        percent_decode_str(s)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| {
                "the proxy's user and password must be UTF-8 once percent-decoded".to_string()
            })
    };
    let user = decode(url.username())?;
    let password = decode(url.password().unwrap_or(""))?;
    if user.is_empty() {
        return match password.is_empty() {
            true => Ok(None),
            false => Err("the proxy URL has a password but no user".into()),
        };
    }
    let socks = protocol != ProxyProtocol::HttpConnect;
    if socks && (user.len() > SOCKS_FIELD_MAX || password.len() > SOCKS_FIELD_MAX) {
        return Err(format!(
            "a SOCKS5 user and password are at most {SOCKS_FIELD_MAX} bytes each"
        ));
    }
    if !socks && user.contains(':') {
        return Err("an HTTP proxy's user cannot hold ':' (Basic authentication)".into());
    }
    Ok(Some(ProxyCredentials { user, password }))
}

/// The relay (`host:port` as written) as `protocol` names it to the proxy.
fn target(relay: &str, protocol: ProxyProtocol) -> Result<ProxyTarget, String> {
    if let Ok(addr) = relay.parse::<SocketAddr>() {
        return Ok(ProxyTarget::Addr(addr));
    }
    let invalid = || format!("invalid socket address {relay:?}");
    let (host, port) = relay.rsplit_once(':').ok_or_else(invalid)?;
    let port: u16 = port.parse().map_err(|_| invalid())?;
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if !name_ok {
        return Err(invalid());
    }
    match protocol {
        ProxyProtocol::Socks5 => (host, port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .map(ProxyTarget::Addr)
            .ok_or_else(|| format!("cannot resolve {host:?} (socks5:// resolves the relay here; socks5h:// lets the proxy resolve it)")),
        _ => Ok(ProxyTarget::Name {
            host: host.to_string(),
            port,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, relay: &str) -> Result<(UpstreamProxy, SocketAddr), String> {
        let mut errs = Errors(Vec::new());
        match upstream_proxy(url, relay, "upstreams[0].proxy", &mut errs) {
            Some(p) if errs.0.is_empty() => Ok(p),
            _ => Err(errs
                .0
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")),
        }
    }

    /// Each case: the URL, the relay, and what it gives (the URL shown and
    /// the target) or the start of its error.
    #[test]
    fn proxy_urls_and_what_they_give() {
        let ok = [
            (
                "socks5h://alice:s3cret@127.0.0.1:1080",
                "relay.example:443",
                "socks5h://alice@127.0.0.1:1080",
                "relay.example:443",
            ),
            (
                "socks5://127.0.0.1:1080",
                "localhost:9001",
                "socks5://127.0.0.1:1080",
                "127.0.0.1:9001",
            ),
            (
                "http://bob:p%40ss%3Aw@localhost:3128",
                "relay.example:443",
                "http://bob@localhost:3128",
                "relay.example:443",
            ),
            (
                "http://127.0.0.1",
                "10.0.0.1:80",
                "http://127.0.0.1:80",
                "10.0.0.1:80",
            ),
            (
                "socks5h://[::1]:1080/",
                "[::1]:9001",
                "socks5h://[::1]:1080",
                "[::1]:9001",
            ),
        ];
        for (url, relay, shown, target) in ok {
            let (p, addr) = check(url, relay).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(p.shown(), shown, "{url}");
            assert_eq!(p.target.to_string(), target, "{url}");
            assert_eq!(
                addr.port(),
                shown
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse::<u16>().ok())
                    .expect("a port")
            );
        }
        let (p, _) = check("http://bob:p%40ss%3Aw@localhost:3128", "r:1").expect("valid");
        let c = p.credentials.expect("credentials");
        assert_eq!((c.user.as_str(), c.password.as_str()), ("bob", "p@ss:w"));

        let bad = [
            ("alice:s3cret@proxy:1080", "r:1", "the scheme must be"),
            ("https://proxy:443", "r:1", "a TLS connection to the proxy"),
            ("socks5h://proxy", "r:1", "the proxy URL needs a port"),
            (
                "socks5h://:pw@127.0.0.1:1080",
                "r:1",
                "the proxy URL has a password but no user",
            ),
            (
                "socks5h://127.0.0.1:1080/x",
                "r:1",
                "the proxy URL has no path",
            ),
            (
                "socks5h://127.0.0.1:1080?a=1",
                "r:1",
                "the proxy URL has no path",
            ),
            (
                "socks5h://no-such-host.invalid:1080",
                "r:1",
                "cannot resolve the proxy's host",
            ),
            (
                "socks5://127.0.0.1:1080",
                "no-such-host.invalid:1",
                "upstreams[0].addr: cannot resolve",
            ),
            (
                "socks5h://127.0.0.1:1080",
                "bad host:1",
                "upstreams[0].addr: invalid socket address",
            ),
            (
                "socks5h://127.0.0.1:1080",
                "relay",
                "upstreams[0].addr: invalid socket address",
            ),
            ("not a url", "r:1", "not a proxy URL"),
        ];
        for (url, relay, want) in bad {
            let e = check(url, relay)
                .err()
                .unwrap_or_else(|| panic!("{url} passed"));
            assert!(e.contains(want), "{url}: {e}");
            assert!(
                !e.contains("s3cret") && !e.contains("pw"),
                "{url} leaks: {e}"
            );
        }
        let long = format!("socks5h://u:{}@127.0.0.1:1080", "p".repeat(256));
        assert!(check(&long, "r:1")
            .expect_err("too long")
            .contains("at most 255 bytes"));
    }
}

//! The `X-Forwarded-For` value sent upstream: the client's own value, if
//! any, with the client's address appended. Built straight into bytes, as
//! the formatting machinery behind `IpAddr::to_string` costs more than the
//! rest of this per request.

use http::{HeaderName, HeaderValue};
use std::net::IpAddr;

pub const NAME: &str = "x-forwarded-for";
/// `NAME`, parsed once (a lookup by `&str` parses it on every call).
pub const HEADER: HeaderName = HeaderName::from_static(NAME);

/// `prior, ip`, or `ip` when the client sent no (or a blank) value.
pub fn append(prior: Option<&HeaderValue>, ip: IpAddr) -> HeaderValue {
    let prior = prior
        .map(|v| v.as_bytes())
        .filter(|v| !v.trim_ascii().is_empty());
    let mut out = Vec::with_capacity(prior.map_or(0, |p| p.len() + 2) + 39);
    if let Some(p) = prior {
        out.extend_from_slice(p);
        out.extend_from_slice(b", ");
    }
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_decimal(&mut out, octet);
            }
        }
        IpAddr::V6(v6) => out.extend_from_slice(v6.to_string().as_bytes()),
    }
    // A valid prior value plus ", " and an address is valid; should it not
    // be, the address alone is.
    match HeaderValue::from_bytes(&out) {
        Ok(v) => v,
        Err(_) if prior.is_some() => append(None, ip),
        Err(_) => HeaderValue::from_static("unknown"),
    }
}

fn push_decimal(out: &mut Vec<u8>, n: u8) {
    if n >= 100 {
        out.push(b'0' + n / 100);
    }
    if n >= 10 {
        out.push(b'0' + n / 10 % 10);
    }
    out.push(b'0' + n % 10);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ipv4_octet_prints_as_to_string_does() {
        for n in 0..=255u8 {
            let ip = IpAddr::from([n, 255 - n, n / 2, 7]);
            assert_eq!(
                append(None, ip).to_str().ok(),
                Some(ip.to_string().as_str())
            );
        }
    }

    #[test]
    fn appends_to_a_prior_value_and_ignores_a_blank_one() {
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let prior = HeaderValue::from_static("203.0.113.7");
        assert_eq!(append(Some(&prior), ip), "203.0.113.7, 10.0.0.1");
        let blank = HeaderValue::from_static("  ");
        assert_eq!(append(Some(&blank), ip), "10.0.0.1");
        let v6: IpAddr = "2001:db8::1".parse().expect("ip");
        assert_eq!(append(None, v6), "2001:db8::1");
    }
}

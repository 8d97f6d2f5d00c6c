//! The stored value of one session, and its codec.
//!
//! Format 1 (this binary's): `upstream, created, last seen, requests,
//! errors[, tenant][, metadata]`, separated by tabs; times in ms since the
//! epoch; the tenant its hash in 16 hex digits (so that a tenant's pins can
//! be purged); metadata a serialized JSON object (it starts with `{`, so it
//! is never taken for a tenant). It carries no version mark, so that the
//! fleets running it now keep reading their tables. A binary from before
//! the tenant field reads it as unreadable metadata, which it ignores.
//!
//! A later format must begin with `/` and its number (`/2\t...`): upstream
//! ids never contain `/`, so this binary recognises such a record as one it
//! cannot read, and leaves it alone (it is neither adopted, nor overwritten,
//! nor swept) instead of misreading its first field as an upstream. The
//! scripts treat a leading `/` the same way.

use crate::affinity::TenantId;

/// A session's record as stored in its bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub upstream: String,
    pub created_ms: u64,
    pub last_seen_ms: u64,
    pub requests: u64,
    pub errors: u64,
    /// The tenant whose session it is.
    pub tenant: Option<TenantId>,
    /// What an admin `PUT` attached (a serialized JSON object).
    pub metadata: Option<String>,
}

/// Why a stored value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    #[error("a record of format {0}, newer than this binary's")]
    Newer(String),
    #[error("a malformed record")]
    Malformed,
}

/// The mark that starts every record of a format after 1.
pub const VERSION_MARK: char = '/';

impl Stored {
    /// The stored value of a new session without a tenant.
    pub fn fresh(upstream: &str, now: u64) -> String {
        Stored::fresh_of(upstream, None, now)
    }

    /// The stored value of a new session of `tenant`.
    pub fn fresh_of(upstream: &str, tenant: Option<TenantId>, now: u64) -> String {
        match tenant {
            Some(t) => format!("{upstream}\t{now}\t{now}\t0\t0\t{t}"),
            None => format!("{upstream}\t{now}\t{now}\t0\t0"),
        }
    }

    pub fn parse(value: &str) -> Result<Stored, Unreadable> {
        if let Some(rest) = value.strip_prefix(VERSION_MARK) {
            let version = rest.split('\t').next().unwrap_or("");
            return Err(Unreadable::Newer(version.to_string()));
        }
        let mut parts = value.splitn(6, '\t');
        let upstream = parts
            .next()
            .filter(|u| !u.is_empty())
            .ok_or(Unreadable::Malformed)?;
        let mut num = || {
            parts
                .next()
                .and_then(|p| p.parse::<u64>().ok())
                .ok_or(Unreadable::Malformed)
        };
        let (created_ms, last_seen_ms, requests, errors) = (num()?, num()?, num()?, num()?);
        let rest = parts.next();
        // A tenant is exactly 16 hex digits, alone or before the metadata.
        let (tenant, metadata) = match rest.map(|r| r.split_once('\t').unwrap_or((r, ""))) {
            Some((first, more)) if first.len() == 16 => match TenantId::from_hex(first) {
                Some(t) => (Some(t), Some(more).filter(|m| !m.is_empty())),
                None => (None, rest),
            },
            _ => (None, rest),
        };
        Ok(Stored {
            upstream: upstream.to_string(),
            created_ms,
            last_seen_ms,
            requests,
            errors,
            tenant,
            metadata: metadata.map(str::to_string),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{Stored, TenantId, Unreadable};

    #[test]
    fn round_trip_and_what_is_refused() {
        let fresh = Stored::fresh("relay-a", 1700);
        let s = Stored::parse(&fresh).expect("fresh parses");
        assert_eq!(
            (
                s.upstream.as_str(),
                s.created_ms,
                s.last_seen_ms,
                s.requests,
                s.errors
            ),
            ("relay-a", 1700, 1700, 0, 0)
        );
        assert_eq!((s.metadata, s.tenant), (None, None));
        // The tenant field, alone or before the metadata; anything else in
        // its place is metadata.
        let cases = [
            (
                Stored::fresh_of("r", Some(TenantId(0xab)), 5),
                Some(0xab),
                None,
            ),
            (
                "r\t1\t2\t3\t4\t00000000000000ff\t{}".into(),
                Some(0xff),
                Some("{}"),
            ),
            ("r\t1\t2\t3\t4\t{\"a\":1}".into(), None, Some("{\"a\":1}")),
            (
                "r\t1\t2\t3\t4\t00000000000000fg".into(),
                None,
                Some("00000000000000fg"),
            ),
        ];
        for (value, tenant, metadata) in cases {
            let s = Stored::parse(&value).expect("parses");
            assert_eq!(s.tenant, tenant.map(TenantId), "{value:?}");
            assert_eq!(s.metadata.as_deref(), metadata, "{value:?}");
        }
        let with_meta =
            Stored::parse("relay-b\t1\t2\t3\t4\t{\"tenant\":\"x\ty\"}").expect("parses");
        assert_eq!(with_meta.metadata.as_deref(), Some("{\"tenant\":\"x\ty\"}"));
        assert_eq!(with_meta.requests, 3);
        for bad in [
            "",
            "relay-a",
            "relay-a\t1\t2\t3",
            "relay-a\tx\t2\t3\t4",
            "\t1\t2\t3\t4",
        ] {
            assert_eq!(Stored::parse(bad), Err(Unreadable::Malformed), "{bad:?}");
        }
        assert_eq!(
            Stored::parse("/2\trelay-a\t1\t2\t3\t4"),
            Err(Unreadable::Newer("2".to_string()))
        );
    }
}

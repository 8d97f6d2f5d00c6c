//! Tenants: who a request belongs to, as a keyed hash of its credential,
//! and what each tenant may hold of the edge.
//!
//! - [`TenantId`] is the only form a tenant is kept in: a 64-bit keyed hash
//!   (with `affinity.hash_secret`, see [`KeyHasher::tenant`]) of the API key
//!   or bearer token that `tenants.from` names. The raw credential is never
//!   stored, logged or shown; the admin API and the dashboard show the hash
//!   in hex.
//! - [`tenant_of`] finds the credential in the request head; [`credential`]
//!   is its pure part.
//! - A session's id is namespaced by its tenant
//!   ([`KeyHasher::namespaced`]), so one tenant can never steer, read or
//!   take over another's pin by sending the same session key.
//! - [`limits`] holds the per-tenant limits (`max_inflight_per_session`, per
//!   edge; `max_new_sessions_per_hour`, shared through Redis when it is
//!   configured); `proxy::tenant_admission` applies them before routing.
//! - [`top`] is a bounded table of the most active tenants for
//!   `/api/stats` and the dashboard (no per-tenant metric labels).

pub mod limits;
pub mod top;

pub use crate::affinity::TenantId;

use crate::affinity::KeyHasher;
use crate::config::TenantSource;
use pingora_http::RequestHeader;

/// What the edge keeps about tenants, across config generations.
#[derive(Default)]
pub struct Tenants {
    /// Requests in flight per session (`max_inflight_per_session`).
    pub slots: limits::SessionSlots,
    /// New sessions per tenant this hour, on this edge (without Redis, or
    /// while it cannot answer).
    pub hourly: limits::LocalHourly,
    /// The most active tenants, for `/api/stats`.
    pub top: top::TopTenants,
}

/// What a request of a tenant holds until its context drops: its place in
/// the top table's in-flight count, and its session's in-flight slot.
#[derive(Debug, Default)]
pub struct Hold {
    pub active: Option<top::Active>,
    pub slot: Option<limits::SessionSlot>,
}

/// The credential the first source of `from` present in `req` holds: a
/// header's trimmed value, or for `authorization` the bearer token (the
/// whole value when it is not `Bearer …`). An empty value counts as absent.
pub fn credential<'a>(from: &[TenantSource], req: &'a RequestHeader) -> Option<&'a [u8]> {
    from.iter().find_map(|source| match source {
        TenantSource::Header(name) => non_empty(req.headers.get(name)?.as_bytes()),
        TenantSource::Authorization => {
            let value = non_empty(req.headers.get(http::header::AUTHORIZATION)?.as_bytes())?;
            match value.get(..7) {
                Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => non_empty(&value[7..]),
                // `Bearer` and no token (trimmed above): no credential.
                _ if value.eq_ignore_ascii_case(b"bearer") => None,
                _ => Some(value),
            }
        }
    })
}

fn non_empty(v: &[u8]) -> Option<&[u8]> {
    let v = v.trim_ascii();
    (!v.is_empty()).then_some(v)
}

/// The tenant of `req`, or `None` (no credential, or `tenants.from: []`).
pub fn tenant_of(
    from: &[TenantSource],
    hasher: &KeyHasher,
    req: &RequestHeader,
) -> Option<TenantId> {
    credential(from, req).map(|c| hasher.tenant(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/v1/messages", None).expect("valid");
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).expect("valid header");
        }
        r
    }

    fn default_from() -> Vec<TenantSource> {
        vec![
            TenantSource::Header(http::HeaderName::from_static("x-api-key")),
            TenantSource::Authorization,
        ]
    }

    /// (case, sources, headers, the credential found)
    #[test]
    fn the_first_source_present_names_the_tenant() {
        let default = default_from();
        let auth_first = vec![
            TenantSource::Authorization,
            TenantSource::Header(http::HeaderName::from_static("x-api-key")),
        ];
        let custom = vec![TenantSource::Header(http::HeaderName::from_static(
            "x-tenant",
        ))];
        type Case<'a> = (
            &'a str,
            &'a [TenantSource],
            &'a [(&'a str, &'a str)],
            Option<&'a str>,
        );
        let cases: &[Case] = &[
            (
                "x-api-key alone",
                &default,
                &[("x-api-key", "sk-a")],
                Some("sk-a"),
            ),
            (
                "x-api-key wins over a bearer token by default",
                &default,
                &[("authorization", "Bearer sk-b"), ("x-api-key", "sk-a")],
                Some("sk-a"),
            ),
            (
                "the order of from decides",
                &auth_first,
                &[("authorization", "Bearer sk-b"), ("x-api-key", "sk-a")],
                Some("sk-b"),
            ),
            (
                "a bearer token",
                &default,
                &[("authorization", "Bearer sk-b")],
                Some("sk-b"),
            ),
            (
                "the scheme in any case, the token trimmed",
                &default,
                &[("authorization", "bEaReR   sk-b  ")],
                Some("sk-b"),
            ),
            (
                "another scheme: the whole value",
                &default,
                &[("authorization", "Basic dXNlcjpwdw==")],
                Some("Basic dXNlcjpwdw=="),
            ),
            (
                "a bare token: the whole value",
                &default,
                &[("authorization", "sk-c")],
                Some("sk-c"),
            ),
            (
                "Bearer with no token: none",
                &default,
                &[("authorization", "Bearer   ")],
                None,
            ),
            (
                "an empty x-api-key falls through",
                &default,
                &[("x-api-key", "  "), ("authorization", "Bearer sk-b")],
                Some("sk-b"),
            ),
            ("no credential", &default, &[("x-session-id", "s1")], None),
            (
                "from: [] turns tenants off",
                &[],
                &[("x-api-key", "sk-a")],
                None,
            ),
            (
                "a custom header",
                &custom,
                &[("x-tenant", "team-1"), ("x-api-key", "sk-a")],
                Some("team-1"),
            ),
            (
                "a custom header absent",
                &custom,
                &[("x-api-key", "sk-a")],
                None,
            ),
        ];
        for (name, from, headers, want) in cases {
            let r = req(headers);
            let got = credential(from, &r);
            assert_eq!(got, want.map(str::as_bytes), "{name}");
        }
    }

    #[test]
    fn a_tenant_is_a_keyed_hash_shown_in_hex_only() {
        let h = KeyHasher::new("secret");
        let t = tenant_of(&default_from(), &h, &req(&[("x-api-key", "sk-ant-secret")]))
            .expect("a tenant");
        assert_eq!(t, h.tenant(b"sk-ant-secret"));
        assert_ne!(t, KeyHasher::new("other").tenant(b"sk-ant-secret"));
        assert_ne!(t, h.tenant(b"sk-ant-other"));
        let shown = format!("{t:?} {t}");
        assert!(!shown.contains("sk-ant"), "{shown}");
        assert_eq!(TenantId::from_hex(&t.to_hex()), Some(t));
        assert_eq!(t.to_hex().len(), 16);
        for bad in ["", "xyz", "+123456789abcdef", "0123456789abcdef0"] {
            assert_eq!(TenantId::from_hex(bad), None, "{bad:?}");
        }
        // Never the session hash of the same bytes.
        assert_ne!(t.0, h.id(b"sk-ant-secret").0 as u64);
        assert_ne!(t.0, (h.id(b"sk-ant-secret").0 >> 64) as u64);
    }

    /// (case, tenant, key, the id: today's, or namespaced)
    #[test]
    fn session_ids_are_namespaced_by_tenant() {
        let h = KeyHasher::new("secret");
        let (a, b) = (h.tenant(b"key-a"), h.tenant(b"key-b"));
        let plain = h.id(b"session-1");
        let cases = [
            ("no tenant: today's id", None, b"session-1", plain, true),
            ("tenant a: another id", Some(a), b"session-1", plain, false),
            ("tenant b: another id", Some(b), b"session-1", plain, false),
        ];
        for (name, tenant, key, today, same) in cases {
            let id = h.namespaced(tenant, h.id(key));
            assert_eq!(id == today, same, "{name}");
        }
        let in_a = h.namespaced(Some(a), plain);
        let in_b = h.namespaced(Some(b), plain);
        assert_ne!(in_a, in_b, "two tenants, two pins");
        assert_eq!(in_a, h.namespaced(Some(a), h.id(b"session-1")), "stable");
        assert_ne!(in_a, h.namespaced(Some(a), h.id(b"session-2")));
        assert_ne!(
            in_a,
            KeyHasher::new("other").namespaced(Some(a), plain),
            "keyed by the secret"
        );
    }
}

//! Session affinity: finding a request's session key and remembering where
//! its session lives.
//!
//! - [`keys`] walks the configured key sources (header, cookie, query, JSON
//!   body) in order and returns the first key present.
//! - [`json_scan`] finds one JSON-pointer field in a body without building
//!   the document.
//! - [`SessionId`] is the keyed hash under which a key is stored: raw keys
//!   (which may be API keys or user ids) are never kept.
//! - [`store`] is the affinity table's interface and its in-process
//!   implementation; [`redis_store`] shares the table through Redis.

pub mod json_scan;
pub mod keys;
pub mod redis_store;
pub mod store;

use siphasher::sip128::{Hasher128, SipHasher13};
use std::hash::Hasher;

/// The keyed 128-bit hash of a session key: the only form a key is stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u128);

impl SessionId {
    /// Lower-case hex, as the admin API shows it.
    pub fn to_hex(self) -> String {
        format!("{:032x}", self.0)
    }

    pub fn from_hex(text: &str) -> Option<SessionId> {
        if text.len() != 32 {
            return None;
        }
        u128::from_str_radix(text, 16).ok().map(SessionId)
    }

    /// The 16 raw bytes, as the shared table stores it.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<SessionId> {
        Some(SessionId(u128::from_be_bytes(bytes.try_into().ok()?)))
    }

    /// 64 bits for consistent hashing.
    pub fn ring_point(self) -> u64 {
        self.0 as u64
    }
}

/// The keyed hash of a tenant's credential (`crate::tenants`): kept here,
/// beside the session id it namespaces, so that affinity needs no tenant code.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(pub u64);

impl TenantId {
    /// Lower-case hex, 16 digits, as the admin API shows it.
    pub fn to_hex(self) -> String {
        format!("{:016x}", self.0)
    }

    pub fn from_hex(text: &str) -> Option<TenantId> {
        if text.len() != 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(text, 16).ok().map(TenantId)
    }
}

/// Hex only: a tenant is never printed any other way.
impl std::fmt::Debug for TenantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TenantId({:016x})", self.0)
    }
}

impl std::fmt::Display for TenantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Hashes session keys with a secret, so that every edge sharing the secret
/// agrees on a key's id while the key itself is never stored.
///
/// Three keys are derived from the secret, one per domain: session keys,
/// tenant credentials ([`KeyHasher::tenant`]) and the tenant namespace of a
/// session ([`KeyHasher::namespaced`]). A tenant's hash can therefore never
/// be a session's, nor a namespaced id a plain one, whatever the bytes.
#[derive(Clone)]
pub struct KeyHasher {
    k0: u64,
    k1: u64,
    tenant: (u64, u64),
    namespace: (u64, u64),
}

/// A key of its own for one domain, derived from the secret's keys.
fn derive(k0: u64, k1: u64, domain: &[u8]) -> (u64, u64) {
    let mut h = SipHasher13::new_with_keys(k0, k1);
    h.write(b"relay-edge domain\0");
    h.write(domain);
    let d = h.finish128();
    (d.h1, d.h2)
}

impl KeyHasher {
    pub fn new(secret: &str) -> Self {
        let mut a = SipHasher13::new_with_keys(0x7265_6c61_792d_6564, 0x6765_2d73_6563_7265);
        a.write(secret.as_bytes());
        let h = a.finish128();
        KeyHasher {
            k0: h.h1,
            k1: h.h2,
            tenant: derive(h.h1, h.h2, b"tenant"),
            namespace: derive(h.h1, h.h2, b"tenant namespace"),
        }
    }

    /// The tenant of a credential (an API key, a bearer token): its keyed
    /// hash in the tenant domain. The credential is not kept.
    pub fn tenant(&self, credential: &[u8]) -> TenantId {
        let mut h = SipHasher13::new_with_keys(self.tenant.0, self.tenant.1);
        h.write(credential);
        TenantId(h.finish())
    }

    /// The id of session `id` within `tenant`: the one place where session
    /// ids are namespaced. Without a tenant it is `id` itself, as before
    /// tenants existed; with one, a keyed hash of (tenant, id), so that the
    /// same session key under two tenants gives two independent pins.
    pub fn namespaced(&self, tenant: Option<TenantId>, id: SessionId) -> SessionId {
        let Some(tenant) = tenant else {
            return id;
        };
        let mut h = SipHasher13::new_with_keys(self.namespace.0, self.namespace.1);
        h.write(&tenant.0.to_be_bytes());
        h.write(&id.to_bytes());
        SessionId(h.finish128().as_u128())
    }

    pub fn id(&self, key: &[u8]) -> SessionId {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        h.write(key);
        SessionId(h.finish128().as_u128())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_depend_on_key_and_secret_and_round_trip_as_hex() {
        let a = KeyHasher::new("one");
        let b = KeyHasher::new("two");
        assert_eq!(a.id(b"k"), a.id(b"k"));
        assert_ne!(a.id(b"k"), a.id(b"l"));
        assert_ne!(a.id(b"k"), b.id(b"k"));
        let id = a.id(b"k");
        assert_eq!(SessionId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(SessionId::from_hex("zz"), None);
        assert_eq!(SessionId::from_bytes(&id.to_bytes()), Some(id));
        assert_eq!(SessionId::from_bytes(b"short"), None);
    }
}

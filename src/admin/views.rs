//! The admin API's JSON, one type per answer shape.
//!
//! The handlers ([`super::handler`]) build these from what the edge keeps
//! (the history's points, the indicators' readings, the reload reports
//! of [`crate::state`]); `relay-edge ctl` reads them back. A field's name
//! here is its name on the wire, and the golden table below holds every
//! name as the API has always spelled it.
//!
//! The views ctl reads take `#[serde(default)]`: ctl may talk to an edge of
//! another version (a package upgraded before its restart), and a field that
//! edge does not send reads as its default rather than failing the command.

use crate::affinity::store::SessionInfo;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// Every refusal: `{"error": "..."}`; a rejected reload adds `errors`, one
/// line per problem in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorView {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<String>>,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthView {
    /// Always `ok`.
    pub status: String,
}

/// `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ReadyView {
    pub ready: bool,
    /// Why not, while not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /api/stats`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StatsView {
    pub version: String,
    pub uptime_seconds: u64,
    pub ready: bool,
    pub upstreams: Vec<UpstreamView>,
    pub sessions: SessionCountView,
    pub affinity: AffinityView,
    /// The session table's own account of itself: its shape is the store's
    /// (`SessionStore::describe`), with `configured` always present.
    pub redis: Value,
    pub certificates: Vec<CertificateView>,
    pub indicators: Vec<IndicatorView>,
    /// Null until the first reload.
    pub last_reload: Option<LastReload>,
    pub config: ConfigView,
    pub tenants: TenantsView,
}

/// `/api/stats` `tenants`: this edge's most active tenants, as hashes (the
/// hex of [`crate::tenants::TenantId`], which `?tenant=` takes), from a
/// table of at most `capacity` tenants.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TenantsView {
    /// `tenants.from` names at least one source.
    pub enabled: bool,
    /// Tenants in the table now, and its bound.
    pub tracked: usize,
    pub capacity: usize,
    /// Refusals (429) on this edge, by reason.
    pub rejections: TenantRejectionsView,
    /// The first `tenants.top` tenants by each measure, highest first;
    /// tenants at zero are left out.
    pub by_requests: Vec<TenantView>,
    pub by_inflight: Vec<TenantView>,
    pub by_rejections: Vec<TenantView>,
    pub by_sessions_created: Vec<TenantView>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TenantRejectionsView {
    pub new_sessions: u64,
    pub session_inflight: u64,
}

/// One tenant's counters on this edge, since it entered the table.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TenantView {
    pub tenant: String,
    pub requests: u64,
    pub inflight: u64,
    pub rejections: u64,
    pub sessions_created: u64,
}

/// `/api/stats` `sessions`: the table's size and its bound.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionCountView {
    pub count: u64,
    pub max: u64,
}

/// `/api/stats` `affinity`: keyed lookups by where they found the pin.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AffinityView {
    pub lookups: u64,
    pub local_hits: u64,
    pub redis_hits: u64,
    pub misses: u64,
    /// Null before the first lookup.
    pub hit_rate: Option<f64>,
    pub repins: u64,
}

/// `/api/stats` `certificates`: what one TLS listener serves.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CertificateView {
    pub listener: String,
    pub cert_file: String,
    pub subject: String,
    /// As text (`2026-01-31 12:00:00 UTC`).
    pub not_after: String,
    pub expires_in_days: f64,
}

/// `/api/stats` `indicators`: one service indicator against its threshold.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct IndicatorView {
    pub name: String,
    pub title: String,
    /// Null while there is nothing to measure.
    pub value: Option<f64>,
    pub threshold: f64,
    /// `above` or `below`: which side of the threshold is bad.
    pub bad_when: String,
    /// `ratio` (0 to 1) or `seconds`.
    pub unit: String,
    /// The verdict; null when there is no value.
    pub ok: Option<bool>,
}

/// `/api/stats` `config`: the running generation in brief.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ConfigView {
    pub generation: u64,
    pub listeners: Vec<ListenerView>,
    /// How many are configured.
    pub upstreams: usize,
    pub key_sources: usize,
    pub ttl_seconds: u64,
    pub balance: String,
    pub max_retries: usize,
    /// The errors of the last rejected reload, until one succeeds.
    pub last_reload_error: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ListenerView {
    pub addr: String,
    pub tls: bool,
}

/// One element of `GET /api/upstreams` (and of `/api/stats` `upstreams`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct UpstreamView {
    pub id: String,
    pub addr: String,
    /// Its egress proxy's URL, without the password; null for none.
    pub proxy: Option<String>,
    pub weight: u32,
    pub tls: bool,
    pub healthy: bool,
    /// Why its last active check failed (`proxy`, `connect`, `tls`,
    /// `timeout`, `status`, `error`); null after a check that passed.
    pub check_failure: Option<String>,
    pub ejected: bool,
    pub ejected_for_seconds: f64,
    pub ejections: u64,
    pub draining: bool,
    /// Why it takes no new sessions (`draining`, `ejected`, ...); null if it does.
    pub unusable: Option<String>,
    pub inflight: i64,
    pub sessions: u64,
    pub requests: u64,
    pub errors: u64,
    pub connections_opened: u64,
    /// Null before the first connection.
    pub mean_connect_ms: Option<f64>,
    /// Null before the first request.
    pub pooled_reuse_ratio: Option<f64>,
    pub tokens: TokensView,
    /// Its cap and queue (`max_inflight`); null when it is not capped.
    pub capacity: Option<CapacityView>,
}

/// A capped upstream on this edge: its cap (across every edge), what this
/// edge may have in flight there now (its grant), and its work there.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CapacityView {
    pub max_inflight: u32,
    /// Null for no limit (`on_redis_down: open` with Redis down).
    pub grant: Option<u64>,
    pub inflight: u64,
    pub queued: u64,
    /// The 90th percentile of the recent waits in its queue.
    pub recent_wait_p90_ms: f64,
    /// With Redis: the edges that wanted some of it at the last sync, and
    /// whether that sync failed.
    pub edges: Option<u32>,
    pub redis_failing: bool,
    /// How long the last grant lasts unrenewed (0 once it has lapsed).
    pub lease_left_ms: Option<u64>,
}

/// What an upstream's answers reported of tokens, and the share of prompt
/// tokens read from its cache: the proof that affinity keeps caches warm.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TokensView {
    pub input: u64,
    pub cache_read_input: u64,
    pub cache_creation_input: u64,
    pub output: u64,
    /// Null before the first prompt token.
    pub cache_read_ratio: Option<f64>,
}

/// `GET /api/history`: per upstream, one point per interval, oldest first.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HistoryView {
    pub resolution_seconds: u64,
    pub window_seconds: u64,
    pub upstreams: Vec<UpstreamHistoryView>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct UpstreamHistoryView {
    pub id: String,
    pub points: Vec<HistoryPointView>,
}

/// One interval of one upstream; the last one is the interval under way.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HistoryPointView {
    /// The interval's end (Unix milliseconds).
    pub t_ms: u64,
    pub requests: u64,
    pub errors: u64,
    /// Null without requests.
    pub p99_ms: Option<f64>,
    /// Null without keyed requests.
    pub affinity_hit_rate: Option<f64>,
}

/// `POST /api/upstreams/{id}/drain` and `/undrain`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DrainView {
    pub id: String,
    pub draining: bool,
    /// Every edge on the same Redis follows.
    pub shared: bool,
    /// With `upstreams[].on_remove: purge`, a drain purges the relay's
    /// pins: how many it removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purged: Option<u64>,
    /// ... and why that purge stopped before the end, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purge_error: Option<String>,
}

/// `DELETE /api/sessions?upstream=ID | ?tenant=HASH | ?all=true`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PurgeView {
    /// What was purged: `upstream ID`, `tenant HASH` or `all`.
    pub purged: String,
    /// Pins removed from the table in force: Redis's when it is
    /// configured, else this edge's.
    pub removed: u64,
    /// Pins this edge dropped from its own table (or, with Redis, its cache).
    pub local: u64,
    /// With Redis: every edge was told to drop its cached pins.
    pub shared: bool,
}

/// A session: `GET` and `PUT /api/sessions/{key}`, and each element of
/// `GET /api/sessions`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionView {
    /// The session as the table keeps it.
    #[serde(flatten)]
    pub session: SessionInfo,
    /// `GET` of one session only: what its next request does, as this edge
    /// sees it (`active`, `moving: upstream draining`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// `GET /api/sessions`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionListView {
    pub sessions: Vec<SessionView>,
}

/// `DELETE /api/sessions/{key}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DeletedView {
    pub deleted: bool,
}

/// The body of `PUT /api/sessions/{key}`: pin the session to `upstream`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PinRequest {
    pub upstream: String,
    /// Must be an object when present; a `null` is kept as given (and
    /// refused), not read as absent.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub metadata: Option<Value>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// What a successful reload did (`POST /api/reload`'s answer), and the
/// last reload (`/api/stats` `last_reload`): kept by the edge itself.
pub use crate::state::{LastReload, ReloadReport};

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;
    use serde_json::json;
    use std::collections::BTreeSet;

    /// Every key path of `v`: `a.b` for objects, `a[]` into arrays.
    fn paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    let p = match prefix {
                        "" => k.clone(),
                        _ => format!("{prefix}.{k}"),
                    };
                    out.insert(p.clone());
                    paths(x, &p, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|x| paths(x, &format!("{prefix}[]"), out)),
            _ => {}
        }
    }

    // The golden key sets, captured from the `json!` bodies the views
    // replaced (an upstream, a session and a reload report appear in several
    // answers).
    const UPSTREAM: &str = "addr capacity capacity.edges capacity.grant capacity.inflight \
        capacity.lease_left_ms capacity.max_inflight capacity.queued \
        capacity.recent_wait_p90_ms capacity.redis_failing \
        connections_opened draining ejected ejected_for_seconds \
        check_failure ejections errors healthy id inflight mean_connect_ms pooled_reuse_ratio proxy requests \
        sessions tls tokens tokens.cache_creation_input tokens.cache_read_input \
        tokens.cache_read_ratio tokens.input tokens.output unusable weight";
    const SESSION: &str = "created_unix_ms errors id last_seen_unix_ms metadata \
        metadata.team requests ttl_left_seconds upstream";
    const REPORT: &str =
        "added certificates_renewed changed generation needs_upgrade removed took_ms";
    const HISTORY: &str = "resolution_seconds window_seconds upstreams upstreams[].id \
        upstreams[].points upstreams[].points[].affinity_hit_rate \
        upstreams[].points[].errors upstreams[].points[].p99_ms \
        upstreams[].points[].requests upstreams[].points[].t_ms";
    const STATS: &str = "affinity affinity.hit_rate affinity.local_hits affinity.lookups \
        affinity.misses affinity.redis_hits affinity.repins certificates \
        certificates[].cert_file certificates[].expires_in_days certificates[].listener \
        certificates[].not_after certificates[].subject config config.balance \
        config.generation config.key_sources config.last_reload_error config.listeners \
        config.listeners[].addr config.listeners[].tls config.max_retries \
        config.ttl_seconds config.upstreams indicators indicators[].bad_when \
        indicators[].name indicators[].ok indicators[].threshold indicators[].title \
        indicators[].unit indicators[].value last_reload last_reload.at_ms \
        last_reload.ok last_reload.report ready redis redis.configured redis.mode \
        sessions sessions.count sessions.max tenants tenants.by_inflight \
        tenants.by_rejections tenants.by_requests tenants.by_sessions_created \
        tenants.capacity tenants.enabled tenants.rejections \
        tenants.rejections.new_sessions tenants.rejections.session_inflight \
        tenants.tracked upstreams uptime_seconds version";
    const TENANT: &str = "inflight rejections requests sessions_created tenant";

    /// `prefix` before each of the names.
    fn names(prefix: &str, names: &str) -> Vec<String> {
        names
            .split_whitespace()
            .map(|n| format!("{prefix}{n}"))
            .collect()
    }

    /// `view` serialises to exactly the key paths of `expected`, and reads
    /// back as it was.
    fn check<T>(name: &str, view: T, expected: Vec<String>)
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let value = serde_json::to_value(&view).expect("a view serialises");
        let mut got = BTreeSet::new();
        paths(&value, "", &mut got);
        let expected: BTreeSet<String> = expected.into_iter().collect();
        assert_eq!(got, expected, "{name}: {value}");
        let back: T = serde_json::from_value(value).expect("a view reads back");
        assert_eq!(back, view, "{name} reads back as it was written");
    }

    fn upstream() -> UpstreamView {
        UpstreamView {
            unusable: Some("draining".into()),
            mean_connect_ms: Some(1.5),
            pooled_reuse_ratio: Some(0.5),
            tokens: TokensView {
                cache_read_ratio: Some(0.9),
                ..TokensView::default()
            },
            capacity: Some(CapacityView {
                grant: Some(4),
                edges: Some(2),
                lease_left_ms: Some(900),
                recent_wait_p90_ms: 1.5,
                ..CapacityView::default()
            }),
            ..UpstreamView::default()
        }
    }

    fn session(status: Option<&str>) -> SessionView {
        SessionView {
            session: SessionInfo {
                metadata: Some(json!({"team": "red"})),
                ..SessionInfo::default()
            },
            status: status.map(String::from),
        }
    }

    fn reload(ok: bool) -> LastReload {
        LastReload {
            at_ms: 1,
            ok,
            report: ok.then(|| ReloadReport {
                took_ms: 1.25,
                ..ReloadReport::default()
            }),
            errors: (!ok).then(|| vec!["x".into()]),
        }
    }

    #[test]
    fn every_view_keeps_its_field_names() {
        let error = |errors: Option<Vec<String>>| ErrorView {
            error: "no such route".into(),
            errors,
        };
        check("error", error(None), names("", "error"));
        check("rejected", error(Some(vec![])), names("", "error errors"));
        let health = HealthView {
            status: "ok".into(),
        };
        check("healthz", health, names("", "status"));
        let ready = |reason: Option<String>| ReadyView {
            ready: reason.is_none(),
            reason,
        };
        check("ready", ready(None), names("", "ready"));
        check(
            "not ready",
            ready(Some("x".into())),
            names("", "ready reason"),
        );
        check("upstreams", vec![upstream()], names("[].", UPSTREAM));
        let drain = DrainView::default();
        check("drain", drain, names("", "draining id shared"));
        let purging = DrainView {
            purged: Some(3),
            purge_error: Some("x".into()),
            ..DrainView::default()
        };
        let drained = names("", "draining id shared purged purge_error");
        check("drain with a purge", purging, drained);
        let purge = PurgeView::default();
        check("purge", purge, names("", "purged removed local shared"));
        check("PUT session", session(None), names("", SESSION));
        let mut get = names("", SESSION);
        get.push("status".into());
        check("GET session", session(Some("active")), get);
        let list = SessionListView {
            sessions: vec![session(None)],
        };
        let mut listed = names("", "sessions");
        listed.extend(names("sessions[].", SESSION));
        check("sessions", list, listed);
        check(
            "DELETE",
            DeletedView { deleted: true },
            names("", "deleted"),
        );
        check("reload", ReloadReport::default(), names("", REPORT));
        let history = HistoryView {
            upstreams: vec![UpstreamHistoryView {
                id: "a".into(),
                points: vec![HistoryPointView::default()],
            }],
            ..HistoryView::default()
        };
        check("history", history, names("", HISTORY));
        let stats = StatsView {
            upstreams: vec![upstream()],
            redis: json!({ "configured": false, "mode": "in-process table" }),
            certificates: vec![CertificateView::default()],
            indicators: vec![IndicatorView::default()],
            last_reload: Some(reload(true)),
            config: ConfigView {
                listeners: vec![ListenerView::default()],
                ..ConfigView::default()
            },
            tenants: TenantsView {
                by_requests: vec![TenantView::default()],
                ..TenantsView::default()
            },
            ..StatsView::default()
        };
        let mut keys = names("", STATS);
        keys.extend(names("tenants.by_requests[].", TENANT));
        keys.extend(names("upstreams[].", UPSTREAM));
        keys.extend(names("last_reload.report.", REPORT));
        check("stats", stats, keys);
        check(
            "rejected reload",
            reload(false),
            names("", "at_ms errors ok"),
        );
    }

    #[test]
    fn a_pin_request_tells_a_null_metadata_from_none() {
        let read = |body: &str| serde_json::from_str::<PinRequest>(body).ok();
        assert_eq!(read(r#"{"upstream":"a"}"#).map(|p| p.metadata), Some(None));
        assert_eq!(
            read(r#"{"upstream":"a","metadata":null}"#).map(|p| p.metadata),
            Some(Some(Value::Null))
        );
        assert_eq!(read(r#"{"metadata":{}}"#), None, "upstream is required");
        let pin = PinRequest {
            upstream: "a".into(),
            metadata: None,
        };
        assert_eq!(
            serde_json::to_string(&pin).ok().as_deref(),
            Some(r#"{"upstream":"a"}"#)
        );
    }
}

//! What `relay-edge ctl` prints for people: the admin API's views as
//! aligned tables and short lines (`--json` prints the views themselves).

use crate::admin::views::{
    CapacityView, DrainView, IndicatorView, PurgeView, ReloadReport, SessionView, StatsView,
    TenantsView, UpstreamView,
};
use serde_json::Value;
use std::fmt::Write as _;

pub(super) fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

pub(super) fn shared_note(v: &DrainView) -> &'static str {
    match v.shared {
        true => " (every edge on this Redis follows)",
        false => "",
    }
}

/// A drain: and what its purge did, with `on_remove: purge`.
pub(super) fn drain_text(id: &str, v: &DrainView) -> String {
    let mut text = match v.purged {
        None => format!("{id}: draining; it takes no new sessions and its sessions move off"),
        Some(n) => format!(
            "{id}: draining; it takes no new sessions, and its {n} pins were purged (on_remove: purge)"
        ),
    };
    text.push_str(shared_note(v));
    text.push('\n');
    if let Some(e) = &v.purge_error {
        let _ = writeln!(
            text,
            "the purge stopped: {e}; run `relay-edge ctl purge --upstream {id}`"
        );
    }
    text
}

/// A purge: what went, where.
pub(super) fn purge_text(v: &PurgeView) -> String {
    let pins = |n: u64| match n {
        1 => "1 pin".to_string(),
        n => format!("{n} pins"),
    };
    match v.shared {
        true => format!(
            "purged {}: {} removed from redis; every edge dropped its cached ones ({} here); their sessions are placed anew\n",
            v.purged,
            pins(v.removed),
            v.local
        ),
        false => format!(
            "purged {}: {} removed from this edge's table; their sessions are placed anew\n",
            v.purged,
            pins(v.removed)
        ),
    }
}

pub(super) fn percent(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |r| format!("{:.1}%", r * 100.0))
}

/// A measure with two decimals; `-` for none.
pub(super) fn decimal(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |f| format!("{f:.2}"))
}

/// A JSON value of the `redis` section, whose shape is the store's own.
pub(super) fn num(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.2}"),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(super) fn duration(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{}h{}m", s / 3600, s % 3600 / 60),
    }
}

/// Rows under a header, each column as wide as its widest cell.
pub(super) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
    out
}

/// The edge's verdict on an upstream, as the dashboard words it.
pub(super) fn upstream_state(u: &UpstreamView) -> String {
    match u.unusable.as_deref() {
        None => "healthy".into(),
        Some("ejected") => format!("ejected {:.0}s", u.ejected_for_seconds),
        Some("unhealthy") => match &u.check_failure {
            Some(why) => format!("unhealthy ({why})"),
            None => "unhealthy".into(),
        },
        Some(other) => other.into(),
    }
}

pub(super) fn upstreams_table(list: &[UpstreamView]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|u| {
            vec![
                u.id.clone(),
                match &u.proxy {
                    Some(proxy) => format!("{} via {proxy}", u.addr),
                    None => u.addr.clone(),
                },
                upstream_state(u),
                u.inflight.to_string(),
                capped(u, |c| c.max_inflight.to_string()),
                capped(u, |c| {
                    c.grant.map_or("no limit".to_string(), |g| g.to_string())
                }),
                capped(u, |c| c.queued.to_string()),
                u.sessions.to_string(),
                u.requests.to_string(),
                u.errors.to_string(),
                decimal(u.mean_connect_ms),
                percent(u.pooled_reuse_ratio),
                percent(u.tokens.cache_read_ratio),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "ADDR",
            "STATE",
            "IN FLIGHT",
            "CAP",
            "GRANT",
            "QUEUED",
            "SESSIONS",
            "REQUESTS",
            "ERRORS",
            "CONNECT MS",
            "POOL REUSE",
            "CACHE READS",
        ],
        &rows,
    )
}

/// A capped upstream's value, or `-` for one without a cap.
pub(super) fn capped(u: &UpstreamView, value: impl Fn(&CapacityView) -> String) -> String {
    u.capacity.as_ref().map_or("-".to_string(), value)
}

pub(super) fn status_text(s: &StatsView) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "relay-edge {}, up {}, config generation {}, {}",
        s.version,
        duration(s.uptime_seconds),
        s.config.generation,
        if s.ready {
            "ready"
        } else {
            "NOT READY (first health round or Redis pending)"
        }
    );
    let a = &s.affinity;
    let ups = &s.upstreams;
    let healthy = ups.iter().filter(|u| u.unusable.is_none()).count();
    let draining = ups.iter().filter(|u| u.draining).count();
    let r = &s.redis;
    let redis = if r["configured"] == true {
        format!(
            "{}, {}; {} errors, {} pending pins, {} cached",
            if r["connected"] == true {
                "connected"
            } else {
                "DOWN (serving from the local cache)"
            },
            if r["settled"] == true {
                "settled"
            } else {
                "settling"
            },
            num(&r["errors"]),
            num(&r["pending_pins"]),
            num(&r["local_cache_entries"]),
        )
    } else {
        "not configured (in-process table)".into()
    };
    let reload = match &s.last_reload {
        None => "none since start".to_string(),
        Some(r) if r.ok => format!(
            "ok, generation {}",
            r.report
                .as_ref()
                .map_or_else(|| "-".into(), |r| r.generation.to_string())
        ),
        Some(r) => format!(
            "REJECTED ({}), the running config stays",
            r.errors.as_ref().map_or(0, Vec::len)
        ),
    };
    let rows = [
        (
            "upstreams",
            format!("{healthy} usable of {}, {draining} draining", ups.len()),
        ),
        (
            "sessions",
            format!("{} (max {})", s.sessions.count, s.sessions.max),
        ),
        (
            "affinity",
            format!(
                "hit rate {} (local {}, redis {}, miss {}), re-pins {}",
                percent(a.hit_rate),
                a.local_hits,
                a.redis_hits,
                a.misses,
                a.repins
            ),
        ),
        ("redis", redis),
        ("tenants", tenants_line(&s.tenants)),
        ("last reload", reload),
    ];
    for (k, v) in rows {
        let _ = writeln!(out, "{k:<12} {v}");
    }
    out.push('\n');
    let indicators: Vec<Vec<String>> = s.indicators.iter().map(indicator_row).collect();
    out.push_str(&table(&["INDICATOR", "NOW", "TARGET", ""], &indicators));
    out
}

/// The tenants on this edge: how many, their refusals, and the busiest by
/// requests (hashes: `--tenant` takes them).
pub(super) fn tenants_line(t: &TenantsView) -> String {
    if !t.enabled {
        return "off (tenants.from is empty)".into();
    }
    let busiest: Vec<String> = t
        .by_requests
        .iter()
        .take(3)
        .map(|v| format!("{} ({})", v.tenant, v.requests))
        .collect();
    format!(
        "{} tracked; 429s: {} new sessions, {} in flight; busiest: {}",
        t.tracked,
        t.rejections.new_sessions,
        t.rejections.session_inflight,
        if busiest.is_empty() {
            "-".to_string()
        } else {
            busiest.join(", ")
        }
    )
}

pub(super) fn indicator_row(i: &IndicatorView) -> Vec<String> {
    let seconds = i.unit == "seconds";
    let show = |v: Option<f64>| match (seconds, v) {
        (false, _) => percent(v),
        (true, None) => "-".into(),
        (true, Some(s)) if s < 1.0 => format!("{:.1} ms", s * 1000.0),
        (true, Some(s)) => format!("{s:.2} s"),
    };
    let bound = if i.bad_when == "above" { "<=" } else { ">=" };
    vec![
        i.title.clone(),
        show(i.value),
        format!("{bound} {}", show(Some(i.threshold))),
        match i.ok {
            Some(true) => "ok".into(),
            Some(false) => "ALERT".into(),
            None => "no data".into(),
        },
    ]
}

pub(super) fn session_text(key: &str, view: &SessionView) -> String {
    let s = &view.session;
    let ago = |then: u64| {
        let now = crate::clock::unix_ms();
        format!("{} ago", duration(now.saturating_sub(then) / 1000))
    };
    let mut out = String::new();
    let status = view
        .status
        .as_ref()
        .map_or(String::new(), |st| format!(" ({st})"));
    for (k, v) in [
        ("key", key.to_string()),
        ("id", s.id.clone()),
        ("upstream", format!("{}{status}", s.upstream)),
        ("created", ago(s.created_unix_ms)),
        ("last seen", ago(s.last_seen_unix_ms)),
        ("requests", s.requests.to_string()),
        ("errors", s.errors.to_string()),
        ("ttl left", duration(s.ttl_left_seconds)),
    ] {
        let _ = writeln!(out, "{k:<10} {v}");
    }
    out
}

pub(super) fn reload_text(r: &ReloadReport) -> String {
    let list = |items: &[String]| match items {
        [] => "-".to_string(),
        items => items.join(", "),
    };
    let mut out = format!(
        "reloaded: generation {} in {} ms\nadded      {}\nremoved    {}\nchanged    {}\n",
        r.generation,
        decimal(Some(r.took_ms)),
        list(&r.added),
        list(&r.removed),
        list(&r.changed),
    );
    if !r.needs_upgrade.is_empty() {
        let _ = writeln!(
            out,
            "NOT APPLIED {} (needs a graceful upgrade: kill -USR2 \"$(systemctl show -p MainPID --value relay-edge)\")",
            list(&r.needs_upgrade)
        );
    }
    out
}

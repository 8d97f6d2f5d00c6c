//! The listeners and the upstreams, with their active and passive health.

use super::*;

pub(super) fn listeners(listen: Vec<(usize, ListenFile)>, errs: &mut Errors) -> Vec<Listener> {
    if listen.is_empty() {
        errs.push("listen", "at least one listener is required");
    }
    let mut seen = HashSet::new();
    listen
        .into_iter()
        .map(|(i, ListenFile { addr, tls })| {
            let path = format!("listen[{i}].addr");
            let addr = socket_addr(&addr, &path, errs).unwrap_or_else(placeholder_addr);
            if addr.port() != 0 && !seen.insert(addr) {
                errs.push(&path, format!("duplicate listener {addr}"));
            }
            let tls = tls.map(|ListenTlsFile { cert, key }| {
                for (field, file) in [("cert", &cert), ("key", &key)] {
                    if !std::path::Path::new(file).is_file() {
                        errs.push(
                            format!("listen[{i}].tls.{field}"),
                            format!("no such file {file:?}"),
                        );
                    }
                }
                TlsFiles {
                    cert: PathBuf::from(cert),
                    key: PathBuf::from(key),
                }
            });
            Listener { addr, tls }
        })
        .collect()
}

/// What is wrong with `id` as an upstream's id, if anything: the rule of
/// `upstreams[].id`, which the admin API's purge holds ids to as well.
pub fn upstream_id_problem(id: &str) -> Option<&'static str> {
    let bad = id.is_empty() || id.len() > 128 || id.chars().any(|c| c.is_whitespace() || c == '/');
    bad.then_some("must be 1 to 128 characters, without spaces or '/'")
}

/// Each upstream's `on_remove`, by id (ids are checked by [`upstream_specs`]).
pub(super) fn on_remove(
    upstreams: &[(usize, UpstreamFile)],
    errs: &mut Errors,
) -> HashMap<String, OnRemove> {
    let mut by_id = HashMap::new();
    for (i, u) in upstreams {
        let on_remove = match u.on_remove.as_deref() {
            None | Some("move") => OnRemove::Move,
            Some("purge") => OnRemove::Purge,
            Some(other) => {
                errs.push(
                    format!("upstreams[{i}].on_remove"),
                    format!("{other:?}: must be move or purge"),
                );
                OnRemove::Move
            }
        };
        by_id.insert(u.id.clone(), on_remove);
    }
    by_id
}

/// The upstreams; `default_cap` is `capacity.max_inflight`.
pub(super) fn upstream_specs(
    upstreams: Vec<(usize, UpstreamFile)>,
    default_cap: Option<u32>,
    errs: &mut Errors,
) -> Vec<UpstreamSpec> {
    if upstreams.is_empty() {
        errs.push("upstreams", "at least one upstream is required");
    }
    let mut ids = HashSet::new();
    upstreams
        .into_iter()
        .map(
            |(
                i,
                UpstreamFile {
                    id,
                    addr,
                    weight,
                    tls,
                    max_inflight,
                    on_remove: _,
                    proxy,
                },
            )| {
                if let Some(problem) = upstream_id_problem(&id) {
                    errs.push(format!("upstreams[{i}].id"), problem);
                } else if !ids.insert(id.clone()) {
                    errs.push(format!("upstreams[{i}].id"), format!("duplicate id {id:?}"));
                }
                let weight = number(
                    weight,
                    Defaults::WEIGHT,
                    (1, Limits::MAX_WEIGHT),
                    &format!("upstreams[{i}].weight"),
                    errs,
                );
                let host = addr
                    .rsplit_once(':')
                    .map_or(addr.as_str(), |(h, _)| h)
                    .to_string();
                // Behind a proxy, the edge connects to the proxy, and the
                // relay's name may resolve only where the proxy is.
                let (proxy, sock) = match proxy {
                    Some(url) => {
                        let path = format!("upstreams[{i}].proxy");
                        match upstream_proxy(&url, &addr, &path, errs) {
                            Some((proxy, sock)) => (Some(proxy), sock),
                            None => (None, placeholder_addr()),
                        }
                    }
                    None => (
                        None,
                        socket_addr(&addr, &format!("upstreams[{i}].addr"), errs)
                            .unwrap_or_else(placeholder_addr),
                    ),
                };
                let tls = tls.map(|UpstreamTlsFile { sni, verify }| UpstreamTls {
                    sni: sni.unwrap_or(host),
                    verify,
                });
                let max_inflight = max_inflight.or(default_cap).map(|cap| {
                    number(
                        Some(cap),
                        1,
                        (1, Limits::MAX_INFLIGHT),
                        &format!("upstreams[{i}].max_inflight"),
                        errs,
                    )
                });
                UpstreamSpec {
                    id,
                    addr: sock,
                    proxy,
                    weight,
                    tls,
                    max_inflight,
                }
            },
        )
        .collect()
}

pub(super) fn health(h: HealthCheckFile, errs: &mut Errors) -> HealthSpec {
    let HealthCheckFile {
        path,
        host,
        interval,
        timeout,
        healthy_after,
        unhealthy_after,
    } = h;
    if let Some(p) = &path {
        if !p.starts_with('/') {
            errs.push("health_check.path", "must start with '/'");
        }
    }
    let interval = duration(
        interval,
        Defaults::HEALTH_INTERVAL,
        (10 * MS, HOUR),
        "health_check.interval",
        errs,
    );
    let timeout = duration(
        timeout,
        Defaults::HEALTH_TIMEOUT.min(interval),
        (MS, MINUTE),
        "health_check.timeout",
        errs,
    );
    HealthSpec {
        path,
        host,
        interval,
        timeout,
        healthy_after: number(
            healthy_after,
            Defaults::HEALTHY_AFTER,
            (1, 1000),
            "health_check.healthy_after",
            errs,
        ),
        unhealthy_after: number(
            unhealthy_after,
            Defaults::UNHEALTHY_AFTER,
            (1, 1000),
            "health_check.unhealthy_after",
            errs,
        ),
    }
}

pub(super) fn passive(p: PassiveHealthFile, errs: &mut Errors) -> PassiveSpec {
    let PassiveHealthFile {
        max_failures,
        failure_window,
        failure_codes,
        recovery_time,
        max_recovery_time,
        max_ejected_percent,
    } = p;
    let failure_codes = failure_codes.unwrap_or_else(|| Defaults::FAILURE_CODES.to_vec());
    for (i, code) in failure_codes.iter().enumerate() {
        if !(100..=599).contains(code) {
            errs.push(
                format!("passive_health.failure_codes[{i}]"),
                format!("{code} is not an HTTP status"),
            );
        }
    }
    let recovery_time = duration(
        recovery_time,
        Defaults::RECOVERY_TIME,
        (MS, DAY),
        "passive_health.recovery_time",
        errs,
    );
    let max_recovery_time = duration(
        max_recovery_time,
        Defaults::MAX_RECOVERY_TIME.max(recovery_time),
        (MS, 7 * DAY),
        "passive_health.max_recovery_time",
        errs,
    );
    if max_recovery_time < recovery_time {
        errs.push(
            "passive_health.max_recovery_time",
            "must not be below recovery_time",
        );
    }
    PassiveSpec {
        max_failures: number(
            max_failures,
            Defaults::MAX_FAILURES,
            (1, 1_000_000),
            "passive_health.max_failures",
            errs,
        ),
        failure_window: duration(
            failure_window,
            Defaults::FAILURE_WINDOW,
            (MS, DAY),
            "passive_health.failure_window",
            errs,
        ),
        failure_codes,
        recovery_time,
        max_recovery_time,
        max_ejected_percent: number(
            max_ejected_percent,
            Defaults::MAX_EJECTED_PERCENT,
            (0, 100),
            "passive_health.max_ejected_percent",
            errs,
        ),
    }
}

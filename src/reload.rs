//! In-process reload: build the new generation to one side, then swap.
//!
//! The file is parsed and validated whole; an invalid file changes nothing.
//! Upstreams whose settings did not change are carried over as they are
//! (health, ejection, drain, counters, pooled connections); changed ones get
//! a new peer but keep their health verdict and drain flag; new ones are
//! health-checked once before they can take traffic. Requests in flight keep
//! the generation they started with. Settings that only a restart or a
//! graceful upgrade can change are reported, and everything else applies.

use crate::config::{self, AdminSpec, AffinitySpec, Config, ServerSpec, UpstreamSpec};
use crate::state::{Edge, LastReload, ReloadReport, State};
use crate::upstream::Upstream;
use pingora_load_balancing::health_check::HealthCheck;
use std::collections::HashMap;
use std::sync::Arc;

/// Keep in `new` the settings that only a restart or a graceful upgrade can
/// change, as `old` has them, so that the running process stays coherent
/// with what it runs; return the names of those that differed. Every field
/// of the config is named here (destructured without `..`), so a new one
/// must be classified before the code compiles.
fn keep_restart_only(old: &Config, new: &mut Config) -> Vec<String> {
    let mut differed = Vec::new();
    macro_rules! keep {
        ($name:expr, $new:expr, $old:expr) => {
            if *$new != $old {
                differed.push($name.to_string());
                *$new = $old.clone();
            }
        };
    }
    let Config {
        listeners,
        upstreams: _,
        health: _,
        passive: _,
        affinity,
        timeouts: _,
        max_retries: _,
        failover: _,
        streams: _,
        redis,
        admin,
        server,
        reload: _,
        limits: _,
        access_log,
        tenants: _,
        // Caps, the queue and the leases apply at once.
        capacity: _,
        on_remove: _,
    } = new;
    keep!("listen", listeners, old.listeners);
    // The writer's destination and queue are opened once, at start.
    keep!("access_log.path", &mut access_log.path, old.access_log.path);
    keep!(
        "access_log.buffer",
        &mut access_log.buffer,
        old.access_log.buffer
    );
    let AdminSpec {
        listen,
        token: _,
        token_file_warning: _,
    } = admin;
    keep!("admin.listen", listen, old.admin.listen);
    let ServerSpec {
        threads,
        thread_model,
        work_stealing,
        pool_size,
        grace_period,
        shutdown_timeout,
        pid_file,
        upgrade_sock,
        log_level: _,
        drain_quiet: _,
    } = server;
    let o = &old.server;
    keep!("server.threads", threads, o.threads);
    keep!("server.thread_model", thread_model, o.thread_model);
    keep!("server.work_stealing", work_stealing, o.work_stealing);
    keep!("server.pool_size", pool_size, o.pool_size);
    keep!("server.grace_period", grace_period, o.grace_period);
    keep!(
        "server.shutdown_timeout",
        shutdown_timeout,
        o.shutdown_timeout
    );
    keep!("server.pid_file", pid_file, o.pid_file);
    keep!("server.upgrade_sock", upgrade_sock, o.upgrade_sock);
    // The capacity of an in-process table or cache is fixed when it is built.
    let AffinitySpec {
        keys: _,
        ttl: _,
        max_sessions,
        max_body_bytes: _,
        balance: _,
        load_factor: _,
        hash_secret: _,
        outcome_header: _,
        pin_wait: _,
        max_session_share: _,
    } = affinity;
    keep!(
        "affinity.max_sessions",
        max_sessions,
        old.affinity.max_sessions
    );
    // The table's kind is fixed too; every other Redis setting applies in place.
    match (&old.redis, redis) {
        (Some(a), Some(b)) => keep!(
            "redis.local_cache_size",
            &mut b.local_cache_size,
            a.local_cache_size
        ),
        (a, b) if a.is_some() != b.is_some() => {
            differed.push("redis (adding or removing it)".to_string());
            *b = a.clone();
        }
        _ => {}
    }
    differed
}

/// What a reload does with one upstream of the new file.
#[derive(Debug, PartialEq, Eq)]
enum Carry {
    /// Carried over as it is: health, ejection, drain, counters and pooled
    /// connections.
    Whole,
    /// Rebuilt with a new peer, keeping its health verdict and drain flag.
    Changed,
    /// New: health-checked once before it takes traffic.
    Added,
}

/// How the upstream `spec` of the new file is built, given its spec in the
/// running generation (`before`) and whether the timeouts and health
/// settings that shape every peer stayed the same.
fn carry(before: Option<&UpstreamSpec>, spec: &UpstreamSpec, unchanged_settings: bool) -> Carry {
    match before {
        Some(b) if b == spec && unchanged_settings => Carry::Whole,
        Some(_) => Carry::Changed,
        None => Carry::Added,
    }
}

impl Edge {
    /// Reload the config file; on error nothing changes and every problem
    /// is returned as a `path: message` line.
    pub async fn reload(&self) -> Result<ReloadReport, Vec<String>> {
        let started = std::time::Instant::now();
        let _one_at_a_time = self.reload_lock.lock().await;
        let Some(path) = self.config_path.as_ref() else {
            return Err(vec!["no config file to reload".to_string()]);
        };
        let result = match config::load(path) {
            Ok(config) => match self.admin_stays_closed(&config) {
                // The listeners' certificates are read whole, and the
                // reload rejected on any that cannot be used, before
                // anything changes.
                Ok(()) => match self.certificates.read_all() {
                    Ok(certificates) => {
                        let mut report = self.apply(config, started).await;
                        report.certificates_renewed = self.certificates.install(certificates);
                        Ok(report)
                    }
                    Err(errors) => Err(errors),
                },
                Err(e) => Err(vec![e]),
            },
            Err(e) => Err(e.lines()),
        };
        self.export_certificates();
        self.last_reload.store(Some(Arc::new(LastReload {
            at_ms: crate::clock::unix_ms(),
            ok: result.is_ok(),
            report: result.as_ref().ok().cloned(),
            errors: result.as_ref().err().cloned(),
        })));
        match &result {
            Ok(report) => {
                if let Some(w) = &self.state().config.admin.token_file_warning {
                    log::warn!("{w}");
                }
                self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                self.metrics.config_generation.set(report.generation as i64);
                self.last_reload_error.store(None);
                log::info!(
                    "config reloaded in {:.1} ms: generation {}, added {:?}, removed {:?}, changed {:?}",
                    report.took_ms,
                    report.generation,
                    report.added,
                    report.removed,
                    report.changed
                );
                if !report.needs_upgrade.is_empty() {
                    log::warn!(
                        "these settings need a graceful upgrade to change: {:?}",
                        report.needs_upgrade
                    );
                }
            }
            Err(errors) => {
                self.metrics
                    .config_reloads
                    .with_label_values(&["error"])
                    .inc();
                self.last_reload_error.store(Some(Arc::new(errors.clone())));
                for line in errors {
                    log::error!("config reload rejected: {line}");
                }
            }
        }
        result
    }

    /// The admin listener cannot move in a reload: the token rule is
    /// checked against the one that keeps serving, not the file's address.
    fn admin_stays_closed(&self, config: &Config) -> Result<(), String> {
        let serving = self.state().config.admin.listen;
        match AdminSpec::exposure_error(serving, config.admin.token.as_deref()) {
            None => Ok(()),
            Some(e) => Err(format!(
                "admin.token_file: the admin listener keeps serving on {serving} until an \
                 upgrade, and {e}"
            )),
        }
    }

    async fn apply(&self, config: Config, started: std::time::Instant) -> ReloadReport {
        let old = self.state();
        let mut config = config;
        let needs_upgrade = keep_restart_only(&old.config, &mut config);
        let unchanged_settings = old.config.timeouts.same_for_upstreams(&config.timeouts)
            && old.config.health == config.health;
        let previous: HashMap<&str, &Arc<Upstream>> =
            old.upstreams.all().iter().map(|u| (&*u.id, u)).collect();
        let (mut added, mut changed) = (Vec::new(), Vec::new());
        let mut fresh = Vec::new();
        let mut upstreams = Vec::new();
        for spec in &config.upstreams {
            let before = previous.get(spec.id.as_str());
            match (
                carry(before.map(|u| &u.spec), spec, unchanged_settings),
                before,
            ) {
                (Carry::Whole, Some(u)) => upstreams.push((*u).clone()),
                (Carry::Changed, Some(u)) => {
                    changed.push(spec.id.clone());
                    if spec.max_inflight.is_none() {
                        self.metrics.forget_capacity(&spec.id);
                    }
                    let mut next = Upstream::new(
                        spec.clone(),
                        &config.timeouts,
                        &config.health,
                        &self.checks,
                        &self.metrics,
                        config.capacity.queue_max,
                    );
                    next.carry_over(u);
                    upstreams.push(Arc::new(next));
                }
                _ => {
                    added.push(spec.id.clone());
                    let next = Arc::new(Upstream::new(
                        spec.clone(),
                        &config.timeouts,
                        &config.health,
                        &self.checks,
                        &self.metrics,
                        config.capacity.queue_max,
                    ));
                    fresh.push(next.clone());
                    upstreams.push(next);
                }
            }
        }
        // New upstreams take traffic only once a check has passed.
        let timeout = config.health.timeout;
        let checks = fresh.iter().map(|u| async move {
            let ok = matches!(
                tokio::time::timeout(timeout, u.checker.check(&u.backend)).await,
                Ok(Ok(()))
            );
            u.health.set(ok);
        });
        futures::future::join_all(checks).await;
        let removed: Vec<String> = old
            .upstreams
            .all()
            .iter()
            .filter(|u| !config.upstreams.iter().any(|s| s.id == *u.id))
            .map(|u| u.id.to_string())
            .collect();
        for id in &removed {
            self.metrics.forget_upstream(id);
        }
        let generation = old.generation + 1;
        self.store.apply_ttl(config.affinity.ttl);
        if let (Some(redis), Some(spec)) = (&self.redis, &config.redis) {
            redis.reconfigure(spec.clone());
        }
        if crate::logging::set_level(&config.server.log_level) {
            log::warn!("log level is now {}", config.server.log_level);
        }
        let state = State::assemble(config, upstreams, generation);
        if let Some(redis) = &self.redis {
            redis.set_upstreams(state.upstreams.all().iter().map(|u| u.id.clone()).collect());
        }
        self.swap(state);
        // A removed relay's sessions move at their next request, or with
        // `on_remove: purge` (as the file it was removed from said), now.
        for id in &removed {
            let _ = self.purge_on_remove(&old.config, id).await;
        }
        ReloadReport {
            generation,
            took_ms: started.elapsed().as_secs_f64() * 1000.0,
            added,
            removed,
            changed,
            needs_upgrade,
            certificates_renewed: Vec::new(),
        }
    }

    /// Export the expiry of every TLS listener's certificate in force.
    pub fn export_certificates(&self) {
        for l in self.certificates.all() {
            self.metrics
                .tls_certificate_expiry
                .with_label_values(&[&l.addr])
                .set(l.current().not_after);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "listen: [{addr: 127.0.0.1:8080}]\n\
        upstreams: [{id: a, addr: 127.0.0.1:9001}, {id: b, addr: 127.0.0.1:9002}]\n";

    fn config(extra: &str) -> Config {
        config::parse(&format!("{BASE}{extra}")).expect("a valid config")
    }

    /// Each case: the running config's extra lines, the new file's, and
    /// the settings reported as needing an upgrade. Every one of those is
    /// kept as it runs; everything else applies.
    #[test]
    fn restart_only_settings_are_kept_and_reported_and_the_rest_applies() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("", "", &[]),
            ("", "affinity: {ttl: 5m}\nfailover: {max_retries: 3}\n", &[]),
            (
                "",
                "server: {threads: 7, log_level: debug, drain_quiet: 3s}\n",
                &["server.threads"],
            ),
            ("", "admin: {listen: 127.0.0.1:9901}\n", &["admin.listen"]),
            (
                "",
                "affinity: {max_sessions: 12}\n",
                &["affinity.max_sessions"],
            ),
            (
                "",
                "access_log: {path: /tmp/other.log, sample: 0.5}\n",
                &["access_log.path"],
            ),
            ("", "access_log: {buffer: 17}\n", &["access_log.buffer"]),
            (
                "",
                "redis: {url: redis://127.0.0.1:6379/0}\n",
                &["redis (adding or removing it)"],
            ),
            (
                "redis: {url: redis://127.0.0.1:6379/0}\n",
                "",
                &["redis (adding or removing it)"],
            ),
            (
                "redis: {url: redis://127.0.0.1:6379/0}\n",
                "redis: {url: redis://127.0.0.1:6379/0, local_cache_size: 9}\n",
                &["redis.local_cache_size"],
            ),
            (
                "redis: {url: redis://127.0.0.1:6379/0}\n",
                "redis: {url: redis://127.0.0.1:6380/1, prefix: other}\n",
                &[],
            ),
            (
                "",
                "server: {pool_size: 3, grace_period: 9s, thread_model: pingora}\n",
                &[
                    "server.thread_model",
                    "server.pool_size",
                    "server.grace_period",
                ],
            ),
        ];
        for (running, file, want) in cases {
            let old = config(running);
            let mut new = config(file);
            let as_written = new.clone();
            let differed = keep_restart_only(&old, &mut new);
            assert_eq!(differed, *want, "{file:?} over {running:?}");
            // What was kept is as it runs; a second pass finds nothing.
            assert!(
                keep_restart_only(&old, &mut new.clone()).is_empty(),
                "{file:?}"
            );
            // What applies is as written.
            assert_eq!(new.affinity.ttl, as_written.affinity.ttl, "{file:?}");
            assert_eq!(new.max_retries, as_written.max_retries, "{file:?}");
            assert_eq!(
                new.server.log_level, as_written.server.log_level,
                "{file:?}"
            );
            assert_eq!(
                new.access_log.sample, as_written.access_log.sample,
                "{file:?}"
            );
            if let (Some(_), Some(written)) = (&old.redis, &as_written.redis) {
                let kept = new.redis.as_ref().map(|r| &r.prefix);
                assert_eq!(kept, Some(&written.prefix), "{file:?}");
            }
        }
    }

    #[test]
    fn an_upstream_is_carried_whole_only_when_nothing_that_shapes_it_changed() {
        let old = config("");
        let a = &old.upstreams[0];
        let mut weighted = a.clone();
        weighted.weight += 1;
        let cases = [
            (Some(a), a, true, Carry::Whole),
            (Some(a), a, false, Carry::Changed),
            (Some(a), &weighted, true, Carry::Changed),
            (None, a, true, Carry::Added),
            (None, a, false, Carry::Added),
        ];
        for (before, spec, unchanged, want) in cases {
            assert_eq!(
                carry(before, spec, unchanged),
                want,
                "{before:?} -> {spec:?} {unchanged}"
            );
        }
    }
}

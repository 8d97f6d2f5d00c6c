//! In-process reload: build the new generation to one side, then swap.
//!
//! The file is parsed and validated whole; an invalid file changes nothing.
//! Upstreams whose settings did not change are carried over as they are
//! (health, ejection, drain, counters, pooled connections); changed ones get
//! a new peer but keep their health verdict and drain flag; new ones are
//! health-checked once before they can take traffic. Requests in flight keep
//! the generation they started with. Settings that only a restart or a
//! graceful upgrade can change are reported, and everything else applies.

use crate::config::{self, Config};
use crate::state::{Edge, State};
use crate::upstream::Upstream;
use pingora_load_balancing::health_check::HealthCheck;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

/// What a successful reload did.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    pub generation: u64,
    /// From the start of the reload (signal, request or file change) to the swap.
    pub took_ms: f64,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    /// Settings that differ but need a restart or a graceful upgrade.
    pub needs_upgrade: Vec<String>,
}

/// Settings this process cannot change in place.
fn needs_upgrade(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |name: &str, differs: bool| {
        if differs {
            out.push(name.to_string());
        }
    };
    check("listen", old.listeners != new.listeners);
    check("admin.listen", old.admin.listen != new.admin.listen);
    let (a, b) = (&old.server, &new.server);
    check("server.threads", a.threads != b.threads);
    check("server.work_stealing", a.work_stealing != b.work_stealing);
    check("server.pool_size", a.pool_size != b.pool_size);
    check("server.grace_period", a.grace_period != b.grace_period);
    check(
        "server.shutdown_timeout",
        a.shutdown_timeout != b.shutdown_timeout,
    );
    check("server.pid_file", a.pid_file != b.pid_file);
    check("server.upgrade_sock", a.upgrade_sock != b.upgrade_sock);
    // The table's kind, and the capacity of an in-process cache, are fixed
    // when it is built; every other Redis setting applies in place.
    match (&old.redis, &new.redis) {
        (Some(a), Some(b)) => check(
            "redis.local_cache_size",
            a.local_cache_size != b.local_cache_size,
        ),
        (a, b) => check("redis (adding or removing it)", a.is_some() != b.is_some()),
    }
    check(
        "affinity.max_sessions",
        old.affinity.max_sessions != new.affinity.max_sessions,
    );
    out
}

/// Carry over what a restart-only setting would change, so the running
/// process stays coherent with what it actually runs.
fn keep_running_settings(old: &Config, mut new: Config) -> Config {
    new.listeners = old.listeners.clone();
    new.admin.listen = old.admin.listen;
    new.server = crate::config::ServerSpec {
        log_level: new.server.log_level,
        ..old.server.clone()
    };
    match (&old.redis, &mut new.redis) {
        (Some(a), Some(b)) => b.local_cache_size = a.local_cache_size,
        (a, b) => *b = a.clone(),
    }
    new.affinity.max_sessions = old.affinity.max_sessions;
    new
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
            Ok(config) => Ok(self.apply(config, started).await),
            Err(e) => Err(e.lines()),
        };
        match &result {
            Ok(report) => {
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

    async fn apply(&self, config: Config, started: std::time::Instant) -> ReloadReport {
        let old = self.state();
        let needs_upgrade = needs_upgrade(&old.config, &config);
        let config = keep_running_settings(&old.config, config);
        let unchanged_settings =
            old.config.timeouts == config.timeouts && old.config.health == config.health;
        let previous: HashMap<&str, &Arc<Upstream>> =
            old.upstreams.all().iter().map(|u| (&*u.id, u)).collect();
        let (mut added, mut changed) = (Vec::new(), Vec::new());
        let mut fresh = Vec::new();
        let mut upstreams = Vec::new();
        for spec in &config.upstreams {
            match previous.get(spec.id.as_str()) {
                Some(u) if u.spec == *spec && unchanged_settings => upstreams.push((*u).clone()),
                Some(u) => {
                    changed.push(spec.id.clone());
                    let next = Upstream::new(
                        spec.clone(),
                        &config.timeouts,
                        &config.health,
                        &self.checks,
                        &self.metrics,
                    );
                    next.carry_over(u);
                    upstreams.push(Arc::new(next));
                }
                None => {
                    added.push(spec.id.clone());
                    let next = Arc::new(Upstream::new(
                        spec.clone(),
                        &config.timeouts,
                        &config.health,
                        &self.checks,
                        &self.metrics,
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
        ReloadReport {
            generation,
            took_ms: started.elapsed().as_secs_f64() * 1000.0,
            added,
            removed,
            changed,
            needs_upgrade,
        }
    }
}

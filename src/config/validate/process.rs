//! The process: the admin listener and its token file, and the server
//! settings Pingora takes.

use super::*;

/// The `admin` section alone (for `relay-edge ctl`).
pub fn admin_only(a: AdminFile) -> Result<AdminSpec, Vec<FieldError>> {
    let mut errs = Errors::default();
    let spec = admin_spec(a, &mut errs);
    match errs.0.is_empty() {
        true => Ok(spec),
        false => Err(errs.0),
    }
}

pub(super) fn admin_spec(a: AdminFile, errs: &mut Errors) -> AdminSpec {
    let AdminFile { listen, token_file } = a;
    let listen_text = listen.unwrap_or_else(|| Defaults::ADMIN_LISTEN.to_string());
    let parsed = socket_addr(&listen_text, "admin.listen", errs);
    let mut token_file_warning = None;
    let token = token_file.and_then(|file| match read_token(&file) {
        Ok(t) if t.len() > MAX_TOKEN_BYTES => {
            errs.push(
                "admin.token_file",
                format!("{file:?} is longer than {MAX_TOKEN_BYTES} bytes"),
            );
            None
        }
        Ok(t) if !t.trim().is_empty() => {
            token_file_warning = world_readable_warning(&file);
            Some(t.trim().to_string())
        }
        Ok(_) => {
            errs.push("admin.token_file", format!("{file:?} is empty"));
            None
        }
        Err(e) => {
            errs.push("admin.token_file", format!("cannot read {file:?}: {e}"));
            None
        }
    });
    if let Some(error) = parsed.and_then(|l| AdminSpec::exposure_error(l, token.as_deref())) {
        errs.push("admin.listen", error);
    }
    AdminSpec {
        listen: parsed.unwrap_or_else(placeholder_addr),
        token,
        token_file_warning,
    }
}

/// A token longer than this is a mistake (or `/dev/zero`): it is refused,
/// and never read further.
pub(super) const MAX_TOKEN_BYTES: usize = 4096;

pub(super) fn read_token(file: &str) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(file)?
        .take(MAX_TOKEN_BYTES as u64 + 1)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// A warning when every user may read the token file.
pub(super) fn world_readable_warning(file: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(file).ok()?.permissions().mode();
    (mode & 0o004 != 0).then(|| {
        format!(
            "admin.token_file: {file:?} is readable by every user (mode {:o}): chmod 600 it",
            mode & 0o777
        )
    })
}

pub(super) fn server_spec(s: ServerFile, errs: &mut Errors) -> ServerSpec {
    let ServerFile {
        threads,
        thread_model,
        work_stealing,
        pool_size,
        grace_period,
        shutdown_timeout,
        pid_file,
        upgrade_sock,
        log_level,
        drain_quiet,
    } = s;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let log_level = log_level.unwrap_or_else(|| Defaults::LOG_LEVEL.to_string());
    if log_level.parse::<log::LevelFilter>().is_err() {
        errs.push(
            "server.log_level",
            format!("{log_level:?} is not one of off, error, warn, info, debug, trace"),
        );
    }
    let thread_model = match thread_model.as_deref().unwrap_or("workers") {
        "workers" => ThreadModel::Workers,
        "pingora" => ThreadModel::Pingora,
        other => {
            errs.push(
                "server.thread_model",
                format!("{other:?}: must be workers or pingora"),
            );
            ThreadModel::Workers
        }
    };
    if thread_model == ThreadModel::Workers && work_stealing == Some(true) {
        errs.push(
            "server.work_stealing",
            "applies to server.thread_model: pingora only (workers never share connections)",
        );
    }
    ServerSpec {
        threads: number(threads, cores, (1, 1024), "server.threads", errs),
        thread_model,
        work_stealing: work_stealing.unwrap_or(false),
        pool_size: number(
            pool_size,
            Defaults::POOL_SIZE,
            (0, 1_000_000),
            "server.pool_size",
            errs,
        ),
        grace_period: duration(
            grace_period,
            Defaults::GRACE_PERIOD,
            (Duration::ZERO, 7 * DAY),
            "server.grace_period",
            errs,
        ),
        shutdown_timeout: duration(
            shutdown_timeout,
            Defaults::SHUTDOWN_TIMEOUT,
            (Duration::ZERO, HOUR),
            "server.shutdown_timeout",
            errs,
        ),
        pid_file: pid_file.unwrap_or_else(|| Defaults::PID_FILE.to_string()),
        upgrade_sock: upgrade_sock.unwrap_or_else(|| Defaults::UPGRADE_SOCK.to_string()),
        log_level,
        drain_quiet: duration(
            drain_quiet,
            Defaults::DRAIN_QUIET,
            (Duration::ZERO, HOUR),
            "server.drain_quiet",
            errs,
        ),
    }
}

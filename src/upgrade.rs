//! A graceful binary upgrade started from inside the running process
//! (SIGUSR2, as with nginx): start the binary at the path this process was
//! started from with `--upgrade`, as a child, so that under systemd it runs
//! in the same service, sandbox and user; wait until it listens on
//! `upgrade_sock`; then hand the listening sockets over by sending ourselves
//! SIGQUIT (Pingora's hand-over), and drain. If the new binary fails to
//! start (a bad config, a broken build), nothing is handed over and this
//! process serves on.
//!
//! Without Redis the affinity table lives in the process: just before the
//! hand-over it is written beside `upgrade_sock` ([`save_table`]), and the
//! new process takes it over before it serves ([`take_table`]), so that no
//! session moves. A manual upgrade (`--upgrade`, then SIGQUIT) hands over
//! the sockets only.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("no path to this binary in argv[0]")]
    NoBinary,
    #[error("cannot start {binary}: {source}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("the new process exited ({0}) before taking the sockets")]
    Exited(std::process::ExitStatus),
    #[error("the new process did not listen on {0} within {1:?}")]
    NotListening(String, Duration),
}

/// How long the new process has to validate its config and listen.
const START_WITHIN: Duration = Duration::from_secs(30);

/// The binary to start: the path this process was started from, which a
/// package upgrade has replaced (`/proc/self/exe` would name the old file).
fn own_binary() -> Option<PathBuf> {
    std::env::args_os().next().map(PathBuf::from)
}

/// Start the successor and hand it the sockets; `before` runs just before
/// the hand-over (the table is saved then). Returns the successor's PID.
pub async fn hand_over(
    config: &Path,
    upgrade_sock: &str,
    before: impl FnOnce(),
) -> Result<u32, UpgradeError> {
    let binary = own_binary().ok_or(UpgradeError::NoBinary)?;
    // The successor binds a fresh socket there; a stale file must not look
    // like it is ready, nor a stale table be taken over.
    let _ = std::fs::remove_file(upgrade_sock);
    let _ = std::fs::remove_file(table_path(upgrade_sock));
    let mut child = Command::new(&binary)
        .arg("-c")
        .arg(config)
        .arg("--upgrade")
        .stdin(Stdio::null())
        .spawn()
        .map_err(|source| UpgradeError::Spawn {
            binary: binary.display().to_string(),
            source,
        })?;
    let pid = child.id();
    let deadline = Instant::now() + START_WITHIN;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(UpgradeError::Exited(status));
        }
        if Path::new(upgrade_sock).exists() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(UpgradeError::NotListening(
                upgrade_sock.to_string(),
                START_WITHIN,
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    before();
    // Pingora sends the listening sockets on SIGQUIT, then drains.
    // SAFETY: kill(2) on our own PID with a valid signal number.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGQUIT);
    }
    Ok(pid)
}

/// A table older than this is not taken over: it is not this hand-over's.
const TABLE_FRESH_MS: u64 = 60_000;

/// Where the old process writes its in-process table for the new one.
pub fn table_path(upgrade_sock: &str) -> PathBuf {
    PathBuf::from(format!("{upgrade_sock}.sessions"))
}

/// Write the in-process table (if there is one) for the successor: a
/// header line with the time, then one JSON line per session; written to a
/// temporary file, readable by this user only, and renamed into place.
pub fn save_table(edge: &crate::state::Edge, upgrade_sock: &str) {
    let Some(local) = &edge.local else { return };
    let sessions = local.export();
    let path = table_path(upgrade_sock);
    let tmp = path.with_extension("sessions.tmp");
    let written = (|| -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        // A fresh file, never one someone else left (or linked) there.
        let _ = std::fs::remove_file(&tmp);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut out = std::io::BufWriter::new(file);
        writeln!(out, "{{\"written_ms\":{}}}", crate::clock::unix_ms())?;
        for s in &sessions {
            serde_json::to_writer(&mut out, s)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        std::fs::rename(&tmp, &path)
    })();
    match written {
        Ok(()) => log::info!(
            "{} sessions written to {} for the new process",
            sessions.len(),
            path.display()
        ),
        Err(e) => log::error!(
            "cannot write the session table to {}: {e}; the new process starts without it",
            path.display()
        ),
    }
}

/// In the new process of an upgrade: take over the table the old process
/// wrote, if it is this hand-over's, and remove the file.
pub fn take_table(edge: &crate::state::Edge, upgrade_sock: &str) {
    let Some(local) = &edge.local else { return };
    let path = table_path(upgrade_sock);
    let Ok(meta) = std::fs::symlink_metadata(&path) else {
        return;
    };
    // Only a file this user wrote, that no one else may write: another
    // user's file in a shared /tmp must not place sessions.
    {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid(2) cannot fail and touches no memory.
        let me = unsafe { libc::geteuid() };
        if !meta.is_file() || meta.uid() != me || meta.mode() & 0o022 != 0 {
            log::warn!(
                "{} is not a file of this user's alone: not taken over",
                path.display()
            );
            return;
        }
    }
    let Ok(text) = std::fs::read_to_string(&path) else {
        return;
    };
    let _ = std::fs::remove_file(&path);
    let mut lines = text.lines();
    let written = lines
        .next()
        .and_then(|h| serde_json::from_str::<serde_json::Value>(h).ok())
        .and_then(|h| h["written_ms"].as_u64())
        .unwrap_or(0);
    if crate::clock::unix_ms().saturating_sub(written) > TABLE_FRESH_MS {
        log::warn!("{} is stale: not taken over", path.display());
        return;
    }
    let sessions: Vec<_> = lines.filter_map(|l| serde_json::from_str(l).ok()).collect();
    let taken = local.import(sessions);
    log::info!("took over {taken} sessions from the previous process");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn edge() -> std::sync::Arc<crate::state::Edge> {
        crate::state::Edge::new(
            crate::config::parse(
                "listen: [{addr: 127.0.0.1:8080}]\nupstreams: [{id: a, addr: 127.0.0.1:9001}]\n",
            )
            .expect("valid config"),
        )
    }

    #[test]
    fn a_table_others_may_write_is_not_taken_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("up.sock").display().to_string();
        let old = edge();
        let local = old.local.as_ref().expect("in-process table");
        local.put(
            crate::affinity::SessionId(7),
            "a".into(),
            None,
            crate::clock::unix_ms(),
        );
        save_table(&old, &sock);
        let path = table_path(&sock);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let new = edge();
        take_table(&new, &sock);
        assert_eq!(new.store.len(), 0, "a world-writable file is refused");

        save_table(&old, &sock);
        take_table(&new, &sock);
        assert_eq!(new.store.len(), 1);
        assert!(!path.exists(), "removed once taken over");
    }
}

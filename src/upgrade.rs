//! A graceful binary upgrade started from inside the running process
//! (SIGUSR2, as with nginx): start the binary at the path this process was
//! started from with `--upgrade`, as a child, so that under systemd it runs
//! in the same service, sandbox and user; wait until it listens on
//! `upgrade_sock`; then hand the listening sockets over by sending ourselves
//! SIGQUIT (Pingora's hand-over), and drain. If the new binary fails to
//! start (a bad config, a broken build), nothing is handed over and this
//! process serves on.

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

/// Start the successor and hand it the sockets; returns its PID.
pub async fn hand_over(config: &Path, upgrade_sock: &str) -> Result<u32, UpgradeError> {
    let binary = own_binary().ok_or(UpgradeError::NoBinary)?;
    // The successor binds a fresh socket there; a stale file must not look
    // like it is ready.
    let _ = std::fs::remove_file(upgrade_sock);
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
    // Pingora sends the listening sockets on SIGQUIT, then drains.
    // SAFETY: kill(2) on our own PID with a valid signal number.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGQUIT);
    }
    Ok(pid)
}

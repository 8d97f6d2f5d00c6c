//! Telling the supervisor that this process is up and is the one to watch:
//! the pid file (`server.pid_file`, which Pingora writes only when it
//! daemonizes) and, under systemd `Type=notify`, `READY=1` with `MAINPID`.
//! A graceful upgrade's new process says the same once it is ready, so the
//! pid file and systemd follow the process that owns the sockets, and
//! systemd does not stop the service when the old process exits.

use std::path::Path;

/// Ready to serve (upstream health is known), and the main process.
pub fn announce_ready(pid_file: &str) {
    let pid = std::process::id();
    if let Err(e) = write_pid_file(Path::new(pid_file), pid) {
        log::warn!("cannot write the pid file {pid_file}: {e}");
    }
    notify_systemd(pid);
}

/// Replace the file whole, so that a reader never sees half a PID.
fn write_pid_file(path: &Path, pid: u32) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{pid}"));
    std::fs::write(&tmp, format!("{pid}\n"))?;
    std::fs::rename(&tmp, path)
}

fn notify_systemd(pid: u32) {
    use sd_notify::NotifyState;
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let states = [
        NotifyState::MainPid(pid),
        NotifyState::Ready,
        NotifyState::Status("serving"),
    ];
    if let Err(e) = sd_notify::notify(&states) {
        log::warn!("cannot notify systemd of readiness: {e}");
    }
}

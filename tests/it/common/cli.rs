//! Running a real client's command line (OpenCode, the Codex CLI) to its end
//! within a deadline: its output, or a failure that shows it. Blocking: call
//! it inside `tokio::task::block_in_place`.

use super::wait::until_blocking;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Run `cmd` (its output to files, so that no pipe fills); its stdout and
/// stderr, once it exits 0 within `within`. Killed and failed otherwise.
pub fn run(cmd: &mut Command, within: Duration) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?} does not start: {e}"));
    let status = until_blocking(within, || child.try_wait().ok().flatten());
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let text = format!(
        "{}{}",
        std::fs::read_to_string(&out).unwrap_or_default(),
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    match status {
        Some(s) if s.success() => text,
        Some(s) => panic!("{cmd:?} failed ({s}):\n{text}"),
        None => panic!("{cmd:?} did not finish within {within:?}:\n{text}"),
    }
}

/// Wait until `n` streams are counted `completed` on `home` (a stream is
/// counted as the edge ends it, just after the client has its last byte),
/// then check that no relay of `ups` cut one or was ejected. Returns the
/// metrics text it read last.
pub async fn every_stream_completed_on(
    edge: &super::Edge,
    home: &str,
    n: u64,
    ups: &[relay_edge::demo::DemoUpstream],
) -> String {
    let completed =
        format!("relay_edge_streams_total{{outcome=\"completed\",upstream=\"{home}\"}}");
    super::eventually(
        std::time::Duration::from_secs(10),
        "every stream counted",
        || async { super::counter(&edge.metrics().await, &completed) == n },
    )
    .await;
    let metrics = edge.metrics().await;
    for u in ups {
        let cut = format!(
            "relay_edge_streams_total{{outcome=\"relay_cut\",upstream=\"{}\"}}",
            u.name
        );
        assert_eq!(super::counter(&metrics, &cut), 0, "{metrics}");
        let ejections = format!(
            "relay_edge_upstream_ejections_total{{upstream=\"{}\"}}",
            u.name
        );
        assert_eq!(super::counter(&metrics, &ejections), 0, "{metrics}");
    }
    metrics
}

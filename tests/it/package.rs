//! The .deb: `cargo deb` metadata packs the binary, the unit, the config as
//! a conffile and a postinst that creates the service user.

use crate::common::BIN;
use std::path::Path;
use std::process::Command;

const CARGO_DEB: &str = "cargo-deb is needed: cargo install cargo-deb --locked --version 3.8.0 (scripts/test.sh installs it)";

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_deb_holds_the_binary_the_unit_the_conffile_and_a_postinst_that_adds_the_user() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("tempdir");
    // Package the binary these tests run (the dev profile), not a release
    // build: the contents are what is checked here.
    assert!(Path::new(BIN).exists());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo).args(["deb", "--version"]).output();
    assert!(status.is_ok_and(|o| o.status.success()), "{CARGO_DEB}");
    run(
        Command::new(&cargo)
            .args([
                "deb",
                "--no-build",
                "--profile",
                "dev",
                "--fast",
                "-q",
                "-o",
            ])
            .arg(dir.path())
            .current_dir(root),
        "cargo deb",
    );
    let deb = std::fs::read_dir(dir.path())
        .expect("read the output dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb was written");

    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb), "dpkg-deb -c");
    for (mode, path) in [
        ("-rwxr-xr-x", "./usr/bin/relay-edge"),
        ("-rw-r--r--", "./usr/lib/systemd/system/relay-edge.service"),
        ("-rw-r-----", "./etc/relay-edge/relay-edge.yaml"),
    ] {
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with(mode) && l.ends_with(path)),
            "the .deb lacks {mode} {path}:\n{listing}"
        );
    }

    let control = dir.path().join("control");
    run(
        Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control),
        "dpkg-deb -e",
    );
    let conffiles = std::fs::read_to_string(control.join("conffiles")).expect("conffiles");
    assert_eq!(conffiles.trim(), "/etc/relay-edge/relay-edge.yaml");
    let postinst = std::fs::read_to_string(control.join("postinst")).expect("postinst");
    assert!(
        postinst.contains("useradd --system") && postinst.contains("relay-edge"),
        "{postinst}"
    );
    assert!(
        postinst.contains("deb-systemd-helper enable relay-edge.service"),
        "{postinst}"
    );
    assert!(
        postinst
            .contains("install -d -o relay-edge -g relay-edge -m 0700 /var/lib/relay-edge/bodies"),
        "the postinst makes the body spill directory:\n{postinst}"
    );
    let postrm = std::fs::read_to_string(control.join("postrm")).expect("postrm");
    assert!(
        postrm.contains("rmdir /var/lib/relay-edge/bodies"),
        "a purge removes it:\n{postrm}"
    );
    for script in ["postinst", "postrm"] {
        run(
            Command::new("sh").arg("-n").arg(control.join(script)),
            &format!("sh -n {script}"),
        );
    }
    let prerm = std::fs::read_to_string(control.join("prerm")).unwrap_or_default();
    assert!(
        !prerm.contains("upgrade"),
        "an upgrade must not stop the service:\n{prerm}"
    );

    // What is packed works: the binary accepts the packed config, and the
    // unit is the repository's.
    let tree = dir.path().join("tree");
    run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree),
        "dpkg-deb -x",
    );
    run(
        Command::new(tree.join("usr/bin/relay-edge"))
            .arg("-c")
            .arg(tree.join("etc/relay-edge/relay-edge.yaml"))
            .arg("--check"),
        "the packed binary checks the packed config",
    );
    assert_eq!(
        std::fs::read_to_string(tree.join("usr/lib/systemd/system/relay-edge.service"))
            .expect("unit"),
        std::fs::read_to_string(root.join("systemd/relay-edge.service")).expect("unit")
    );
}

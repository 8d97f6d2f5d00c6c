//! `limits.body_spill_dir`: where bodies past their memory share go. It
//! must be an existing directory the process can make files in, checked
//! by making (and at once losing) an unlinked one, at load and at every
//! reload, so that `--check` and a reload say so rather than the first
//! large body.

use super::Errors;
use crate::config::model::Defaults;
use std::path::PathBuf;

const PATH: &str = "limits.body_spill_dir";

/// The directory, checked when bodies may spill (`limits.body_disk` > 0).
pub(super) fn spill_dir(value: Option<String>, used: bool, errs: &mut Errors) -> PathBuf {
    let dir = PathBuf::from(value.as_deref().unwrap_or(Defaults::BODY_SPILL_DIR));
    if let Some(problem) = problem(value.as_deref(), &dir, used) {
        errs.push(PATH, problem);
    }
    dir
}

fn problem(value: Option<&str>, dir: &std::path::Path, used: bool) -> Option<String> {
    if value.is_some_and(str::is_empty) || !dir.is_absolute() {
        return Some("must be an absolute directory path".to_string());
    }
    if !used {
        return None;
    }
    match std::fs::metadata(dir) {
        Err(e) => return Some(format!("{}: {e}", dir.display())),
        Ok(m) if !m.is_dir() => return Some(format!("{} is not a directory", dir.display())),
        Ok(_) => {}
    }
    tempfile::tempfile_in(dir)
        .err()
        .map(|e| format!("{}: cannot make a file there: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::problem;

    #[test]
    fn the_directory_must_exist_and_take_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_str().expect("utf-8").to_string();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").expect("write");
        let missing = dir.path().join("missing");
        let cases: &[(Option<&str>, &std::path::Path, bool, Option<&str>)] = &[
            (Some(&path), dir.path(), true, None),
            (None, std::path::Path::new("/var/tmp"), true, None),
            (
                Some(""),
                std::path::Path::new(""),
                true,
                Some("must be an absolute"),
            ),
            (
                Some("rel"),
                std::path::Path::new("rel"),
                true,
                Some("must be an absolute"),
            ),
            (None, &missing, true, Some("No such file")),
            (None, &missing, false, None),
            (None, &file, true, Some("is not a directory")),
        ];
        for (value, dir, used, want) in cases {
            let got = problem(*value, dir, *used);
            match want {
                None => assert_eq!(got, None, "{dir:?}"),
                Some(w) => assert!(
                    got.as_deref().is_some_and(|g| g.contains(w)),
                    "{dir:?}: {got:?}"
                ),
            }
        }
    }
}

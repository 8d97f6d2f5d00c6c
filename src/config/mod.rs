//! Configuration: loading the YAML file and validating it into [`Config`].
//!
//! Two layers: [`file`] mirrors the YAML with serde (`deny_unknown_fields`),
//! and [`validate`] checks every value, fills in [`Defaults`], and collects
//! every problem at once, each named by its path
//! (`upstreams[2].addr: invalid socket address "x"`). Errors never echo the
//! file's contents beyond the offending value of a field that holds no secret.

pub mod file;
pub mod model;
mod redis_spec;
mod upstream_proxy;
mod validate;

pub use model::*;
pub use upstream_proxy::*;
pub use validate::{json_pointer, upstream_id_problem, validate};

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a config file, named by the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", join_lines(.0))]
    Invalid(Vec<FieldError>),
}

fn join_lines(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// Every problem as a `path: message` line, for logs, stderr and the admin API.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Read { path, source } => {
                vec![format!("{}: cannot read: {source}", path.display())]
            }
            ConfigError::Invalid(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }
}

/// Read, parse and validate a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text)
}

/// Only the `admin` section of the file at `path`, validated: what
/// `relay-edge ctl` needs. It reads even while the rest of the file is
/// being edited, so that `ctl reload` can report what is wrong with it.
pub fn load_admin(path: &Path) -> Result<AdminSpec, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut errors = Vec::new();
    let raw = file::read_admin(&text, &mut errors);
    if !errors.is_empty() {
        return Err(ConfigError::Invalid(errors));
    }
    validate::admin_only(raw).map_err(ConfigError::Invalid)
}

/// Parse and validate config text. Every problem is reported: those of
/// reading (unknown keys, wrong shapes) and then those of validating what
/// could be read, unless the file is not YAML at all.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let mut errors = Vec::new();
    let raw = file::read(text, &mut errors);
    if errors.iter().any(|e| e.path == file::WHOLE_FILE) {
        return Err(ConfigError::Invalid(errors));
    }
    match validate(raw) {
        Ok(config) if errors.is_empty() => Ok(config),
        Ok(_) => Err(ConfigError::Invalid(errors)),
        Err(more) => {
            errors.extend(more);
            Err(ConfigError::Invalid(errors))
        }
    }
}

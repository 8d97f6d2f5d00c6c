//! Affinity: its key sources, JSON pointers, table size and balance.

use super::*;

pub(super) fn affinity_spec(a: AffinityFile, errs: &mut Errors) -> AffinitySpec {
    let AffinityFile {
        keys,
        claude_code,
        presets,
        ttl,
        max_sessions,
        max_body_bytes,
        balance,
        load_factor,
        hash_secret,
        outcome_header,
        pin_wait,
        max_session_share,
    } = a;
    // The presets in their order (`claude_code: true` is the first
    // preset's synonym), then `keys`.
    let mut names: Vec<&str> = Vec::new();
    if claude_code {
        names.push("claude_code");
    }
    let mut specs = Vec::new();
    for (i, name) in presets.iter().enumerate() {
        match super::presets::preset(name) {
            Some(_) if names.contains(&name.as_str()) => {}
            Some(_) => names.push(name),
            None => errs.push(
                format!("affinity.presets[{i}]"),
                format!(
                    "{name:?}: must be one of {}",
                    super::presets::PRESETS.join(", ")
                ),
            ),
        }
    }
    for name in names {
        specs.extend(super::presets::preset(name).unwrap_or_default());
    }
    for (i, k) in keys.into_iter().enumerate() {
        if let Some(spec) = key_spec(k, &format!("affinity.keys[{i}]"), errs) {
            specs.push(spec);
        }
    }
    let load_factor = load_factor.unwrap_or(Defaults::LOAD_FACTOR);
    if !((1.0..=100.0).contains(&load_factor)) {
        errs.push("affinity.load_factor", "must be a number from 1.0 to 100");
    }
    let max_session_share = max_session_share.unwrap_or(Defaults::MAX_SESSION_SHARE);
    if !((1.0..=1000.0).contains(&max_session_share)) {
        errs.push(
            "affinity.max_session_share",
            "must be a number from 1.0 to 1000",
        );
    }
    let hash_secret = hash_secret.unwrap_or_else(|| Defaults::HASH_SECRET.to_string());
    if hash_secret.is_empty() {
        errs.push("affinity.hash_secret", "must not be empty");
    }
    let outcome_header = match outcome_header.as_deref() {
        None => http::HeaderName::from_static(Defaults::OUTCOME_HEADER).into(),
        Some("") => None,
        Some(name) => match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                errs.push(
                    "affinity.outcome_header",
                    format!("{name:?} is not a header name"),
                );
                None
            }
        },
    };
    AffinitySpec {
        outcome_header,
        keys: specs,
        ttl: duration(
            ttl,
            Defaults::TTL,
            (SECOND, 365 * DAY),
            "affinity.ttl",
            errs,
        ),
        max_sessions: number(
            max_sessions,
            Defaults::MAX_SESSIONS,
            (1, Limits::MAX_SESSIONS),
            "affinity.max_sessions",
            errs,
        ),
        max_body_bytes: number(
            max_body_bytes,
            Defaults::MAX_BODY_BYTES,
            (0, Limits::MAX_BODY_BYTES),
            "affinity.max_body_bytes",
            errs,
        ),
        balance: match balance {
            None | Some(BalanceFile::LeastLoaded) => Balance::LeastLoaded,
            Some(BalanceFile::Consistent) => Balance::Consistent,
        },
        load_factor,
        hash_secret,
        pin_wait: duration(
            pin_wait,
            Defaults::PIN_WAIT,
            (Duration::ZERO, MINUTE),
            "affinity.pin_wait",
            errs,
        ),
        max_session_share,
    }
}

/// Parse an RFC 6901 JSON pointer into its unescaped tokens.
pub fn json_pointer(pointer: &str) -> Option<Vec<String>> {
    let rest = pointer.strip_prefix('/')?;
    Some(
        rest.split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect(),
    )
}

pub(super) fn key_spec(k: KeySourceFile, path: &str, errs: &mut Errors) -> Option<KeySpec> {
    let KeySourceFile {
        header,
        cookie,
        query,
        json,
        regex,
    } = k;
    let mut sources = Vec::new();
    if let Some(h) = header {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            errs.push(
                format!("{path}.header"),
                format!("invalid header name {h:?}"),
            );
        }
        sources.push(KeySourceSpec::Header(h.to_ascii_lowercase()));
    }
    if let Some(c) = cookie {
        sources.push(KeySourceSpec::Cookie(c));
    }
    if let Some(q) = query {
        sources.push(KeySourceSpec::Query(q));
    }
    if let Some(j) = json {
        match json_pointer(&j) {
            Some(tokens) => sources.push(KeySourceSpec::Json(tokens)),
            None => {
                errs.push(
                    format!("{path}.json"),
                    format!("invalid JSON pointer {j:?}: must start with '/'"),
                );
                return None;
            }
        }
    }
    if sources.len() != 1 {
        errs.push(path, "needs exactly one of header, cookie, query, json");
        return None;
    }
    let extract = match regex {
        None => Extract::Whole,
        Some(r) => match Regex::new(&r) {
            Ok(re) => Extract::Regex(re),
            Err(e) => {
                errs.push(format!("{path}.regex"), format!("invalid regex: {e}"));
                return None;
            }
        },
    };
    sources.pop().map(|source| KeySpec { source, extract })
}

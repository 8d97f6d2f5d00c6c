//! Tenants: where the credential is read, and the per-tenant limits.

use super::*;

pub(super) fn tenants_spec(t: TenantsFile, errs: &mut Errors) -> TenantsSpec {
    let TenantsFile {
        from,
        max_new_sessions_per_hour,
        max_inflight_per_session,
        top,
    } = t;
    let from = match from {
        None => Defaults::TENANTS_FROM
            .iter()
            .filter_map(|name| source(name, "tenants.from", errs))
            .collect(),
        Some(names) => {
            let mut sources: Vec<TenantSource> = Vec::new();
            for (i, name) in names.iter().enumerate() {
                let path = format!("tenants.from[{i}]");
                let Some(s) = source(name, &path, errs) else {
                    continue;
                };
                if sources.contains(&s) {
                    errs.push(path, format!("{name:?} is listed twice"));
                    continue;
                }
                sources.push(s);
            }
            sources
        }
    };
    TenantsSpec {
        from,
        max_new_sessions_per_hour: max_new_sessions_per_hour.map(|n| {
            number(
                Some(n),
                1,
                (1, Limits::MAX_NEW_SESSIONS_PER_HOUR),
                "tenants.max_new_sessions_per_hour",
                errs,
            )
        }),
        max_inflight_per_session: max_inflight_per_session.map(|n| {
            number(
                Some(n),
                1,
                (1, Limits::MAX_INFLIGHT_PER_SESSION),
                "tenants.max_inflight_per_session",
                errs,
            )
        }),
        top: number(
            top,
            Defaults::TENANTS_TOP,
            (1, Limits::TENANTS_TOP),
            "tenants.top",
            errs,
        ),
    }
}

/// One entry of `tenants.from`: a header name, `authorization` meaning its
/// bearer token.
fn source(name: &str, path: &str, errs: &mut Errors) -> Option<TenantSource> {
    match http::HeaderName::from_bytes(name.as_bytes()) {
        Ok(h) if h == http::header::AUTHORIZATION => Some(TenantSource::Authorization),
        Ok(h) => Some(TenantSource::Header(h)),
        Err(_) => {
            errs.push(path, format!("{name:?} is not a header name"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{parse, TenantSource, TenantsSpec};

    const BASE: &str =
        "listen: [{addr: 127.0.0.1:8080}]\nupstreams: [{id: a, addr: 127.0.0.1:9001}]\n";

    fn spec(section: &str) -> Result<TenantsSpec, Vec<String>> {
        parse(&format!("{BASE}{section}"))
            .map(|c| c.tenants)
            .map_err(|e| e.lines())
    }

    fn header(name: &'static str) -> TenantSource {
        TenantSource::Header(http::HeaderName::from_static(name))
    }

    #[test]
    fn tenants_read_with_their_defaults() {
        let cases: Vec<(&str, &str, TenantsSpec)> = vec![
            (
                "absent: x-api-key, then the bearer token; no limits; top 10",
                "",
                TenantsSpec {
                    from: vec![header("x-api-key"), TenantSource::Authorization],
                    max_new_sessions_per_hour: None,
                    max_inflight_per_session: None,
                    top: 10,
                },
            ),
            (
                "from: [] turns tenants off",
                "tenants: {from: []}\n",
                TenantsSpec {
                    from: vec![],
                    max_new_sessions_per_hour: None,
                    max_inflight_per_session: None,
                    top: 10,
                },
            ),
            (
                "names in any case; the limits",
                "tenants: {from: [Authorization, X-Tenant], max_new_sessions_per_hour: 50, max_inflight_per_session: 4, top: 3}\n",
                TenantsSpec {
                    from: vec![TenantSource::Authorization, header("x-tenant")],
                    max_new_sessions_per_hour: Some(50),
                    max_inflight_per_session: Some(4),
                    top: 3,
                },
            ),
        ];
        for (name, section, want) in cases {
            assert_eq!(spec(section), Ok(want), "{name}");
        }
    }

    #[test]
    fn bad_tenants_are_named_by_path() {
        let cases = [
            (
                "tenants: {from: ['bad header']}\n",
                "tenants.from[0]: \"bad header\" is not a header name",
            ),
            (
                "tenants: {from: [x-api-key, X-API-KEY]}\n",
                "tenants.from[1]: \"X-API-KEY\" is listed twice",
            ),
            (
                "tenants: {max_new_sessions_per_hour: 0}\n",
                "tenants.max_new_sessions_per_hour: must be from 1",
            ),
            (
                "tenants: {max_inflight_per_session: 0}\n",
                "tenants.max_inflight_per_session: must be from 1",
            ),
            ("tenants: {top: 0}\n", "tenants.top: must be from 1 to 100"),
            (
                "tenants: {top: 101}\n",
                "tenants.top: must be from 1 to 100",
            ),
            (
                "tenants: {max_inflight_per_session: -1}\n",
                "tenants.max_inflight_per_session",
            ),
            (
                "tenants: {form: [x-api-key]}\n",
                "tenants.form: unknown field",
            ),
            ("tenants: {from: x-api-key}\n", "tenants.from"),
        ];
        for (section, want) in cases {
            let got = spec(section).err().unwrap_or_default();
            assert!(
                got.iter().any(|l| l.starts_with(want)),
                "{section}: want {want:?} in {got:?}"
            );
        }
    }
}

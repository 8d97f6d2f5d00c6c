//! The monitoring files in `contrib/`: the alert rules pass `promtool`, the
//! rules and the Grafana dashboard name only metrics relay-edge exports, and
//! every alert's runbook link lands on a heading of `docs/operations.md`.

use regex::Regex;
use relay_edge::metrics::Metrics;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const PROMTOOL: &str =
    "promtool is needed: apt-get install prometheus (scripts/test.sh installs it)";
const RULES: &str = "contrib/prometheus/relay-edge-rules.yml";
const DASHBOARD: &str = "contrib/grafana/relay-edge.json";
const OPERATIONS: &str = "docs/operations.md";

fn path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(path(relative)).unwrap_or_else(|e| panic!("read {relative}: {e}"))
}

#[test]
fn alert_rules_pass_promtool_and_name_only_exported_metrics() {
    let out = match Command::new("promtool")
        .args(["check", "rules"])
        .arg(path(RULES))
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{PROMTOOL}"),
        Err(e) => panic!("promtool: {e}"),
    };
    assert!(
        out.status.success(),
        "promtool check rules {RULES} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let rules: serde_yaml::Value =
        serde_yaml::from_str(&read(RULES)).unwrap_or_else(|e| panic!("{RULES}: {e}"));
    let mut texts = Vec::new();
    yaml_strings(&rules, &mut texts);
    assert_only_exported_metrics(RULES, &texts);
}

#[test]
fn the_dashboard_names_only_exported_metrics() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"));
    let mut texts = Vec::new();
    json_strings(&dashboard, &mut texts);
    assert_only_exported_metrics(DASHBOARD, &texts);
}

#[test]
fn every_alert_links_a_heading_of_the_operations_doc() {
    let doc = std::fs::read_to_string(path(OPERATIONS)).unwrap_or_else(|e| {
        panic!("{OPERATIONS} is missing ({e}): the alerts in {RULES} link their runbooks there")
    });
    let anchors = heading_anchors(&doc);
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&read(RULES)).unwrap_or_else(|e| panic!("{RULES}: {e}"));
    let groups = rules["groups"].as_sequence().expect("rules have groups");

    let mut alerts = 0;
    let mut unlinked = Vec::new();
    for rule in groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().into_iter().flatten())
    {
        let Some(alert) = rule["alert"].as_str() else {
            continue; // a recording rule
        };
        alerts += 1;
        let url = rule["annotations"]["runbook_url"].as_str();
        let linked = url
            .and_then(|u| u.split_once('#'))
            .is_some_and(|(page, anchor)| {
                page.ends_with(&format!("/{OPERATIONS}")) && anchors.contains(anchor)
            });
        if !linked {
            unlinked.push(format!("{alert}: {url:?}"));
        }
    }
    assert!(alerts > 0, "no alert rule in {RULES}");
    assert!(
        unlinked.is_empty(),
        "alerts whose runbook_url is not {OPERATIONS}#<a heading's anchor>:\n  {}\nanchors: {anchors:?}",
        unlinked.join("\n  ")
    );
}

/// Every `relay_edge_` name in `texts` (the strings of `file`) is a family
/// relay-edge registers, or a `_bucket`, `_sum` or `_count` series of one
/// of its histograms.
fn assert_only_exported_metrics(file: &str, texts: &[String]) {
    let metrics = Metrics::new();
    // A per-upstream family has no series, and so no exposition, until an
    // upstream exists: resolve one, so that every family shows.
    let _upstream = metrics.for_upstream("contrib-probe");
    let families: BTreeSet<String> = metrics.names().iter().map(ToString::to_string).collect();
    let histograms = histograms(&metrics);

    let token = Regex::new(r"relay_edge_[a-z0-9_]+").expect("a valid regex");
    let named: BTreeSet<&str> = texts
        .iter()
        .flat_map(|t| token.find_iter(t).map(|m| m.as_str()))
        .collect();
    assert!(!named.is_empty(), "no relay_edge_ metric found in {file}");
    let missing: Vec<&str> = named
        .into_iter()
        .filter(|name| !families.contains(family(name, &histograms)))
        .collect();
    assert!(
        missing.is_empty(),
        "{file} names metrics relay-edge does not export:\n  {}\nexported: {families:?}\nhistograms: {histograms:?}",
        missing.join("\n  ")
    );
}

/// The histogram families, from the `# TYPE` lines of the exposition.
fn histograms(metrics: &Metrics) -> BTreeSet<String> {
    String::from_utf8_lossy(&metrics.render())
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" histogram"))
        .map(str::to_owned)
        .collect()
}

/// The family a series name belongs to: a histogram's `_bucket`, `_sum` and
/// `_count` series are its own; any other name is its own family.
fn family<'a>(name: &'a str, histograms: &BTreeSet<String>) -> &'a str {
    ["_bucket", "_sum", "_count"]
        .into_iter()
        .filter_map(|suffix| name.strip_suffix(suffix))
        .find(|base| histograms.contains(*base))
        .unwrap_or(name)
}

fn yaml_strings(v: &serde_yaml::Value, out: &mut Vec<String>) {
    match v {
        serde_yaml::Value::String(s) => out.push(s.clone()),
        serde_yaml::Value::Sequence(items) => items.iter().for_each(|i| yaml_strings(i, out)),
        serde_yaml::Value::Mapping(map) => map.iter().for_each(|(k, v)| {
            yaml_strings(k, out);
            yaml_strings(v, out);
        }),
        serde_yaml::Value::Tagged(t) => yaml_strings(&t.value, out),
        serde_yaml::Value::Null | serde_yaml::Value::Bool(_) | serde_yaml::Value::Number(_) => {}
    }
}

fn json_strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|i| json_strings(i, out)),
        serde_json::Value::Object(map) => map.iter().for_each(|(k, v)| {
            out.push(k.clone());
            json_strings(v, out);
        }),
        serde_json::Value::Null | serde_json::Value::Bool(_) | serde_json::Value::Number(_) => {}
    }
}

/// The anchors GitHub gives the ATX headings (`#` to `######`) of a
/// Markdown file, outside fenced code: the text lowercased, each space a
/// `-`, punctuation other than `-` and `_` dropped; a repeated anchor gets
/// `-1`, `-2`, ...
fn heading_anchors(markdown: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    let mut fence: Option<&str> = None;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        if let Some(open) = fence {
            if trimmed.starts_with(open) {
                fence = None;
            }
            continue;
        }
        if let Some(open) = ["```", "~~~"].into_iter().find(|f| trimmed.starts_with(f)) {
            fence = Some(open);
            continue;
        }
        let level = trimmed.bytes().take_while(|&b| b == b'#').count();
        let Some(text) = trimmed.get(level..) else {
            continue;
        };
        if !(1..=6).contains(&level) || !(text.is_empty() || text.starts_with([' ', '\t'])) {
            continue;
        }
        // A closing run of `#` (after a space) is not part of the heading.
        let text = text.trim();
        let text = match text.trim_end_matches('#') {
            t if t.is_empty() || t.ends_with([' ', '\t']) => t.trim_end(),
            _ => text,
        };
        let slug = slug(text);
        let mut anchor = slug.clone();
        let mut n = 0;
        while anchors.contains(&anchor) {
            n += 1;
            anchor = format!("{slug}-{n}");
        }
        anchors.insert(anchor);
    }
    anchors
}

fn slug(heading: &str) -> String {
    heading
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .flat_map(char::to_lowercase)
        .collect()
}

#[test]
fn headings_get_github_anchors() {
    let doc = "# Operations\n\n## High error rate\n\n```\n## not a heading\n```\n\n\
               ### `relay_edge_x` > 5% (Redis) ###\n## High error rate\n#hashtag\n";
    let anchors: Vec<String> = heading_anchors(doc).into_iter().collect();
    assert_eq!(
        anchors,
        [
            "high-error-rate",
            "high-error-rate-1",
            "operations",
            "relay_edge_x--5-redis"
        ]
    );
}

/// The alert rules fire where the dashboard's indicators turn red: one
/// table of thresholds ([`relay_edge::indicators::INDICATORS`]).
#[test]
fn the_alerts_fire_at_the_indicators_thresholds() {
    use relay_edge::indicators::{BadWhen, INDICATORS};
    let rules: serde_yaml::Value = serde_yaml::from_str(&read(RULES)).expect("rules are YAML");
    let alerts: Vec<(String, String)> = rules["groups"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .filter_map(|r| {
            Some((
                r["alert"].as_str()?.to_string(),
                r["expr"].as_str()?.to_string(),
            ))
        })
        .collect();
    let alert_of = [
        ("error_rate", "RelayEdgeHighErrorRate"),
        ("cache_hit_rate", "RelayEdgeLowCacheHitRate"),
        ("pool_utilisation", "RelayEdgePoolExhaustion"),
        ("mean_connect_time", "RelayEdgeSlowUpstreamConnects"),
        ("healthy_ratio", "RelayEdgeUnhealthyUpstreams"),
        ("session_survival", "RelayEdgeSessionsLost"),
        ("recovery_success", "RelayEdgeRedisRecoveryFailing"),
        ("affinity_success", "RelayEdgeInconsistentSessions"),
    ];
    for indicator in &INDICATORS {
        let (_, alert) = alert_of
            .iter()
            .find(|(name, _)| *name == indicator.name)
            .unwrap_or_else(|| panic!("no alert for indicator {}", indicator.name));
        let (_, expr) = alerts
            .iter()
            .find(|(a, _)| a == alert)
            .unwrap_or_else(|| panic!("{RULES} has no alert {alert}"));
        let op = match indicator.bad_when {
            BadWhen::Above => '>',
            BadWhen::Below => '<',
        };
        let want = format!("{op} {}", indicator.threshold);
        assert!(
            expr.trim_end().ends_with(&want),
            "{alert} must fire at {want} ({}), as the dashboard does: {expr}",
            indicator.name
        );
    }
}

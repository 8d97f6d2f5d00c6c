//! The registry's promises: every family exported before its first event.
use super::*;
use crate::outcome::{AbandonReason, PurgeReason, StreamOutcome};

/// Every labelled family whose label values are known when an upstream
/// is configured has its series from the start, at 0, so that alert
/// rules and `rate()` see one before the first event.
#[test]
fn every_family_is_exported_before_its_first_event() {
    let m = Metrics::new();
    let _upstream = m.for_upstream("relay-a");
    let _capped = m.for_capacity("relay-a");
    let text = String::from_utf8(m.render()).expect("text");
    let missing: Vec<&String> = m
        .names()
        .iter()
        // Listeners' series exist only for TLS listeners, from start.
        .filter(|name| *name != "relay_edge_tls_certificate_expiry_seconds")
        .filter(|name| !text.lines().any(|l| l.starts_with(name.as_str())))
        .collect();
    assert!(missing.is_empty(), "no series yet: {missing:?}");
    for reason in AbandonReason::ALL {
        let series = format!(
            "relay_edge_attempts_abandoned_total{{reason=\"{}\",upstream=\"relay-a\"}} 0",
            reason.label()
        );
        assert!(text.contains(&series), "{series}");
    }
    for outcome in StreamOutcome::ALL {
        let series = format!(
            "relay_edge_streams_total{{outcome=\"{}\",upstream=\"relay-a\"}} 0",
            outcome.label()
        );
        assert!(text.contains(&series), "{series}");
    }
    for reason in PurgeReason::ALL {
        let series = format!(
            "relay_edge_affinity_purged_total{{reason=\"{}\"}} 0",
            reason.label()
        );
        assert!(text.contains(&series), "{series}");
    }
    assert!(text.contains("relay_edge_requests_total{code=\"503\",upstream=\"none\"} 0"));
}

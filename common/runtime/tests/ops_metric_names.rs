//! The alert rules and the Grafana dashboard of the Helm chart only name metrics that
//! `slotq_runtime::metrics` registers, so renaming a metric cannot silently blind an alert.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::collections::BTreeSet;

const METRICS_RS: &str = include_str!("../src/metrics.rs");
const ALERTS: &str = include_str!("../../../helm/slotq/files/alerts.yaml");
const DASHBOARD: &str = include_str!("../../../helm/slotq/files/dashboard.json");

/// Every `slotq_…` identifier in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("slotq_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// The names registered in metrics.rs: the string literals starting with `slotq_`.
fn registered() -> BTreeSet<String> {
    METRICS_RS
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("slotq_"))
        .map(str::to_owned)
        .collect()
}

/// A name as queried, resolved to its family (histograms are queried through `_bucket`,
/// `_sum` and `_count` series).
fn family<'a>(name: &'a str, registered: &BTreeSet<String>) -> Option<&'a str> {
    if registered.contains(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|suffix| name.strip_suffix(suffix))
        .find(|base| registered.contains(*base))
}

#[test]
fn the_registry_is_what_the_scan_sees() {
    // The scan must find the metrics the queue alerts rely on, or the test below proves nothing.
    let registered = registered();
    for name in [
        "slotq_queue_depth",
        "slotq_booking_decisions_total",
        "slotq_decision_latency_seconds",
    ] {
        assert!(registered.contains(name), "{name} not found in metrics.rs");
    }
    let m = slotq_runtime::metrics::Metrics::new();
    m.decisions.with_label_values(&["held", ""]).inc();
    let text = m.render();
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split_whitespace().nth(2).unwrap();
        assert!(
            registered.contains(name),
            "{name} is rendered but not scanned"
        );
    }
}

#[test]
fn alerts_and_dashboard_only_name_registered_metrics() {
    let registered = registered();
    for (file, text) in [("alerts.yaml", ALERTS), ("dashboard.json", DASHBOARD)] {
        let used = metric_names(text);
        assert!(!used.is_empty(), "{file} names no metric");
        let unknown: Vec<_> = used
            .iter()
            .filter(|n| family(n, &registered).is_none())
            .collect();
        assert!(
            unknown.is_empty(),
            "{file} names unknown metrics: {unknown:?}"
        );
    }
}

#[test]
fn every_required_alert_exists() {
    for alert in [
        "QueueDepthHigh",
        "QueueStalled",
        "DecisionLatencyP99High",
        "HoldExpiryLagging",
        "DeadJobs",
        "OutboxLagHigh",
        "WebhookDeadLetters",
    ] {
        assert!(
            ALERTS.contains(&format!("- alert: {alert}\n")),
            "{alert} missing"
        );
    }
}

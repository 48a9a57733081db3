//! A few-second run of every scenario against slotq started in-process (workers and scheduler
//! included), so CI keeps the load generator working. The benchmark itself is
//! `loadtest/bench.sh` against release binaries; its numbers are not asserted here.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::collections::HashMap;

use serde_json::Value;
use slotq_security::auth::Role;
use slotq_testkit::{Options, spawn};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_run_of_every_scenario_keeps_every_invariant_and_writes_the_json() {
    let app = spawn(Options {
        env: vec![
            ("HOLD_TTL_SECS", "2".into()),
            ("EXPIRY_INTERVAL_MS", "200".into()),
        ],
        ..Options::default()
    })
    .await;
    let token = app.token(Role::Service, "loadtest", None, None);
    let json = std::env::temp_dir().join(format!(
        "slotq-loadtest-smoke-{}.json",
        uuid::Uuid::new_v4().simple()
    ));
    let args: Vec<String> = [
        "all",
        "--url",
        &app.base,
        "--database-url",
        &app.env["DATABASE_URL"],
        "--token",
        &token,
        "--payment-secret",
        &app.secret,
        "--duration",
        "1",
        "--concurrency",
        "4",
        "--rate",
        "40",
        "--storm",
        "300",
        "--storm-concurrency",
        "32",
        "--practitioners",
        "8",
        "--search-practitioners",
        "100",
        "--availability-requests",
        "5",
        "--mixed-practitioners",
        "10",
        "--max-expiry-wait",
        "10",
        "--json",
        json.to_str().unwrap(),
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();

    let status = slotq_loadtest::main_with(&args, &HashMap::new()).await;
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    assert_eq!(status, 0, "invariants failed: {:#}", report["checks"]);

    let storm = &report["storm"];
    assert_eq!(storm["requests"], 300);
    assert_eq!(storm["winners"], 1, "{storm}");
    assert_eq!(storm["server_errors"], 0, "{storm}");
    let tp = &report["throughput"][0];
    assert!(tp["decided"].as_u64().unwrap() > 0, "{tp}");
    assert_eq!(tp["decided"], tp["accepted"], "{tp}");
    assert!(tp["ratio"].as_f64().unwrap() > 0.0, "{tp}");
    // One single-row baseline before the round and a closing one after it; the bracketed
    // ratio divides by their mean.
    let baselines = report["baseline"].as_array().unwrap();
    assert_eq!(baselines.len(), 2, "{baselines:?}");
    let (before, after) = (
        baselines[0]["per_sec"].as_f64().unwrap(),
        baselines[1]["per_sec"].as_f64().unwrap(),
    );
    assert_eq!(tp["baseline_after_per_sec"].as_f64().unwrap(), after);
    let bracketed = tp["decided_per_sec"].as_f64().unwrap() / ((before + after) / 2.0);
    assert!(
        (tp["ratio_bracketed"].as_f64().unwrap() - bracketed).abs() < 1e-9,
        "{tp}"
    );
    assert!(report["baseline"][0]["committed"].as_u64().unwrap() > 0);
    assert!(report["full_baseline"][0]["committed"].as_u64().unwrap() > 0);
    let latency = &report["latency"];
    assert_eq!(latency["decided"], latency["accepted"], "{latency}");
    assert!(latency["submit_to_decision"]["count"].as_u64().unwrap() > 0);
    let mixed = &report["mixed"];
    assert_eq!(mixed["expiry_checked"], true, "{mixed}");
    assert!(mixed["held"].as_u64().unwrap() > 0, "{mixed}");
    let av = &report["availability"];
    assert_eq!(av["practitioners"], 100);
    assert_eq!(av["search"]["statuses"]["200"], 6, "{av}");
    assert!(
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["ok"] == true)
    );
    app.stop().await;
}

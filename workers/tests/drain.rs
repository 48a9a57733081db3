//! Graceful shutdown of the worker pool: on SIGTERM a `slotq-workers` process finishes the
//! jobs its handlers hold (their batch commits) and hands the jobs it fetched but had not
//! started back to the queue, so nothing is lost and nothing waits for heartbeat recovery.
//! Its logs carry the ingress request id of every job (`LOG_FORMAT=json`).
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::{
    collections::HashMap,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{Value, json};
use slotq_testkit::{Options, TestApp, id_of, slot, spawn};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use uuid::Uuid;

/// A `slotq-workers` process whose stderr (JSON logs) is collected line by line.
struct WorkerProcess {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
}

fn worker_process(app: &TestApp, extra: &[(&str, &str)]) -> WorkerProcess {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_slotq-workers"));
    cmd.envs(&app.env)
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn,slotq_workers=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start slotq-workers");
    let logs = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().expect("piped stderr");
    let sink = logs.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    WorkerProcess { child, logs }
}

fn sigterm(child: &Child) {
    let pid = child.id().expect("the process is running");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM {pid} failed");
}

/// `(request id, request_id span field)` of every "hold decided" log line.
fn decided_in_logs(logs: &[String]) -> Vec<(Uuid, String)> {
    logs.iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "hold decided")
        .map(|v| {
            let span = &v["span"];
            (
                span["request"].as_str().unwrap().parse().unwrap(),
                span["request_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// slotq with ingress only: jobs wait in the queue until a test starts a worker.
async fn queue_only() -> TestApp {
    spawn(Options {
        workers: false,
        scheduler: false,
        ..Options::default()
    })
    .await
}

async fn decided(app: &TestApp) -> usize {
    app.count("SELECT count(*) FROM booking_requests").await as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_mid_batch_finishes_or_hands_back_every_claimed_job() {
    let app = queue_only().await;
    let fx = app.fixture().await;
    let mut patients = vec![fx.patient_id];
    for _ in 0..5 {
        patients.push(app.patient().await);
    }
    // 90 requests for 30 slots, each with its own x-request-id, which must reach the worker's
    // logs through the job.
    // One after the other, so each is admitted alone and is a job of its own (concurrent
    // submissions share jobs): the handler counts below are counts of requests.
    let mut submissions = Vec::new();
    for i in 0..90u32 {
        let body = json!({
            "patient_id": patients[(i % 6) as usize],
            "practitioner_id": fx.practitioner_id,
            "slot_start": slot(3, (i % 30) * 30).to_rfc3339(),
        });
        let res = app
            .http
            .post(format!("{}/v1/booking-requests", app.base))
            .header("x-request-id", format!("drain-trace-{i}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let echoed = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        let status = res.status().as_u16();
        submissions.push((status, echoed, res.json::<Value>().await.unwrap()));
    }
    let mut trace_of: HashMap<Uuid, String> = HashMap::new();
    for (status, echoed, body) in &submissions {
        assert_eq!(*status, 202, "{body}");
        trace_of.insert(id_of(body), echoed.clone());
    }
    assert_eq!(trace_of.len(), 90);

    // 30 handlers, each job waiting 3 s in a batch that lingers: the worker fetches all 90
    // jobs, runs 30 and buffers 60 when SIGTERM arrives.
    let mut first = worker_process(
        &app,
        &[
            ("BATCH_MAX", "1000"),
            ("WORKER_CONCURRENCY", "30"),
            ("BATCH_LINGER_MS", "3000"),
            ("BATCH_COMMITTERS", "1"),
        ],
    );
    let d = app.wait_for_claimed(90, Duration::from_secs(20)).await;
    assert_eq!(d.inflight, 90, "one job per request: {d:?}");
    // Claimed is not yet started: give the 30 handlers time to hand their jobs to the batch
    // (which lingers 3 s), or SIGTERM may find none started and hand all 90 back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(decided(&app).await, 0, "the batch is still lingering");
    sigterm(&first.child);
    let status = tokio::time::timeout(Duration::from_secs(20), first.child.wait())
        .await
        .expect("the worker drains within 20 s")
        .unwrap();
    assert!(status.success(), "a drained worker exits 0: {status:?}");

    // What the handlers held was committed; the rest went back to the ready list at once
    // (not left in the dead worker's in-flight set for heartbeat recovery).
    let committed = decided(&app).await;
    let d = slotq_redis::queue::depth(&mut app.redis.clone(), &app.config.queue())
        .await
        .unwrap();
    assert_eq!(committed, 30, "the running batch finished before exit");
    assert_eq!(
        d.inflight, 0,
        "nothing left claimed by the stopped worker: {d:?}"
    );
    assert_eq!(
        d.ready as usize + committed,
        90,
        "every job not decided is ready again: {d:?}"
    );

    // The request id of each decided job is in the worker's JSON logs.
    let logged = decided_in_logs(&first.logs.lock().unwrap());
    assert_eq!(
        logged.len(),
        30,
        "one 'hold decided' line per committed job"
    );
    for (request, trace) in &logged {
        assert_eq!(Some(trace), trace_of.get(request), "request {request}");
    }

    // A second worker decides the rest; every accepted request ends decided.
    let second = worker_process(&app, &[]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while decided(&app).await < 90 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of 90 accepted requests decided",
            decided(&app).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in trace_of.keys() {
        let (_, v) = app.get(&format!("/v1/booking-requests/{id}")).await;
        assert!(v["status"] == "held" || v["status"] == "rejected", "{v}");
    }
    assert_eq!(
        app.count("SELECT count(*) FROM bookings").await,
        30,
        "exactly one hold per slot"
    );
    let logged = decided_in_logs(&second.logs.lock().unwrap());
    assert_eq!(
        logged.len(),
        60,
        "the second worker decided the handed-back jobs"
    );
    for (request, trace) in &logged {
        assert_eq!(Some(trace), trace_of.get(request), "request {request}");
    }
    drop(second);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_export_queue_depth_on_their_admin_port() {
    let app = queue_only().await;
    let fx = app.fixture().await;
    for i in 0..3u32 {
        let (s, v) = app
            .submit(fx.patient_id, fx.practitioner_id, slot(4, i * 30))
            .await;
        assert_eq!(s, 202, "{v}");
    }
    // The pool runs in-process; its batch lingers, so the jobs stay in flight while /metrics
    // is read.
    let mut env = app.env.clone();
    env.insert("BATCH_LINGER_MS".into(), "10000".into());
    env.insert("BATCH_MAX".into(), "1000".into());
    let config =
        slotq_runtime::config::Config::from_vars(slotq_runtime::config::Role::Workers, &env)
            .unwrap();
    let (trigger, stop) = slotq_runtime::shutdown::channel();
    let (bound, admin) = tokio::sync::oneshot::channel();
    let pool = tokio::spawn(slotq_workers::run(config, stop, move |addr| {
        let _ = bound.send(addr);
    }));
    let admin = admin.await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let body = match app.http.get(format!("http://{admin}/metrics")).send().await {
            Ok(res) => res.text().await.unwrap(),
            Err(_) => String::new(),
        };
        if body.contains("slotq_queue_depth{state=\"inflight\"} 3") {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no in-flight depth of 3 on the workers' /metrics:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        body.contains("slotq_queue_depth{state=\"ready\"} 0"),
        "{body}"
    );
    assert!(
        body.contains("slotq_queue_depth{state=\"dead\"} 0"),
        "{body}"
    );
    trigger.fire();
    pool.await.unwrap().unwrap();
    app.stop().await;
}

#[test]
fn help_prints_usage_without_any_configuration() {
    let (code, text) = slotq_testkit::run_bare(env!("CARGO_BIN_EXE_slotq-workers"), "--help");
    assert_eq!(code, Some(0));
    assert!(
        text.starts_with("usage: slotq-workers [run|migrate]"),
        "{text}"
    );
}

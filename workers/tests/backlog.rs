//! The worker pool survives what stopped it before:
//! - a backlog of more than 8,000 queued jobs (apalis-redis 1.0 promotes every due scheduled
//!   job with one Lua `unpack`, which fails above ~8,000 values and ended the worker; ingress
//!   therefore queues straight onto the ready list, `slotq_redis::queue::HoldQueue`);
//! - a failed fetch (here: the worker's registration vanished, as after a Redis restart
//!   without persistence), after which apalis ends the worker: the process starts another.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::{process::Stdio, time::Duration};

use chrono::Utc;
use redis::AsyncCommands;
use slotq_redis::queue::{HoldJob, HoldQueue, HoldTask};
use slotq_testkit::{Options, TestApp, id_of, slot, spawn};
use tokio::process::{Child, Command};
use uuid::Uuid;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn worker_process(app: &TestApp, admin_port: u16, extra: &[(&str, &str)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_slotq-workers"))
        .envs(&app.env)
        .env("ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
        .env("RUST_LOG", "warn")
        .envs(extra.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start slotq-workers")
}

/// A job for a patient that does not exist (cheap to decide: rejected `unknown_patient`).
fn unknown_patient_job(practitioner_id: Uuid, i: u32) -> HoldJob {
    HoldJob {
        request_id: Uuid::now_v7(),
        patient_id: Uuid::now_v7(),
        practitioner_id,
        slot_start: slot(3, (i % 16) * 30 + 9 * 60),
        submitted_at: Utc::now(),
        idempotency_key: None,
        reschedule: None,
        trace_id: None,
        actor: None,
        actor_role: None,
    }
}

async fn wait_count(app: &TestApp, sql: &'static str, want: i64, timeout: Duration) -> i64 {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = app.count(sql).await;
        if n >= want || tokio::time::Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_of_nine_thousand_jobs_is_drained_by_a_worker_that_stays_up() {
    let app = spawn(Options {
        workers: false,
        ..Options::default()
    })
    .await;
    let fx = app.fixture().await;
    // One real request through the API, then 9,000 jobs of patients that do not exist (cheap
    // to decide: rejected `unknown_patient`), all queued before any worker runs.
    let (status, body) = app
        .submit(fx.patient_id, fx.practitioner_id, slot(2, 9 * 60))
        .await;
    assert_eq!(status, 202, "{body}");
    let real = id_of(&body);
    let queue = HoldQueue::new(app.redis.clone(), &app.config.queue());
    let jobs: Vec<HoldJob> = (0..9000u32)
        .map(|i| unknown_patient_job(fx.practitioner_id, i))
        .collect();
    for chunk in jobs.chunks(500) {
        let pushes = chunk.iter().map(|j| queue.push(j.clone()));
        for added in futures::future::join_all(pushes).await {
            assert!(added.unwrap(), "each job is queued once");
        }
    }
    // Pushing a request's job again changes nothing (the task id is the request id).
    assert!(!queue.push(jobs[0].clone()).await.unwrap());
    let mut conn = app.redis.clone();
    let depth = slotq_redis::queue::depth(&mut conn, &app.config.queue())
        .await
        .unwrap();
    assert_eq!(depth.ready, 9001, "{depth:?}");
    assert_eq!(depth.pending_requests, 9001, "{depth:?}");
    // A counter that drifted below the truth (say, decisions announced twice) is read with a
    // floor of one request per unfinished job.
    let pending_key = slotq_redis::keys::Keys::new(&app.config.redis_namespace).pending_requests();
    let _: () = redis::cmd("SET")
        .arg(&pending_key)
        .arg(-500)
        .query_async(&mut conn)
        .await
        .unwrap();
    let depth = slotq_redis::queue::depth(&mut conn, &app.config.queue())
        .await
        .unwrap();
    assert_eq!(depth.pending_requests, 9001, "{depth:?}");
    // The age of the oldest ready job comes from the head of the ready list (its ULID).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let depth = slotq_redis::queue::depth(&mut conn, &app.config.queue())
        .await
        .unwrap();
    assert!((2..30).contains(&depth.oldest_ready_age_secs), "{depth:?}");

    let mut worker = worker_process(&app, free_port(), &[]);
    let decided = wait_count(
        &app,
        "SELECT count(*) FROM booking_requests",
        9001,
        Duration::from_secs(180),
    )
    .await;
    assert_eq!(decided, 9001, "every queued job is decided");
    assert!(
        worker.try_wait().unwrap().is_none(),
        "the worker process is still running"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM booking_requests WHERE reason = 'unknown_patient'")
            .await,
        9000
    );
    let v = app.decision(real, Duration::from_secs(10)).await;
    assert_eq!(v["status"], "held", "{v}");
    let mut left = 0;
    for _ in 0..50 {
        let d = slotq_redis::queue::depth(&mut conn, &app.config.queue())
            .await
            .unwrap();
        left = d.ready + d.scheduled + d.inflight + d.dead;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "the queue is empty and nothing is dead");
    // Once no job is left, the counter is the truth again: 0, whatever it drifted to.
    let d = slotq_redis::queue::depth(&mut conn, &app.config.queue())
        .await
        .unwrap();
    assert_eq!(d.pending_requests, 0, "{d:?}");
    let stored: i64 = redis::cmd("GET")
        .arg(&pending_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    let _ = worker.kill().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_that_apalis_gives_up_on_is_replaced_and_the_queue_keeps_moving() {
    let app = spawn(Options {
        workers: false,
        ..Options::default()
    })
    .await;
    let fx = app.fixture().await;
    let port = free_port();
    let mut worker = worker_process(&app, port, &[]);
    let (status, body) = app
        .submit(fx.patient_id, fx.practitioner_id, slot(2, 9 * 60))
        .await;
    assert_eq!(status, 202, "{body}");
    let first = app.decision(id_of(&body), Duration::from_secs(20)).await;
    assert_eq!(first["status"], "held", "{first}");

    // The worker's registration disappears: its next fetch and heartbeat fail and apalis
    // ends that worker.
    let workers_key = format!("{}:workers", app.config.queue().holds_queue());
    let mut conn = app.redis.clone();
    let removed: i64 = conn.del(&workers_key).await.unwrap();
    assert_eq!(removed, 1, "the worker was registered");

    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
        if text.contains("slotq_worker_restarts_total 1") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no worker restart counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The replacement decides new requests.
    let other = app.patient().await;
    let (status, body) = app
        .submit(other, fx.practitioner_id, slot(2, 10 * 60))
        .await;
    assert_eq!(status, 202, "{body}");
    let second = app.decision(id_of(&body), Duration::from_secs(20)).await;
    assert_eq!(second["status"], "held", "{second}");
    assert!(
        worker.try_wait().unwrap().is_none(),
        "the process stayed up"
    );
    let registered: i64 = conn.zcard(&workers_key).await.unwrap();
    assert_eq!(registered, 1, "one live worker registered again");
    let _ = worker.kill().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn more_than_eight_thousand_due_retries_in_apalis_scheduled_set_are_drained_too() {
    use apalis::prelude::TaskSink;
    let app = spawn(Options {
        workers: false,
        ..Options::default()
    })
    .await;
    let fx = app.fixture().await;
    // apalis' own push puts jobs in the scheduled ZSET, as its retry scheduling does; with
    // more than ~8,000 due there, apalis' fetch fails on its own (see `queue::promote_due`).
    let mut storage = slotq_redis::queue::hold_storage(app.redis.clone(), &app.config.queue());
    for i in 0..8500u32 {
        storage
            .push(HoldTask {
                holds: vec![unknown_patient_job(fx.practitioner_id, i)],
            })
            .await
            .unwrap();
    }
    let mut conn = app.redis.clone();
    let scheduled: i64 = conn
        .zcard(format!("{}:scheduled", app.config.queue().holds_queue()))
        .await
        .unwrap();
    assert_eq!(scheduled, 8500);
    let mut worker = worker_process(&app, free_port(), &[]);
    let decided = wait_count(
        &app,
        "SELECT count(*) FROM booking_requests",
        8500,
        Duration::from_secs(180),
    )
    .await;
    assert_eq!(decided, 8500, "every scheduled job is decided");
    assert!(worker.try_wait().unwrap().is_none(), "the worker stayed up");
    let _ = worker.kill().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_worker_fetches_new_jobs_without_waiting_for_its_heartbeat() {
    // apalis' own interval poller stops waking an idle worker after its first empty fetch;
    // the next wake-up was the heartbeat. With a 30 s heartbeat, a job pushed to an idle
    // worker must still be decided in well under that (the bound leaves room for a loaded
    // CI machine).
    let app = spawn(Options {
        workers: false,
        ..Options::default()
    })
    .await;
    let fx = app.fixture().await;
    let mut worker = worker_process(&app, free_port(), &[("WORKER_HEARTBEAT_MS", "30000")]);
    // Let it register, fetch nothing and go idle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (i, patient) in [fx.patient_id, app.patient().await].into_iter().enumerate() {
        let (status, body) = app
            .submit(patient, fx.practitioner_id, slot(2, 9 * 60 + 30 * i as u32))
            .await;
        assert_eq!(status, 202, "{body}");
        let t0 = std::time::Instant::now();
        let v = app.decision(id_of(&body), Duration::from_secs(25)).await;
        assert_eq!(v["status"], "held", "{v}");
        assert!(
            t0.elapsed() < Duration::from_secs(8),
            "decided after {:?}",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let _ = worker.kill().await;
    app.stop().await;
}

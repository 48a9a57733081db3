//! Accepted means decided: a worker process killed with SIGKILL while it holds claimed jobs
//! loses none of them; another worker recovers them after the heartbeat timeout.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::{process::Stdio, time::Duration};

use futures::future::join_all;
use slotq_testkit::{Options, id_of, slot, spawn};
use tokio::process::{Child, Command};

fn worker_process(
    env: &std::collections::HashMap<String, String>,
    extra: &[(&str, &str)],
) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_slotq-workers"));
    cmd.envs(env)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.spawn().expect("start slotq-workers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_batch_loses_no_accepted_request() {
    let app = spawn(Options {
        workers: false,
        ..Options::default()
    })
    .await;
    let fx = app.fixture().await;
    let mut patients = vec![fx.patient_id];
    for _ in 0..9 {
        patients.push(app.patient().await);
    }
    // 120 requests for 40 slots: three contenders (different patients) per slot.
    let submissions = join_all((0..120u32).map(|i| {
        app.submit(
            patients[(i % 7) as usize],
            fx.practitioner_id,
            slot(2, (i % 40) * 30),
        )
    }))
    .await;
    let accepted: Vec<_> = submissions
        .iter()
        .filter(|(s, _)| *s == 202)
        .map(|(_, b)| id_of(b))
        .collect();
    assert_eq!(
        accepted.len(),
        120,
        "nothing is decided yet, so the pre-check lets all in"
    );

    // The doomed worker claims jobs but lingers 20 s before committing: it dies holding them.
    let mut doomed = worker_process(
        &app.env,
        &[
            ("BATCH_MAX", "1000"),
            ("WORKER_CONCURRENCY", "500"),
            ("BATCH_LINGER_MS", "20000"),
        ],
    );
    app.wait_for_claimed(accepted.len() as u64, Duration::from_secs(20))
        .await;
    doomed.start_kill().expect("SIGKILL");
    let _ = doomed.wait().await;
    assert_eq!(
        app.count("SELECT count(*) FROM booking_requests").await,
        0,
        "nothing was decided before the kill"
    );

    // A fresh worker recovers the orphaned jobs once the dead one's heartbeat is stale.
    let _rescuer = worker_process(&app.env, &[]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    loop {
        let decided = app.count("SELECT count(*) FROM booking_requests").await as usize;
        if decided == accepted.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {decided} of {} accepted requests decided",
            accepted.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for id in &accepted {
        let (_, v) = app.get(&format!("/v1/booking-requests/{id}")).await;
        assert!(v["status"] == "held" || v["status"] == "rejected", "{v}");
    }
    let double: i64 = app
        .count(
            "SELECT count(*) FROM (SELECT 1 FROM bookings WHERE status IN ('held','confirmed')
             GROUP BY practitioner_id, slot_start HAVING count(*) > 1) d",
        )
        .await;
    assert_eq!(double, 0, "no slot is held twice");
    assert_eq!(
        app.count("SELECT count(*) FROM bookings").await,
        40,
        "every slot has exactly one hold"
    );
    app.stop().await;
}

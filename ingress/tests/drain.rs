//! Graceful shutdown of a real `slotq-ingress` process: on SIGTERM it turns not ready
//! (`/readyz` 503) while still serving for `SHUTDOWN_DELAY_MS`, so a load balancer can take it
//! out of rotation; then it closes its listener, lets in-flight requests finish (a long poll
//! returns at once) and exits 0.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::{
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use slotq_testkit::{Options, id_of, slot, spawn};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_makes_ingress_unready_then_drains_and_exits() {
    let app = spawn(Options {
        workers: false,
        scheduler: false,
        ..Options::default()
    })
    .await;
    let fx = app.fixture().await;
    // Queued for good: no worker runs, so a long poll on it waits its whole time.
    let (s, v) = app
        .submit(fx.patient_id, fx.practitioner_id, slot(5, 60))
        .await;
    assert_eq!(s, 202, "{v}");
    let request = id_of(&v);

    let mut child = Command::new(env!("CARGO_BIN_EXE_slotq-ingress"))
        .envs(&app.env)
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("ADMIN_ADDR", "127.0.0.1:0")
        .env("SHUTDOWN_DELAY_MS", "1500")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info,sqlx=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start slotq-ingress");
    let logs = Arc::new(Mutex::new(Vec::<Value>::new()));
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel::<String>();
    {
        let logs = logs.clone();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            let mut addr_tx = Some(addr_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if v["message"] == "slotq-ingress listening"
                    && let Some(tx) = addr_tx.take()
                {
                    let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_owned());
                }
                logs.lock().unwrap().push(v);
            }
        });
    }
    let addr = tokio::time::timeout(Duration::from_secs(20), addr_rx)
        .await
        .expect("ingress starts within 20 s")
        .unwrap();
    let base = format!("http://{addr}");
    // New connections each time: what a kubelet probe or a load balancer health check does.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let ready = fresh.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);

    // A long poll in flight when SIGTERM arrives.
    let poll = {
        let (http, url) = (
            app.http.clone(),
            format!("{base}/v1/booking-requests/{request}?wait=25"),
        );
        tokio::spawn(async move {
            let res = http.get(url).send().await.unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = child.id().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let signalled = Instant::now();

    // Not ready, but still serving, during the delay.
    let mut unready = None;
    while signalled.elapsed() < Duration::from_millis(1200) {
        let res = fresh.get(format!("{base}/readyz")).send().await.unwrap();
        if res.status().as_u16() == 503 {
            unready = Some(res.text().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        unready.as_deref(),
        Some("shutting down"),
        "readyz turns 503 at once"
    );
    let alive = fresh.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(
        alive.status().as_u16(),
        200,
        "still serving during the delay"
    );
    assert!(
        !poll.is_finished(),
        "the long poll is still waiting during the delay"
    );

    // After the delay the in-flight long poll ends (still queued) and the process exits 0.
    let (status, view) = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the long poll ends soon after the listener closes")
        .unwrap();
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["status"], "queued");
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("ingress exits within 10 s of the delay")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(
        signalled.elapsed() >= Duration::from_millis(1500),
        "the listener stayed open for SHUTDOWN_DELAY_MS"
    );
    assert!(
        fresh.get(format!("{base}/healthz")).send().await.is_err(),
        "nothing listens after exit"
    );
    let messages: Vec<String> = logs
        .lock()
        .unwrap()
        .iter()
        .filter_map(|v| v["message"].as_str().map(str::to_owned))
        .collect();
    let draining = messages
        .iter()
        .position(|m| m.starts_with("shutting down: not ready"))
        .expect("the drain is logged");
    let closing = messages
        .iter()
        .position(|m| m == "shutting down: finishing in-flight requests")
        .expect("closing the listener is logged");
    let stopped = messages
        .iter()
        .position(|m| m.starts_with("slotq-ingress stopped"))
        .expect("the end of the drain is logged");
    assert!(draining < closing && closing < stopped, "{messages:?}");
    // A planned drain is no error: its 503 readiness answers are warnings.
    let errors: Vec<Value> = logs
        .lock()
        .unwrap()
        .iter()
        .filter(|v| v["level"] == "ERROR")
        .cloned()
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(
        logs.lock()
            .unwrap()
            .iter()
            .any(|v| v["level"] == "WARN" && v["message"] == "503 service unavailable"),
        "the unready answers are logged as warnings"
    );
    app.stop().await;
}

//! No personal data in logs: a full booking run through the real `slotq-ingress` binary, with
//! debug JSON logs, never writes a patient's name, e-mail or phone.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::{process::Stdio, time::Duration};

use serde_json::json;
use slotq_testkit::{Options, id_of, slot, spawn};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_run_logs_no_personal_data() {
    // Workers and scheduler in-process; the API through the real binary, whose logs we read.
    let app = spawn(Options::default()).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_slotq-ingress"))
        .envs(&app.env)
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("ADMIN_ADDR", "127.0.0.1:0")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "debug,sqlx=debug,h2=info,hyper=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel::<String>();
    let collector = tokio::spawn(async move {
        let mut all = String::new();
        let mut addr_tx = Some(addr_tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("slotq-ingress listening")
                && let Some(tx) = addr_tx.take()
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            {
                let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_owned());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let addr = tokio::time::timeout(Duration::from_secs(20), addr_rx)
        .await
        .unwrap()
        .unwrap();
    let base = format!("http://{addr}");
    let service = app.token(slotq_security::auth::Role::Service, "pii-test", None, None);
    let http = slotq_testkit::client(&service);
    let fx = app.fixture().await;

    let (name, email, phone) = (
        "Zebulon Quixote-Marvell",
        "zebulon.quixote@private.example",
        "+33 6 98 76 54 32",
    );
    let res = http
        .post(format!("{base}/v1/patients"))
        .json(&json!({"name": name, "email": email, "phone": phone, "country_code": "FR"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let patient = id_of(&res.json().await.unwrap());
    // Also a refused duplicate and a malformed one: error paths must not echo personal data.
    let dup = http
        .post(format!("{base}/v1/patients"))
        .json(&json!({"name": name, "email": email, "country_code": "FR"}))
        .send()
        .await
        .unwrap();
    assert_eq!(dup.status(), 409);
    let bad = http
        .post(format!("{base}/v1/patients"))
        .json(&json!({"name": name, "email": 12, "country_code": "FR"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    let r = http
        .post(format!("{base}/v1/booking-requests"))
        .json(&json!({"patient_id": patient, "practitioner_id": fx.practitioner_id, "slot_start": slot(3, 600).to_rfc3339()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let request = id_of(&r.json().await.unwrap());
    let decided: serde_json::Value = http
        .get(format!("{base}/v1/booking-requests/{request}?wait=10"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(decided["status"], "held");
    let got = http
        .get(format!("{base}/v1/patients/{patient}"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    let cancel = http
        .post(format!(
            "{base}/v1/bookings/{}/cancel",
            decided["booking_id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 200);

    child.start_kill().unwrap();
    let _ = child.wait().await;
    let logs = tokio::time::timeout(Duration::from_secs(5), collector)
        .await
        .unwrap()
        .unwrap();
    assert!(
        logs.lines().count() > 10,
        "debug logs were written:\n{logs}"
    );
    for secret in [
        name,
        "Zebulon",
        "Quixote",
        email,
        "private.example",
        phone,
        "98 76 54 32",
    ] {
        assert!(!logs.contains(secret), "{secret:?} appears in the logs");
    }
    app.stop().await;
}

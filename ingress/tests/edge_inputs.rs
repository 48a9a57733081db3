//! Inputs at the edges found by a black-box review: huge numbers, extreme timestamps, declared
//! lengths that never arrive, codes that only look valid, bodies of the wrong type. Each gets
//! a clean 4xx (or the documented 200) as problem+json; a panic never drops the connection.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::time::Duration;

use axum::{Router, routing::get};
use serde_json::{Value, json};
use slotq_common::auth::Role;
use slotq_testkit::{Options, TestApp, id_of, slot, spawn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// Status, content type and JSON body.
async fn send(req: reqwest::RequestBuilder) -> (u16, String, Value) {
    let res = req.send().await.expect("the server answers");
    let status = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ct, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_signatures_with_extreme_timestamps_are_401() {
    let app = spawn(Options {
        workers: false,
        scheduler: false,
        ..Options::default()
    })
    .await;
    let body = json!({"id": "evt_x", "type": "payment.succeeded", "booking_id": Uuid::now_v7()})
        .to_string();
    let secret = app.secret.clone();
    let signed_min = slotq_common::signature::sign(secret.as_bytes(), i64::MIN, body.as_bytes());
    let signed_max = slotq_common::signature::sign(secret.as_bytes(), i64::MAX, body.as_bytes());
    for header in [
        "t=-9223372036854775808,v1=00".to_owned(),
        "t=9223372036854775807,v1=00".to_owned(),
        // Correctly signed, so only the staleness check stands between them and the booking.
        signed_min,
        signed_max,
    ] {
        let (s, ct, v) = send(
            app.http
                .post(format!("{}/v1/payments/webhook", app.base))
                .header("content-type", "application/json")
                .header("payment-signature", &header)
                .body(body.clone()),
        )
        .await;
        assert_eq!(
            (s, ct.as_str()),
            (401, "application/problem+json"),
            "{header}: {v}"
        );
        assert!(v["detail"].as_str().unwrap().contains("window"), "{v}");
    }
    app.stop().await;
}

//! Every bad input gets the right 4xx as problem+json, and writes nothing.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

use serde_json::{Value, json};
use slotq_testkit::{Fixture, Options, TestApp, send, slot, spawn};
use uuid::Uuid;

async fn raw(
    app: &TestApp,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    let url = format!("{}{path}", app.base);
    let mut req = app.http.request(method.parse().unwrap(), url).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let (status, ct, body) = send(req).await;
    if status >= 400 {
        assert_eq!(
            ct, "application/problem+json",
            "{method} {path} → {status} {body}"
        );
        assert_eq!(body["status"], status, "{body}");
        assert!(
            body["type"].is_string() && body["title"].is_string() && body["detail"].is_string(),
            "{body}"
        );
    }
    (status, body)
}

async fn submit_raw(app: &TestApp, body: &str) -> (u16, Value) {
    raw(
        app,
        "POST",
        "/v1/booking-requests",
        Some("application/json"),
        body.as_bytes().to_vec(),
    )
    .await
}

fn booking(fx: &Fixture, slot_start: &str) -> String {
    json!({"patient_id": fx.patient_id, "practitioner_id": fx.practitioner_id, "slot_start": slot_start}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_booking_requests_get_the_right_4xx_and_nothing_is_written() {
    let app = spawn(Options::default()).await;
    let fx = app.fixture().await;
    let good_slot = slot(3, 600);

    assert_eq!(submit_raw(&app, "{not json").await.0, 400);
    assert_eq!(submit_raw(&app, "").await.0, 400);
    assert_eq!(
        submit_raw(
            &app,
            r#"{"patient_id": 5, "practitioner_id": true, "slot_start": []}"#
        )
        .await
        .0,
        422
    );
    // A body that does not fit names the field, in JSON's terms.
    let field_of = |b: &Value| {
        (
            b["errors"][0]["field"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            b["errors"][0]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    };
    let (s, b) = submit_raw(&app, r#"{"patient_id": "not-a-uuid"}"#).await;
    assert_eq!(s, 422);
    assert_eq!(field_of(&b), ("patient_id".into(), "invalid".into()), "{b}");
    let only_patient = json!({"patient_id": fx.patient_id});
    let (s, b) = submit_raw(&app, &only_patient.to_string()).await;
    assert_eq!(s, 422);
    assert_eq!(
        field_of(&b),
        ("practitioner_id".into(), "required".into()),
        "{b}"
    );
    let bad_uuid = json!({"patient_id": "1234", "practitioner_id": fx.practitioner_id, "slot_start": good_slot.to_rfc3339()});
    assert_eq!(submit_raw(&app, &bad_uuid.to_string()).await.0, 422);
    let extra = json!({"patient_id": fx.patient_id, "practitioner_id": fx.practitioner_id, "slot_start": good_slot.to_rfc3339(), "x": 1});
    let (s, b) = submit_raw(&app, &extra.to_string()).await;
    assert_eq!(s, 422);
    assert_eq!(field_of(&b), ("x".into(), "unknown_field".into()), "{b}");
    let (s, b) = submit_raw(&app, "[1]").await;
    assert_eq!(s, 422);
    assert_eq!(field_of(&b).0, "body", "{b}");
    let detail = b["errors"][0]["detail"].as_str().unwrap_or_default();
    assert!(
        !detail.contains("Body") && !detail.contains("struct"),
        "no server type names: {detail}"
    );
    let (s, b) = raw(
        &app,
        "PUT",
        &format!("/v1/practitioners/{}/hours", fx.practitioner_id),
        Some("application/json"),
        br#"{"weekly": [{"weekday": 1, "start": 9, "end": "10:00"}]}"#.to_vec(),
    )
    .await;
    assert_eq!(s, 422);
    assert_eq!(field_of(&b).0, "weekly[0].start", "{b}");
    assert_eq!(
        submit_raw(&app, &booking(&fx, "tomorrow at nine")).await.0,
        422
    );

    let (s, b) = submit_raw(
        &app,
        &booking(
            &fx,
            &(good_slot + chrono::Duration::minutes(10)).to_rfc3339(),
        ),
    )
    .await;
    assert_eq!(s, 422);
    assert_eq!(b["errors"][0]["field"], "slot_start");
    assert_eq!(b["errors"][0]["code"], "invalid_slot");
    let (s, b) = submit_raw(&app, &booking(&fx, &slot(-2, 600).to_rfc3339())).await;
    assert_eq!(s, 422);
    assert_eq!(b["errors"][0]["code"], "in_past");
    let (s, b) = submit_raw(&app, &booking(&fx, &slot(90, 600).to_rfc3339())).await;
    assert_eq!(s, 422);
    assert_eq!(b["errors"][0]["code"], "beyond_horizon");

    let unknown = json!({"patient_id": Uuid::now_v7(), "practitioner_id": Uuid::now_v7(), "slot_start": good_slot.to_rfc3339()});
    let (s, b) = submit_raw(&app, &unknown.to_string()).await;
    assert_eq!(s, 422);
    let codes: Vec<&str> = b["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["code"].as_str().unwrap())
        .collect();
    assert!(
        codes.contains(&"unknown_practitioner") && codes.contains(&"unknown_patient"),
        "{b}"
    );

    let (s, _) = raw(
        &app,
        "POST",
        "/v1/booking-requests",
        Some("text/plain"),
        booking(&fx, &good_slot.to_rfc3339()).into_bytes(),
    )
    .await;
    assert_eq!(s, 415);
    let huge = format!(r#"{{"pad": "{}"}}"#, "x".repeat(70_000));
    assert_eq!(submit_raw(&app, &huge).await.0, 413);
    let res = app
        .http
        .post(format!("{}/v1/booking-requests", app.base))
        .header("idempotency-key", "")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_client_error());
    // Two keys on one request: which one would a retry send? Refused.
    let res = app
        .http
        .post(format!("{}/v1/booking-requests", app.base))
        .header("idempotency-key", "k-a")
        .header("idempotency-key", "k-b")
        .json(&serde_json::from_str::<Value>(&booking(&fx, &good_slot.to_rfc3339())).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);

    // Nothing was written anywhere.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(app.count("SELECT count(*) FROM booking_requests").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM bookings").await, 0);
    let mut conn = app.redis.clone();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:req:*", app.config.redis_namespace))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
    let depth = slotq_redis::queue::depth(&mut conn, &app.config.queue())
        .await
        .unwrap();
    assert_eq!(depth.ready + depth.inflight + depth.scheduled, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_paths_methods_and_query_strings_are_problems_too() {
    let app = spawn(Options {
        workers: false,
        scheduler: false,
        ..Options::default()
    })
    .await;
    assert_eq!(
        raw(&app, "GET", "/v1/booking-requests/not-a-uuid", None, vec![])
            .await
            .0,
        404
    );
    assert_eq!(
        raw(
            &app,
            "GET",
            &format!("/v1/booking-requests/{}", Uuid::now_v7()),
            None,
            vec![]
        )
        .await
        .0,
        404
    );
    assert_eq!(
        raw(
            &app,
            "GET",
            &format!("/v1/bookings/{}", Uuid::now_v7()),
            None,
            vec![]
        )
        .await
        .0,
        404
    );
    assert_eq!(
        raw(&app, "GET", "/v1/nothing-here", None, vec![]).await.0,
        404
    );
    assert_eq!(
        raw(&app, "DELETE", "/v1/booking-requests", None, vec![])
            .await
            .0,
        405
    );
    // A browser's preflight carries no token: still 405 (no CORS), not 401.
    let preflight = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/booking-requests", app.base),
        )
        .header("origin", "https://portal.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 405);
    assert_eq!(preflight.headers()["allow"], "POST");
    assert_eq!(
        raw(
            &app,
            "GET",
            &format!("/v1/booking-requests/{}?wait=soon", Uuid::now_v7()),
            None,
            vec![]
        )
        .await
        .0,
        422
    );
    assert_eq!(
        raw(
            &app,
            "GET",
            &format!("/v1/booking-requests/{}?wait=-1", Uuid::now_v7()),
            None,
            vec![]
        )
        .await
        .0,
        422
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_validation_and_conflicts() {
    let app = spawn(Options {
        workers: false,
        scheduler: false,
        ..Options::default()
    })
    .await;
    let (s, b) = app
        .post(
            "/v1/clinics",
            &json!({"name": "", "country_code": "FRA", "timezone": "Mars/Base"}),
        )
        .await;
    assert_eq!(s, 422);
    assert_eq!(b["errors"].as_array().unwrap().len(), 3, "{b}");
    let (s, _) = app
        .post(
            &format!("/v1/clinics/{}/practitioners", Uuid::now_v7()),
            &json!({"name": "A", "specialty": "gp", "slot_minutes": 30}),
        )
        .await;
    assert_eq!(s, 404);
    let fx = app.fixture().await;
    let (s, _) = app
        .post(
            &format!("/v1/clinics/{}/practitioners", fx.clinic_id),
            &json!({"name": "A", "specialty": "gp", "slot_minutes": 7}),
        )
        .await;
    assert_eq!(s, 422);

    let path = format!("/v1/practitioners/{}/hours", fx.practitioner_id);
    for bad in [
        json!({"weekly": [{"weekday": 8, "start": "09:00", "end": "17:00"}]}),
        json!({"weekly": [{"weekday": 1, "start": "17:00", "end": "09:00"}]}),
        json!({"weekly": [{"weekday": 1, "start": "09:00", "end": "12:00"}, {"weekday": 1, "start": "11:00", "end": "13:00"}]}),
        json!({"weekly": [{"weekday": 1, "start": "09:07", "end": "12:00"}]}),
        json!({"weekly": [], "exceptions": [{"date": "2026-13-01", "closed": true}]}),
        json!({"weekly": [], "exceptions": [{"date": "2026-12-24"}]}),
    ] {
        let (s, b) = app.put(&path, &bad).await;
        assert_eq!(s, 422, "{bad} → {b}");
    }
    // The previous hours are intact after refused updates.
    let (_, hours) = app.get(&path).await;
    assert_eq!(hours["weekly"].as_array().unwrap().len(), 7);
    let ok = json!({"weekly": [{"weekday": 1, "start": "09:00", "end": "12:00"}, {"weekday": 1, "start": "13:00", "end": "17:00"}],
                    "exceptions": [{"date": "2026-12-24", "closed": true}, {"date": "2026-12-31", "start": "09:00", "end": "11:00"}]});
    let (s, b) = app.put(&path, &ok).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(app.get(&path).await.1, ok);

    let email = "dup@example.test";
    let (s, _) = app
        .post(
            "/v1/patients",
            &json!({"name": "A", "email": email, "country_code": "FR"}),
        )
        .await;
    assert_eq!(s, 201);
    let (s, b) = app
        .post(
            "/v1/patients",
            &json!({"name": "B", "email": "DUP@example.test", "country_code": "FR"}),
        )
        .await;
    assert_eq!(s, 409, "{b}");
    let (s, _) = app
        .post(
            "/v1/patients",
            &json!({"name": "B", "email": "nope", "country_code": "FR"}),
        )
        .await;
    assert_eq!(s, 422);
    assert_eq!(
        app.get(&format!("/v1/patients/{}", Uuid::now_v7())).await.0,
        404
    );
    assert_eq!(
        app.get(&format!("/v1/clinics/{}", fx.clinic_id)).await.0,
        200
    );
    assert_eq!(
        app.get(&format!("/v1/practitioners/{}", fx.practitioner_id))
            .await
            .0,
        200
    );
    app.stop().await;
}

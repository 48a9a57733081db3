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
use slotq_security::auth::Role;
use slotq_testkit::{Options, TestApp, send, slot, spawn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_poll_wait_is_capped_not_a_panic() {
    let app = spawn(Options::default()).await;
    let fx = app.fixture().await;
    let (request, _) = app
        .hold(fx.patient_id, fx.practitioner_id, slot(3, 600))
        .await;
    for wait in [
        "1e20",
        "1e300",
        "1.7976931348623157e308",
        "18446744073709551616",
    ] {
        let (s, ct, v) = send(app.http.get(format!(
            "{}/v1/booking-requests/{request}?wait={wait}",
            app.base
        )))
        .await;
        assert_eq!(
            (s, ct.as_str()),
            (200, "application/json"),
            "wait={wait}: {v}"
        );
        assert_eq!(v["status"], "held");
    }
    // Not numbers of seconds at all: 422 naming the parameter.
    for wait in ["inf", "NaN", "-1e20"] {
        let (s, ct, _) = send(app.http.get(format!(
            "{}/v1/booking-requests/{request}?wait={wait}",
            app.base
        )))
        .await;
        assert_eq!(
            (s, ct.as_str()),
            (422, "application/problem+json"),
            "{wait}"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_answers_500_problem_json_and_the_server_keeps_serving() {
    let app = spawn(Options {
        workers: false,
        scheduler: false,
        ..Options::default()
    })
    .await;
    // The ingress middleware stack around a route that panics.
    let (trigger, stop) = slotq_runtime::shutdown::channel();
    let state = slotq_ingress::AppState::connect(app.config.clone(), stop)
        .await
        .unwrap();
    async fn boom() -> &'static str {
        panic!("boom")
    }
    async fn owned_boom() -> &'static str {
        panic!("{}", String::from("owned boom"))
    }
    let routes = Router::new()
        .route("/boom", get(boom))
        .route("/v1/boom", get(owned_boom))
        .route("/fine", get(|| async { "fine" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server =
        tokio::spawn(
            async move { axum::serve(listener, slotq_ingress::layered(routes, state)).await },
        );
    // One connection for all requests: a panic must not close it.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let token = app.token(Role::Service, "test-service", None, None);
    for path in ["/boom", "/v1/boom"] {
        let (s, ct, body) =
            send(http.get(format!("http://{addr}{path}")).bearer_auth(&token)).await;
        assert_eq!(
            (s, ct.as_str()),
            (500, "application/problem+json"),
            "{body}"
        );
        assert_eq!(body["status"], 500);
        assert!(
            !body["detail"].as_str().unwrap().contains("boom"),
            "the panic message is logged, not returned: {body}"
        );
    }
    let res = http
        .get(format!("http://{addr}/fine"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "fine");
    trigger.fire();
    server.abort();
    app.stop().await;
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
    let signed_min =
        slotq_security::payment_signature::sign(secret.as_bytes(), i64::MIN, body.as_bytes());
    let signed_max =
        slotq_security::payment_signature::sign(secret.as_bytes(), i64::MAX, body.as_bytes());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_assigned_iso_country_codes_are_accepted() {
    let app = spawn(Options {
        workers: false,
        scheduler: false,
        ..Options::default()
    })
    .await;
    for bad in ["ZZ", "XX", "UK", "EU", "XK", "AA", "uk"] {
        let (s, v) = app
            .post(
                "/v1/clinics",
                &json!({"name": "C", "country_code": bad, "timezone": "UTC"}),
            )
            .await;
        assert_eq!(s, 422, "{bad}: {v}");
        assert_eq!(v["errors"][0]["field"], "country_code", "{v}");
        assert_eq!(
            v["errors"][0]["detail"], "must be a two-letter ISO 3166-1 country code",
            "{v}"
        );
        let (s, v) = app
            .post(
                "/v1/patients",
                &json!({"name": "P", "email": format!("{}@example.test", Uuid::new_v4().simple()), "country_code": bad}),
            )
            .await;
        assert_eq!(s, 422, "{bad}: {v}");
        let (s, v) = app.get(&format!("/v1/slots?country={bad}")).await;
        assert_eq!(s, 422, "{bad}: {v}");
    }
    for good in ["GB", "de", "SS", "AX"] {
        let (s, v) = app
            .post(
                "/v1/clinics",
                &json!({"name": "C", "country_code": good, "timezone": "UTC"}),
            )
            .await;
        assert_eq!(s, 201, "{good}: {v}");
        assert_eq!(v["country_code"], good.to_ascii_uppercase(), "{v}");
    }
    app.stop().await;
}

/// Writes a raw HTTP/1.1 request and reads what comes back within `within`.
async fn raw_exchange(app: &TestApp, request: String, within: Duration) -> String {
    let addr = app.base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got);
                // Enough once the headers and the (short) problem body are in.
                if let Some((head, body)) = text.split_once("\r\n\r\n")
                    && head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(str::to_owned)
                        })
                        .and_then(|n| n.trim().parse::<usize>().ok())
                        .is_some_and(|n| body.len() >= n)
                {
                    break;
                }
            }
            Ok(Err(_)) => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_content_length_over_the_limit_is_413_at_once() {
    let app = spawn(Options {
        workers: false,
        scheduler: false,
        // Far beyond what the test waits: only an answer before the body arrives passes.
        env: vec![("REQUEST_TIMEOUT_SECS", "30".into())],
    })
    .await;
    let token = app.token(Role::Service, "test-service", None, None);
    for (path, auth) in [
        (
            "/v1/booking-requests",
            format!("Authorization: Bearer {token}\r\n"),
        ),
        ("/v1/payments/webhook", String::new()),
    ] {
        let started = std::time::Instant::now();
        let answer = raw_exchange(
            &app,
            format!(
                "POST {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n{{}}"
            ),
            Duration::from_secs(5),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer:?}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("content-type: application/problem+json"),
            "{answer}"
        );
        assert!(answer.contains(r#""status":413"#), "{answer}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // Within the limit, the body is read and judged on its own.
    let body = format!(
        r#"{{"name": "{}", "country_code": "FR", "timezone": "UTC"}}"#,
        "x".repeat(100)
    );
    let (s, _, v) = send(
        app.http
            .post(format!("{}/v1/clinics", app.base))
            .header("content-type", "application/json")
            .body(body),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    // A chunked body (no declared length) over the limit still meets the streaming limit.
    let chunk = format!("2000\r\n{}\r\n", " ".repeat(0x2000));
    let answer = raw_exchange(
        &app,
        format!(
            "POST /v1/booking-requests HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n",
            chunk.repeat(9)
        ),
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_search_window_in_the_past_is_valid_and_empty() {
    let app = spawn(Options {
        workers: false,
        scheduler: false,
        ..Options::default()
    })
    .await;
    let fx = app.fixture().await;
    let day = |days: i64| {
        (chrono::Utc::now() + chrono::Duration::days(days))
            .format("%Y-%m-%d")
            .to_string()
    };
    let (s, v) = app
        .get(&format!("/v1/slots?from={}&to={}", day(-30), day(-26)))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["items"], json!([]), "{v}");
    assert_eq!(v["next_cursor"], Value::Null, "{v}");
    // Ending just now: nothing either.
    let (s, v) = app.get(&format!("/v1/slots?from={}", day(-3))).await;
    assert_eq!(s, 200, "{v}");
    // A window reaching into the future is clamped to now and finds future slots.
    let (s, v) = app
        .get(&format!(
            "/v1/slots?clinic_id={}&from={}&to={}",
            fx.clinic_id,
            day(-2),
            day(2)
        ))
        .await;
    assert_eq!(s, 200, "{v}");
    let items = v["items"].as_array().unwrap();
    assert!(!items.is_empty(), "{v}");
    let now = chrono::Utc::now();
    for i in items {
        let start: chrono::DateTime<chrono::Utc> = i["start"].as_str().unwrap().parse().unwrap();
        assert!(start > now - chrono::Duration::seconds(5), "{i}");
    }
    // A date as `to` includes that day: from and to the same date is that day's slots.
    let (s, v) = app
        .get(&format!(
            "/v1/slots?clinic_id={}&from={}&to={}",
            fx.clinic_id,
            day(1),
            day(1)
        ))
        .await;
    assert_eq!(s, 200, "{v}");
    let items = v["items"].as_array().unwrap();
    assert!(!items.is_empty(), "{v}");
    assert!(
        items
            .iter()
            .all(|i| i["start"].as_str().unwrap().starts_with(&day(1))),
        "{v}"
    );
    // The window itself is still validated as given.
    for bad in [
        format!("from={}&to={}", day(-26), day(-30)),
        format!("from={}&to={}", day(-90), day(-30)),
    ] {
        let (s, v) = app.get(&format!("/v1/slots?{bad}")).await;
        assert_eq!(s, 422, "{bad}: {v}");
        assert_eq!(v["errors"][0]["field"], "to", "{v}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_changes_refuse_a_body_that_is_not_json() {
    let app = spawn(Options::default()).await;
    let fx = app.fixture().await;
    let (_, booking) = app
        .hold(fx.patient_id, fx.practitioner_id, slot(3, 600))
        .await;
    for action in ["cancel", "complete", "no-show"] {
        for ct in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            None,
        ] {
            let mut req = app
                .http
                .post(format!("{}/v1/bookings/{booking}/{action}", app.base))
                .body(r#"{"reason": "because"}"#);
            if let Some(ct) = ct {
                req = req.header("content-type", ct);
            }
            let (s, got, v) = send(req).await;
            assert_eq!(
                (s, got.as_str()),
                (415, "application/problem+json"),
                "{action} {ct:?}: {v}"
            );
        }
    }
    let (_, b) = app.get(&format!("/v1/bookings/{booking}")).await;
    assert_eq!(b["status"], "held", "nothing changed: {b}");
    // An empty body needs no content type; a JSON one may carry parameters.
    let (s, _, v) = send(
        app.http
            .post(format!("{}/v1/bookings/{booking}/cancel", app.base))
            .header("content-type", "text/plain")
            .body(""),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "cancelled");
    let (_, other) = app
        .hold(fx.patient_id, fx.practitioner_id, slot(4, 600))
        .await;
    let (s, _, v) = send(
        app.http
            .post(format!("{}/v1/bookings/{other}/cancel", app.base))
            .header("content-type", "application/json; charset=utf-8")
            .body(r#"{"reason": "changed my mind"}"#),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["cancel_reason"], "changed my mind", "{v}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_booking_is_named_with_the_right_article() {
    let app = spawn(Options {
        env: vec![("HOLD_TTL_SECS", "1".into())],
        ..Options::default()
    })
    .await;
    let fx = app.fixture().await;
    let (request, booking) = app
        .hold(fx.patient_id, fx.practitioner_id, slot(3, 600))
        .await;
    app.wait_for_status(request, "expired", Duration::from_secs(10))
        .await;
    let (s, v) = app.reschedule(booking, slot(3, 660)).await;
    assert_eq!(s, 409, "{v}");
    let detail = v["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("an expired booking cannot be rescheduled"),
        "{detail}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_carries_a_bearer_challenge_naming_a_bad_token() {
    let app = spawn(Options {
        workers: false,
        scheduler: false,
        ..Options::default()
    })
    .await;
    let path = format!("{}/v1/bookings/{}", app.base, Uuid::now_v7());
    let plain = reqwest::Client::new();
    let res = plain.get(&path).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    let claims = slotq_security::auth::claims(
        &app.config.auth,
        Role::Service,
        "forger",
        None,
        None,
        Duration::from_secs(60),
    );
    let forged = slotq_security::auth::mint_hs256("not-the-secret", &claims).unwrap();
    for bad in [
        "Bearer not-a-jwt".to_owned(),
        "Bearer a.b.c".to_owned(),
        format!("Bearer {forged}"),
    ] {
        let res = plain
            .get(&path)
            .header("authorization", &bad)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
        assert_eq!(
            res.headers()["www-authenticate"],
            r#"Bearer error="invalid_token""#
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_cache_headers_ids_and_dates_at_the_edges() {
    let app = spawn(Options::default()).await;
    let fx = app.fixture().await;
    let get = |path: String, request_id: Option<&'static str>| {
        let mut req = app.http.get(format!("{}{path}", app.base));
        if let Some(id) = request_id {
            req = req.header("x-request-id", id);
        }
        req.send()
    };
    // A tidy client request id is echoed; a long or odd one is replaced by a fresh one.
    let patient = format!("/v1/patients/{}", fx.patient_id);
    let res = get(patient.clone(), Some("req-42.a:b")).await.unwrap();
    assert_eq!(res.headers()["x-request-id"], "req-42.a:b");
    // API answers (personal data here) are not to be cached.
    assert_eq!(res.headers()["cache-control"], "no-store");
    let long: &'static str = Box::leak("x".repeat(2000).into_boxed_str());
    for odd in [long, "a b {\"x\":1}"] {
        let res = get(patient.clone(), Some(odd)).await.unwrap();
        let echoed = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(echoed, odd);
        assert!(Uuid::parse_str(&echoed).is_ok(), "{echoed}");
    }
    // One URL per resource: only the hyphenated form of an id.
    let simple = fx.patient_id.simple().to_string();
    let braced = format!("{{{}}}", fx.patient_id);
    for alias in [simple, braced] {
        let res = get(format!("/v1/patients/{alias}"), None).await.unwrap();
        assert_eq!(res.status(), 404, "{alias}");
    }
    let upper = fx.patient_id.to_string().to_uppercase();
    let res = get(format!("/v1/patients/{upper}"), None).await.unwrap();
    assert_eq!(
        res.status(),
        200,
        "the hyphenated form in upper case is the same id"
    );
    // Dates past year 9999 cannot be written as RFC 3339: refused, not printed as +10000.
    let res = get(
        format!(
            "/v1/practitioners/{}/availability?from=9999-12-30&days=7",
            fx.practitioner_id
        ),
        None,
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 422);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["errors"][0]["field"], "from", "{v}");
    // `null` as the optional body of a status change is no body.
    let (_, booking) = app
        .hold(fx.patient_id, fx.practitioner_id, slot(3, 600))
        .await;
    let (s, _, v) = send(
        app.http
            .post(format!("{}/v1/bookings/{booking}/cancel", app.base))
            .header("content-type", "application/json")
            .body("null"),
    )
    .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("cancelled")), "{v}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_command_refuses_tokens_the_server_would_refuse() {
    let app = spawn(Options {
        workers: false,
        scheduler: false,
        ..Options::default()
    })
    .await;
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_slotq-ingress"))
            .envs(&app.env)
            .arg("token")
            .args(args)
            .output()
            .unwrap()
    };
    for args in [
        &["--role", "patient", "--sub", "ada"][..],
        &["--role", "clinic_admin", "--sub", "desk"][..],
        &["--role", "ops"][..],
        &["--role", "ops", "--sub"][..],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}: no token printed");
    }
    let help = run(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("--patient-id is required"));
    // A complete patient token is accepted by the server.
    let patient = app.patient().await;
    let out = run(&[
        "--role",
        "patient",
        "--sub",
        "ada",
        "--patient-id",
        &patient.to_string(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let token = String::from_utf8(out.stdout).unwrap();
    let (s, body) = app
        .call(
            "GET",
            &format!("/v1/patients/{patient}"),
            Some(token.trim()),
            None,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    app.stop().await;
}

#[test]
fn help_prints_usage_without_any_configuration() {
    let bin = env!("CARGO_BIN_EXE_slotq-ingress");
    for flag in ["--help", "-h", "help"] {
        let (code, text) = slotq_testkit::run_bare(bin, flag);
        assert_eq!(code, Some(0), "{flag}");
        assert!(text.starts_with("usage: slotq-ingress"), "{text}");
        assert!(text.contains("migrate") && text.contains("token"), "{text}");
    }
    // Anything else is still refused.
    assert_eq!(slotq_testkit::run_bare(bin, "--halp").0, Some(64));
}

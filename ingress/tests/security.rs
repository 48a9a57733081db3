//! Security: authentication, the per-role access matrix, rate limits, personal data at rest,
//! key rotation, and the append-only audit log.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::time::Duration;

use serde_json::{Value, json};
use slotq_security::auth::Role;
use slotq_testkit::{Options, TestApp, id_of, slot, spawn};
use uuid::Uuid;

struct World {
    clinic_a: Uuid,
    practitioner: Uuid,
    p1: Uuid,
    p2: Uuid,
    request: Uuid,
    booking: Uuid,
}

async fn world(app: &TestApp) -> World {
    let fx = app.fixture().await;
    let (_, other_clinic) = app
        .post(
            "/v1/clinics",
            &json!({"name": "B", "country_code": "FR", "timezone": "UTC"}),
        )
        .await;
    assert!(other_clinic["id"].is_string());
    let p2 = app.patient().await;
    let (_, r) = app
        .submit(fx.patient_id, fx.practitioner_id, slot(3, 600))
        .await;
    let d = app.decision(id_of(&r), Duration::from_secs(20)).await;
    World {
        clinic_a: fx.clinic_id,
        practitioner: fx.practitioner_id,
        p1: fx.patient_id,
        p2,
        request: id_of(&r),
        booking: d["booking_id"].as_str().unwrap().parse().unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_enforces_the_role_matrix() {
    let app = spawn(Options::default()).await;
    let w = world(&app).await;
    let clinic_b = Uuid::now_v7();
    let tokens: Vec<(&str, Option<String>)> = vec![
        ("none", None),
        (
            "patient1",
            Some(app.token(Role::Patient, "p1", None, Some(w.p1))),
        ),
        (
            "patient2",
            Some(app.token(Role::Patient, "p2", None, Some(w.p2))),
        ),
        (
            "adminA",
            Some(app.token(Role::ClinicAdmin, "a", Some(w.clinic_a), None)),
        ),
        (
            "adminB",
            Some(app.token(Role::ClinicAdmin, "b", Some(clinic_b), None)),
        ),
        ("ops", Some(app.token(Role::Ops, "o", None, None))),
        ("service", Some(app.token(Role::Service, "s", None, None))),
    ];
    let weekly: Vec<Value> = (1..=7)
        .map(|d| json!({"weekday": d, "start": "00:00", "end": "23:30"}))
        .collect();
    let (pr, c, p1, req, b) = (w.practitioner, w.clinic_a, w.p1, w.request, w.booking);
    // (method, path, body, expected for: none, patient1, patient2, adminA, adminB, ops, service)
    let table: Vec<(&str, String, Option<Value>, [u16; 7])> = vec![
        (
            "GET",
            format!("/v1/clinics/{c}"),
            None,
            [401, 200, 200, 200, 200, 200, 200],
        ),
        (
            "POST",
            "/v1/clinics".into(),
            Some(json!({"name": "X", "country_code": "FR", "timezone": "UTC"})),
            [401, 403, 403, 403, 403, 403, 201],
        ),
        (
            "POST",
            format!("/v1/clinics/{c}/practitioners"),
            Some(json!({"name": "X", "specialty": "gp", "slot_minutes": 30})),
            [401, 403, 403, 201, 403, 403, 201],
        ),
        (
            "GET",
            "/v1/practitioners".into(),
            None,
            [401, 200, 200, 200, 200, 200, 200],
        ),
        (
            "GET",
            format!("/v1/practitioners/{pr}"),
            None,
            [401, 200, 200, 200, 200, 200, 200],
        ),
        (
            "GET",
            format!("/v1/practitioners/{pr}/hours"),
            None,
            [401, 200, 200, 200, 200, 200, 200],
        ),
        (
            "PUT",
            format!("/v1/practitioners/{pr}/hours"),
            Some(json!({"weekly": weekly})),
            [401, 403, 403, 200, 403, 403, 200],
        ),
        (
            "GET",
            format!("/v1/practitioners/{pr}/availability"),
            None,
            [401, 200, 200, 200, 200, 200, 200],
        ),
        (
            "POST",
            format!("/v1/practitioners/{pr}/availability/rebuild"),
            None,
            [401, 403, 403, 200, 403, 200, 200],
        ),
        (
            "GET",
            "/v1/slots".into(),
            None,
            [401, 200, 200, 200, 200, 200, 200],
        ),
        (
            "GET",
            format!("/v1/practitioners/{pr}/conflicts"),
            None,
            [401, 403, 403, 200, 403, 200, 200],
        ),
        (
            "GET",
            format!("/v1/practitioners/{pr}/bookings"),
            None,
            [401, 403, 403, 200, 403, 200, 200],
        ),
        (
            "POST",
            "/v1/patients".into(),
            Some(json!({"name": "X", "email": "x@example.test", "country_code": "FR"})),
            [401, 403, 403, 403, 403, 403, 201],
        ),
        (
            "GET",
            format!("/v1/patients/{p1}"),
            None,
            [401, 200, 404, 404, 404, 200, 200],
        ),
        (
            "GET",
            format!("/v1/patients/{p1}/bookings"),
            None,
            [401, 200, 404, 200, 200, 200, 200],
        ),
        (
            "GET",
            format!("/v1/booking-requests/{req}"),
            None,
            [401, 200, 404, 200, 404, 200, 200],
        ),
        (
            "GET",
            format!("/v1/bookings/{b}"),
            None,
            [401, 200, 404, 200, 404, 200, 200],
        ),
        (
            "GET",
            format!("/v1/bookings/{b}/audit"),
            None,
            [401, 403, 404, 200, 404, 200, 200],
        ),
        // A held booking cannot be completed: the roles that may try get 409.
        (
            "POST",
            format!("/v1/bookings/{b}/complete"),
            None,
            [401, 403, 404, 409, 404, 403, 409],
        ),
        (
            "POST",
            format!("/v1/bookings/{b}/reschedule"),
            Some(json!({"slot_start": slot(3, 600).to_rfc3339()})),
            [401, 422, 404, 422, 404, 403, 422],
        ),
        (
            "POST",
            "/v1/booking-requests".into(),
            Some(
                json!({"patient_id": p1, "practitioner_id": pr, "slot_start": "2000-01-01T00:00:00Z"}),
            ),
            [401, 422, 422, 422, 403, 403, 422],
        ),
        (
            "GET",
            "/v1/webhook-subscriptions".into(),
            None,
            [401, 403, 403, 403, 403, 200, 200],
        ),
    ];
    let mut failures = Vec::new();
    for (method, path, body, expected) in &table {
        for ((who, token), want) in tokens.iter().zip(expected) {
            let (got, resp) = app
                .call(method, path, token.as_deref(), body.as_ref())
                .await;
            if got != *want {
                failures.push(format!(
                    "{method} {path} as {who}: got {got}, want {want}: {resp}"
                ));
            }
        }
    }
    // A clinic admin lists a patient's bookings at their own clinic only; an unknown patient
    // is 404 for them as for everyone.
    for (who, want) in [(3, 1), (4, 0), (6, 1)] {
        let (got, resp) = app
            .call(
                "GET",
                &format!("/v1/patients/{p1}/bookings"),
                tokens[who].1.as_deref(),
                None,
            )
            .await;
        let n = resp["items"].as_array().map(Vec::len);
        if (got, n) != (200, Some(want)) {
            failures.push(format!(
                "patient bookings as {}: got {got} with {n:?} items, want {want}: {resp}",
                tokens[who].0
            ));
        }
    }
    let (got, _) = app
        .call(
            "GET",
            &format!("/v1/patients/{}/bookings", Uuid::now_v7()),
            tokens[3].1.as_deref(),
            None,
        )
        .await;
    if got != 404 {
        failures.push(format!("unknown patient's bookings as adminA: got {got}"));
    }
    // Cancel last: only the owner, its clinic or a service may; ops may only look.
    let cancel = format!("/v1/bookings/{b}/cancel");
    for (who, want) in [(0, 401), (2, 404), (4, 404), (5, 403), (1, 200)] {
        let (got, resp) = app
            .call("POST", &cancel, tokens[who].1.as_deref(), None)
            .await;
        if got != want {
            failures.push(format!(
                "POST {cancel} as {}: got {got}, want {want}: {resp}",
                tokens[who].0
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} access-matrix failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Ops endpoints stay public; metrics are not on the public listener.
    assert_eq!(app.call("GET", "/healthz", None, None).await.0, 200);
    assert_eq!(app.call("GET", "/metrics", None, None).await.0, 404);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_wrong_audience_wrong_key_and_unsigned_tokens_are_refused() {
    let app = spawn(Options {
        workers: false,
        scheduler: false,
        ..Options::default()
    })
    .await;
    let auth = &app.config.auth;
    let secret =
        secrecy::ExposeSecret::expose_secret(auth.hs256_secret.as_ref().unwrap()).to_owned();
    let base =
        slotq_security::auth::claims(auth, Role::Ops, "eve", None, None, Duration::from_secs(600));
    let mut expired = base.clone();
    expired.exp = chrono::Utc::now().timestamp() - 3600;
    let mut wrong_aud = base.clone();
    wrong_aud.aud = "someone-else".into();
    let good = slotq_security::auth::mint_hs256(&secret, &base).unwrap();
    let payload = good.split('.').nth(1).unwrap().to_owned();
    let tokens = [
        slotq_security::auth::mint_hs256(&secret, &expired).unwrap(),
        slotq_security::auth::mint_hs256(&secret, &wrong_aud).unwrap(),
        slotq_security::auth::mint_hs256("not-the-secret", &base).unwrap(),
        format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}."),
        "garbage".into(),
    ];
    for t in &tokens {
        let (s, body) = app.call("GET", "/v1/practitioners", Some(t), None).await;
        assert_eq!(s, 401, "{t}: {body}");
        assert_eq!(body["status"], 401);
    }
    assert_eq!(
        app.call("GET", "/v1/practitioners", Some(&good), None)
            .await
            .0,
        200
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_tokens_verify_against_a_jwks_file() {
    use p256::pkcs8::EncodePrivateKey;
    let secret = p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
    let mut jwk: Value = serde_json::from_str(&secret.public_key().to_jwk_string()).unwrap();
    jwk["kid"] = json!("k1");
    jwk["alg"] = json!("ES256");
    jwk["use"] = json!("sig");
    let path = std::env::temp_dir().join(format!("slotq-jwks-{}.json", Uuid::new_v4()));
    std::fs::write(&path, json!({"keys": [jwk]}).to_string()).unwrap();
    let app = spawn(Options {
        workers: false,
        scheduler: false,
        env: vec![
            ("JWT_JWKS", path.display().to_string()),
            ("JWT_HS256_SECRET", String::new()),
        ],
    })
    .await;
    let claims = slotq_security::auth::claims(
        &app.config.auth,
        Role::Ops,
        "jwks-user",
        None,
        None,
        Duration::from_secs(600),
    );
    let pem = secret.to_pkcs8_pem(Default::default()).unwrap();
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("k1".into());
    let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    assert_eq!(
        app.call("GET", "/v1/practitioners", Some(&token), None)
            .await
            .0,
        200
    );
    header.kid = Some("unknown".into());
    let unknown = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    assert_eq!(
        app.call("GET", "/v1/practitioners", Some(&unknown), None)
            .await
            .0,
        401
    );
    // HS256 is not accepted when only a JWKS is configured (no algorithm confusion).
    let hs = slotq_security::auth::mint_hs256("whatever", &claims).unwrap();
    assert_eq!(
        app.call("GET", "/v1/practitioners", Some(&hs), None)
            .await
            .0,
        401
    );
    let _ = std::fs::remove_file(path);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_burst_a_client_gets_429_with_retry_after() {
    let app = spawn(Options {
        workers: false,
        scheduler: false,
        env: vec![
            ("RATE_LIMIT_ENABLED", "1".into()),
            ("RATE_LIMIT_READ", "0.5/3".into()),
        ],
    })
    .await;
    let fx = app.fixture().await;
    let patient = app.token(Role::Patient, "p", None, Some(fx.patient_id));
    let url = format!("{}/v1/patients/{}", app.base, fx.patient_id);
    let plain = reqwest::Client::new();
    for i in 0..3 {
        let res = plain.get(&url).bearer_auth(&patient).send().await.unwrap();
        assert_eq!(res.status(), 200, "request {i} is within the burst");
        assert_eq!(res.headers()["ratelimit-limit"], "3");
        assert_eq!(
            res.headers()["ratelimit-remaining"].to_str().unwrap(),
            (2 - i).to_string()
        );
    }
    let res = plain.get(&url).bearer_auth(&patient).send().await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=2).contains(&retry),
        "one token every 2 s: retry after {retry}"
    );
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(
        plain
            .get(&url)
            .bearer_auth(&patient)
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "allowed again after Retry-After"
    );
    // Trusted back ends are not limited per IP.
    for _ in 0..10 {
        assert_eq!(app.http.get(&url).send().await.unwrap().status(), 200);
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_data_is_unreadable_at_rest_and_survives_key_rotation() {
    let app = spawn(Options {
        workers: false,
        scheduler: false,
        ..Options::default()
    })
    .await;
    let (s, p) = app.post("/v1/patients", &json!({"name": "Grace Hopper", "email": "Grace@Navy.example", "phone": "+1 555 0100", "country_code": "US"})).await;
    assert_eq!(s, 201, "{p}");
    assert_eq!(p["name"], "Grace Hopper");
    let (plain_name, plain_email, enc): (Option<String>, Option<String>, Vec<u8>) =
        sqlx::query_as("SELECT name, email, name_enc FROM patients WHERE id = $1")
            .bind(id_of(&p))
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((plain_name, plain_email), (None, None));
    assert!(!String::from_utf8_lossy(&enc).contains("Grace"));
    let dump: String = sqlx::query_scalar("SELECT string_agg(t::text, ' ') FROM patients t")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        !dump.contains("Grace") && !dump.to_lowercase().contains("navy"),
        "no plaintext anywhere in the row"
    );
    // Uniqueness still works through the blind index.
    let (s, _) = app
        .post(
            "/v1/patients",
            &json!({"name": "Other", "email": "grace@navy.EXAMPLE", "country_code": "US"}),
        )
        .await;
    assert_eq!(s, 409);

    // Rotation: a new key first, the old one kept → old rows readable, then re-encrypted.
    let old = app.config.pii.clone().unwrap();
    let new_only = slotq_security::pii::PiiKeys::parse(
        &format!("t2:{}", "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="),
        "CAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAg=",
    )
    .unwrap();
    let rotated = slotq_security::pii::PiiKeys::parse(
        &format!(
            "t2:{},{}",
            "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=", app.env["PII_KEYS"]
        ),
        &app.env["PII_INDEX_KEY"],
    )
    .unwrap();
    let id = id_of(&p);
    let read = slotq_store::directory::get_patient(&app.pool, &rotated, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.email, "Grace@Navy.example");
    assert!(
        slotq_store::directory::get_patient(&app.pool, &new_only, id)
            .await
            .is_err(),
        "the new key alone cannot read old rows yet"
    );
    let changed = slotq_store::directory::encrypt_patients_at_rest(&app.pool, &rotated)
        .await
        .unwrap();
    assert!(changed >= 1);
    let read = slotq_store::directory::get_patient(&app.pool, &new_only, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.name, "Grace Hopper");
    assert!(
        slotq_store::directory::get_patient(&app.pool, &old, id)
            .await
            .is_err(),
        "old key retired"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_is_append_only_and_names_the_actor() {
    let app = spawn(Options::default()).await;
    let w = world(&app).await;
    let admin = app.token(Role::ClinicAdmin, "front-desk-1", Some(w.clinic_a), None);
    let (s, _) = app
        .call(
            "POST",
            &format!("/v1/bookings/{}/cancel", w.booking),
            Some(&admin),
            Some(&json!({"reason": "sick"})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, trail) = app
        .call(
            "GET",
            &format!("/v1/bookings/{}/audit", w.booking),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, 200, "{trail}");
    // The hold was made by the worker for whoever submitted (the test's service token).
    let first = trail["items"].as_array().unwrap().first().unwrap().clone();
    assert_eq!(
        (
            first["action"].as_str(),
            first["actor"].as_str(),
            first["actor_role"].as_str()
        ),
        (Some("hold"), Some("test-service"), Some("service"))
    );
    let last = trail["items"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (
            last["actor"].as_str(),
            last["actor_role"].as_str(),
            last["to_status"].as_str()
        ),
        (
            Some("front-desk-1"),
            Some("clinic_admin"),
            Some("cancelled")
        )
    );
    assert!(
        sqlx::query("UPDATE audit_log SET actor = 'x'")
            .execute(&app.pool)
            .await
            .is_err()
    );
    assert!(
        sqlx::query("DELETE FROM audit_log")
            .execute(&app.pool)
            .await
            .is_err()
    );
    assert_eq!(
        app.count("SELECT count(*) FROM audit_log WHERE actor = 'x'")
            .await,
        0
    );
    app.stop().await;
}

//! Finding and changing appointments: DST-aware availability, schedule conflicts, availability
//! kept current by every path, bitmap rebuilds, reschedules (including a storm), visit outcomes,
//! listings and search.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::time::Duration;

use futures::future::join_all;
use serde_json::{Value, json};
use slotq_testkit::{Options, TestApp, id_of, slot, spawn};
use uuid::Uuid;

fn slots_of(day: &Value) -> Vec<String> {
    day["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["start"].as_str().unwrap().to_owned())
        .collect()
}

async fn day_slots(app: &TestApp, practitioner: Uuid, date: &str) -> Vec<String> {
    let (s, body) = app
        .get(&format!(
            "/v1/practitioners/{practitioner}/availability?from={date}&days=1"
        ))
        .await;
    assert_eq!(s, 200, "{body}");
    slots_of(&body["days"][0])
}

fn rfc(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

async fn confirm(app: &TestApp, booking: Uuid) {
    let ev = json!({"id": format!("evt_{booking}"), "type": "payment.succeeded", "booking_id": booking, "amount": 1, "currency": "EUR"});
    let (s, body) = app
        .pay(&ev, &app.secret, chrono::Utc::now().timestamp())
        .await;
    assert_eq!(
        (s, body["outcome"].as_str()),
        (200, Some("confirmed")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn availability_follows_local_hours_across_paris_dst_changes() {
    let app = spawn(Options {
        env: vec![("BOOKING_HORIZON_DAYS", "400".into())],
        ..Options::default()
    })
    .await;
    let (_, clinic) = app
        .post(
            "/v1/clinics",
            &json!({"name": "Paris", "country_code": "FR", "timezone": "Europe/Paris"}),
        )
        .await;
    let (_, p) = app
        .post(
            &format!("/v1/clinics/{}/practitioners", id_of(&clinic)),
            &json!({"name": "Dr P", "specialty": "gp", "slot_minutes": 30}),
        )
        .await;
    let pid = id_of(&p);
    let weekly: Vec<Value> = (1..=7)
        .flat_map(|d| {
            [
                json!({"weekday": d, "start": "01:00", "end": "05:00"}),
                json!({"weekday": d, "start": "09:00", "end": "10:00"}),
            ]
        })
        .collect();
    let (s, b) = app
        .put(
            &format!("/v1/practitioners/{pid}/hours"),
            &json!({"weekly": weekly}),
        )
        .await;
    assert_eq!(s, 200, "{b}");

    // Spring forward (2027-03-28): 02:00–03:00 does not exist; 09:00 local moves from 08:00Z to 07:00Z.
    let spring = day_slots(&app, pid, "2027-03-28").await;
    assert_eq!(
        spring,
        [
            "2027-03-28T00:00:00Z",
            "2027-03-28T00:30:00Z",
            "2027-03-28T01:00:00Z",
            "2027-03-28T01:30:00Z",
            "2027-03-28T02:00:00Z",
            "2027-03-28T02:30:00Z",
            "2027-03-28T07:00:00Z",
            "2027-03-28T07:30:00Z"
        ]
    );
    assert_eq!(
        day_slots(&app, pid, "2027-03-27").await[8],
        "2027-03-27T08:00:00Z"
    );
    // Fall back (2027-10-31): 02:00–03:00 happens twice; only the first is offered.
    let autumn = day_slots(&app, pid, "2027-10-31").await;
    assert_eq!(
        autumn,
        [
            "2027-10-30T23:00:00Z",
            "2027-10-30T23:30:00Z",
            "2027-10-31T00:00:00Z",
            "2027-10-31T00:30:00Z",
            "2027-10-31T02:00:00Z",
            "2027-10-31T02:30:00Z",
            "2027-10-31T03:00:00Z",
            "2027-10-31T03:30:00Z",
            "2027-10-31T08:00:00Z",
            "2027-10-31T08:30:00Z"
        ]
    );
    // Booking follows the same rules: the repeated 02:00 (+01) is refused, the first accepted.
    let patient = app.patient().await;
    let (s, body) = app.post("/v1/booking-requests", &json!({"patient_id": patient, "practitioner_id": pid, "slot_start": "2027-10-31T01:00:00Z"})).await;
    assert_eq!(s, 422, "{body}");
    assert_eq!(body["errors"][0]["code"], "invalid_slot");
    let (s, _) = app.post("/v1/booking-requests", &json!({"patient_id": patient, "practitioner_id": pid, "slot_start": "2027-10-31T00:00:00+00:00"})).await;
    assert_eq!(s, 202);
    // Parameters are checked.
    assert_eq!(
        app.get(&format!("/v1/practitioners/{pid}/availability?days=32"))
            .await
            .0,
        422
    );
    assert_eq!(
        app.get(&format!(
            "/v1/practitioners/{pid}/availability?from=tomorrow"
        ))
        .await
        .0,
        422
    );
    assert_eq!(
        app.get(&format!(
            "/v1/practitioners/{}/availability",
            Uuid::now_v7()
        ))
        .await
        .0,
        404
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_day_with_a_confirmed_booking_lists_a_conflict_and_keeps_the_booking() {
    let app = spawn(Options::default()).await;
    let fx = app.fixture().await;
    let at = slot(5, 10 * 60);
    let (_, booking) = app.hold(fx.patient_id, fx.practitioner_id, at).await;
    confirm(&app, booking).await;
    let weekly: Vec<Value> = (1..=7)
        .map(|d| json!({"weekday": d, "start": "00:00", "end": "23:30"}))
        .collect();
    let closed = json!({"weekly": weekly, "exceptions": [{"date": at.date_naive().to_string(), "closed": true}]});
    let (s, body) = app
        .put(
            &format!("/v1/practitioners/{}/hours", fx.practitioner_id),
            &closed,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["new_conflicts"], json!([booking]));
    let (_, list) = app
        .get(&format!(
            "/v1/practitioners/{}/conflicts",
            fx.practitioner_id
        ))
        .await;
    assert_eq!(list["items"][0]["booking_id"], json!(booking));
    assert_eq!(list["items"][0]["status"], "confirmed");
    let (_, b) = app.get(&format!("/v1/bookings/{booking}")).await;
    assert_eq!(b["status"], "confirmed", "the booking is not dropped");
    assert_eq!(
        app.count("SELECT count(*) FROM outbox WHERE type = 'booking.schedule_conflict'")
            .await,
        1
    );
    // Saving the same hours again raises nothing new.
    let (_, again) = app
        .put(
            &format!("/v1/practitioners/{}/hours", fx.practitioner_id),
            &closed,
        )
        .await;
    assert_eq!(again["new_conflicts"], json!([]));
    // The clinic keeps it: the conflict closes.
    let (s, r) = app
        .post(
            &format!(
                "/v1/practitioners/{}/conflicts/{booking}/resolve",
                fx.practitioner_id
            ),
            &json!({"action": "keep"}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    let (_, list) = app
        .get(&format!(
            "/v1/practitioners/{}/conflicts",
            fx.practitioner_id
        ))
        .await;
    assert_eq!(list["items"], json!([]));
    let (s, _) = app
        .post(
            &format!(
                "/v1/practitioners/{}/conflicts/{booking}/resolve",
                fx.practitioner_id
            ),
            &json!({"action": "keep"}),
        )
        .await;
    assert_eq!(s, 404);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn availability_reflects_hold_expiry_and_cancel_within_a_second() {
    let app = spawn(Options {
        env: vec![("HOLD_TTL_SECS", "2".into())],
        ..Options::default()
    })
    .await;
    let fx = app.fixture().await;
    let at = slot(3, 12 * 60);
    let date = at.date_naive().to_string();
    assert!(
        day_slots(&app, fx.practitioner_id, &date)
            .await
            .contains(&rfc(at))
    );
    let (request, booking) = app.hold(fx.patient_id, fx.practitioner_id, at).await;
    assert!(
        !day_slots(&app, fx.practitioner_id, &date)
            .await
            .contains(&rfc(at)),
        "held slot is not offered"
    );
    app.wait_for_status(request, "expired", Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        day_slots(&app, fx.practitioner_id, &date)
            .await
            .contains(&rfc(at)),
        "expired slot is offered again"
    );
    let _ = booking;
    let (_, booking) = app.hold(fx.patient_id, fx.practitioner_id, at).await;
    assert!(
        !day_slots(&app, fx.practitioner_id, &date)
            .await
            .contains(&rfc(at))
    );
    let (s, _) = app
        .post(
            &format!("/v1/bookings/{booking}/cancel"),
            &json!({"reason": "ill"}),
        )
        .await;
    assert_eq!(s, 200);
    assert!(
        day_slots(&app, fx.practitioner_id, &date)
            .await
            .contains(&rfc(at)),
        "cancelled slot is offered again"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_bitmap_is_rebuilt_from_postgresql() {
    let app = spawn(Options::default()).await;
    let fx = app.fixture().await;
    let times: Vec<_> = [9 * 60, 10 * 60, 15 * 60]
        .iter()
        .map(|m| slot(4, *m))
        .collect();
    for t in &times {
        app.hold(fx.patient_id, fx.practitioner_id, *t).await;
    }
    let date = times[0].date_naive().to_string();
    let before = day_slots(&app, fx.practitioner_id, &date).await;
    let mut conn = app.redis.clone();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:avail*", app.config.redis_namespace))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
    let after = day_slots(&app, fx.practitioner_id, &date).await;
    assert_eq!(before, after, "rebuilt bitmap gives the same answer");
    for t in &times {
        assert!(!after.contains(&rfc(*t)));
    }
    assert_eq!(after.len(), 47 - 3, "00:00–23:30 is 47 slots");
    // On-demand rebuild.
    let (s, body) = app
        .post(
            &format!(
                "/v1/practitioners/{}/availability/rebuild",
                fx.practitioner_id
            ),
            &json!({}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(day_slots(&app, fx.practitioner_id, &date).await, before);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reschedule_storm_moves_exactly_one_booking() {
    let app = spawn(Options::default()).await;
    let fx = app.fixture().await;
    // 200 patients hold 200 slots across 5 days; all want the same new slot.
    let mut bookings = Vec::new();
    for i in 0..200u32 {
        let patient = app.patient().await;
        let at = slot(2 + i64::from(i / 40), (i % 40) * 30);
        let (s, r) = app.submit(patient, fx.practitioner_id, at).await;
        assert_eq!(s, 202, "{r}");
        bookings.push((id_of(&r), at));
    }
    let mut booking_ids = Vec::new();
    for (request, at) in &bookings {
        let d = app.decision(*request, Duration::from_secs(30)).await;
        assert_eq!(d["status"], "held", "{d}");
        booking_ids.push((
            d["booking_id"].as_str().unwrap().parse::<Uuid>().unwrap(),
            *at,
        ));
    }
    let target = slot(8, 600);
    let body = json!({"slot_start": rfc(target)});
    let paths: Vec<String> = booking_ids
        .iter()
        .map(|(b, _)| format!("/v1/bookings/{b}/reschedule"))
        .collect();
    let answers = join_all(paths.iter().map(|p| app.post(p, &body))).await;
    let mut requests = Vec::new();
    for (s, body) in &answers {
        match s {
            202 => requests.push(id_of(body)),
            409 => assert_eq!(body["code"], "slot_taken"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let decisions = join_all(
        requests
            .iter()
            .map(|r| app.decision(*r, Duration::from_secs(30))),
    )
    .await;
    let moved: Vec<&Value> = decisions.iter().filter(|d| d["status"] == "held").collect();
    assert_eq!(moved.len(), 1, "exactly one booking moves");
    assert!(
        decisions
            .iter()
            .filter(|d| d["status"] != "held")
            .all(|d| d["status"] == "rejected" && d["reason"] == "slot_taken")
    );
    let moved_booking: Uuid = moved[0]["booking_id"].as_str().unwrap().parse().unwrap();
    for (b, at) in &booking_ids {
        let (_, body) = app.get(&format!("/v1/bookings/{b}")).await;
        assert_eq!(body["status"], "held");
        let expected = if *b == moved_booking { target } else { *at };
        assert_eq!(body["slot_start"], json!(expected), "booking {b}");
    }
    let at_target: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM bookings WHERE slot_start = $1 AND status IN ('held','confirmed')",
    )
    .bind(target)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(at_target, 1);
    assert_eq!(
        app.count("SELECT count(*) FROM outbox WHERE type = 'booking.rescheduled'")
            .await,
        1
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_booking_stays_confirmed_when_rescheduled_and_frees_its_old_slot() {
    let app = spawn(Options::default()).await;
    let fx = app.fixture().await;
    let (old, new) = (slot(3, 600), slot(3, 660));
    let (_, booking) = app.hold(fx.patient_id, fx.practitioner_id, old).await;
    confirm(&app, booking).await;
    let (s, r) = app
        .post(
            &format!("/v1/bookings/{booking}/reschedule"),
            &json!({"slot_start": rfc(new)}),
        )
        .await;
    assert_eq!(s, 202, "{r}");
    assert_eq!(r["kind"], "reschedule");
    let d = app.decision(id_of(&r), Duration::from_secs(20)).await;
    assert_eq!(d["status"], "confirmed", "{d}");
    let (_, b) = app.get(&format!("/v1/bookings/{booking}")).await;
    assert_eq!(b["slot_start"], json!(new));
    assert_eq!(b["status"], "confirmed");
    assert!(b["payment_ref"].is_string());
    // The event names the reschedule request (not the booking's first one) and its kind.
    let (event_request, kind): (String, String) = sqlx::query_as(
        "SELECT payload->>'request_id', payload->>'kind' FROM outbox WHERE type = 'booking.rescheduled'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (event_request, kind),
        (id_of(&r).to_string(), "reschedule".to_owned())
    );
    let date = old.date_naive().to_string();
    let free = day_slots(&app, fx.practitioner_id, &date).await;
    assert!(free.contains(&rfc(old)) && !free.contains(&rfc(new)));
    // Same slot, off-grid slot, unknown booking.
    assert_eq!(
        app.post(
            &format!("/v1/bookings/{booking}/reschedule"),
            &json!({"slot_start": rfc(new)})
        )
        .await
        .0,
        422
    );
    assert_eq!(
        app.post(
            &format!("/v1/bookings/{booking}/reschedule"),
            &json!({"slot_start": rfc(new + chrono::Duration::minutes(7))})
        )
        .await
        .0,
        422
    );
    assert_eq!(
        app.post(
            &format!("/v1/bookings/{}/reschedule", Uuid::now_v7()),
            &json!({"slot_start": rfc(new)})
        )
        .await
        .0,
        404
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn illegal_transitions_are_409_and_visit_outcomes_wait_for_the_visit() {
    let app = spawn(Options::default()).await;
    let fx = app.fixture().await;
    let (request, booking) = app
        .hold(fx.patient_id, fx.practitioner_id, slot(3, 600))
        .await;
    let (s, body) = app
        .post(&format!("/v1/bookings/{booking}/complete"), &json!({}))
        .await;
    assert_eq!(s, 409, "a held booking cannot be completed: {body}");
    assert_eq!(body["code"], "illegal_transition");
    confirm(&app, booking).await;
    let (s, body) = app
        .post(&format!("/v1/bookings/{booking}/no-show"), &json!({}))
        .await;
    assert_eq!(s, 409, "the visit has not started: {body}");
    // Move the visit into the past (as time would), then record its outcome.
    sqlx::query("UPDATE bookings SET slot_start = now() - interval '1 hour', slot_end = now() - interval '30 minutes' WHERE id = $1")
        .bind(booking)
        .execute(&app.pool)
        .await
        .unwrap();
    let (s, body) = app
        .post(&format!("/v1/bookings/{booking}/complete"), &json!({}))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["status"], "completed");
    // The request keeps to DESIGN §5's statuses: its booking was a confirmed one.
    let (_, polled) = app.get(&format!("/v1/booking-requests/{request}")).await;
    assert_eq!(polled["status"], "confirmed", "{polled}");
    assert_eq!(
        app.post(&format!("/v1/bookings/{booking}/no-show"), &json!({}))
            .await
            .0,
        409
    );
    assert_eq!(
        app.post(&format!("/v1/bookings/{booking}/cancel"), &json!({}))
            .await
            .0,
        409
    );
    assert_eq!(
        app.post(
            &format!("/v1/bookings/{booking}/reschedule"),
            &json!({"slot_start": rfc(slot(4, 600))})
        )
        .await
        .0,
        409
    );
    assert_eq!(
        app.post(
            &format!("/v1/bookings/{booking}/cancel"),
            &json!({"by": "robot"})
        )
        .await
        .0,
        422
    );
    let audit: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit_log WHERE booking_id = $1 ORDER BY id")
            .bind(booking)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(audit, ["hold", "confirm", "complete"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_page_through_bookings_and_search_finds_free_slots_earliest_first() {
    let app = spawn(Options::default()).await;
    let fx = app.fixture().await;
    let mut mine = Vec::new();
    for m in [600, 660, 720, 780, 840] {
        mine.push(
            app.hold(fx.patient_id, fx.practitioner_id, slot(3, m))
                .await
                .1,
        );
    }
    let (s, page1) = app
        .get(&format!("/v1/patients/{}/bookings?limit=2", fx.patient_id))
        .await;
    assert_eq!(s, 200, "{page1}");
    let cursor = page1["next_cursor"].as_str().unwrap().to_owned();
    let (_, page2) = app
        .get(&format!(
            "/v1/patients/{}/bookings?limit=2&cursor={cursor}",
            fx.patient_id
        ))
        .await;
    let (_, page3) = app
        .get(&format!(
            "/v1/patients/{}/bookings?limit=2&cursor={}",
            fx.patient_id,
            page2["next_cursor"].as_str().unwrap()
        ))
        .await;
    let ids: Vec<Uuid> = [&page1, &page2, &page3]
        .iter()
        .flat_map(|p| p["items"].as_array().unwrap().iter().map(id_of))
        .collect();
    assert_eq!(ids, mine, "in slot order, no gaps, no repeats");
    assert!(page3["next_cursor"].is_null());
    // A last page that is exactly full says so: no cursor to an empty page.
    let (_, all) = app
        .get(&format!("/v1/patients/{}/bookings?limit=5", fx.patient_id))
        .await;
    assert_eq!(all["items"].as_array().unwrap().len(), 5, "{all}");
    assert!(all["next_cursor"].is_null(), "{all}");
    let (_, four) = app
        .get(&format!("/v1/patients/{}/bookings?limit=4", fx.patient_id))
        .await;
    assert_eq!(four["items"].as_array().unwrap().len(), 4, "{four}");
    assert!(four["next_cursor"].is_string(), "{four}");
    let (_, sheet) = app
        .get(&format!(
            "/v1/practitioners/{}/bookings?status=held&from={}",
            fx.practitioner_id,
            slot(3, 0).date_naive()
        ))
        .await;
    assert_eq!(sheet["items"].as_array().unwrap().len(), 5);
    assert_eq!(
        app.get(&format!(
            "/v1/patients/{}/bookings?status=lost",
            fx.patient_id
        ))
        .await
        .0,
        422
    );
    assert_eq!(
        app.get(&format!(
            "/v1/patients/{}/bookings?cursor=zzz",
            fx.patient_id
        ))
        .await
        .0,
        422
    );
    // A window that ends before it starts is a client mistake, not an empty page.
    let (status, problem) = app
        .get(&format!(
            "/v1/practitioners/{}/bookings?from=2026-12-10&to=2026-12-01",
            fx.practitioner_id
        ))
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "to", "{problem}");

    // Search: a second practitioner of another specialty; the held slots are not offered.
    let (_, other) = app
        .post(
            &format!("/v1/clinics/{}/practitioners", fx.clinic_id),
            &json!({"name": "Dr Two", "specialty": "dermatology", "slot_minutes": 30}),
        )
        .await;
    let weekly: Vec<Value> = (1..=7)
        .map(|d| json!({"weekday": d, "start": "00:00", "end": "23:30"}))
        .collect();
    app.put(
        &format!("/v1/practitioners/{}/hours", id_of(&other)),
        &json!({"weekly": weekly}),
    )
    .await;
    let from = slot(3, 600);
    let q = format!("/v1/slots?specialty=gp&from={}&limit=3", rfc(from));
    let (s, found) = app.get(&q).await;
    assert_eq!(s, 200, "{found}");
    let starts: Vec<&str> = found["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["start"].as_str().unwrap())
        .collect();
    assert_eq!(
        starts,
        [rfc(slot(3, 630)), rfc(slot(3, 690)), rfc(slot(3, 750))],
        "10:00, 11:00, 12:00 … are held"
    );
    let (_, next) = app
        .get(&format!(
            "{q}&cursor={}",
            found["next_cursor"].as_str().unwrap()
        ))
        .await;
    assert_eq!(next["items"][0]["start"], json!(rfc(slot(3, 810))));
    // Exactly two free slots in [10:30, 12:00): a page of two is the last one.
    let window = format!(
        "/v1/slots?specialty=gp&from={}&to={}",
        rfc(slot(3, 630)),
        rfc(slot(3, 720))
    );
    let (_, two) = app.get(&format!("{window}&limit=2")).await;
    assert_eq!(two["items"].as_array().unwrap().len(), 2, "{two}");
    assert!(two["next_cursor"].is_null(), "{two}");
    let (_, one) = app.get(&format!("{window}&limit=1")).await;
    assert!(one["next_cursor"].is_string(), "{one}");
    let (_, both) = app
        .get(&format!("/v1/slots?from={}&limit=4", rfc(from)))
        .await;
    let pairs: Vec<(String, Uuid)> = both["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["start"].as_str().unwrap().to_owned(),
                i["practitioner_id"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        pairs[0],
        (rfc(from), id_of(&other)),
        "the other practitioner is free at 10:00"
    );
    assert!(pairs.windows(2).all(|w| w[0] <= w[1]), "earliest first");
    assert_eq!(app.get("/v1/slots?limit=1000").await.0, 422);
    let (_, listed) = app.get("/v1/practitioners?specialty=dermatology").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hours_may_end_at_midnight_and_its_last_slot_can_be_booked() {
    let app = spawn(Options::default()).await;
    let (_, pid) = app.practitioner_in("FR").await;
    let day = (chrono::Utc::now() + chrono::Duration::days(3)).date_naive();
    let weekly: Vec<Value> = (1..=7)
        .map(|d| json!({"weekday": d, "start": "22:00", "end": "24:00"}))
        .collect();
    let body = json!({
        "weekly": weekly,
        "exceptions": [{"date": day.succ_opt().unwrap().to_string(), "start": "23:00", "end": "24:00"}],
    });
    let (s, b) = app
        .put(&format!("/v1/practitioners/{pid}/hours"), &body)
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["weekly"][0]["end"], "24:00", "{b}");
    assert_eq!(b["exceptions"][0]["end"], "24:00", "{b}");
    // Read back from PostgreSQL, the end is still midnight.
    let (s, b) = app.get(&format!("/v1/practitioners/{pid}/hours")).await;
    assert_eq!((s, &b["weekly"][6]["end"]), (200, &json!("24:00")), "{b}");

    let slots = day_slots(&app, pid, &day.to_string()).await;
    assert_eq!(
        slots.last().map(String::as_str),
        Some(format!("{day}T23:30:00Z").as_str()),
        "{slots:?}"
    );
    assert_eq!(slots.len(), 4, "{slots:?}");
    let last = day.and_hms_opt(23, 30, 0).unwrap().and_utc();
    let patient = app.patient().await;
    app.hold(patient, pid, last).await;

    // 24:00 is only an end; anything past it is refused.
    for bad in [
        json!({"weekly": [{"weekday": 1, "start": "24:00", "end": "24:00"}]}),
        json!({"weekly": [{"weekday": 1, "start": "22:00", "end": "24:30"}]}),
        json!({"weekly": [{"weekday": 1, "start": "22:00", "end": "24:00:00"}]}),
    ] {
        let (s, b) = app
            .put(&format!("/v1/practitioners/{pid}/hours"), &bad)
            .await;
        assert_eq!(s, 422, "{bad} → {b}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_committed_on_the_old_hours_after_a_change_is_listed_as_a_conflict() {
    let app = spawn(Options {
        env: vec![("EXPIRY_INTERVAL_MS", "100".into())],
        ..Options::default()
    })
    .await;
    let fx = app.fixture().await;
    let weekly: Vec<Value> = (1..=7)
        .map(|d| json!({"weekday": d, "start": "00:00", "end": "12:00"}))
        .collect();
    let (s, b) = app
        .put(
            &format!("/v1/practitioners/{}/hours", fx.practitioner_id),
            &json!({"weekly": weekly}),
        )
        .await;
    assert_eq!(
        (s, b["new_conflicts"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{b}"
    );
    // What a worker that read the old hours (to 23:30) commits just after the change looked.
    let late = slot(3, 14 * 60);
    let booking = write_hold(&app.pool, fx.practitioner_id, fx.patient_id, late).await;
    // The scheduler's re-check finds it within a few ticks, once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, c) = app
            .get(&format!(
                "/v1/practitioners/{}/conflicts",
                fx.practitioner_id
            ))
            .await;
        let found = c["items"]
            .as_array()
            .is_some_and(|items| items.iter().any(|i| i["booking_id"] == json!(booking)));
        if found {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not listed: {c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE type = 'booking.schedule_conflict' AND aggregate_id = $1",
    )
    .bind(booking)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(events, 1, "one event, however often the re-check runs");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_decide_on_new_hours_after_deciding_on_the_old_ones() {
    // The workers remember the schedules they read; a change of hours must still reach them.
    let app = spawn(Options::default()).await;
    let (_, pid) = app.practitioner_in("FR").await;
    let patient = app.patient().await;
    app.daily_hours(pid, "08:00", "12:00").await;
    // A morning hold: the workers now know the morning-only hours.
    app.hold(patient, pid, slot(3, 9 * 60)).await;
    app.daily_hours(pid, "14:00", "18:00").await;
    // An afternoon slot, outside the hours the workers saw first: held on the new ones.
    for day in [4, 5] {
        let (s, r) = app.submit(patient, pid, slot(day, 15 * 60)).await;
        assert_eq!(s, 202, "{r}");
        let d = app.decision(id_of(&r), Duration::from_secs(20)).await;
        assert_eq!(d["status"], "held", "{d}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exception_may_give_several_periods_for_one_date() {
    let app = spawn(Options::default()).await;
    let (_, pid) = app.practitioner_in("FR").await;
    let day = (chrono::Utc::now() + chrono::Duration::days(3)).date_naive();
    let weekly: Vec<Value> = (1..=7)
        .map(|d| json!({"weekday": d, "start": "09:00", "end": "17:00"}))
        .collect();
    let hours = |exceptions: Value| json!({"weekly": weekly, "exceptions": exceptions});
    let url = format!("/v1/practitioners/{pid}/hours");
    let d = day.to_string();
    let (s, b) = app
        .put(
            &url,
            &hours(json!([
                {"date": d, "start": "14:00", "end": "15:00"},
                {"date": d, "start": "08:00", "end": "09:00"},
            ])),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (_, read) = app.get(&url).await;
    assert_eq!(read["exceptions"].as_array().unwrap().len(), 2, "{read}");
    assert_eq!(read["exceptions"][0]["start"], "08:00", "{read}");
    let slots = day_slots(&app, pid, &d).await;
    let at = |h: u32, m: u32| format!("{d}T{h:02}:{m:02}:00Z");
    assert_eq!(
        slots,
        [at(8, 0), at(8, 30), at(14, 0), at(14, 30)],
        "{slots:?}"
    );
    let patient = app.patient().await;
    app.hold(patient, pid, day.and_hms_opt(14, 30, 0).unwrap().and_utc())
        .await;

    // Overlapping periods, or a closed date with periods, are refused and change nothing.
    for (bad, field, code) in [
        (
            json!([{"date": d, "start": "08:00", "end": "10:00"},
                   {"date": d, "start": "09:30", "end": "11:00"}]),
            "exceptions[1]",
            "overlap",
        ),
        (
            json!([{"date": d, "start": "08:00", "end": "10:00"}, {"date": d, "closed": true}]),
            "exceptions[1].date",
            "duplicate",
        ),
        (
            json!([{"date": d, "closed": true}, {"date": d, "start": "08:00", "end": "10:00"}]),
            "exceptions[1].date",
            "duplicate",
        ),
    ] {
        let (s, p) = app.put(&url, &hours(bad)).await;
        assert_eq!(s, 422, "{p}");
        assert_eq!(
            (
                p["errors"][0]["field"].as_str(),
                p["errors"][0]["code"].as_str()
            ),
            (Some(field), Some(code)),
            "{p}"
        );
    }
    assert_eq!(app.get(&url).await.1, read);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_waits_for_a_replacement_of_hours_and_decides_on_the_new_ones() {
    let app = spawn(Options::default()).await;
    let fx = app.fixture().await;
    let p = fx.practitioner_id;
    let at = slot(3, 14 * 60);
    // A replacement of the hours under way (what replace_hours does): the practitioner is
    // closed from now on, but not yet committed.
    let mut change = app.pool.begin().await.unwrap();
    hours_lock(&mut change, p, "pg_advisory_xact_lock").await;
    sqlx::query("UPDATE practitioners SET hours_changed_at = now() WHERE id = $1")
        .bind(p)
        .execute(&mut *change)
        .await
        .unwrap();
    sqlx::query("DELETE FROM practitioner_hours WHERE practitioner_id = $1")
        .bind(p)
        .execute(&mut *change)
        .await
        .unwrap();
    // Accepted on the old hours (the only ones anyone can read yet) ...
    let (s, r) = app.submit(fx.patient_id, p, at).await;
    assert_eq!(s, 202, "{r}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // ... but not decided on them while they are being replaced.
    let (_, v) = app
        .get(&format!("/v1/booking-requests/{}", id_of(&r)))
        .await;
    assert_eq!(v["status"], "queued", "{v}");
    change.commit().await.unwrap();
    let d = app.decision(id_of(&r), Duration::from_secs(20)).await;
    assert_eq!(
        (d["status"].as_str(), d["reason"].as_str()),
        (Some("rejected"), Some("invalid_slot")),
        "{d}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replacement_of_hours_waits_for_a_batch_deciding_on_them_and_lists_its_hold() {
    let app = spawn(Options::default()).await;
    let fx = app.fixture().await;
    let p = fx.practitioner_id;
    let at = slot(3, 14 * 60);
    // A batch deciding on the current hours holds their lock shared and has written a hold.
    let mut batch = app.pool.begin().await.unwrap();
    hours_lock(&mut batch, p, "pg_advisory_xact_lock_shared").await;
    let booking = write_hold(&mut *batch, p, fx.patient_id, at).await;
    // New hours that end before the hold: the replacement waits for the batch, then sees it.
    let weekly: Vec<Value> = (1..=7)
        .map(|d| json!({"weekday": d, "start": "00:00", "end": "12:00"}))
        .collect();
    let (url, body) = (
        format!("/v1/practitioners/{p}/hours"),
        json!({"weekly": weekly}),
    );
    let put = app.put(&url, &body);
    let commit = async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        batch.commit().await.unwrap();
    };
    let ((s, b), ()) = tokio::join!(put, commit);
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["new_conflicts"], json!([booking]), "{b}");
    app.stop().await;
}

/// Takes practitioner `p`'s hours lock in `tx` with `function` (exclusive or shared), as
/// `replace_hours` or a batch does.
async fn hours_lock(tx: &mut sqlx::PgConnection, p: Uuid, function: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {function}($1)")))
        .bind(slotq_store::holds::hours_lock_key(p))
        .execute(tx)
        .await
        .unwrap();
}

/// Writes a held booking straight into PostgreSQL (FR, 30 minutes), as a worker's batch would,
/// without the batch's checks; returns its id.
async fn write_hold(
    db: impl sqlx::PgExecutor<'_>,
    practitioner: Uuid,
    patient: Uuid,
    at: chrono::DateTime<chrono::Utc>,
) -> Uuid {
    let booking = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO bookings (id, request_id, country_code, practitioner_id, patient_id,
                               slot_start, slot_end, status, hold_expires_at)
         VALUES ($1, $2, 'FR', $3, $4, $5, $5 + interval '30 minutes', 'held',
                 now() + interval '5 minutes')",
    )
    .bind(booking)
    .bind(Uuid::now_v7())
    .bind(practitioner)
    .bind(patient)
    .bind(at)
    .execute(db)
    .await
    .unwrap();
    booking
}

//! Admission in groups: concurrent submissions share Redis calls and jobs, and within one
//! call every request is judged in order, exactly as if it had been admitted alone.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use futures::future::join_all;
use slotq_redis::fast_path::{Admission, AdmitItem, FastPath};
use slotq_redis::keys::availability_bit;
use slotq_redis::queue::{ADMIT_MAX, HoldJob, HoldQueue, HoldTask, apalis_config};
use slotq_store::requests::RequestView;
use slotq_testkit::{Options, TestApp, id_of, slot, spawn};
use uuid::Uuid;

fn no_workers() -> Options {
    Options {
        workers: false,
        scheduler: false,
        ..Options::default()
    }
}

/// A stack without workers, its fast path and its hold queue.
async fn admission_setting() -> (TestApp, FastPath, HoldQueue) {
    let app = spawn(no_workers()).await;
    let fast = FastPath::new(app.redis.clone(), &app.config.redis_namespace);
    let queue = HoldQueue::new(app.redis.clone(), &app.config.queue());
    (app, fast, queue)
}

/// Sets a slot's availability bit, as a decided hold does.
async fn mark_taken(app: &TestApp, fast: &FastPath, practitioner: Uuid, at: chrono::DateTime<Utc>) {
    let _: () = redis::cmd("SETBIT")
        .arg(fast.keys().availability(practitioner, at))
        .arg(availability_bit(at))
        .arg(1)
        .query_async(&mut app.redis.clone())
        .await
        .unwrap();
}

/// Every queued job, by task id.
async fn queued_tasks(app: &TestApp) -> HashMap<String, HoldTask> {
    let raw: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(apalis_config(&app.config.queue()).job_data_hash())
        .query_async(&mut app.redis.clone())
        .await
        .unwrap();
    raw.into_iter()
        .map(|(id, json)| (id, serde_json::from_str(&json).unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submissions_share_jobs_and_each_is_queued_exactly_once() {
    let app = spawn(no_workers()).await;
    let fx = app.fixture().await;
    // 230 distinct free slots (46 a day), all at once.
    let submissions = join_all((0..230u32).map(|i| {
        app.submit(
            fx.patient_id,
            fx.practitioner_id,
            slot(2 + i64::from(i / 46), (i % 46) * 30),
        )
    }))
    .await;
    let accepted: HashSet<Uuid> = submissions
        .iter()
        .map(|(s, b)| {
            assert_eq!(*s, 202, "{b}");
            id_of(b)
        })
        .collect();
    assert_eq!(accepted.len(), 230);

    let tasks = queued_tasks(&app).await;
    let mut queued = Vec::new();
    for (task_id, task) in &tasks {
        assert!(
            (1..=ADMIT_MAX).contains(&task.holds.len()),
            "{} requests in one job",
            task.holds.len()
        );
        // The job is named after its first request (a ULID of its UUID v7).
        assert_eq!(*task_id, HoldQueue::task_id(task.holds[0].request_id));
        queued.extend(task.holds.iter().map(|j| j.request_id));
    }
    assert_eq!(queued.len(), 230, "no request is queued twice");
    assert_eq!(
        queued.iter().copied().collect::<HashSet<_>>(),
        accepted,
        "every accepted request is queued"
    );
    assert!(
        tasks.len() < 230,
        "230 concurrent submissions were queued as {} jobs: none shared a Redis call",
        tasks.len()
    );
    let d = slotq_redis::queue::depth(&mut app.redis.clone(), &app.config.queue())
        .await
        .unwrap();
    assert_eq!(d.ready as usize, tasks.len(), "{d:?}");
    assert_eq!(d.pending_requests, 230, "{d:?}");
    app.stop().await;
}

fn item(
    practitioner: Uuid,
    patient: Uuid,
    at: chrono::DateTime<Utc>,
    key: Option<&str>,
    hash: &str,
) -> AdmitItem {
    let view = RequestView {
        id: Uuid::now_v7(),
        status: slotq_domain::request::RequestStatus::Queued,
        kind: slotq_domain::request::RequestKind::Book,
        booking_id: None,
        hold_expires_at: None,
        reason: None,
        practitioner_id: practitioner,
        patient_id: patient,
        slot_start: at,
        submitted_at: Utc::now(),
        decided_at: None,
    };
    AdmitItem {
        job: HoldJob {
            request_id: view.id,
            patient_id: patient,
            practitioner_id: practitioner,
            slot_start: at,
            submitted_at: view.submitted_at,
            idempotency_key: key.map(str::to_owned),
            reschedule: None,
            trace_id: None,
            actor: None,
            actor_role: None,
        },
        status_json: serde_json::to_string(&view).unwrap(),
        body_hash: hash.into(),
        precheck: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_judges_idempotency_and_the_precheck_request_by_request() {
    let (app, fast, queue) = admission_setting().await;
    let (practitioner, patient) = (Uuid::now_v7(), Uuid::now_v7());
    let (free, taken) = (slot(2, 9 * 60), slot(2, 10 * 60));
    let mut conn = app.redis.clone();
    mark_taken(&app, &fast, practitioner, taken).await;

    let first = item(practitioner, patient, free, Some("k1"), "h1");
    let retry = item(practitioner, patient, free, Some("k1"), "h1");
    let other_body = item(practitioner, patient, free, Some("k1"), "h2");
    let refused = item(practitioner, patient, taken, None, "h3");
    let plain = item(practitioner, patient, slot(2, 11 * 60), None, "h4");
    let verdicts = fast
        .admit_many(&[&first, &retry, &other_body, &refused, &plain], &queue)
        .await
        .unwrap();
    assert_eq!(
        verdicts,
        vec![
            Admission::Admitted,
            Admission::Replay {
                request_id: first.job.request_id,
                same_body: true
            },
            Admission::Replay {
                request_id: first.job.request_id,
                same_body: false
            },
            Admission::SlotTaken,
            Admission::Admitted,
        ]
    );
    // One job with the two admitted requests, and only their statuses.
    let tasks = queued_tasks(&app).await;
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    let task = tasks.values().next().unwrap();
    assert_eq!(
        task.holds,
        vec![first.job.clone(), plain.job.clone()],
        "the admitted requests, in order"
    );
    for (item, cached) in [
        (&first, true),
        (&retry, false),
        (&other_body, false),
        (&refused, false),
        (&plain, true),
    ] {
        let id = item.job.request_id;
        assert_eq!(
            fast.status(id).await.unwrap().is_some(),
            cached,
            "status of {id}"
        );
    }
    let d = slotq_redis::queue::depth(&mut conn, &app.config.queue())
        .await
        .unwrap();
    assert_eq!((d.ready, d.pending_requests), (1, 2), "{d:?}");

    // A call in which nothing is admitted queues nothing.
    let again = fast.admit_many(&[&retry, &refused], &queue).await.unwrap();
    assert_eq!(again[1], Admission::SlotTaken);
    assert_eq!(queued_tasks(&app).await.len(), 1);
    assert_eq!(fast.admit_many(&[], &queue).await.unwrap(), vec![]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_without_idempotency_keys_is_queued_as_the_script_queues_one() {
    let (app, fast, queue) = admission_setting().await;
    let (practitioner, patient) = (Uuid::now_v7(), Uuid::now_v7());
    let taken = slot(2, 10 * 60);
    let mut conn = app.redis.clone();
    mark_taken(&app, &fast, practitioner, taken).await;
    // Without keys (no script), then with one (the script).
    let refused = item(practitioner, patient, taken, None, "h1");
    let a = item(practitioner, patient, slot(2, 11 * 60), None, "h2");
    let mut unchecked = item(practitioner, patient, taken, None, "h3");
    unchecked.precheck = false;
    let verdicts = fast
        .admit_many(&[&refused, &a, &unchecked], &queue)
        .await
        .unwrap();
    assert_eq!(
        verdicts,
        vec![
            Admission::SlotTaken,
            Admission::Admitted,
            Admission::Admitted
        ]
    );
    let keyed = item(practitioner, patient, slot(2, 12 * 60), Some("k"), "h4");
    assert_eq!(
        fast.admit_many(&[&keyed], &queue).await.unwrap(),
        vec![Admission::Admitted]
    );

    let tasks = queued_tasks(&app).await;
    let without = HoldQueue::task_id(a.job.request_id);
    let with = HoldQueue::task_id(keyed.job.request_id);
    assert_eq!(
        tasks[&without].holds,
        vec![a.job.clone(), unchecked.job.clone()]
    );
    assert_eq!(tasks[&with].holds, vec![keyed.job.clone()]);
    // The same apalis metadata, both on the ready list, the requests counted.
    let meta = apalis_config(&app.config.queue()).job_meta_hash();
    let mut metas = Vec::new();
    for id in [&without, &with] {
        let m: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(format!("{meta}:{id}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        metas.push(m);
    }
    assert_eq!(metas[0].len(), 4, "{metas:?}");
    assert_eq!(metas[0], metas[1]);
    let d = slotq_redis::queue::depth(&mut conn, &app.config.queue())
        .await
        .unwrap();
    assert_eq!((d.ready, d.pending_requests), (2, 3), "{d:?}");
    // Statuses of the admitted only, remembered as long as the script remembers them.
    for (item, cached) in [
        (&refused, false),
        (&a, true),
        (&unchecked, true),
        (&keyed, true),
    ] {
        let id = item.job.request_id;
        let raw: Option<String> = redis::cmd("GET")
            .arg(fast.keys().request(id))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            raw.as_deref(),
            cached.then_some(item.status_json.as_str()),
            "{id}"
        );
    }
    let ttl = |id: Uuid| {
        let key = fast.keys().request(id);
        let mut conn = app.redis.clone();
        async move {
            let t: i64 = redis::cmd("TTL")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
            t
        }
    };
    let (t_without, t_with) = (ttl(a.job.request_id).await, ttl(keyed.job.request_id).await);
    assert!(
        t_without > 86_000 && (t_without - t_with).abs() <= 2,
        "{t_without} {t_with}"
    );
    app.stop().await;
}

/// A submission while Redis fails half-way (the ready list under another type: `RPUSH` fails
/// inside the admission script, or inside the `MULTI` of a keyless group, whose other commands
/// Redis still runs) is answered 503, never 202; once Redis is right, the same submission is
/// queued. With an Idempotency-Key, nothing is left that the retry could take for an admission.
async fn a_half_way_failure(idempotency_key: Option<&str>) {
    let app = spawn(no_workers()).await;
    let fx = app.fixture().await;
    let mut conn = app.redis.clone();
    let ready = apalis_config(&app.config.queue()).active_jobs_list();
    let _: () = redis::cmd("SET")
        .arg(&ready)
        .arg("not a list")
        .query_async(&mut conn)
        .await
        .unwrap();
    let body = serde_json::json!({
        "patient_id": fx.patient_id,
        "practitioner_id": fx.practitioner_id,
        "slot_start": slot(2, 9 * 60).to_rfc3339(),
    });
    let submit = || {
        let mut req = app
            .http
            .post(format!("{}/v1/booking-requests", app.base))
            .json(&body);
        if let Some(key) = idempotency_key {
            req = req.header("idempotency-key", key);
        }
        req.send()
    };
    let res = submit().await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert!(res.headers().contains_key("retry-after"));
    if idempotency_key.is_some() {
        let ns = &app.config.redis_namespace;
        for pattern in [format!("{ns}:idem:*"), format!("{ns}:req:*")] {
            let left: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(left.is_empty(), "{pattern}: {left:?}");
        }
    }
    // Redis is right again: the retry is a new request, and it is queued.
    let _: () = redis::cmd("DEL")
        .arg(&ready)
        .query_async(&mut conn)
        .await
        .unwrap();
    let res = submit().await.unwrap();
    assert_eq!(res.status(), 202);
    let id = id_of(&res.json().await.unwrap());
    let queued: Vec<Uuid> = queued_tasks(&app)
        .await
        .into_values()
        .flat_map(|t| t.holds.into_iter().map(|j| j.request_id))
        .collect();
    assert!(queued.contains(&id), "{id} is not queued: {queued:?}");
    let listed: Vec<String> = redis::cmd("LRANGE")
        .arg(&ready)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(listed, vec![HoldQueue::task_id(id)]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_admission_leaves_nothing_that_a_retry_could_take_for_an_admission() {
    a_half_way_failure(Some("retry-me")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyless_admission_that_redis_fails_half_way_is_not_answered_as_accepted() {
    a_half_way_failure(None).await;
}

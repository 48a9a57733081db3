//! The OpenAPI document covers the router: every documented operation exists (no 404 "no such
//! route", no 405), and every route the API serves is documented.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

use slotq_testkit::{Options, spawn};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served_and_every_route_is_documented() {
    let app = spawn(Options {
        workers: false,
        scheduler: false,
        ..Options::default()
    })
    .await;
    let (s, doc) = app.call("GET", "/openapi.json", None, None).await;
    assert_eq!(s, 200, "the document is public");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = Vec::new();
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            operations.push((method.to_uppercase(), path.clone()));
        }
    }
    let token = app.token(slotq_security::auth::Role::Service, "openapi", None, None);
    for (method, path) in &operations {
        let concrete = path
            .split('/')
            .map(|seg| {
                if seg.starts_with('{') {
                    Uuid::now_v7().to_string()
                } else {
                    seg.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let (status, body) = app.call(method, &concrete, Some(&token), None).await;
        assert_ne!(status, 405, "{method} {path}");
        assert_ne!(
            body["detail"], "no such route",
            "{method} {path} is documented but not routed"
        );
    }
    // The routes of ingress/src/routes/mod.rs, by hand: adding a route means documenting it.
    let routed = [
        "/healthz",
        "/readyz",
        "/v1/clinics",
        "/v1/clinics/{id}",
        "/v1/clinics/{id}/practitioners",
        "/v1/practitioners",
        "/v1/practitioners/{id}",
        "/v1/practitioners/{id}/hours",
        "/v1/practitioners/{id}/availability",
        "/v1/practitioners/{id}/availability/rebuild",
        "/v1/practitioners/{id}/bookings",
        "/v1/practitioners/{id}/conflicts",
        "/v1/practitioners/{id}/conflicts/{booking_id}/resolve",
        "/v1/slots",
        "/v1/patients",
        "/v1/patients/{id}",
        "/v1/patients/{id}/bookings",
        "/v1/booking-requests",
        "/v1/booking-requests/{id}",
        "/v1/bookings/{id}",
        "/v1/bookings/{id}/audit",
        "/v1/bookings/{id}/cancel",
        "/v1/bookings/{id}/reschedule",
        "/v1/bookings/{id}/complete",
        "/v1/bookings/{id}/no-show",
        "/v1/payments/webhook",
        "/v1/webhook-subscriptions",
        "/v1/webhook-subscriptions/{id}",
        "/v1/webhook-subscriptions/{id}/deliveries",
        "/v1/webhook-subscriptions/{id}/deliveries/{delivery_id}",
        "/v1/webhook-subscriptions/{id}/deliveries/{delivery_id}/redeliver",
    ];
    for r in routed {
        assert!(paths.contains_key(r), "{r} is routed but not documented");
    }
    assert_eq!(
        paths.len(),
        routed.len(),
        "documented paths: {:?}",
        paths.keys().collect::<Vec<_>>()
    );
    // Operation ids are unique (OpenAPI requires it; code generators name methods by them).
    let mut ids: Vec<&str> = paths
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    let all = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), all, "duplicate operationId among {ids:?}");
    assert_eq!(all, operations.len(), "every operation has an id");
    // The event types the document lists are the ones the server accepts.
    let listed: Vec<&str> =
        doc["components"]["schemas"]["CreateBody"]["properties"]["events"]["items"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
    assert_eq!(listed, slotq_domain::events::types::ALL);
    app.stop().await;
}

/// Every `$ref` of the document names a schema or response it defines, every `/v1` operation
/// documents its problem+json errors, and the request statuses and
/// rejection reasons are enumerated as the server writes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_schema_reference_resolves_and_the_enums_list_their_wire_names() {
    let app = spawn(Options {
        workers: false,
        scheduler: false,
        ..Options::default()
    })
    .await;
    let (_, doc) = app.call("GET", "/openapi.json", None, None).await;
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for r in &refs {
        let defined = match r.strip_prefix("#/components/responses/") {
            Some(name) => doc["components"]["responses"].get(name).is_some(),
            None => schemas.contains_key(r.strip_prefix("#/components/schemas/").unwrap_or(r)),
        };
        assert!(defined, "{r} is not defined");
    }
    // Every /v1 operation answers problem+json for its errors (described once).
    for (path, item) in doc["paths"].as_object().unwrap() {
        if path.starts_with("/v1/") {
            for (method, op) in item.as_object().unwrap() {
                assert_eq!(
                    op["responses"]["default"]["$ref"], "#/components/responses/Problem",
                    "{method} {path}"
                );
            }
        }
    }
    let listed = |name: &str| -> Vec<String> {
        schemas[name]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} is an enum: {}", schemas[name]))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    use slotq_domain::request::{RejectionReason, RequestStatus};
    let wire = |all: &[&str]| all.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        listed("RequestStatus"),
        wire(
            &RequestStatus::ALL
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
        )
    );
    assert_eq!(
        listed("RejectionReason"),
        wire(
            &RejectionReason::ALL
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
        )
    );
}

fn collect_refs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(serde_json::Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|x| collect_refs(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

//! Routes of the v1 API and the ops endpoints.

pub mod availability;
pub mod booking_requests;
pub mod bookings;
pub mod directory;
pub mod ops;
pub mod payments;
pub mod webhook_subscriptions;

use axum::{
    Router,
    routing::{get, post},
};

use crate::{AppState, error::ApiError};

/// A page of at most `limit` items out of a read of up to `limit + 1`: with the cursor of its
/// last item when more follow, `None` on the last page (a last page that is exactly full does
/// not lead to an empty one).
pub(crate) fn page<T, C>(
    mut items: Vec<T>,
    limit: usize,
    cursor: impl FnOnce(&T) -> C,
) -> (Vec<T>, Option<C>) {
    if items.len() > limit {
        items.truncate(limit);
        let next = items.last().map(cursor);
        (items, next)
    } else {
        (items, None)
    }
}

/// Every route; unknown paths and methods answer problem+json too.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/openapi.json", get(crate::openapi::document))
        .route("/readyz", get(ops::readyz))
        .route("/v1/clinics", post(directory::create_clinic))
        .route("/v1/clinics/{id}", get(directory::get_clinic))
        .route(
            "/v1/clinics/{id}/practitioners",
            post(directory::create_practitioner),
        )
        .route("/v1/practitioners", get(availability::practitioners))
        .route("/v1/practitioners/{id}", get(directory::get_practitioner))
        .route(
            "/v1/practitioners/{id}/availability",
            get(availability::availability),
        )
        .route(
            "/v1/practitioners/{id}/availability/rebuild",
            post(availability::rebuild),
        )
        .route(
            "/v1/practitioners/{id}/bookings",
            get(bookings::by_practitioner),
        )
        .route(
            "/v1/practitioners/{id}/conflicts",
            get(directory::conflicts),
        )
        .route(
            "/v1/practitioners/{id}/conflicts/{booking_id}/resolve",
            post(directory::resolve_conflict),
        )
        .route("/v1/slots", get(availability::search))
        .route(
            "/v1/practitioners/{id}/hours",
            get(directory::get_hours).put(directory::put_hours),
        )
        .route("/v1/patients", post(directory::create_patient))
        .route("/v1/patients/{id}", get(directory::get_patient))
        .route("/v1/patients/{id}/bookings", get(bookings::by_patient))
        .route("/v1/booking-requests", post(booking_requests::submit))
        .route("/v1/booking-requests/{id}", get(booking_requests::poll))
        .route("/v1/bookings/{id}", get(bookings::get))
        .route("/v1/bookings/{id}/audit", get(bookings::audit))
        .route("/v1/bookings/{id}/cancel", post(bookings::cancel))
        .route("/v1/bookings/{id}/reschedule", post(bookings::reschedule))
        .route("/v1/bookings/{id}/complete", post(bookings::complete))
        .route("/v1/bookings/{id}/no-show", post(bookings::no_show))
        .route("/v1/payments/webhook", post(payments::webhook))
        .route(
            "/v1/webhook-subscriptions",
            get(webhook_subscriptions::list).post(webhook_subscriptions::create),
        )
        .route(
            "/v1/webhook-subscriptions/{id}",
            get(webhook_subscriptions::get).delete(webhook_subscriptions::delete),
        )
        .route(
            "/v1/webhook-subscriptions/{id}/deliveries",
            get(webhook_subscriptions::deliveries),
        )
        .route(
            "/v1/webhook-subscriptions/{id}/deliveries/{delivery_id}",
            get(webhook_subscriptions::delivery),
        )
        .route(
            "/v1/webhook-subscriptions/{id}/deliveries/{delivery_id}/redeliver",
            post(webhook_subscriptions::redeliver),
        )
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
}

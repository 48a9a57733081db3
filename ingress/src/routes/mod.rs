//! Routes of the v1 API and the ops endpoints.

pub mod availability;
pub mod booking_requests;
pub mod bookings;
pub mod directory;
pub mod ops;
pub mod payments;
pub mod webhook_subscriptions;

use axum::{Router, routing::get};
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

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

/// Every route; unknown paths and methods answer problem+json too. The documented routes
/// come from [`api`], so the router and the OpenAPI document are one list.
pub fn router() -> Router<AppState> {
    let (router, _) = api().split_for_parts();
    router
        .route("/openapi.json", get(crate::openapi::document))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
}

/// The documented API: each handler registered once, at the method and path of its
/// `#[utoipa::path]` (handlers of one path share a `routes!`).
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(directory::create_clinic))
        .routes(routes!(directory::get_clinic))
        .routes(routes!(directory::create_practitioner))
        .routes(routes!(availability::practitioners))
        .routes(routes!(directory::get_practitioner))
        .routes(routes!(availability::availability))
        .routes(routes!(availability::rebuild))
        .routes(routes!(bookings::by_practitioner))
        .routes(routes!(directory::conflicts))
        .routes(routes!(directory::resolve_conflict))
        .routes(routes!(availability::search))
        .routes(routes!(directory::get_hours, directory::put_hours))
        .routes(routes!(directory::create_patient))
        .routes(routes!(directory::get_patient))
        .routes(routes!(bookings::by_patient))
        .routes(routes!(booking_requests::submit))
        .routes(routes!(booking_requests::poll))
        .routes(routes!(bookings::get))
        .routes(routes!(bookings::audit))
        .routes(routes!(bookings::cancel))
        .routes(routes!(bookings::reschedule))
        .routes(routes!(bookings::complete))
        .routes(routes!(bookings::no_show))
        .routes(routes!(payments::webhook))
        .routes(routes!(
            webhook_subscriptions::list,
            webhook_subscriptions::create
        ))
        .routes(routes!(
            webhook_subscriptions::get,
            webhook_subscriptions::delete
        ))
        .routes(routes!(webhook_subscriptions::deliveries))
        .routes(routes!(webhook_subscriptions::delivery))
        .routes(routes!(webhook_subscriptions::redeliver))
}

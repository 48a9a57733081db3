//! The OpenAPI 3.1 document of the public API, served at `/openapi.json`, generated with
//! utoipa from the handlers' `#[utoipa::path]` annotations and the types they exchange. The
//! test suite runs schemathesis against it (`scripts/schemathesis.sh`).

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use slotq_store::{
    bookings::Booking,
    conflicts::Conflict,
    directory::{Clinic, Patient, Practitioner},
    events::AuditRow,
    requests::RequestView,
    webhooks::{AttemptView, Delivery, Subscription},
};
use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use uuid::Uuid;

use crate::routes;

/// A page of bookings.
#[derive(Serialize, ToSchema)]
pub struct BookingPage {
    /// Bookings in (slot_start, id) order.
    pub items: Vec<Booking>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// A new webhook subscription, with its signing secret (shown this once).
#[derive(Serialize, ToSchema)]
pub struct SubscriptionCreated {
    /// The subscription.
    #[serde(flatten)]
    pub subscription: Subscription,
    /// `whsec_` + base64 key: verifies the `webhook-signature` of every delivery.
    pub secret: String,
}

/// A booking event type a webhook subscription can name: its schema is a string enum of the
/// server's own list (`webhooks::EVENT_TYPES`).
pub struct EventType;

impl utoipa::PartialSchema for EventType {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "A booking event type a webhook subscription can name.",
            ))
            .enum_values(Some(slotq_domain::events::types::ALL.iter().copied()))
            .into()
    }
}

impl ToSchema for EventType {}

/// A page of webhook subscriptions.
#[derive(Serialize, ToSchema)]
pub struct SubscriptionPage {
    /// Oldest first.
    pub items: Vec<Subscription>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// A page of a subscription's deliveries.
#[derive(Serialize, ToSchema)]
pub struct DeliveryPage {
    /// Newest first.
    pub items: Vec<Delivery>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// A delivery with every attempt made.
#[derive(Serialize, ToSchema)]
pub struct DeliveryDetail {
    /// The delivery.
    #[serde(flatten)]
    pub delivery: Delivery,
    /// Its attempts, in order.
    pub history: Vec<AttemptView>,
}

/// Open schedule conflicts.
#[derive(Serialize, ToSchema)]
pub struct ConflictList {
    /// Earliest first.
    pub items: Vec<Conflict>,
}

/// A booking's audit trail.
#[derive(Serialize, ToSchema)]
pub struct AuditTrail {
    /// The booking.
    pub booking_id: Uuid,
    /// Oldest first.
    pub items: Vec<AuditRow>,
}

/// One free slot.
#[derive(Serialize, ToSchema)]
pub struct FreeSlot {
    /// Start.
    pub start: DateTime<Utc>,
    /// End.
    pub end: DateTime<Utc>,
}

/// Free slots of one local day.
#[derive(Serialize, ToSchema)]
pub struct AvailabilityDay {
    /// Local date in the clinic's time zone.
    pub date: NaiveDate,
    /// Free slots, in order.
    pub slots: Vec<FreeSlot>,
}

/// A practitioner's availability.
#[derive(Serialize, ToSchema)]
pub struct Availability {
    /// The practitioner.
    pub practitioner_id: Uuid,
    /// The clinic's IANA time zone.
    pub timezone: String,
    /// Slot length.
    pub slot_minutes: u32,
    /// One entry per requested day.
    pub days: Vec<AvailabilityDay>,
}

/// A free slot found by search.
#[derive(Serialize, ToSchema)]
pub struct FoundSlot {
    /// Practitioner.
    pub practitioner_id: Uuid,
    /// Their clinic.
    pub clinic_id: Uuid,
    /// Their specialty.
    pub specialty: String,
    /// Start.
    pub start: DateTime<Utc>,
    /// End.
    pub end: DateTime<Utc>,
}

/// A page of search results.
#[derive(Serialize, ToSchema)]
pub struct SlotPage {
    /// Earliest first.
    pub items: Vec<FoundSlot>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Practitioners.
#[derive(Serialize, ToSchema)]
pub struct PractitionerList {
    /// In id order.
    pub items: Vec<Practitioner>,
}

/// Result of an availability rebuild.
#[derive(Serialize, ToSchema)]
pub struct RebuildResult {
    /// The practitioner.
    pub practitioner_id: Uuid,
    /// Days rebuilt.
    pub days_rebuilt: usize,
}

/// Result of resolving a conflict.
#[derive(Serialize, ToSchema)]
pub struct Resolution {
    /// The booking.
    pub booking_id: Uuid,
    /// `kept` or `cancelled`.
    pub resolution: String,
}

/// The answer to the payment provider.
#[derive(Serialize, ToSchema)]
pub struct PaymentAnswer {
    /// `confirmed`, `already_confirmed`, `cancelled`, `late_payment_refund_required` or `ignored`.
    pub outcome: String,
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(title = "slotq", description = "Queue-first booking pipeline for healthcare appointments."),
    modifiers(&Security),
    security(("bearer" = [])),
    components(schemas(crate::error::Problem, Clinic, Practitioner, Patient, Booking, RequestView, Conflict, AuditRow))
)]
pub struct ApiDoc;

/// The whole document: [`ApiDoc`] (title, security, shared schemas) plus every route of
/// `routes::api`, built once.
static DOCUMENT: std::sync::LazyLock<utoipa::openapi::OpenApi> = std::sync::LazyLock::new(|| {
    let mut doc = routes::api().split_for_parts().1;
    describe_problems(&mut doc);
    doc
});

/// Every `/v1` operation answers a [`crate::error::Problem`] for every error: described once, as the
/// shared response `Problem`, and referenced as each operation's `default` response.
fn describe_problems(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let problem = ResponseBuilder::new()
        .description("A problem (RFC 9457)")
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build();
    doc.components
        .get_or_insert_with(Default::default)
        .responses
        .insert("Problem".to_owned(), RefOr::T(problem));
    for (path, item) in doc.paths.paths.iter_mut() {
        if !path.starts_with("/v1/") {
            continue;
        }
        let operations = [
            item.get.as_mut(),
            item.post.as_mut(),
            item.put.as_mut(),
            item.delete.as_mut(),
            item.patch.as_mut(),
        ];
        for op in operations.into_iter().flatten() {
            op.responses.responses.insert(
                "default".to_owned(),
                RefOr::Ref(Ref::from_response_name("Problem")),
            );
        }
    }
}

/// `GET /openapi.json`.
pub async fn document() -> axum::Json<&'static utoipa::openapi::OpenApi> {
    axum::Json(&DOCUMENT)
}

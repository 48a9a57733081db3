//! The OpenAPI 3.1 document of the public API, served at `/openapi.json`, generated with
//! utoipa from the handlers' `#[utoipa::path]` annotations and the types they exchange. The
//! test suite runs schemathesis against it (`scripts/schemathesis.sh`).

use slotq_store::{
    bookings::Booking,
    conflicts::Conflict,
    directory::{Clinic, Patient, Practitioner},
    events::AuditRow,
    requests::RequestView,
};
use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use crate::routes;

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

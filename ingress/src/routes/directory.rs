//! Clinics, practitioners with their hours, patients.
//!
//! Longer than most modules: each handler with its request and response types and their documentation.

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use slotq_domain::{
    fields,
    slot::{ScheduleException, WeeklyHours},
};
use slotq_store::directory::{self, NewClinic};
use uuid::Uuid;

use crate::{
    AppState,
    auth::{Action, Caller, authorize, clinic_of},
    error::{ApiError, FieldError, Fields},
    extract::{AppJson, IdPath},
};

/// `POST /v1/clinics` body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClinicBody {
    #[schema(min_length = 1)]
    name: String,
    /// ISO 3166-1 alpha-2.
    #[schema(min_length = 2)]
    country_code: String,
    /// IANA time zone (`Europe/Paris`).
    #[schema(min_length = 1)]
    timezone: String,
    address: Option<String>,
    phone: Option<String>,
}

/// `POST /v1/clinics` → 201.
#[utoipa::path(post, path = "/v1/clinics", request_body = ClinicBody, responses((status = 201, body = slotq_store::directory::Clinic)))]
pub async fn create_clinic(
    State(s): State<AppState>,
    Caller(caller): Caller,
    AppJson(b): AppJson<ClinicBody>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&caller, Action::CreateClinic)?;
    let mut f = Fields::default();
    let name = f.check("name", fields::name(&b.name, 200));
    let country_code = f.check("country_code", fields::CountryCode::parse(&b.country_code));
    let tz = f.check("timezone", fields::timezone(&b.timezone));
    let address = b
        .address
        .as_deref()
        .and_then(|a| f.check("address", fields::name(a, 500)));
    let phone = b
        .phone
        .as_deref()
        .and_then(|p| f.check("phone", fields::Phone::parse(p)));
    f.finish()?;
    let (Some(name), Some(country_code), Some(tz)) = (name, country_code, tz) else {
        return Err(anyhow::anyhow!("a parsed field had no value").into());
    };
    let clinic = directory::insert_clinic(
        &s.pool,
        &NewClinic {
            name,
            country_code,
            timezone: tz.name().to_owned(),
            address,
            phone,
        },
    )
    .await?;
    Ok(created(format!("/v1/clinics/{}", clinic.id), clinic))
}

/// `GET /v1/clinics/{id}`.
#[utoipa::path(get, path = "/v1/clinics/{id}", params(("id" = String, Path, description = "id (a UUID)")), responses((status = 200, body = slotq_store::directory::Clinic)))]
pub async fn get_clinic(
    State(s): State<AppState>,
    Caller(caller): Caller,
    IdPath(id): IdPath,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&caller, Action::ReadDirectory)?;
    let clinic = directory::get_clinic(&s.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found("clinic", id))?;
    Ok(Json(clinic))
}

/// `POST /v1/clinics/{id}/practitioners` body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PractitionerBody {
    #[schema(min_length = 1)]
    name: String,
    #[schema(min_length = 1)]
    specialty: String,
    /// A multiple of 5 from 5 to 480.
    #[schema(minimum = 5, maximum = 480, multiple_of = 5)]
    slot_minutes: i64,
}

/// `POST /v1/clinics/{id}/practitioners` → 201.
#[utoipa::path(post, path = "/v1/clinics/{id}/practitioners", params(("id" = String, Path, description = "id (a UUID)")), request_body = PractitionerBody, responses((status = 201, body = slotq_store::directory::Practitioner)))]
pub async fn create_practitioner(
    State(s): State<AppState>,
    Caller(caller): Caller,
    IdPath(clinic_id): IdPath,
    AppJson(b): AppJson<PractitionerBody>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&caller, Action::ManageClinic(clinic_id))?;
    let mut f = Fields::default();
    let name = f.check("name", fields::name(&b.name, 200));
    let specialty = f.check("specialty", fields::name(&b.specialty, 100));
    let minutes = f.check("slot_minutes", fields::slot_minutes(b.slot_minutes));
    // An unknown clinic is the more fundamental problem: report it before field errors.
    if directory::get_clinic(&s.pool, clinic_id).await?.is_none() {
        return Err(ApiError::not_found("clinic", clinic_id));
    }
    f.finish()?;
    let (Some(name), Some(specialty), Some(minutes)) = (name, specialty, minutes) else {
        return Err(anyhow::anyhow!("a parsed field had no value").into());
    };
    let p = directory::insert_practitioner(&s.pool, clinic_id, &name, &specialty, minutes)
        .await?
        .ok_or_else(|| ApiError::not_found("clinic", clinic_id))?;
    Ok(created(format!("/v1/practitioners/{}", p.id), p))
}

/// `GET /v1/practitioners/{id}`.
#[utoipa::path(get, path = "/v1/practitioners/{id}", params(("id" = String, Path, description = "id (a UUID)")), responses((status = 200, body = slotq_store::directory::Practitioner)))]
pub async fn get_practitioner(
    State(s): State<AppState>,
    Caller(caller): Caller,
    IdPath(id): IdPath,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&caller, Action::ReadDirectory)?;
    let p = directory::get_practitioner(&s.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found("practitioner", id))?;
    Ok(Json(p))
}

/// Weekly hours on the wire.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WeeklyBody {
    /// ISO weekday, Monday = 1 … Sunday = 7.
    #[schema(minimum = 1, maximum = 7)]
    weekday: i64,
    /// Local `HH:MM` on a 5-minute grid.
    start: String,
    /// Local `HH:MM` on a 5-minute grid, or `24:00`.
    end: String,
}

/// A dated exception on the wire: `{date, closed: true}` or `{date, start, end}`.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExceptionBody {
    date: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    closed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    end: Option<String>,
}

/// `PUT /v1/practitioners/{id}/hours` body and `GET` response.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoursBody {
    weekly: Vec<WeeklyBody>,
    #[serde(default)]
    exceptions: Vec<ExceptionBody>,
}

/// At most this many exception entries (a year of special days with two periods each).
const MAX_EXCEPTIONS: usize = 2 * 366;

fn parse_hours(b: &HoursBody) -> Result<(Vec<WeeklyHours>, Vec<ScheduleException>), ApiError> {
    let mut f = Fields::default();
    if b.weekly.len() > 7 * 48 {
        f.0.push(FieldError::new("weekly", "invalid", "too many intervals"));
    }
    if b.exceptions.len() > MAX_EXCEPTIONS {
        f.0.push(FieldError::new(
            "exceptions",
            "invalid",
            format!("at most {MAX_EXCEPTIONS} exceptions"),
        ));
    }
    let mut weekly = Vec::with_capacity(b.weekly.len());
    for (i, w) in b.weekly.iter().enumerate() {
        let day = f.check(
            &format!("weekly[{i}].weekday"),
            if (1..=7).contains(&w.weekday) {
                Ok(w.weekday as u8)
            } else {
                Err("must be 1 (Monday) to 7 (Sunday)".into())
            },
        );
        let start = f.check(&format!("weekly[{i}].start"), fields::local_time(&w.start));
        let end = f.check(&format!("weekly[{i}].end"), fields::local_end_time(&w.end));
        if let (Some(weekday), Some(start), Some(end)) = (day, start, end) {
            if start >= end {
                f.0.push(FieldError::new(
                    format!("weekly[{i}].end"),
                    "invalid",
                    "must be after start",
                ));
            } else {
                weekly.push((
                    i,
                    WeeklyHours {
                        weekday,
                        start,
                        end,
                    },
                ));
            }
        }
    }
    for (i, (_, a)) in weekly.iter().enumerate() {
        if let Some((j, _)) = weekly[i + 1..]
            .iter()
            .find(|(_, b)| b.weekday == a.weekday && a.start < b.end && b.start < a.end)
        {
            f.0.push(FieldError::new(
                format!("weekly[{j}]"),
                "overlap",
                "overlaps another interval of the same weekday",
            ));
        }
    }
    let mut exceptions: Vec<ScheduleException> = Vec::with_capacity(b.exceptions.len());
    for (i, e) in b.exceptions.iter().enumerate() {
        let date = f.check(
            &format!("exceptions[{i}].date"),
            NaiveDate::parse_from_str(&e.date, "%Y-%m-%d")
                .map_err(|_| "must be a date YYYY-MM-DD".to_string()),
        );
        let hours = match (e.closed, &e.start, &e.end) {
            (Some(true), None, None) => Some(None),
            (None | Some(false), Some(s), Some(en)) => {
                let s = f.check(&format!("exceptions[{i}].start"), fields::local_time(s));
                let en = f.check(&format!("exceptions[{i}].end"), fields::local_end_time(en));
                match (s, en) {
                    (Some(s), Some(en)) if s < en => Some(Some((s, en))),
                    (Some(_), Some(_)) => {
                        f.0.push(FieldError::new(
                            format!("exceptions[{i}].end"),
                            "invalid",
                            "must be after start",
                        ));
                        None
                    }
                    _ => None,
                }
            }
            _ => {
                f.0.push(FieldError::new(
                    format!("exceptions[{i}]"),
                    "invalid",
                    "give either \"closed\": true or both \"start\" and \"end\"",
                ));
                None
            }
        };
        if let (Some(date), Some(hours)) = (date, hours) {
            // A date may have several periods, which must not overlap, or be closed alone.
            let same_date = || exceptions.iter().filter(|e| e.date == date);
            let closed_clash = same_date().next().is_some()
                && (hours.is_none() || same_date().any(|e| e.hours.is_none()));
            let overlap = hours.is_some_and(|(start, end)| {
                same_date().any(|e| e.hours.is_some_and(|(a, b)| a < end && start < b))
            });
            if closed_clash {
                f.0.push(FieldError::new(
                    format!("exceptions[{i}].date"),
                    "duplicate",
                    "date given twice: a closed date cannot also have periods",
                ));
            } else if overlap {
                f.0.push(FieldError::new(
                    format!("exceptions[{i}]"),
                    "overlap",
                    "overlaps another period of the same date",
                ));
            } else {
                exceptions.push(ScheduleException { date, hours });
            }
        }
    }
    f.finish()?;
    Ok((weekly.into_iter().map(|(_, w)| w).collect(), exceptions))
}

fn hours_body(weekly: &[WeeklyHours], exceptions: &[ScheduleException]) -> HoursBody {
    HoursBody {
        weekly: weekly
            .iter()
            .map(|w| WeeklyBody {
                weekday: i64::from(w.weekday),
                start: fields::hhmm(w.start),
                end: fields::hhmm(w.end),
            })
            .collect(),
        exceptions: exceptions
            .iter()
            .map(|e| ExceptionBody {
                date: e.date.to_string(),
                closed: e.hours.is_none().then_some(true),
                start: e.hours.map(|h| fields::hhmm(h.0)),
                end: e.hours.map(|h| fields::hhmm(h.1)),
            })
            .collect(),
    }
}

/// `PUT /v1/practitioners/{id}/hours` response: the stored hours and the bookings the new
/// hours no longer cover (listed by `GET /v1/practitioners/{id}/conflicts`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct PutHoursResponse {
    #[serde(flatten)]
    hours: HoursBody,
    new_conflicts: Vec<Uuid>,
}

/// `PUT /v1/practitioners/{id}/hours`: replaces weekly hours and exceptions.
#[utoipa::path(put, path = "/v1/practitioners/{id}/hours", params(("id" = String, Path, description = "id (a UUID)")), request_body = HoursBody, responses((status = 200, body = PutHoursResponse)))]
pub async fn put_hours(
    State(s): State<AppState>,
    Caller(caller): Caller,
    IdPath(id): IdPath,
    AppJson(b): AppJson<HoursBody>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&caller, Action::ManageClinic(clinic_of(&s, id).await?))?;
    let mut current = directory::load_schedules(&s.pool, &[id]).await?;
    let mut schedule = current
        .remove(&id)
        .ok_or_else(|| ApiError::not_found("practitioner", id))?
        .schedule;
    let (weekly, exceptions) = parse_hours(&b)?;
    schedule.weekly = weekly;
    schedule.exceptions = exceptions;
    let new_conflicts = directory::replace_hours(&s.pool, id, &schedule).await?;
    s.lookup.forget_schedule(id);
    Ok(Json(PutHoursResponse {
        hours: hours_body(&schedule.weekly, &schedule.exceptions),
        new_conflicts,
    }))
}

/// `GET /v1/practitioners/{id}/conflicts`: active bookings outside the current hours, open.
#[utoipa::path(get, path = "/v1/practitioners/{id}/conflicts", params(("id" = String, Path, description = "id (a UUID)")), responses((status = 200, body = crate::views::ConflictList)))]
pub async fn conflicts(
    State(s): State<AppState>,
    Caller(caller): Caller,
    IdPath(id): IdPath,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&caller, Action::ReadClinic(clinic_of(&s, id).await?))?;
    if directory::get_practitioner(&s.pool, id).await?.is_none() {
        return Err(ApiError::not_found("practitioner", id));
    }
    let items = slotq_store::conflicts::open(&s.pool, id).await?;
    Ok(Json(crate::views::ConflictList { items }))
}

/// `POST /v1/practitioners/{id}/conflicts/{booking_id}/resolve` body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveBody {
    action: String,
    reason: Option<String>,
}

/// Resolves a conflict: `keep` the booking, or `cancel` it (with a reason). Rescheduling goes
/// through `POST /v1/bookings/{id}/reschedule` and closes the conflict when it succeeds.
#[utoipa::path(post, path = "/v1/practitioners/{id}/conflicts/{booking_id}/resolve", params(("id" = String, Path, description = "id (a UUID)"), ("booking_id" = String, Path, description = "id (a UUID)")), request_body = ResolveBody, responses((status = 200, body = crate::views::Resolution)))]
pub async fn resolve_conflict(
    State(s): State<AppState>,
    Caller(caller): Caller,
    axum::extract::Path((pid, bid)): axum::extract::Path<(String, String)>,
    AppJson(b): AppJson<ResolveBody>,
) -> Result<impl IntoResponse, ApiError> {
    let (Ok(pid), Ok(bid)) = (pid.parse::<Uuid>(), bid.parse::<Uuid>()) else {
        return Err(ApiError::NotFound("no such conflict".into()));
    };
    authorize(&caller, Action::ManageClinic(clinic_of(&s, pid).await?))?;
    let open = slotq_store::conflicts::open(&s.pool, pid).await?;
    if !open.iter().any(|c| c.booking_id == bid) {
        return Err(ApiError::NotFound(
            "no open conflict for this booking".into(),
        ));
    }
    match b.action.as_str() {
        "keep" => {
            slotq_store::conflicts::keep(&s.pool, pid, bid).await?;
            Ok(Json(crate::views::Resolution {
                booking_id: bid,
                resolution: "kept",
            }))
        }
        "cancel" => {
            let reason = b.reason.as_deref().unwrap_or("schedule_changed");
            let actor = crate::auth::actor(&caller, None);
            let booking = slotq_store::bookings::cancel(&s.pool, bid, Some(reason), &actor).await?;
            crate::routes::bookings::after_change(&s, &booking).await;
            Ok(Json(crate::views::Resolution {
                booking_id: bid,
                resolution: "cancelled",
            }))
        }
        _ => Err(ApiError::invalid_field(
            "action",
            "invalid",
            "must be keep or cancel",
        )),
    }
}

/// `GET /v1/practitioners/{id}/hours`.
#[utoipa::path(get, path = "/v1/practitioners/{id}/hours", params(("id" = String, Path, description = "id (a UUID)")), responses((status = 200, body = HoursBody)))]
pub async fn get_hours(
    State(s): State<AppState>,
    Caller(caller): Caller,
    IdPath(id): IdPath,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&caller, Action::ReadDirectory)?;
    let mut all = directory::load_schedules(&s.pool, &[id]).await?;
    let p = all
        .remove(&id)
        .ok_or_else(|| ApiError::not_found("practitioner", id))?;
    Ok(Json(hours_body(&p.schedule.weekly, &p.schedule.exceptions)))
}

/// `POST /v1/patients` body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatientBody {
    #[schema(min_length = 1)]
    name: String,
    #[schema(min_length = 1)]
    email: String,
    phone: Option<String>,
    /// ISO 3166-1 alpha-2.
    #[schema(min_length = 2)]
    country_code: String,
}

/// `POST /v1/patients` → 201; a registered e-mail → 409.
#[utoipa::path(post, path = "/v1/patients", request_body = PatientBody, responses((status = 201, body = slotq_store::directory::Patient)))]
pub async fn create_patient(
    State(s): State<AppState>,
    Caller(caller): Caller,
    AppJson(b): AppJson<PatientBody>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&caller, Action::CreatePatient)?;
    let mut f = Fields::default();
    let name = f.check("name", fields::name(&b.name, 200));
    let email = f.check("email", fields::Email::parse(&b.email));
    let phone = b
        .phone
        .as_deref()
        .and_then(|p| f.check("phone", fields::Phone::parse(p)));
    let country = f.check("country_code", fields::CountryCode::parse(&b.country_code));
    f.finish()?;
    let (Some(name), Some(email), Some(country)) = (name, email, country) else {
        return Err(anyhow::anyhow!("a parsed field had no value").into());
    };
    let p = directory::insert_patient(&s.pool, &s.pii, &country, &name, &email, phone.as_ref())
        .await?
        .ok_or(ApiError::Conflict {
            code: "email_taken",
            detail: "a patient with this e-mail address exists".into(),
        })?;
    Ok(created(format!("/v1/patients/{}", p.id), p))
}

/// `GET /v1/patients/{id}`.
#[utoipa::path(get, path = "/v1/patients/{id}", params(("id" = String, Path, description = "id (a UUID)")), responses((status = 200, body = slotq_store::directory::Patient)))]
pub async fn get_patient(
    State(s): State<AppState>,
    Caller(caller): Caller,
    IdPath(id): IdPath,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&caller, Action::ReadPatient(id))?;
    let p = directory::get_patient(&s.pool, &s.pii, id)
        .await?
        .ok_or_else(|| ApiError::not_found("patient", id))?;
    Ok(Json(p))
}

fn created<T: Serialize>(location: String, body: T) -> impl IntoResponse {
    (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(body),
    )
}

//! Finding a free slot: one practitioner's availability, search across practitioners, and the
//! practitioner directory. Answers come from the schedules and the Redis bitmaps
//! (`slotq_redis::availability`), not from scanning bookings.

use axum::{Json, extract::State, response::IntoResponse};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::Deserialize;
use slotq_domain::fields::CountryCode;
use slotq_redis::availability;
use slotq_store::directory;
use uuid::Uuid;

use super::bookings::{not_a_cursor, parse_instant, parse_upper_bound};
use crate::views::{
    Availability, AvailabilityDay, FoundSlot, FreeSlot, PractitionerList, RebuildResult, SlotPage,
};
use crate::{
    AppState,
    auth::{Action, Caller, authorize, clinic_of},
    error::{ApiError, FieldError, Fields},
    extract::{AppQuery, IdPath},
};

const MAX_DAYS: i64 = 31;

/// The last date an RFC 3339 date can name.
const LAST_DATE: NaiveDate = match NaiveDate::from_ymd_opt(9999, 12, 31) {
    Some(d) => d,
    None => NaiveDate::MIN,
};

/// `?from=YYYY-MM-DD&days=N`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AvailabilityQuery {
    from: Option<String>,
    /// 1–31 (default 7).
    #[param(minimum = 1, maximum = 31)]
    days: Option<i64>,
}

/// `GET /v1/practitioners/{id}/availability?from=&days=`: free slots grouped by local day
/// (the clinic's time zone), `days` ≤ 31 (default 7), `from` defaults to today.
#[utoipa::path(get, path = "/v1/practitioners/{id}/availability", params(("id" = String, Path, description = "id (a UUID)"), AvailabilityQuery), responses((status = 200, body = crate::views::Availability)))]
pub async fn availability(
    State(s): State<AppState>,
    Caller(caller): Caller,
    IdPath(id): IdPath,
    AppQuery(q): AppQuery<AvailabilityQuery>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&caller, Action::ReadDirectory)?;
    let p = s
        .lookup
        .schedule(id)
        .await?
        .ok_or_else(|| ApiError::not_found("practitioner", id))?;
    let tz = p.schedule.tz;
    let now = Utc::now();
    let mut errors = Vec::new();
    let from = match q.from.as_deref() {
        None => now.with_timezone(&tz).date_naive(),
        Some(raw) => NaiveDate::parse_from_str(raw, "%Y-%m-%d").unwrap_or_else(|_| {
            errors.push(FieldError::new(
                "from",
                "invalid",
                "must be a date YYYY-MM-DD",
            ));
            NaiveDate::MIN
        }),
    };
    let days = q.days.unwrap_or(7);
    if !(1..=MAX_DAYS).contains(&days) {
        errors.push(FieldError::new(
            "days",
            "invalid",
            format!("must be between 1 and {MAX_DAYS}"),
        ));
    } else if from != NaiveDate::MIN
        && from
            .checked_add_days(chrono::Days::new(days.unsigned_abs()))
            .is_none_or(|end| end > LAST_DATE)
    {
        // RFC 3339 dates have four-digit years.
        errors.push(FieldError::new(
            "from",
            "invalid",
            "the window must end by 9999-12-31",
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let horizon = now + Duration::days(i64::from(s.config.booking_horizon_days));
    let dates: Vec<NaiveDate> = from.iter_days().take(days as usize).collect();
    let per_day: Vec<(NaiveDate, Vec<DateTime<Utc>>)> = dates
        .iter()
        .map(|d| {
            (
                *d,
                p.schedule
                    .slots_on(*d)
                    .into_iter()
                    .filter(|t| *t > now && *t <= horizon)
                    .collect(),
            )
        })
        .collect();
    let mut utc_days: Vec<NaiveDate> = per_day
        .iter()
        .flat_map(|(_, v)| v.iter().map(|t| t.date_naive()))
        .collect();
    utc_days.sort_unstable();
    utc_days.dedup();
    let pairs: Vec<(Uuid, NaiveDate)> = utc_days.iter().map(|d| (id, *d)).collect();
    let taken = availability::taken(&s.pool, &s.fast, &pairs).await?;
    let len = Duration::minutes(i64::from(p.schedule.slot_minutes));
    let days: Vec<AvailabilityDay> = per_day
        .into_iter()
        .map(|(date, slots)| AvailabilityDay {
            date,
            slots: slots
                .into_iter()
                .filter(|t| !taken.is_taken(id, *t))
                .map(|start| FreeSlot {
                    start,
                    end: start + len,
                })
                .collect(),
        })
        .collect();
    Ok(Json(Availability {
        practitioner_id: id,
        timezone: tz.name().to_owned(),
        slot_minutes: p.schedule.slot_minutes,
        days,
    }))
}

/// `POST /v1/practitioners/{id}/availability/rebuild`: rebuilds the bitmaps of the booking
/// horizon from PostgreSQL (ops; normally a miss rebuilds on its own).
#[utoipa::path(post, path = "/v1/practitioners/{id}/availability/rebuild", params(("id" = String, Path, description = "id (a UUID)")), responses((status = 200, body = crate::views::RebuildResult)))]
pub async fn rebuild(
    State(s): State<AppState>,
    Caller(caller): Caller,
    IdPath(id): IdPath,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&caller, Action::ReadClinic(clinic_of(&s, id).await?))?;
    if s.lookup.schedule(id).await?.is_none() {
        return Err(ApiError::not_found("practitioner", id));
    }
    let today = Utc::now().date_naive();
    let days: Vec<NaiveDate> = today
        .iter_days()
        .take(s.config.booking_horizon_days as usize + 2)
        .collect();
    let rebuilt = availability::rebuild_days(&s.pool, &s.fast, id, &days).await?;
    Ok(Json(RebuildResult {
        practitioner_id: id,
        days_rebuilt: rebuilt,
    }))
}

/// `GET /v1/slots` parameters.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    specialty: Option<String>,
    clinic_id: Option<Uuid>,
    country: Option<String>,
    /// A date (`YYYY-MM-DD`, from 00:00 UTC of that day) or an RFC 3339 instant; default now.
    from: Option<String>,
    /// A date (that UTC day included) or an RFC 3339 instant (exclusive); default `from` + 7
    /// days, at most 31 days after `from`.
    to: Option<String>,
    /// 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
    cursor: Option<String>,
}

const MAX_PRACTITIONERS: i64 = 5_000;

/// `GET /v1/slots?specialty=&clinic_id=&country=&from=&to=&limit=&cursor=`: free slots across
/// practitioners, earliest first (ties by practitioner id), cursor-paginated. `from` defaults
/// to now, `to` to `from` + 7 days (at most 31 days), `limit` to 20 (at most 100).
#[utoipa::path(get, path = "/v1/slots", params(SearchQuery), responses((status = 200, body = crate::views::SlotPage)))]
pub async fn search(
    State(s): State<AppState>,
    Caller(caller): Caller,
    AppQuery(q): AppQuery<SearchQuery>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&caller, Action::ReadDirectory)?;
    let now = Utc::now();
    let mut f = Fields::default();
    // The window is validated as given, then clamped to the future: a window wholly in the
    // past is valid and has no free slots.
    let from = f
        .optional("from", q.from.as_deref(), parse_instant)
        .unwrap_or(now);
    let to = f
        .optional("to", q.to.as_deref(), parse_upper_bound)
        .unwrap_or(from + Duration::days(7));
    if to <= from || to - from > Duration::days(MAX_DAYS) {
        f.0.push(FieldError::new(
            "to",
            "invalid",
            format!("must be after from, at most {MAX_DAYS} days later"),
        ));
    }
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        f.0.push(FieldError::new(
            "limit",
            "invalid",
            "must be between 1 and 100",
        ));
    }
    let after = f.optional("cursor", q.cursor.as_deref(), |c| {
        parse_cursor(c).ok_or_else(not_a_cursor)
    });
    let country = f.optional(
        "country",
        q.country.as_deref(),
        slotq_domain::fields::CountryCode::parse,
    );
    f.finish()?;
    let from = from.max(now);
    let practitioners = directory::search_practitioners(
        &s.pool,
        q.specialty.as_deref(),
        q.clinic_id,
        country.as_ref().map(CountryCode::as_str),
        MAX_PRACTITIONERS,
    )
    .await?;
    let ids: Vec<Uuid> = practitioners.iter().map(|p| p.id).collect();
    let schedules = s.lookup.schedules(&ids).await?;
    let horizon = now + Duration::days(i64::from(s.config.booking_horizon_days));
    let to = to.min(horizon + Duration::seconds(1));
    let after = after.unwrap_or((from - Duration::seconds(1), Uuid::nil()));

    // One slot more than the page: whether another page follows.
    let want = limit + 1;
    let mut found: Vec<FoundSlot> = Vec::with_capacity(want);
    // Windows of a few hours, earliest first: a page is usually found in the first one.
    let mut window = from;
    while found.len() < want && window < to {
        let window_end = (window + Duration::hours(6)).min(to);
        let mut candidates: Vec<(DateTime<Utc>, usize)> = Vec::new();
        for (i, p) in practitioners.iter().enumerate() {
            let Some(sched) = schedules.get(&p.id) else {
                continue;
            };
            for t in sched.schedule.slots_between(window, window_end) {
                if t > now && (t, p.id) > after {
                    candidates.push((t, i));
                }
            }
        }
        candidates.sort_by_key(|(t, i)| (*t, practitioners[*i].id));
        candidates.dedup();
        // Bitmaps are read for the earliest candidates first, a chunk at a time: a page of
        // 20 usually needs a handful of bitmaps, not one per practitioner.
        let mut taken = availability::Taken::default();
        'chunks: for chunk in candidates.chunks((want * 2).max(64)) {
            let mut pairs: Vec<(Uuid, NaiveDate)> = chunk
                .iter()
                .map(|(t, i)| (practitioners[*i].id, t.date_naive()))
                .filter(|(p, d)| !taken.has(*p, *d))
                .collect();
            pairs.sort_unstable();
            pairs.dedup();
            taken.extend(availability::taken(&s.pool, &s.fast, &pairs).await?);
            for (t, i) in chunk {
                let p = &practitioners[*i];
                if taken.is_taken(p.id, *t) {
                    continue;
                }
                let len = Duration::minutes(i64::from(p.slot_minutes));
                found.push(FoundSlot {
                    practitioner_id: p.id,
                    clinic_id: p.clinic_id,
                    specialty: p.specialty.clone(),
                    start: *t,
                    end: *t + len,
                });
                if found.len() == want {
                    break 'chunks;
                }
            }
        }
        window = window_end;
    }
    let (found, next_cursor) = super::page(found, limit, |f| {
        format!("{}_{}", f.start.timestamp(), f.practitioner_id)
    });
    Ok(Json(SlotPage {
        items: found,
        next_cursor,
    }))
}

fn parse_cursor(raw: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let (secs, id) = raw.split_once('_')?;
    Some((
        DateTime::from_timestamp(secs.parse().ok()?, 0)?,
        id.parse().ok()?,
    ))
}

/// `GET /v1/practitioners` parameters.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PractitionerQuery {
    specialty: Option<String>,
    clinic_id: Option<Uuid>,
    country: Option<String>,
    /// 1–1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// `GET /v1/practitioners?specialty=&clinic_id=&country=&limit=`.
#[utoipa::path(get, path = "/v1/practitioners", params(PractitionerQuery), responses((status = 200, body = crate::views::PractitionerList)))]
pub async fn practitioners(
    State(s): State<AppState>,
    Caller(caller): Caller,
    AppQuery(q): AppQuery<PractitionerQuery>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&caller, Action::ReadDirectory)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid_field(
            "limit",
            "invalid",
            "must be between 1 and 1000",
        ));
    }
    let country = match q
        .country
        .as_deref()
        .map(slotq_domain::fields::CountryCode::parse)
    {
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => return Err(ApiError::invalid_field("country", "invalid", e)),
        None => None,
    };
    let items = directory::search_practitioners(
        &s.pool,
        q.specialty.as_deref(),
        q.clinic_id,
        country.as_ref().map(CountryCode::as_str),
        limit,
    )
    .await?;
    Ok(Json(PractitionerList { items }))
}

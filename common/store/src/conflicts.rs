//! Schedule conflicts: active bookings that new hours or exceptions no longer cover. They are
//! recorded (with a `booking.schedule_conflict` event), listed for the clinic, and closed when
//! the clinic keeps, cancels or reschedules the booking, or when new hours cover it again.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    bookings::Booking,
    events::{NewEvent, insert_events, types},
};
use slotq_domain::{slot::Schedule, status::BookingStatus};

/// An open conflict as listed by the API.
#[derive(Clone, Debug, Serialize, FromRow, utoipa::ToSchema)]
pub struct Conflict {
    /// The booking the hours no longer cover.
    pub booking_id: Uuid,
    /// Its slot.
    pub slot_start: DateTime<Utc>,
    /// Its status (held or confirmed).
    pub status: BookingStatus,
    /// Its patient.
    pub patient_id: Uuid,
    /// When the conflict was detected.
    pub detected_at: DateTime<Utc>,
}

/// After a practitioner's hours changed (inside that transaction): records a conflict for
/// every future active booking `schedule` no longer covers, and closes open conflicts whose
/// booking fits again. Returns the newly conflicting booking ids.
pub async fn detect(
    conn: &mut PgConnection,
    practitioner_id: Uuid,
    schedule: &Schedule,
) -> Result<Vec<Uuid>, sqlx::Error> {
    // Active bookings without the country: `status::text` (`db` module docs).
    let active: Vec<Booking> = sqlx::query_as(
        "SELECT * FROM bookings WHERE practitioner_id = $1 AND status::text IN ('held', 'confirmed') AND slot_start > now()",
    )
    .bind(practitioner_id)
    .fetch_all(&mut *conn)
    .await?;
    let (misfits, fits): (Vec<&Booking>, Vec<&Booking>) = active
        .iter()
        .partition(|b| schedule.fits(b.slot_start).is_err());
    let fitting: Vec<Uuid> = fits.iter().map(|b| b.id).collect();
    sqlx::query(
        "UPDATE schedule_conflicts SET resolved_at = now(), resolution = 'gone'
         WHERE booking_id = ANY($1) AND resolved_at IS NULL",
    )
    .bind(&fitting)
    .execute(&mut *conn)
    .await?;
    let ids: Vec<Uuid> = misfits.iter().map(|b| b.id).collect();
    let starts: Vec<DateTime<Utc>> = misfits.iter().map(|b| b.slot_start).collect();
    let new: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO schedule_conflicts (booking_id, practitioner_id, slot_start)
         SELECT b, $1, s FROM unnest($2::uuid[], $3::timestamptz[]) AS u(b, s)
         ON CONFLICT (booking_id) DO UPDATE SET detected_at = now(), resolved_at = NULL, resolution = NULL,
                                                 slot_start = EXCLUDED.slot_start
             WHERE schedule_conflicts.resolution IN ('gone', 'rescheduled')
         RETURNING booking_id",
    )
    .bind(practitioner_id)
    .bind(&ids)
    .bind(&starts)
    .fetch_all(&mut *conn)
    .await?;
    let events: Vec<NewEvent> = misfits
        .iter()
        .filter(|b| new.contains(&b.id))
        .map(|b| NewEvent {
            event_type: types::SCHEDULE_CONFLICT,
            data: b.event_data(Some("outside_new_hours".into())),
        })
        .collect();
    insert_events(conn, &events).await?;
    Ok(new)
}

/// How long after an hours change the scheduler looks for conflicts again. Batches and
/// replacements of hours serialize on the hours lock (holds.rs), so the change itself lists
/// every hold decided on the old hours; this second look is a safety net (a batch of a worker
/// version without the lock, a hold written by hand).
pub const RECHECK_AFTER_SECS: f64 = 5.0;

/// Runs [`detect`] once more for every practitioner whose hours changed at least
/// [`RECHECK_AFTER_SECS`] ago and have not been re-checked since: holds committed on the old
/// hours after the change are recorded as conflicts (with their event) too. Idempotent;
/// returns the newly conflicting bookings.
pub async fn recheck(pool: &PgPool) -> Result<Vec<Uuid>, sqlx::Error> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM practitioners
         WHERE hours_changed_at IS NOT NULL
           AND hours_changed_at <= now() - make_interval(secs => $1)
           AND (hours_rechecked_at IS NULL OR hours_rechecked_at < hours_changed_at)
         LIMIT 100",
    )
    .bind(RECHECK_AFTER_SECS)
    .fetch_all(pool)
    .await?;
    let mut new = Vec::new();
    for id in ids {
        let mut tx = pool.begin().await?;
        // Marks the change seen, under the lock a replacement of the hours takes (`NO KEY
        // UPDATE`): never judged against hours being replaced, and nothing else is blocked.
        sqlx::query("UPDATE practitioners SET hours_rechecked_at = hours_changed_at WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let schedules = crate::directory::load_schedules(&mut *tx, &[id]).await?;
        if let Some(p) = schedules.get(&id) {
            new.extend(detect(&mut tx, id, &p.schedule).await?);
        }
        tx.commit().await?;
    }
    Ok(new)
}

/// Open conflicts of a practitioner whose booking is still active, earliest first.
pub async fn open(pool: &PgPool, practitioner_id: Uuid) -> Result<Vec<Conflict>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.booking_id, b.slot_start, b.status, b.patient_id, c.detected_at
         FROM schedule_conflicts c JOIN bookings b ON b.id = c.booking_id
         WHERE c.practitioner_id = $1 AND c.resolved_at IS NULL AND b.status IN ('held', 'confirmed')
         ORDER BY b.slot_start, c.booking_id",
    )
    .bind(practitioner_id)
    .fetch_all(pool)
    .await
}

/// Closes a booking's open conflict (if any) with `resolution`.
pub async fn close(
    conn: &mut PgConnection,
    booking_id: Uuid,
    resolution: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE schedule_conflicts SET resolved_at = now(), resolution = $2
         WHERE booking_id = $1 AND resolved_at IS NULL",
    )
    .bind(booking_id)
    .bind(resolution)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// The clinic keeps the booking despite the new hours. `false` when there is no open conflict.
pub async fn keep(
    pool: &PgPool,
    practitioner_id: Uuid,
    booking_id: Uuid,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE schedule_conflicts SET resolved_at = now(), resolution = 'kept'
         WHERE booking_id = $1 AND practitioner_id = $2 AND resolved_at IS NULL",
    )
    .bind(booking_id)
    .bind(practitioner_id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

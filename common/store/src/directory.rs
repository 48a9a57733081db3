//! Clinics, practitioners with their hours, and patients.
//!
//! Longer than most modules: every statement on clinics, practitioners, hours and patients lives here (one module per table family).

use slotq_domain::fields::{CountryCode, Email, Phone};
use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

use slotq_domain::slot::{Schedule, ScheduleException, WeeklyHours};
use slotq_security::pii::PiiKeys;

/// A clinic as stored and returned by the API.
#[derive(Clone, Debug, Serialize, FromRow, utoipa::ToSchema)]
pub struct Clinic {
    /// Id.
    pub id: Uuid,
    /// ISO country code; the bookings partition key.
    pub country_code: String,
    /// Display name.
    pub name: String,
    /// IANA time zone of the clinic's working hours.
    pub timezone: String,
    /// Postal address.
    pub address: Option<String>,
    /// Phone number.
    pub phone: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// Input of [`insert_clinic`] (already validated).
#[derive(Clone, Debug)]
pub struct NewClinic {
    /// Display name.
    pub name: String,
    /// ISO country code.
    pub country_code: CountryCode,
    /// IANA time zone.
    pub timezone: String,
    /// Postal address.
    pub address: Option<String>,
    /// Phone number.
    pub phone: Option<Phone>,
}

/// A practitioner as stored and returned by the API.
#[derive(Clone, Debug, Serialize, FromRow, utoipa::ToSchema)]
pub struct Practitioner {
    /// Id.
    pub id: Uuid,
    /// The clinic they work at.
    pub clinic_id: Uuid,
    /// Country of the clinic (copied: it routes bookings to their partition).
    pub country_code: String,
    /// Display name.
    pub name: String,
    /// Specialty, free text.
    pub specialty: String,
    /// Slot length.
    pub slot_minutes: i32,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// A patient as returned by the API (decrypted; stored encrypted, see [`slotq_security::pii`]).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Patient {
    /// Id.
    pub id: Uuid,
    /// ISO country code.
    pub country_code: String,
    /// Name.
    pub name: String,
    /// E-mail, unique (case-insensitive).
    pub email: String,
    /// Phone number.
    pub phone: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

#[derive(FromRow)]
struct PatientRow {
    id: Uuid,
    country_code: String,
    name_enc: Option<Vec<u8>>,
    email_enc: Option<Vec<u8>>,
    phone_enc: Option<Vec<u8>>,
    created_at: DateTime<Utc>,
}

impl PatientRow {
    fn decrypt(self, keys: &PiiKeys) -> Result<Patient, sqlx::Error> {
        let open = |v: Option<Vec<u8>>| -> Result<Option<String>, sqlx::Error> {
            v.map(|v| keys.decrypt(&v))
                .transpose()
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))
        };
        Ok(Patient {
            id: self.id,
            country_code: self.country_code,
            name: open(self.name_enc)?.unwrap_or_default(),
            email: open(self.email_enc)?.unwrap_or_default(),
            phone: open(self.phone_enc)?,
            created_at: self.created_at,
        })
    }
}

/// A practitioner's schedule with what routes their bookings.
#[derive(Clone, Debug)]
pub struct PractitionerSchedule {
    /// Country (bookings partition).
    pub country_code: String,
    /// The clinic (for authorization).
    pub clinic_id: Uuid,
    /// Hours, exceptions, slot length and time zone.
    pub schedule: Schedule,
    /// When the hours last changed (`hours_changed_at`) as this read saw it: a batch decides
    /// on these hours only if it is still so under the practitioner's hours lock
    /// ([`crate::holds::commit_batch`]).
    pub hours_version: Option<DateTime<Utc>>,
}

/// Inserts a clinic.
pub async fn insert_clinic(pool: &PgPool, c: &NewClinic) -> Result<Clinic, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO clinics (id, country_code, name, timezone, address, phone)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
    )
    .bind(Uuid::now_v7())
    .bind(c.country_code.as_str())
    .bind(&c.name)
    .bind(&c.timezone)
    .bind(&c.address)
    .bind(c.phone.as_ref().map(Phone::as_str))
    .fetch_one(pool)
    .await
}

/// Reads a clinic.
pub async fn get_clinic(pool: &PgPool, id: Uuid) -> Result<Option<Clinic>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM clinics WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// Inserts a practitioner into a clinic; `None` when the clinic does not exist.
pub async fn insert_practitioner(
    pool: &PgPool,
    clinic_id: Uuid,
    name: &str,
    specialty: &str,
    slot_minutes: u32,
) -> Result<Option<Practitioner>, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO practitioners (id, clinic_id, country_code, name, specialty, slot_minutes)
         SELECT $1, c.id, c.country_code, $3, $4, $5 FROM clinics c WHERE c.id = $2
         RETURNING *",
    )
    .bind(Uuid::now_v7())
    .bind(clinic_id)
    .bind(name)
    .bind(specialty)
    .bind(slot_minutes as i32)
    .fetch_optional(pool)
    .await
}

/// Reads a practitioner.
pub async fn get_practitioner(
    pool: &PgPool,
    id: Uuid,
) -> Result<Option<Practitioner>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM practitioners WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// Replaces a practitioner's weekly hours and exceptions in one transaction, and records a
/// schedule conflict for every active booking the new hours no longer cover (see
/// [`crate::conflicts`]). `schedule` is the practitioner's schedule with the new hours.
/// Returns the bookings newly in conflict.
pub async fn replace_hours(
    pool: &PgPool,
    practitioner_id: Uuid,
    schedule: &Schedule,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let (weekly, exceptions) = (&schedule.weekly, &schedule.exceptions);
    let mut tx = pool.begin().await?;
    // The hours lock, exclusively: a batch deciding on this practitioner's hours holds it
    // shared, so it either commits before this replacement (its holds are then checked for
    // conflicts below) or decides after it, on the new hours (holds.rs).
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(crate::holds::hours_lock_key(practitioner_id))
        .execute(&mut *tx)
        .await?;
    // Records when (the batches' version check and the scheduler's re-check read it), at the
    // clock and not at the transaction's start: a replacement that waited for the lock above
    // behind another one then records the later time, so the re-check cannot mistake it for
    // a change it has already seen. Concurrent replacements wait for each other on that lock.
    sqlx::query("UPDATE practitioners SET hours_changed_at = clock_timestamp() WHERE id = $1")
        .bind(practitioner_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM practitioner_hours WHERE practitioner_id = $1")
        .bind(practitioner_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM schedule_exceptions WHERE practitioner_id = $1")
        .bind(practitioner_id)
        .execute(&mut *tx)
        .await?;
    let days: Vec<i16> = weekly.iter().map(|h| i16::from(h.weekday)).collect();
    let starts: Vec<NaiveTime> = weekly.iter().map(|h| h.start).collect();
    let ends: Vec<NaiveTime> = weekly.iter().map(|h| h.end).collect();
    sqlx::query(
        "INSERT INTO practitioner_hours (practitioner_id, weekday, start_local, end_local)
         SELECT $1, d, s, e FROM unnest($2::int2[], $3::time[], $4::time[]) AS u(d, s, e)",
    )
    .bind(practitioner_id)
    .bind(&days)
    .bind(&starts)
    .bind(&ends)
    .execute(&mut *tx)
    .await?;
    let dates: Vec<NaiveDate> = exceptions.iter().map(|e| e.date).collect();
    let closed: Vec<bool> = exceptions.iter().map(|e| e.hours.is_none()).collect();
    let ex_starts: Vec<Option<NaiveTime>> =
        exceptions.iter().map(|e| e.hours.map(|h| h.0)).collect();
    let ex_ends: Vec<Option<NaiveTime>> = exceptions.iter().map(|e| e.hours.map(|h| h.1)).collect();
    sqlx::query(
        "INSERT INTO schedule_exceptions (practitioner_id, day, closed, start_local, end_local)
         SELECT $1, d, c, s, e FROM unnest($2::date[], $3::bool[], $4::time[], $5::time[]) AS u(d, c, s, e)",
    )
    .bind(practitioner_id)
    .bind(&dates)
    .bind(&closed)
    .bind(&ex_starts)
    .bind(&ex_ends)
    .execute(&mut *tx)
    .await?;
    let conflicts = crate::conflicts::detect(&mut tx, practitioner_id, schedule).await?;
    tx.commit().await?;
    Ok(conflicts)
}

/// Practitioners matching the search filters (all optional), at most `limit`.
pub async fn search_practitioners(
    pool: &PgPool,
    specialty: Option<&str>,
    clinic_id: Option<Uuid>,
    country: Option<&str>,
    limit: i64,
) -> Result<Vec<Practitioner>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM practitioners
         WHERE ($1::text IS NULL OR specialty = $1)
           AND ($2::uuid IS NULL OR clinic_id = $2)
           AND ($3::text IS NULL OR country_code = $3)
         ORDER BY id LIMIT $4",
    )
    .bind(specialty)
    .bind(clinic_id)
    .bind(country)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// One practitioner's schedule as [`load_schedules`] reads it.
#[derive(FromRow)]
struct ScheduleRow {
    id: Uuid,
    country_code: String,
    slot_minutes: i32,
    timezone: String,
    clinic_id: Uuid,
    weekdays: Vec<i16>,
    starts: Vec<NaiveTime>,
    ends: Vec<NaiveTime>,
    days: Vec<NaiveDate>,
    closed: Vec<bool>,
    x_starts: Vec<Option<NaiveTime>>,
    x_ends: Vec<Option<NaiveTime>>,
    hours_changed_at: Option<DateTime<Utc>>,
}

/// Reads the schedules of several practitioners at once (unknown ids are absent).
pub async fn load_schedules(
    pool: impl sqlx::PgExecutor<'_>,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, PractitionerSchedule>, sqlx::Error> {
    // One statement, one row per practitioner: its weekly hours and exceptions come as arrays
    // (two index probes each), not as one row per hour range in two more round trips. Workers
    // run this for every batch.
    let rows: Vec<ScheduleRow> = sqlx::query_as(
        "SELECT p.id, p.country_code, p.slot_minutes, c.timezone, p.clinic_id,
                COALESCE(h.weekdays, '{}') AS weekdays, COALESCE(h.starts, '{}') AS starts,
                COALESCE(h.ends, '{}') AS ends, COALESCE(x.days, '{}') AS days,
                COALESCE(x.closed, '{}') AS closed, COALESCE(x.starts, '{}') AS x_starts,
                COALESCE(x.ends, '{}') AS x_ends, p.hours_changed_at
         FROM practitioners p
         JOIN clinics c ON c.id = p.clinic_id
         LEFT JOIN LATERAL (
             SELECT array_agg(weekday) AS weekdays, array_agg(start_local) AS starts,
                    array_agg(end_local) AS ends
             FROM practitioner_hours WHERE practitioner_id = p.id) h ON true
         LEFT JOIN LATERAL (
             SELECT array_agg(day) AS days, array_agg(closed) AS closed,
                    array_agg(start_local) AS starts, array_agg(end_local) AS ends
             FROM schedule_exceptions WHERE practitioner_id = p.id) x ON true
         WHERE p.id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in rows {
        // The API validated the zone on the way in; a zone unknown to this build falls back
        // to UTC rather than making the practitioner unbookable.
        let tz = r.timezone.parse().unwrap_or(chrono_tz::UTC);
        let mut weekly = r
            .weekdays
            .iter()
            .zip(&r.starts)
            .zip(&r.ends)
            .map(|((weekday, start), end)| WeeklyHours {
                weekday: *weekday as u8,
                start: *start,
                end: *end,
            })
            .collect::<Vec<_>>();
        // Sorted here rather than by `array_agg(… ORDER BY …)`: a sort per practitioner made
        // the statement twice as slow as the three it replaced.
        weekly.sort_by_key(|w: &WeeklyHours| (w.weekday, w.start));
        let mut exceptions = r
            .days
            .iter()
            .zip(&r.closed)
            .zip(r.x_starts.iter().zip(&r.x_ends))
            .map(|((date, closed), (start, end))| ScheduleException {
                date: *date,
                hours: match (closed, start, end) {
                    (false, Some(s), Some(e)) => Some((*s, *e)),
                    _ => None,
                },
            })
            .collect::<Vec<_>>();
        exceptions.sort_by_key(|e: &ScheduleException| (e.date, e.hours));
        out.insert(
            r.id,
            PractitionerSchedule {
                country_code: r.country_code,
                clinic_id: r.clinic_id,
                schedule: Schedule {
                    tz,
                    slot_minutes: r.slot_minutes as u32,
                    weekly,
                    exceptions,
                },
                hours_version: r.hours_changed_at,
            },
        );
    }
    Ok(out)
}

/// Inserts a patient (personal fields encrypted); `None` when the e-mail address is already
/// registered.
pub async fn insert_patient(
    pool: &PgPool,
    keys: &PiiKeys,
    country_code: &CountryCode,
    name: &str,
    email: &Email,
    phone: Option<&Phone>,
) -> Result<Option<Patient>, sqlx::Error> {
    let (country_code, email, phone) = (
        country_code.as_str(),
        email.as_str(),
        phone.map(Phone::as_str),
    );
    let res = sqlx::query_as::<_, PatientRow>(
        "INSERT INTO patients (id, country_code, name_enc, email_enc, phone_enc, email_bidx)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING id, country_code, name_enc, email_enc, phone_enc, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(country_code)
    .bind(keys.encrypt(name))
    .bind(keys.encrypt(email))
    .bind(phone.map(|p| keys.encrypt(p)))
    .bind(keys.email_index(email))
    .fetch_one(pool)
    .await;
    match res {
        Ok(row) => Ok(Some(row.decrypt(keys)?)),
        Err(e) if crate::is_unique_violation(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads a patient.
pub async fn get_patient(
    pool: &PgPool,
    keys: &PiiKeys,
    id: Uuid,
) -> Result<Option<Patient>, sqlx::Error> {
    let row: Option<PatientRow> =
        sqlx::query_as("SELECT id, country_code, name_enc, email_enc, phone_enc, created_at FROM patients WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    row.map(|r| r.decrypt(keys)).transpose()
}

/// Whether a patient exists (no decryption).
pub async fn patient_exists(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    Ok(existing_patients(pool, &[id]).await?.contains_key(&id))
}

/// Encrypts rows written before personal data was encrypted, and rows sealed with an old key,
/// then clears their plaintext. Safe to run concurrently and repeatedly. Returns rows changed.
pub async fn encrypt_patients_at_rest(pool: &PgPool, keys: &PiiKeys) -> Result<u64, sqlx::Error> {
    let mut changed = 0;
    loop {
        let mut tx = pool.begin().await?;
        type Row = (
            Uuid,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, name, email, phone, name_enc, email_enc, phone_enc FROM patients
                 WHERE name IS NOT NULL OR email IS NOT NULL OR name_enc IS NULL
                    OR substring(name_enc from 2 for $1) <> $2
                 LIMIT 500 FOR UPDATE SKIP LOCKED",
        )
        .bind(keys.current_id().len() as i32)
        .bind(keys.current_id().as_bytes())
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(changed);
        }
        for (id, name, email, phone, name_enc, email_enc, phone_enc) in rows {
            let plain =
                |p: Option<String>, enc: Option<Vec<u8>>| -> Result<Option<String>, sqlx::Error> {
                    match (p, enc) {
                        (Some(p), _) => Ok(Some(p)),
                        (None, Some(e)) => keys
                            .decrypt(&e)
                            .map(Some)
                            .map_err(|e| sqlx::Error::Decode(Box::new(e))),
                        (None, None) => Ok(None),
                    }
                };
            let (name, email, phone) = (
                plain(name, name_enc)?,
                plain(email, email_enc)?,
                plain(phone, phone_enc)?,
            );
            sqlx::query(
                "UPDATE patients SET name_enc = $2, email_enc = $3, phone_enc = $4, email_bidx = $5,
                        name = NULL, email = NULL, phone = NULL WHERE id = $1",
            )
            .bind(id)
            .bind(keys.encrypt(name.as_deref().unwrap_or_default()))
            .bind(keys.encrypt(email.as_deref().unwrap_or_default()))
            .bind(phone.as_deref().map(|p| keys.encrypt(p)))
            .bind(keys.email_index(email.as_deref().unwrap_or_default()))
            .execute(&mut *tx)
            .await?;
            changed += 1;
        }
        tx.commit().await?;
    }
}

/// Which of these patients exist (id → country code).
pub async fn existing_patients(
    pool: &PgPool,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, String>, sqlx::Error> {
    let rows: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT id, country_code FROM patients WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

//! The data set of a scenario: clinics and practitioners with hours inserted in bulk with SQL
//! (thousands in a few milliseconds), patients created through the API (their personal fields
//! are encrypted by the service, so they cannot be written directly).
//!
//! Every scenario makes its own practitioners and patients, so scenarios and repeated runs
//! never compete for the same slots.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, NaiveTime, Timelike, Utc};
use futures::{StreamExt, TryStreamExt, stream};
use sqlx::PgPool;
use uuid::Uuid;

use crate::client::Api;

/// Weekly hours of generated practitioners, in the clinic's zone.
#[derive(Clone, Debug)]
pub struct Hours {
    /// ISO weekdays (Monday = 1) worked.
    pub weekdays: Vec<i16>,
    /// Start of the day's hours.
    pub start: NaiveTime,
    /// End of the day's hours.
    pub end: NaiveTime,
}

impl Hours {
    /// Every day, 00:00–23:55 (the latest end a `time` column takes without 24:00).
    pub fn round_the_clock() -> Self {
        Self {
            weekdays: (1..=7).collect(),
            start: NaiveTime::MIN,
            end: hm(23, 55),
        }
    }
}

/// `hh:mm`; the callers pass constants in range.
pub fn hm(h: u32, m: u32) -> NaiveTime {
    NaiveTime::from_hms_opt(h, m, 0).unwrap_or(NaiveTime::MIN)
}

/// What a batch of generated practitioners looks like.
#[derive(Clone, Debug)]
pub struct PractitionerSpec {
    /// How many.
    pub count: usize,
    /// Their specialty (search filters on it).
    pub specialty: String,
    /// Slot length.
    pub slot_minutes: u32,
    /// IANA zone of their clinic.
    pub timezone: String,
    /// Weekly hours.
    pub hours: Hours,
}

/// Inserts one clinic and `spec.count` practitioners with their hours; returns their ids.
pub async fn practitioners(pool: &PgPool, spec: &PractitionerSpec) -> anyhow::Result<Vec<Uuid>> {
    let clinic = Uuid::now_v7();
    let ids: Vec<Uuid> = (0..spec.count).map(|_| Uuid::now_v7()).collect();
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO clinics (id, country_code, name, timezone) VALUES ($1, 'FR', $2, $3)")
        .bind(clinic)
        .bind(format!(
            "Load test clinic {}",
            &clinic.simple().to_string()[..8]
        ))
        .bind(&spec.timezone)
        .execute(&mut *tx)
        .await
        .context("inserting the clinic (is DATABASE_URL the stack's database?)")?;
    sqlx::query(
        "INSERT INTO practitioners (id, clinic_id, country_code, name, specialty, slot_minutes)
         SELECT u.id, $2, 'FR', 'Dr Load ' || u.ord, $3, $4
         FROM unnest($1::uuid[]) WITH ORDINALITY AS u(id, ord)",
    )
    .bind(&ids)
    .bind(clinic)
    .bind(&spec.specialty)
    .bind(spec.slot_minutes as i32)
    .execute(&mut *tx)
    .await?;
    let n = spec.hours.weekdays.len();
    sqlx::query(
        "INSERT INTO practitioner_hours (practitioner_id, weekday, start_local, end_local)
         SELECT p.id, h.weekday, h.s, h.e
         FROM unnest($1::uuid[]) AS p(id)
         CROSS JOIN unnest($2::int2[], $3::time[], $4::time[]) AS h(weekday, s, e)",
    )
    .bind(&ids)
    .bind(&spec.hours.weekdays)
    .bind(vec![spec.hours.start; n])
    .bind(vec![spec.hours.end; n])
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(ids)
}

/// Creates `n` patients through the API, 16 at a time.
pub async fn patients(api: &Api, n: usize, tag: &str) -> anyhow::Result<Vec<Uuid>> {
    stream::iter(0..n)
        .map(|_| api.create_patient(tag))
        .buffered(16)
        .try_collect()
        .await
}

/// Distinct free slots for the scenarios that must never collide (`throughput`, `latency`,
/// `baseline`): request `k` goes to practitioner `k mod P` at that practitioner's
/// `k div P`-th slot, for patient `k mod P` (each patient books one practitioner only, so the
/// one-active-booking-per-patient-and-time rule never fires either).
#[derive(Clone, Debug)]
pub struct Grid {
    /// Practitioners (all working round the clock, every day, in UTC).
    pub practitioners: Vec<Uuid>,
    /// One patient per practitioner (may be fake ids for the baseline).
    pub patients: Vec<Uuid>,
    /// Midnight UTC of the first day used (tomorrow).
    pub first_day: DateTime<Utc>,
    /// Slot length.
    pub slot_minutes: u32,
    /// Slots per day (hours 00:00–23:55).
    pub slots_per_day: u64,
    /// Days used (inside the booking horizon).
    pub days: u64,
}

/// Slot length of grid practitioners: the finest grid gives the most slots per practitioner.
pub const GRID_SLOT_MINUTES: u32 = 5;
/// Days of a grid, well inside the default 60-day booking horizon.
pub const GRID_DAYS: u64 = 45;

impl Grid {
    /// A grid over these practitioners and patients (same length).
    pub fn new(practitioners: Vec<Uuid>, patients: Vec<Uuid>) -> Self {
        let tomorrow = (Utc::now() + chrono::Duration::days(1))
            .with_hour(0)
            .and_then(|t| t.with_minute(0))
            .and_then(|t| t.with_second(0))
            .and_then(|t| t.with_nanosecond(0))
            .unwrap_or_else(Utc::now);
        let slots_per_day = u64::from((23 * 60 + 55) / GRID_SLOT_MINUTES);
        Self {
            practitioners,
            patients,
            first_day: tomorrow,
            slot_minutes: GRID_SLOT_MINUTES,
            slots_per_day,
            days: GRID_DAYS,
        }
    }

    /// Requests the grid can serve.
    pub fn capacity(&self) -> u64 {
        self.practitioners.len() as u64 * self.slots_per_day * self.days
    }

    /// Request `k`: (patient, practitioner, slot start); `None` past the capacity.
    pub fn nth(&self, k: u64) -> Option<(Uuid, Uuid, DateTime<Utc>)> {
        let p = self.practitioners.len() as u64;
        if p == 0 || k >= self.capacity() {
            return None;
        }
        let (who, j) = ((k % p) as usize, k / p);
        let (day, slot) = (j / self.slots_per_day, j % self.slots_per_day);
        let minutes = day * 24 * 60 + slot * u64::from(self.slot_minutes);
        let start = self.first_day + Duration::from_secs(minutes * 60);
        Some((
            self.patients[who % self.patients.len().max(1)],
            self.practitioners[who],
            start,
        ))
    }
}

/// Practitioners working round the clock on the grid, plus one patient each (API).
pub async fn grid(
    pool: &PgPool,
    api: &Api,
    practitioners: usize,
    specialty: &str,
) -> anyhow::Result<Grid> {
    let ids = self::practitioners(
        pool,
        &PractitionerSpec {
            count: practitioners,
            specialty: specialty.into(),
            slot_minutes: GRID_SLOT_MINUTES,
            timezone: "UTC".into(),
            hours: Hours::round_the_clock(),
        },
    )
    .await?;
    let patients = patients(api, practitioners, specialty).await?;
    Ok(Grid::new(ids, patients))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_requests_never_share_a_slot_or_a_patient_time() {
        let ps: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        let pats: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        let g = Grid::new(ps.clone(), pats);
        let mut seen = std::collections::HashSet::new();
        let mut patient_times = std::collections::HashSet::new();
        for k in 0..2000 {
            let (patient, p, t) = g.nth(k).expect("inside capacity");
            assert!(seen.insert((p, t)), "slot reused at {k}");
            assert!(
                patient_times.insert((patient, t)),
                "patient double-booked at {k}"
            );
            assert!(t >= g.first_day);
            assert_eq!(t.minute() % GRID_SLOT_MINUTES, 0);
            assert!(t.time() <= hm(23, 50), "slot ends by 23:55");
        }
        assert_eq!(g.nth(0).map(|x| x.1), Some(ps[0]));
        assert_eq!(g.nth(1).map(|x| x.1), Some(ps[1]));
        assert!(g.nth(g.capacity()).is_none());
    }
}

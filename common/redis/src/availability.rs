//! Availability: which slots are free. A practitioner's slots come from their schedule
//! (`domain::slot`), the taken ones from per-day Redis bitmaps kept current by the hold,
//! expiry, cancel and reschedule paths. A bitmap that is missing or incomplete (no
//! [`BUILT_BIT`]) is rebuilt from PostgreSQL and stored with a compare-and-set on its change
//! counter, so a rebuild racing a change never overwrites the change. PostgreSQL stays the
//! truth: a stale bit costs a needless trip through the queue, never a double booking.

use std::collections::HashMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use futures::future::join_all;
use sqlx::PgPool;
use uuid::Uuid;

use crate::fast_path::FastPath;
use crate::keys::{BUILT_BIT, availability_bit, bit_is_set, set_bit};

/// A failure reading availability.
#[derive(Debug, thiserror::Error)]
pub enum AvailabilityError {
    /// PostgreSQL failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// Redis failed.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// Taken-slot bitmaps by (practitioner, UTC day).
#[derive(Debug, Default)]
pub struct Taken(HashMap<(Uuid, NaiveDate), Vec<u8>>);

impl Taken {
    /// Adds the bitmaps of another read.
    pub fn extend(&mut self, other: Taken) {
        self.0.extend(other.0);
    }

    /// Whether the bitmap of this practitioner and UTC day has been read.
    pub fn has(&self, practitioner: Uuid, day: NaiveDate) -> bool {
        self.0.contains_key(&(practitioner, day))
    }

    /// Whether the slot starting at `start` is taken.
    pub fn is_taken(&self, practitioner: Uuid, start: DateTime<Utc>) -> bool {
        self.0
            .get(&(practitioner, start.date_naive()))
            .is_some_and(|b| bit_is_set(b, availability_bit(start)))
    }
}

/// Reads the bitmaps of `pairs`, rebuilding the incomplete ones.
pub async fn taken(
    pool: &PgPool,
    fast: &FastPath,
    pairs: &[(Uuid, NaiveDate)],
) -> Result<Taken, AvailabilityError> {
    let got = fast.bitmaps(pairs).await?;
    let mut out = HashMap::with_capacity(pairs.len());
    let mut missing = Vec::new();
    for (pair, (bitmap, version)) in pairs.iter().zip(got) {
        if bit_is_set(&bitmap, BUILT_BIT) {
            out.insert(*pair, bitmap);
        } else {
            missing.push((pair.0, pair.1, version));
        }
    }
    if !missing.is_empty() {
        out.extend(rebuild(pool, fast, &missing).await?);
    }
    Ok(Taken(out))
}

/// Rebuilds the bitmaps of `days` for one practitioner from PostgreSQL, now.
pub async fn rebuild_days(
    pool: &PgPool,
    fast: &FastPath,
    practitioner: Uuid,
    days: &[NaiveDate],
) -> Result<usize, AvailabilityError> {
    let pairs: Vec<(Uuid, NaiveDate)> = days.iter().map(|d| (practitioner, *d)).collect();
    rebuild_pairs(pool, fast, &pairs).await
}

/// Rebuilds the bitmaps of `(practitioner, UTC day)` pairs from PostgreSQL, now: one Redis
/// read of their change counters, one query, one compare-and-set each.
pub async fn rebuild_pairs(
    pool: &PgPool,
    fast: &FastPath,
    pairs: &[(Uuid, NaiveDate)],
) -> Result<usize, AvailabilityError> {
    let versions = fast.bitmaps(pairs).await?;
    let missing: Vec<_> = pairs
        .iter()
        .zip(versions)
        .map(|((p, d), (_, v))| (*p, *d, v))
        .collect();
    Ok(rebuild(pool, fast, &missing).await?.len())
}

/// Rebuilds bitmaps from one PostgreSQL query. The change counters must have been read before
/// (they are in `missing`); a bitmap changed since is not overwritten, but the rebuilt
/// version is still returned for this answer.
async fn rebuild(
    pool: &PgPool,
    fast: &FastPath,
    missing: &[(Uuid, NaiveDate, u32)],
) -> Result<HashMap<(Uuid, NaiveDate), Vec<u8>>, AvailabilityError> {
    let mut ids: Vec<Uuid> = missing.iter().map(|m| m.0).collect();
    ids.sort_unstable();
    ids.dedup();
    let (Some(first), Some(last)) = (
        missing.iter().map(|m| m.1).min(),
        missing.iter().map(|m| m.1).max(),
    ) else {
        return Ok(HashMap::new());
    };
    let from = first.and_time(chrono::NaiveTime::MIN).and_utc();
    let to = last.and_time(chrono::NaiveTime::MIN).and_utc() + Duration::days(1);
    // Active bookings without the country: `status::text` (`db` module docs).
    let rows: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "SELECT practitioner_id, slot_start FROM bookings
         WHERE practitioner_id = ANY($1) AND slot_start >= $2 AND slot_start < $3
           AND status::text IN ('held', 'confirmed')",
    )
    .bind(&ids)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    let mut built: HashMap<(Uuid, NaiveDate), Vec<u8>> = missing
        .iter()
        .map(|(p, d, _)| {
            let mut bitmap = Vec::new();
            set_bit(&mut bitmap, BUILT_BIT);
            ((*p, *d), bitmap)
        })
        .collect();
    for (p, start) in rows {
        if let Some(bitmap) = built.get_mut(&(p, start.date_naive())) {
            set_bit(bitmap, availability_bit(start));
        }
    }
    let stores = missing.iter().map(|(p, d, version)| {
        let bitmap = built.get(&(*p, *d)).cloned().unwrap_or_default();
        async move { fast.store_rebuilt(*p, *d, *version, &bitmap).await }
    });
    for stored in join_all(stores).await {
        stored?;
    }
    Ok(built)
}

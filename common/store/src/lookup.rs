//! Read-through caches of what validation needs on the booking path: practitioners'
//! schedules and which patients exist.
//!
//! Ingress never locks anything in PostgreSQL; these plain reads are cached briefly so a storm
//! on one slot costs one query, not thousands. Staleness is harmless there: the workers decide
//! again. The workers use the same caches for their batches (most batches then read nothing): a stale schedule cannot decide a hold either, because every
//! batch checks under the hours locks that each practitioner's `hours_changed_at` is the one
//! its schedule was read with (`db::holds::commit_batch`), and on a change the batch forgets
//! its practitioners' schedules and is decided again. Patients are never deleted, and only
//! their existence is cached.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::directory::{PractitionerSchedule, existing_patients, load_schedules};
use sqlx::PgPool;
use uuid::Uuid;

const SCHEDULE_TTL: Duration = Duration::from_secs(5);
const PATIENT_TTL: Duration = Duration::from_secs(300);
const MAX_ENTRIES: usize = 100_000;

struct Entry<V> {
    at: Instant,
    value: V,
}

/// Cached look-ups.
#[derive(Clone)]
pub struct Lookup {
    pool: PgPool,
    schedules: Arc<Mutex<HashMap<Uuid, Entry<Arc<PractitionerSchedule>>>>>,
    patients: Arc<Mutex<HashMap<Uuid, Entry<()>>>>,
}

fn fresh<V: Clone>(map: &Mutex<HashMap<Uuid, Entry<V>>>, id: Uuid, ttl: Duration) -> Option<V> {
    let map = map.lock().unwrap_or_else(|p| p.into_inner());
    map.get(&id)
        .filter(|e| e.at.elapsed() < ttl)
        .map(|e| e.value.clone())
}

/// Inserts `value`. At `MAX_ENTRIES` the expired entries go first; only if none had expired is
/// the map emptied (a burst of that many live entries is rare, and a cache, not a store). This
/// runs only when the map is full, so lookups pay nothing for it (moka cost ~3 % of booking
/// throughput: loadtest/README.md).
fn store<V>(map: &Mutex<HashMap<Uuid, Entry<V>>>, id: Uuid, value: V, ttl: Duration) {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() >= MAX_ENTRIES {
        map.retain(|_, e| e.at.elapsed() < ttl);
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
    }
    map.insert(
        id,
        Entry {
            at: Instant::now(),
            value,
        },
    );
}

impl Lookup {
    /// A cache over `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            schedules: Arc::default(),
            patients: Arc::default(),
        }
    }

    /// The practitioner's schedule, `None` if there is no such practitioner.
    pub async fn schedule(
        &self,
        id: Uuid,
    ) -> Result<Option<Arc<PractitionerSchedule>>, sqlx::Error> {
        if let Some(s) = fresh(&self.schedules, id, SCHEDULE_TTL) {
            return Ok(Some(s));
        }
        let Some(s) = load_schedules(&self.pool, &[id]).await?.remove(&id) else {
            return Ok(None);
        };
        let s = Arc::new(s);
        store(&self.schedules, id, s.clone(), SCHEDULE_TTL);
        Ok(Some(s))
    }

    /// Schedules of many practitioners (unknown ones are absent), one query for the misses.
    pub async fn schedules(
        &self,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, Arc<PractitionerSchedule>>, sqlx::Error> {
        let mut out = HashMap::with_capacity(ids.len());
        let mut missing = Vec::new();
        for id in ids {
            match fresh(&self.schedules, *id, SCHEDULE_TTL) {
                Some(s) => {
                    out.insert(*id, s);
                }
                None => missing.push(*id),
            }
        }
        if !missing.is_empty() {
            for (id, s) in load_schedules(&self.pool, &missing).await? {
                let s = Arc::new(s);
                store(&self.schedules, id, s.clone(), SCHEDULE_TTL);
                out.insert(id, s);
            }
        }
        Ok(out)
    }

    /// Forgets a practitioner's schedule (after this process changed it, or a batch found it
    /// changed).
    pub fn forget_schedule(&self, id: Uuid) {
        self.schedules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Whether the patient exists. Only positive answers are cached: a patient created a
    /// moment ago must be bookable at once.
    pub async fn patient_exists(&self, id: Uuid) -> Result<bool, sqlx::Error> {
        Ok(self.known_patients(&[id]).await?.contains(&id))
    }

    /// Which of `ids` are patients, one query for the ones not known already.
    pub async fn known_patients(&self, ids: &[Uuid]) -> Result<HashSet<Uuid>, sqlx::Error> {
        let mut known = HashSet::with_capacity(ids.len());
        let mut missing = Vec::new();
        for id in ids {
            if fresh(&self.patients, *id, PATIENT_TTL).is_some() {
                known.insert(*id);
            } else {
                missing.push(*id);
            }
        }
        if !missing.is_empty() {
            for id in existing_patients(&self.pool, &missing).await?.into_keys() {
                store(&self.patients, id, (), PATIENT_TTL);
                known.insert(id);
            }
        }
        Ok(known)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_cache_drops_its_expired_entries_not_its_live_ones() {
        let map: Mutex<HashMap<Uuid, Entry<()>>> = Mutex::default();
        let ttl = Duration::from_secs(5);
        let old = Instant::now()
            .checked_sub(Duration::from_secs(10))
            .expect("the clock is past 10 s");
        let live = Uuid::now_v7();
        {
            let mut m = map.lock().unwrap();
            for _ in 0..MAX_ENTRIES - 1 {
                m.insert(Uuid::new_v4(), Entry { at: old, value: () });
            }
            m.insert(
                live,
                Entry {
                    at: Instant::now(),
                    value: (),
                },
            );
        }
        let new = Uuid::now_v7();
        store(&map, new, (), ttl);
        let m = map.lock().unwrap();
        assert_eq!(m.len(), 2, "the expired entries went, the live one stayed");
        assert!(m.contains_key(&live) && m.contains_key(&new));
    }
}

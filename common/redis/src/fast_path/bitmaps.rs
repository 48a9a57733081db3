//! The availability bitmaps' changes: marking slots taken or free, invalidating days after
//! reschedules, and the compare-and-set that stores a rebuild.

use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

use super::FastPath;
use crate::keys::{COUNTER_BIT, Keys, availability_bit, bitmap_counter};

impl FastPath {
    /// Clears the availability bitmaps of `(practitioner, UTC day)` pairs and bumps their
    /// change counters, so the next read rebuilds them from PostgreSQL and a rebuild already
    /// under way does not store what it read before (used after reschedules, whose own updates
    /// may land out of order). Until then the pre-check admits, and PostgreSQL decides.
    /// The bits are zeroed rather than the key deleted: the counter lives in the bitmap, and a
    /// deleted one would start again from 0, where a rebuild that read a missing bitmap before
    /// could still store.
    pub async fn invalidate_days(&self, days: &[(Uuid, NaiveDate)]) -> redis::RedisResult<()> {
        if days.is_empty() {
            return Ok(());
        }
        let zeros = vec![0u8; (COUNTER_BIT / 8) as usize];
        let mut pipe = redis::pipe();
        for (practitioner, day) in days {
            let key = self.keys.availability_day(*practitioner, *day);
            pipe.add_command(bump_counter(&key)).ignore();
            pipe.cmd("SETRANGE").arg(&key).arg(0).arg(&zeros).ignore();
            pipe.expire_at(&key, bitmap_expiry(*day)).ignore();
        }
        pipe.atomic().query_async(&mut self.conn.clone()).await
    }

    /// The availability bitmaps of `(practitioner, UTC day)` pairs with their change counters
    /// ([`bitmap_counter`]), in one round trip.
    pub async fn bitmaps(
        &self,
        pairs: &[(Uuid, NaiveDate)],
    ) -> redis::RedisResult<Vec<(Vec<u8>, u32)>> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (p, day) in pairs {
            pipe.get(self.keys.availability_day(*p, *day));
        }
        let bitmaps: Vec<Option<Vec<u8>>> = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(bitmaps
            .into_iter()
            .map(|b| {
                let b = b.unwrap_or_default();
                let counter = bitmap_counter(&b);
                (b, counter)
            })
            .collect())
    }

    /// Stores a bitmap rebuilt from PostgreSQL unless it changed since its counter `seen` was
    /// read (compare-and-set on the change counter; the stored bitmap's counter is `seen + 1`,
    /// so a second rebuild that read `seen` stores nothing either). Returns whether it was
    /// stored.
    pub async fn store_rebuilt(
        &self,
        practitioner: Uuid,
        day: NaiveDate,
        seen: u32,
        bitmap: &[u8],
    ) -> redis::RedisResult<bool> {
        let stored: i32 = self
            .rebuild
            .key(self.keys.availability_day(practitioner, day))
            .arg(seen)
            .arg(bitmap)
            .arg(bitmap_expiry(day))
            .arg(COUNTER_BIT)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(stored == 1)
    }
}

/// Adds to `pipe` the commands that set (`taken`) or clear slots' availability bits: per
/// practitioner and day one `BITFIELD` that increments the bitmap's change counter and sets
/// the bits of all its slots that change, then the bitmap's expiry (set after the bits,
/// which create it when missing).
///
/// Counter and bits change in one command, so these commands need no transaction around
/// them: a rebuild's compare-and-set (`REBUILD_LUA`, one atomic script) runs either before
/// the change, and the change is applied over what it stored, or after it, and finds the
/// counter moved and stores nothing. (With the counter in a key of its own, bits first and
/// the bump after would have let a rebuild that read PostgreSQL before our change overwrite
/// it in between, and the bitmap would have kept the old bit for as long as it lives.)
pub(super) fn mark(
    keys: &Keys,
    pipe: &mut redis::Pipeline,
    mut slots: Vec<(Uuid, DateTime<Utc>, bool)>,
) {
    slots.sort_unstable_by_key(|&(p, at, _)| (p, at.date_naive()));
    let mut i = 0;
    while i < slots.len() {
        let (practitioner, first, _) = slots[i];
        let day = first.date_naive();
        let same_day = slots[i..]
            .iter()
            .take_while(|(p, at, _)| *p == practitioner && at.date_naive() == day)
            .count();
        let key = keys.availability_day(practitioner, day);
        let mut bitfield = bump_counter(&key);
        for &(_, slot_start, taken) in &slots[i..i + same_day] {
            bitfield
                .arg("SET")
                .arg("u1")
                .arg(availability_bit(slot_start))
                .arg(u8::from(taken));
        }
        pipe.add_command(bitfield).ignore();
        pipe.expire_at(&key, bitmap_expiry(day)).ignore();
        i += same_day;
    }
}

/// `BITFIELD key INCRBY u32 COUNTER_BIT 1`: the bump of a bitmap's change counter, to which
/// [`mark`] appends the bits it changes in the same command.
fn bump_counter(key: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("BITFIELD");
    cmd.arg(key)
        .arg("INCRBY")
        .arg("u32")
        .arg(COUNTER_BIT)
        .arg(1);
    cmd
}

/// Bitmaps live until two days after their date; they are only a cache.
fn bitmap_expiry(day: NaiveDate) -> i64 {
    day.and_time(chrono::NaiveTime::MIN).and_utc().timestamp() + 2 * 86_400
}

// KEYS: 1 bitmap; ARGV: 1 its change counter as read before reading PostgreSQL, 2 the rebuilt
// bitmap (without a counter), 3 expiry (unix seconds), 4 the counter's bit offset. Stores the
// bitmap with the counter one past the one seen, unless the counter moved meanwhile.
pub(super) const REBUILD_LUA: &str = r"
local now = redis.call('BITFIELD', KEYS[1], 'GET', 'u32', ARGV[4])[1]
if now ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('BITFIELD', KEYS[1], 'SET', 'u32', ARGV[4], (now + 1) % 4294967296)
redis.call('EXPIREAT', KEYS[1], tonumber(ARGV[3]))
return 1
";

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "a test fails loudly on the first surprise"
    )]

    use chrono::TimeZone;

    use super::*;
    use crate::keys::{BUILT_BIT, set_bit};

    /// A stale rebuild — it read the change counter and PostgreSQL before a hold was
    /// published — runs at every point between the commands that publish the hold (the
    /// pipeline is not a transaction, so Redis may run another client's script between any
    /// two of them). The slot must end up marked taken every time: the rebuild either stores
    /// before the bit is written, or finds the counter moved and stores nothing.
    #[tokio::test]
    async fn a_stale_rebuild_between_any_two_marking_commands_never_loses_the_bit() {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let mut conn = crate::connect(&url).await.unwrap();
        let practitioner = Uuid::now_v7();
        let other_day = Uuid::now_v7();
        let at = Utc.with_ymd_and_hms(2030, 5, 6, 9, 30, 0).single().unwrap();
        let slots = vec![
            (practitioner, at, true),
            (practitioner, at + chrono::Duration::minutes(30), true),
            (other_day, at + chrono::Duration::days(1), true),
        ];
        let pairs: Vec<(Uuid, NaiveDate)> = slots
            .iter()
            .map(|(p, when, _)| (*p, when.date_naive()))
            .collect();
        let mut stale = Vec::new();
        set_bit(&mut stale, BUILT_BIT);
        // The marking commands of `slots`, for a namespace of their own.
        let marking = |keys: &Keys| {
            let mut pipe = redis::pipe();
            mark(keys, &mut pipe, slots.clone());
            pipe.cmd_iter().cloned().collect::<Vec<redis::Cmd>>()
        };
        let commands = marking(&Keys::new("t-mark"));
        for k in 0..=commands.len() {
            let fast = FastPath::new(conn.clone(), &format!("t-mark-{}", Uuid::new_v4().simple()));
            let commands = marking(fast.keys());
            // The rebuild reads the counters first, then PostgreSQL (no hold yet).
            let seen = fast.bitmaps(&pairs).await.unwrap();
            for c in &commands[..k] {
                c.query_async::<redis::Value>(&mut conn).await.unwrap();
            }
            for ((p, day), (_, counter)) in pairs.iter().zip(&seen) {
                fast.store_rebuilt(*p, *day, *counter, &stale)
                    .await
                    .unwrap();
            }
            for c in &commands[k..] {
                c.query_async::<redis::Value>(&mut conn).await.unwrap();
            }
            let keys: Vec<String> = pairs
                .iter()
                .map(|(p, day)| fast.keys().availability_day(*p, *day))
                .collect();
            for ((_, when, _), key) in slots.iter().zip(&keys) {
                let bit: bool = redis::cmd("GETBIT")
                    .arg(key)
                    .arg(availability_bit(*when))
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                assert!(bit, "bit of {when} lost with the rebuild after command {k}");
                let ttl: i64 = redis::cmd("TTL")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                assert!(ttl > 0, "{key} has no expiry (rebuild after command {k})");
            }
            let _: () = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        // Two days, one command (counter and bits) and one expiry each, however many slots a
        // day has.
        let names: Vec<String> = commands
            .iter()
            .map(|c| match c.args_iter().next() {
                Some(redis::Arg::Simple(name)) => String::from_utf8_lossy(name).into_owned(),
                _ => String::new(),
            })
            .collect();
        assert_eq!(names, ["BITFIELD", "EXPIREAT", "BITFIELD", "EXPIREAT"]);
    }
}

//! Every Redis key slotq writes (besides apalis' queue keys), in one place, all under
//! `REDIS_NAMESPACE` so several stacks or tests can share a Redis.

use chrono::{DateTime, NaiveDate, Timelike, Utc};
use uuid::Uuid;

/// Key builder for one namespace.
#[derive(Clone, Debug)]
pub struct Keys {
    ns: String,
}

impl Keys {
    /// Keys under `namespace`.
    pub fn new(namespace: &str) -> Self {
        Self {
            ns: namespace.to_owned(),
        }
    }

    /// Fast-path status of a booking request (JSON of `RequestView`).
    pub fn request(&self, id: Uuid) -> String {
        format!("{}:req:{id}", self.ns)
    }

    /// Idempotency record of a client key, already scoped to its caller with
    /// [`idempotency_scope`]: `<body hash>|<request id>`.
    pub fn idempotency(&self, scoped_key: &str) -> String {
        format!("{}:idem:{scoped_key}", self.ns)
    }

    /// Availability bitmap of one practitioner for one UTC day; bit = minute of the day, bit
    /// [`BUILT_BIT`] is set once the bitmap was rebuilt from PostgreSQL, and the 32 bits from
    /// [`COUNTER_BIT`] count its changes (see [`bitmap_counter`]).
    ///
    /// (`avail2`: the counter used to be a key of its own,
    /// `availv`; the new name keeps a bitmap of either layout from being read as the other
    /// while versions are mixed during an upgrade. Both are caches, rebuilt from PostgreSQL.)
    pub fn availability(&self, practitioner: Uuid, slot_start: DateTime<Utc>) -> String {
        self.availability_day(practitioner, slot_start.date_naive())
    }

    /// [`availability`](Self::availability) by UTC date.
    pub fn availability_day(&self, practitioner: Uuid, day: NaiveDate) -> String {
        format!("{}:avail2:{practitioner}:{}", self.ns, Ymd(day))
    }

    /// Booking requests accepted and not yet decided (a counter next to the hold queue, whose
    /// jobs carry several requests each): ingress adds a job's requests in the script that
    /// queues it, workers subtract what they decided (see `queue::depth`).
    pub fn pending_requests(&self) -> String {
        format!("{}:holds:pending_requests", self.ns)
    }

    /// Pub/sub channel announcing decided request ids (comma-separated).
    pub fn decided_channel(&self) -> String {
        format!("{}:decided", self.ns)
    }
}

/// A date as `YYYYMMDD`, written directly (chrono's `format` parses its pattern every time,
/// and the workers write two such keys per decision).
struct Ymd(NaiveDate);

impl std::fmt::Display for Ymd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use chrono::Datelike;
        write!(
            f,
            "{:04}{:02}{:02}",
            self.0.year(),
            self.0.month(),
            self.0.day()
        )
    }
}

/// An `Idempotency-Key` scoped to the caller who sent it (role and token subject), as Stripe
/// scopes keys per account: two callers using the same key never collide, and nobody can probe
/// another caller's keys. `<role>:<32 hex digits of SHA-256(sub)>:<key>`: hashing the subject
/// keeps the scope unambiguous whatever characters it contains (`role` has no `:`) and keeps
/// identifiers out of key names. The same value is recorded in
/// `booking_requests.idempotency_key`.
pub fn idempotency_scope(role: &str, sub: &str, key: &str) -> String {
    use sha2::{Digest, Sha256};
    let sub = Sha256::digest(sub.as_bytes());
    format!("{role}:{}:{key}", hex::encode(&sub[..16]))
}

/// The bit marking an availability bitmap as complete (rebuilt from PostgreSQL). A bitmap
/// without it only knows the changes seen since it was lost, so readers rebuild it.
pub const BUILT_BIT: u32 = 24 * 60;

/// Where an availability bitmap keeps its change counter: an unsigned 32-bit big-endian
/// integer (Redis `BITFIELD … u32 1536`, bytes 192–195), past every minute bit and
/// [`BUILT_BIT`]. Every change of the bitmap increments it atomically with the bits: a mark in
/// the same `BITFIELD` command that sets them, an invalidation in the `MULTI` that zeroes them
/// (`fast_path::FastPath::invalidate_days`); and a rebuild stores its bitmap only if the counter is still the one it
/// read before reading PostgreSQL (`fast_path::FastPath::store_rebuilt`). Kept inside the
/// bitmap rather than as a key of its own: one command and one key less per change, and no order between two commands to get right.
pub const COUNTER_BIT: u32 = 1536;

/// The change counter of a bitmap read with `GET` (0 for a missing or shorter one, as Redis
/// reads bits past the end of a string).
pub fn bitmap_counter(bitmap: &[u8]) -> u32 {
    let at = (COUNTER_BIT / 8) as usize;
    let mut bytes = [0u8; 4];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = bitmap.get(at + i).copied().unwrap_or(0);
    }
    u32::from_be_bytes(bytes)
}

/// Whether `bit` is set in a Redis bitmap (bit 0 is the most significant bit of byte 0).
pub fn bit_is_set(bitmap: &[u8], bit: u32) -> bool {
    bitmap
        .get((bit / 8) as usize)
        .is_some_and(|byte| byte & (0x80 >> (bit % 8)) != 0)
}

/// Sets `bit` in a bitmap, growing it as needed.
pub fn set_bit(bitmap: &mut Vec<u8>, bit: u32) {
    let i = (bit / 8) as usize;
    if bitmap.len() <= i {
        bitmap.resize(i + 1, 0);
    }
    bitmap[i] |= 0x80 >> (bit % 8);
}

/// The bit of a slot in its day's availability bitmap.
pub fn availability_bit(slot_start: DateTime<Utc>) -> u32 {
    slot_start.hour() * 60 + slot_start.minute()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_namespaced_and_bits_index_minutes() {
        let k = Keys::new("t1");
        let id = Uuid::nil();
        let at = DateTime::parse_from_rfc3339("2026-05-04T09:30:00Z")
            .expect("instant")
            .with_timezone(&Utc);
        assert_eq!(k.request(id), format!("t1:req:{id}"));
        assert_eq!(k.availability(id, at), format!("t1:avail2:{id}:20260504"));
        assert_eq!(availability_bit(at), 570);
        assert!(k.idempotency("abc").starts_with("t1:idem:"));
        let a = idempotency_scope("patient", "alice", "key-1");
        assert!(a.starts_with("patient:") && a.ends_with(":key-1"), "{a}");
        assert_eq!(a, idempotency_scope("patient", "alice", "key-1"));
        assert_ne!(a, idempotency_scope("patient", "bob", "key-1"));
        assert_ne!(a, idempotency_scope("service", "alice", "key-1"));
        // A subject with the separator in it cannot impersonate another scope.
        assert_ne!(
            idempotency_scope("service", "a:b", "c"),
            idempotency_scope("service", "a", "b:c")
        );
        let mut bitmap = Vec::new();
        set_bit(&mut bitmap, 570);
        set_bit(&mut bitmap, BUILT_BIT);
        assert!(bit_is_set(&bitmap, 570) && bit_is_set(&bitmap, BUILT_BIT));
        assert!(!bit_is_set(&bitmap, 571) && !bit_is_set(&bitmap, 5000));
        assert_eq!(bitmap[570 / 8], 0x80 >> (570 % 8));
        // The counter lies past every minute and the built bit, and reads as 0 when absent.
        assert!(COUNTER_BIT > BUILT_BIT && COUNTER_BIT.is_multiple_of(8));
        assert!(availability_bit(at + chrono::Duration::minutes(869)) < BUILT_BIT);
        assert_eq!(bitmap_counter(&bitmap), 0);
        bitmap.resize(194, 0);
        bitmap[193] = 1;
        assert_eq!(bitmap_counter(&bitmap), 1 << 16);
        bitmap.resize(196, 0);
        bitmap[195] = 7;
        assert_eq!(bitmap_counter(&bitmap), (1 << 16) + 7);
    }
}

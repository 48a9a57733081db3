//! Every Redis key slotq writes (besides apalis' queue keys), in one place, all under
//! `REDIS_NAMESPACE` so several stacks or tests can share a Redis.

use chrono::{DateTime, Timelike, Utc};
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

    /// Idempotency record of a client key: `<body hash>|<request id>`.
    pub fn idempotency(&self, key: &str) -> String {
        format!("{}:idem:{key}", self.ns)
    }

    /// Availability bitmap of one practitioner for one UTC day; bit = minute of the day.
    pub fn availability(&self, practitioner: Uuid, slot_start: DateTime<Utc>) -> String {
        format!(
            "{}:avail:{practitioner}:{}",
            self.ns,
            slot_start.format("%Y%m%d")
        )
    }

    /// Pub/sub channel announcing decided request ids (comma-separated).
    pub fn decided_channel(&self) -> String {
        format!("{}:decided", self.ns)
    }
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
        assert_eq!(k.availability(id, at), format!("t1:avail:{id}:20260504"));
        assert_eq!(availability_bit(at), 570);
        assert!(k.idempotency("abc").starts_with("t1:idem:"));
    }
}

//! Request statuses for polling, and the announcements of decided requests.

use chrono::{DateTime, Utc};
use slotq_domain::request::{RejectionReason, RequestKind, RequestStatus};
use slotq_store::requests::RequestView;
use uuid::Uuid;

use super::{FastPath, REMEMBER, bitmaps::mark, json_err};

impl FastPath {
    /// The cached status of a request.
    pub async fn status(&self, id: Uuid) -> redis::RedisResult<Option<RequestView>> {
        let raw: Option<String> = redis::cmd("GET")
            .arg(self.keys.request(id))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(raw.and_then(|s| serde_json::from_str(&s).ok()))
    }

    /// After a batch commit: caches each decision, marks held (and found-taken) slots taken,
    /// subtracts the decisions from the pending-requests counter and announces the decided
    /// ids. One round trip, a plain pipeline rather than `MULTI`/`EXEC`: a transaction made
    /// Redis queue every command and answer it twice (`QUEUED`, then in `EXEC`'s array), and
    /// the workers parse every answer. Nothing here needs it:
    /// the commands of one connection run in order (each status is stored before the
    /// announcement that wakes its long-polls), every value is a cache PostgreSQL backs, and
    /// [`mark`] changes a day's counter and bits in one command, so no rebuild in between can
    /// lose a bit.
    pub async fn publish_decisions(&self, views: &[RequestView]) -> redis::RedisResult<()> {
        if views.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        let now = Utc::now();
        let mut ids = String::with_capacity(views.len() * 37);
        let mut taken = Vec::with_capacity(views.len());
        for v in views {
            let active = v.booking_id.is_some() && v.status.is_active();
            if active && v.kind == RequestKind::Reschedule {
                // The booking changes later (paid, cancelled, moved again) under its first
                // request, whose cache entry those changes drop; this request's view is read
                // from PostgreSQL, which always shows the booking's current status.
                pipe.del(self.keys.request(v.id)).ignore();
            } else {
                let json = serde_json::to_string(v).map_err(json_err)?;
                // A held status is only cached until the hold expires; after that the poll
                // asks PostgreSQL, which knows whether it was paid or expired.
                let ttl = match (v.status, v.hold_expires_at) {
                    (RequestStatus::Held, Some(at)) => (at - now).num_seconds().max(1) as u64,
                    _ => REMEMBER.as_secs(),
                };
                pipe.set_ex(self.keys.request(v.id), json, ttl).ignore();
            }
            if active || v.reason == Some(RejectionReason::SlotTaken) {
                taken.push((v.practitioner_id, v.slot_start, true));
            }
            if !ids.is_empty() {
                ids.push(',');
            }
            ids.push_str(&v.id.to_string());
        }
        mark(&self.keys, &mut pipe, taken);
        pipe.decr(self.keys.pending_requests(), views.len())
            .ignore();
        pipe.publish(self.keys.decided_channel(), ids).ignore();
        pipe.query_async(&mut self.conn.clone()).await
    }

    /// After a booking changed status (confirmed, expired, cancelled): drops the cached request
    /// status so polls read PostgreSQL, and frees the slot's bit when the slot is free again.
    pub async fn booking_changed(
        &self,
        changes: &[(Uuid, Uuid, DateTime<Utc>, bool)],
    ) -> redis::RedisResult<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (request_id, ..) in changes {
            pipe.del(self.keys.request(*request_id)).ignore();
        }
        let freed = changes
            .iter()
            .filter(|c| c.3)
            .map(|&(_, practitioner, slot, _)| (practitioner, slot, false))
            .collect();
        mark(&self.keys, &mut pipe, freed);
        pipe.atomic().query_async(&mut self.conn.clone()).await
    }
}

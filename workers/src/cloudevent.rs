//! The wire format of booking events: CloudEvents 1.0 in JSON, **structured mode**.
//!
//! On Kafka the whole event is the message value (header `content-type:
//! application/cloudevents+json; charset=UTF-8`), keyed by practitioner id; a webhook body is
//! the same JSON object. Structured mode keeps every attribute in the one JSON document, so a
//! consumer needs no Kafka-header handling and the webhook and Kafka payloads are identical.
//!
//! ```json
//! {"specversion":"1.0","id":"<event uuid>","source":"/slotq","type":"booking.held",
//!  "subject":"<booking id>","time":"2026-11-30T08:00:01.234Z",
//!  "datacontenttype":"application/json","partitionkey":"<practitioner id>",
//!  "data":{"booking_id":"…","request_id":"…","practitioner_id":"…","patient_id":"…",
//!          "slot_start":"…","status":"held"}}
//! ```

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;
use slotq_store::outbox::OutboxEvent;
use uuid::Uuid;

/// `source` of every event.
pub const SOURCE: &str = "/slotq";

/// Kafka `content-type` header of a structured-mode event.
pub const CONTENT_TYPE: &str = "application/cloudevents+json; charset=UTF-8";

/// One CloudEvent.
#[derive(Debug, Serialize)]
pub struct CloudEvent<'a> {
    /// Always `1.0`.
    pub specversion: &'static str,
    /// The outbox event id: unique, the same on every re-send (deduplicate on it).
    pub id: Uuid,
    /// [`SOURCE`].
    pub source: &'static str,
    /// `booking.held`, `booking.confirmed`, …
    #[serde(rename = "type")]
    pub event_type: &'a str,
    /// The booking (for `booking.rejected`: the booking request).
    pub subject: Uuid,
    /// When the change committed (RFC 3339, UTC).
    pub time: String,
    /// Always `application/json`.
    pub datacontenttype: &'static str,
    /// The Kafka key: the practitioner id (CloudEvents partitioning extension).
    pub partitionkey: &'a str,
    /// Ids of what changed, never personal data.
    pub data: &'a Value,
}

/// The CloudEvent of an outbox row.
pub fn of(e: &OutboxEvent) -> CloudEvent<'_> {
    CloudEvent {
        specversion: "1.0",
        id: e.event_id,
        source: SOURCE,
        event_type: &e.event_type,
        subject: e.aggregate_id,
        time: rfc3339(e.created_at),
        datacontenttype: "application/json",
        partitionkey: &e.key,
        data: &e.payload,
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The event as JSON bytes (the Kafka message value).
pub fn to_bytes(e: &OutboxEvent) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&of(e))
}

/// The event as a JSON value (stored with a webhook delivery).
pub fn to_value(e: &OutboxEvent) -> Result<Value, serde_json::Error> {
    serde_json::to_value(of(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    #[test]
    fn an_outbox_row_becomes_a_structured_cloudevent() {
        let row = OutboxEvent {
            id: 7,
            event_id: Uuid::nil(),
            event_type: "booking.held".into(),
            aggregate_id: Uuid::max(),
            key: "p-1".into(),
            payload: json!({"status": "held"}),
            created_at: Utc
                .with_ymd_and_hms(2026, 11, 30, 8, 0, 1)
                .single()
                .expect("valid"),
        };
        let v: Value = serde_json::from_slice(&to_bytes(&row).expect("json")).expect("parses");
        assert_eq!(
            v,
            json!({
                "specversion": "1.0",
                "id": "00000000-0000-0000-0000-000000000000",
                "source": "/slotq",
                "type": "booking.held",
                "subject": "ffffffff-ffff-ffff-ffff-ffffffffffff",
                "time": "2026-11-30T08:00:01.000000Z",
                "datacontenttype": "application/json",
                "partitionkey": "p-1",
                "data": {"status": "held"}
            })
        );
        assert_eq!(to_value(&row).expect("json"), v);
    }
}

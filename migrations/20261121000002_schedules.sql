-- Schedule conflicts: active bookings that new hours or exceptions no longer cover. They are
-- never dropped silently; the clinic resolves each one (keep, cancel, or reschedule).
CREATE TABLE schedule_conflicts (
    booking_id      uuid        PRIMARY KEY,
    practitioner_id uuid        NOT NULL,
    slot_start      timestamptz NOT NULL,
    detected_at     timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz,
    resolution      text CHECK (resolution IN ('kept', 'cancelled', 'rescheduled', 'gone'))
);
CREATE INDEX schedule_conflicts_open ON schedule_conflicts (practitioner_id, slot_start) WHERE resolved_at IS NULL;

-- A reschedule request names the booking it moves.
ALTER TABLE booking_requests ADD COLUMN target_booking_id uuid;

-- Listings page through a patient's or practitioner's bookings by (slot_start, id).
CREATE INDEX bookings_patient_listing ON bookings (patient_id, slot_start, id);
CREATE INDEX bookings_practitioner_listing ON bookings (practitioner_id, slot_start, id);
DROP INDEX bookings_patient;
DROP INDEX bookings_practitioner_day;

-- slotq core schema: directory (clinics, practitioners, hours, patients), bookings (the gate),
-- durable request decisions, transactional outbox, audit log and payment-webhook idempotency.

CREATE TABLE clinics (
    id           uuid PRIMARY KEY,
    country_code char(2)     NOT NULL CHECK (country_code ~ '^[A-Z]{2}$'),
    name         text        NOT NULL,
    timezone     text        NOT NULL,
    address      text,
    phone        text,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE practitioners (
    id           uuid PRIMARY KEY,
    clinic_id    uuid        NOT NULL REFERENCES clinics (id),
    country_code char(2)     NOT NULL,
    name         text        NOT NULL,
    specialty    text        NOT NULL,
    slot_minutes integer     NOT NULL CHECK (slot_minutes BETWEEN 5 AND 480),
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX practitioners_clinic ON practitioners (clinic_id);

-- Weekly working hours, local to the clinic's time zone. Several intervals a day are allowed
-- (a lunch break is two rows); overlaps are refused by the API.
CREATE TABLE practitioner_hours (
    practitioner_id uuid     NOT NULL REFERENCES practitioners (id) ON DELETE CASCADE,
    weekday         smallint NOT NULL CHECK (weekday BETWEEN 1 AND 7),
    start_local     time     NOT NULL,
    end_local       time     NOT NULL,
    CHECK (start_local < end_local),
    PRIMARY KEY (practitioner_id, weekday, start_local)
);

-- Dated exceptions: a closed day (start/end NULL) or other hours that day.
CREATE TABLE schedule_exceptions (
    practitioner_id uuid    NOT NULL REFERENCES practitioners (id) ON DELETE CASCADE,
    day             date    NOT NULL,
    closed          boolean NOT NULL,
    start_local     time,
    end_local       time,
    CHECK (closed OR (start_local IS NOT NULL AND end_local IS NOT NULL AND start_local < end_local)),
    PRIMARY KEY (practitioner_id, day)
);

CREATE TABLE patients (
    id           uuid PRIMARY KEY,
    country_code char(2)     NOT NULL CHECK (country_code ~ '^[A-Z]{2}$'),
    name         text        NOT NULL,
    email        text        NOT NULL,
    phone        text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX patients_email ON patients (lower(email));

CREATE TYPE booking_status AS ENUM ('held', 'confirmed', 'expired', 'cancelled', 'completed', 'no_show');

-- Partitioned by country: every unique index must contain the partition key, which is why the
-- primary key is (country_code, id) and separate non-unique indexes serve look-ups by id.
CREATE TABLE bookings (
    id              uuid           NOT NULL,
    request_id      uuid           NOT NULL,
    country_code    char(2)        NOT NULL,
    practitioner_id uuid           NOT NULL,
    patient_id      uuid           NOT NULL,
    slot_start      timestamptz    NOT NULL,
    slot_end        timestamptz    NOT NULL,
    status          booking_status NOT NULL,
    hold_expires_at timestamptz,
    confirmed_at    timestamptz,
    cancelled_at    timestamptz,
    cancel_reason   text,
    payment_ref     text,
    created_at      timestamptz    NOT NULL DEFAULT now(),
    updated_at      timestamptz    NOT NULL DEFAULT now(),
    PRIMARY KEY (country_code, id),
    UNIQUE (country_code, request_id)
) PARTITION BY LIST (country_code);

CREATE TABLE bookings_default PARTITION OF bookings DEFAULT;

-- The gate: at most one active booking per practitioner and slot start.
CREATE UNIQUE INDEX bookings_no_double_book
    ON bookings (country_code, practitioner_id, slot_start)
    WHERE status IN ('held', 'confirmed');

-- A patient may not hold two active bookings starting at the same time (within a country).
CREATE UNIQUE INDEX bookings_patient_no_overlap
    ON bookings (country_code, patient_id, slot_start)
    WHERE status IN ('held', 'confirmed');

CREATE INDEX bookings_id ON bookings (id);
CREATE INDEX bookings_request_id ON bookings (request_id);
CREATE INDEX bookings_expiry ON bookings (hold_expires_at) WHERE status = 'held';
CREATE INDEX bookings_patient ON bookings (patient_id, slot_start);
CREATE INDEX bookings_practitioner_day ON bookings (practitioner_id, slot_start);

CREATE TYPE request_kind AS ENUM ('book', 'reschedule');
CREATE TYPE request_outcome AS ENUM ('held', 'rejected');

-- One row per accepted request, written by the worker in the same transaction as the hold:
-- the durable decision that polling falls back to when Redis does not know the request.
CREATE TABLE booking_requests (
    id               uuid PRIMARY KEY,
    idempotency_key  text,
    patient_id       uuid            NOT NULL,
    practitioner_id  uuid            NOT NULL,
    slot_start       timestamptz     NOT NULL,
    kind             request_kind    NOT NULL DEFAULT 'book',
    submitted_at     timestamptz     NOT NULL,
    decided_at       timestamptz     NOT NULL DEFAULT now(),
    outcome          request_outcome NOT NULL,
    reason           text,
    booking_id       uuid,
    CHECK ((outcome = 'held') = (booking_id IS NOT NULL))
);
CREATE INDEX booking_requests_booking ON booking_requests (booking_id) WHERE booking_id IS NOT NULL;

-- Transactional outbox. bigserial ids commit out of order: relays must claim unpublished rows
-- with FOR UPDATE SKIP LOCKED, never read "id > last seen".
CREATE TABLE outbox (
    id            bigserial PRIMARY KEY,
    event_id      uuid        NOT NULL UNIQUE,
    type          text        NOT NULL,
    aggregate_id  uuid        NOT NULL,
    key           text        NOT NULL,
    payload       jsonb       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz,
    dispatched_at timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (created_at, id) WHERE published_at IS NULL;
CREATE INDEX outbox_undispatched ON outbox (created_at, id) WHERE dispatched_at IS NULL;

-- Append-only history of every booking status change.
CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    booking_id  uuid        NOT NULL,
    actor       text        NOT NULL,
    action      text        NOT NULL,
    from_status text,
    to_status   text        NOT NULL,
    request_id  text,
    detail      jsonb,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_booking ON audit_log (booking_id, at);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;
CREATE TRIGGER audit_log_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

-- Payment-webhook idempotency: one row per provider event id, with the outcome we answered.
CREATE TABLE payment_events (
    event_id    text PRIMARY KEY,
    booking_id  uuid        NOT NULL,
    type        text        NOT NULL,
    amount      bigint,
    currency    text,
    received_at timestamptz NOT NULL DEFAULT now(),
    outcome     text        NOT NULL
);

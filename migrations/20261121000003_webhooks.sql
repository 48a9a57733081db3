-- Results out: outbox ordering and retention, and outbound client webhooks (Standard Webhooks):
-- subscriptions, one delivery per (subscription, event), and every attempt of a delivery.

-- Relays read the outbox in created_at order. now() is the start of the writing transaction,
-- which may precede a row lock that transaction then waits for; clock_timestamp() is read at
-- the insert, after the change the event describes. So when two transactions touch the same
-- booking (or the same slot), the one that commits second also has the later created_at.
ALTER TABLE outbox ALTER COLUMN created_at SET DEFAULT clock_timestamp();

-- The scheduler deletes published events older than OUTBOX_RETENTION_SECS.
CREATE INDEX outbox_created_at ON outbox (created_at);

CREATE TABLE webhook_subscriptions (
    id              uuid PRIMARY KEY,
    url             text        NOT NULL,
    events          text[]      NOT NULL CHECK (cardinality(events) > 0),
    -- whsec_<base64>: shown to the client once, kept to sign every delivery.
    secret          text        NOT NULL,
    status          text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    disabled_reason text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    disabled_at     timestamptz
);

-- One row per event and subscription. `attempts` counts attempts started; a pending delivery
-- is due at next_attempt_at (also the lease of an attempt in progress, so a crashed dispatcher's
-- delivery is retried); retries stop once retry_from is WEBHOOK_RETRY_WINDOW_SECS old and the
-- delivery is dead-lettered (`dead`) until redelivered, which restarts the window.
CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY,   -- UUIDv7: listing order
    subscription_id  uuid        NOT NULL REFERENCES webhook_subscriptions (id) ON DELETE CASCADE,
    event_id         uuid        NOT NULL,
    event_type       text        NOT NULL,
    body             jsonb       NOT NULL,   -- the CloudEvent; outbox rows are deleted after retention
    status           text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz,
    last_attempt_at  timestamptz,
    last_status_code integer,
    last_error       text,
    retry_from       timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    dead_at          timestamptz,
    UNIQUE (subscription_id, event_id),
    CHECK ((status = 'pending') = (next_attempt_at IS NOT NULL))
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_listing ON webhook_deliveries (subscription_id, id);

CREATE TABLE webhook_delivery_attempts (
    delivery_id  uuid        NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt      integer     NOT NULL,
    started_at   timestamptz NOT NULL,
    duration_ms  integer     NOT NULL,
    status_code  integer,
    error        text,
    PRIMARY KEY (delivery_id, attempt)
);

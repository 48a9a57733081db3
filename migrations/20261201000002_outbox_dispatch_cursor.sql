-- The webhook dispatcher reads the outbox through a cursor instead of marking every row.
--
-- Marking cost an UPDATE per event (a new row version and new entries in every index of
-- the outbox, ~13 µs per event, and as much again for vacuum: loadtest/README.md change 13).
-- A plain "id > last id" cursor would skip rows: bigserial ids are handed out at insert but
-- become visible at commit, out of order. So every row records the id of the transaction that
-- wrote it, and the dispatcher reads, in (xact, id) order, only rows whose transaction is older
-- than the oldest one still running (pg_snapshot_xmin): those transactions have all ended, so
-- no row can appear behind the cursor later. Webhook deliveries are unordered anyway
-- (README: at least once, unordered), so this order is as good as creation order.
ALTER TABLE outbox ADD COLUMN xact xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX outbox_in_xact_order ON outbox (xact, id);

CREATE TABLE outbox_cursors (
    consumer text PRIMARY KEY,
    xact     xid8   NOT NULL,
    id       bigint NOT NULL
);

-- Rows written before this migration all carry this transaction's id: the cursor starts just
-- before the oldest of them not yet dispatched (any dispatched out of order after it are
-- dispatched again; receivers deduplicate on webhook-id).
INSERT INTO outbox_cursors (consumer, xact, id)
SELECT 'webhooks', pg_current_xact_id(),
       COALESCE((SELECT min(id) - 1 FROM outbox WHERE dispatched_at IS NULL),
                (SELECT max(id) FROM outbox), 0);

DROP INDEX outbox_undispatched;
ALTER TABLE outbox DROP COLUMN dispatched_at;

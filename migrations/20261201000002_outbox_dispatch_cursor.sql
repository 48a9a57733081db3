-- The webhook dispatcher reads the outbox through a cursor instead of marking every row.
--
-- Marking cost an UPDATE per event (a new row version and new entries in every index of
-- the outbox, plus the vacuum of the old version: loadtest/README.md change 13). A plain
-- "id > last id" cursor would skip rows: bigserial ids are handed out at insert but become
-- visible at commit, out of order. So every row records the id of the transaction that wrote
-- it, and the dispatcher reads, in (xact, id) order, only rows whose transaction is older than
-- the oldest one still running (pg_snapshot_xmin): those transactions have all ended, so no row
-- can appear behind the cursor later. Webhook deliveries are unordered anyway (README: at least
-- once, unordered), so this order is as good as creation order.
--
-- Cheap on a large outbox: the column is added without a default (no table rewrite) and only
-- the rows not yet dispatched are given one; rows dispatched before this migration keep a NULL
-- xact, which the dispatcher never reads and retention treats as dispatched.
ALTER TABLE outbox ADD COLUMN xact xid8;
ALTER TABLE outbox ALTER COLUMN xact SET DEFAULT pg_current_xact_id();
UPDATE outbox SET xact = pg_current_xact_id() WHERE dispatched_at IS NULL;
CREATE INDEX outbox_in_xact_order ON outbox (xact, id);

CREATE TABLE outbox_cursors (
    consumer text PRIMARY KEY,
    xact     xid8   NOT NULL,
    id       bigint NOT NULL
);

-- The rows given this transaction's id above come right after the cursor.
INSERT INTO outbox_cursors (consumer, xact, id)
SELECT 'webhooks', pg_current_xact_id(),
       COALESCE((SELECT min(id) - 1 FROM outbox WHERE dispatched_at IS NULL), 0);

DROP INDEX outbox_undispatched;
ALTER TABLE outbox DROP COLUMN dispatched_at;

-- The UNIQUE constraint on outbox.event_id cost a B-tree entry per event and guarded nothing:
-- every event id is a UUIDv7 its writer generates (events.rs), nothing looks an event up by
-- it, and a webhook delivery keeps its own copy (webhook_deliveries is unique per subscription
-- and event). loadtest/README.md, change 22. (The created_at index stays: the retention sweep
-- reads the oldest rows through it, and a BRIN index made that a sort of every old row.)
ALTER TABLE outbox DROP CONSTRAINT IF EXISTS outbox_event_id_key;

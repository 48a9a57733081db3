-- When a practitioner's hours were last replaced. A hold decided by a worker that read the old
-- hours can commit after the replacement has looked for conflicts; the scheduler looks again
-- for practitioners whose hours changed recently (common/src/db/conflicts.rs, `recheck`).
ALTER TABLE practitioners ADD COLUMN hours_changed_at timestamptz;
CREATE INDEX practitioners_hours_changed ON practitioners (hours_changed_at)
    WHERE hours_changed_at IS NOT NULL;

-- The scheduler looks for conflicts once, a few seconds after an hours change, instead of on
-- every tick for two minutes: this records that it has looked at the latest change.
ALTER TABLE practitioners ADD COLUMN hours_rechecked_at timestamptz;

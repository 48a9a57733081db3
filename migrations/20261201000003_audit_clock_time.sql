-- Audit rows are stamped when they are written, not when their transaction began: two
-- transactions changing one booking are ordered by its row lock, and the later one may have
-- begun first (a cancel that waited for a payment's confirmation). With now() its row sorted
-- before the change it followed.
ALTER TABLE audit_log ALTER COLUMN at SET DEFAULT clock_timestamp();

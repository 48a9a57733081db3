-- An exception may give several periods for one date (08:00–12:00 and 14:00–18:00 on a
-- special day), or close it: one row per period, a closed date has one row.
ALTER TABLE schedule_exceptions DROP CONSTRAINT schedule_exceptions_pkey;
CREATE UNIQUE INDEX schedule_exceptions_period
    ON schedule_exceptions (practitioner_id, day, start_local) NULLS NOT DISTINCT;

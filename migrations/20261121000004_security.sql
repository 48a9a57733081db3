-- Personal data at rest: patient name, e-mail and phone are stored AES-256-GCM encrypted by the
-- application (key id inside each value); e-mail uniqueness goes through a keyed HMAC blind
-- index. The plaintext columns stay only for rows written before this migration, which the
-- services encrypt at start-up and then clear.
ALTER TABLE patients
    ADD COLUMN name_enc bytea,
    ADD COLUMN email_enc bytea,
    ADD COLUMN phone_enc bytea,
    ADD COLUMN email_bidx bytea,
    ALTER COLUMN name DROP NOT NULL,
    ALTER COLUMN email DROP NOT NULL;
DROP INDEX patients_email;
CREATE UNIQUE INDEX patients_email_bidx ON patients (email_bidx);

-- Who changed a booking: the token's subject is in `actor`, its role here.
ALTER TABLE audit_log ADD COLUMN actor_role text;

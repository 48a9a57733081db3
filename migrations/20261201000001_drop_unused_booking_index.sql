-- No query looks a booking up by its request id alone (booking_requests.booking_id points the
-- other way, and the UNIQUE (country_code, request_id) constraint keeps a request to one
-- booking per country). Every index costs each hold insert of the batch; this one served
-- nothing (slotq-loadtest throughput, loadtest/README.md change 10).
DROP INDEX IF EXISTS bookings_request_id;

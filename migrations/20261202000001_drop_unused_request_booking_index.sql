-- No query finds a request by its booking: polls read booking_requests by id, and a booking
-- names its own request (bookings.request_id). The partial index on booking_requests
-- (booking_id) was one more B-tree entry per held decision and served nothing
-- (loadtest/README.md, change 24).
DROP INDEX IF EXISTS booking_requests_booking;

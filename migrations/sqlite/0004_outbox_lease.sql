-- A delivery attempt's lease on an outbox row: the worker that claimed it
-- (`claimed_by`, a token per worker) sends it and records the outcome; no
-- other worker takes it before `claimed_until`, after which a claimant that
-- died (between the server's answer and the record of it) is presumed gone.
ALTER TABLE notifications ADD COLUMN claimed_by TEXT;
ALTER TABLE notifications ADD COLUMN claimed_until TEXT CHECK (claimed_until IS NULL OR length(claimed_until) = 27);

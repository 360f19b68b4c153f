-- How long an incident's rules have been seen clear (for `resolve_after`),
-- so a restart goes on counting rather than starting over: the instant they
-- would have been clear since, had the clear time observed so far been one
-- unbroken stretch ending at the incident's latest sample. NULL while a rule
-- breaches. Time during which nothing was observed is never counted.
ALTER TABLE incidents ADD COLUMN clear_since TIMESTAMPTZ;

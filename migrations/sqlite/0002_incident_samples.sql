-- What the target looked like around an incident, for its report's chart:
-- the engine's recent history when the incident opens, then every poll until
-- it is resolved. Counts are per interval, as in a trace; NULL is unknown.
CREATE TABLE incident_samples (
    incident_id    INTEGER NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    at             TEXT    NOT NULL CHECK (length(at) = 27),
    up             INTEGER CHECK (up IS NULL OR up IN (0, 1)),
    requests       REAL,
    errors         REAL,
    users          REAL,
    users_affected REAL,
    latency_ms     REAL,
    PRIMARY KEY (incident_id, at)
);

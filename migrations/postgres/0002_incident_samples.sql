-- What the target looked like around an incident, for its report's chart:
-- the engine's recent history when the incident opens, then every poll until
-- it is resolved. Counts are per interval, as in a trace; NULL is unknown.
CREATE TABLE incident_samples (
    incident_id    BIGINT           NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    at             TIMESTAMPTZ      NOT NULL,
    up             BOOLEAN,
    requests       DOUBLE PRECISION,
    errors         DOUBLE PRECISION,
    users          DOUBLE PRECISION,
    users_affected DOUBLE PRECISION,
    latency_ms     DOUBLE PRECISION,
    PRIMARY KEY (incident_id, at)
);

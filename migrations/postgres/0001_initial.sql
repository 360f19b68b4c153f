-- rollwatch schema, PostgreSQL flavour (the SQLite one in ../sqlite/ has the
-- same tables and columns). Instants are TIMESTAMPTZ (microseconds), JSON
-- columns JSONB. Enumerations are TEXT with a CHECK.

CREATE TABLE deployments (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target      TEXT    NOT NULL CHECK (target <> ''),
    version     TEXT,
    previous    TEXT,
    migrations  JSONB   NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(migrations) = 'array'),
    at          TIMESTAMPTZ NOT NULL,
    is_rollback BOOLEAN NOT NULL DEFAULT FALSE,
    source      TEXT    NOT NULL CHECK (source IN ('announced', 'observed', 'rollback'))
);
CREATE INDEX deployments_by_target ON deployments (target, at);

CREATE TABLE incidents (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target       TEXT    NOT NULL CHECK (target <> ''),
    kind         TEXT    NOT NULL CHECK (kind IN ('rule', 'declared', 'drill')),
    tier         TEXT    NOT NULL CHECK (tier IN ('immediate', 'consider', 'watch', 'ignore')),
    rule         TEXT    NOT NULL,
    reason       TEXT    NOT NULL DEFAULT '',
    component    TEXT,
    from_version TEXT,
    to_version   TEXT,
    opened_at    TIMESTAMPTZ NOT NULL,
    phase        TEXT    NOT NULL DEFAULT 'open' CHECK (phase IN
                     ('open', 'rolling-back', 'verifying', 'watching', 'recovering', 'escalated', 'resolved')),
    phase_at     TIMESTAMPTZ NOT NULL,
    deadline     TIMESTAMPTZ,
    watch_until  TIMESTAMPTZ,
    acknowledged BOOLEAN NOT NULL DEFAULT FALSE,
    held         BOOLEAN NOT NULL DEFAULT FALSE,
    resolved_at  TIMESTAMPTZ,
    outcome      TEXT    CHECK (outcome IS NULL OR outcome IN
                     ('stable', 'recovered', 'escalated', 'dismissed', 'drill-passed', 'drill-failed')),
    CHECK ((phase = 'resolved') = (resolved_at IS NOT NULL)),
    CHECK ((resolved_at IS NULL) = (outcome IS NULL))
);
CREATE INDEX incidents_by_target ON incidents (target, opened_at);
CREATE INDEX incidents_by_opened ON incidents (opened_at);
-- One unresolved incident per target (drills run beside it): two overlapping
-- rules open one incident and one rollback.
CREATE UNIQUE INDEX incidents_one_unresolved_per_target ON incidents (target)
    WHERE phase <> 'resolved' AND kind <> 'drill';

CREATE TABLE decisions (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    incident_id   BIGINT REFERENCES incidents (id) ON DELETE CASCADE,
    target        TEXT    NOT NULL CHECK (target <> ''),
    at            TIMESTAMPTZ NOT NULL,
    action        TEXT    NOT NULL CHECK (action IN ('none', 'notify', 'page', 'page-then-rollback', 'rollback')),
    tier          TEXT    NOT NULL CHECK (tier IN ('immediate', 'consider', 'watch', 'ignore')),
    rule          TEXT    NOT NULL,
    cause         TEXT    NOT NULL,
    guard         TEXT,
    explanation   TEXT    NOT NULL,
    reading       JSONB,
    deadline      TIMESTAMPTZ,
    component     TEXT,
    from_version  TEXT,
    to_version    TEXT,
    policy_path   TEXT    NOT NULL,
    policy_sha256 TEXT    NOT NULL CHECK (length(policy_sha256) = 64)
);
CREATE INDEX decisions_by_incident ON decisions (incident_id, at);
CREATE INDEX decisions_by_target ON decisions (target, at);

CREATE TABLE steps (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    incident_id BIGINT  NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    name        TEXT    NOT NULL CHECK (name <> ''),
    stage       TEXT    NOT NULL CHECK (stage IN
                    ('notify', 'backup', 'application', 'database', 'verification', 'recovery', 'escalation')),
    component   TEXT,
    argv        JSONB   NOT NULL CHECK (jsonb_typeof(argv) = 'array'),
    started_at  TIMESTAMPTZ NOT NULL,
    ended_at    TIMESTAMPTZ,
    outcome     TEXT    NOT NULL DEFAULT 'running' CHECK (outcome IN
                    ('running', 'succeeded', 'failed', 'timed-out', 'failed-to-start', 'unknown')),
    exit_code   INTEGER,
    detail      TEXT,
    stdout      TEXT    NOT NULL DEFAULT '',
    stderr      TEXT    NOT NULL DEFAULT '',
    duration_ms BIGINT  CHECK (duration_ms IS NULL OR duration_ms >= 0),
    CHECK ((outcome = 'running') = (ended_at IS NULL))
);
CREATE INDEX steps_by_incident ON steps (incident_id, started_at);
CREATE INDEX steps_running ON steps (incident_id) WHERE outcome = 'running';

CREATE TABLE notifications (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    incident_id     BIGINT REFERENCES incidents (id) ON DELETE CASCADE,
    kind            TEXT    NOT NULL CHECK (kind IN ('page', 'notice', 'escalation', 'resolved')),
    channel         TEXT    NOT NULL CHECK (channel <> ''),
    recipients      JSONB   NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(recipients) = 'array'),
    subject         TEXT    NOT NULL,
    body            TEXT    NOT NULL,
    dedupe_key      TEXT    NOT NULL UNIQUE CHECK (dedupe_key <> ''),
    state           TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at TIMESTAMPTZ NOT NULL,
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    sent_at         TIMESTAMPTZ,
    CHECK ((state = 'sent') = (sent_at IS NOT NULL))
);
CREATE INDEX notifications_due ON notifications (next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX notifications_by_incident ON notifications (incident_id, created_at);

CREATE TABLE answers (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    incident_id BIGINT  NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    kind        TEXT    NOT NULL CHECK (kind IN ('ack', 'hold', 'approve')),
    answered_by TEXT    NOT NULL CHECK (answered_by <> ''),
    at          TIMESTAMPTZ NOT NULL,
    note        TEXT
);
CREATE INDEX answers_by_incident ON answers (incident_id, at);

CREATE TABLE suppressions (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target     TEXT    NOT NULL CHECK (target <> ''),
    rule       TEXT,
    until      TIMESTAMPTZ NOT NULL,
    reason     TEXT    NOT NULL CHECK (reason <> ''),
    created_by TEXT    NOT NULL CHECK (created_by <> ''),
    created_at TIMESTAMPTZ NOT NULL,
    CHECK (until > created_at)
);
CREATE INDEX suppressions_by_target ON suppressions (target, until);

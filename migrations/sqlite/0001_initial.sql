-- rollwatch schema, SQLite flavour (the PostgreSQL one in ../postgres/ has the
-- same tables and columns). Instants are TEXT in one fixed UTC format,
-- `YYYY-MM-DDTHH:MM:SS.ffffffZ` (27 characters), so text order is time order.
-- JSON columns hold JSON text. Enumerations are TEXT with a CHECK.

CREATE TABLE deployments (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    target      TEXT    NOT NULL CHECK (target <> ''),
    version     TEXT,
    previous    TEXT,
    migrations  TEXT    NOT NULL DEFAULT '[]' CHECK (json_valid(migrations)),
    at          TEXT    NOT NULL CHECK (length(at) = 27),
    is_rollback INTEGER NOT NULL DEFAULT 0 CHECK (is_rollback IN (0, 1)),
    source      TEXT    NOT NULL CHECK (source IN ('announced', 'observed', 'rollback'))
);
CREATE INDEX deployments_by_target ON deployments (target, at);

CREATE TABLE incidents (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    target       TEXT    NOT NULL CHECK (target <> ''),
    kind         TEXT    NOT NULL CHECK (kind IN ('rule', 'declared', 'drill')),
    tier         TEXT    NOT NULL CHECK (tier IN ('immediate', 'consider', 'watch', 'ignore')),
    rule         TEXT    NOT NULL,
    reason       TEXT    NOT NULL DEFAULT '',
    component    TEXT,
    from_version TEXT,
    to_version   TEXT,
    opened_at    TEXT    NOT NULL CHECK (length(opened_at) = 27),
    phase        TEXT    NOT NULL DEFAULT 'open' CHECK (phase IN
                     ('open', 'rolling-back', 'verifying', 'watching', 'recovering', 'escalated', 'resolved')),
    phase_at     TEXT    NOT NULL CHECK (length(phase_at) = 27),
    deadline     TEXT    CHECK (deadline IS NULL OR length(deadline) = 27),
    watch_until  TEXT    CHECK (watch_until IS NULL OR length(watch_until) = 27),
    acknowledged INTEGER NOT NULL DEFAULT 0 CHECK (acknowledged IN (0, 1)),
    held         INTEGER NOT NULL DEFAULT 0 CHECK (held IN (0, 1)),
    resolved_at  TEXT    CHECK (resolved_at IS NULL OR length(resolved_at) = 27),
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
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id   INTEGER REFERENCES incidents (id) ON DELETE CASCADE,
    target        TEXT    NOT NULL CHECK (target <> ''),
    at            TEXT    NOT NULL CHECK (length(at) = 27),
    action        TEXT    NOT NULL CHECK (action IN ('none', 'notify', 'page', 'page-then-rollback', 'rollback')),
    tier          TEXT    NOT NULL CHECK (tier IN ('immediate', 'consider', 'watch', 'ignore')),
    rule          TEXT    NOT NULL,
    cause         TEXT    NOT NULL,
    guard         TEXT,
    explanation   TEXT    NOT NULL,
    reading       TEXT    CHECK (reading IS NULL OR json_valid(reading)),
    deadline      TEXT    CHECK (deadline IS NULL OR length(deadline) = 27),
    component     TEXT,
    from_version  TEXT,
    to_version    TEXT,
    policy_path   TEXT    NOT NULL,
    policy_sha256 TEXT    NOT NULL CHECK (length(policy_sha256) = 64)
);
CREATE INDEX decisions_by_incident ON decisions (incident_id, at);
CREATE INDEX decisions_by_target ON decisions (target, at);

CREATE TABLE steps (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id INTEGER NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    name        TEXT    NOT NULL CHECK (name <> ''),
    stage       TEXT    NOT NULL CHECK (stage IN
                    ('notify', 'backup', 'application', 'database', 'verification', 'recovery', 'escalation')),
    component   TEXT,
    argv        TEXT    NOT NULL CHECK (json_valid(argv)),
    started_at  TEXT    NOT NULL CHECK (length(started_at) = 27),
    ended_at    TEXT    CHECK (ended_at IS NULL OR length(ended_at) = 27),
    outcome     TEXT    NOT NULL DEFAULT 'running' CHECK (outcome IN
                    ('running', 'succeeded', 'failed', 'timed-out', 'failed-to-start', 'unknown')),
    exit_code   INTEGER,
    detail      TEXT,
    stdout      TEXT    NOT NULL DEFAULT '',
    stderr      TEXT    NOT NULL DEFAULT '',
    duration_ms INTEGER CHECK (duration_ms IS NULL OR duration_ms >= 0),
    CHECK ((outcome = 'running') = (ended_at IS NULL))
);
CREATE INDEX steps_by_incident ON steps (incident_id, started_at);
CREATE INDEX steps_running ON steps (incident_id) WHERE outcome = 'running';

CREATE TABLE notifications (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id     INTEGER REFERENCES incidents (id) ON DELETE CASCADE,
    kind            TEXT    NOT NULL CHECK (kind IN ('page', 'notice', 'escalation', 'resolved')),
    channel         TEXT    NOT NULL CHECK (channel <> ''),
    recipients      TEXT    NOT NULL DEFAULT '[]' CHECK (json_valid(recipients)),
    subject         TEXT    NOT NULL,
    body            TEXT    NOT NULL,
    dedupe_key      TEXT    NOT NULL UNIQUE CHECK (dedupe_key <> ''),
    state           TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at TEXT    NOT NULL CHECK (length(next_attempt_at) = 27),
    last_error      TEXT,
    created_at      TEXT    NOT NULL CHECK (length(created_at) = 27),
    sent_at         TEXT    CHECK (sent_at IS NULL OR length(sent_at) = 27),
    CHECK ((state = 'sent') = (sent_at IS NOT NULL))
);
CREATE INDEX notifications_due ON notifications (next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX notifications_by_incident ON notifications (incident_id, created_at);

CREATE TABLE answers (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id INTEGER NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    kind        TEXT    NOT NULL CHECK (kind IN ('ack', 'hold', 'approve')),
    answered_by TEXT    NOT NULL CHECK (answered_by <> ''),
    at          TEXT    NOT NULL CHECK (length(at) = 27),
    note        TEXT
);
CREATE INDEX answers_by_incident ON answers (incident_id, at);

CREATE TABLE suppressions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    target     TEXT    NOT NULL CHECK (target <> ''),
    rule       TEXT,
    until      TEXT    NOT NULL CHECK (length(until) = 27),
    reason     TEXT    NOT NULL CHECK (reason <> ''),
    created_by TEXT    NOT NULL CHECK (created_by <> ''),
    created_at TEXT    NOT NULL CHECK (length(created_at) = 27),
    CHECK (until > created_at)
);
CREATE INDEX suppressions_by_target ON suppressions (target, until);

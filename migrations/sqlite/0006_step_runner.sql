-- A step runs under a runner process (the rollwatch binary re-executed) that
-- outlives the watchdog: it names itself (HOST:PID), records the step's
-- process group and its timeout, and beats while the step runs, so a
-- restarted rollwatch or a new owner waits for the recorded end instead of
-- guessing.
ALTER TABLE steps ADD COLUMN runner TEXT;
ALTER TABLE steps ADD COLUMN heartbeat_at TEXT CHECK (heartbeat_at IS NULL OR length(heartbeat_at) = 27);
ALTER TABLE steps ADD COLUMN step_pgid INTEGER;
ALTER TABLE steps ADD COLUMN timeout_ms INTEGER CHECK (timeout_ms IS NULL OR timeout_ms >= 0);

-- Each acquisition of a target (a replica taking its advisory lock) raises
-- its epoch; acting writes carry the epoch they were made under and are
-- refused once a newer one exists (a stalled owner that thaws writes
-- nothing).
CREATE TABLE ownership (
    target      TEXT    PRIMARY KEY CHECK (target <> ''),
    epoch       INTEGER NOT NULL CHECK (epoch > 0),
    owner       TEXT    NOT NULL,
    acquired_at TEXT    NOT NULL CHECK (length(acquired_at) = 27)
);

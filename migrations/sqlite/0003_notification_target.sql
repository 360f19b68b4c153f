-- A notification's target (whose policy names its channel) and its structured
-- details (service, environment, rule, tier, action, deadline, answer
-- commands) for channels that carry fields, such as Alertmanager's labels.
ALTER TABLE notifications ADD COLUMN target TEXT NOT NULL DEFAULT '';
ALTER TABLE notifications ADD COLUMN details TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(details));
CREATE INDEX notifications_pending_by_channel ON notifications (target, channel, id) WHERE state = 'pending';

-- Alert state: an alert fires once (starts_at), is re-sent while active, and resolves
-- (ends_at) when its cause is gone. alert_key is the label set without severity.
CREATE TABLE alerts (
    alert_key     TEXT PRIMARY KEY NOT NULL,
    plan_id       TEXT NOT NULL,
    labels        TEXT NOT NULL,   -- JSON object
    annotations   TEXT NOT NULL,   -- JSON object
    starts_at_ms  BIGINT NOT NULL,
    ends_at_ms    BIGINT,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX alerts_open ON alerts (plan_id, ends_at_ms);

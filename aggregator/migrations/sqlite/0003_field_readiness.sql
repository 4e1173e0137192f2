-- Agents as the centre hears them: one row per signing key that sent a verified Hello (the
-- agent's heartbeat, also sent when it has nothing to report).
CREATE TABLE agents (
    key_id         BLOB PRIMARY KEY NOT NULL,
    unit_id        TEXT NOT NULL,
    first_seen_ms  INTEGER NOT NULL,
    last_seen_ms   INTEGER NOT NULL,
    agent_version  TEXT NOT NULL,
    outbox_reports INTEGER NOT NULL,
    dead_letters   INTEGER NOT NULL
);

-- The centre's own availability. A serving process marks itself alive at every alert
-- evaluation; a segment [started_ms, alive_ms + slack_ms] covers a stretch of beats no further
-- apart than slack_ms (twice the evaluation interval), and a longer silence starts a new
-- segment. What no segment covers, between the first start and now, is an outage: units
-- could not deliver, and timeliness forgives it.
CREATE TABLE centre_uptime (
    run_id     TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    alive_ms   INTEGER NOT NULL,
    slack_ms   INTEGER NOT NULL,
    PRIMARY KEY (run_id, started_ms)
);

-- Deployment facts: the plan served and the go-live time (alerts only for deadlines after it).
CREATE TABLE settings (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

-- When the report that first delivered a value was signed: with an outage of the centre at the
-- deadline, a report signed before it counts on time.
ALTER TABLE current_values ADD COLUMN first_issued_at_ms INTEGER;
UPDATE current_values SET first_issued_at_ms = issued_at_ms;

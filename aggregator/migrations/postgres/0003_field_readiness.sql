-- Agents as the centre hears them: one row per signing key that sent a verified Hello (the
-- agent's heartbeat, also sent when it has nothing to report).
CREATE TABLE agents (
    key_id         BYTEA PRIMARY KEY NOT NULL,
    unit_id        TEXT NOT NULL,
    first_seen_ms  BIGINT NOT NULL,
    last_seen_ms   BIGINT NOT NULL,
    agent_version  TEXT NOT NULL,
    outbox_reports BIGINT NOT NULL,
    dead_letters   BIGINT NOT NULL
);

-- The centre's own availability: each serving process keeps one row alive while it runs (at
-- every alert evaluation). A row covers [started_ms, alive_ms + slack_ms], slack_ms being twice
-- the last interval between beats; what no row covers is an outage, during which units cannot
-- deliver, and timeliness forgives it.
CREATE TABLE centre_uptime (
    run_id     TEXT PRIMARY KEY NOT NULL,
    started_ms BIGINT NOT NULL,
    alive_ms   BIGINT NOT NULL,
    slack_ms   BIGINT NOT NULL
);

-- Deployment facts: the plan served and the go-live time (alerts only for deadlines after it).
CREATE TABLE settings (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

-- When the report that first delivered a value was signed: with an outage of the centre at the
-- deadline, a report signed before it counts on time.
ALTER TABLE current_values ADD COLUMN first_issued_at_ms BIGINT;
UPDATE current_values SET first_issued_at_ms = issued_at_ms;

-- The agent's durable outbox. A report is signed and committed here before any send, and
-- leaves only when the aggregator has answered ACCEPTED, DUPLICATE or PARTIAL, or as a dead
-- letter after a permanent refusal.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
);
INSERT INTO meta (key, value) VALUES ('next_seq', 1);

CREATE TABLE outbox (
    seq           INTEGER PRIMARY KEY NOT NULL,
    report_id     BLOB NOT NULL,
    period        TEXT NOT NULL,
    envelope      BLOB NOT NULL,      -- the encoded SignedReport, resent byte for byte
    bytes         INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT
);

CREATE TABLE dead_letters (
    seq           INTEGER PRIMARY KEY NOT NULL,
    report_id     BLOB NOT NULL,
    period        TEXT NOT NULL,
    envelope      BLOB NOT NULL,
    bytes         INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    failed_at_ms  INTEGER NOT NULL,
    reason        TEXT NOT NULL,
    message       TEXT NOT NULL
);

-- What was last put in the outbox per item, to build a report only when something changed.
CREATE TABLE last_sent (
    kind        TEXT NOT NULL,        -- 'value' or 'task'
    subject     TEXT NOT NULL,        -- indicator id, or task id/milestone id
    period      TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    PRIMARY KEY (kind, subject, period)
);

-- The next revision per period: a later report for a period is a correction and must win.
CREATE TABLE period_revision (
    period        TEXT PRIMARY KEY NOT NULL,
    next_revision INTEGER NOT NULL
);

-- duban aggregator schema, SQLite. Uniqueness lives in constraints, never in memory.

CREATE TABLE keys (
    key_id        BLOB PRIMARY KEY NOT NULL,  -- SHA-256 of the raw public key
    unit_id       TEXT NOT NULL,
    public_key    BLOB NOT NULL,              -- raw 32-byte Ed25519 key
    not_before_ms INTEGER,
    not_after_ms  INTEGER,
    added_at_ms   INTEGER NOT NULL,
    revoked_at_ms INTEGER,
    max_seq       INTEGER NOT NULL DEFAULT 0  -- highest seq stored under this key
);
CREATE INDEX keys_by_unit ON keys (unit_id);

-- Every stored report with its envelope exactly as received (evidence).
CREATE TABLE reports (
    report_pk          INTEGER PRIMARY KEY,
    plan_id            TEXT NOT NULL,
    unit_id            TEXT NOT NULL,
    report_id          BLOB NOT NULL,
    key_id             BLOB NOT NULL,
    seq                INTEGER NOT NULL,
    issued_at_ms       INTEGER NOT NULL,
    received_at_ms     INTEGER NOT NULL,
    period             TEXT NOT NULL,
    revision           INTEGER NOT NULL,
    payload            BLOB NOT NULL,
    payload_type       TEXT NOT NULL,
    signature          BLOB NOT NULL,
    payload_sha256     BLOB NOT NULL,
    values_count       INTEGER NOT NULL,
    task_updates_count INTEGER NOT NULL,
    refused_count      INTEGER NOT NULL,
    UNIQUE (unit_id, report_id),
    UNIQUE (key_id, seq)
);
CREATE INDEX reports_by_received ON reports (received_at_ms);

CREATE TABLE value_history (
    report_pk    INTEGER NOT NULL REFERENCES reports (report_pk),
    plan_id      TEXT NOT NULL,
    indicator_id TEXT NOT NULL,
    unit_id      TEXT NOT NULL,
    period       TEXT NOT NULL,
    value        REAL NOT NULL,
    note         TEXT NOT NULL,
    PRIMARY KEY (report_pk, indicator_id)
);

-- The winning value per (plan, indicator, unit, period): greatest (revision, issued_at_ms, seq).
CREATE TABLE current_values (
    plan_id              TEXT NOT NULL,
    indicator_id         TEXT NOT NULL,
    unit_id              TEXT NOT NULL,
    period               TEXT NOT NULL,
    value                REAL NOT NULL,
    note                 TEXT NOT NULL,
    revision             INTEGER NOT NULL,
    issued_at_ms         INTEGER NOT NULL,
    seq                  INTEGER NOT NULL,
    report_pk            INTEGER NOT NULL REFERENCES reports (report_pk),
    updated_at_ms        INTEGER NOT NULL,
    first_received_at_ms INTEGER NOT NULL,
    PRIMARY KEY (plan_id, indicator_id, unit_id, period)
);

CREATE TABLE task_history (
    report_pk    INTEGER NOT NULL REFERENCES reports (report_pk),
    plan_id      TEXT NOT NULL,
    task_id      TEXT NOT NULL,
    milestone_id TEXT NOT NULL,
    unit_id      TEXT NOT NULL,
    period       TEXT NOT NULL,
    percent      REAL NOT NULL,
    status       TEXT NOT NULL,
    note         TEXT NOT NULL,
    PRIMARY KEY (report_pk, task_id, milestone_id)
);

CREATE TABLE current_tasks (
    plan_id              TEXT NOT NULL,
    task_id              TEXT NOT NULL,
    milestone_id         TEXT NOT NULL,
    unit_id              TEXT NOT NULL,
    period               TEXT NOT NULL,
    percent              REAL NOT NULL,
    status               TEXT NOT NULL,
    note                 TEXT NOT NULL,
    revision             INTEGER NOT NULL,
    issued_at_ms         INTEGER NOT NULL,
    seq                  INTEGER NOT NULL,
    report_pk            INTEGER NOT NULL REFERENCES reports (report_pk),
    updated_at_ms        INTEGER NOT NULL,
    first_received_at_ms INTEGER NOT NULL,
    PRIMARY KEY (plan_id, task_id, milestone_id, unit_id, period)
);

-- One row per change of a current value or task update.
CREATE TABLE audit (
    audit_pk      INTEGER PRIMARY KEY,
    at_ms         INTEGER NOT NULL,
    plan_id       TEXT NOT NULL,
    kind          TEXT NOT NULL,   -- 'value' or 'task'
    subject       TEXT NOT NULL,   -- indicator id, or task id/milestone id
    unit_id       TEXT NOT NULL,
    period        TEXT NOT NULL,
    old_value     REAL,
    new_value     REAL NOT NULL,
    old_report_pk INTEGER,
    new_report_pk INTEGER NOT NULL
);

CREATE TABLE security_events (
    event_pk  INTEGER PRIMARY KEY,
    at_ms     INTEGER NOT NULL,
    kind      TEXT NOT NULL,       -- 'report_id_conflict' or 'seq_replay'
    unit_id   TEXT NOT NULL,
    key_id    BLOB NOT NULL,
    report_id BLOB NOT NULL,
    detail    TEXT NOT NULL
);

-- duban aggregator schema, PostgreSQL. Uniqueness lives in constraints, never in memory.

CREATE TABLE keys (
    key_id        BYTEA PRIMARY KEY NOT NULL,  -- SHA-256 of the raw public key
    unit_id       TEXT NOT NULL,
    public_key    BYTEA NOT NULL,              -- raw 32-byte Ed25519 key
    not_before_ms BIGINT,
    not_after_ms  BIGINT,
    added_at_ms   BIGINT NOT NULL,
    revoked_at_ms BIGINT,
    max_seq       BIGINT NOT NULL DEFAULT 0  -- highest seq stored under this key
);
CREATE INDEX keys_by_unit ON keys (unit_id);

-- Every stored report with its envelope exactly as received (evidence).
CREATE TABLE reports (
    report_pk          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    plan_id            TEXT NOT NULL,
    unit_id            TEXT NOT NULL,
    report_id          BYTEA NOT NULL,
    key_id             BYTEA NOT NULL,
    seq                BIGINT NOT NULL,
    issued_at_ms       BIGINT NOT NULL,
    received_at_ms     BIGINT NOT NULL,
    period             TEXT NOT NULL,
    revision           BIGINT NOT NULL,
    payload            BYTEA NOT NULL,
    payload_type       TEXT NOT NULL,
    signature          BYTEA NOT NULL,
    payload_sha256     BYTEA NOT NULL,
    values_count       BIGINT NOT NULL,
    task_updates_count BIGINT NOT NULL,
    refused_count      BIGINT NOT NULL,
    UNIQUE (unit_id, report_id),
    UNIQUE (key_id, seq)
);
CREATE INDEX reports_by_received ON reports (received_at_ms);

CREATE TABLE value_history (
    report_pk    BIGINT NOT NULL REFERENCES reports (report_pk),
    plan_id      TEXT NOT NULL,
    indicator_id TEXT NOT NULL,
    unit_id      TEXT NOT NULL,
    period       TEXT NOT NULL,
    value        DOUBLE PRECISION NOT NULL,
    note         TEXT NOT NULL,
    PRIMARY KEY (report_pk, indicator_id)
);

-- The winning value per (plan, indicator, unit, period): greatest (revision, issued_at_ms, seq).
CREATE TABLE current_values (
    plan_id              TEXT NOT NULL,
    indicator_id         TEXT NOT NULL,
    unit_id              TEXT NOT NULL,
    period               TEXT NOT NULL,
    value                DOUBLE PRECISION NOT NULL,
    note                 TEXT NOT NULL,
    revision             BIGINT NOT NULL,
    issued_at_ms         BIGINT NOT NULL,
    seq                  BIGINT NOT NULL,
    report_pk            BIGINT NOT NULL REFERENCES reports (report_pk),
    updated_at_ms        BIGINT NOT NULL,
    first_received_at_ms BIGINT NOT NULL,
    PRIMARY KEY (plan_id, indicator_id, unit_id, period)
);

CREATE TABLE task_history (
    report_pk    BIGINT NOT NULL REFERENCES reports (report_pk),
    plan_id      TEXT NOT NULL,
    task_id      TEXT NOT NULL,
    milestone_id TEXT NOT NULL,
    unit_id      TEXT NOT NULL,
    period       TEXT NOT NULL,
    percent      DOUBLE PRECISION NOT NULL,
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
    percent              DOUBLE PRECISION NOT NULL,
    status               TEXT NOT NULL,
    note                 TEXT NOT NULL,
    revision             BIGINT NOT NULL,
    issued_at_ms         BIGINT NOT NULL,
    seq                  BIGINT NOT NULL,
    report_pk            BIGINT NOT NULL REFERENCES reports (report_pk),
    updated_at_ms        BIGINT NOT NULL,
    first_received_at_ms BIGINT NOT NULL,
    PRIMARY KEY (plan_id, task_id, milestone_id, unit_id, period)
);

-- One row per change of a current value or task update.
CREATE TABLE audit (
    audit_pk      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_ms         BIGINT NOT NULL,
    plan_id       TEXT NOT NULL,
    kind          TEXT NOT NULL,   -- 'value' or 'task'
    subject       TEXT NOT NULL,   -- indicator id, or task id/milestone id
    unit_id       TEXT NOT NULL,
    period        TEXT NOT NULL,
    old_value     DOUBLE PRECISION,
    new_value     DOUBLE PRECISION NOT NULL,
    old_report_pk BIGINT,
    new_report_pk BIGINT NOT NULL
);

CREATE TABLE security_events (
    event_pk  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_ms     BIGINT NOT NULL,
    kind      TEXT NOT NULL,       -- 'report_id_conflict' or 'seq_replay'
    unit_id   TEXT NOT NULL,
    key_id    BYTEA NOT NULL,
    report_id BYTEA NOT NULL,
    detail    TEXT NOT NULL
);

-- The 督办 record: signed statements about alert cases. A recipient of an alert acknowledges,
-- explains, asks for an extension or claims the work done; the supervising office grants or
-- refuses an extension and confirms or rejects a done claim. Statements are numbered per key
-- in a sequence of their own; the envelope is kept as received, for audit.
CREATE TABLE statements (
    pk              BIGSERIAL PRIMARY KEY,
    plan_id         TEXT NOT NULL,
    unit_id         TEXT NOT NULL,
    statement_id    BYTEA NOT NULL,
    key_id          BYTEA NOT NULL,
    seq             BIGINT NOT NULL,
    issued_at_ms    BIGINT NOT NULL,
    received_at_ms  BIGINT NOT NULL,
    case_id         TEXT NOT NULL,
    kind            TEXT NOT NULL,
    date            TEXT NOT NULL,
    note            TEXT NOT NULL,
    reference       TEXT NOT NULL,
    about_unit      TEXT NOT NULL,
    payload         BYTEA NOT NULL,
    signature       BYTEA NOT NULL,
    UNIQUE (unit_id, statement_id),
    UNIQUE (key_id, seq)
);
CREATE INDEX statements_by_case ON statements (plan_id, case_id);

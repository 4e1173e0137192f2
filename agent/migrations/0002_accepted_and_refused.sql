-- Change detection remembers what the centre accepted, not what was merely queued: `last_sent`
-- now holds the fingerprint of the last accepted item, and `pending_items` what waits in the
-- outbox (per report seq, with the item's index in the report, to match refusals to items).
-- A dead letter's items are forgotten, so that the next collection builds them again.
CREATE TABLE pending_items (
    seq         INTEGER NOT NULL,
    kind        TEXT NOT NULL,        -- 'value' or 'task'
    subject     TEXT NOT NULL,        -- indicator id, or task id/milestone id
    period      TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    item_index  INTEGER NOT NULL,     -- index in the report's values or task_updates
    PRIMARY KEY (seq, kind, subject)
);
CREATE INDEX pending_items_by_subject ON pending_items (kind, subject, period);

-- The fingerprint of each item the centre refused (in a stored report, or with its whole report):
-- the same item unchanged would be refused again, so it is not built again until it changes, or
-- until the refusals are discarded or retried (`outbox dead --discard`, `outbox retry-dead`).
CREATE TABLE refused_items (
    kind        TEXT NOT NULL,
    subject     TEXT NOT NULL,
    period      TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    PRIMARY KEY (kind, subject, period)
);

-- Every item the centre refused, with its code and message: in reports it stored (PARTIAL,
-- in_dead_letter = 0) and in reports it rejected (in_dead_letter = 1).
CREATE TABLE refusals (
    refusal_pk     INTEGER PRIMARY KEY,
    seq            INTEGER NOT NULL,
    period         TEXT NOT NULL,
    item           TEXT NOT NULL,     -- "value pct-applications", "task 2-1-1/m1", or "report"
    code           TEXT NOT NULL,
    message        TEXT NOT NULL,
    at_ms          INTEGER NOT NULL,
    in_dead_letter INTEGER NOT NULL
);

-- 1 once the outbox knows it is ahead of every seq and revision the centre holds for this
-- agent's key and unit: an outbox with a history, or one that learnt them from the centre's
-- answer to a Hello. Until then (a new outbox) reports are provisional: kept under negative
-- seqs (-1, -2, ... in the order they were built, counted by next_draft), never sent, and given
-- their real seq and revision, and signed for good, once the centre has answered.
INSERT INTO meta (key, value)
    SELECT 'synced', CASE WHEN value > 1 THEN 1 ELSE 0 END FROM meta WHERE key = 'next_seq';
INSERT INTO meta (key, value) VALUES ('next_draft', 1);

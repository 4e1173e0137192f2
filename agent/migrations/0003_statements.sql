-- Statements about alert cases (answers, and the office's decisions), signed and kept until the
-- centre has answered: 'waiting' until then, then 'recorded' (accepted or already held) or
-- 'refused' (with the centre's reason). Numbered by their own counter, which only grows.
CREATE TABLE statements (
    seq           INTEGER PRIMARY KEY,
    case_id       TEXT NOT NULL,
    kind          TEXT NOT NULL,
    envelope      BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL,
    state         TEXT NOT NULL DEFAULT 'waiting',
    answer        TEXT NOT NULL DEFAULT ''
);
INSERT INTO meta (key, value) VALUES ('next_statement_seq', 1);
-- 1 once a Hello has given the centre's statement counter: from then on the local counter is
-- ahead of the centre's, and a statement can be numbered while the centre is unreachable.
INSERT INTO meta (key, value) VALUES ('statements_synced', 0);

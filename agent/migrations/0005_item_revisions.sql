-- The revision of the report that carries each waiting item and each accepted fingerprint.
-- Change detection compares a collected item with the newest of what waits in the outbox and
-- what the centre accepted, newest by revision (a later report for a period has a higher one):
-- a report stuck in the outbox (refused for now, e.g. ISSUED_IN_FUTURE) must not hide that a
-- later report with newer values was accepted since, or every collection would build those
-- values again under a new seq (found by the fault harness's clock scenario). Rows from before
-- this migration get -1, and a waiting item wins a tie, as it did until now.
ALTER TABLE last_sent ADD COLUMN revision INTEGER NOT NULL DEFAULT -1;
ALTER TABLE pending_items ADD COLUMN revision INTEGER NOT NULL DEFAULT -1;

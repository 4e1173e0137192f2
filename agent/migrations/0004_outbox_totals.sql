-- The outbox's size, kept as it changes: the byte limit is checked before every new report and
-- the statistics are read after every delivery step, and summing a backlog of 100,000 waiting
-- reports each time made building and draining one quadratic. Triggers keep the totals on
-- every path that adds, removes or resizes a waiting report (building, acknowledging, dead
-- letters, the limits, salvage), so that none can forget to.
INSERT INTO meta (key, value) SELECT 'outbox_reports', count(*) FROM outbox;
INSERT INTO meta (key, value) SELECT 'outbox_bytes', COALESCE(SUM(bytes), 0) FROM outbox;

CREATE TRIGGER outbox_totals_insert AFTER INSERT ON outbox BEGIN
    UPDATE meta SET value = value + 1 WHERE key = 'outbox_reports';
    UPDATE meta SET value = value + NEW.bytes WHERE key = 'outbox_bytes';
END;
CREATE TRIGGER outbox_totals_delete AFTER DELETE ON outbox BEGIN
    UPDATE meta SET value = value - 1 WHERE key = 'outbox_reports';
    UPDATE meta SET value = value - OLD.bytes WHERE key = 'outbox_bytes';
END;
CREATE TRIGGER outbox_totals_resize AFTER UPDATE OF bytes ON outbox BEGIN
    UPDATE meta SET value = value - OLD.bytes + NEW.bytes WHERE key = 'outbox_bytes';
END;

-- The oldest waiting report (for the age limit and the statistics) without a scan.
CREATE INDEX outbox_by_created ON outbox (created_at_ms);

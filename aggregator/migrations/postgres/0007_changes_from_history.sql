-- The rows changed after a report are found from the history (Store::changed_after): the keys
-- the later reports carried, by the history's primary key (it begins with the report), each
-- then looked up in the current rows by its key. The indexes of the current rows by report
-- are dropped: every write of a current row changes its report_pk, so an index on it kept
-- each update from being heap-only (a new entry in every index of the table, and a dead one
-- left behind in each until a vacuum). The current tables keep a fifth of each page free for
-- their rows' new versions, so that an update stays on its page and the page is pruned of old
-- versions as it is read (pages already full gain that room as their old versions are pruned
-- or vacuumed away).
DROP INDEX current_values_by_report;
DROP INDEX current_tasks_by_report;
ALTER TABLE current_values SET (fillfactor = 80);
ALTER TABLE current_tasks SET (fillfactor = 80);

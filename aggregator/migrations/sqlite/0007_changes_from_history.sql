-- The rows changed after a report are found from the history (Store::changed_after): the keys
-- the later reports carried, by the history's primary key (it begins with the report), each
-- then looked up in the current rows by its key, as on PostgreSQL (where an index of the
-- current rows by report kept their updates from being heap-only). Here too it is one index
-- less to rewrite at every update of a current row.
DROP INDEX current_values_by_report;
DROP INDEX current_tasks_by_report;

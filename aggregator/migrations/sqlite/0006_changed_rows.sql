-- The current rows that reports after a given one wrote, found without reading every current
-- row: after a write, progress takes in only those (Store::changed_after).
CREATE INDEX current_values_by_report ON current_values (plan_id, report_pk);
CREATE INDEX current_tasks_by_report ON current_tasks (plan_id, report_pk);

-- Administrative changes are evidence too: who (the OS user on which host) did what, when.
-- Written in the same transaction as the change itself; never updated or deleted.
CREATE TABLE admin_actions (
    pk       INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms    INTEGER NOT NULL,
    os_user  TEXT NOT NULL,
    host     TEXT NOT NULL,
    action   TEXT NOT NULL,
    subject  TEXT NOT NULL,
    unit_id  TEXT NOT NULL,
    detail   TEXT NOT NULL
);

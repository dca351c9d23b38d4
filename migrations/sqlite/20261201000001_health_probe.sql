-- Readiness writes here (one row, rewritten with event-sized filler): a database that cannot
-- write is not ready, even when it still answers reads.
CREATE TABLE health_probe (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at TEXT NOT NULL,
    filler     BLOB NOT NULL
);

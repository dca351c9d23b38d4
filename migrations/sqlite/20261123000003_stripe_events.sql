-- The ledger: every verified Stripe event, with the exact bytes Stripe sent, and what was done with it.
CREATE TABLE stripe_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT    NOT NULL UNIQUE,
    type        TEXT    NOT NULL,
    livemode    INTEGER NOT NULL CHECK (livemode IN (0, 1)),
    api_version TEXT,
    created     INTEGER NOT NULL,
    received_at TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL,
    status      TEXT    NOT NULL CHECK (status IN ('received', 'processed', 'ignored', 'unmatched', 'failed')),
    payload     BLOB    NOT NULL
);
CREATE INDEX stripe_events_type ON stripe_events (type, seq);
CREATE INDEX stripe_events_status ON stripe_events (status, seq);

CREATE TABLE stripe_event_history (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL REFERENCES stripe_events (event_id),
    at       TEXT NOT NULL,
    status   TEXT NOT NULL,
    detail   TEXT NOT NULL
);
CREATE INDEX stripe_event_history_event ON stripe_event_history (event_id, id);

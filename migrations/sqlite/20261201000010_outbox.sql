-- Notifications (issue 11): the merchant's webhook endpoints, the outbox of messages written in
-- the transaction that made the fact they report, and every delivery attempt.
CREATE TABLE webhook_endpoints (
    id              TEXT PRIMARY KEY,
    url             TEXT NOT NULL,
    -- A JSON array of event types.
    events          TEXT NOT NULL,
    description     TEXT,
    disabled        INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    -- whsec_…, stored as given: they must sign. Never logged or served after creation/rotation.
    secret          TEXT NOT NULL,
    previous_secret TEXT,
    previous_until  TEXT,
    -- When the current run of failed deliveries began (NULL: the last one succeeded).
    failing_since   TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);

-- The per-user sequence of messages, taken under this row's lock in the fact's transaction.
CREATE TABLE outbox_sequences (
    user_id TEXT PRIMARY KEY,
    seq     INTEGER NOT NULL
);

CREATE TABLE outbox (
    id              TEXT PRIMARY KEY,
    kind            TEXT NOT NULL CHECK (kind IN ('webhook', 'email')),
    -- we_… for a webhook, the address for an email.
    recipient       TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    payload         TEXT NOT NULL,
    -- What fact this reports: a redelivered or replayed event can never make a second message.
    fact_key        TEXT NOT NULL,
    user_id         TEXT,
    user_seq        INTEGER,
    occurred_at     TEXT NOT NULL,
    -- held: for a disabled endpoint; made pending again when it is enabled.
    status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'held', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    lease_owner     TEXT,
    lease_until     TEXT,
    delivered_at    TEXT,
    last_error      TEXT,
    created_at      TEXT NOT NULL,
    UNIQUE (fact_key, kind, recipient)
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE status = 'pending';
CREATE INDEX outbox_recipient ON outbox (recipient, occurred_at);

CREATE TABLE outbox_attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id  TEXT NOT NULL REFERENCES outbox (id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    at          TEXT NOT NULL,
    status_code INTEGER,
    error       TEXT,
    -- At most 4 KiB of what the receiver answered.
    response    TEXT,
    duration_ms INTEGER NOT NULL,
    UNIQUE (message_id, attempt)
);

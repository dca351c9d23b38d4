-- The ledger: every verified Stripe event, with the exact bytes Stripe sent, and what was done with it.
CREATE TABLE stripe_events (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    TEXT        NOT NULL UNIQUE,
    type        TEXT        NOT NULL,
    livemode    BOOLEAN     NOT NULL,
    api_version TEXT,
    created     BIGINT      NOT NULL,
    received_at TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    status      TEXT        NOT NULL CHECK (status IN ('received', 'processed', 'ignored', 'unmatched', 'failed')),
    payload     BYTEA       NOT NULL
);
CREATE INDEX stripe_events_type ON stripe_events (type, seq);
CREATE INDEX stripe_events_status ON stripe_events (status, seq);

CREATE TABLE stripe_event_history (
    id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id TEXT        NOT NULL REFERENCES stripe_events (event_id),
    at       TIMESTAMPTZ NOT NULL,
    status   TEXT        NOT NULL,
    detail   TEXT        NOT NULL
);
CREATE INDEX stripe_event_history_event ON stripe_event_history (event_id, id);

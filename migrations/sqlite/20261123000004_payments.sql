-- Catalog, orders, grants, refunds and idempotency keys. Ids that guard money are UNIQUE here, not
-- only checked in code: one order per Checkout Session / PaymentIntent, one grant per order.
CREATE TABLE products (
    id              TEXT    PRIMARY KEY,
    name            TEXT    NOT NULL,
    description     TEXT,
    active          INTEGER NOT NULL CHECK (active IN (0, 1)),
    version         INTEGER NOT NULL,
    amount          INTEGER NOT NULL CHECK (amount > 0),
    currency        TEXT    NOT NULL,
    stripe_price_id TEXT,
    grant_spec      TEXT    NOT NULL,
    created_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL
);

-- Every price a product has had; an order points at the version it bought.
CREATE TABLE product_versions (
    product_id      TEXT    NOT NULL REFERENCES products (id),
    version         INTEGER NOT NULL,
    amount          INTEGER NOT NULL CHECK (amount > 0),
    currency        TEXT    NOT NULL,
    stripe_price_id TEXT,
    grant_spec      TEXT    NOT NULL,
    created_at      TEXT    NOT NULL,
    PRIMARY KEY (product_id, version)
);

CREATE TABLE orders (
    id                  TEXT    PRIMARY KEY,
    user_id             TEXT    NOT NULL REFERENCES users (id),
    product_id          TEXT    NOT NULL,
    product_version     INTEGER NOT NULL,
    quantity            INTEGER NOT NULL CHECK (quantity > 0),
    amount              INTEGER NOT NULL CHECK (amount > 0),
    currency            TEXT    NOT NULL,
    grant_spec          TEXT    NOT NULL,
    flow                TEXT    NOT NULL CHECK (flow IN ('checkout', 'payment_intent')),
    status              TEXT    NOT NULL CHECK (status IN ('pending', 'processing', 'paid', 'failed', 'expired', 'canceled', 'partially_refunded', 'refunded', 'disputed')),
    checkout_session_id TEXT    UNIQUE,
    payment_intent_id   TEXT    UNIQUE,
    charge_id           TEXT    UNIQUE,
    checkout_url        TEXT,
    expires_at          TEXT,
    -- What Stripe has told us, in any order; the status is derived from these.
    paid_at             TEXT,
    processing          INTEGER NOT NULL DEFAULT 0 CHECK (processing IN (0, 1)),
    failed              INTEGER NOT NULL DEFAULT 0 CHECK (failed IN (0, 1)),
    expired             INTEGER NOT NULL DEFAULT 0 CHECK (expired IN (0, 1)),
    canceled            INTEGER NOT NULL DEFAULT 0 CHECK (canceled IN (0, 1)),
    amount_refunded     INTEGER NOT NULL DEFAULT 0 CHECK (amount_refunded >= 0),
    dispute             TEXT    CHECK (dispute IN ('open', 'won', 'lost')),
    flag                TEXT,
    created_at          TEXT    NOT NULL,
    updated_at          TEXT    NOT NULL,
    FOREIGN KEY (product_id, product_version) REFERENCES product_versions (product_id, version)
);
CREATE INDEX orders_user ON orders (user_id, id);

-- What paying bought. UNIQUE (order_id): one grant per order, whatever races to create it.
CREATE TABLE grants (
    id         TEXT    PRIMARY KEY,
    order_id   TEXT    NOT NULL UNIQUE REFERENCES orders (id),
    user_id    TEXT    NOT NULL REFERENCES users (id),
    kind       TEXT    NOT NULL CHECK (kind IN ('access', 'credits')),
    feature    TEXT,
    credits    INTEGER,
    status     TEXT    NOT NULL CHECK (status IN ('active', 'suspended', 'revoked')),
    starts_at  TEXT    NOT NULL,
    expires_at TEXT,
    created_at TEXT    NOT NULL,
    updated_at TEXT    NOT NULL
);
CREATE INDEX grants_user ON grants (user_id, id);

CREATE TABLE refunds (
    id               TEXT    PRIMARY KEY,
    order_id         TEXT    NOT NULL REFERENCES orders (id),
    stripe_refund_id TEXT    UNIQUE,
    amount           INTEGER NOT NULL CHECK (amount > 0),
    currency         TEXT    NOT NULL,
    reason           TEXT,
    status           TEXT    NOT NULL,
    requested_by     TEXT    NOT NULL,
    created_at       TEXT    NOT NULL
);
CREATE INDEX refunds_order ON refunds (order_id);

-- Idempotency-Key: the first response to (principal, key), replayed for 24 hours.
CREATE TABLE idempotency_keys (
    principal    TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    request_hash TEXT    NOT NULL,
    status_code  INTEGER,
    response     BLOB,
    created_at   TEXT    NOT NULL,
    PRIMARY KEY (principal, key)
);

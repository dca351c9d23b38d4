-- Catalog, orders, grants, refunds and idempotency keys. Ids that guard money are UNIQUE here, not
-- only checked in code: one order per Checkout Session / PaymentIntent, one grant per order.
CREATE TABLE products (
    id              TEXT    PRIMARY KEY,
    name            TEXT    NOT NULL,
    description     TEXT,
    active          BOOLEAN NOT NULL,
    version         BIGINT NOT NULL,
    amount          BIGINT NOT NULL CHECK (amount > 0),
    currency        TEXT    NOT NULL,
    stripe_price_id TEXT,
    grant_spec      TEXT    NOT NULL,
    created_at      TIMESTAMPTZ    NOT NULL,
    updated_at      TIMESTAMPTZ    NOT NULL
);

-- Every price a product has had; an order points at the version it bought.
CREATE TABLE product_versions (
    product_id      TEXT    NOT NULL REFERENCES products (id),
    version         BIGINT NOT NULL,
    amount          BIGINT NOT NULL CHECK (amount > 0),
    currency        TEXT    NOT NULL,
    stripe_price_id TEXT,
    grant_spec      TEXT    NOT NULL,
    created_at      TIMESTAMPTZ    NOT NULL,
    PRIMARY KEY (product_id, version)
);

CREATE TABLE orders (
    id                  TEXT    PRIMARY KEY,
    user_id             TEXT    NOT NULL REFERENCES users (id),
    product_id          TEXT    NOT NULL,
    product_version     BIGINT NOT NULL,
    quantity            BIGINT NOT NULL CHECK (quantity > 0),
    amount              BIGINT NOT NULL CHECK (amount > 0),
    currency            TEXT    NOT NULL,
    grant_spec          TEXT    NOT NULL,
    flow                TEXT    NOT NULL CHECK (flow IN ('checkout', 'payment_intent')),
    status              TEXT    NOT NULL CHECK (status IN ('pending', 'processing', 'paid', 'failed', 'expired', 'canceled', 'partially_refunded', 'refunded', 'disputed')),
    checkout_session_id TEXT    UNIQUE,
    payment_intent_id   TEXT    UNIQUE,
    charge_id           TEXT    UNIQUE,
    checkout_url        TEXT,
    expires_at          TIMESTAMPTZ,
    -- What Stripe has told us, in any order; the status is derived from these.
    paid_at             TIMESTAMPTZ,
    processing          BOOLEAN NOT NULL DEFAULT FALSE,
    failed              BOOLEAN NOT NULL DEFAULT FALSE,
    expired             BOOLEAN NOT NULL DEFAULT FALSE,
    canceled            BOOLEAN NOT NULL DEFAULT FALSE,
    amount_refunded     BIGINT NOT NULL DEFAULT 0 CHECK (amount_refunded >= 0),
    dispute             TEXT    CHECK (dispute IN ('open', 'won', 'lost')),
    flag                TEXT,
    created_at          TIMESTAMPTZ    NOT NULL,
    updated_at          TIMESTAMPTZ    NOT NULL,
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
    credits    BIGINT,
    status     TEXT    NOT NULL CHECK (status IN ('active', 'suspended', 'revoked')),
    starts_at  TIMESTAMPTZ    NOT NULL,
    expires_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ    NOT NULL,
    updated_at TIMESTAMPTZ    NOT NULL
);
CREATE INDEX grants_user ON grants (user_id, id);

CREATE TABLE refunds (
    id               TEXT    PRIMARY KEY,
    order_id         TEXT    NOT NULL REFERENCES orders (id),
    stripe_refund_id TEXT    UNIQUE,
    amount           BIGINT NOT NULL CHECK (amount > 0),
    currency         TEXT    NOT NULL,
    reason           TEXT,
    status           TEXT    NOT NULL,
    requested_by     TEXT    NOT NULL,
    created_at       TIMESTAMPTZ    NOT NULL
);
CREATE INDEX refunds_order ON refunds (order_id);

-- Idempotency-Key: the first response to (principal, key), replayed for 24 hours.
CREATE TABLE idempotency_keys (
    principal    TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    request_hash TEXT    NOT NULL,
    status_code  BIGINT,
    response     BYTEA,
    created_at   TIMESTAMPTZ    NOT NULL,
    PRIMARY KEY (principal, key)
);

-- Credits as a ledger: every change of a balance is a movement with its reason and the balance
-- after it; the balance is its own row so that a debit is one conditional UPDATE. The CHECKs are
-- the last word on "never negative"; the UNIQUE constraints make a debit per (user, caller, Idempotency-Key)
-- and a movement per (grant, step) happen once, whatever races.
CREATE TABLE credit_balances (
    user_id    TEXT    PRIMARY KEY REFERENCES users (id),
    balance    BIGINT  NOT NULL CHECK (balance >= 0),
    -- How many movements the user has: each one takes the next number under the row's lock.
    seq        BIGINT  NOT NULL CHECK (seq >= 0),
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE credit_movements (
    id              TEXT    PRIMARY KEY,
    user_id         TEXT    NOT NULL REFERENCES users (id),
    seq             BIGINT  NOT NULL,
    kind            TEXT    NOT NULL CHECK (kind IN ('grant', 'debit', 'clawback', 'restore', 'adjustment')),
    amount          BIGINT  NOT NULL CHECK (amount <> 0),
    balance_after   BIGINT  NOT NULL CHECK (balance_after >= 0),
    reason          TEXT    NOT NULL,
    order_id        TEXT    REFERENCES orders (id),
    grant_id        TEXT    REFERENCES grants (id),
    grant_step      BIGINT,
    -- key_… (an API key), usr_… (an admin), or system.
    actor           TEXT    NOT NULL,
    -- A debit's Idempotency-Key (its SHA-256) and what the request said (its hash).
    idempotency_key TEXT,
    request_hash    TEXT,
    metadata        TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    UNIQUE (user_id, seq),
    -- Idempotency-Keys belong to their caller (API.md: "from the same principal").
    UNIQUE (user_id, actor, idempotency_key),
    -- What each kind may be, whatever the code says.
    CHECK (kind <> 'debit' OR (amount < 0 AND idempotency_key IS NOT NULL)),
    CHECK (kind NOT IN ('grant', 'restore') OR amount > 0),
    CHECK (kind <> 'clawback' OR amount < 0),
    UNIQUE (grant_id, grant_step)
);

-- What a refund or lost dispute could not claw back because it was already spent.
ALTER TABLE orders ADD COLUMN credits_unrecoverable BIGINT NOT NULL DEFAULT 0 CHECK (credits_unrecoverable >= 0);
-- How much of a credits grant is clawed back now, and its last movement's step.
ALTER TABLE grants ADD COLUMN credits_clawed_back BIGINT NOT NULL DEFAULT 0
    CHECK (credits_clawed_back >= 0 AND credits_clawed_back <= COALESCE(credits, 0));
ALTER TABLE grants ADD COLUMN credits_step BIGINT NOT NULL DEFAULT 0;

-- Backfill: an active credits grant becomes a grant movement; a suspended one (a dispute open)
-- a grant and its claw-back, as it would be now. Revoked grants held nothing.
INSERT INTO credit_movements (id, user_id, seq, kind, amount, balance_after, reason, order_id, grant_id, grant_step, actor, created_at)
SELECT 'cm_' || substr(grant_id, 5) || CAST(step AS TEXT), user_id,
       ROW_NUMBER() OVER w, kind, amount, SUM(amount) OVER w,
       CASE kind WHEN 'grant' THEN 'order ' || order_id || ' paid' ELSE 'order ' || order_id || ' disputed: credits held' END,
       order_id, grant_id, step, 'system', created_at
  FROM (SELECT id AS grant_id, user_id, order_id, created_at, 0 AS step, 'grant' AS kind, credits AS amount
          FROM grants WHERE kind = 'credits' AND status IN ('active', 'suspended') AND credits > 0
        UNION ALL
        SELECT id, user_id, order_id, created_at, 1, 'clawback', -credits
          FROM grants WHERE kind = 'credits' AND status = 'suspended' AND credits > 0) src
WINDOW w AS (PARTITION BY user_id ORDER BY created_at, grant_id, step);

INSERT INTO credit_balances (user_id, balance, seq, updated_at)
SELECT user_id, SUM(amount), COUNT(*), MAX(created_at) FROM credit_movements GROUP BY user_id;

UPDATE grants SET credits_clawed_back = credits, credits_step = 1
 WHERE kind = 'credits' AND status = 'suspended' AND credits > 0;

-- A second provider (NOWPayments): the ledger and the orders say which provider each row is about.
-- Everything before this migration is Stripe's, and the Stripe path keeps writing the default.
-- A NOWPayments order keeps its invoice id in checkout_session_id (already UNIQUE).
ALTER TABLE stripe_events ADD COLUMN provider TEXT NOT NULL DEFAULT 'stripe' CHECK (provider IN ('stripe', 'nowpayments'));
CREATE INDEX stripe_events_provider ON stripe_events (provider, seq);
ALTER TABLE orders ADD COLUMN provider TEXT NOT NULL DEFAULT 'stripe' CHECK (provider IN ('stripe', 'nowpayments'));

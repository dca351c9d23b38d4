-- Every password change and every disable moves the user's credential epoch on. A session or
-- token family belongs to the epoch its login verified, and only works while that is still the
-- user's epoch: a login racing a password change can never outlive it.
ALTER TABLE users ADD COLUMN credential_epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN credential_epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_families ADD COLUMN credential_epoch BIGINT NOT NULL DEFAULT 0;

-- A spent refresh token keeps its successor for a short grace window, sealed with a key only the
-- spent token's holder can derive, so a client whose response was lost can ask again.
ALTER TABLE refresh_tokens ADD COLUMN successor_hash TEXT;
ALTER TABLE refresh_tokens ADD COLUMN successor_sealed TEXT;

-- Clients (an address, or its /64) that logged in to an account before: a correct password from
-- one of them is never slowed by the account's global failure ceiling.
CREATE TABLE login_clients (
    user_id         TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_key      TEXT NOT NULL,
    last_success_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, client_key)
);

-- The hourly purge of what has expired.
CREATE INDEX sessions_expires ON sessions (expires_at);
CREATE INDEX refresh_tokens_expires ON refresh_tokens (expires_at);

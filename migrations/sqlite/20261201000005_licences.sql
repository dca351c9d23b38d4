-- Licences verifiable offline. The signing key in development (none configured) is generated once
-- and kept here so licences survive restarts; two instances starting at once insert the same row
-- id, and the second keeps the first's key (ON CONFLICT DO NOTHING, then read back).
CREATE TABLE signing_keys (
    id          TEXT PRIMARY KEY,
    -- base64 of the PKCS#8 DER: a secret, written only in development.
    private_key TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TABLE licences (
    id             TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL REFERENCES users (id),
    kid            TEXT NOT NULL,
    -- The features as the licence states them (JSON).
    features       TEXT NOT NULL,
    issued_at      TEXT NOT NULL,
    expires_at     TEXT NOT NULL,
    revoked_at     TEXT,
    revoked_reason TEXT CHECK (revoked_reason IN ('refund', 'dispute', 'user_disabled')),
    CHECK ((revoked_at IS NULL) = (revoked_reason IS NULL))
);
CREATE INDEX licences_user ON licences (user_id, expires_at);
CREATE INDEX licences_revoked ON licences (revoked_at, id) WHERE revoked_at IS NOT NULL;

-- The grants a licence carries: when one is suspended or revoked, so is the licence.
CREATE TABLE licence_grants (
    licence_id TEXT NOT NULL REFERENCES licences (id),
    grant_id   TEXT NOT NULL REFERENCES grants (id),
    PRIMARY KEY (licence_id, grant_id)
);
CREATE INDEX licence_grants_grant ON licence_grants (grant_id);

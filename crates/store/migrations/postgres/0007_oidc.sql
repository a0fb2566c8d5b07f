-- OpenID Connect provider state shared by every gateway replica.

-- Token signing keys (ES256, P-256), each tenant's; the private key is PKCS#8 DER sealed with
-- the key-encryption key. The current key signs; a retired one stays in the JWKS until no
-- token it signed can still be valid (drop_after), then it is deleted.
CREATE TABLE signing_keys (
    tenant_id TEXT NOT NULL,
    kid TEXT NOT NULL,
    private_sealed BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    -- NULL while it is the key that signs.
    retired_at BIGINT,
    -- NULL until retired: after this time no token it signed is valid.
    drop_after BIGINT,
    PRIMARY KEY (tenant_id, kid)
);

-- One current key per tenant, whichever replica writes it.
CREATE UNIQUE INDEX signing_keys_one_current ON signing_keys (tenant_id) WHERE retired_at IS NULL;

-- Authorization codes, by the SHA-256 (hex) of the code: the code itself is never stored.
-- What the gateway needs to issue tokens is sealed with the key-encryption key.
CREATE TABLE authorization_codes (
    code_digest TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    -- NULL until redeemed; a code is redeemed once.
    used_at BIGINT,
    -- The refresh-token family the redemption created: a second redemption revokes it.
    family_id TEXT,
    payload_sealed BYTEA NOT NULL
);

CREATE INDEX authorization_codes_by_expiry ON authorization_codes (expires_at);

-- Refresh tokens, by the SHA-256 (hex) of the token. Each rotation adds a token to the
-- family; presenting a rotated one again revokes the whole family.
CREATE TABLE refresh_tokens (
    token_digest TEXT PRIMARY KEY,
    family_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    -- The user (case-folded userPrincipalName), to revoke a user's tokens.
    user_key TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    -- The family's absolute end, carried over on rotation.
    expires_at BIGINT NOT NULL,
    -- NULL while it is the family's current token.
    rotated_at BIGINT,
    -- NULL unless revoked.
    revoked_at BIGINT,
    payload_sealed BYTEA NOT NULL
);

CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_by_user ON refresh_tokens (tenant_id, user_key);
CREATE INDEX refresh_tokens_by_expiry ON refresh_tokens (expires_at);

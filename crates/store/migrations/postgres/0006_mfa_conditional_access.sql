-- MFA: one TOTP enrolment per user, its secret sealed with the key-encryption key; a code is
-- accepted once (the last time step accepted only grows, across replicas).
CREATE TABLE mfa_enrolments (
    tenant_id TEXT NOT NULL,
    user_key TEXT NOT NULL,
    secret_sealed BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    -- NULL until the user's first code confirms the enrolment.
    confirmed_at BIGINT,
    last_step BIGINT NOT NULL,
    -- Wrong codes across challenges, and since when: past a limit the user's MFA waits,
    -- whoever holds the password.
    wrong_codes BIGINT NOT NULL,
    wrong_since BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, user_key)
);

-- Single-use recovery codes, only as Argon2id hashes.
CREATE TABLE mfa_recovery_codes (
    tenant_id TEXT NOT NULL,
    user_key TEXT NOT NULL,
    code_hash TEXT NOT NULL,
    used_at BIGINT,
    PRIMARY KEY (tenant_id, user_key, code_hash)
);

-- MFA challenges between a primary sign-in and its second factor, by the SHA-256 of the
-- opaque handle the client holds; what the sign-in produced is sealed with the
-- key-encryption key.
CREATE TABLE mfa_challenges (
    challenge_digest TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    user_key TEXT NOT NULL,
    client_id TEXT NOT NULL,
    client_ip TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    wrong_codes BIGINT NOT NULL,
    -- 'open', 'done' (tokens issued), 'ended' (too many wrong codes).
    state TEXT NOT NULL,
    payload_sealed BYTEA NOT NULL
);

CREATE INDEX mfa_challenges_by_expiry ON mfa_challenges (expires_at);

-- The sign-in log says which policies decided and what MFA did.
ALTER TABLE signin_log ADD COLUMN policies TEXT NOT NULL DEFAULT '';
ALTER TABLE signin_log ADD COLUMN mfa TEXT NOT NULL DEFAULT '';

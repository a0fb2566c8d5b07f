-- Smart lockout: one counter per user (username key) and location scope ('familiar' or
-- 'unfamiliar'), shared by every gateway replica.
CREATE TABLE lockout_counters (
    tenant_id TEXT NOT NULL,
    user_key TEXT NOT NULL,
    scope TEXT NOT NULL,
    failures BIGINT NOT NULL,
    window_started_at BIGINT NOT NULL,
    locked_until BIGINT NOT NULL,
    lockouts BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, user_key, scope)
);

-- Networks (address prefixes) a user signed in from successfully: failures from elsewhere
-- count separately.
CREATE TABLE familiar_networks (
    tenant_id TEXT NOT NULL,
    user_key TEXT NOT NULL,
    network TEXT NOT NULL,
    last_seen BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, user_key, network)
);

-- Every sign-in attempt. Never a password, a hash of one, or a code.
CREATE TABLE signin_log (
    -- Orders attempts within one second.
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    tenant_id TEXT NOT NULL,
    username TEXT NOT NULL,
    upn TEXT NOT NULL,
    client_id TEXT NOT NULL,
    client_ip TEXT NOT NULL,
    familiar_location BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    error_code TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    latency_ms BIGINT NOT NULL,
    lockout TEXT NOT NULL
);

CREATE INDEX signin_log_by_time ON signin_log (tenant_id, at);
CREATE INDEX signin_log_by_user ON signin_log (tenant_id, username, at);

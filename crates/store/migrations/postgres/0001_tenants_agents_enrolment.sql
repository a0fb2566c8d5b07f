CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL
);

CREATE TABLE tenant_cas (
    tenant_id TEXT PRIMARY KEY REFERENCES tenants (id),
    cert_pem TEXT NOT NULL,
    key_der BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE enrolment_tokens (
    token_hash TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    connector_group TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);

CREATE TABLE agents (
    agent_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    connector_group TEXT NOT NULL,
    hostname TEXT NOT NULL,
    version TEXT NOT NULL,
    cert_serial TEXT NOT NULL,
    cert_not_after BIGINT NOT NULL,
    public_key_der BYTEA NOT NULL,
    enrolled_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE revoked_certificates (
    serial TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    agent_id TEXT NOT NULL,
    revoked_at BIGINT NOT NULL
);

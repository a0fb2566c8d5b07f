CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
);

CREATE TABLE tenant_cas (
    tenant_id TEXT PRIMARY KEY REFERENCES tenants (id),
    cert_pem TEXT NOT NULL,
    key_der BLOB NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE enrolment_tokens (
    token_hash TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    connector_group TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER
);

CREATE TABLE agents (
    agent_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    connector_group TEXT NOT NULL,
    hostname TEXT NOT NULL,
    version TEXT NOT NULL,
    cert_serial TEXT NOT NULL,
    cert_not_after INTEGER NOT NULL,
    public_key_der BLOB NOT NULL,
    enrolled_at INTEGER NOT NULL,
    revoked_at INTEGER
);

CREATE TABLE revoked_certificates (
    serial TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    agent_id TEXT NOT NULL,
    revoked_at INTEGER NOT NULL
);

-- Every certificate ever issued to an agent: trust is decided per certificate, so a copy of
-- an agent's key and certificate taken before a renewal is refused once the renewal has
-- superseded it, and revoking the agent refuses all of them at once.
CREATE TABLE agent_certificates (
    serial TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES agents (agent_id),
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    issued_at BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    -- The certified key: a certificate is trusted only for the key it was recorded with, so
    -- a certificate forged with a stolen CA key and a recorded serial is still refused.
    public_key_der BYTEA NOT NULL,
    -- The hybrid X25519 + ML-KEM-768 sealing key it certifies (envelope version 2), if any.
    hybrid_public_key BYTEA,
    -- When a renewal replaced it: set once the agent first connects with its successor, so a
    -- lost renewal answer never strands an agent on a certificate that is already refused.
    superseded_at BIGINT
);

-- The agent's current hybrid sealing key, if it has one (NULL: it seals with RSA only).
ALTER TABLE agents ADD COLUMN hybrid_public_key BYTEA;

CREATE INDEX agent_certificates_by_agent ON agent_certificates (agent_id);
CREATE INDEX agent_certificates_by_superseded_at ON agent_certificates (superseded_at);

INSERT INTO agent_certificates (serial, agent_id, tenant_id, issued_at, not_after, public_key_der)
    SELECT cert_serial, agent_id, tenant_id, enrolled_at, cert_not_after, public_key_der FROM agents;

-- Before this version a renewal racing a revocation could write revoked_at back to NULL; the
-- revocation list kept the truth. Restore it before revocation becomes final.
UPDATE agents SET revoked_at = (
    SELECT MIN(r.revoked_at) FROM revoked_certificates r WHERE r.agent_id = agents.agent_id
)
WHERE revoked_at IS NULL
    AND EXISTS (SELECT 1 FROM revoked_certificates r WHERE r.agent_id = agents.agent_id);

-- Revocation is final: no statement, whatever its origin, can clear or move revoked_at.
CREATE FUNCTION passage_agent_revocation_is_final() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.revoked_at IS NOT NULL AND NEW.revoked_at IS DISTINCT FROM OLD.revoked_at THEN
        RAISE EXCEPTION 'agent revocation is final';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER agents_revocation_is_final
BEFORE UPDATE ON agents
FOR EACH ROW EXECUTE FUNCTION passage_agent_revocation_is_final();

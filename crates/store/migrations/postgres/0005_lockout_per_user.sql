-- Smart lockout, one row per user: both location scopes in one row, so that a decision that
-- spans both (together they must stay below the directory's own threshold) is one atomic
-- update. Counters are soft state: the old per-scope rows are dropped, not converted.
DROP TABLE lockout_counters;

CREATE TABLE lockout_users (
    tenant_id TEXT NOT NULL,
    user_key TEXT NOT NULL,
    -- Per scope: failures counted, when the last one was, attempts sent out and not yet
    -- answered (and until when they may be outstanding at most), the lockout in force and how
    -- many lockouts since the last success.
    familiar_failures BIGINT NOT NULL,
    familiar_last_failure_at BIGINT NOT NULL,
    familiar_pending BIGINT NOT NULL,
    familiar_pending_until BIGINT NOT NULL,
    familiar_locked_until BIGINT NOT NULL,
    familiar_lockouts BIGINT NOT NULL,
    unfamiliar_failures BIGINT NOT NULL,
    unfamiliar_last_failure_at BIGINT NOT NULL,
    unfamiliar_pending BIGINT NOT NULL,
    unfamiliar_pending_until BIGINT NOT NULL,
    unfamiliar_locked_until BIGINT NOT NULL,
    unfamiliar_lockouts BIGINT NOT NULL,
    -- Familiar failures the directory may still hold: unlike familiar_failures, not started
    -- again by a familiar lockout; the unfamiliar scope's room is reckoned with it.
    familiar_standing BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, user_key)
);

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
    familiar_failures INTEGER NOT NULL,
    familiar_last_failure_at INTEGER NOT NULL,
    familiar_pending INTEGER NOT NULL,
    familiar_pending_until INTEGER NOT NULL,
    familiar_locked_until INTEGER NOT NULL,
    familiar_lockouts INTEGER NOT NULL,
    unfamiliar_failures INTEGER NOT NULL,
    unfamiliar_last_failure_at INTEGER NOT NULL,
    unfamiliar_pending INTEGER NOT NULL,
    unfamiliar_pending_until INTEGER NOT NULL,
    unfamiliar_locked_until INTEGER NOT NULL,
    unfamiliar_lockouts INTEGER NOT NULL,
    -- Familiar failures the directory may still hold: unlike familiar_failures, not started
    -- again by a familiar lockout; the unfamiliar scope's room is reckoned with it.
    familiar_standing INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, user_key)
);

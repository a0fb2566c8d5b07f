-- The sign-in log, lighter to write (a row per sign-in, at thousands a second):
-- * ids without AUTOINCREMENT: SQLite's rowid still grows with every insert, and
--   AUTOINCREMENT cost an update of sqlite_sequence per row;
-- * one index, by time: it serves the listing (newest first) and pruning. The index by
--   (tenant, username) served nothing: the listing matches usernames case-insensitively,
--   which it cannot use, and every row paid for it.
CREATE TABLE signin_log_v2 (
    -- Orders attempts within one second.
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    tenant_id TEXT NOT NULL,
    username TEXT NOT NULL,
    upn TEXT NOT NULL,
    client_id TEXT NOT NULL,
    client_ip TEXT NOT NULL,
    familiar_location INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    error_code TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    latency_ms INTEGER NOT NULL,
    lockout TEXT NOT NULL,
    policies TEXT NOT NULL DEFAULT '',
    mfa TEXT NOT NULL DEFAULT ''
);

INSERT INTO signin_log_v2 (id, at, tenant_id, username, upn, client_id, client_ip,
    familiar_location, outcome, error_code, agent_id, latency_ms, lockout, policies, mfa)
SELECT id, at, tenant_id, username, upn, client_id, client_ip, familiar_location, outcome,
    error_code, agent_id, latency_ms, lockout, policies, mfa
FROM signin_log;

DROP TABLE signin_log;
ALTER TABLE signin_log_v2 RENAME TO signin_log;

CREATE INDEX signin_log_by_time ON signin_log (at);

-- The sign-in log, lighter to write (a row per sign-in, at thousands a second): one index,
-- by time, which serves the listing (newest first) and pruning. The index by (tenant,
-- username) served nothing: the listing matches usernames case-insensitively, which it
-- cannot use, and every row paid for it.
DROP INDEX signin_log_by_user;
DROP INDEX signin_log_by_time;
CREATE INDEX signin_log_by_time ON signin_log (at);

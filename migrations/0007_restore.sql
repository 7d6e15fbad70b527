-- omemod schema, version 7 (issue 19): a restored or copied database is noticed before it
-- serves anything, and what it held is never used again as if it were current.
--
-- Every write of a session row stamps it with `mark`, a number that only grows (the writer's
-- batch, under the generation of the run); after each commit that wrote sessions the daemon
-- records (generation, session deletions, the mark and key of one of those rows) in
-- `<db>.generation`. At start a database whose generation or deletion count is behind that
-- record, or whose named row is missing or carries an older mark, is an older copy.

ALTER TABLE sessions ADD COLUMN mark INTEGER NOT NULL DEFAULT 0;

-- A session found in an older copy: its chains and skipped keys may be behind the peer's, so
-- a message that decrypts on it may be a replay (refused), and its next message starts a new
-- session. It stops being suspect when a new session replaces it.
ALTER TABLE sessions ADD COLUMN suspect INTEGER NOT NULL DEFAULT 0 CHECK (suspect IN (0, 1));
ALTER TABLE previous_sessions ADD COLUMN suspect INTEGER NOT NULL DEFAULT 0 CHECK (suspect IN (0, 1));
-- Sessions an earlier rollback check (schema 3) marked for a rebuild are suspect too.
UPDATE sessions SET suspect = 1 WHERE EXISTS (
    SELECT 1 FROM session_rebuilds r
    WHERE r.account_id = sessions.account_id AND r.jid = sessions.jid
      AND r.namespace = sessions.namespace AND r.device_id = sessions.device_id);

-- Set in every copy `omemod backup` writes, in the database `omemod restore` puts in place and
-- on an account `omemod account import` adds: the daemon treats the account as restored from an
-- older copy, whatever `<db>.generation` says, and clears it in the same transaction.
ALTER TABLE accounts ADD COLUMN restored_copy INTEGER NOT NULL DEFAULT 0 CHECK (restored_copy IN (0, 1));

-- Session rows deleted so far: a row named by `<db>.generation` may go away without the
-- database being older.
INSERT OR IGNORE INTO meta (key, value) VALUES ('session_deletions', 0);
CREATE TRIGGER sessions_deleted AFTER DELETE ON sessions BEGIN
    UPDATE meta SET value = value + 1 WHERE key = 'session_deletions';
END;

-- omemod schema, version 3: a generation counter for detecting a database rolled back in time.
--
-- The daemon bumps `generation` at start, every few seconds while state changes, and at shutdown,
-- and writes the same number to `<db>.generation` next to the database (outside it). A database
-- whose generation is below that file's was replaced by an older copy (a restored backup, a
-- file-system snapshot): its ratchet states and prekeys are older than what peers saw, and
-- `status` says so.

-- Small named values of the daemon itself (not of an account).
CREATE TABLE meta (
    key   TEXT    PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO meta (key, value) VALUES ('generation', 0);

-- Sessions to rebuild with a new key exchange after a rollback was found: every session that
-- existed then. The next message we encrypt to the device (or `heartbeat`) starts a new session
-- from its stored bundle, once per device, and removes the row in the same transaction.
CREATE TABLE session_rebuilds (
    account_id   INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    jid          TEXT    NOT NULL,
    namespace    TEXT    NOT NULL,
    device_id    INTEGER NOT NULL,
    requested_at INTEGER NOT NULL,
    PRIMARY KEY (account_id, jid, namespace, device_id)
);

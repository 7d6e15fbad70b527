-- omemod schema, version 2 (branch `trust`): identity pinning, previous session states,
-- one prekey pool per namespace, bounded catch-up with persisted heartbeats.

-- Identity changes of remote devices that wait for the user (identity.accept).
-- A row with `bundle` set: a fetched bundle carried a new identity for a device we hold
-- another identity for; the bundle is kept aside until accepted.
-- A row with `accepted_at` set: the user accepted `new_identity` for a device whose old
-- session and bundle were dropped; the device is pinned to it until a session exists.
CREATE TABLE identity_changes (
    account_id   INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    jid          TEXT    NOT NULL,
    namespace    TEXT    NOT NULL,
    device_id    INTEGER NOT NULL,
    old_identity BLOB    CHECK (old_identity IS NULL OR length(old_identity) = 32), -- Curve25519 u
    new_identity BLOB    NOT NULL CHECK (length(new_identity) = 32),                -- Curve25519 u
    bundle       BLOB,                                                               -- the bundle XML that carried it
    seen_at      INTEGER NOT NULL,
    accepted_at  INTEGER,
    PRIMARY KEY (account_id, jid, namespace, device_id)
);

-- Earlier session states of a device, kept to survive simultaneous first contact: a message
-- that fails on the current session is tried on these, and the one that works is promoted.
CREATE TABLE previous_sessions (
    id          INTEGER PRIMARY KEY,
    account_id  INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    jid         TEXT    NOT NULL,
    namespace   TEXT    NOT NULL,
    device_id   INTEGER NOT NULL,
    state       BLOB    NOT NULL,      -- SECRET: ratchet snapshot, skipped keys included
    archived_at INTEGER NOT NULL
);
CREATE INDEX previous_sessions_by_device ON previous_sessions (account_id, jid, namespace, device_id);

-- Heartbeats deferred during catch-up, sent when it ends.
CREATE TABLE deferred_heartbeats (
    account_id  INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    jid         TEXT    NOT NULL,
    namespace   TEXT    NOT NULL,
    device_id   INTEGER NOT NULL,
    deferred_at INTEGER NOT NULL,
    PRIMARY KEY (account_id, jid, namespace, device_id)
);

-- When catch-up began (it ends by itself after a while); NULL when not catching up.
ALTER TABLE accounts ADD COLUMN catchup_since INTEGER;
UPDATE accounts SET catchup_since = CAST(strftime('%s', 'now') AS INTEGER) WHERE catchup = 1;

-- Each one-time prekey belongs to one namespace's pool, so the two bundles never offer the
-- same key. NULL: created before version 2, when both bundles listed it; no longer published,
-- still accepted once.
ALTER TABLE prekeys ADD COLUMN namespace TEXT;
-- The initiator's ephemeral key of the key exchange that used a hidden prekey during catch-up:
-- the prekey answers only that key exchange again.
ALTER TABLE prekeys ADD COLUMN used_by BLOB CHECK (used_by IS NULL OR length(used_by) = 32);

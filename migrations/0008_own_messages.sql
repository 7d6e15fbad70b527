-- omemod schema, version 8 (issue 20): our own messages read back, device
-- hygiene, and a trust source that says why a key is undecided.

-- own_messages: for each <encrypted> element this device sent, the payload's key material, so
-- that every process of the user can read it back from a sent carbon, a room's reflection or the
-- archive. Written in the transaction of the `encrypt` that made it; kept as long as redelivery
-- data (serve --redelivery-retention, --redelivery-max-entries), none at all when that is 0.
-- On the encrypt path, so one b-tree only, appended to: no index on digest (omemod keeps digest
-- prefix -> id in memory, as for redelivery, and checks the digest of the row it reads).
CREATE TABLE own_messages (
    id             INTEGER PRIMARY KEY,                                  -- grows with time: prunes walk from the oldest
    account_id     INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    digest         BLOB    NOT NULL CHECK (length(digest) = 32),         -- SHA-256 of (namespace, our device id, the element's key elements)
    payload_digest BLOB    NOT NULL CHECK (length(payload_digest) = 32), -- SHA-256 of (iv, payload): a copy with another payload is refused
    key_material   BLOB,                                                 -- secret; NULL for an empty message
    conversation   TEXT,                                                 -- the bare JID it was sent in (the SCE <to>); NULL when unknown
    created_at     INTEGER NOT NULL                                      -- unix seconds it was sent
);

-- Messages encrypted with a session since the last one decrypted from its device: a device that
-- stays silent past the thresholds (serve --stale-after-unanswered, --stale-after-silence) is
-- stale and left out of fan-out until it is heard from again.
ALTER TABLE sessions ADD COLUMN unanswered INTEGER NOT NULL DEFAULT 0;

-- Trust sources gain `policy`: no one decided, the account's trust mode left the key undecided
-- (`manual`, `tofu` after the first key, `btbv` once a key of the contact was verified). Rows the
-- policy made undecided before are brought to it. SQLite cannot change a CHECK in place: the
-- table is rebuilt under its name. The view device_overview reads it by name and needs no
-- change, but a rename checks every view (and device_overview names `trust`, dropped by then)
-- unless legacy_alter_table is on.
CREATE TABLE trust_new (
    account_id   INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    jid          TEXT    NOT NULL,
    identity_key BLOB    NOT NULL CHECK (length(identity_key) = 32),
    fingerprint  TEXT    NOT NULL,                                   -- 8 groups of 8 hex digits
    level        TEXT    NOT NULL CHECK (level IN ('trusted', 'distrusted', 'undecided')),
    source       TEXT    NOT NULL CHECK (source IN ('blind', 'manual', 'tofu', 'policy')),
    decided_at   INTEGER NOT NULL,
    PRIMARY KEY (account_id, jid, identity_key)
);
INSERT INTO trust_new (account_id, jid, identity_key, fingerprint, level, source, decided_at)
SELECT account_id, jid, identity_key, fingerprint, level,
       CASE WHEN level = 'undecided' AND source <> 'manual' THEN 'policy' ELSE source END,
       decided_at
FROM trust;
DROP TABLE trust;
PRAGMA legacy_alter_table = ON;
ALTER TABLE trust_new RENAME TO trust;
PRAGMA legacy_alter_table = OFF;

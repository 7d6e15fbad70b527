-- omemod schema, branch `ownmsgs` (issue 20; numbered 0007 for the merge, 5th in this branch's
-- list): our own messages read back, device hygiene, and a trust source that says why a key is
-- undecided.

-- own_messages: for each <encrypted> element this device sent, the payload's key material, so
-- that every process of the user can read it back from a sent carbon, a room's reflection or the
-- archive. Written in the transaction of the `encrypt` that made it; kept as long as redelivery
-- data (serve --redelivery-retention, --redelivery-max-entries), none at all when that is 0.
CREATE TABLE own_messages (
    id             INTEGER PRIMARY KEY,                                  -- grows with time: prunes walk from the oldest
    account_id     INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    digest         BLOB    NOT NULL CHECK (length(digest) = 32),         -- SHA-256 of (namespace, our device id, the element's key elements)
    payload_digest BLOB    NOT NULL CHECK (length(payload_digest) = 32), -- SHA-256 of (iv, payload): a copy with another payload is refused
    key_material   BLOB,                                                 -- secret; NULL for an empty message
    conversation   TEXT,                                                 -- the bare JID it was sent in (the SCE <to>); NULL when unknown
    created_at     INTEGER NOT NULL,                                     -- unix seconds it was sent
    UNIQUE (account_id, digest)
);

-- Messages encrypted with a session since the last one decrypted from its device: a device that
-- stays silent past the thresholds (serve --stale-after-unanswered, --stale-after-silence) is
-- stale and left out of fan-out until it is heard from again.
ALTER TABLE sessions ADD COLUMN unanswered INTEGER NOT NULL DEFAULT 0;

-- Trust sources gain `policy`: no one decided, the account's trust mode left the key undecided
-- (`manual`, `tofu` after the first key, `btbv` once a key of the contact was verified). Rows the
-- policy made undecided before are brought to it. SQLite cannot change a CHECK in place: the
-- table is rebuilt, and the view that reads it with it.
DROP VIEW device_overview;
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
ALTER TABLE trust_new RENAME TO trust;

-- One row per known device (own devices included) with what we know about its identity.
-- The identity key is the session's if there is one, else the fetched bundle's.
CREATE VIEW device_overview AS
WITH keyed AS (
    SELECT d.*,
           coalesce(s.identity_key, b.identity_curve25519) AS key,
           (s.device_id IS NOT NULL)                       AS has_session,
           s.unanswered                                    AS unanswered
    FROM devices d
    LEFT JOIN sessions s
           ON s.account_id = d.account_id AND s.jid = d.jid
          AND s.namespace = d.namespace AND s.device_id = d.device_id
    LEFT JOIN bundles b
           ON b.account_id = d.account_id AND b.jid = d.jid
          AND b.namespace = d.namespace AND b.device_id = d.device_id
)
SELECT
    a.jid                                         AS account,
    k.jid                                         AS peer_jid,
    k.namespace                                   AS namespace,
    k.device_id                                   AS device_id,
    k.label                                       AS label,
    k.active                                      AS active,
    CASE WHEN k.key IS NULL THEN NULL ELSE
        lower(substr(hex(k.key),  1, 8) || ' ' || substr(hex(k.key),  9, 8) || ' ' ||
              substr(hex(k.key), 17, 8) || ' ' || substr(hex(k.key), 25, 8) || ' ' ||
              substr(hex(k.key), 33, 8) || ' ' || substr(hex(k.key), 41, 8) || ' ' ||
              substr(hex(k.key), 49, 8) || ' ' || substr(hex(k.key), 57, 8))
    END                                           AS fingerprint,
    CASE WHEN k.key IS NULL THEN NULL ELSE coalesce(t.level, 'undecided') END AS trust,
    t.source                                      AS trust_source,
    k.has_session                                 AS has_session,
    k.unanswered                                  AS unanswered,
    datetime(k.last_seen, 'unixepoch')            AS last_seen
FROM keyed k
JOIN accounts a ON a.id = k.account_id
LEFT JOIN trust t
       ON t.account_id = k.account_id AND t.jid = k.jid AND t.identity_key = k.key;

-- omemod schema, version 1.
--
-- One SQLite file holds everything omemod knows about one user's OMEMO device(s).
-- Conventions:
--   * times are INTEGER unix seconds (UTC); NULL means "never" / "not yet";
--   * booleans are INTEGER 0/1;
--   * `namespace` is the OMEMO version's XML namespace as text:
--       'eu.siacs.conversations.axolotl' (OMEMO 0.3) or 'urn:xmpp:omemo:2' (OMEMO 2);
--   * public keys are 32-byte BLOBs (Curve25519 u-coordinate unless said otherwise);
--   * columns named private_key / message_key / state hold SECRETS. Do not copy them around.
-- Every table hangs off `accounts`; deleting an account deletes all its rows (ON DELETE CASCADE).
-- Applied by omemod inside one transaction; PRAGMA user_version tracks the schema version.

-- The local XMPP accounts omemod serves, one OMEMO device each.
CREATE TABLE accounts (
    id                    INTEGER PRIMARY KEY,
    jid                   TEXT    NOT NULL UNIQUE,          -- bare JID of the account
    device_id             INTEGER NOT NULL                  -- our own OMEMO device id (1 .. 2^31-1)
                          CHECK (device_id BETWEEN 1 AND 2147483647),
    created_at            INTEGER NOT NULL,
    trust_mode            TEXT    NOT NULL DEFAULT 'btbv'   -- how new identity keys are treated
                          CHECK (trust_mode IN ('btbv', 'manual', 'tofu')),
    bundle_version        INTEGER NOT NULL DEFAULT 1,       -- change counter, bumped whenever the published bundle changes
    next_prekey_id        INTEGER NOT NULL DEFAULT 1,       -- next unused one-time prekey id
    next_signed_prekey_id INTEGER NOT NULL DEFAULT 1,       -- next unused signed prekey id
    catchup               INTEGER NOT NULL DEFAULT 0        -- 1 while the client replays its archive (MAM catch-up)
                          CHECK (catchup IN (0, 1))
);

-- Our long-term identity key pair, one per account. Shared by both OMEMO versions.
CREATE TABLE identity (
    account_id        INTEGER PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    private_key       BLOB    NOT NULL CHECK (length(private_key) = 32),       -- SECRET: 32-byte clamped X25519 scalar
    curve25519_public BLOB    NOT NULL CHECK (length(curve25519_public) = 32), -- X25519 public key (u-coordinate)
    ed25519_public    BLOB    NOT NULL CHECK (length(ed25519_public) = 32),    -- the same key as an Ed25519 point (OMEMO 2 form)
    fingerprint       TEXT    NOT NULL,                                         -- 8 groups of 8 lowercase hex digits, as clients show it
    created_at        INTEGER NOT NULL
);

-- Our signed prekeys. The current one is the newest row with retired_at IS NULL.
CREATE TABLE signed_prekeys (
    account_id        INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    id                INTEGER NOT NULL,
    private_key       BLOB    NOT NULL CHECK (length(private_key) = 32),       -- SECRET
    public_key        BLOB    NOT NULL CHECK (length(public_key) = 32),
    signature_oldmemo BLOB    NOT NULL CHECK (length(signature_oldmemo) = 64), -- XEdDSA over 0x05 || public_key (OMEMO 0.3)
    signature_twomemo BLOB    NOT NULL CHECK (length(signature_twomemo) = 64), -- Ed25519 over public_key (OMEMO 2)
    created_at        INTEGER NOT NULL,
    retired_at        INTEGER,                                                  -- set on rotation; deleted after the grace period
    PRIMARY KEY (account_id, id)
);

-- Our one-time prekeys.
CREATE TABLE prekeys (
    account_id  INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    id          INTEGER NOT NULL,
    private_key BLOB    NOT NULL CHECK (length(private_key) = 32),             -- SECRET
    public_key  BLOB    NOT NULL CHECK (length(public_key) = 32),
    created_at  INTEGER NOT NULL,
    used_at     INTEGER,    -- consumed by a key exchange while catching up: hidden from the bundle,
                            -- private part kept until catch-up ends
    PRIMARY KEY (account_id, id)
);

-- Device lists: every device of every JID we have seen a list for, own devices included
-- (jid = the account's jid). Devices that drop out of the list stay, with active = 0.
CREATE TABLE devices (
    account_id      INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    jid             TEXT    NOT NULL,
    namespace       TEXT    NOT NULL,
    device_id       INTEGER NOT NULL,
    label           TEXT,                                    -- OMEMO 2 device label, if any
    active          INTEGER NOT NULL CHECK (active IN (0, 1)), -- 1 = in the latest device list
    first_seen      INTEGER NOT NULL,
    last_seen       INTEGER,                                 -- last message received from it
    list_updated_at INTEGER NOT NULL,                        -- when the device list last told us about it
    PRIMARY KEY (account_id, jid, namespace, device_id)
);

-- The latest bundle fetched for a remote device.
CREATE TABLE bundles (
    account_id          INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    jid                 TEXT    NOT NULL,
    namespace           TEXT    NOT NULL,
    device_id           INTEGER NOT NULL,
    identity_key        BLOB    NOT NULL CHECK (length(identity_key) = 32),        -- in the namespace's form: Curve25519 u (0.3), Ed25519 (OMEMO 2)
    identity_curve25519 BLOB    NOT NULL CHECK (length(identity_curve25519) = 32), -- the same key as Curve25519 u (joins with trust)
    bundle              BLOB    NOT NULL,                                           -- serialized bundle value
    prekey_count        INTEGER NOT NULL,                                           -- one-time prekeys it offered
    fetched_at          INTEGER NOT NULL,
    PRIMARY KEY (account_id, jid, namespace, device_id)
);

-- Double Ratchet sessions, one per remote device and namespace.
CREATE TABLE sessions (
    account_id        INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    jid               TEXT    NOT NULL,
    namespace         TEXT    NOT NULL,
    device_id         INTEGER NOT NULL,
    state             BLOB    NOT NULL,                          -- SECRET: versioned ratchet snapshot
    state_format      INTEGER NOT NULL,                          -- format version of `state`
    identity_key      BLOB    NOT NULL CHECK (length(identity_key) = 32), -- Curve25519 u of the peer's identity
    initiated_by      TEXT    NOT NULL CHECK (initiated_by IN ('us', 'them')),
    confirmed         INTEGER NOT NULL CHECK (confirmed IN (0, 1)), -- 1 once the peer answered (no more key exchange header)
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    messages_sent     INTEGER NOT NULL DEFAULT 0,
    messages_received INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, jid, namespace, device_id)
);

-- Message keys of messages skipped in a receiving chain, kept to decrypt them when they arrive late.
CREATE TABLE skipped_keys (
    account_id  INTEGER NOT NULL,
    jid         TEXT    NOT NULL,
    namespace   TEXT    NOT NULL,
    device_id   INTEGER NOT NULL,
    ratchet_key BLOB    NOT NULL CHECK (length(ratchet_key) = 32),  -- sender's ratchet public key (Curve25519 u)
    n           INTEGER NOT NULL,                                    -- message number in that chain
    message_key BLOB    NOT NULL CHECK (length(message_key) = 32),  -- SECRET
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (account_id, jid, namespace, device_id, ratchet_key, n),
    FOREIGN KEY (account_id, jid, namespace, device_id)
        REFERENCES sessions (account_id, jid, namespace, device_id) ON DELETE CASCADE
);
CREATE INDEX skipped_keys_by_age ON skipped_keys (created_at);

-- Trust decisions, per contact JID and identity key (the Curve25519 u, the same for both namespaces).
CREATE TABLE trust (
    account_id   INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    jid          TEXT    NOT NULL,
    identity_key BLOB    NOT NULL CHECK (length(identity_key) = 32),
    fingerprint  TEXT    NOT NULL,                                   -- 8 groups of 8 hex digits
    level        TEXT    NOT NULL CHECK (level IN ('trusted', 'distrusted', 'undecided')),
    source       TEXT    NOT NULL CHECK (source IN ('blind', 'manual', 'tofu')),
    decided_at   INTEGER NOT NULL,
    PRIMARY KEY (account_id, jid, identity_key)
);

-- ---------------------------------------------------------------------------------------------
-- Views for people reading the database with sqlite3.

-- One row per known device (own devices included) with what we know about its identity.
-- The identity key is the session's if there is one, else the fetched bundle's.
CREATE VIEW device_overview AS
WITH keyed AS (
    SELECT d.*,
           coalesce(s.identity_key, b.identity_curve25519) AS key,
           (s.device_id IS NOT NULL)                       AS has_session
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
    k.has_session                                 AS has_session,
    datetime(k.last_seen, 'unixepoch')            AS last_seen
FROM keyed k
JOIN accounts a ON a.id = k.account_id
LEFT JOIN trust t
       ON t.account_id = k.account_id AND t.jid = k.jid AND t.identity_key = k.key;

-- Health of our own published bundle, one row per account.
CREATE VIEW own_bundle_status AS
SELECT
    a.jid                                                                  AS account,
    a.device_id                                                            AS device_id,
    i.fingerprint                                                          AS fingerprint,
    (SELECT count(*) FROM prekeys p WHERE p.account_id = a.id AND p.used_at IS NULL)     AS live_prekeys,
    (SELECT count(*) FROM prekeys p WHERE p.account_id = a.id AND p.used_at IS NOT NULL) AS hidden_prekeys,
    spk.id                                                                 AS signed_prekey_id,
    (CAST(strftime('%s', 'now') AS INTEGER) - spk.created_at) / 86400                                 AS signed_prekey_age_days,
    a.bundle_version                                                       AS bundle_version,
    a.catchup                                                              AS catchup
FROM accounts a
LEFT JOIN identity i ON i.account_id = a.id
LEFT JOIN signed_prekeys spk
       ON spk.account_id = a.id
      AND spk.id = (SELECT s2.id FROM signed_prekeys s2
                    WHERE s2.account_id = a.id AND s2.retired_at IS NULL
                    ORDER BY s2.created_at DESC, s2.id DESC LIMIT 1);

-- Sessions with their counters and how many skipped message keys they hold.
CREATE VIEW sessions_overview AS
SELECT
    a.jid                                      AS account,
    s.jid                                      AS jid,
    s.namespace                                AS namespace,
    s.device_id                                AS device_id,
    s.initiated_by                             AS initiated_by,
    s.confirmed                                AS confirmed,
    s.messages_sent                            AS sent,
    s.messages_received                        AS received,
    (SELECT count(*) FROM skipped_keys k
      WHERE k.account_id = s.account_id AND k.jid = s.jid
        AND k.namespace = s.namespace AND k.device_id = s.device_id) AS skipped_keys,
    datetime(s.updated_at, 'unixepoch')        AS updated_at
FROM sessions s
JOIN accounts a ON a.id = s.account_id;

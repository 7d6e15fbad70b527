-- omemod schema, version 9 (issue 24): secrets sealed at rest.
--
-- Every secret column (identity.private_key, signed_prekeys.private_key, prekeys.private_key,
-- sessions.state, previous_sessions.state, skipped_keys.message_key, redelivery.key_material,
-- own_messages.key_material)
-- holds from now on 0x01 || nonce (24) || XChaCha20-Poly1305 ciphertext || tag (16), under a
-- random data key, with the table, the column and the row's key as associated data. omemod seals
-- the values of an older database right after this migration, in one transaction, and then
-- erases the plaintext pages (VACUUM, WAL truncated). The data key is kept here, wrapped by a
-- key from the installation's key source; this file alone opens nothing.

-- The data key, wrapped, and where the key that wraps it comes from. One row.
CREATE TABLE sealing (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    source      TEXT    NOT NULL                      -- systemd-credential / secret-service / passphrase / key-file
                CHECK (source IN ('systemd-credential', 'secret-service', 'passphrase', 'key-file')),
    source_ref  TEXT,                                 -- the key file's path, the credential's name or the keyring item's id
    kdf         TEXT,                                 -- passphrase: Argon2id parameters and salt (JSON)
    wrapped_key BLOB    NOT NULL,                     -- nonce || XChaCha20-Poly1305(key-encryption key, data key)
    key_id      TEXT    NOT NULL,                     -- public name of the data key (hash prefix)
    created_at  INTEGER NOT NULL,
    rekeyed_at  INTEGER                               -- last `omemod rekey`
);

-- The 32-byte checks on secret columns go: a sealed key is 73 bytes. SQLite cannot drop a CHECK,
-- so these tables are rebuilt (the views that read them first dropped, then made again as
-- they were).
DROP VIEW own_bundle_status;
DROP VIEW sessions_overview;

CREATE TABLE identity_sealed (
    account_id        INTEGER PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    private_key       BLOB    NOT NULL,                                         -- SEALED: 32-byte clamped X25519 scalar
    curve25519_public BLOB    NOT NULL CHECK (length(curve25519_public) = 32), -- X25519 public key (u-coordinate)
    ed25519_public    BLOB    NOT NULL CHECK (length(ed25519_public) = 32),    -- the same key as an Ed25519 point (OMEMO 2 form)
    fingerprint       TEXT    NOT NULL,                                         -- 8 groups of 8 lowercase hex digits, as clients show it
    created_at        INTEGER NOT NULL
);
INSERT INTO identity_sealed SELECT account_id, private_key, curve25519_public, ed25519_public, fingerprint, created_at FROM identity;
DROP TABLE identity;
ALTER TABLE identity_sealed RENAME TO identity;

CREATE TABLE signed_prekeys_sealed (
    account_id        INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    id                INTEGER NOT NULL,
    private_key       BLOB    NOT NULL,                                         -- SEALED
    public_key        BLOB    NOT NULL CHECK (length(public_key) = 32),
    signature_oldmemo BLOB    NOT NULL CHECK (length(signature_oldmemo) = 64), -- XEdDSA over 0x05 || public_key (OMEMO 0.3)
    signature_twomemo BLOB    NOT NULL CHECK (length(signature_twomemo) = 64), -- Ed25519 over public_key (OMEMO 2)
    created_at        INTEGER NOT NULL,
    retired_at        INTEGER,                                                  -- set on rotation; deleted after the grace period
    PRIMARY KEY (account_id, id)
);
INSERT INTO signed_prekeys_sealed SELECT account_id, id, private_key, public_key, signature_oldmemo, signature_twomemo, created_at, retired_at FROM signed_prekeys;
DROP TABLE signed_prekeys;
ALTER TABLE signed_prekeys_sealed RENAME TO signed_prekeys;

CREATE TABLE prekeys_sealed (
    account_id  INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    id          INTEGER NOT NULL,
    private_key BLOB    NOT NULL,                                               -- SEALED
    public_key  BLOB    NOT NULL CHECK (length(public_key) = 32),
    created_at  INTEGER NOT NULL,
    used_at     INTEGER,    -- consumed by a key exchange while catching up: hidden from the bundle,
                            -- private part kept until catch-up ends
    namespace   TEXT,       -- the pool it belongs to; NULL: made before version 2, no longer published
    used_by     BLOB CHECK (used_by IS NULL OR length(used_by) = 32), -- the key exchange that used it during catch-up
    PRIMARY KEY (account_id, id)
);
INSERT INTO prekeys_sealed SELECT account_id, id, private_key, public_key, created_at, used_at, namespace, used_by FROM prekeys;
DROP TABLE prekeys;
ALTER TABLE prekeys_sealed RENAME TO prekeys;

CREATE TABLE skipped_keys_sealed (
    account_id  INTEGER NOT NULL,
    jid         TEXT    NOT NULL,
    namespace   TEXT    NOT NULL,
    device_id   INTEGER NOT NULL,
    ratchet_key BLOB    NOT NULL CHECK (length(ratchet_key) = 32),  -- sender's ratchet public key (Curve25519 u)
    n           INTEGER NOT NULL,                                    -- message number in that chain
    message_key BLOB    NOT NULL,                                    -- SEALED
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (account_id, jid, namespace, device_id, ratchet_key, n),
    FOREIGN KEY (account_id, jid, namespace, device_id)
        REFERENCES sessions (account_id, jid, namespace, device_id) ON DELETE CASCADE
);
INSERT INTO skipped_keys_sealed SELECT account_id, jid, namespace, device_id, ratchet_key, n, message_key, created_at FROM skipped_keys;
DROP TABLE skipped_keys;
ALTER TABLE skipped_keys_sealed RENAME TO skipped_keys;
CREATE INDEX skipped_keys_by_age ON skipped_keys (created_at);

-- The views, as migration 1 made them.
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

-- Issue 8: one device, many processes.
--
-- redelivery: for each recently decrypted message, the key material our ratchet recovered for
-- it, so that the same <encrypted> element can be opened again (by another client process, or
-- on a retry after a lost answer) without touching the ratchet. Written in the same
-- transaction as the ratchet step. Rows older than the retention window (serve
-- --redelivery-retention) or beyond the row cap are deleted (secure_delete is on).
CREATE TABLE redelivery (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id     INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    digest         BLOB    NOT NULL CHECK (length(digest) = 32),         -- SHA-256 of (namespace, sender JID, sender device, our key element)
    payload_digest BLOB    NOT NULL CHECK (length(payload_digest) = 32), -- SHA-256 of (iv, payload): the same element, not a reused key
    key_material   BLOB,                                                 -- secret; NULL for an empty message
    identity_key   BLOB    NOT NULL CHECK (length(identity_key) = 32),   -- the sender's Curve25519 identity key (public)
    key_exchange   INTEGER NOT NULL CHECK (key_exchange IN (0, 1)),
    created_at     INTEGER NOT NULL,                                     -- unix seconds of the first decryption
    UNIQUE (account_id, digest)
);
CREATE INDEX redelivery_created ON redelivery (created_at);

-- seen_messages: a digest (no key material) of every decrypted message, kept longer than
-- redelivery, so that an old replay is reported as a replay (duplicate_message) rather than as
-- a forgery once the ratchet has moved on.
CREATE TABLE seen_messages (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    digest     BLOB    NOT NULL CHECK (length(digest) = 32),
    created_at INTEGER NOT NULL,
    UNIQUE (account_id, digest)
);
CREATE INDEX seen_messages_created ON seen_messages (created_at);

-- encrypt_results: the answer of an `encrypt` call made with an idempotency_key, returned
-- again for a retry with the same key instead of advancing the chains twice. Holds only
-- ciphertext; same retention and cap as redelivery.
CREATE TABLE encrypt_results (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id      INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    idempotency_key TEXT    NOT NULL,
    request_digest  BLOB    NOT NULL CHECK (length(request_digest) = 32), -- SHA-256 of the request: a key reused for another request is refused
    result          TEXT    NOT NULL,                                     -- the answer, as JSON
    created_at      INTEGER NOT NULL,
    UNIQUE (account_id, idempotency_key)
);
CREATE INDEX encrypt_results_created ON encrypt_results (created_at);

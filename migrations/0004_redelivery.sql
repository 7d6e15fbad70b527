-- omemod schema, version 4 (branch `shared`, issue 8): one device, many processes.
--
-- redelivery: for each decrypted message, the key material our ratchet recovered for it, so
-- that the same <encrypted> element can be opened again (by another client process, or on a
-- retry after a lost answer) without touching the ratchet. Written in the same transaction as
-- the ratchet step. Key material older than the retention window (serve --redelivery-retention)
-- or beyond the row cap is erased (secure_delete is on). This is on the decrypt path, so one
-- b-tree only, appended to: no index on digest (omemod keeps digest prefix -> id in memory, and
-- checks the digest of the row it reads) and none on account_id (deleting an account scans it).
CREATE TABLE redelivery (
    id             INTEGER PRIMARY KEY,                                  -- grows with time: prunes walk from the oldest
    account_id     INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    digest         BLOB    NOT NULL CHECK (length(digest) = 32),         -- SHA-256 of (namespace, sender JID, sender device, our key element)
    created_at     INTEGER NOT NULL,                                     -- unix seconds of the first decryption
    payload_digest BLOB    CHECK (payload_digest IS NULL OR length(payload_digest) = 32), -- SHA-256 of (iv, payload); NULL once expired (digest only)
    key_material   BLOB,                                                 -- secret; NULL for an empty message and once expired
    identity_key   BLOB    CHECK (identity_key IS NULL OR length(identity_key) = 32),     -- the sender's Curve25519 identity key (public)
    key_exchange   INTEGER CHECK (key_exchange IN (0, 1))
);
-- Once its window has passed (or redelivery is off) a row keeps only its digest, for 90 days:
-- an old replay is then reported as a replay (duplicate_message) rather than as a forgery.

-- encrypt_results: the answer of an `encrypt` call made with an idempotency_key, returned
-- again for a retry with the same key instead of advancing the chains twice. Holds only
-- ciphertext; same retention and cap as redelivery.
CREATE TABLE encrypt_results (
    id              INTEGER PRIMARY KEY,
    account_id      INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    idempotency_key TEXT    NOT NULL,
    request_digest  BLOB    NOT NULL CHECK (length(request_digest) = 32), -- SHA-256 of the request: a key reused for another request is refused
    result          TEXT    NOT NULL,                                     -- the answer, as JSON
    created_at      INTEGER NOT NULL,
    UNIQUE (account_id, idempotency_key)
);
CREATE INDEX encrypt_results_created ON encrypt_results (created_at);

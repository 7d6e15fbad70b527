-- omemod schema, version 5 (issue 8's cost): redelivery records wait in their session's row.
--
-- A decryption writes its session row anyway; keeping its redelivery record (the same fields as
-- a `redelivery` row, see 0004) in that row saves a second page per commit. The records sit in 8
-- slots of 160 bytes (the column is NULL, or 1280 bytes, so the row keeps its size and SQLite
-- rewrites it in place); the 8th moves them all to `redelivery`, as do the hourly maintenance,
-- start-up, and deleting the session. A slot: digest(32) payload_digest(32) identity_key(32)
-- flags(1: 1 key exchange, 2 key material kept) created_at(8, big-endian) key material
-- length(2, big-endian) key material(at most 53) zeros.
ALTER TABLE sessions ADD COLUMN redelivery_pending BLOB;                                 -- SECRET (key material)
ALTER TABLE sessions ADD COLUMN redelivery_pending_count INTEGER NOT NULL DEFAULT 0
    CHECK (redelivery_pending_count BETWEEN 0 AND 8);                                     -- slots in use

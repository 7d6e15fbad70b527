-- omemod schema, version 5 (issue 8's cost): redelivery records wait in their session's row.
--
-- A decryption writes its session row anyway; keeping its redelivery record (the same fields as
-- a `redelivery` row, see 0004) in that row saves a second page per commit. Up to 8 records wait
-- there, then move to `redelivery` together; the hourly maintenance (and start-up) moves every
-- waiting record, and deleting a session moves its records first. Format (omemod's own, version
-- byte 1): per record digest(32) payload_digest(32) identity_key(32) flags(1: 1 key exchange,
-- 2 key material kept) created_at(8, big-endian) key material length(2) key material.
-- SECRET (key material). NULL: nothing waiting.
ALTER TABLE sessions ADD COLUMN redelivery_pending BLOB;

-- omemod schema (branch `integrity`, issue 19): redelivery keeps its conversation, and the
-- answers kept for `encrypt` idempotency keys are bounded in bytes.

-- The conversation a message was first decrypted in: a redelivered copy must arrive in the same
-- one (a 0.3 message has no SCE envelope to say where it belongs). `conversation` is a SHA-256
-- of the stanza's bare `to` (NULL: the client did not say), `group_chat` 0/1 (NULL: rows from
-- before this version, not checked). Both are erased with the key material.
ALTER TABLE redelivery ADD COLUMN conversation BLOB CHECK (conversation IS NULL OR length(conversation) = 32);
ALTER TABLE redelivery ADD COLUMN group_chat INTEGER CHECK (group_chat IN (0, 1));

-- The size of each kept answer, so that the whole store is held under a byte cap without
-- reading the answers themselves (the index covers the sum).
ALTER TABLE encrypt_results ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
UPDATE encrypt_results SET bytes = length(CAST(result AS BLOB));
CREATE INDEX encrypt_results_bytes ON encrypt_results (bytes);

-- Signed device labels (XEP-0384 0.9). A device list's label is kept as listed, with its
-- signature (`labelsig`), and checked against the device's identity key whenever it is shown:
-- the key may become known (or change) after the list arrived.
ALTER TABLE devices ADD COLUMN labelsig BLOB;   -- Ed25519 signature over the UTF-8 label

-- Our own device's label and its signature, published in the OMEMO 2 device list.
ALTER TABLE accounts ADD COLUMN label TEXT;
ALTER TABLE accounts ADD COLUMN labelsig BLOB;

-- Labels were kept only for our own device, without their signature: they can no longer be
-- checked, and the next device list brings them back.
UPDATE devices SET label = NULL;

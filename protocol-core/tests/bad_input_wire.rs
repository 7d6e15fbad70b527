//! Every wire parser against malformed input: each case asserts the specific error.

mod support;
use proptest::prelude::*;
use protocol_core::wire::{oldmemo, twomemo, WireError};
use support::*;

// ---- tiny vector loader -------------------------------------------------------------------

/// (serialized_message, authenticated_message, key_exchange) of one vector message.
type VectorMessage = (Vec<u8>, Vec<u8>, Option<Vec<u8>>);

/// Every message of a session file.
fn vector_messages(file: &str) -> Vec<VectorMessage> {
    let v = load(file);
    v["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            (
                hx(&m["serialized_message"]),
                hx(&m["authenticated_message"]),
                m.get("key_exchange").map(hx),
            )
        })
        .collect()
}

// ---- hand-written protobuf pieces ---------------------------------------------------------

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn fv(tag: u32, v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from(tag) << 3, &mut out);
    varint(v, &mut out);
    out
}

fn fb(tag: u32, b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint((u64::from(tag) << 3) | 2, &mut out);
    varint(b.len() as u64, &mut out);
    out.extend_from_slice(b);
    out
}

fn key05(fill: u8) -> Vec<u8> {
    let mut k = vec![0x05];
    k.extend_from_slice(&[fill; 32]);
    k
}

/// Fields of a valid 0.3 SignalMessage protobuf, in order.
fn signal_fields() -> Vec<Vec<u8>> {
    vec![fb(1, &key05(1)), fv(2, 0), fv(3, 0), fb(4, &[9; 48])]
}

/// 0x33 ‖ fields ‖ 8-byte MAC.
fn signal(fields: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![0x33];
    for f in fields {
        out.extend_from_slice(f);
    }
    out.extend_from_slice(&[0xaa; 8]);
    out
}

fn prekey_fields() -> Vec<Vec<u8>> {
    vec![
        fv(1, 2),
        fb(2, &key05(2)),
        fb(3, &key05(3)),
        fb(4, &signal(&signal_fields())),
        fv(6, 7),
    ]
}

fn prekey(fields: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![0x33];
    for f in fields {
        out.extend_from_slice(f);
    }
    out
}

fn concat(fields: &[Vec<u8>]) -> Vec<u8> {
    fields.concat()
}

fn omemo_message_fields() -> Vec<Vec<u8>> {
    vec![fv(1, 0), fv(2, 0), fb(3, &[4; 32]), fb(4, &[5; 64])]
}

fn auth_fields() -> Vec<Vec<u8>> {
    vec![fb(1, &[6; 16]), fb(2, &concat(&omemo_message_fields()))]
}

fn kex_fields() -> Vec<Vec<u8>> {
    vec![
        fv(1, 2),
        fv(2, 7),
        fb(3, &[7; 32]),
        fb(4, &[8; 32]),
        fb(5, &concat(&auth_fields())),
    ]
}

fn without(fields: &[Vec<u8>], index: usize) -> Vec<Vec<u8>> {
    let mut f = fields.to_vec();
    f.remove(index);
    f
}

fn replace(fields: &[Vec<u8>], index: usize, with: Vec<u8>) -> Vec<Vec<u8>> {
    let mut f = fields.to_vec();
    f[index] = with;
    f
}

// ---- sanity: the hand-built messages are valid -------------------------------------------

#[test]
fn hand_built_messages_parse() {
    let p = oldmemo::parse_signal_message(&signal(&signal_fields())).expect("signal");
    assert_eq!(p.message.ratchet_key, [1; 32]);
    assert_eq!(p.mac, [0xaa; 8]);
    let k = oldmemo::PreKeySignalMessage::parse(&prekey(&prekey_fields())).expect("prekey");
    assert_eq!((k.pre_key_id, k.signed_pre_key_id), (2, 7));
    twomemo::OMEMOMessage::parse(&concat(&omemo_message_fields())).expect("message");
    twomemo::OMEMOAuthenticatedMessage::parse(&concat(&auth_fields())).expect("auth");
    twomemo::OMEMOKeyExchange::parse(&concat(&kex_fields())).expect("kex");
}

// ---- empty / truncated / oversized --------------------------------------------------------

#[test]
fn empty_input() {
    assert!(matches!(
        oldmemo::parse_signal_message(&[]),
        Err(WireError::Empty)
    ));
    assert!(matches!(
        oldmemo::PreKeySignalMessage::parse(&[]),
        Err(WireError::Empty)
    ));
    assert!(matches!(
        twomemo::OMEMOMessage::parse(&[]),
        Err(WireError::Empty)
    ));
    assert!(matches!(
        twomemo::OMEMOAuthenticatedMessage::parse(&[]),
        Err(WireError::Empty)
    ));
    assert!(matches!(
        twomemo::OMEMOKeyExchange::parse(&[]),
        Err(WireError::Empty)
    ));
}

#[test]
fn truncated_at_every_length() {
    for (serialized, authenticated, kex) in vector_messages("session_oldmemo.json") {
        let _ = serialized;
        for len in 0..authenticated.len() {
            assert!(
                oldmemo::parse_signal_message(&authenticated[..len]).is_err(),
                "len {len}"
            );
        }
        if let Some(kex) = kex {
            for len in 0..kex.len() {
                assert!(
                    oldmemo::PreKeySignalMessage::parse(&kex[..len]).is_err(),
                    "len {len}"
                );
            }
        }
    }
    for (serialized, authenticated, kex) in vector_messages("session_twomemo.json") {
        for len in 0..serialized.len() {
            assert!(
                twomemo::OMEMOMessage::parse(&serialized[..len]).is_err(),
                "len {len}"
            );
        }
        for len in 0..authenticated.len() {
            assert!(
                twomemo::OMEMOAuthenticatedMessage::parse(&authenticated[..len]).is_err(),
                "len {len}"
            );
        }
        if let Some(kex) = kex {
            for len in 0..kex.len() {
                assert!(
                    twomemo::OMEMOKeyExchange::parse(&kex[..len]).is_err(),
                    "len {len}"
                );
            }
        }
    }
}

#[test]
fn too_short_for_mac() {
    for len in 1..=8 {
        let mut input = vec![0x33];
        input.resize(len, 0);
        assert!(matches!(
            oldmemo::parse_signal_message(&input),
            Err(WireError::Truncated { min: 9, .. })
        ));
    }
}

#[test]
fn oversized_input() {
    let mut big = vec![0x33];
    big.resize(4097, 0);
    let too_long = |r: Result<(), WireError>| {
        assert!(matches!(
            r,
            Err(WireError::TooLong {
                len: 4097,
                max: 4096
            })
        ));
    };
    too_long(oldmemo::parse_signal_message(&big).map(|_| ()));
    too_long(oldmemo::PreKeySignalMessage::parse(&big).map(|_| ()));
    too_long(twomemo::OMEMOMessage::parse(&big).map(|_| ()));
    too_long(twomemo::OMEMOAuthenticatedMessage::parse(&big).map(|_| ()));
    too_long(twomemo::OMEMOKeyExchange::parse(&big).map(|_| ()));
}

#[test]
fn oversized_ciphertext() {
    let ok = signal(&replace(&signal_fields(), 3, fb(4, &[1; 1024])));
    assert!(oldmemo::parse_signal_message(&ok).is_ok());
    let big = signal(&replace(&signal_fields(), 3, fb(4, &[1; 1025])));
    assert!(matches!(
        oldmemo::parse_signal_message(&big),
        Err(WireError::FieldTooLong {
            field: "ciphertext",
            len: 1025,
            max: 1024,
            ..
        })
    ));
    let big = concat(&replace(&omemo_message_fields(), 3, fb(4, &[1; 1025])));
    assert!(matches!(
        twomemo::OMEMOMessage::parse(&big),
        Err(WireError::FieldTooLong {
            field: "ciphertext",
            len: 1025,
            ..
        })
    ));
}

// ---- version byte -------------------------------------------------------------------------

#[test]
fn wrong_version_byte() {
    let v = load("session_oldmemo.json");
    let m = &v["messages"][0];
    for bad in [0x32u8, 0x34, 0x23, 0x00, 0xff, 0x08] {
        let mut sm = hx(&m["authenticated_message"]);
        sm[0] = bad;
        assert!(
            matches!(oldmemo::parse_signal_message(&sm), Err(WireError::BadVersion { found }) if found == bad)
        );
        let mut kex = hx(&m["key_exchange"]);
        kex[0] = bad;
        assert!(
            matches!(oldmemo::PreKeySignalMessage::parse(&kex), Err(WireError::BadVersion { found }) if found == bad)
        );
    }
    // The error text says which byte was found.
    let mut sm = hx(&m["authenticated_message"]);
    sm[0] = 0x32;
    let text = oldmemo::parse_signal_message(&sm).unwrap_err().to_string();
    assert!(text.contains("0x32"), "{text}");
}

#[test]
fn wrong_inner_version_byte() {
    let mut inner = signal(&signal_fields());
    inner[0] = 0x31;
    let msg = prekey(&replace(&prekey_fields(), 3, fb(4, &inner)));
    assert!(matches!(
        oldmemo::PreKeySignalMessage::parse(&msg),
        Err(WireError::BadVersion { found: 0x31 })
    ));
}

// ---- missing fields -----------------------------------------------------------------------

#[test]
fn oldmemo_signal_missing_each_field() {
    let names = ["ratchetKey", "counter", "previousCounter", "ciphertext"];
    for (i, name) in names.iter().enumerate() {
        let msg = signal(&without(&signal_fields(), i));
        match oldmemo::parse_signal_message(&msg) {
            Err(WireError::MissingField {
                message: "SignalMessage",
                field,
            }) => {
                assert_eq!(field, *name)
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn oldmemo_prekey_missing_each_field() {
    let names = [
        "preKeyId",
        "baseKey",
        "identityKey",
        "message",
        "signedPreKeyId",
    ];
    for (i, name) in names.iter().enumerate() {
        let msg = prekey(&without(&prekey_fields(), i));
        match oldmemo::PreKeySignalMessage::parse(&msg) {
            Err(WireError::MissingField {
                message: "PreKeySignalMessage",
                field,
            }) => {
                assert_eq!(field, *name)
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn twomemo_missing_each_field() {
    for (i, name) in ["n", "pn", "dh_pub", "ciphertext"].iter().enumerate() {
        match twomemo::OMEMOMessage::parse(&concat(&without(&omemo_message_fields(), i))) {
            Err(WireError::MissingField {
                message: "OMEMOMessage",
                field,
            }) => {
                assert_eq!(field, *name)
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    for (i, name) in ["mac", "message"].iter().enumerate() {
        match twomemo::OMEMOAuthenticatedMessage::parse(&concat(&without(&auth_fields(), i))) {
            Err(WireError::MissingField {
                message: "OMEMOAuthenticatedMessage",
                field,
            }) => {
                assert_eq!(field, *name)
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    for (i, name) in ["pk_id", "spk_id", "ik", "ek", "message"]
        .iter()
        .enumerate()
    {
        match twomemo::OMEMOKeyExchange::parse(&concat(&without(&kex_fields(), i))) {
            Err(WireError::MissingField {
                message: "OMEMOKeyExchange",
                field,
            }) => {
                assert_eq!(field, *name)
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn nested_missing_field_is_reported() {
    let inner = concat(&without(&auth_fields(), 0));
    let kex = concat(&replace(&kex_fields(), 4, fb(5, &inner)));
    assert!(matches!(
        twomemo::OMEMOKeyExchange::parse(&kex),
        Err(WireError::MissingField {
            message: "OMEMOAuthenticatedMessage",
            field: "mac"
        })
    ));
    let inner = concat(&without(&omemo_message_fields(), 2));
    let auth = concat(&replace(&auth_fields(), 1, fb(2, &inner)));
    assert!(matches!(
        twomemo::OMEMOAuthenticatedMessage::parse(&auth),
        Err(WireError::MissingField {
            message: "OMEMOMessage",
            field: "dh_pub"
        })
    ));
    let inner = signal(&without(&signal_fields(), 1));
    let msg = prekey(&replace(&prekey_fields(), 3, fb(4, &inner)));
    assert!(matches!(
        oldmemo::PreKeySignalMessage::parse(&msg),
        Err(WireError::MissingField {
            message: "SignalMessage",
            field: "counter"
        })
    ));
}

// ---- key lengths and types ----------------------------------------------------------------

#[test]
fn oldmemo_key_without_type_byte() {
    let msg = signal(&replace(&signal_fields(), 0, fb(1, &[1; 32])));
    assert!(matches!(
        oldmemo::parse_signal_message(&msg),
        Err(WireError::BadLength {
            field: "ratchetKey",
            len: 32,
            expected: 33,
            ..
        })
    ));
    for (index, tag, name) in [(1, 2, "baseKey"), (2, 3, "identityKey")] {
        let msg = prekey(&replace(&prekey_fields(), index, fb(tag, &[1; 32])));
        match oldmemo::PreKeySignalMessage::parse(&msg) {
            Err(WireError::BadLength {
                field,
                len: 32,
                expected: 33,
                ..
            }) => {
                assert_eq!(field, name)
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    let mut long = key05(1);
    long.push(0);
    let msg = signal(&replace(&signal_fields(), 0, fb(1, &long)));
    assert!(matches!(
        oldmemo::parse_signal_message(&msg),
        Err(WireError::BadLength { len: 34, .. })
    ));
}

#[test]
fn oldmemo_wrong_key_type_byte() {
    let mut key = key05(1);
    key[0] = 0x06;
    let msg = signal(&replace(&signal_fields(), 0, fb(1, &key)));
    assert!(matches!(
        oldmemo::parse_signal_message(&msg),
        Err(WireError::BadKeyType {
            field: "ratchetKey",
            found: 0x06,
            ..
        })
    ));
    for (index, tag, name) in [(1, 2, "baseKey"), (2, 3, "identityKey")] {
        let msg = prekey(&replace(&prekey_fields(), index, fb(tag, &key)));
        match oldmemo::PreKeySignalMessage::parse(&msg) {
            Err(WireError::BadKeyType {
                field, found: 0x06, ..
            }) => assert_eq!(field, name),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn twomemo_wrong_key_lengths() {
    for len in [31usize, 33] {
        let msg = concat(&replace(
            &omemo_message_fields(),
            2,
            fb(3, &key05(4)[..len]),
        ));
        assert!(matches!(
            twomemo::OMEMOMessage::parse(&msg),
            Err(WireError::BadLength {
                field: "dh_pub",
                expected: 32,
                ..
            })
        ));
        for (index, tag, name) in [(2, 3, "ik"), (3, 4, "ek")] {
            let msg = concat(&replace(&kex_fields(), index, fb(tag, &vec![5; len])));
            match twomemo::OMEMOKeyExchange::parse(&msg) {
                Err(WireError::BadLength {
                    field,
                    expected: 32,
                    len: l,
                    ..
                }) => {
                    assert_eq!((field, l), (name, len))
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }
    for len in [0usize, 8, 15, 17, 32] {
        let msg = concat(&replace(&auth_fields(), 0, fb(1, &vec![6; len])));
        assert!(matches!(
            twomemo::OMEMOAuthenticatedMessage::parse(&msg),
            Err(WireError::BadLength {
                field: "mac",
                expected: 16,
                ..
            })
        ));
    }
}

// ---- protobuf rules -----------------------------------------------------------------------

#[test]
fn any_field_order_and_unknown_fields_accepted() {
    let mut fields = signal_fields();
    fields.reverse();
    fields.insert(1, fv(15, 12345));
    fields.push(fb(9, b"unknown"));
    let p = oldmemo::parse_signal_message(&signal(&fields)).expect("reordered");
    let q = oldmemo::parse_signal_message(&signal(&signal_fields())).expect("canonical");
    assert_eq!(p.message, q.message);
    assert_ne!(
        p.authenticated, q.authenticated,
        "authenticated bytes are the received ones"
    );

    let mut fields = prekey_fields();
    fields.rotate_left(2);
    fields.push(fv(5, 42));
    let k = oldmemo::PreKeySignalMessage::parse(&prekey(&fields)).expect("reordered");
    assert_eq!(k.registration_id, Some(42));

    let mut fields = kex_fields();
    fields.reverse();
    fields.push(fv(100, 1));
    assert!(twomemo::OMEMOKeyExchange::parse(&concat(&fields)).is_ok());
}

#[test]
fn malformed_protobuf() {
    // A length prefix that runs past the end.
    let bad = concat(&[fv(1, 0), vec![0x1a, 0x40, 1, 2, 3]]);
    assert!(matches!(
        twomemo::OMEMOMessage::parse(&bad),
        Err(WireError::Protobuf {
            message: "OMEMOMessage",
            ..
        })
    ));
    // Wrong wire type for a known field (bytes where a varint is expected).
    let bad = concat(&[fb(1, &[1]), fv(2, 0), fb(3, &[4; 32]), fb(4, &[5; 16])]);
    assert!(matches!(
        twomemo::OMEMOMessage::parse(&bad),
        Err(WireError::Protobuf { .. })
    ));
    // An unterminated varint.
    let bad = vec![
        0x33, 0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ];
    assert!(matches!(
        oldmemo::PreKeySignalMessage::parse(&bad),
        Err(WireError::Protobuf { .. })
    ));
}

#[test]
fn error_messages_do_not_leak_bytes() {
    let mut key = key05(0xab);
    key[0] = 0x07;
    let msg = signal(&replace(&signal_fields(), 0, fb(1, &key)));
    let text = format!(
        "{:?} {}",
        oldmemo::parse_signal_message(&msg).unwrap_err(),
        oldmemo::parse_signal_message(&msg).unwrap_err()
    );
    assert!(
        !text.contains("171") && !text.to_lowercase().contains("abab"),
        "{text}"
    );
}

// ---- random garbage -----------------------------------------------------------------------

fn run_all(data: &[u8]) {
    let _ = oldmemo::parse_signal_message(data);
    let _ = oldmemo::PreKeySignalMessage::parse(data);
    let _ = twomemo::OMEMOMessage::parse(data);
    let _ = twomemo::OMEMOAuthenticatedMessage::parse(data);
    let _ = twomemo::OMEMOKeyExchange::parse(data);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..700)) {
        run_all(&data);
        let mut prefixed = vec![0x33];
        prefixed.extend_from_slice(&data);
        run_all(&prefixed);
    }

    #[test]
    fn mutated_vectors_never_panic(
        which in 0usize..4,
        index in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        insert in any::<bool>(),
    ) {
        let msgs = vector_messages(if which % 2 == 0 { "session_oldmemo.json" } else { "session_twomemo.json" });
        let (_, authenticated, kex) = &msgs[which % msgs.len()];
        for base in [Some(authenticated.clone()), kex.clone()].into_iter().flatten() {
            let mut data = base;
            let i = index.index(data.len());
            if insert { data.insert(i, byte) } else { data[i] = byte }
            run_all(&data);
        }
    }
}

// ---- payload decryption -------------------------------------------------------------------

mod payload_bad_input {
    use aes::cipher::{BlockEncryptMut, KeyIvInit};
    use hmac::Mac;
    use protocol_core::payload::{oldmemo, twomemo, PayloadError};

    #[test]
    fn oldmemo_key_material_lengths() {
        for len in [0usize, 1, 15, 17, 24, 31] {
            assert_eq!(
                oldmemo::decrypt(&vec![1; len], &[0; 12], &[0; 32]),
                Err(PayloadError::BadKeyMaterialLength { len })
            );
        }
    }

    #[test]
    fn oldmemo_iv_lengths() {
        for len in [0usize, 8, 11, 13, 15, 17, 32] {
            assert_eq!(
                oldmemo::decrypt(&[1; 32], &vec![0; len], &[0; 32]),
                Err(PayloadError::BadIvLength { len })
            );
        }
    }

    #[test]
    fn oldmemo_legacy_layout_needs_a_tag() {
        for len in [0usize, 1, 15] {
            assert_eq!(
                oldmemo::decrypt(&[1; 16], &[0; 12], &vec![0; len]),
                Err(PayloadError::BadCiphertextLength { len })
            );
        }
    }

    #[test]
    fn oldmemo_wrong_tag() {
        let enc = oldmemo::encrypt_with(&[3; 16], &[4; 12], b"hello");
        let mut km = *enc.key_material;
        km[16] ^= 0x80;
        assert_eq!(
            oldmemo::decrypt(&km, &enc.iv, &enc.ciphertext),
            Err(PayloadError::TagMismatch)
        );
        // An empty ciphertext still has to authenticate.
        assert_eq!(
            oldmemo::decrypt(&[9; 32], &[0; 12], &[]),
            Err(PayloadError::TagMismatch)
        );
    }

    /// `(enc_key, auth_key, iv)` = HKDF(key, 0×32, "OMEMO Payload", 80), computed independently.
    fn derive(key: &[u8; 32]) -> ([u8; 32], [u8; 32], [u8; 16]) {
        let mut okm = [0u8; 80];
        hkdf::Hkdf::<sha2::Sha256>::new(Some(&[0u8; 32]), key)
            .expand(b"OMEMO Payload", &mut okm)
            .expect("80 bytes");
        (
            okm[..32].try_into().unwrap(),
            okm[32..64].try_into().unwrap(),
            okm[64..].try_into().unwrap(),
        )
    }

    fn hmac16(key: &[u8; 32], data: &[u8]) -> [u8; 16] {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("key");
        mac.update(data);
        mac.finalize().into_bytes()[..16].try_into().unwrap()
    }

    fn key_material(key: &[u8; 32], hmac: &[u8; 16]) -> Vec<u8> {
        let mut km = key.to_vec();
        km.extend_from_slice(hmac);
        km
    }

    #[test]
    fn twomemo_key_material_lengths() {
        for len in [0usize, 16, 32, 47, 49, 64] {
            assert_eq!(
                twomemo::decrypt(&vec![1; len], &[0; 16]),
                Err(PayloadError::BadKeyMaterialLength { len })
            );
        }
    }

    #[test]
    fn twomemo_bad_padding_after_valid_hmac() {
        let key = [0x42; 32];
        let (enc_key, auth_key, iv) = derive(&key);
        // Raw CBC without padding; last plaintext byte 0x00 (and 0x11 > 16) is invalid PKCS#7.
        for last in [0x00u8, 0x11, 0x05] {
            let mut block = [0x41u8; 32];
            block[31] = last;
            let ct = cbc::Encryptor::<aes::Aes256>::new((&enc_key).into(), (&iv).into())
                .encrypt_padded_vec_mut::<aes::cipher::block_padding::NoPadding>(&block);
            let km = key_material(&key, &hmac16(&auth_key, &ct));
            assert_eq!(
                twomemo::decrypt(&km, &ct),
                Err(PayloadError::BadPadding),
                "last {last}"
            );
        }
    }

    #[test]
    fn twomemo_bad_ciphertext_length_after_valid_hmac() {
        let key = [0x24; 32];
        let (_, auth_key, _) = derive(&key);
        for len in [0usize, 1, 15, 17, 31] {
            let ct = vec![7u8; len];
            let km = key_material(&key, &hmac16(&auth_key, &ct));
            assert_eq!(
                twomemo::decrypt(&km, &ct),
                Err(PayloadError::BadCiphertextLength { len })
            );
        }
    }

    #[test]
    fn twomemo_hmac_checked_before_anything_else() {
        // Bad length *and* bad HMAC: the HMAC failure wins (nothing is decrypted first).
        assert_eq!(
            twomemo::decrypt(&[0; 48], &[1; 15]),
            Err(PayloadError::HmacMismatch)
        );
        let enc = twomemo::encrypt_with_key(&[5; 32], b"body");
        let mut ct = enc.ciphertext.clone();
        let last = ct.len() - 1;
        ct[last] ^= 1;
        assert_eq!(
            twomemo::decrypt(enc.key_material.as_ref(), &ct),
            Err(PayloadError::HmacMismatch)
        );
    }
}

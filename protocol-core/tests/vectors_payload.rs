//! Payload vectors (payload.json and the `payload` objects of the session files), plus the
//! SCE envelopes carried by the OMEMO 2 session payloads.

mod support;
use protocol_core::payload::{self, PayloadError};
use protocol_core::sce;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::Value;
use support::*;

// ---- tiny vector loader -------------------------------------------------------------------

fn arr<const N: usize>(v: &Value) -> [u8; N] {
    hx(v).try_into().expect("fixed length")
}

fn cases<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
    v[key].as_array().expect("array")
}

fn flip(bytes: &[u8], index: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[index] ^= 0x01;
    out
}

// ---- OMEMO 0.3: AES-128-GCM ---------------------------------------------------------------

#[test]
fn oldmemo_payload_vectors() {
    let v = load("payload.json");
    assert!(!cases(&v, "oldmemo").is_empty());
    for (i, c) in cases(&v, "oldmemo").iter().enumerate() {
        let key: [u8; 16] = arr(&c["key16"]);
        let iv: [u8; 12] = arr(&c["iv12"]);
        let pt = hx(&c["plaintext"]);
        let ct = hx(&c["payload"]);
        let km = hx(&c["key_material_32"]);
        let enc = payload::oldmemo::encrypt_with(&key, &iv, &pt);
        assert_eq!(enc.ciphertext, ct, "case {i} ciphertext");
        assert_eq!(enc.key_material.to_vec(), km, "case {i} key material");
        assert_eq!(enc.key_material[16..].to_vec(), hx(&c["tag16"]));
        assert_eq!(enc.iv, iv);

        let out = payload::oldmemo::decrypt(&km, &iv, &ct).expect("decrypts");
        assert_eq!(out.as_slice(), pt.as_slice(), "case {i} plaintext");

        // Legacy layout: 16-byte key material, tag appended to the payload.
        let mut ct_tag = ct.clone();
        ct_tag.extend_from_slice(&hx(&c["tag16"]));
        let out = payload::oldmemo::decrypt(&key, &iv, &ct_tag).expect("legacy layout");
        assert_eq!(out.as_slice(), pt.as_slice());

        // Longer key material (Dino): km[16..] is appended to the payload, last 16 = tag.
        let split = ct.len() / 2;
        let mut long_km = key.to_vec();
        long_km.extend_from_slice(&ct[split..]);
        long_km.extend_from_slice(&hx(&c["tag16"]));
        if long_km.len() > 32 {
            let out = payload::oldmemo::decrypt(&long_km, &iv, &ct[..split]).expect("long km");
            assert_eq!(out.as_slice(), pt.as_slice());
        }

        // Tampering anywhere is caught by the tag.
        assert_eq!(
            payload::oldmemo::decrypt(&flip(&km, 31), &iv, &ct),
            Err(PayloadError::TagMismatch)
        );
        assert_eq!(
            payload::oldmemo::decrypt(&flip(&km, 0), &iv, &ct),
            Err(PayloadError::TagMismatch)
        );
        assert_eq!(
            payload::oldmemo::decrypt(&km, &flip(&iv, 3), &ct),
            Err(PayloadError::TagMismatch)
        );
        assert_eq!(
            payload::oldmemo::decrypt(&km, &iv, &flip(&ct, ct.len() - 1)),
            Err(PayloadError::TagMismatch)
        );
    }
}

#[test]
fn oldmemo_legacy_iv16_vector() {
    let v = load("payload.json");
    let c = &v["oldmemo_legacy_iv16"];
    let km = hx(&c["key_material_32"]);
    let iv = hx(&c["iv16"]);
    assert_eq!(iv.len(), 16);
    let ct = hx(&c["payload"]);
    let out = payload::oldmemo::decrypt(&km, &iv, &ct).expect("16-byte IV decrypts");
    assert_eq!(out.as_slice(), hx(&c["plaintext"]).as_slice());
    assert_eq!(
        payload::oldmemo::decrypt(&flip(&km, 20), &iv, &ct),
        Err(PayloadError::TagMismatch)
    );
    // The same key/IV bytes cut to 12 are a different nonce: must not authenticate.
    assert_eq!(
        payload::oldmemo::decrypt(&km, &iv[..12], &ct),
        Err(PayloadError::TagMismatch)
    );
}

#[test]
fn oldmemo_random_encrypt_round_trips() {
    let mut rng = StdRng::seed_from_u64(7);
    for len in [1usize, 15, 16, 17, 1000] {
        let pt = vec![0x5a; len];
        let enc = payload::oldmemo::encrypt(&pt, &mut rng);
        let out = payload::oldmemo::decrypt(enc.key_material.as_ref(), &enc.iv, &enc.ciphertext)
            .expect("round trip");
        assert_eq!(out.as_slice(), pt.as_slice());
    }
    let (key, iv) = payload::oldmemo::key_transport(&mut rng);
    assert_eq!(key.len(), 16);
    assert_eq!(iv.len(), 12);
    assert_ne!(*key, [0u8; 16]);
}

#[test]
fn oldmemo_session_payloads() {
    let v = load("session_oldmemo.json");
    let mut seen = 0;
    for (i, m) in v["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .enumerate()
    {
        let p = &m["payload"];
        if p.is_null() || p.as_object().is_some_and(|o| o.is_empty()) {
            // python-oldmemo KeyTransport: 16 bytes of key material, no tag.
            assert_eq!(m["empty_message"].as_bool(), Some(true));
            assert_eq!(hx(&m["plaintext_key_material"]).len(), 16);
            continue;
        }
        seen += 1;
        let enc =
            payload::oldmemo::encrypt_with(&arr(&p["key"]), &arr(&p["iv"]), &hx(&p["plaintext"]));
        assert_eq!(enc.ciphertext, hx(&p["ciphertext_payload"]), "message {i}");
        assert_eq!(enc.key_material.to_vec(), hx(&p["key_material_key_tag"]));
        assert_eq!(enc.key_material.to_vec(), hx(&m["plaintext_key_material"]));
        assert_eq!(enc.key_material[16..].to_vec(), hx(&p["gcm_tag"]));
        let out = payload::oldmemo::decrypt(
            &hx(&m["plaintext_key_material"]),
            &hx(&p["iv"]),
            &hx(&p["ciphertext_payload"]),
        )
        .expect("decrypts");
        assert_eq!(out.as_slice(), hx(&p["plaintext"]).as_slice());
    }
    assert_eq!(seen, 3);
}

// ---- OMEMO 2: HKDF + AES-256-CBC + HMAC ---------------------------------------------------

#[test]
fn twomemo_payload_vectors() {
    let v = load("payload.json");
    assert!(!cases(&v, "twomemo").is_empty());
    for (i, c) in cases(&v, "twomemo").iter().enumerate() {
        let key: [u8; 32] = arr(&c["key32"]);
        let pt = hx(&c["plaintext"]);
        let ct = hx(&c["payload"]);
        let km = hx(&c["key_material_48"]);
        let enc = payload::twomemo::encrypt_with_key(&key, &pt);
        assert_eq!(enc.ciphertext, ct, "case {i} ciphertext");
        assert_eq!(enc.key_material.to_vec(), km, "case {i} key material");
        assert_eq!(enc.key_material[32..].to_vec(), hx(&c["hmac16"]));

        let out = payload::twomemo::decrypt(&km, &ct).expect("decrypts");
        assert_eq!(out.as_slice(), pt.as_slice(), "case {i} plaintext");

        assert_eq!(
            payload::twomemo::decrypt(&flip(&km, 47), &ct),
            Err(PayloadError::HmacMismatch)
        );
        assert_eq!(
            payload::twomemo::decrypt(&flip(&km, 0), &ct),
            Err(PayloadError::HmacMismatch)
        );
        assert_eq!(
            payload::twomemo::decrypt(&km, &flip(&ct, 0)),
            Err(PayloadError::HmacMismatch)
        );
        assert_eq!(
            payload::twomemo::decrypt(&km[..32], &ct),
            Err(PayloadError::BadKeyMaterialLength { len: 32 })
        );
    }
}

#[test]
fn twomemo_random_encrypt_round_trips() {
    let mut rng = StdRng::seed_from_u64(9);
    for len in [0usize, 1, 15, 16, 17, 1000] {
        let pt = vec![0xa5; len];
        let enc = payload::twomemo::encrypt(&pt, &mut rng);
        assert_eq!(enc.ciphertext.len(), (len / 16 + 1) * 16);
        let out = payload::twomemo::decrypt(enc.key_material.as_ref(), &enc.ciphertext)
            .expect("round trip");
        assert_eq!(out.as_slice(), pt.as_slice());
    }
}

#[test]
fn twomemo_session_payloads_and_envelopes() {
    let v = load("session_twomemo.json");
    let mut seen = 0;
    for (i, m) in v["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .enumerate()
    {
        let p = &m["payload"];
        if p.is_null() || p.as_object().is_some_and(|o| o.is_empty()) {
            assert_eq!(m["empty_message"].as_bool(), Some(true));
            assert_eq!(
                hx(&m["plaintext_key_material"]),
                payload::twomemo::EMPTY_KEY_MATERIAL.to_vec()
            );
            continue;
        }
        seen += 1;
        let plaintext = hx(&p["plaintext"]);
        let enc = payload::twomemo::encrypt_with_key(&arr(&p["key"]), &plaintext);
        assert_eq!(enc.ciphertext, hx(&p["ciphertext_payload"]), "message {i}");
        assert_eq!(enc.key_material.to_vec(), hx(&p["key_material_key_hmac"]));
        assert_eq!(enc.key_material.to_vec(), hx(&m["plaintext_key_material"]));
        assert_eq!(enc.key_material[32..].to_vec(), hx(&p["hmac_truncated"]));
        let out = payload::twomemo::decrypt(
            &hx(&m["plaintext_key_material"]),
            &hx(&p["ciphertext_payload"]),
        )
        .expect("decrypts");
        assert_eq!(out.as_slice(), plaintext.as_slice());

        // The plaintext is an SCE envelope with a body; <from>, when present, is the sender.
        let text = std::str::from_utf8(&plaintext).expect("UTF-8 envelope");
        let env = sce::parse_envelope(text).unwrap_or_else(|e| panic!("message {i}: {e}"));
        let body = env.body.clone().expect("body present");
        assert!(!body.is_empty());
        assert!(env
            .content_xml
            .contains(&format!(">{}</body>", body.as_str())));
        assert!(env.content_xml.starts_with("<body"));
        if let Some(from) = &env.from {
            let sender = m["sender"].as_str().expect("sender");
            assert_eq!(Some(from.as_str()), v[sender]["jid"].as_str());
        }
        assert_eq!(env.to, None);
        assert_eq!(env.time, None);
    }
    assert_eq!(seen, 3);
}

#[test]
fn sce_build_parse_round_trip() {
    let mut rng = StdRng::seed_from_u64(1);
    let body = "Hi <b>&</b> 'quoted' \"double\"\r\nline two \u{1F642}";
    let mut lengths = std::collections::HashSet::new();
    for _ in 0..50 {
        let opts = sce::EnvelopeOptions {
            from: "alice@example.org",
            to: Some("room@muc.example.org"),
            time: Some("2024-01-01T12:00:00Z"),
        };
        let xml = sce::build_envelope(body, &opts, &mut rng);
        let env = sce::parse_envelope(&xml).expect("own envelope parses");
        assert_eq!(env.body.as_deref(), Some(body));
        assert_eq!(env.from.as_deref(), Some("alice@example.org"));
        assert_eq!(env.to.as_deref(), Some("room@muc.example.org"));
        assert_eq!(env.time.as_deref(), Some("2024-01-01T12:00:00Z"));
        let rpad_start = xml.find("<rpad>").expect("rpad") + 6;
        let rpad_end = xml.find("</rpad>").expect("rpad end");
        let rpad_len = rpad_end - rpad_start;
        // XEP-0420 0.5: padded to a minimum first, then at most 200 random characters.
        let fill = sce::MIN_PADDED_LEN.saturating_sub(xml.len() - rpad_len);
        assert!(rpad_len >= fill, "{rpad_len} < {fill}");
        assert!(rpad_len - fill <= sce::MAX_RPAD_LEN);
        assert!(xml.len() >= sce::MIN_PADDED_LEN);
        lengths.insert(rpad_len);
    }
    assert!(lengths.len() > 10, "rpad length must vary");

    // A body longer than the minimum gets only the random part.
    let long = "x".repeat(2 * sce::MIN_PADDED_LEN);
    let opts = sce::EnvelopeOptions {
        from: "alice@example.org",
        to: None,
        time: None,
    };
    for _ in 0..20 {
        let xml = sce::build_envelope(&long, &opts, &mut rng);
        let rpad = xml.find("</rpad>").expect("rpad end") - xml.find("<rpad>").expect("rpad") - 6;
        assert!(rpad <= sce::MAX_RPAD_LEN, "{rpad}");
    }

    let opts = sce::EnvelopeOptions {
        from: "bob@example.org",
        to: None,
        time: None,
    };
    let xml = sce::build_envelope("", &opts, &mut rng);
    let env = sce::parse_envelope(&xml).expect("parses");
    assert_eq!(env.body.as_deref(), Some(""));
    assert_eq!(env.to, None);
    assert_eq!(env.time, None);
}

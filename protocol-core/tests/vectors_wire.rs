//! Wire-format vectors (session_oldmemo.json / session_twomemo.json): every message parses into
//! the vector's fields and re-encodes byte for byte.

mod support;
use base64::Engine as _;
use protocol_core::wire::{oldmemo, twomemo};
use serde_json::Value;
use support::*;

// ---- tiny vector loader -------------------------------------------------------------------

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn messages(v: &Value) -> &Vec<Value> {
    v["messages"].as_array().expect("messages array")
}

// ---- OMEMO 0.3 ----------------------------------------------------------------------------

#[test]
fn oldmemo_signal_messages_parse_and_reencode() {
    let v = load("session_oldmemo.json");
    assert_eq!(messages(&v).len(), 4);
    for (i, m) in messages(&v).iter().enumerate() {
        let serialized = hx(&m["serialized_message"]);
        let authenticated = hx(&m["authenticated_message"]);
        let parsed = oldmemo::parse_signal_message(&authenticated)
            .unwrap_or_else(|e| panic!("message {i}: {e}"));
        assert_eq!(
            parsed.mac.to_vec(),
            hx(&m["mac_truncated"]),
            "message {i} mac"
        );
        assert_eq!(
            parsed.authenticated, serialized,
            "message {i} authenticated part"
        );
        assert_eq!(parsed.message.ratchet_key, h32(&m["header_dh_pub"]));
        assert_eq!(parsed.message.counter, num(&m["header_n"]));
        assert_eq!(parsed.message.previous_counter, num(&m["header_pn"]));
        assert_eq!(parsed.message.ciphertext, hx(&m["aes256cbc_ciphertext"]));
        // Encoding the fields gives exactly the bytes the MAC covers ...
        assert_eq!(parsed.message.encode(), serialized, "message {i} encode");
        // ... which are mac_input minus the associated data.
        let mut mac_input = hx(&m["mac_ad"]);
        mac_input.extend_from_slice(&parsed.message.encode());
        assert_eq!(mac_input, hx(&m["mac_input"]));
        assert_eq!(parsed.message.encode_with_mac(&parsed.mac), authenticated);
        // A message built from the vector's raw fields encodes identically.
        let built = oldmemo::SignalMessage {
            ratchet_key: h32(&m["header_dh_pub"]),
            counter: num(&m["header_n"]),
            previous_counter: num(&m["header_pn"]),
            ciphertext: hx(&m["aes256cbc_ciphertext"]),
        };
        assert_eq!(built.encode(), serialized);
        if m.get("key_exchange").is_none() {
            assert_eq!(
                m["key_element_base64"].as_str(),
                Some(b64(&authenticated).as_str())
            );
        }
    }
}

#[test]
fn oldmemo_key_exchanges_parse_and_reencode() {
    let v = load("session_oldmemo.json");
    let x3dh = &v["x3dh"];
    let mut seen = 0;
    for (i, m) in messages(&v).iter().enumerate() {
        let Some(kex) = m.get("key_exchange") else {
            continue;
        };
        seen += 1;
        let kex = hx(kex);
        let parsed = oldmemo::PreKeySignalMessage::parse(&kex)
            .unwrap_or_else(|e| panic!("message {i}: {e}"));
        assert_eq!(parsed.pre_key_id, num(&x3dh["bob_one_time_pre_key_id"]));
        assert_eq!(
            parsed.signed_pre_key_id,
            num(&x3dh["bob_signed_pre_key_id"])
        );
        assert_eq!(parsed.base_key, h32(&x3dh["alice_ephemeral_pub"]));
        assert_eq!(
            parsed.identity_key,
            h32(&v["alice"]["identity_pub_curve25519"])
        );
        let mut serialized_ik = vec![0x05];
        serialized_ik.extend_from_slice(&parsed.identity_key);
        assert_eq!(
            serialized_ik,
            hx(&v["alice"]["identity_pub_serialized_0x05"])
        );
        assert_eq!(parsed.registration_id, None);
        assert_eq!(parsed.message, hx(&m["authenticated_message"]));
        assert_eq!(parsed.encode(), kex, "message {i} re-encode");
        assert_eq!(m["key_element_base64"].as_str(), Some(b64(&kex).as_str()));
        assert_eq!(m["is_key_exchange"].as_bool(), Some(true));
    }
    assert_eq!(seen, 2);
}

#[test]
fn oldmemo_registration_id_round_trips() {
    let v = load("session_oldmemo.json");
    let mut msg = oldmemo::PreKeySignalMessage::parse(&hx(&messages(&v)[0]["key_exchange"]))
        .expect("vector parses");
    msg.registration_id = Some(0);
    let again = oldmemo::PreKeySignalMessage::parse(&msg.encode()).expect("re-parse");
    assert_eq!(again, msg);
}

// ---- OMEMO 2 ------------------------------------------------------------------------------

#[test]
fn twomemo_messages_parse_and_reencode() {
    let v = load("session_twomemo.json");
    assert_eq!(messages(&v).len(), 4);
    for (i, m) in messages(&v).iter().enumerate() {
        let serialized = hx(&m["serialized_message"]);
        let msg = twomemo::OMEMOMessage::parse(&serialized)
            .unwrap_or_else(|e| panic!("message {i}: {e}"));
        assert_eq!(msg.n, num(&m["header_n"]));
        assert_eq!(msg.pn, num(&m["header_pn"]));
        assert_eq!(msg.dh_pub, h32(&m["header_dh_pub"]));
        assert_eq!(msg.ciphertext, hx(&m["aes256cbc_ciphertext"]));
        assert_eq!(msg.encode(), serialized, "message {i} encode");

        let mut mac_input = hx(&m["mac_ad"]);
        mac_input.extend_from_slice(&serialized);
        assert_eq!(mac_input, hx(&m["mac_input"]));

        let authenticated = hx(&m["authenticated_message"]);
        let auth = twomemo::OMEMOAuthenticatedMessage::parse(&authenticated)
            .unwrap_or_else(|e| panic!("message {i}: {e}"));
        assert_eq!(auth.mac.to_vec(), hx(&m["mac_truncated"]));
        assert_eq!(auth.message, serialized);
        assert_eq!(auth.parse_message().expect("inner"), msg);
        assert_eq!(
            auth.encode(),
            authenticated,
            "message {i} authenticated encode"
        );
        if m.get("key_exchange").is_none() {
            assert_eq!(
                m["key_element_base64"].as_str(),
                Some(b64(&authenticated).as_str())
            );
        }
    }
}

#[test]
fn twomemo_key_exchanges_parse_and_reencode() {
    let v = load("session_twomemo.json");
    let x3dh = &v["x3dh"];
    let mut seen = 0;
    for (i, m) in messages(&v).iter().enumerate() {
        let Some(kex) = m.get("key_exchange") else {
            continue;
        };
        seen += 1;
        let kex = hx(kex);
        let parsed =
            twomemo::OMEMOKeyExchange::parse(&kex).unwrap_or_else(|e| panic!("message {i}: {e}"));
        assert_eq!(parsed.pk_id, num(&x3dh["bob_one_time_pre_key_id"]));
        assert_eq!(parsed.spk_id, num(&x3dh["bob_signed_pre_key_id"]));
        assert_eq!(parsed.ek, h32(&x3dh["alice_ephemeral_pub"]));
        assert_eq!(parsed.ik, h32(&v["alice"]["identity_pub_ed25519"]));
        assert_eq!(parsed.message.encode(), hx(&m["authenticated_message"]));
        assert_eq!(parsed.message.mac.to_vec(), hx(&m["mac_truncated"]));
        assert_eq!(parsed.encode(), kex, "message {i} re-encode");
        assert_eq!(m["key_element_base64"].as_str(), Some(b64(&kex).as_str()));
        assert_eq!(m["is_key_exchange"].as_bool(), Some(true));
    }
    assert_eq!(seen, 2);
}

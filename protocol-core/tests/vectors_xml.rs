//! XML vectors: `<encrypted>` of both session files, both bundles, both device lists.
//! Our serialization is compared with the vector XML semantically (namespaces, names,
//! attributes, text), since ElementTree writes `<x />` and double quotes.

mod support;
use protocol_core::xml::{self, DeviceListEntry, Encrypted};
use protocol_core::Version;
use quick_xml::events::Event;
use quick_xml::NsReader;
use serde_json::Value;
use support::*;

// ---- tiny vector loader -------------------------------------------------------------------

fn s(v: &Value) -> &str {
    v.as_str().expect("string")
}

// ---- semantic XML comparison --------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
struct Node {
    ns: String,
    name: String,
    attrs: Vec<(String, String)>,
    text: String,
    children: Vec<Node>,
}

fn canonical(xml: &str) -> Node {
    let mut reader = NsReader::from_str(xml);
    reader.config_mut().expand_empty_elements = true;
    let mut stack: Vec<Node> = Vec::new();
    loop {
        let event = reader.read_event().expect("well-formed XML");
        match event {
            Event::Start(e) => {
                let (ns, local) = reader.resolve_element(e.name());
                let ns = match ns {
                    quick_xml::name::ResolveResult::Bound(n) => {
                        String::from_utf8(n.as_ref().to_vec()).expect("utf8")
                    }
                    _ => String::new(),
                };
                let mut attrs: Vec<(String, String)> = e
                    .attributes()
                    .map(|a| a.expect("attribute"))
                    .filter(|a| a.key.as_namespace_binding().is_none())
                    .map(|a| {
                        (
                            String::from_utf8(a.key.as_ref().to_vec()).expect("utf8"),
                            a.unescape_value().expect("value").into_owned(),
                        )
                    })
                    .collect();
                attrs.sort();
                stack.push(Node {
                    ns,
                    name: String::from_utf8(local.as_ref().to_vec()).expect("utf8"),
                    attrs,
                    text: String::new(),
                    children: Vec::new(),
                });
            }
            Event::End(_) => {
                let mut node = stack.pop().expect("balanced");
                node.text = node.text.trim().to_owned();
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => return node,
                }
            }
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t.unescape().expect("text"));
                }
            }
            Event::Eof => panic!("unexpected end of XML"),
            _ => {}
        }
    }
}

fn assert_same_xml(ours: &str, theirs: &str) {
    assert_eq!(
        canonical(ours),
        canonical(theirs),
        "\nours:   {ours}\ntheirs: {theirs}"
    );
}

// ---- <encrypted> --------------------------------------------------------------------------

fn check_session_xml(file: &str, version: Version) {
    let v = load(file);
    let mut seen = 0;
    for (i, m) in v["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .enumerate()
    {
        let Some(xml_text) = m.get("xml") else {
            continue;
        };
        seen += 1;
        let xml_text = s(xml_text);
        let sender = s(&m["sender"]);
        let recipient = if sender == "alice" { "bob" } else { "alice" };
        let enc = Encrypted::from_xml(xml_text).unwrap_or_else(|e| panic!("message {i}: {e}"));
        assert_eq!(enc.version, version);
        assert_eq!(enc.sid, num(&v[sender]["device_id"]));
        assert_eq!(enc.keys.len(), 1);
        let key = &enc.keys[0];
        assert_eq!(key.rid, num(&v[recipient]["device_id"]));
        assert_eq!(Some(key.kex), m["is_key_exchange"].as_bool());
        let expected_data = match m.get("key_exchange") {
            Some(kex) => hx(kex),
            None => hx(&m["authenticated_message"]),
        };
        assert_eq!(key.data, expected_data, "message {i} key data");
        let p = &m["payload"];
        let has_payload = p.as_object().is_some_and(|o| !o.is_empty());
        match version {
            Version::Oldmemo => {
                assert_eq!(key.jid, None);
                let iv = enc.iv.clone().expect("0.3 always carries <iv>");
                if has_payload {
                    assert_eq!(iv, hx(&p["iv"]));
                } else {
                    assert_eq!(iv.len(), 12);
                }
            }
            Version::Twomemo => {
                assert_eq!(key.jid.as_deref(), v[recipient]["jid"].as_str());
                assert_eq!(enc.iv, None);
            }
        }
        if has_payload {
            assert_eq!(enc.payload, Some(hx(&p["ciphertext_payload"])));
        } else {
            assert_eq!(enc.payload, None);
        }
        // Round trip and semantic equality with the library's XML.
        let ours = enc.to_xml();
        assert_eq!(Encrypted::from_xml(&ours).expect("own XML parses"), enc);
        assert_same_xml(&ours, xml_text);
        // JSON form round-trips too.
        let json = serde_json::to_string(&enc).expect("serialize");
        let back: Encrypted = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, enc);
    }
    assert_eq!(seen, 3);
}

#[test]
fn oldmemo_encrypted_xml() {
    check_session_xml("session_oldmemo.json", Version::Oldmemo);
}

#[test]
fn twomemo_encrypted_xml() {
    check_session_xml("session_twomemo.json", Version::Twomemo);
}

#[test]
fn encrypted_json_uses_base64() {
    let v = load("session_twomemo.json");
    let enc = Encrypted::from_xml(s(&v["messages"][0]["xml"])).expect("parses");
    let json: Value = serde_json::to_value(&enc).expect("serialize");
    assert_eq!(json["version"], "urn:xmpp:omemo:2");
    assert_eq!(
        json["keys"][0]["data"],
        v["messages"][0]["key_element_base64"]
    );
    assert!(json["iv"].is_null());
}

// ---- bundles ------------------------------------------------------------------------------

fn check_bundle(file: &str, version: Version) {
    let v = load(file);
    let bob = &v["bob"];
    let fields = &v["bob_bundle_fields"];
    let xml_text = s(&v["bob_bundle_xml"]);
    let bundle = xml::bundle_from_xml(version, xml_text).expect("bundle parses");
    assert_eq!(bundle.version, version);
    assert_eq!(bundle.signed_prekey_id, num(&bob["signed_pre_key_id"]));
    assert_eq!(bundle.signed_prekey, h32(&bob["signed_pre_key_pub"]));
    match version {
        Version::Oldmemo => {
            let mut spk = vec![0x05];
            spk.extend_from_slice(&bundle.signed_prekey);
            assert_eq!(spk, hx(&fields["signedPreKeyPublic"]));
            assert_eq!(
                bundle.signed_prekey_signature.to_vec(),
                hx(&fields["signedPreKeySignature"])
            );
            let mut ik = vec![0x05];
            ik.extend_from_slice(&bundle.identity_key);
            assert_eq!(ik, hx(&fields["identityKey"]));
            assert_eq!(bundle.identity_key, h32(&bob["identity_pub_curve25519"]));
        }
        Version::Twomemo => {
            assert_eq!(bundle.signed_prekey, h32(&fields["spk"]));
            assert_eq!(bundle.signed_prekey_signature.to_vec(), hx(&fields["spks"]));
            assert_eq!(
                bundle.signed_prekey_signature.to_vec(),
                hx(&bob["signed_pre_key_signature_raw"])
            );
            assert_eq!(bundle.identity_key, h32(&fields["ik"]));
            assert_eq!(bundle.identity_key, h32(&bob["identity_pub_ed25519"]));
        }
    }
    let expected: Vec<(u32, [u8; 32])> = bob["pre_keys"]
        .as_array()
        .expect("pre_keys")
        .iter()
        .map(|pk| (num(&pk["id"]), h32(&pk["pub"])))
        .collect();
    let got: Vec<(u32, [u8; 32])> = bundle.prekeys.iter().map(|pk| (pk.id, pk.key)).collect();
    assert_eq!(got, expected);

    let ours = xml::bundle_to_xml(&bundle);
    assert_eq!(
        xml::bundle_from_xml(version, &ours).expect("own XML"),
        bundle
    );
    assert_same_xml(&ours, xml_text);
}

#[test]
fn oldmemo_bundle_xml() {
    check_bundle("session_oldmemo.json", Version::Oldmemo);
}

#[test]
fn twomemo_bundle_xml() {
    check_bundle("session_twomemo.json", Version::Twomemo);
}

#[test]
fn bundle_version_must_match_namespace() {
    let v = load("session_twomemo.json");
    assert!(matches!(
        xml::bundle_from_xml(Version::Oldmemo, s(&v["bob_bundle_xml"])),
        Err(xml::XmlError::WrongNamespace { .. })
    ));
}

// ---- device lists -------------------------------------------------------------------------

#[test]
fn oldmemo_devicelist_xml() {
    let v = load("misc.json");
    let text = s(&v["devicelist_oldmemo_xml"]);
    let list = xml::devicelist_from_xml(Version::Oldmemo, text).expect("parses");
    let ids: Vec<u32> = list.iter().map(|d| d.id).collect();
    assert_eq!(ids, vec![1111, 2222]);
    assert!(list
        .iter()
        .all(|d| d.label.is_none() && d.labelsig.is_none()));
    let ours = xml::devicelist_to_xml(Version::Oldmemo, &list);
    assert_eq!(
        xml::devicelist_from_xml(Version::Oldmemo, &ours).expect("own"),
        list
    );
    assert_same_xml(&ours, text);
}

#[test]
fn twomemo_devicelist_xml() {
    let v = load("misc.json");
    let text = s(&v["devicelist_twomemo_xml"]);
    let list = xml::devicelist_from_xml(Version::Twomemo, text).expect("parses");
    let label = String::from_utf8(hx(&v["label_signing"]["label_utf8"])).expect("utf8");
    assert_eq!(
        list,
        vec![
            DeviceListEntry {
                id: 2111,
                label: Some(label),
                labelsig: Some(hx(&v["label_signing"]["labelsig"])),
            },
            DeviceListEntry {
                id: 4333,
                label: None,
                labelsig: None,
            },
        ]
    );
    let ours = xml::devicelist_to_xml(Version::Twomemo, &list);
    assert_eq!(
        xml::devicelist_from_xml(Version::Twomemo, &ours).expect("own"),
        list
    );
    assert_same_xml(&ours, text);

    // 0.3 has no labels: serializing the same entries drops them.
    let old = xml::devicelist_to_xml(Version::Oldmemo, &list);
    assert!(!old.contains("label"));
    let json = serde_json::to_value(&list).expect("json");
    assert_eq!(json[0]["labelsig"], v["label_signing"]["labelsig_base64"]);
}

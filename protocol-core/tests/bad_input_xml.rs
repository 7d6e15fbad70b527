//! Every XML parser (and the SCE envelope parser) against malformed input; each case asserts
//! the specific error. Also checks the accepted syntactic variants (quotes, prefixes, spaces).

mod support;
use proptest::prelude::*;
use protocol_core::sce::{self, SceError};
use protocol_core::xml::{self, Encrypted, XmlError};
use protocol_core::Version;
use serde_json::Value;
use support::*;

// ---- tiny vector loader -------------------------------------------------------------------

fn s(v: &Value) -> String {
    v.as_str().expect("string").to_owned()
}

const OLD: &str = "eu.siacs.conversations.axolotl";
const TWO: &str = "urn:xmpp:omemo:2";
const KEY: &str = "AAEC"; // base64 of 00 01 02

fn old_msg(header_attrs: &str, keys: &str, tail: &str) -> String {
    format!("<encrypted xmlns='{OLD}'><header {header_attrs}>{keys}<iv>AAAAAAAAAAAAAAAA</iv></header>{tail}</encrypted>")
}

fn two_msg(inner: &str) -> String {
    format!("<encrypted xmlns='{TWO}'><header sid='1'>{inner}</header></encrypted>")
}

fn err(xml_text: &str) -> XmlError {
    Encrypted::from_xml(xml_text).expect_err("must be rejected")
}

// ---- <encrypted>: accepted variants --------------------------------------------------------

#[test]
fn accepts_quotes_prefixes_whitespace_and_noise() {
    let doc = "<?xml version='1.0'?>\n<!-- c --><o:encrypted xmlns:o=\"urn:xmpp:omemo:2\">\n  <o:header sid=\"42\">\n    <o:keys jid='a@b'>\n      <o:key rid='7' kex='1'>\n  AA\n EC \n</o:key>\n    </o:keys>\n  </o:header>\n  <o:payload><![CDATA[AAEC]]></o:payload>\n</o:encrypted>\n";
    let enc = Encrypted::from_xml(doc).expect("parses");
    assert_eq!(enc.version, Version::Twomemo);
    assert_eq!(enc.sid, 42);
    assert_eq!(enc.keys.len(), 1);
    assert_eq!(enc.keys[0].jid.as_deref(), Some("a@b"));
    assert!(enc.keys[0].kex);
    assert_eq!(enc.keys[0].data, vec![0, 1, 2]);
    assert_eq!(enc.payload, Some(vec![0, 1, 2]));

    // Unknown elements and foreign-namespace children are ignored; kex='false'/'0' accepted.
    let doc = two_msg(&format!(
        "<keys jid='x@y'><key rid='1' kex='false'>{KEY}</key><key rid='2' kex='0'>{KEY}</key><extra/></keys><foo xmlns='urn:other'/>"
    ));
    let enc = Encrypted::from_xml(&doc).expect("parses");
    assert_eq!(enc.keys.iter().filter(|k| k.kex).count(), 0);

    // 0.3 duplicate rids are legal (device ids of different JIDs may collide).
    let doc = old_msg(
        "sid='1'",
        &format!("<key rid='5'>{KEY}</key><key rid='5' prekey='true'>{KEY}</key>"),
        "",
    );
    assert_eq!(Encrypted::from_xml(&doc).expect("parses").keys.len(), 2);

    // OMEMO 2: the same rid under two JIDs is fine.
    let doc = two_msg(&format!("<keys jid='a@x'><key rid='5'>{KEY}</key></keys><keys jid='b@x'><key rid='5'>{KEY}</key></keys>"));
    assert_eq!(Encrypted::from_xml(&doc).expect("parses").keys.len(), 2);

    // Padding-free base64 is tolerated.
    let doc = two_msg("<keys jid='a@x'><key rid='5'>AAE</key></keys>");
    assert_eq!(
        Encrypted::from_xml(&doc).expect("parses").keys[0].data,
        vec![0, 1]
    );

    // KeyTransport without <payload> and without <iv> (0.3).
    let doc = format!(
        "<encrypted xmlns='{OLD}'><header sid='3'><key rid='4'>{KEY}</key></header></encrypted>"
    );
    let enc = Encrypted::from_xml(&doc).expect("parses");
    assert_eq!((enc.iv, enc.payload), (None, None));
}

#[test]
fn to_xml_escapes_jids() {
    let enc = Encrypted {
        version: Version::Twomemo,
        sid: 1,
        keys: vec![xml::KeyElement {
            jid: Some("a'b\"<&>@x".to_owned()),
            rid: 9,
            kex: true,
            data: vec![1, 2, 3],
        }],
        iv: None,
        payload: Some(vec![]),
    };
    let text = enc.to_xml();
    assert_eq!(Encrypted::from_xml(&text).expect("round trip"), enc);
}

// ---- <encrypted>: rejected ----------------------------------------------------------------

#[test]
fn wrong_root_and_namespace() {
    assert!(matches!(
        err(&format!("<message xmlns='{TWO}'/>")),
        XmlError::WrongRoot {
            expected: "encrypted",
            ..
        }
    ));
    assert!(matches!(
        err("<encrypted xmlns='urn:xmpp:omemo:1'><header sid='1'/></encrypted>"),
        XmlError::WrongNamespace { .. }
    ));
    assert!(matches!(
        err("<encrypted><header sid='1'/></encrypted>"),
        XmlError::WrongNamespace { found: None, .. }
    ));
    // Said in words, not as a Rust `Option`.
    assert_eq!(
        err("<encrypted xmlns='urn:xmpp:omemo:1'/>").to_string(),
        format!("root element in namespace urn:xmpp:omemo:1 (expected {OLD} or {TWO})")
    );
    assert_eq!(
        err("<encrypted/>").to_string(),
        format!("root element in no namespace (expected {OLD} or {TWO})")
    );
    // <header> from another namespace does not count.
    assert!(matches!(
        err(&format!(
            "<encrypted xmlns='{TWO}'><header xmlns='{OLD}' sid='1'/></encrypted>"
        )),
        XmlError::MissingElement { element: "header" }
    ));
}

#[test]
fn header_structure() {
    assert!(matches!(
        err(&format!("<encrypted xmlns='{TWO}'/>")),
        XmlError::MissingElement { element: "header" }
    ));
    assert!(matches!(
        err(&format!(
            "<encrypted xmlns='{TWO}'><header sid='1'/><header sid='2'/></encrypted>"
        )),
        XmlError::DuplicateElement { element: "header" }
    ));
    assert!(matches!(
        err(&format!("<encrypted xmlns='{TWO}'><header/></encrypted>")),
        XmlError::MissingAttribute {
            element: "header",
            attribute: "sid"
        }
    ));
    assert!(matches!(
        err(&format!("<encrypted xmlns='{TWO}'><header sid='1'/><payload>AA==</payload><payload>AA==</payload></encrypted>")),
        XmlError::DuplicateElement { element: "payload" }
    ));
}

#[test]
fn bad_ids() {
    let cases = [
        ("0", "zero"),
        ("2147483648", "out of range"),
        ("4294967295", "out of range"),
        ("99999999999999999999999", "out of range"),
        ("abc", "not a decimal number"),
        ("-1", "not a decimal number"),
        ("+1", "not a decimal number"),
        ("1.5", "not a decimal number"),
        ("0x10", "not a decimal number"),
        ("", "not a decimal number"),
    ];
    for (value, reason) in cases {
        let doc = old_msg(&format!("sid='{value}'"), "", "");
        assert_eq!(
            err(&doc),
            XmlError::BadId {
                element: "header",
                attribute: "sid",
                reason
            },
            "sid {value:?}"
        );
        let doc = old_msg("sid='1'", &format!("<key rid='{value}'>{KEY}</key>"), "");
        assert_eq!(
            err(&doc),
            XmlError::BadId {
                element: "key",
                attribute: "rid",
                reason
            },
            "rid {value:?}"
        );
    }
    // The largest valid id is accepted.
    let doc = old_msg("sid='2147483647'", "", "");
    assert_eq!(
        Encrypted::from_xml(&doc).expect("max id").sid,
        2_147_483_647
    );
    assert!(matches!(
        err(&old_msg("sid='1'", &format!("<key>{KEY}</key>"), "")),
        XmlError::MissingAttribute {
            element: "key",
            attribute: "rid"
        }
    ));
}

#[test]
fn bad_base64() {
    for bad in ["A", "AAE$", "AA==AA", "@@@@", "AAEC=="] {
        let doc = old_msg("sid='1'", &format!("<key rid='1'>{bad}</key>"), "");
        assert_eq!(err(&doc), XmlError::BadBase64 { element: "key" }, "{bad:?}");
    }
    let doc = old_msg("sid='1'", "", "<payload>!!</payload>");
    assert_eq!(err(&doc), XmlError::BadBase64 { element: "payload" });
    let doc = format!("<encrypted xmlns='{OLD}'><header sid='1'><iv>***</iv></header></encrypted>");
    assert_eq!(err(&doc), XmlError::BadBase64 { element: "iv" });
}

#[test]
fn oldmemo_iv_rules() {
    let doc = format!("<encrypted xmlns='{OLD}'><header sid='1'><key rid='2'>{KEY}</key></header><payload>AA==</payload></encrypted>");
    assert_eq!(err(&doc), XmlError::MissingElement { element: "iv" });
    let doc = format!(
        "<encrypted xmlns='{OLD}'><header sid='1'><iv>AA==</iv><iv>AA==</iv></header></encrypted>"
    );
    assert_eq!(err(&doc), XmlError::DuplicateElement { element: "iv" });
}

#[test]
fn bad_kex_attribute() {
    let doc = old_msg(
        "sid='1'",
        &format!("<key rid='1' prekey='yes'>{KEY}</key>"),
        "",
    );
    assert!(matches!(
        err(&doc),
        XmlError::BadAttribute {
            element: "key",
            attribute: "prekey",
            ..
        }
    ));
    let doc = two_msg(&format!(
        "<keys jid='a@b'><key rid='1' kex='TRUE'>{KEY}</key></keys>"
    ));
    assert!(matches!(
        err(&doc),
        XmlError::BadAttribute {
            element: "key",
            attribute: "kex",
            ..
        }
    ));
}

#[test]
fn twomemo_keys_rules() {
    let doc = two_msg(&format!("<keys><key rid='1'>{KEY}</key></keys>"));
    assert_eq!(
        err(&doc),
        XmlError::MissingAttribute {
            element: "keys",
            attribute: "jid"
        }
    );
    let doc = two_msg(&format!("<keys jid=' '><key rid='1'>{KEY}</key></keys>"));
    assert!(matches!(
        err(&doc),
        XmlError::BadAttribute {
            element: "keys",
            attribute: "jid",
            ..
        }
    ));
    let doc = two_msg(&format!(
        "<keys jid='a@b'><key rid='1'>{KEY}</key><key rid='1'>{KEY}</key></keys>"
    ));
    assert_eq!(
        err(&doc),
        XmlError::DuplicateId {
            element: "key",
            id: 1
        }
    );
    // Same JID split over two <keys> groups still counts as a duplicate.
    let doc = two_msg(&format!("<keys jid='a@b'><key rid='1'>{KEY}</key></keys><keys jid='a@b'><key rid='1'>{KEY}</key></keys>"));
    assert_eq!(
        err(&doc),
        XmlError::DuplicateId {
            element: "key",
            id: 1
        }
    );
}

#[test]
fn too_many_keys() {
    let keys = |n: u32| -> String { (1..=n).map(|i| format!("<key rid='{i}'/>")).collect() };
    let ok = two_msg(&format!("<keys jid='a@b'>{}</keys>", keys(10_000)));
    assert_eq!(
        Encrypted::from_xml(&ok).expect("10000 keys").keys.len(),
        10_000
    );
    let bad = two_msg(&format!("<keys jid='a@b'>{}</keys>", keys(10_001)));
    assert_eq!(
        err(&bad),
        XmlError::TooMany {
            element: "key",
            max: 10_000
        }
    );
    let bad = old_msg("sid='1'", &keys(10_001), "");
    assert_eq!(
        err(&bad),
        XmlError::TooMany {
            element: "key",
            max: 10_000
        }
    );
}

#[test]
fn oversized_document() {
    let filler = "A".repeat(256 * 1024);
    let doc = old_msg("sid='1'", "", &format!("<payload>{filler}</payload>"));
    assert!(matches!(err(&doc), XmlError::TooLarge { max: 262_144, .. }));
    let bundle = format!("<bundle xmlns='{TWO}'>{filler}</bundle>");
    assert!(matches!(
        xml::bundle_from_xml(Version::Twomemo, &bundle),
        Err(XmlError::TooLarge { .. })
    ));
    let list = format!("<devices xmlns='{TWO}'>{filler}</devices>");
    assert!(matches!(
        xml::devicelist_from_xml(Version::Twomemo, &list),
        Err(XmlError::TooLarge { .. })
    ));
    let env = format!("<envelope xmlns='urn:xmpp:sce:1'><content>{filler}</content></envelope>");
    assert!(matches!(
        sce::parse_envelope(&env),
        Err(SceError::Xml(XmlError::TooLarge { .. }))
    ));
}

#[test]
fn malformed_documents() {
    let bad = [
        "",
        "   ",
        "not xml",
        "<encrypted xmlns='urn:xmpp:omemo:2'>",
        "<encrypted xmlns='urn:xmpp:omemo:2'><header sid='1'></encrypted>",
        "<encrypted xmlns='urn:xmpp:omemo:2'/><encrypted xmlns='urn:xmpp:omemo:2'/>",
        "<encrypted xmlns='urn:xmpp:omemo:2'/>trailing",
        "<encrypted xmlns='urn:xmpp:omemo:2' sid='1' sid='2'/>",
        "<encrypted xmlns='urn:xmpp:omemo:2'><header sid='1&bogus;'/></encrypted>",
        "<p:encrypted xmlns='urn:xmpp:omemo:2'/>",
        "<encrypted xmlns='urn:xmpp:omemo:2'><header sid=1/></encrypted>",
        "</encrypted>",
    ];
    for doc in bad {
        match Encrypted::from_xml(doc) {
            Err(XmlError::Syntax { .. }) | Err(XmlError::MissingElement { element: "root" }) => {}
            other => panic!("{doc:?}: {other:?}"),
        }
    }
}

#[test]
fn dtd_refused() {
    let doc = "<!DOCTYPE encrypted [<!ENTITY x 'y'>]><encrypted xmlns='urn:xmpp:omemo:2'><header sid='1'/></encrypted>";
    assert_eq!(err(doc), XmlError::Unsupported { what: "DTD" });
}

#[test]
fn too_deep() {
    let open: String = (0..40).map(|_| "<a>").collect();
    let close: String = (0..40).map(|_| "</a>").collect();
    let doc = format!("<encrypted xmlns='{TWO}'><header sid='1'/>{open}{close}</encrypted>");
    assert!(matches!(err(&doc), XmlError::TooDeep { .. }));
}

/// One element with 37,500 attributes (260 KB) once cost seconds in quick-xml's duplicate check,
/// which compares each attribute with all earlier ones; the parser stops at the cap instead.
#[test]
fn too_many_attributes_refused_at_the_cap() {
    // Distinct short names (a, b, … zz, aaa, …) so that the document stays under the size cap.
    let letters: Vec<char> = ('a'..='z').chain('A'..='Z').collect();
    let name = |mut i: usize| {
        let mut n = String::new();
        loop {
            n.push(letters[i % letters.len()]);
            i /= letters.len();
            if i == 0 {
                return n;
            }
            i -= 1;
        }
    };
    let attrs: String = (0..37_500).map(|i| format!(" {}=''", name(i))).collect();
    let doc = format!("<encrypted xmlns='{TWO}'><header sid='1'{attrs}/></encrypted>");
    assert!(doc.len() <= xml::MAX_XML_LEN, "{}", doc.len());
    assert_eq!(
        err(&doc),
        XmlError::TooManyAttributes {
            max: xml::MAX_ATTRIBUTES
        }
    );
    // Namespace declarations count too.
    let decls: String = (0..xml::MAX_ATTRIBUTES)
        .map(|i| format!(" xmlns:p{i}='u{i}'"))
        .collect();
    let doc = format!("<encrypted xmlns='{TWO}'{decls}><header sid='1'/></encrypted>");
    assert!(matches!(err(&doc), XmlError::TooManyAttributes { .. }));
    // Up to the cap an element parses (unknown attributes are ignored).
    let attrs: String = (0..xml::MAX_ATTRIBUTES - 1)
        .map(|i| format!(" a{i}='1'"))
        .collect();
    let doc = format!("<encrypted xmlns='{TWO}'><header sid='1'{attrs}/></encrypted>");
    assert!(!matches!(
        Encrypted::from_xml(&doc),
        Err(XmlError::TooManyAttributes { .. })
    ));
}

#[test]
fn errors_carry_no_content() {
    let secret = "c2VjcmV0c2VjcmV0";
    let doc = old_msg("sid='1'", &format!("<key rid='1'>{secret}$</key>"), "");
    let e = err(&doc);
    assert!(!format!("{e} {e:?}").contains(secret));
}

#[test]
fn envelope_errors_quote_no_plaintext() {
    // A decrypted envelope is plaintext: a parse error must not repeat any of it.
    let secret = "hunter2";
    let bodies = [
        "hi &hunter2; there</body>",
        "hi there</bodyhunter2>",
        "hi <hunter2 there</body>",
        "hi &#xhunter2; there</body>",
    ];
    for body in bodies {
        let env = format!(
            "<envelope xmlns='urn:xmpp:sce:1'><content><body xmlns='jabber:client'>{body}</content></envelope>"
        );
        let e = sce::parse_envelope(&env).unwrap_err();
        assert!(!format!("{e} {e:?}").contains(secret), "{body}: {e}");
    }
    let attr = "<envelope xmlns='urn:xmpp:sce:1'><content><b xmlns='u' a='&hunter2;'/></content></envelope>";
    let e = sce::parse_envelope(attr).unwrap_err();
    assert!(!format!("{e} {e:?}").contains(secret), "{e}");
}

// ---- bundles --------------------------------------------------------------------------------

fn bundle_vector(file: &str) -> String {
    s(&load(file)["bob_bundle_xml"])
}

/// Replaces the text of the first `<tag …>…</tag>` in `doc` with `text`.
fn set_text(doc: &str, tag: &str, text: &str) -> String {
    let start = doc.find(&format!("<{tag}")).expect("tag present");
    let open_end = start + doc[start..].find('>').expect(">") + 1;
    let close = open_end + doc[open_end..].find(&format!("</{tag}>")).expect("close");
    format!("{}{}{}", &doc[..open_end], text, &doc[close..])
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn oldmemo_bundle_keys() {
    let doc = bundle_vector("session_oldmemo.json");
    let raw32 = b64(&[9; 32]);
    for tag in ["identityKey", "signedPreKeyPublic", "preKeyPublic"] {
        let bad = set_text(&doc, tag, &raw32);
        assert_eq!(
            xml::bundle_from_xml(Version::Oldmemo, &bad),
            Err(XmlError::BadKeyLength {
                element: tag,
                len: 32,
                expected: 33
            }),
            "{tag}"
        );
        let mut typed = vec![0x06];
        typed.extend_from_slice(&[9; 32]);
        let bad = set_text(&doc, tag, &b64(&typed));
        assert_eq!(
            xml::bundle_from_xml(Version::Oldmemo, &bad),
            Err(XmlError::BadKeyType {
                element: tag,
                found: 0x06
            }),
            "{tag}"
        );
    }
    let bad = set_text(&doc, "signedPreKeySignature", &b64(&[1; 63]));
    assert_eq!(
        xml::bundle_from_xml(Version::Oldmemo, &bad),
        Err(XmlError::BadKeyLength {
            element: "signedPreKeySignature",
            len: 63,
            expected: 64
        })
    );
    let bad = set_text(&doc, "identityKey", "%%%");
    assert_eq!(
        xml::bundle_from_xml(Version::Oldmemo, &bad),
        Err(XmlError::BadBase64 {
            element: "identityKey"
        })
    );
}

#[test]
fn twomemo_bundle_keys() {
    let doc = bundle_vector("session_twomemo.json");
    let mut typed = vec![0x05];
    typed.extend_from_slice(&[9; 32]);
    for tag in ["ik", "spk", "pk"] {
        let bad = set_text(&doc, tag, &b64(&typed));
        assert_eq!(
            xml::bundle_from_xml(Version::Twomemo, &bad),
            Err(XmlError::BadKeyLength {
                element: tag,
                len: 33,
                expected: 32
            }),
            "{tag}"
        );
    }
    let bad = set_text(&doc, "spks", &b64(&[1; 65]));
    assert_eq!(
        xml::bundle_from_xml(Version::Twomemo, &bad),
        Err(XmlError::BadKeyLength {
            element: "spks",
            len: 65,
            expected: 64
        })
    );
}

#[test]
fn bundle_structure() {
    let doc = bundle_vector("session_twomemo.json");
    let no_prekeys = doc.split("<prekeys>").next().expect("head").to_owned() + "</bundle>";
    assert_eq!(
        xml::bundle_from_xml(Version::Twomemo, &no_prekeys),
        Err(XmlError::MissingElement { element: "prekeys" })
    );
    let no_id = doc.replacen("<spk id=\"7\">", "<spk>", 1);
    assert_eq!(
        xml::bundle_from_xml(Version::Twomemo, &no_id),
        Err(XmlError::MissingAttribute {
            element: "spk",
            attribute: "id"
        })
    );
    let dup = doc.replacen("<pk id=\"2\">", "<pk id=\"1\">", 1);
    assert_eq!(
        xml::bundle_from_xml(Version::Twomemo, &dup),
        Err(XmlError::DuplicateId {
            element: "pk",
            id: 1
        })
    );
    let zero = doc.replacen("<pk id=\"2\">", "<pk id=\"0\">", 1);
    assert!(matches!(
        xml::bundle_from_xml(Version::Twomemo, &zero),
        Err(XmlError::BadId {
            element: "pk",
            reason: "zero",
            ..
        })
    ));
    let two_ik = doc.replacen("<prekeys>", "<ik>AAAA</ik><prekeys>", 1);
    assert_eq!(
        xml::bundle_from_xml(Version::Twomemo, &two_ik),
        Err(XmlError::DuplicateElement { element: "ik" })
    );
    let wrong_root = doc.replace("bundle", "bundles");
    assert!(matches!(
        xml::bundle_from_xml(Version::Twomemo, &wrong_root),
        Err(XmlError::WrongRoot {
            expected: "bundle",
            ..
        })
    ));
    let old = bundle_vector("session_oldmemo.json");
    let no_spk_id = old.replacen(" signedPreKeyId=\"7\"", "", 1);
    assert_eq!(
        xml::bundle_from_xml(Version::Oldmemo, &no_spk_id),
        Err(XmlError::MissingAttribute {
            element: "signedPreKeyPublic",
            attribute: "signedPreKeyId"
        })
    );
    // Empty <prekeys/> is structurally fine (the minimum is policy, checked elsewhere).
    let empty = format!(
        "{}<prekeys/></bundle>",
        doc.split("<prekeys>").next().expect("head")
    );
    assert!(xml::bundle_from_xml(Version::Twomemo, &empty)
        .expect("parses")
        .prekeys
        .is_empty());
}

// ---- device lists -------------------------------------------------------------------------

#[test]
fn devicelist_rules() {
    let list = |v: Version, inner: &str| {
        let root = if v == Version::Oldmemo {
            "list"
        } else {
            "devices"
        };
        xml::devicelist_from_xml(
            v,
            &format!("<{root} xmlns='{}'>{inner}</{root}>", v.namespace()),
        )
    };
    for v in Version::ALL {
        assert_eq!(list(v, "").expect("empty list"), vec![]);
        assert_eq!(
            list(v, "<device id='5'/><device id='5'/>"),
            Err(XmlError::DuplicateId {
                element: "device",
                id: 5
            })
        );
        assert!(matches!(
            list(v, "<device id='0'/>"),
            Err(XmlError::BadId { reason: "zero", .. })
        ));
        assert!(matches!(
            list(v, "<device id='x'/>"),
            Err(XmlError::BadId {
                reason: "not a decimal number",
                ..
            })
        ));
        assert_eq!(
            list(v, "<device/>"),
            Err(XmlError::MissingAttribute {
                element: "device",
                attribute: "id"
            })
        );
    }
    // Labels are dropped in 0.3, parsed (not verified) in OMEMO 2.
    let old = list(
        Version::Oldmemo,
        "<device id='1' label='L' labelsig='AA=='/>",
    )
    .expect("ok");
    assert_eq!(
        (old[0].label.clone(), old[0].labelsig.clone()),
        (None, None)
    );
    let two = list(Version::Twomemo, "<device id='1' label='L&amp;x'/>").expect("ok");
    assert_eq!(two[0].label.as_deref(), Some("L&x"));
    assert_eq!(
        list(
            Version::Twomemo,
            "<device id='1' label='L' labelsig='***'/>"
        ),
        Err(XmlError::BadBase64 {
            element: "labelsig"
        })
    );
    // Roots are version specific.
    assert!(matches!(
        xml::devicelist_from_xml(Version::Oldmemo, &format!("<devices xmlns='{OLD}'/>")),
        Err(XmlError::WrongRoot {
            expected: "list",
            ..
        })
    ));
    assert!(matches!(
        xml::devicelist_from_xml(Version::Twomemo, &format!("<devices xmlns='{OLD}'/>")),
        Err(XmlError::WrongNamespace { .. })
    ));
    let many: String = (1..=10_001)
        .map(|i| format!("<device id='{i}'/>"))
        .collect();
    assert_eq!(
        list(Version::Twomemo, &many),
        Err(XmlError::TooMany {
            element: "device",
            max: 10_000
        })
    );
}

/// Lists with and without labels, and with attributes of later versions, keep parsing (labels
/// are checked by the daemon, not here); a 0.3 list's label is dropped.
#[test]
fn devicelists_with_labels_and_unknown_attributes_parse() {
    let sig = "A".repeat(86) + "==";
    let two = format!(
        "<devices xmlns='{}'><device id='1' label='Phone' labelsig='{sig}' future='x'/>\
         <device id='2' label='unsigned'/><device id='3' xmlns:q='urn:q' q:v='1'/></devices>",
        Version::Twomemo.namespace()
    );
    let parsed = xml::devicelist_from_xml(Version::Twomemo, &two).expect("parses");
    assert_eq!(parsed.len(), 3);
    assert_eq!(parsed[0].labelsig.as_ref().map(Vec::len), Some(64));
    assert_eq!(parsed[1].label.as_deref(), Some("unsigned"));
    assert_eq!(parsed[1].labelsig, None);
    let old = format!(
        "<list xmlns='{}'><device id='1' label='Phone' future='x'/></list>",
        Version::Oldmemo.namespace()
    );
    let parsed = xml::devicelist_from_xml(Version::Oldmemo, &old).expect("parses");
    assert_eq!((parsed[0].id, parsed[0].label.clone()), (1, None));
}

#[test]
fn devicelist_label_escaping_round_trips() {
    let entries = vec![xml::DeviceListEntry {
        id: 3,
        label: Some("Tom's <\"phone\"> & tab\there".to_owned()),
        labelsig: Some(vec![1, 2, 3]),
    }];
    let text = xml::devicelist_to_xml(Version::Twomemo, &entries);
    assert_eq!(
        xml::devicelist_from_xml(Version::Twomemo, &text).expect("ok"),
        entries
    );
}

// ---- SCE envelope -------------------------------------------------------------------------

#[test]
fn sce_rules() {
    let ok = "<envelope xmlns='urn:xmpp:sce:1'><content><body xmlns='jabber:client'>hi</body></content><rpad>x</rpad><from jid='a@b'/></envelope>";
    let env = sce::parse_envelope(ok).expect("ok");
    assert_eq!(env.body.as_deref(), Some("hi"));
    assert_eq!(env.content_xml, "<body xmlns='jabber:client'>hi</body>");

    assert!(matches!(
        sce::parse_envelope("<envelope xmlns='urn:xmpp:sce:0'><content/></envelope>"),
        Err(SceError::Xml(XmlError::WrongNamespace { .. }))
    ));
    assert!(matches!(
        sce::parse_envelope("<content xmlns='urn:xmpp:sce:1'/>"),
        Err(SceError::Xml(XmlError::WrongRoot { .. }))
    ));
    assert_eq!(
        sce::parse_envelope("<envelope xmlns='urn:xmpp:sce:1'><rpad/></envelope>"),
        Err(SceError::MissingContent)
    );
    assert_eq!(
        sce::parse_envelope("<envelope xmlns='urn:xmpp:sce:1'><content/><content/></envelope>"),
        Err(SceError::DuplicateElement { element: "content" })
    );
    assert_eq!(
        sce::parse_envelope(
            "<envelope xmlns='urn:xmpp:sce:1'><content/><from jid='a'/><from jid='b'/></envelope>"
        ),
        Err(SceError::DuplicateElement { element: "from" })
    );
    assert_eq!(
        sce::parse_envelope("<envelope xmlns='urn:xmpp:sce:1'><content/><to/></envelope>"),
        Err(SceError::MissingAttribute {
            element: "to",
            attribute: "jid"
        })
    );
    assert!(matches!(
        sce::parse_envelope("<envelope xmlns='urn:xmpp:sce:1'><content>"),
        Err(SceError::Xml(XmlError::Syntax { .. }))
    ));
    // Content without a body (e.g. only an opt-out) is fine.
    let env = sce::parse_envelope("<envelope xmlns='urn:xmpp:sce:1'><content><opt-out xmlns='urn:xmpp:omemo:2'/></content></envelope>").expect("ok");
    assert_eq!(env.body, None);
}

/// XEP-0420 0.5: a long `<rpad>` (longer than we write) and an XEP-0082 `<time>` in any
/// position are accepted; server-processed elements inside `<content>` are dropped.
#[test]
fn sce_0_5_envelopes() {
    let rpad = "r".repeat(400);
    let text = format!(
        "<envelope xmlns='urn:xmpp:sce:1'><time stamp='2026-07-01T14:34:56.789+02:00'/>\
         <content><store xmlns='urn:xmpp:hints'/><body xmlns='jabber:client'>hi</body>\
         <stanza-id xmlns='urn:xmpp:sid:0' id='x' by='y'/>\
         <encryption xmlns='urn:xmpp:eme:0' namespace='urn:xmpp:omemo:2'/>\
         <addresses xmlns='http://jabber.org/protocol/address'><address type='to' jid='z'/></addresses>\
         <reply xmlns='urn:xmpp:reply:0' id='1'/></content>\
         <rpad>{rpad}</rpad><from jid='a@b'/></envelope>"
    );
    let env = sce::parse_envelope(&text).expect("a 400-character rpad is accepted");
    assert_eq!(env.body.as_deref(), Some("hi"));
    assert_eq!(env.time.as_deref(), Some("2026-07-01T14:34:56.789+02:00"));
    assert_eq!(
        env.time.as_deref().and_then(protocol_core::datetime::parse),
        Some(1_782_909_296)
    );
    assert_eq!(
        env.content_xml,
        "<body xmlns='jabber:client'>hi</body><reply xmlns='urn:xmpp:reply:0' id='1'></reply>"
    );
}

// ---- random garbage -----------------------------------------------------------------------

fn run_all(text: &str) {
    let _ = Encrypted::from_xml(text);
    for v in Version::ALL {
        let _ = xml::bundle_from_xml(v, text);
        let _ = xml::devicelist_from_xml(v, text);
    }
    let _ = sce::parse_envelope(text);
}

fn vector_documents() -> Vec<String> {
    let mut docs = Vec::new();
    for file in ["session_oldmemo.json", "session_twomemo.json"] {
        let v = load(file);
        docs.push(s(&v["bob_bundle_xml"]));
        for m in v["messages"].as_array().expect("messages") {
            if let Some(x) = m.get("xml") {
                docs.push(s(x));
            }
        }
    }
    let misc = load("misc.json");
    docs.push(s(&misc["devicelist_oldmemo_xml"]));
    docs.push(s(&misc["devicelist_twomemo_xml"]));
    docs
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_never_panic(text in ".{0,400}") {
        run_all(&text);
    }

    #[test]
    fn xmlish_strings_never_panic(text in "[<>/='\" a-z:&;#0-9AB+=\n]{0,300}") {
        run_all(&text);
        run_all(&format!("<encrypted xmlns='urn:xmpp:omemo:2'>{text}</encrypted>"));
    }

    #[test]
    fn mutated_vectors_never_panic(
        which in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        insert in "[<>/='\" a&;]{0,3}",
        cut in 0usize..4,
    ) {
        let docs = vector_documents();
        let doc = which.get(&docs);
        let mut i = at.index(doc.len());
        while !doc.is_char_boundary(i) { i -= 1; }
        let end = (i + cut).min(doc.len());
        let end = if doc.is_char_boundary(end) { end } else { i };
        let mutated = format!("{}{}{}", &doc[..i], insert, &doc[end..]);
        run_all(&mutated);
    }
}

/// Parses `fragment` (the children of a wrapper element without any declaration) with a
/// namespace-aware reader; returns (namespace, local name) of every element. Fails on an
/// undeclared prefix or malformed XML.
fn standalone_elements(fragment: &str) -> Result<Vec<(Option<String>, String)>, String> {
    use quick_xml::events::Event;
    use quick_xml::name::ResolveResult;
    let doc = format!("<wrapper>{fragment}</wrapper>");
    let mut r = quick_xml::NsReader::from_str(&doc);
    r.config_mut().check_end_names = true;
    let mut out = Vec::new();
    loop {
        match r.read_resolved_event().map_err(|e| e.to_string())? {
            (ns, Event::Start(s)) | (ns, Event::Empty(s)) => {
                let ns = match ns {
                    ResolveResult::Bound(n) => Some(String::from_utf8_lossy(n.as_ref()).into()),
                    ResolveResult::Unbound => None,
                    ResolveResult::Unknown(p) => {
                        return Err(format!(
                            "undeclared prefix {:?}",
                            String::from_utf8_lossy(&p)
                        ))
                    }
                };
                for a in s.attributes() {
                    let a = a.map_err(|e| e.to_string())?;
                    if let (ResolveResult::Unknown(p), _) = r.resolve_attribute(a.key) {
                        return Err(format!("undeclared attribute prefix {p:?}"));
                    }
                }
                out.push((ns, String::from_utf8_lossy(s.local_name().as_ref()).into()));
            }
            (_, Event::Eof) => return Ok(out),
            _ => {}
        }
    }
}

#[test]
fn content_xml_stands_alone_with_its_namespaces() {
    // Prefixes declared on <envelope>, as python's ElementTree writes them.
    let env = "<envelope xmlns='urn:xmpp:sce:1' xmlns:ns1='jabber:client' xmlns:x='urn:example'>\
        <content><ns1:body>hi &amp; <![CDATA[<b>]]></ns1:body>\
        <x:thing x:attr='v' plain='p' xml:lang='en'><inner/>tail<y xmlns=''/></x:thing>\
        <!-- dropped --></content><rpad/><from jid='a@b'/></envelope>";
    let e = sce::parse_envelope(env).expect("valid");
    assert_eq!(e.body.as_deref(), Some("hi & <b>"));
    let c = e.content_xml.as_str();
    // The copy of the raw inner XML would not parse on its own.
    assert!(standalone_elements("<ns1:body>hi</ns1:body>").is_err());
    let els = standalone_elements(c).unwrap_or_else(|err| panic!("{err}: {c}"));
    let names: Vec<(Option<&str>, &str)> = els
        .iter()
        .map(|(n, l)| (n.as_deref(), l.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            (None, "wrapper"),
            (Some("jabber:client"), "body"),
            (Some("urn:example"), "thing"),
            // Unprefixed: the default namespace in scope, the SCE one.
            (Some("urn:xmpp:sce:1"), "inner"),
            (None, "y"),
        ],
        "{c}"
    );
    assert!(
        c.contains("a1:attr='v'") && c.contains("plain='p'") && c.contains("xml:lang='en'"),
        "{c}"
    );
    assert!(c.contains("hi &amp; &lt;b"), "{c}");
    assert!(
        c.contains("</inner>tail<y"),
        "mixed content keeps its order: {c}"
    );
    assert!(!c.contains("dropped"), "{c}");
    // Default-namespace senders (omemod itself) give the same form.
    let ours = "<envelope xmlns='urn:xmpp:sce:1'><content><body xmlns='jabber:client'>x</body></content><rpad/></envelope>";
    assert_eq!(
        sce::parse_envelope(ours).expect("ok").content_xml,
        "<body xmlns='jabber:client'>x</body>"
    );
    // An unqualified child of <content> is in the SCE namespace and says so.
    let plain = "<envelope xmlns='urn:xmpp:sce:1'><content><body>x</body></content></envelope>";
    assert_eq!(
        sce::parse_envelope(plain).expect("ok").content_xml,
        "<body xmlns='urn:xmpp:sce:1'>x</body>"
    );
}

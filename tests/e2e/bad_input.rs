//! Hostile and malformed input over the socket: each gets a clear, typed error and the daemon
//! keeps serving on the same connection.

use super::support::*;
use serde_json::json;

const ALICE: &str = "alice@example.org";

fn served(c: &mut Client) {
    assert!(c.call("status", json!({})).is_ok(), "daemon still serving");
}

/// The same on a raw connection: a `status` request answered with a result.
fn served_on_the_wire(w: &mut Wire) {
    let r = w
        .raw(r#"{"jsonrpc":"2.0","id":"served","method":"status"}"#)
        .expect("answer");
    assert_eq!(r["id"], "served", "{r}");
    assert!(
        r.get("error").is_none() && r["result"].is_object(),
        "daemon still serving: {r}"
    );
}

#[test]
fn malformed_requests() {
    let d = Daemon::start();
    let mut c = d.wire();
    let r = c.raw("{not json").unwrap();
    assert_eq!(r["error"]["code"], -32700);
    assert_in_words(&r["error"]);
    served_on_the_wire(&mut c);
    let r = c
        .raw(r#"{"jsonrpc":"2.0","id":1,"method":"no.such.method"}"#)
        .unwrap();
    assert_eq!(r["error"]["code"], -32601);
    let r = c
        .raw(r#"{"jsonrpc":"2.0","id":2,"method":"encrypt","params":{"to":"not a list"}}"#)
        .unwrap();
    assert_eq!(r["error"]["data"]["kind"], "invalid_params");
    let r = c
        .raw(r#"{"jsonrpc":"2.0","id":3,"method":"decrypt","params":{"from":"a@b","bogus":1}}"#)
        .unwrap();
    assert_eq!(r["error"]["data"]["kind"], "invalid_params");
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":4,"method":"status","params":{{"x":"{}"}}}}"#,
        "a".repeat(2 << 20)
    );
    let r = c.raw(&big).unwrap();
    assert_eq!(r["error"]["data"]["kind"], "request_too_large");
    served_on_the_wire(&mut c);
}

#[test]
fn unknown_accounts_and_devices() {
    let d = Daemon::start();
    let mut c = d.client();
    refused(
        &mut c,
        "bundle.get",
        json!({"namespace": OMEMO2}),
        "account_required",
    );
    c.create_account(ALICE);
    refused(
        &mut c,
        "account.create",
        json!({"jid": ALICE}),
        "account_exists",
    );
    refused(
        &mut c,
        "account.create",
        json!({"jid": "not a jid/res"}),
        "invalid_jid",
    );
    refused(
        &mut c,
        "bundle.get",
        json!({"account": "nobody@example.org", "namespace": OMEMO2}),
        "unknown_account",
    );
    refused(
        &mut c,
        "bundle.get",
        json!({"namespace": "urn:xmpp:omemo:1"}),
        "invalid_params",
    );
    refused(
        &mut c,
        "heartbeat",
        json!({"jid": "bob@example.org", "namespace": OMEMO2, "device_id": 5}),
        "no_bundle",
    )
    .to_string();
    served(&mut c);
}

#[test]
fn garbage_messages_and_bundles() {
    let d = Daemon::start();
    let mut c = d.client();
    let me = c.create_account(ALICE);
    let bob = "bob@example.org";
    // Not XML, wrong root, wrong namespace.
    for xml in [
        "",
        "<<<",
        "<message/>",
        "<encrypted xmlns='urn:xmpp:omemo:1'/>",
    ] {
        refused(
            &mut c,
            "decrypt",
            json!({"from": bob, "xml": xml}),
            "invalid_message",
        );
    }
    // Well-formed element with garbage protobuf for our device, in both namespaces.
    let x2 = format!(
        "<encrypted xmlns='{OMEMO2}'><header sid='5'><keys jid='{ALICE}'><key rid='{me}' kex='true'>AAECAwQF</key></keys></header></encrypted>"
    );
    refused(
        &mut c,
        "decrypt",
        json!({"from": bob, "xml": x2}),
        "invalid_message",
    );
    let x3 = format!(
        "<encrypted xmlns='{OLDMEMO}'><header sid='5'><key rid='{me}' prekey='true'>MwgB</key><iv>AAAAAAAAAAAAAAAA</iv></header></encrypted>"
    );
    refused(
        &mut c,
        "decrypt",
        json!({"from": bob, "xml": x3}),
        "invalid_message",
    );
    // A normal message from a device without a session.
    let x4 = format!(
        "<encrypted xmlns='{OMEMO2}'><header sid='5'><keys jid='{ALICE}'><key rid='{me}'>AAECAwQF</key></keys></header></encrypted>"
    );
    refused(
        &mut c,
        "decrypt",
        json!({"from": bob, "xml": x4}),
        "no_session",
    );
    // Not for us.
    let x5 = format!(
        "<encrypted xmlns='{OMEMO2}'><header sid='5'><keys jid='{ALICE}'><key rid='77'>AAECAwQF</key></keys></header></encrypted>"
    );
    let e = refused(
        &mut c,
        "decrypt",
        json!({"from": bob, "xml": x5}),
        "not_for_this_device",
    );
    assert_eq!(e["data"]["recipients"], json!([77]));
    // Bundles: garbage, bad signature.
    refused(
        &mut c,
        "bundle.update",
        json!({"jid": bob, "device_id": 5, "namespace": OMEMO2, "xml": "<bundle/>"}),
        "invalid_bundle",
    );
    let other = Daemon::start();
    let mut o = other.client();
    o.create_account(bob);
    let good = o.bundle(OMEMO2)["xml"].as_str().unwrap().to_owned();
    let spks_start = good.find("<spks>").unwrap() + 6;
    let mut bad = good.clone();
    let ch = if &bad[spks_start..spks_start + 1] == "A" {
        "B"
    } else {
        "A"
    };
    bad.replace_range(spks_start..spks_start + 1, ch);
    refused(
        &mut c,
        "bundle.update",
        json!({"jid": bob, "device_id": 5, "namespace": OMEMO2, "xml": bad}),
        "invalid_signature",
    );
    c.ok(
        "bundle.update",
        json!({"jid": bob, "device_id": 5, "namespace": OMEMO2, "xml": good}),
    );
    served(&mut c);
}

/// A message a client author reads: no Rust `Debug` form of an internal value (`Some(…)`,
/// `None`, quoted strings, empty lists, enum variant names) reaches it.
fn assert_in_words(error: &serde_json::Value) {
    let m = error["message"].as_str().unwrap_or_default();
    assert!(!m.is_empty(), "no message: {error}");
    for debug in [
        "Some(", "None", "Ok(", "Err(", "[]", "\\\"", "{ ", " }", "Twomemo", "Oldmemo", "Version",
    ] {
        assert!(!m.contains(debug), "`{debug}` in the message: {m}");
    }
    assert!(
        !m.contains('"'),
        "a quoted (Debug-formatted) value in the message: {m}"
    );
}

/// `c.err`, and the message checked for Debug forms.
fn refused(
    c: &mut Client,
    method: &str,
    params: serde_json::Value,
    kind: &str,
) -> serde_json::Value {
    let e = c.err(method, params, kind);
    assert_in_words(&e);
    e
}

/// The message of an error object.
fn message(e: &serde_json::Value) -> String {
    e["message"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn parse_errors_say_where_the_line_breaks_off() {
    let d = Daemon::start();
    let mut w = d.wire();
    let line = r#"{"jsonrpc":"2.0","id":1,"method":"status""#;
    let r = w.raw(line).expect("answer");
    assert_eq!(r["error"]["data"]["kind"], "parse_error", "{r}");
    assert_eq!(r["error"]["data"]["line"], 1, "{r}");
    assert_eq!(r["error"]["data"]["column"], line.len(), "{r}");
    let m = message(&r["error"]);
    assert!(
        m.contains(&format!("line 1, column {}", line.len())) && m.contains("end of the line"),
        "{m}"
    );
    assert_in_words(&r["error"]);
    // The same in a batch, and a bad character inside the line.
    let r = w
        .raw(r#"[{"jsonrpc":"2.0","id":1,"method":"status"}, {"jsonrpc":"#)
        .expect("answer");
    assert_eq!(r["error"]["data"]["kind"], "parse_error", "{r}");
    assert!(r["error"]["data"]["column"].as_u64().is_some(), "{r}");
    let r = w.raw(r#"{"jsonrpc":"2.0",'id':1}"#).expect("answer");
    assert_eq!(r["error"]["data"]["column"], 18, "{r}");
    assert!(message(&r["error"]).contains("column 18"), "{r}");
    assert_in_words(&r["error"]);
    served_on_the_wire(&mut w);
}

/// Valid params for every field of every method, but for the one under test.
fn valid_param(method: &str, field: &str, me: u32) -> serde_json::Value {
    match (method, field) {
        ("encrypt" | "encrypt.plan", "to") => json!(["bob@example.org"]),
        ("decrypt", "to") => json!(ALICE),
        (_, "account") => json!(ALICE),
        (_, "jid" | "from") => json!("bob@example.org"),
        (_, "sce_to") => json!("room@muc.example.org"),
        (_, "namespace") => json!(OMEMO2),
        (_, "device_id") => json!(5),
        (_, "fingerprint") => json!("ab".repeat(32)),
        (_, "level") => json!("trusted"),
        ("decrypt", "xml") => json!(format!(
            "<encrypted xmlns='{OMEMO2}'><header sid='5'><keys jid='{ALICE}'><key rid='{me}'>AAECAwQF</key></keys></header></encrypted>"
        )),
        ("devicelist.update", "xml") => json!(format!("<devices xmlns='{OMEMO2}'/>")),
        (_, "xml") => json!("<bundle/>"),
        ("link.verify", "link") => json!(format!("xmpp:bob@example.org?omemo-sid-5={}", "ab".repeat(32))),
        ("account.set_label", "label") => json!("desk"),
        (m, f) => panic!("no valid value for {m}'s {f}"),
    }
}

#[test]
fn every_jid_field_refuses_a_resource_and_a_name_without_domain_in_words() {
    let d = Daemon::start();
    let mut c = d.client();
    let me = c.create_account(ALICE);
    let doc = c.ok("rpc.discover", json!({}));
    let mut checked = 0;
    for m in doc["methods"].as_array().expect("methods") {
        let method = m["name"].as_str().expect("name");
        let schema = &m["x-params-schema"];
        let Some(props) = schema["properties"].as_object() else {
            continue;
        };
        let mut required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        if method == "decrypt" {
            // One of `xml` and `element` is required.
            required.push("xml");
        }
        for field in ["account", "jid", "from", "to", "sce_to"] {
            if !props.contains_key(field) {
                continue;
            }
            for (bad, says) in [
                ("alice@example.org/laptop", "/laptop"),
                ("bob", "@"),
                ("@example.org", "local part"),
            ] {
                let mut params = serde_json::Map::new();
                for r in &required {
                    params.insert((*r).to_owned(), valid_param(method, r, me));
                }
                let value = if valid_param(method, field, me).is_array() {
                    json!([bad])
                } else {
                    json!(bad)
                };
                params.insert(field.to_owned(), value);
                let m = message(&refused(&mut c, method, params.into(), "invalid_jid"));
                assert!(
                    m.contains(bad) && m.contains(says),
                    "{method} {field}={bad}: {m}"
                );
                checked += 1;
            }
        }
    }
    // account.create, account.delete and 17 methods with more JID fields than one.
    assert!(checked >= 3 * 25, "only {checked} JID fields checked");
    // A resource in `account` names it the same way as one in `to`.
    let m = message(&refused(
        &mut c,
        "fingerprint.get",
        json!({"account": "alice@example.org/laptop"}),
        "invalid_jid",
    ));
    assert!(m.contains("resource"), "{m}");
    served(&mut c);
}

#[test]
fn element_and_device_list_errors_say_what_is_wrong_in_words() {
    let d = Daemon::start();
    let mut c = d.client();
    c.create_account(ALICE);
    let bob = "bob@example.org";
    let m = message(&refused(
        &mut c,
        "decrypt",
        json!({"from": bob, "xml": "<encrypted xmlns='urn:xmpp:omemo:1'/>"}),
        "invalid_message",
    ));
    assert!(
        m.contains("urn:xmpp:omemo:1") && m.contains(OMEMO2) && m.contains(OLDMEMO),
        "{m}"
    );
    let m = message(&refused(
        &mut c,
        "decrypt",
        json!({"from": bob, "xml": "<encrypted/>"}),
        "invalid_message",
    ));
    assert!(m.contains("no namespace"), "{m}");
    // An element with no key at all is for nobody: malformed, not "for another device".
    for xml in [
        format!("<encrypted xmlns='{OMEMO2}'><header sid='5'/><payload>AAAA</payload></encrypted>"),
        format!(
            "<encrypted xmlns='{OLDMEMO}'><header sid='5'><iv>AAAAAAAAAAAAAAAA</iv></header><payload>AAAA</payload></encrypted>"
        ),
    ] {
        let m = message(&refused(
            &mut c,
            "decrypt",
            json!({"from": bob, "xml": xml}),
            "invalid_message",
        ));
        assert!(m.contains("<key>"), "{m}");
    }
    // A device list's own kind, and its problem in words.
    for (xml, says) in [
        (format!("<list xmlns='{OMEMO2}'/>"), "<list>"),
        (
            "<devices xmlns='urn:xmpp:omemo:1'/>".to_owned(),
            "urn:xmpp:omemo:1",
        ),
        ("<devices/>".to_owned(), "no namespace"),
        ("<<<".to_owned(), "malformed XML"),
    ] {
        let m = message(&refused(
            &mut c,
            "devicelist.update",
            json!({"jid": bob, "namespace": OMEMO2, "xml": xml}),
            "invalid_devicelist",
        ));
        assert!(
            m.starts_with("invalid device list") && m.contains(says),
            "{m}"
        );
    }
    served(&mut c);
}

/// A message decrypted with the wrong `from` is refused as such, not as a broken session (the
/// docs tell clients to offer "reset session" for that) and, in OMEMO 0.3, not accepted as a
/// new session of the wrong sender: it comes from a device known under another JID. Nothing
/// is used up, so the right `from` still decrypts it.
#[test]
fn wrong_from_is_a_sender_mismatch_not_a_broken_session() {
    let carol = "carol@example.org";
    // Refused for carol as alice's; then alice's still decrypts.
    let refused_then_read = |b: &mut Client, xml: &str, kind: &str, body: &str| {
        let e = b.err("decrypt", json!({"from": carol, "xml": xml}), kind);
        assert_in_words(&e);
        if kind == "sender_mismatch" {
            let m = message(&e);
            assert!(m.contains(carol) && m.contains(ALICE), "{m}");
            assert_eq!(e["data"]["jid"], ALICE, "{e}");
            assert_eq!(e["data"]["from"], carol, "{e}");
        }
        let r = b.decrypt(ALICE, xml).expect("the right sender decrypts");
        assert_eq!(r["body"], body);
    };
    for ns in BOTH {
        let mut w = super::world(&[ns]);
        // OMEMO 2 decrypts the first on a copy and finds alice in its envelope; 0.3 has none.
        let kind = if ns == OMEMO2 {
            "sce_mismatch"
        } else {
            "sender_mismatch"
        };
        let first = w.a.encrypt_xml(&[super::BOB], Some("hi bob"), ns);
        refused_then_read(&mut w.b, &first, kind, "hi bob");
        // The next message is a key exchange again (bob has not answered) whose prekey is
        // used up now: the sender, not the session, is wrong.
        let second = w.a.encrypt_xml(&[super::BOB], Some("again"), ns);
        refused_then_read(&mut w.b, &second, "sender_mismatch", "again");
        // Once bob answered, alice's messages are normal ones: no session with carol's device.
        let answer = w.b.encrypt_xml(&[ALICE], Some("hello"), ns);
        w.a.decrypt(super::BOB, &answer).expect("alice reads bob");
        let normal = w.a.encrypt_xml(&[super::BOB], Some("normal"), ns);
        refused_then_read(&mut w.b, &normal, "sender_mismatch", "normal");
    }
}

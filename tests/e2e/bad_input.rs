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
    c.err(
        "bundle.get",
        json!({"namespace": OMEMO2}),
        "account_required",
    );
    c.create_account(ALICE);
    c.err("account.create", json!({"jid": ALICE}), "account_exists");
    c.err(
        "account.create",
        json!({"jid": "not a jid/res"}),
        "invalid_jid",
    );
    c.err(
        "bundle.get",
        json!({"account": "nobody@example.org", "namespace": OMEMO2}),
        "unknown_account",
    );
    c.err(
        "bundle.get",
        json!({"namespace": "urn:xmpp:omemo:1"}),
        "invalid_params",
    );
    c.err(
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
        c.err(
            "decrypt",
            json!({"from": bob, "xml": xml}),
            "invalid_message",
        );
    }
    // Well-formed element with garbage protobuf for our device, in both namespaces.
    let x2 = format!(
        "<encrypted xmlns='{OMEMO2}'><header sid='5'><keys jid='{ALICE}'><key rid='{me}' kex='true'>AAECAwQF</key></keys></header></encrypted>"
    );
    c.err(
        "decrypt",
        json!({"from": bob, "xml": x2}),
        "invalid_message",
    );
    let x3 = format!(
        "<encrypted xmlns='{OLDMEMO}'><header sid='5'><key rid='{me}' prekey='true'>MwgB</key><iv>AAAAAAAAAAAAAAAA</iv></header></encrypted>"
    );
    c.err(
        "decrypt",
        json!({"from": bob, "xml": x3}),
        "invalid_message",
    );
    // A normal message from a device without a session.
    let x4 = format!(
        "<encrypted xmlns='{OMEMO2}'><header sid='5'><keys jid='{ALICE}'><key rid='{me}'>AAECAwQF</key></keys></header></encrypted>"
    );
    c.err("decrypt", json!({"from": bob, "xml": x4}), "no_session");
    // Not for us.
    let x5 = format!(
        "<encrypted xmlns='{OMEMO2}'><header sid='5'><keys jid='{ALICE}'><key rid='77'>AAECAwQF</key></keys></header></encrypted>"
    );
    let e = c.err(
        "decrypt",
        json!({"from": bob, "xml": x5}),
        "not_for_this_device",
    );
    assert_eq!(e["data"]["recipients"], json!([77]));
    // Bundles: garbage, bad signature.
    c.err(
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
    c.err(
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

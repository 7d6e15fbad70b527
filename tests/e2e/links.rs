//! Issue 21 items 2–4 end to end: verification links between daemons, signed device labels,
//! SCE 0.5 envelopes, and an `encrypt` that never produces an element `decrypt` refuses.

use super::support::*;
use super::trust::pair as two;
use serde_json::{json, Value};

const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@example.org";

/// The fingerprint as 64 hex digits.
fn hex(fp: &Value) -> String {
    fp.as_str()
        .expect("fingerprint")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect()
}

/// `trust.list` of `jid` as (fingerprint, level, source).
fn trust_of(c: &mut Client, jid: &str) -> Vec<(String, String, String)> {
    let r = c.ok("trust.list", json!({"jid": jid}));
    r.as_array()
        .expect("trust list")
        .iter()
        .map(|t| {
            let s = |k: &str| t[k].as_str().unwrap_or_default().to_owned();
            (s("fingerprint"), s("level"), s("source"))
        })
        .collect()
}

/// Our link is written as Conversations writes its own (`Account.getShareableUri`:
/// `"xmpp:" + bareJid`, then `XmppUri.getFingerprintUri(uri, fingerprints, ';')`:
/// `?` + `omemo-sid-` + deviceId + `=` + fingerprint, where the fingerprint is
/// `CryptoHelper.bytesToHex(identityKey.serialize()).substring(2)`: lowercase hex of the
/// Curve25519 key without the 05 type byte), and Gajim's own (`compose_trust_uri` in
/// `gajim/common/modules/omemo.py`: `jid.to_iri(("message", [("omemo-sid-<sid>",
/// ik.get_fingerprint())]))`, which nbxmpp's `JID.to_iri` writes as `xmpp:<jid>?message` +
/// `;omemo-sid-<sid>=<fp>`) is read back as the same device and key.
#[test]
fn our_link_is_the_one_conversations_and_gajim_write() {
    let d = Daemon::start();
    let mut c = d.client();
    let id = c.create_account(ALICE);
    let me = c.ok("fingerprint.get", json!({}));
    let fp = hex(&me["fingerprint"]);
    let link = c.ok("link.get", json!({}));

    let conversations = format!("xmpp:{ALICE}?omemo-sid-{id}={fp}");
    assert_eq!(link["link"], conversations, "{link}");
    assert_eq!(
        link["devices"],
        json!([{"device_id": id, "fingerprint": me["fingerprint"]}])
    );
    let gajim = format!("xmpp:{ALICE}?message;omemo-sid-{id}={fp}");
    // Both forms name our own device: applying them verifies it (nothing to store).
    for form in [&conversations, &gajim] {
        let r = c.ok("link.verify", json!({"link": form}));
        assert_eq!(r["keys"][0]["status"], "matches", "{r}");
        assert_eq!(r["keys"][0]["device_id"], id, "{r}");
        assert_eq!(r["newly_verified"], 0, "{r}");
    }
    // The fingerprint as each client shows it (docs/clients.md).
    let f = &link["fingerprints"];
    assert_eq!(f["hex"], fp);
    assert_eq!(f["conversations"], me["fingerprint"]);
    assert_eq!(
        f["gajim"].as_str().map(|s| s.replace(['\n', ' '], "")),
        Some(fp.to_uppercase())
    );
    assert_eq!(
        f["dino"]
            .as_str()
            .map(|s| s.replace(['\n', ' ', '\u{a0}'], "")),
        Some(fp.clone())
    );
}

/// Bob scans Alice's link: exactly the named key becomes verified by the user. A link with a
/// wrong key, or one naming a device Bob does not know, trusts nothing.
#[test]
fn applying_a_link_verifies_exactly_the_named_keys() {
    let mut t = two(&BOTH);
    let alice_link = t.a.ok("link.get", json!({}))["link"]
        .as_str()
        .expect("link")
        .to_owned();
    let alice_fp = t.a.ok("fingerprint.get", json!({}))["fingerprint"].clone();

    // Bob knows Alice's device from its bundles; nothing is verified so far.
    let before = trust_of(&mut t.b, ALICE);
    assert!(
        before.iter().all(|(_, _, source)| source != "manual"),
        "{before:?}"
    );

    // A wrong key for Alice's device: a mismatch, reported per key, and nothing changes.
    let wrong = format!("xmpp:{ALICE}?omemo-sid-{}={}", t.a_id, "ab".repeat(32));
    let e =
        t.b.err("link.verify", json!({"link": wrong}), "link_mismatch");
    assert_eq!(e["data"]["cause"], "peer_misbehaved", "{e}");
    assert_eq!(e["data"]["keys"][0]["status"], "mismatch", "{e}");
    assert_eq!(e["data"]["keys"][0]["held_fingerprint"], alice_fp, "{e}");
    // Alice's right key plus a device Bob never heard of: unknown, and nothing changes either.
    let partial = format!("{alice_link};omemo-sid-4242={}", "cd".repeat(32));
    let e = t.b.err(
        "link.verify",
        json!({"link": partial}),
        "link_unknown_device",
    );
    let statuses: Vec<&Value> = e["data"]["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| &k["status"])
        .collect();
    assert_eq!(
        statuses,
        [&json!("matches"), &json!("unknown_device")],
        "{e}"
    );
    assert_eq!(
        trust_of(&mut t.b, ALICE),
        before,
        "a refused link changed trust"
    );
    // Not a link at all.
    t.b.err(
        "link.verify",
        json!({"link": "https://example.org"}),
        "invalid_link",
    );

    // The right link: exactly Alice's key is now trusted by the user.
    let r = t.b.ok("link.verify", json!({"link": alice_link}));
    assert_eq!(r["jid"], ALICE);
    assert_eq!(r["newly_verified"], 1, "{r}");
    assert_eq!(
        trust_of(&mut t.b, ALICE),
        vec![(
            alice_fp.as_str().unwrap().to_owned(),
            "trusted".to_owned(),
            "manual".to_owned()
        )]
    );
    // Applying it again changes nothing more.
    let r = t.b.ok("link.verify", json!({"link": alice_link}));
    assert_eq!(r["newly_verified"], 0, "{r}");
    // Verified contacts under btbv: Alice's messages still decrypt as trusted.
    let x = t.a.encrypt_xml(&[BOB], Some("verified"), OMEMO2);
    let m = t.b.decrypt(ALICE, &x).expect("decrypts");
    assert_eq!(m["sender"]["trust"], "trusted", "{m}");
}

/// A verified other device of ours is in our link, so that a contact who scans it verifies it
/// too (Conversations and Gajim do the same).
#[test]
fn our_link_names_our_other_verified_devices() {
    let d1 = Daemon::start();
    let d2 = Daemon::start();
    let mut one = d1.client();
    let mut other = d2.client();
    let id1 = one.create_account(ALICE);
    let id2 = other.create_account(ALICE);
    // Our own list names the other device (as that device publishes it), and its bundle.
    one.learn(ALICE, &mut other, &[OMEMO2]);
    let link = one.ok("link.get", json!({}));
    assert_eq!(link["devices"].as_array().map(Vec::len), Some(1), "{link}");
    // Verify the other device with its own link: now ours names both, ours first.
    let other_link = other.ok("link.get", json!({}))["link"].clone();
    let r = one.ok("link.verify", json!({"link": other_link}));
    assert_eq!(r["newly_verified"], 1, "{r}");
    let link = one.ok("link.get", json!({}));
    let ids: Vec<u64> = link["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .filter_map(|d| d["device_id"].as_u64())
        .collect();
    assert_eq!(ids, vec![u64::from(id1), u64::from(id2)], "{link}");
}

/// The `label` entry of `devices.list` for one device.
fn device_entry(c: &mut Client, jid: &str, ns: &str, id: u32) -> Value {
    let r = c.ok("devices.list", json!({"jid": jid}));
    r.as_array()
        .expect("devices")
        .iter()
        .find(|d| d["namespace"] == ns && d["device_id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no {jid}/{id} in {ns}: {r}"))
}

/// Hands Alice's OMEMO 2 device list `xml` to `c`; returns the answer.
fn alice_list(c: &mut Client, xml: &str) -> Value {
    c.ok(
        "devicelist.update",
        json!({"jid": ALICE, "namespace": OMEMO2, "xml": xml}),
    )
}

/// (`label`, `label_status`) of Alice's device `id` as `c` lists it.
fn label_of(c: &mut Client, id: u32) -> (Value, Value) {
    let e = device_entry(c, ALICE, OMEMO2, id);
    (e["label"].clone(), e["label_status"].clone())
}

/// Alice names her device; its signed label reaches Bob through her OMEMO 2 list and is shown;
/// a forged or unsigned label is not; 0.3 lists never carry one.
#[test]
fn signed_labels_travel_in_the_omemo_2_list_only() {
    let mut t = two(&BOTH);
    let r = t.a.ok("account.set_label", json!({"label": "Laptop 💻"}));
    assert_eq!(r["label"], "Laptop 💻");
    assert_eq!(
        r["actions"],
        json!([{"type": "publish_devicelist", "namespace": OMEMO2}]),
        "{r}"
    );
    let two = t.a.devicelist(OMEMO2)["xml"].as_str().unwrap().to_owned();
    assert!(
        two.contains("label='Laptop 💻'") && two.contains("labelsig='"),
        "{two}"
    );
    let old = t.a.devicelist(OLDMEMO)["xml"].as_str().unwrap().to_owned();
    assert!(!old.contains("label"), "a 0.3 list with a label: {old}");
    let null = Value::Null;

    // Bob reads the list: the label is verified against the key of Alice's bundle.
    alice_list(&mut t.b, &two);
    assert_eq!(
        label_of(&mut t.b, t.a_id),
        (json!("Laptop 💻"), json!("verified"))
    );
    // The same signature on another text: ignored and said so.
    alice_list(&mut t.b, &two.replace("Laptop 💻", "Bank"));
    assert_eq!(
        label_of(&mut t.b, t.a_id),
        (null.clone(), json!("bad_signature"))
    );
    // No signature at all (QXmpp writes such labels).
    let id = t.a_id;
    alice_list(
        &mut t.b,
        &format!("<devices xmlns='{OMEMO2}'><device id='{id}' label='Bank'/></devices>"),
    );
    assert_eq!(label_of(&mut t.b, id), (null.clone(), json!("unsigned")));
    // A device whose key is not known yet: not shown until its bundle arrives.
    let sig = "A".repeat(86) + "==";
    alice_list(
        &mut t.b,
        &format!("<devices xmlns='{OMEMO2}'><device id='{id}'/><device id='77' label='x' labelsig='{sig}'/></devices>"),
    );
    assert_eq!(label_of(&mut t.b, 77), (null, json!("unknown_key")));

    // Alice's own list as the server holds it without her label: she is told to republish;
    // with it, not. Her other devices' labels stay in what she publishes.
    let sig = "Q".repeat(85) + "A==";
    let plain = format!("<devices xmlns='{OMEMO2}'><device id='{id}'/><device id='5' label='Phone' labelsig='{sig}'/></devices>");
    let r = alice_list(&mut t.a, &plain);
    assert_eq!(r["actions"][0]["type"], "publish_devicelist", "{r}");
    let mine = t.a.devicelist(OMEMO2)["xml"].as_str().unwrap().to_owned();
    assert!(
        mine.contains("label='Phone'") && mine.contains("label='Laptop 💻'"),
        "{mine}"
    );
    let r = alice_list(&mut t.a, &mine);
    assert_eq!(r["actions"], json!([]), "{r}");
    // Her own label is shown to her, verified with her own key.
    assert_eq!(label_of(&mut t.a, id).1, "verified");

    // Too long (54 code points) or with a line break: refused, nothing changes.
    let e = t.a.err(
        "account.set_label",
        json!({"label": "é".repeat(54)}),
        "invalid_label",
    );
    assert_eq!(
        (&e["data"]["chars"], &e["data"]["max_chars"]),
        (&json!(54), &json!(53)),
        "{e}"
    );
    t.a.err(
        "account.set_label",
        json!({"label": "a\nb"}),
        "invalid_label",
    );
    assert!(t.a.devicelist(OMEMO2)["xml"]
        .as_str()
        .unwrap()
        .contains("Laptop 💻"));
    // Removed: the list carries no label for her device any more.
    let r = t.a.ok("account.set_label", json!({"label": null}));
    assert_eq!(r["label"], Value::Null);
    assert!(!t.a.devicelist(OMEMO2)["xml"]
        .as_str()
        .unwrap()
        .contains("Laptop"));
}

/// XEP-0420 0.5: omemod's envelope carries an XEP-0082 `<time>`; `sent_at` checks it.
#[test]
fn envelope_time_is_written_and_checked() {
    let mut t = two(&[OMEMO2]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let x = t.a.encrypt_xml(&[BOB], Some("what time is it"), OMEMO2);
    // An hour off: refused (nothing moves, so the same element decrypts with the right time).
    let far = format_utc(now - 3600);
    let e = t.b.call(
        "decrypt",
        json!({"from": ALICE, "xml": x, "to": BOB, "sent_at": far}),
    );
    assert_eq!(e.expect_err("an hour off")["data"]["kind"], "sce_mismatch");
    let r = t.b.ok(
        "decrypt",
        json!({"from": ALICE, "xml": x, "to": BOB, "sent_at": format_utc(now)}),
    );
    assert_eq!(r["body"], "what time is it");
    let stamp = r["envelope"]["time"].as_str().expect("a <time>").to_owned();
    assert!(stamp.ends_with('Z') && stamp.len() == 20, "{stamp}");
    t.b.err(
        "decrypt",
        json!({"from": ALICE, "xml": x, "sent_at": "yesterday"}),
        "invalid_params",
    );
}

/// `unix` seconds as `CCYY-MM-DDThh:mm:ssZ` (the test's own, to check omemod's).
fn format_utc(unix: u64) -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{unix}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// The case: a 500,000-character body made a 667 KB element that decrypt refused. Now
/// encrypt refuses any body whose element decrypt would refuse, before anything moves; one just
/// under the limit goes through and decrypts.
#[test]
fn encrypt_refuses_what_no_omemod_could_decrypt() {
    for ns in BOTH {
        let mut t = two(&[ns]);
        for len in [500_000, 197_000] {
            let body = "x".repeat(len);
            let e = t.a.err(
                "encrypt",
                json!({"to": [BOB], "body": body, "namespaces": [ns]}),
                "message_too_large",
            );
            let d = &e["data"];
            assert_eq!(d["namespace"], ns, "{e}");
            assert_eq!(d["max_bytes"], 256 * 1024, "{e}");
            assert!(d["bytes"].as_u64().unwrap_or(0) > 256 * 1024, "{e}");
            assert_eq!(d["cause"], "request", "{e}");
        }
        let body = "y".repeat(190_000);
        let x = t.a.encrypt_xml(&[BOB], Some(&body), ns);
        assert!(x.len() <= 256 * 1024, "{ns}: {}", x.len());
        let r =
            t.b.decrypt(ALICE, &x)
                .expect("the element just under the limit decrypts");
        assert_eq!(r["body"].as_str().map(str::len), Some(body.len()));
        // The refusals moved nothing: this was still the first message (a key exchange).
        assert_eq!(r["key_exchange"], true, "{ns}");
    }
}

/// `omemod link`, `omemod verify` and `omemod label` on the command line.
#[test]
fn the_command_line_shows_links_as_qr_codes_and_applies_them() {
    let mut t = two(&[OMEMO2]);
    let run = |d: &Daemon, args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_omemod"))
            .arg("--socket")
            .arg(&d.socket)
            .args(args)
            .env("XDG_CONFIG_HOME", d.dir.path())
            .env_remove("OMEMOD_CONFIG")
            .output()
            .expect("run omemod")
    };
    let link = t.a.ok("link.get", json!({}))["link"]
        .as_str()
        .expect("link")
        .to_owned();
    let out = run(&t.da, &["link"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(text.contains(&link), "{text}");
    assert!(
        text.contains('▀') || text.contains('▄') || text.contains('█'),
        "no QR code: {text}"
    );
    assert!(text.contains("Gajim: "), "{text}");
    let out = run(&t.da, &["link", "--no-qr"]);
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(text.starts_with(&link) && !text.contains('▀'), "{text}");

    let fp = link.rsplit('=').next().expect("key").to_owned();
    let unknown = if t.a_id == 4242 { 4243 } else { 4242 };
    let wrong = format!("xmpp:{ALICE}?omemo-sid-{unknown}={fp}");
    let out = run(&t.db, &["verify", &wrong]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("link_unknown_device"),
        "{out:?}"
    );
    let out = run(&t.db, &["verify", &link]);
    assert!(out.status.success(), "{out:?}");
    let r: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(r["newly_verified"], 1, "{r}");

    let out = run(&t.da, &["label", "Work laptop"]);
    assert!(out.status.success(), "{out:?}");
    assert!(t.a.devicelist(OMEMO2)["xml"]
        .as_str()
        .unwrap()
        .contains("label='Work laptop'"));
}

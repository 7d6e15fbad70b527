//! Interop tests: omemod (driven through its JSON-RPC socket only) against python-omemo
//! (`tests/interop/peer.py`, an independent OMEMO implementation), in both namespaces.
//!
//! Everything that crosses between the two is the XEP-0384 XML that would travel on the network:
//! device lists and bundles (`devicelist.get`/`bundle.get` ↔ the peer's `devicelist`/`bundle`, and
//! `devicelist.update`/`bundle.update` ↔ the peer's `add_devicelist`/`add_bundle`) and
//! `<encrypted>` elements. Nothing is mocked and there is no back door into either side's state.
//!
//! One `#[test]` per scenario and namespace; the scenarios live in `scenarios.rs`. `files.rs`
//! holds XEP-0454 files against Python's `cryptography`.

#[path = "../support/mod.rs"]
mod support;

mod files;
mod scenarios;

use serde_json::{json, Value};
use support::{Client, Daemon, PyPeer, OLDMEMO, OMEMO2};

/// The JID of the omemod account in the two-party tests.
const OM_JID: &str = "alice@omemod.example";
/// The JID of the python-omemo peer in the two-party tests.
const PY_JID: &str = "bob@python.example";

macro_rules! per_namespace {
    ($($scenario:ident),* $(,)?) => {
        mod omemo2 {
            $( #[test] fn $scenario() { crate::scenarios::$scenario(crate::support::OMEMO2); } )*
        }
        mod oldmemo {
            $( #[test] fn $scenario() { crate::scenarios::$scenario(crate::support::OLDMEMO); } )*
        }
    };
}

per_namespace!(
    devicelist_and_bundle_exchange,
    session_initiated_by_omemod,
    session_initiated_by_python,
    out_of_order_python_to_omemod,
    out_of_order_omemod_to_python,
    replay_redelivered_by_omemod,
    heartbeat_from_omemod_after_key_exchange,
    empty_message_from_python_after_key_exchange,
    two_python_devices_and_one_omemod_device,
    heartbeat_after_long_one_sided_chain,
    empty_text_from_omemod,
);

#[test]
fn both_namespaces_in_one_stanza() {
    scenarios::both_namespaces_in_one_stanza();
}

#[test]
fn content_xml_parses_on_its_own() {
    scenarios::content_xml_parses_on_its_own();
}

#[test]
fn sce_checked_against_python() {
    scenarios::sce_checked_against_python();
}

#[test]
fn sce_0_5_envelopes_with_python() {
    scenarios::sce_0_5_envelopes_with_python();
}

#[test]
fn labels_both_ways() {
    scenarios::labels_both_ways();
}

// ------------------------------------------------------------------------------------------------
// Shared helpers
// ------------------------------------------------------------------------------------------------

/// The short name of a namespace, for messages.
fn short(ns: &str) -> &'static str {
    match ns {
        OMEMO2 => "OMEMO 2",
        OLDMEMO => "OMEMO 0.3",
        _ => panic!("unknown namespace {ns}"),
    }
}

/// A fingerprint reduced to lower-case hex digits (omemod groups them, python-omemo does not).
fn fp(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase()
}

/// The attributes of every `<key …>` start tag in an `<encrypted>` element, as (name, value) pairs.
/// Both implementations write plain, prefix-free XML; this is enough to read `rid`, `kex` (OMEMO 2)
/// and `prekey` (OMEMO 0.3).
fn key_tags(xml: &str) -> Vec<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find("<key") {
        let after = &rest[i + 4..];
        let next = after.chars().next();
        if !matches!(next, Some(' ' | '\t' | '\n' | '\r' | '>' | '/')) {
            rest = after; // e.g. <keys>
            continue;
        }
        let end = after.find('>').expect("unterminated <key> tag");
        let mut attrs = Vec::new();
        let mut s = &after[..end];
        while let Some(eq) = s.find('=') {
            let name = s[..eq].trim().trim_end_matches('/').to_owned();
            let v = &s[eq + 1..].trim_start();
            let q = v.chars().next().expect("attribute value");
            assert!(q == '\'' || q == '"', "unquoted attribute in {xml}");
            let close = v[1..].find(q).expect("unterminated attribute") + 1;
            attrs.push((name, v[1..close].to_owned()));
            s = &v[close + 1..];
        }
        out.push(attrs);
        rest = &after[end..];
    }
    out
}

/// Whether the `<key>` for device `rid` in `xml` is marked as a key exchange (`kex` in OMEMO 2,
/// `prekey` in OMEMO 0.3). Panics if there is no key for that device.
fn key_is_kex(xml: &str, ns: &str, rid: u32) -> bool {
    let flag = if ns == OMEMO2 { "kex" } else { "prekey" };
    let rid = rid.to_string();
    let tag = key_tags(xml)
        .into_iter()
        .find(|a| a.iter().any(|(n, v)| n == "rid" && *v == rid))
        .unwrap_or_else(|| panic!("no <key rid='{rid}'> in {xml}"));
    tag.iter()
        .any(|(n, v)| n == flag && (v == "true" || v == "1"))
}

/// The `rid`s of all `<key>` elements in `xml`, sorted.
fn key_rids(xml: &str) -> Vec<u32> {
    let mut v: Vec<u32> = key_tags(xml)
        .iter()
        .filter_map(|a| {
            a.iter()
                .find(|(n, _)| n == "rid")
                .map(|(_, v)| v.parse().expect("rid"))
        })
        .collect();
    v.sort_unstable();
    v
}

/// The device ids in a `<list>`/`<devices>` element, sorted.
fn list_ids(xml: &str) -> Vec<u32> {
    let mut v = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find("<device ") {
        let after = &rest[i + 8..];
        let end = after.find('>').expect("unterminated <device>");
        let tag = &after[..end];
        let at = tag.find("id=").expect("<device> without id");
        let q = tag[at + 3..].chars().next().unwrap();
        let val = &tag[at + 4..];
        v.push(val[..val.find(q).unwrap()].parse().expect("device id"));
        rest = &after[end..];
    }
    v.sort_unstable();
    v
}

/// The pre key ids in a bundle, sorted (`<pk id>` in OMEMO 2, `<preKeyPublic preKeyId>` in 0.3).
fn prekey_ids(xml: &str, ns: &str) -> Vec<u32> {
    let (open, attr) = if ns == OMEMO2 {
        ("<pk ", "id=")
    } else {
        ("<preKeyPublic ", "preKeyId=")
    };
    let mut v = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(open) {
        let after = &rest[i + open.len()..];
        let end = after.find('>').expect("unterminated tag");
        let tag = &after[..end];
        let at = tag.find(attr).expect("pre key without id");
        let q = tag[at + attr.len()..].chars().next().unwrap();
        let val = &tag[at + attr.len() + 1..];
        v.push(val[..val.find(q).unwrap()].parse().expect("pre key id"));
        rest = &after[end..];
    }
    v.sort_unstable();
    v
}

/// An omemod daemon with one account.
struct Om {
    _daemon: Daemon,
    c: Client,
    jid: String,
    dev: u32,
    fingerprint: String,
}

impl Om {
    fn start(jid: &str) -> Om {
        let daemon = Daemon::start();
        let mut c = daemon.client();
        let acct = c.ok("account.create", json!({"jid": jid}));
        let dev = acct["device_id"].as_u64().expect("device_id") as u32;
        let fingerprint = fp(acct["fingerprint"].as_str().expect("fingerprint"));
        Om {
            _daemon: daemon,
            c,
            jid: jid.to_owned(),
            dev,
            fingerprint,
        }
    }
}

/// python-omemo's own fingerprint (hex of the Curve25519 form), via its `devices` command.
fn py_fingerprint(py: &mut PyPeer) -> String {
    let jid = py.jid.clone();
    let dev = py.device_id;
    py_device_info(py, &jid, dev)["fingerprint"]
        .as_str()
        .map(fp)
        .expect("fingerprint")
}

/// python-omemo's view of device `dev` of `jid`.
fn py_device_info(py: &mut PyPeer, jid: &str, dev: u32) -> Value {
    let r = py.ok(json!({"cmd": "devices", "jid": jid}));
    r["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .find(|d| d["device_id"] == dev)
        .cloned()
        .unwrap_or_else(|| panic!("python-omemo does not know device {jid}/{dev}: {r}"))
}

/// omemod learns python-omemo's device list and bundle in `ns`, from the peer's own published XML.
/// Returns `bundle.update`'s result.
fn om_learns_py(om: &mut Om, py: &mut PyPeer, ns: &str) -> Value {
    let list = py.devicelist(ns);
    assert!(
        list_ids(&list).contains(&py.device_id),
        "python's own {ns} list lacks itself: {list}"
    );
    let r = om.c.ok(
        "devicelist.update",
        json!({"jid": py.jid, "namespace": ns, "xml": list}),
    );
    let ids: Vec<u32> = serde_json::from_value(r["device_ids"].clone()).expect("device_ids");
    assert!(
        ids.contains(&py.device_id),
        "omemod did not read python's device {} from its {} list {list}: {r}",
        py.device_id,
        short(ns)
    );
    om_learns_py_bundle(om, py, ns)
}

/// omemod (re-)learns python-omemo's current bundle in `ns`.
fn om_learns_py_bundle(om: &mut Om, py: &mut PyPeer, ns: &str) -> Value {
    let b = py.ok(json!({"cmd": "bundle", "ns": ns}));
    assert_eq!(b["device_id"], py.device_id);
    om.c.ok(
        "bundle.update",
        json!({"jid": py.jid, "namespace": ns, "device_id": py.device_id, "xml": b["xml"]}),
    )
}

/// python-omemo learns omemod's device list and bundle in `ns`, from omemod's publishable XML.
fn py_learns_om(py: &mut PyPeer, om: &mut Om, ns: &str) {
    let list = om.c.devicelist(ns);
    assert_eq!(list["namespace"], ns);
    assert_eq!(list["device_id"], om.dev);
    let r = py.ok(json!({"cmd": "add_devicelist", "jid": om.jid, "ns": ns, "xml": list["xml"]}));
    let ids: Vec<u32> = serde_json::from_value(r["device_ids"].clone()).expect("device_ids");
    assert!(
        ids.contains(&om.dev),
        "python-omemo did not read omemod's device {} from its {} list {}: {r}",
        om.dev,
        short(ns),
        list["xml"]
    );
    py_learns_om_bundle(py, om, ns);
}

/// python-omemo (re-)learns omemod's current bundle in `ns`.
fn py_learns_om_bundle(py: &mut PyPeer, om: &mut Om, ns: &str) {
    let b = om.c.bundle(ns);
    assert_eq!(b["device_id"], om.dev);
    assert_eq!(b["namespace"], ns);
    py.ok(
        json!({"cmd": "add_bundle", "jid": om.jid, "device_id": om.dev, "ns": ns, "xml": b["xml"]}),
    );
}

/// Two parties: one omemod account, one python-omemo device, each knowing the other in `nss`.
struct Pair {
    om: Om,
    py: PyPeer,
    ns: &'static str,
}

impl Pair {
    fn new(ns: &'static str) -> Pair {
        Self::with(ns, &[ns])
    }

    fn with(ns: &'static str, nss: &[&str]) -> Pair {
        let mut om = Om::start(OM_JID);
        let mut py = PyPeer::start(PY_JID);
        for n in nss {
            om_learns_py(&mut om, &mut py, n);
            py_learns_om(&mut py, &mut om, n);
        }
        Pair { om, py, ns }
    }

    /// omemod encrypts `body` to python in this pair's namespace; checks the per-device report and
    /// returns the XML and whether python's key is a key exchange (checked against the XML).
    fn om_send(&mut self, body: &str) -> (String, bool) {
        om_send_to(
            &mut self.om,
            &[PY_JID],
            &[(PY_JID, self.py.device_id)],
            body,
            self.ns,
        )
    }

    /// python encrypts `body` to omemod in this pair's namespace; returns the XML.
    fn py_send(&mut self, body: &str) -> String {
        py_send_to(&mut self.py, &[OM_JID], &[self.om.dev], body, self.ns)
    }

    /// python decrypts omemod's message and must find `body`.
    fn py_recv(&mut self, xml: &str, body: &str) -> Value {
        py_recv_from(&mut self.py, &self.om, xml, Some(body), self.ns)
    }

    /// omemod decrypts python's message and must find `body`.
    fn om_recv(&mut self, xml: &str, body: &str) -> Value {
        om_recv_from(&mut self.om, &self.py, xml, Some(body), self.ns)
    }

    /// Drains python-omemo's outbox; every queued message must be an empty message to omemod in
    /// this namespace, and omemod must decrypt each as empty. Returns how many there were.
    fn deliver_py_outbox(&mut self) -> usize {
        deliver_outbox(&mut self.py, &mut self.om, self.ns)
    }
}

/// omemod encrypts `body` to the JIDs `to` in `ns`; `expect` lists every (jid, device) that must
/// get a key. Returns the XML and whether the keys are key exchanges (all must agree).
fn om_send_to(
    om: &mut Om,
    to: &[&str],
    expect: &[(&str, u32)],
    body: &str,
    ns: &str,
) -> (String, bool) {
    let r = om.c.ok(
        "encrypt",
        json!({"to": to, "body": body, "namespaces": [ns]}),
    );
    let msgs = r["messages"].as_array().expect("messages");
    assert_eq!(
        msgs.len(),
        1,
        "omemod encrypt to {to:?} in {}: one element expected: {r}",
        short(ns)
    );
    assert_eq!(msgs[0]["namespace"], ns, "{r}");
    let xml = msgs[0]["xml"].as_str().expect("xml").to_owned();
    let devices = r["devices"].as_array().expect("devices");
    assert_eq!(
        devices.len(),
        expect.len(),
        "omemod encrypt: one report per device expected: {r}"
    );
    let mut kex = None;
    for (jid, dev) in expect {
        let rep = devices
            .iter()
            .find(|d| d["jid"] == *jid && d["device_id"] == *dev)
            .unwrap_or_else(|| panic!("omemod encrypt: no report for {jid}/{dev}: {r}"));
        assert_eq!(
            rep["status"], "encrypted",
            "omemod did not encrypt for {jid}/{dev}: {r}"
        );
        assert_eq!(rep["namespace"], ns, "{r}");
        let k = rep["kex"].as_bool().expect("kex");
        assert_eq!(
            k,
            key_is_kex(&xml, ns, *dev),
            "omemod's report says kex={k} for {jid}/{dev} but its XML disagrees: {xml}"
        );
        assert!(kex.is_none() || kex == Some(k), "mixed kex flags: {r}");
        kex = Some(k);
    }
    let mut want: Vec<u32> = expect.iter().map(|(_, d)| *d).collect();
    want.sort_unstable();
    assert_eq!(
        key_rids(&xml),
        want,
        "omemod's element must hold exactly one key per device: {xml}"
    );
    (xml, kex.expect("at least one device"))
}

/// python encrypts `body` to `to` (forced to `ns`); `rids` are the devices that must get a key.
fn py_send_to(py: &mut PyPeer, to: &[&str], rids: &[u32], body: &str, ns: &str) -> String {
    let r = py.ok(json!({"cmd": "encrypt", "to": to, "body": body, "ns": [ns]}));
    assert_eq!(
        r["errors"],
        json!([]),
        "python-omemo encrypt had per-device errors: {r}"
    );
    let msgs = r["messages"].as_object().expect("messages");
    assert_eq!(
        msgs.len(),
        1,
        "python-omemo: one {} element expected: {r}",
        short(ns)
    );
    let xml = msgs[ns]
        .as_str()
        .unwrap_or_else(|| panic!("no {ns} element: {r}"))
        .to_owned();
    for rid in rids {
        assert!(
            key_rids(&xml).contains(rid),
            "python's element has no key for {rid}: {xml}"
        );
    }
    xml
}

/// python decrypts `xml` from omemod's `om`; checks the sender, the namespace, the body (`None`:
/// must be empty) and, for OMEMO 2, the SCE affixes.
fn py_recv_from(py: &mut PyPeer, om: &Om, xml: &str, body: Option<&str>, ns: &str) -> Value {
    let r = py.cmd(json!({"cmd": "decrypt", "from": om.jid, "xml": xml}));
    assert_eq!(
        r["ok"], true,
        "python-omemo ({}/{}) could not decrypt omemod's {} message (expected body {body:?}): {r}\nmessage: {xml}",
        py.jid, py.device_id, short(ns)
    );
    assert_eq!(r["ns"], ns, "{r}");
    assert_eq!(
        r["sender_device_id"], om.dev,
        "python saw the wrong sender device: {r}"
    );
    match body {
        Some(b) => {
            assert_eq!(
                r["empty"], false,
                "python-omemo decrypted an empty message, expected {b:?}: {r}"
            );
            assert_eq!(r["body"], b, "python-omemo decrypted the wrong body: {r}");
            if ns == OMEMO2 {
                assert_eq!(
                    r["sce_from"], om.jid,
                    "SCE <from> of omemod's envelope: {r}"
                );
                assert_eq!(r["sce_to"], py.jid, "SCE <to> of omemod's envelope: {r}");
            }
        }
        None => {
            assert_eq!(
                r["empty"], true,
                "python-omemo expected an empty message: {r}"
            );
            assert_eq!(r["body"], Value::Null, "{r}");
        }
    }
    r
}

/// omemod decrypts `xml` from python's `py`; checks sender, namespace, body (`None`: empty) and,
/// for OMEMO 2, the SCE affixes. Returns the whole result.
fn om_recv_from(om: &mut Om, py: &PyPeer, xml: &str, body: Option<&str>, ns: &str) -> Value {
    let r = om.c.decrypt(&py.jid, xml).unwrap_or_else(|e| {
        panic!(
            "omemod ({}) could not decrypt python's {} message (expected body {body:?}): {e}\nmessage: {xml}",
            om.jid,
            short(ns)
        )
    });
    assert_eq!(r["namespace"], ns, "{r}");
    assert_eq!(r["sender"]["jid"], py.jid, "{r}");
    assert_eq!(
        r["sender"]["device_id"], py.device_id,
        "omemod saw the wrong sender device: {r}"
    );
    match body {
        Some(b) => {
            assert_eq!(
                r["empty"], false,
                "omemod decrypted an empty message, expected {b:?}: {r}"
            );
            assert_eq!(r["body"], b, "omemod decrypted the wrong body: {r}");
            if ns == OMEMO2 {
                assert_eq!(
                    r["envelope"]["from"], py.jid,
                    "SCE <from> of python's envelope: {r}"
                );
                assert_eq!(
                    r["envelope"]["to"], om.jid,
                    "SCE <to> of python's envelope: {r}"
                );
            }
        }
        None => {
            assert_eq!(r["empty"], true, "omemod expected an empty message: {r}");
            assert!(
                r.get("body").is_none_or(|b| b.is_null()),
                "empty message with a body: {r}"
            );
        }
    }
    r
}

/// Drains `py`'s outbox into omemod: each message must be an empty message to `om` in `ns`.
fn deliver_outbox(py: &mut PyPeer, om: &mut Om, ns: &str) -> usize {
    let r = py.ok(json!({"cmd": "outbox"}));
    let msgs = r["messages"].as_array().expect("messages").clone();
    for m in &msgs {
        assert_eq!(
            m["to"], om.jid,
            "python-omemo queued a message to someone else: {r}"
        );
        assert_eq!(
            m["ns"], ns,
            "python-omemo queued a message in another namespace: {r}"
        );
        let xml = m["xml"].as_str().expect("xml");
        let d = om_recv_from(om, py, xml, None, ns);
        assert_eq!(
            d["key_exchange"], false,
            "python's empty message must not be a key exchange: {d}"
        );
    }
    msgs.len()
}

/// The `send_heartbeat` actions in a decrypt result.
fn heartbeat_actions(r: &Value) -> Vec<Value> {
    r["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter(|a| a["type"] == "send_heartbeat")
        .cloned()
        .collect()
}

/// omemod decrypting `xml` must fail with `kind`.
/// An element omemod decrypted before: a redelivery (same answer, no actions).
fn om_redelivers(om: &mut Om, from: &str, xml: &str, what: &str) {
    match om.c.decrypt(from, xml) {
        Ok(v) => {
            assert_eq!(v["redelivered"], true, "{what} decrypted anew: {v}");
            assert_eq!(v["actions"], serde_json::json!([]), "{what}: {v}");
        }
        Err(e) => panic!("omemod refused {what}: {e}"),
    }
}

fn om_rejects(om: &mut Om, from: &str, xml: &str, kind: &str, what: &str) {
    match om.c.decrypt(from, xml) {
        Ok(v) => panic!("omemod accepted {what}, expected {kind}: {v}"),
        Err(e) => assert_eq!(
            e["data"]["kind"], kind,
            "omemod rejected {what} with the wrong kind: {e}"
        ),
    }
}

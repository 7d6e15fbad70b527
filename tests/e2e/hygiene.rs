//! Device hygiene (issue 20): a device we keep writing to without hearing from it becomes stale
//! once both thresholds are passed — on the daemon's clock, moved here by `debug.clock` — and is
//! left out of fan-out (its report and `encrypt.plan` say `stale`) until it writes again; our own
//! stale device is offered for removal, which the client does with `devicelist.get {remove}`.

use super::support::*;
use serde_json::{json, Value};

const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@example.org";
const DAY: i64 = 86_400;

fn list_xml(ids: &[u32]) -> String {
    let devices: String = ids.iter().map(|i| format!("<device id='{i}'/>")).collect();
    format!("<devices xmlns='{OMEMO2}'>{devices}</devices>")
}

/// The report of device `id` in an `encrypt` or `encrypt.plan` answer.
fn device(r: &Value, id: u32) -> &Value {
    r["devices"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["device_id"] == id))
        .unwrap_or_else(|| panic!("no device {id}: {r}"))
}

/// Device ids that got a key in `encrypt`'s answer.
fn keyed(r: &Value) -> Vec<u32> {
    let mut ids: Vec<u32> = r["messages"][0]["element"]["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|k| k["rid"].as_u64().unwrap() as u32)
        .collect();
    ids.sort_unstable();
    ids
}

/// One daemon per device: alice (the one under test, with a movable clock), alice's other
/// device, bob's phone (answers) and bob's old laptop (silent).
struct World {
    _ds: Vec<Daemon>,
    a: Client,
    a2: Client,
    b1: Client,
    b2: Client,
    ids: [u32; 4],
}

fn world() -> World {
    let da = Daemon::start_with(&[
        "--enable-debug-methods",
        "--stale-after-unanswered",
        "3",
        "--stale-after-silence",
        "10d",
    ]);
    let (da2, db1, db2) = (Daemon::start(), Daemon::start(), Daemon::start());
    let (mut a, mut a2, mut b1, mut b2) = (da.client(), da2.client(), db1.client(), db2.client());
    let ids = [
        a.create_account(ALICE),
        a2.create_account(ALICE),
        b1.create_account(BOB),
        b2.create_account(BOB),
    ];
    // Everyone knows both lists and every bundle.
    let mut all = [&mut a, &mut a2, &mut b1, &mut b2];
    let lists = [(ALICE, list_xml(&ids[..2])), (BOB, list_xml(&ids[2..]))];
    let bundles: Vec<(&str, Value)> = (0..4)
        .map(|i| ([ALICE, ALICE, BOB, BOB][i], all[i].bundle(OMEMO2)))
        .collect();
    for c in all.iter_mut() {
        for (jid, xml) in &lists {
            c.ok(
                "devicelist.update",
                json!({"jid": jid, "namespace": OMEMO2, "xml": xml}),
            );
        }
        for (jid, b) in &bundles {
            c.call(
                "bundle.update",
                json!({"jid": jid, "namespace": OMEMO2, "device_id": b["device_id"], "xml": b["xml"]}),
            )
            .ok();
        }
    }
    World {
        _ds: vec![da, da2, db1, db2],
        a,
        a2,
        b1,
        b2,
        ids,
    }
}

fn send(a: &mut Client, body: &str) -> Value {
    a.ok(
        "encrypt",
        json!({"to": [BOB], "body": body, "namespaces": [OMEMO2]}),
    )
}

#[test]
fn stale_devices_leave_fan_out_until_heard_from_and_ours_are_offered_for_removal() {
    let mut w = world();
    let [me, mine, phone, laptop] = w.ids;
    // bob's phone answers every message; his laptop and alice's other device never do.
    for i in 0..4 {
        let r = send(&mut w.a, &format!("m{i}"));
        assert_eq!(keyed(&r), {
            let mut v = vec![mine, phone, laptop];
            v.sort_unstable();
            v
        });
        let xml = r["messages"][0]["xml"].as_str().unwrap().to_owned();
        w.b1.ok("decrypt", json!({"from": ALICE, "xml": xml, "to": BOB}));
        let back = w.b1.encrypt_xml(&[ALICE], Some("ok"), OMEMO2);
        w.a.ok("decrypt", json!({"from": BOB, "xml": back, "to": ALICE}));
    }
    // Past the count but not the silence: still in.
    let plan =
        w.a.ok("encrypt.plan", json!({"to": [BOB], "namespaces": [OMEMO2]}));
    assert_eq!(device(&plan, laptop)["status"], "session", "{plan}");
    let _ = w.a.ok("debug.clock", json!({"advance_secs": 11 * DAY}));
    // Now the laptop and alice's other device are stale, the phone (it answered) is not.
    let r = send(&mut w.a, "after eleven days");
    assert_eq!(keyed(&r), vec![phone], "{r}");
    assert_eq!(device(&r, laptop)["status"], "stale", "{r}");
    assert!(
        device(&r, laptop)["reason"]
            .as_str()
            .unwrap()
            .contains("11 days"),
        "{r}"
    );
    assert!(device(&r, laptop).get("action").is_none(), "{r}");
    let offer = json!({"type": "offer_device_removal", "namespace": OMEMO2, "device_id": mine});
    assert_eq!(device(&r, mine)["status"], "stale", "{r}");
    assert_eq!(device(&r, mine)["action"], offer, "{r}");
    assert!(r["actions"].as_array().unwrap().contains(&offer), "{r}");
    // encrypt.plan and devices.list say the same; the plan needs nothing fetched.
    let plan =
        w.a.ok("encrypt.plan", json!({"to": [BOB], "namespaces": [OMEMO2]}));
    assert_eq!(device(&plan, laptop)["status"], "stale", "{plan}");
    assert_eq!(device(&plan, mine)["action"], offer, "{plan}");
    assert_eq!(device(&plan, phone)["status"], "session", "{plan}");
    assert_eq!(plan["ready"], true, "{plan}");
    let list = w.a.ok("devices.list", json!({}));
    let stale: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["stale"] == true)
        .map(|d| d["device_id"].as_u64().unwrap())
        .collect();
    assert_eq!(stale.len(), 2, "{list}");
    assert!(
        stale.contains(&u64::from(laptop)) && stale.contains(&u64::from(mine)),
        "{list}"
    );
    // The laptop writes: it is back at once.
    let hello =
        w.b2.encrypt_xml(&[ALICE], Some("back from holiday"), OMEMO2);
    let d =
        w.a.ok("decrypt", json!({"from": BOB, "xml": hello, "to": ALICE}));
    assert_eq!(d["body"], "back from holiday");
    let r = send(&mut w.a, "welcome back");
    assert_eq!(keyed(&r), {
        let mut v = vec![phone, laptop];
        v.sort_unstable();
        v
    });
    // Removing our stale device is the user's call: the list to publish without it.
    let without = w.a.ok(
        "devicelist.get",
        json!({"namespace": OMEMO2, "remove": [mine]}),
    );
    let xml = without["xml"].as_str().unwrap();
    assert!(xml.contains(&format!("id='{me}'")), "{xml}");
    assert!(!xml.contains(&format!("id='{mine}'")), "{xml}");
    // Never this very device.
    w.a.err(
        "devicelist.get",
        json!({"namespace": OMEMO2, "remove": [me]}),
        "invalid_params",
    );
    // Nothing was removed by itself: the published-list source still has it.
    let full = w.a.ok("devicelist.get", json!({"namespace": OMEMO2}));
    assert!(
        full["xml"]
            .as_str()
            .unwrap()
            .contains(&format!("id='{mine}'")),
        "{full}"
    );
    // Our other device writes (its copy to us): back in too. Like a client, it fetches our
    // bundle before it starts the session: the one from the start may offer the prekey the
    // laptop's key exchange used (1 run in 100 failed with "prekey already used").
    let fresh = w.a.bundle(OMEMO2);
    w.a2.ok(
        "bundle.update",
        json!({"jid": ALICE, "namespace": OMEMO2, "device_id": fresh["device_id"], "xml": fresh["xml"]}),
    );
    let carbon = w.a2.encrypt_xml(&[BOB], Some("from my tablet"), OMEMO2);
    w.a.ok("decrypt", json!({"from": ALICE, "xml": carbon, "to": BOB}));
    let r = send(&mut w.a, "all back");
    assert!(keyed(&r).contains(&mine), "{r}");
}

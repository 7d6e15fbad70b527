//! Events pushed to a subscribed connection ([`Pushed`]) and the actions in call results
//! ([`Event`]): they share their names.

use std::fmt;

use serde::Deserialize;
use serde_json::Value;

/// An event pushed to a subscriber.
///
/// ```no_run
/// # async fn demo(client: &omemod_client::Client) -> Result<(), omemod_client::Error> {
/// use omemod_client::Event;
/// let mut events = client.take_events().expect("taken once");
/// client.subscribe().await?;
/// while let Some(pushed) = events.recv().await {
///     match pushed.event {
///         // Someone else's call caused it, and its caller does it: only take note.
///         _ if pushed.in_answer => println!("noted: {}", pushed.event),
///         Event::PublishBundle { namespace } => println!("publish our {namespace} bundle"),
///         other => println!("to do: {other}"),
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Pushed {
    /// What happened.
    pub event: Event,
    /// The call that caused it got it as an action, and its caller does it: only take note.
    /// (Older daemons do not say: false.)
    pub in_answer: bool,
    /// Why it happened (newer daemons), e.g. `prekey_used`, `new_session`.
    pub cause: Option<String>,
    /// The subscription it came through (the id `subscribe` returned).
    pub subscription: Option<u64>,
    /// The event object as the daemon sent it, every field included.
    pub raw: Value,
}

impl Pushed {
    /// The `params` of an `event` notification: `{subscription, event}`.
    pub(crate) fn from_params(mut params: Value) -> Pushed {
        let raw = params.get_mut("event").map(Value::take).unwrap_or_default();
        Pushed {
            in_answer: raw["in_answer"].as_bool().unwrap_or(false),
            cause: raw["cause"].as_str().map(str::to_owned),
            subscription: params["subscription"].as_u64(),
            event: Event::from(raw.clone()),
            raw,
        }
    }
}

/// An event, or an action in a call's result (they share names). Older daemons' names
/// (`bundle_changed`, `heartbeat_due`) map onto the action names; anything else is kept as
/// [`Event::Other`], never an error.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "Value")]
#[non_exhaustive]
pub enum Event {
    PublishBundle {
        namespace: String,
    },
    PublishDevicelist {
        namespace: String,
    },
    SendHeartbeat {
        jid: String,
        namespace: String,
        device_id: u32,
    },
    FetchBundle {
        jid: String,
        namespace: String,
        device_id: u32,
        node: String,
        item_id: String,
    },
    FetchDevicelist {
        jid: String,
        namespace: String,
        node: String,
    },
    DevicelistChanged {
        jid: String,
        namespace: String,
        device_ids: Vec<u32>,
    },
    TrustDecisionNeeded {
        jid: String,
        device_id: u32,
        fingerprint: String,
    },
    EventsLost {
        missed: u64,
    },
    /// Our own device `device_id` is stale: ask the user whether to remove it from our
    /// `namespace` device list (then publish [`crate::Client::devicelist_without`]).
    OfferDeviceRemoval {
        namespace: String,
        device_id: u32,
    },
    /// A type this client does not know (or a known one with unexpected fields).
    Other(Value),
}

impl From<Value> for Event {
    fn from(v: Value) -> Event {
        let s = |k: &str| v[k].as_str().map(str::to_owned);
        let n = |k: &str| v[k].as_u64();
        // Action fields say `jid`, event fields `peer`.
        let jid = s("jid").or_else(|| s("peer"));
        let ns = s("namespace");
        let id = n("device_id").and_then(|d| u32::try_from(d).ok());
        let parsed = match v["type"].as_str().unwrap_or("") {
            "publish_bundle" | "bundle_changed" => {
                ns.map(|namespace| Event::PublishBundle { namespace })
            }
            "publish_devicelist" => ns.map(|namespace| Event::PublishDevicelist { namespace }),
            "send_heartbeat" | "heartbeat_due" => match (jid, ns, id) {
                (Some(jid), Some(namespace), Some(device_id)) => Some(Event::SendHeartbeat {
                    jid,
                    namespace,
                    device_id,
                }),
                _ => None,
            },
            "fetch_bundle" => match (jid, ns, id, s("node"), s("item_id")) {
                (Some(jid), Some(namespace), Some(device_id), Some(node), Some(item_id)) => {
                    Some(Event::FetchBundle {
                        jid,
                        namespace,
                        device_id,
                        node,
                        item_id,
                    })
                }
                _ => None,
            },
            "fetch_devicelist" => match (jid, ns, s("node")) {
                (Some(jid), Some(namespace), Some(node)) => Some(Event::FetchDevicelist {
                    jid,
                    namespace,
                    node,
                }),
                _ => None,
            },
            "devicelist_changed" => {
                let ids = serde_json::from_value(v["device_ids"].clone()).ok();
                match (jid, ns, ids) {
                    (Some(jid), Some(namespace), Some(device_ids)) => {
                        Some(Event::DevicelistChanged {
                            jid,
                            namespace,
                            device_ids,
                        })
                    }
                    _ => None,
                }
            }
            "trust_decision_needed" => match (jid, id, s("fingerprint")) {
                (Some(jid), Some(device_id), Some(fingerprint)) => {
                    Some(Event::TrustDecisionNeeded {
                        jid,
                        device_id,
                        fingerprint,
                    })
                }
                _ => None,
            },
            "events_lost" => n("missed").map(|missed| Event::EventsLost { missed }),
            "offer_device_removal" => match (ns, id) {
                (Some(namespace), Some(device_id)) => Some(Event::OfferDeviceRemoval {
                    namespace,
                    device_id,
                }),
                _ => None,
            },
            _ => None,
        };
        parsed.unwrap_or(Event::Other(v))
    }
}

impl fmt::Display for Event {
    /// One line saying what the client should do.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::PublishBundle { namespace } => {
                write!(f, "publish_bundle: publish our {namespace} bundle (bundle.get)")
            }
            Event::PublishDevicelist { namespace } => write!(
                f,
                "publish_devicelist: publish our {namespace} device list (devicelist.get)"
            ),
            Event::SendHeartbeat { jid, device_id, .. } => write!(
                f,
                "send_heartbeat: send an empty message to {jid} device {device_id} (heartbeat)"
            ),
            Event::FetchBundle {
                jid, node, item_id, ..
            } => write!(
                f,
                "fetch_bundle: fetch {jid}'s bundle from {node} item {item_id}, then bundle.update"
            ),
            Event::FetchDevicelist { jid, node, .. } => write!(
                f,
                "fetch_devicelist: fetch {jid}'s device list from {node}, then devicelist.update"
            ),
            Event::DevicelistChanged {
                jid,
                namespace,
                device_ids,
            } => write!(
                f,
                "devicelist_changed: {jid}'s {namespace} devices are now {device_ids:?}"
            ),
            Event::TrustDecisionNeeded {
                jid,
                device_id,
                fingerprint,
            } => write!(
                f,
                "trust_decision_needed: {jid} device {device_id} has key {fingerprint}: decide with trust.set"
            ),
            Event::EventsLost { missed } => write!(
                f,
                "events_lost: {missed} events were lost: re-read the state you need"
            ),
            Event::OfferDeviceRemoval {
                namespace,
                device_id,
            } => write!(
                f,
                "offer_device_removal: our device {device_id} is stale: ask the user whether to remove it from our {namespace} device list (devicelist.get with remove)"
            ),
            Event::Other(v) => write!(f, "{}: {v}", v["type"].as_str().unwrap_or("?")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OMEMO2;
    use serde_json::json;

    #[test]
    fn old_and_new_event_names_parse_alike() {
        let old = json!({"type": "heartbeat_due", "account": "a@x", "peer": "b@x",
            "namespace": OMEMO2, "device_id": 7});
        let new = json!({"type": "send_heartbeat", "account": "a@x", "jid": "b@x",
            "namespace": OMEMO2, "device_id": 7, "cause": "decrypt"});
        assert_eq!(Event::from(old), Event::from(new.clone()));
        assert!(matches!(
            Event::from(new),
            Event::SendHeartbeat { device_id: 7, .. }
        ));
    }

    #[test]
    fn the_offer_to_remove_a_stale_device_names_it() {
        let v = json!({"type": "offer_device_removal", "namespace": OMEMO2, "device_id": 9});
        assert_eq!(
            Event::from(v),
            Event::OfferDeviceRemoval {
                namespace: OMEMO2.into(),
                device_id: 9
            }
        );
    }

    #[test]
    fn unknown_or_incomplete_events_are_kept() {
        let odd = json!({"type": "identity_changed", "jid": "b@x"});
        assert_eq!(Event::from(odd.clone()), Event::Other(odd));
        let short = json!({"type": "fetch_bundle", "jid": "b@x"});
        assert_eq!(Event::from(short.clone()), Event::Other(short));
    }

    #[test]
    fn a_pushed_event_keeps_every_field() {
        let event = json!({"type": "publish_bundle", "account": "a@x", "namespace": OMEMO2,
            "in_answer": true, "cause": "prekey_used", "device_id": 5});
        let p = Pushed::from_params(json!({"subscription": 3, "event": event.clone()}));
        assert_eq!(p.subscription, Some(3));
        assert!(p.in_answer);
        assert_eq!(p.cause.as_deref(), Some("prekey_used"));
        assert_eq!(
            p.event,
            Event::PublishBundle {
                namespace: OMEMO2.into()
            }
        );
        assert_eq!(p.raw, event);
    }
}

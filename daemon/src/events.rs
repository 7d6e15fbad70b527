//! What a client should do after a call ([`Action`]), the events the daemon pushes to subscribed
//! clients ([`Event`]), and the bus that carries them. The session manager produces both and the
//! RPC layer carries them; this module imports neither.
//!
//! Producers (the session manager) call [`EventBus::emit`]; it never blocks. Each subscription on
//! each connection reads the bus through its own receiver; a receiver that falls more than
//! [`EVENT_BUS_CAPACITY`] events behind loses the oldest ones and its client gets an `events_lost`
//! notification instead of stalling the daemon.

use protocol_core::version::Version;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::broadcast;

/// What a client should do after a call (also pushed as events to subscribers).
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    /// Publish our bundle in `namespace` again (`bundle.get` gives it).
    PublishBundle {
        /// Namespace.
        #[schemars(with = "String")]
        namespace: Version,
    },
    /// Publish our device list in `namespace` again (`devicelist.get` gives it).
    PublishDevicelist {
        /// Namespace.
        #[schemars(with = "String")]
        namespace: Version,
    },
    /// Send an empty message to this device (`heartbeat` builds it).
    SendHeartbeat {
        /// Peer JID.
        jid: String,
        /// Namespace.
        #[schemars(with = "String")]
        namespace: Version,
        /// Device id.
        device_id: u32,
    },
    /// Fetch this device's bundle and pass it to `bundle.update`.
    FetchBundle {
        /// Peer JID.
        jid: String,
        /// Namespace.
        #[schemars(with = "String")]
        namespace: Version,
        /// Device id.
        device_id: u32,
        /// PubSub node.
        node: String,
        /// Item id.
        item_id: String,
    },
    /// Fetch this JID's device list and pass it to `devicelist.update`.
    FetchDevicelist {
        /// Peer JID.
        jid: String,
        /// Namespace.
        #[schemars(with = "String")]
        namespace: Version,
        /// PubSub node.
        node: String,
    },
}

impl Action {
    /// Fetch `jid`'s device list in `namespace`, from its PubSub node.
    pub fn fetch_devicelist(jid: &str, namespace: Version) -> Self {
        Action::FetchDevicelist {
            jid: jid.to_owned(),
            namespace,
            node: namespace.devicelist_node().to_owned(),
        }
    }

    /// Fetch the bundle of `jid`'s device `device_id` in `namespace`, from its PubSub node.
    pub fn fetch_bundle(jid: &str, namespace: Version, device_id: u32) -> Self {
        let (node, item_id) = namespace.bundle_node(device_id);
        Action::FetchBundle {
            jid: jid.to_owned(),
            namespace,
            device_id,
            node,
            item_id,
        }
    }
}

/// How many events the bus keeps for slow subscribers before they lag.
pub const EVENT_BUS_CAPACITY: usize = 1024;

/// Why an event (or action) came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The account was just created.
    AccountCreated,
    /// A key exchange used one of our one-time prekeys (the bundle lost it and was refilled).
    PrekeyUsed,
    /// Our signed prekey was rotated (hourly maintenance; no call caused it).
    SignedPrekeyRotated,
    /// A key exchange built a new session: the peer needs an empty message to stop sending
    /// key exchanges.
    NewSession,
    /// The peer sent many messages without an answer from us.
    LongChain,
    /// Catch-up ended: heartbeats deferred meanwhile are due.
    CatchupEnded,
    /// A message came from a device not on its owner's device list.
    UnknownDevice,
    /// A recipient has no known device in a namespace.
    NoDevicelist,
    /// A device has no session and no stored bundle.
    NoBundle,
    /// A device list (`devicelist.update`) added devices.
    NewDevice,
    /// Our own device list lacks this device.
    OwnDeviceMissing,
    /// A device list was updated with different contents.
    DevicelistUpdated,
    /// An identity key was seen for the first time.
    NewIdentity,
    /// `account.renew_device_id` gave the account a new device id.
    DeviceIdRenewed,
    /// Our device's label changed (`account.set_label`), or our published OMEMO 2 device list
    /// carries another label for it: the list is to be published again.
    LabelChanged,
    /// A key exchange carried another identity key than the one held for its device (it was
    /// refused).
    KeyExchange,
    /// A fetched bundle (`bundle.update`) carried another identity key than the one held for
    /// its device (it was set aside).
    BundleUpdate,
    /// The database was found to be an older copy (a restored backup, a copy put back): our
    /// bundle changed, and sessions restored from the copy are replaced.
    Rollback,
    /// `debug.emit` (tests).
    Test,
}

/// Something that happened, which a client may want to react to. Serialized with a `type` tag:
/// `{"type": "publish_bundle", "account": …, "cause": …, …}`. The types named like an action
/// (`publish_bundle`, `publish_devicelist`, `send_heartbeat`, `fetch_bundle`,
/// `fetch_devicelist`) carry that action's fields; `in_answer` tells whether the same action was
/// returned to the call that caused it (then that caller performs it, and other subscribers only
/// take note).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Event {
    /// Our bundle changed and should be published.
    PublishBundle {
        /// Our account's bare JID.
        account: String,
        /// Why.
        cause: Cause,
        /// Also in the `actions` of the answer to the call that caused it.
        in_answer: bool,
        /// The OMEMO namespace the bundle belongs to.
        #[schemars(schema_with = "namespace_schema")]
        namespace: Version,
        /// Our device id.
        device_id: u32,
    },
    /// Our device list should be published again.
    PublishDevicelist {
        /// Our account's bare JID.
        account: String,
        /// Why.
        cause: Cause,
        /// Also in the `actions` of the answer to the call that caused it.
        in_answer: bool,
        /// The OMEMO namespace of the list.
        #[schemars(schema_with = "namespace_schema")]
        namespace: Version,
    },
    /// A session needs an empty (heartbeat) message.
    SendHeartbeat {
        /// Our account's bare JID.
        account: String,
        /// Why.
        cause: Cause,
        /// Also in the `actions` of the answer to the call that caused it.
        in_answer: bool,
        /// The peer's bare JID.
        jid: String,
        /// The OMEMO namespace of the session.
        #[schemars(schema_with = "namespace_schema")]
        namespace: Version,
        /// The peer device.
        device_id: u32,
    },
    /// A device's bundle should be fetched and passed to `bundle.update`.
    FetchBundle {
        /// Our account's bare JID.
        account: String,
        /// Why.
        cause: Cause,
        /// Also in the `actions` of the answer to the call that caused it.
        in_answer: bool,
        /// The device owner's bare JID.
        jid: String,
        /// The OMEMO namespace.
        #[schemars(schema_with = "namespace_schema")]
        namespace: Version,
        /// The device.
        device_id: u32,
        /// PubSub node.
        node: String,
        /// Item id.
        item_id: String,
    },
    /// A device list should be fetched and passed to `devicelist.update`.
    FetchDevicelist {
        /// Our account's bare JID.
        account: String,
        /// Why.
        cause: Cause,
        /// Also in the `actions` of the answer to the call that caused it.
        in_answer: bool,
        /// Whose list.
        jid: String,
        /// The OMEMO namespace.
        #[schemars(schema_with = "namespace_schema")]
        namespace: Version,
        /// PubSub node.
        node: String,
    },
    /// A device list (ours when `peer` equals `account`) changed: sent only when its contents
    /// did.
    DevicelistChanged {
        /// Our account's bare JID.
        account: String,
        /// Why.
        cause: Cause,
        /// Whose device list changed.
        peer: String,
        /// The OMEMO namespace of the list.
        #[schemars(schema_with = "namespace_schema")]
        namespace: Version,
        /// The device ids now on the list.
        device_ids: Vec<u32>,
    },
    /// A new peer identity appeared whose trust the user must decide.
    TrustDecisionNeeded {
        /// Our account's bare JID.
        account: String,
        /// Why.
        cause: Cause,
        /// The peer's bare JID.
        peer: String,
        /// The OMEMO namespace the device was seen in.
        #[schemars(schema_with = "namespace_schema")]
        namespace: Version,
        /// The peer device.
        device_id: u32,
        /// The device's identity key fingerprint (hex), for display.
        fingerprint: String,
    },
    /// A device showed another identity key than the one held for it (in a key exchange, which
    /// was refused, or in a fetched bundle, which was set aside). `identity.accept` takes it.
    IdentityChanged {
        /// Our account's bare JID.
        account: String,
        /// Why.
        cause: Cause,
        /// The peer's bare JID.
        peer: String,
        /// The OMEMO namespace.
        #[schemars(schema_with = "namespace_schema")]
        namespace: Version,
        /// The peer device.
        device_id: u32,
        /// Fingerprint of the identity held for the device.
        old_fingerprint: String,
        /// Fingerprint of the new identity.
        new_fingerprint: String,
    },
}

/// The `type` tags of [`Event`], used to filter subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// [`Event::PublishBundle`].
    PublishBundle,
    /// [`Event::PublishDevicelist`].
    PublishDevicelist,
    /// [`Event::SendHeartbeat`].
    SendHeartbeat,
    /// [`Event::FetchBundle`].
    FetchBundle,
    /// [`Event::FetchDevicelist`].
    FetchDevicelist,
    /// [`Event::DevicelistChanged`].
    DevicelistChanged,
    /// [`Event::TrustDecisionNeeded`].
    TrustDecisionNeeded,
    /// The marker a lagging subscriber gets (always sent, whatever the filter).
    EventsLost,
    /// [`Event::IdentityChanged`].
    IdentityChanged,
}

impl Event {
    /// This event's type tag.
    pub fn event_type(&self) -> EventType {
        match self {
            Event::PublishBundle { .. } => EventType::PublishBundle,
            Event::PublishDevicelist { .. } => EventType::PublishDevicelist,
            Event::SendHeartbeat { .. } => EventType::SendHeartbeat,
            Event::FetchBundle { .. } => EventType::FetchBundle,
            Event::FetchDevicelist { .. } => EventType::FetchDevicelist,
            Event::DevicelistChanged { .. } => EventType::DevicelistChanged,
            Event::TrustDecisionNeeded { .. } => EventType::TrustDecisionNeeded,
            Event::IdentityChanged { .. } => EventType::IdentityChanged,
        }
    }

    /// The event announcing `action` of `account` (whose device is `own_device`).
    pub fn for_action(
        account: &str,
        own_device: u32,
        cause: Cause,
        in_answer: bool,
        action: &Action,
    ) -> Event {
        let account = account.to_owned();
        match action.clone() {
            Action::PublishBundle { namespace } => Event::PublishBundle {
                account,
                cause,
                in_answer,
                namespace,
                device_id: own_device,
            },
            Action::PublishDevicelist { namespace } => Event::PublishDevicelist {
                account,
                cause,
                in_answer,
                namespace,
            },
            Action::SendHeartbeat {
                jid,
                namespace,
                device_id,
            } => Event::SendHeartbeat {
                account,
                cause,
                in_answer,
                jid,
                namespace,
                device_id,
            },
            Action::FetchBundle {
                jid,
                namespace,
                device_id,
                node,
                item_id,
            } => Event::FetchBundle {
                account,
                cause,
                in_answer,
                jid,
                namespace,
                device_id,
                node,
                item_id,
            },
            Action::FetchDevicelist {
                jid,
                namespace,
                node,
            } => Event::FetchDevicelist {
                account,
                cause,
                in_answer,
                jid,
                namespace,
                node,
            },
        }
    }

    /// A duty no call's answer carries: exactly one subscriber gets it.
    pub fn is_unanswered_duty(&self) -> bool {
        matches!(
            self,
            Event::PublishBundle {
                in_answer: false,
                ..
            } | Event::PublishDevicelist {
                in_answer: false,
                ..
            } | Event::SendHeartbeat {
                in_answer: false,
                ..
            } | Event::FetchBundle {
                in_answer: false,
                ..
            } | Event::FetchDevicelist {
                in_answer: false,
                ..
            }
        )
    }
}

pub fn namespace_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": Version::ALL.iter().map(|v| v.namespace()).collect::<Vec<_>>(),
        "description": "OMEMO namespace: urn:xmpp:omemo:2 or eu.siacs.conversations.axolotl",
    })
}

/// Live subscriptions, in subscription order, with their type filters: an unanswered duty goes
/// to the oldest one that wants its type.
type Registry = Arc<Mutex<BTreeMap<u64, Option<HashSet<EventType>>>>>;

/// Most duties kept for a subscriber that does not exist yet.
pub const MAX_HELD_DUTIES: usize = 64;

/// A cheap-to-clone handle on the daemon's event broadcast channel.
#[derive(Debug, Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
    subs: Registry,
    next: Arc<AtomicU64>,
    /// Duties no answer carries, announced while no subscription wanted them (e.g. at start,
    /// before any client connected): the first subscription that wants one gets it.
    held: Arc<Mutex<Vec<Event>>>,
}

/// A subscription's place in the duty order; dropping it (the subscription ends) leaves it.
#[derive(Debug)]
pub struct DutyTicket {
    key: u64,
    subs: Registry,
}

impl Drop for DutyTicket {
    fn drop(&mut self) {
        self.subs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

impl EventBus {
    /// A bus that keeps [`EVENT_BUS_CAPACITY`] events for slow receivers.
    pub fn new() -> Self {
        Self::with_capacity(EVENT_BUS_CAPACITY)
    }

    /// A bus with a given capacity (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self {
            tx,
            subs: Registry::default(),
            next: Arc::new(AtomicU64::new(1)),
            held: Arc::default(),
        }
    }

    /// Sends an event to every current receiver; never blocks. Returns how many receivers there were.
    /// A duty no answer carries that no subscription wants yet is held for the first that will
    /// (at most [`MAX_HELD_DUTIES`], the same one once).
    pub fn emit(&self, event: Event) -> usize {
        tracing::debug!(event_type = ?event.event_type(), "event");
        if event.is_unanswered_duty() {
            // Held under the same lock as `register` hands them out, so none is left behind.
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            if !self.wanted(event.event_type()) {
                if !held.contains(&event) && held.len() < MAX_HELD_DUTIES {
                    held.push(event);
                }
                return 0;
            }
        }
        self.tx.send(event).unwrap_or(0)
    }

    /// Whether a live subscription wants events of type `t`.
    fn wanted(&self, t: EventType) -> bool {
        self.subs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .any(|types| types.as_ref().is_none_or(|s| s.contains(&t)))
    }

    /// A new receiver that sees events emitted from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// Enters a subscription (with its filter) into the duty order, and hands it the held
    /// duties it wants (its receiver must exist already: [`EventBus::subscribe`] first).
    pub fn register(&self, types: Option<HashSet<EventType>>) -> DutyTicket {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let wants = |t: EventType| types.as_ref().is_none_or(|s| s.contains(&t));
        let due: Vec<Event> = {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            let (due, keep) = held.drain(..).partition(|e| wants(e.event_type()));
            *held = keep;
            self.subs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key, types);
            due
        };
        for event in due {
            let _ = self.tx.send(event);
        }
        DutyTicket {
            key,
            subs: Arc::clone(&self.subs),
        }
    }

    /// Whether the subscription holding `ticket` is the one that performs unanswered duties
    /// of type `t`: the oldest live subscription that wants `t`.
    pub fn is_duty_holder(&self, ticket: &DutyTicket, t: EventType) -> bool {
        let subs = self.subs.lock().unwrap_or_else(PoisonError::into_inner);
        subs.iter()
            .find(|(_, types)| types.as_ref().is_none_or(|s| s.contains(&t)))
            .is_some_and(|(k, _)| *k == ticket.key)
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_wire_shape() {
        let action = Action::SendHeartbeat {
            jid: "b@example.org".into(),
            namespace: Version::Twomemo,
            device_id: 42,
        };
        let e = Event::for_action("a@example.org", 7, Cause::NewSession, true, &action);
        let v = serde_json::to_value(&e).ok();
        assert_eq!(
            v,
            Some(
                serde_json::json!({"type": "send_heartbeat", "account": "a@example.org",
                "cause": "new_session", "in_answer": true, "jid": "b@example.org",
                "namespace": "urn:xmpp:omemo:2", "device_id": 42})
            )
        );
        // Event and action share the type name.
        let a = serde_json::to_value(&action).ok();
        assert_eq!(
            a.map(|a| a["type"].clone()),
            Some(serde_json::json!("send_heartbeat"))
        );
        let t = serde_json::to_value(e.event_type()).ok();
        assert_eq!(t, Some(serde_json::json!("send_heartbeat")));
        assert!(!e.is_unanswered_duty());
        let own = Event::for_action(
            "a@example.org",
            7,
            Cause::SignedPrekeyRotated,
            false,
            &Action::PublishBundle {
                namespace: Version::Oldmemo,
            },
        );
        assert!(own.is_unanswered_duty());
        assert_eq!(
            serde_json::to_value(&own)
                .ok()
                .map(|v| v["device_id"].clone()),
            Some(serde_json::json!(7))
        );
    }

    #[test]
    fn the_oldest_matching_subscription_holds_the_duties() {
        let bus = EventBus::new();
        let only_trust = bus.register(Some([EventType::TrustDecisionNeeded].into()));
        let first = bus.register(None);
        let second = bus.register(Some([EventType::PublishBundle].into()));
        let t = EventType::PublishBundle;
        assert!(!bus.is_duty_holder(&only_trust, t));
        assert!(bus.is_duty_holder(&first, t));
        assert!(!bus.is_duty_holder(&second, t));
        drop(first);
        assert!(bus.is_duty_holder(&second, t));
        assert!(bus.is_duty_holder(&only_trust, EventType::TrustDecisionNeeded));
    }

    #[test]
    fn duties_nobody_wants_yet_wait_for_the_first_subscription_that_does() {
        let bus = EventBus::new();
        let duty = |ns| {
            Event::for_action(
                "a@example.org",
                7,
                Cause::Rollback,
                false,
                &Action::PublishBundle { namespace: ns },
            )
        };
        assert_eq!(bus.emit(duty(Version::Twomemo)), 0);
        bus.emit(duty(Version::Twomemo)); // the same duty once
        bus.emit(duty(Version::Oldmemo));
        let mut trust_rx = bus.subscribe();
        let _trust = bus.register(Some([EventType::TrustDecisionNeeded].into()));
        assert!(trust_rx.try_recv().is_err(), "not its type");
        let mut rx = bus.subscribe();
        let _sub = bus.register(Some([EventType::PublishBundle].into()));
        assert_eq!(rx.try_recv().ok(), Some(duty(Version::Twomemo)));
        assert_eq!(rx.try_recv().ok(), Some(duty(Version::Oldmemo)));
        assert!(rx.try_recv().is_err());
        // Once someone wants them, duties go out at once.
        assert!(bus.emit(duty(Version::Twomemo)) > 0);
        assert_eq!(rx.try_recv().ok(), Some(duty(Version::Twomemo)));
    }
}

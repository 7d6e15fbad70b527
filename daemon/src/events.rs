//! Events the daemon pushes to subscribed clients, and the bus that carries them.
//!
//! Producers (the session manager) call [`EventBus::emit`]; it never blocks. Each subscription on
//! each connection reads the bus through its own receiver; a receiver that falls more than
//! [`EVENT_BUS_CAPACITY`] events behind loses the oldest ones and its client gets an `events_lost`
//! notification instead of stalling the daemon.

use protocol_core::version::Version;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// How many events the bus keeps for slow subscribers before they lag.
pub const EVENT_BUS_CAPACITY: usize = 1024;

/// Something that happened, which a client may want to react to. Serialized with a `type` tag:
/// `{"type": "bundle_changed", "account": …, …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Event {
    /// Our own bundle for `account` changed and should be published by the client.
    BundleChanged {
        /// Our account's bare JID.
        account: String,
        /// The OMEMO namespace the bundle belongs to.
        #[schemars(schema_with = "namespace_schema")]
        namespace: Version,
        /// Our device id.
        device_id: u32,
    },
    /// A device list (ours when `peer` equals `account`) changed.
    DevicelistChanged {
        /// Our account's bare JID.
        account: String,
        /// Whose device list changed.
        peer: String,
        /// The OMEMO namespace of the list.
        #[schemars(schema_with = "namespace_schema")]
        namespace: Version,
        /// The device ids now on the list.
        device_ids: Vec<u32>,
    },
    /// A session needs an empty (heartbeat) message so the peer can advance its ratchet.
    HeartbeatDue {
        /// Our account's bare JID.
        account: String,
        /// The peer's bare JID.
        peer: String,
        /// The OMEMO namespace of the session.
        #[schemars(schema_with = "namespace_schema")]
        namespace: Version,
        /// The peer device.
        device_id: u32,
    },
    /// A new peer device appeared whose trust the user must decide.
    TrustDecisionNeeded {
        /// Our account's bare JID.
        account: String,
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
    /// [`Event::BundleChanged`].
    BundleChanged,
    /// [`Event::DevicelistChanged`].
    DevicelistChanged,
    /// [`Event::HeartbeatDue`].
    HeartbeatDue,
    /// [`Event::TrustDecisionNeeded`].
    TrustDecisionNeeded,
    /// [`Event::IdentityChanged`].
    IdentityChanged,
}

impl Event {
    /// This event's type tag.
    pub fn event_type(&self) -> EventType {
        match self {
            Event::BundleChanged { .. } => EventType::BundleChanged,
            Event::DevicelistChanged { .. } => EventType::DevicelistChanged,
            Event::HeartbeatDue { .. } => EventType::HeartbeatDue,
            Event::TrustDecisionNeeded { .. } => EventType::TrustDecisionNeeded,
            Event::IdentityChanged { .. } => EventType::IdentityChanged,
        }
    }
}

pub fn namespace_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": Version::ALL.iter().map(|v| v.namespace()).collect::<Vec<_>>(),
        "description": "OMEMO namespace: urn:xmpp:omemo:2 or eu.siacs.conversations.axolotl",
    })
}

/// A cheap-to-clone handle on the daemon's event broadcast channel.
#[derive(Debug, Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
}

impl EventBus {
    /// A bus that keeps [`EVENT_BUS_CAPACITY`] events for slow receivers.
    pub fn new() -> Self {
        Self::with_capacity(EVENT_BUS_CAPACITY)
    }

    /// A bus with a given capacity (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self { tx }
    }

    /// Sends an event to every current receiver; never blocks. Returns how many receivers there were.
    pub fn emit(&self, event: Event) -> usize {
        tracing::debug!(event_type = ?event.event_type(), "event");
        self.tx.send(event).unwrap_or(0)
    }

    /// A new receiver that sees events emitted from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
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
        let e = Event::HeartbeatDue {
            account: "a@example.org".into(),
            peer: "b@example.org".into(),
            namespace: Version::Twomemo,
            device_id: 42,
        };
        let v = serde_json::to_value(&e).ok();
        assert_eq!(
            v,
            Some(
                serde_json::json!({"type": "heartbeat_due", "account": "a@example.org",
                "peer": "b@example.org", "namespace": "urn:xmpp:omemo:2", "device_id": 42})
            )
        );
        let t = serde_json::to_value(e.event_type()).ok();
        assert_eq!(t, Some(serde_json::json!("heartbeat_due")));
    }
}

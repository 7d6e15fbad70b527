//! Sessions to rebuild after the database was found rolled back (see
//! [`crate::storage::generation`]): their ratchet state may be older than the peer's, so the next
//! message to each device starts a new session (a key exchange) instead. Once per device: the
//! pending row goes in the transaction that stores the new session.
//!
//! The new session needs a bundle fetched after the rollback was found: the stored one may offer
//! a one-time prekey the peer already consumed (for the session being replaced), which the peer
//! would refuse. So the stored bundles of those devices are dropped when the rebuilds are
//! requested (they are a cache of what the peer publishes), and until the client hands over a
//! fresh one the device is reported `no_bundle` with a `fetch_bundle` action. The rows are
//! [`crate::storage::rebuilds`]; this module keeps them in memory.

#[cfg(doc)]
use crate::storage::rebuilds;
use crate::storage::DeviceAddr;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// The devices whose next message starts a new session.
#[derive(Debug, Default)]
pub struct Pending(Mutex<HashMap<DeviceAddr, i64>>);

impl Pending {
    /// The rebuilds stored ([`rebuilds::list`]).
    pub fn new(stored: Vec<(DeviceAddr, i64)>) -> Pending {
        Pending(Mutex::new(stored.into_iter().collect()))
    }

    /// Whether the device's next message must start a new session.
    pub fn contains(&self, addr: &DeviceAddr) -> bool {
        self.requested_at(addr).is_some()
    }

    /// When the device's rebuild was requested: its bundle must be fetched after that.
    pub fn requested_at(&self, addr: &DeviceAddr) -> Option<i64> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(addr)
            .copied()
    }

    /// After the new session was committed.
    pub fn done(&self, addr: &DeviceAddr) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(addr);
    }

    /// How many are pending.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether none is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

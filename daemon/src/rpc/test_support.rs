//! Helpers for unit tests.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{
    Durability, ServeConfig, DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES,
};
use crate::rpc::ctx::Ctx;

/// A context with a throw-away configuration.
pub fn test_ctx() -> Arc<Ctx> {
    let config = ServeConfig {
        socket: PathBuf::from("/nonexistent/omemod.sock"),
        db: PathBuf::from("/nonexistent/omemod.db"),
        durability: Durability::Full,
        max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
        max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        enable_debug_methods: true,
        redelivery: Default::default(),
        stale: Default::default(),
        bounds: crate::config::BoundsArgs::default(),
        files: crate::config::FileLimits::default(),
        keys: Default::default(),
    };
    let socket = config.socket.clone();
    Arc::new(Ctx::new(config, socket))
}

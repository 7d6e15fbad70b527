//! The JSON-RPC 2.0 interface: method registry, error table, line transport on a Unix socket.
//!
//! - [`registry`]: the [`Method`](registry::Method) trait and the registry that builds both the
//!   jsonrpsee module and the OpenRPC document.
//! - [`error`]: [`ErrorKind`](error::ErrorKind), every error code and kind a client can see.
//! - [`ctx`]: [`Ctx`](ctx::Ctx) (daemon-wide state) and [`Conn`](ctx::Conn) (the calling connection).
//! - [`dispatch`]: one request line to one answer line (batches, notifications, errors).
//! - [`connection`]: one client connection (peer check, size-limited lines, concurrency).
//! - [`server`]: the socket and the daemon's lifetime.
//! - [`methods`]: the methods, one file per domain.

pub mod connection;
pub mod ctx;
pub mod dispatch;
pub mod error;
pub mod methods;
pub mod registry;
pub mod server;
#[cfg(test)]
pub mod test_support;

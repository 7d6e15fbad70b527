//! The JSON-RPC 2.0 interface: method registry, error table, line transport on a Unix socket.
//!
//! No JSON-RPC library: jsonrpsee has no Unix-socket line transport, and used as a bare method
//! table it gave nothing the transport did not do itself (framing, batches, limits,
//! per-connection subscriptions), so a small owned table replaced it (docs/rpc.md, "Design
//! notes").
//!
//! - [`registry`]: the [`Method`](registry::Method) trait and the registry that builds both the
//!   [`MethodTable`](registry::MethodTable) and the OpenRPC document.
//! - [`error`]: [`ErrorKind`](error::ErrorKind), every error code and kind a client can see;
//!   [`MethodError`](error::MethodError) and [`CallError`](error::CallError), what a method
//!   answers with.
//! - [`ctx`]: [`Ctx`](ctx::Ctx) (daemon-wide state) and [`Conn`](ctx::Conn) (the calling connection).
//! - [`dispatch`]: one request line to one answer line (batches, notifications, errors).
//! - [`connection`]: one client connection (peer check, size-limited lines, concurrency).
//! - `test_support`: a context for unit tests (tests only).
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

//! [`Client`]: the same connection for code without an async runtime of its own (a command
//! line, tests, a benchmark loop). Each blocking client runs the async [`crate::Client`] on a
//! current-thread tokio runtime of its own, which turns only while a call waits, so a client
//! costs no thread. Not for use inside an async runtime (tokio refuses to nest one).

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

use crate::event::Pushed;
use crate::{Error, RpcError};

/// One connection to omemod, with blocking calls.
///
/// ```no_run
/// # fn demo() -> Result<(), omemod_client::Error> {
/// use std::time::Duration;
/// use omemod_client::blocking::Client;
/// use serde_json::json;
/// let mut client = Client::connect(&omemod_client::default_socket_path())?;
/// client.set_timeout(Some(Duration::from_secs(10)));
/// let status = client.call("status", json!({}))?;
/// println!("omemod {} is up", status["version"]);
/// // The typed methods of the async client, run to completion here:
/// let accounts = client.block_on(client.get_ref().accounts())?;
/// println!("{} accounts", accounts.len());
/// # Ok(()) }
/// ```
pub struct Client {
    // Dropped before the runtime, which then drops the connection's tasks.
    inner: crate::Client,
    events: Option<mpsc::UnboundedReceiver<Pushed>>,
    timeout: Option<Duration>,
    runtime: Runtime,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("inner", &self.inner)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects after the same checks as [`crate::Client::connect`].
    pub fn connect(path: &Path) -> Result<Client, Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let inner = runtime.block_on(crate::Client::connect(path))?;
        let events = inner.take_events();
        Ok(Client {
            inner,
            events,
            timeout: None,
            runtime,
        })
    }

    /// How long a call may wait for its answer before it fails with [`Error::TimedOut`]
    /// (`None`, the default: as long as it takes). A call given up is forgotten: its answer,
    /// should it come, is ignored.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// See [`crate::Client::set_account`].
    pub fn set_account(&mut self, account: Option<String>) {
        self.inner.set_account(account);
    }

    /// The async client, for its typed methods (run them with [`Client::block_on`]).
    pub fn get_ref(&self) -> &crate::Client {
        &self.inner
    }

    /// Runs a call of the async client to its end, within the timeout.
    pub fn block_on<T>(&self, call: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        match self.timeout {
            None => self.runtime.block_on(call),
            // The timer is made inside the runtime: it needs its time driver.
            Some(t) => self
                .runtime
                .block_on(async { tokio::time::timeout(t, call).await })
                .unwrap_or(Err(Error::TimedOut(t))),
        }
    }

    /// See [`crate::Client::call`].
    pub fn call(&self, method: &str, params: Value) -> Result<Value, Error> {
        self.block_on(self.inner.call(method, params))
    }

    /// See [`crate::Client::call_as`].
    pub fn call_as<T: DeserializeOwned>(&self, method: &str, params: Value) -> Result<T, Error> {
        self.block_on(self.inner.call_as(method, params))
    }

    /// See [`crate::Client::batch`].
    pub fn batch(&self, calls: &[(&str, Value)]) -> Result<Vec<Result<Value, RpcError>>, Error> {
        self.block_on(self.inner.batch(calls))
    }

    /// See [`crate::Client::subscribe`]; read the events with [`Client::next_event`].
    pub fn subscribe(&self) -> Result<u64, Error> {
        self.block_on(self.inner.subscribe())
    }

    /// The next event pushed to this connection, waiting at most `wait`; `None` if none came
    /// (or the connection closed). Events are queued from the moment of connecting.
    pub fn next_event(&mut self, wait: Duration) -> Option<Pushed> {
        let events = self.events.as_mut()?;
        self.runtime
            .block_on(async { tokio::time::timeout(wait, events.recv()).await })
            .ok()
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_call_without_an_answer_times_out_and_waiting_for_no_event_ends() {
        let dir = crate::tests::private_dir("blocking");
        let sock = dir.join("s.sock");
        // Connections wait in the backlog: connected, never answered.
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let mut c = Client::connect(&sock).unwrap();
        c.set_timeout(Some(Duration::from_millis(100)));
        let r = c.call("status", json!({}));
        assert!(matches!(r, Err(Error::TimedOut(_))), "{r:?}");
        assert!(c.next_event(Duration::from_millis(50)).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! What a call can fail with: [`Error`], and the daemon's own error answers, [`RpcError`].

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::event::Event;
use crate::methods::DeviceReport;
use crate::trust::TrustError;

/// An error answer of the daemon. Switch on `kind` (stable, `data.kind` of the answer);
/// `message` is for people.
///
/// ```
/// # use omemod_client::Error;
/// fn explain(e: &Error) -> &'static str {
///     match e.kind() {
///         Some("account_required") => "choose an account",
///         Some("untrusted") => "decide whether to trust the device first",
///         Some(_) => "the daemon refused",
///         None => "no answer from the daemon",
///     }
/// }
/// ```
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{method}: {message} ({kind})")]
pub struct RpcError {
    /// The method called.
    pub method: String,
    /// The JSON-RPC error code.
    pub code: i64,
    /// `data.kind`: what went wrong, one of the kinds of docs/rpc.md (`unknown` if absent).
    pub kind: String,
    /// The message, for people.
    pub message: String,
    /// The whole `data` object (some kinds add fields, e.g. `recipients`); `null` if absent.
    pub data: Value,
}

impl RpcError {
    /// The error object `{code, message, data}` of an answer to a call of `method`.
    pub(crate) fn from_object(method: &str, mut error: Value) -> RpcError {
        let data = error.get_mut("data").map(Value::take).unwrap_or_default();
        RpcError {
            method: method.to_owned(),
            code: error["code"].as_i64().unwrap_or(0),
            kind: data["kind"].as_str().unwrap_or("unknown").to_owned(),
            message: error["message"].as_str().unwrap_or("").to_owned(),
            data,
        }
    }
}

/// Everything a call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The socket failed the checks of [`crate::trust`]: someone else could have put it there,
    /// or it is missing.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// Nobody accepted the connection (no daemon listening?).
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The socket (or, for the blocking client, its runtime) could not be used.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The daemon answered with an error.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// An answer we could not understand (a bug on one side).
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// The connection closed before the answer came.
    #[error("omemod closed the connection")]
    Closed,
    /// No answer within the blocking client's timeout
    /// ([`crate::blocking::Client::set_timeout`]).
    #[error("no answer from omemod within {0:?}")]
    TimedOut(Duration),
    /// The OMEMO 2 envelope names other parties than the stanza: the message must be dropped.
    #[error(
        "the envelope says from {} to {}, not what the stanza says",
        envelope_from.as_deref().unwrap_or("nobody"),
        envelope_to.as_deref().unwrap_or("nobody")
    )]
    EnvelopeMismatch {
        /// The envelope's `<from>`.
        envelope_from: Option<String>,
        /// The envelope's `<to>`.
        envelope_to: Option<String>,
    },
}

impl Error {
    /// `data.kind` of an error answer, if this is one.
    pub fn kind(&self) -> Option<&str> {
        match self {
            Error::Rpc(e) => Some(&e.kind),
            _ => None,
        }
    }

    /// For `encrypt`'s `no_device_reached`: why each device of the recipients got nothing
    /// (`untrusted`, `stale`, `no_bundle`, …, with the action to take), and what to fetch.
    pub fn unreached(&self) -> Option<(Vec<DeviceReport>, Vec<Event>)> {
        match self {
            Error::Rpc(e) if e.kind == "no_device_reached" => {
                let devices = serde_json::from_value(e.data["devices"].clone()).ok()?;
                let actions = serde_json::from_value(e.data["actions"].clone()).ok()?;
                Some((devices, actions))
            }
            _ => None,
        }
    }
}

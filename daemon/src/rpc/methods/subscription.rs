//! `subscribe` / `unsubscribe`: events pushed to this connection as `event` notifications.

use std::collections::HashSet;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::events::EventType;
use crate::rpc::ctx::{Conn, Ctx, SubscribeError};
use crate::rpc::error::CallError;
use crate::rpc::registry::Method;
use protocol_core::error::ErrorCause;

/// `subscribe`.
pub struct Subscribe;

/// Params of `subscribe`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscribeParams {
    /// Only these event types; all types when absent.
    #[serde(default)]
    pub types: Option<Vec<EventType>>,
}

/// Result of `subscribe`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SubscribeResult {
    /// The subscription id, unique on this connection; it tags every `event` notification.
    pub subscription: u64,
}

impl Method for Subscribe {
    const NAME: &'static str = "subscribe";
    const SUMMARY: &'static str = "Receive events on this connection as `event` notifications.";
    const DESCRIPTION: &'static str = "Events are sent as {\"jsonrpc\":\"2.0\",\"method\":\"event\",\"params\":\
        {\"subscription\":ID,\"event\":{\"type\":…}}}. No event of a subscription is sent before its answer. \
        A subscriber that falls behind gets {\"type\":\"events_lost\",\"missed\":N}. Subscriptions end with \
        the connection.";
    type Params = SubscribeParams;
    type Result = SubscribeResult;
    type Error = SubscribeError;

    async fn call(
        ctx: Arc<Ctx>,
        conn: Conn,
        params: SubscribeParams,
    ) -> Result<SubscribeResult, CallError<SubscribeError>> {
        let types = params.types.map(|t| t.into_iter().collect::<HashSet<_>>());
        let subscription = conn.subscribe(&ctx.events, types)?;
        Ok(SubscribeResult { subscription })
    }
}

/// `unsubscribe`.
pub struct Unsubscribe;

/// Why `unsubscribe` failed.
#[derive(Debug, thiserror::Error)]
pub enum UnsubscribeError {
    /// This connection has no subscription with that id.
    #[error("unknown subscription")]
    Unknown {
        /// The id given.
        subscription: u64,
    },
}

impl UnsubscribeError {
    /// Always the request's.
    pub fn cause(&self) -> ErrorCause {
        ErrorCause::Request
    }
}

/// Params of `unsubscribe`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnsubscribeParams {
    /// The id `subscribe` returned.
    pub subscription: u64,
}

/// Result of `unsubscribe`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct UnsubscribeResult {
    /// Always true.
    pub unsubscribed: bool,
}

impl Method for Unsubscribe {
    const NAME: &'static str = "unsubscribe";
    const SUMMARY: &'static str = "End a subscription of this connection.";
    type Params = UnsubscribeParams;
    type Result = UnsubscribeResult;
    type Error = UnsubscribeError;

    async fn call(
        _ctx: Arc<Ctx>,
        conn: Conn,
        params: UnsubscribeParams,
    ) -> Result<UnsubscribeResult, CallError<UnsubscribeError>> {
        if conn.unsubscribe(params.subscription) {
            Ok(UnsubscribeResult { unsubscribed: true })
        } else {
            Err(UnsubscribeError::Unknown {
                subscription: params.subscription,
            }
            .into())
        }
    }
}

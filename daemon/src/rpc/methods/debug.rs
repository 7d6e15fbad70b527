//! `debug.*`: methods for tests, registered only with `omemod serve --enable-debug-methods`.

use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::events::Event;
use crate::rpc::ctx::{Conn, Ctx};
use crate::rpc::error::CallError;
use crate::rpc::registry::Method;
use std::convert::Infallible;

/// Longest `debug.sleep` accepted.
pub const MAX_SLEEP_MS: u64 = 60_000;

/// `debug.sleep`.
pub struct Sleep;

/// Params of `debug.sleep`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SleepParams {
    /// Milliseconds to sleep, at most 60000.
    pub ms: u64,
}

/// Result of `debug.sleep`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SleepResult {
    /// The milliseconds slept.
    pub slept_ms: u64,
}

impl Method for Sleep {
    const NAME: &'static str = "debug.sleep";
    const SUMMARY: &'static str = "Test only: sleep, then answer.";
    type Params = SleepParams;
    type Result = SleepResult;
    type Error = Infallible;

    async fn call(
        _ctx: Arc<Ctx>,
        _conn: Conn,
        p: SleepParams,
    ) -> Result<SleepResult, CallError<Infallible>> {
        if p.ms > MAX_SLEEP_MS {
            return Err(CallError::InvalidParams(format!(
                "ms must be at most {MAX_SLEEP_MS}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(p.ms)).await;
        Ok(SleepResult { slept_ms: p.ms })
    }
}

/// `debug.emit`.
pub struct Emit;

/// Params of `debug.emit`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmitParams {
    /// The event to broadcast.
    pub event: Event,
}

/// Result of `debug.emit`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EmitResult {
    /// How many subscriptions (on all connections) received it.
    pub receivers: usize,
}

impl Method for Emit {
    const NAME: &'static str = "debug.emit";
    const SUMMARY: &'static str = "Test only: broadcast an event to all subscribers.";
    type Params = EmitParams;
    type Result = EmitResult;
    type Error = Infallible;

    async fn call(
        ctx: Arc<Ctx>,
        _conn: Conn,
        p: EmitParams,
    ) -> Result<EmitResult, CallError<Infallible>> {
        Ok(EmitResult {
            receivers: ctx.events.emit(p.event),
        })
    }
}

/// `debug.clock`.
pub struct Clock;

/// Params of `debug.clock`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClockParams {
    /// Seconds to move the daemon's clock forward (negative: back); 0 only reads it.
    #[serde(default)]
    pub advance_secs: i64,
}

/// Result of `debug.clock`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ClockResult {
    /// The daemon's time now, unix seconds.
    pub now: i64,
}

impl Method for Clock {
    const NAME: &'static str = "debug.clock";
    const SUMMARY: &'static str = "Test only: moves the daemon's clock (every time it stores or compares: staleness, retention windows) by `advance_secs`; answers its time.";
    type Params = ClockParams;
    type Result = ClockResult;
    type Error = Infallible;

    async fn call(
        _ctx: Arc<Ctx>,
        _conn: Conn,
        p: ClockParams,
    ) -> Result<ClockResult, CallError<Infallible>> {
        Ok(ClockResult {
            now: crate::storage::advance_clock(p.advance_secs),
        })
    }
}

/// `debug.kill_after_commit`.
pub struct KillAfterCommit;

impl Method for KillAfterCommit {
    const NAME: &'static str = "debug.kill_after_commit";
    const SUMMARY: &'static str =
        "Test only: the next decrypt SIGKILLs the daemon right after its commit, before answering.";
    type Params = crate::rpc::registry::NoParams;
    type Result = bool;
    type Error = Infallible;

    async fn call(
        ctx: Arc<Ctx>,
        _conn: Conn,
        _p: crate::rpc::registry::NoParams,
    ) -> Result<bool, CallError<Infallible>> {
        ctx.manager()?.kill_after_next_commit();
        Ok(true)
    }
}

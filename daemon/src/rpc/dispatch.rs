//! From one request line to its answer line: JSON-RPC 2.0 framing (single requests, batches,
//! notifications, error objects, the response size limit) around calls into the
//! [`MethodTable`]. Each call gets the [`Conn`] it came in on.

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use futures_util::future::join_all;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::config::MAX_BATCH_LEN;
use crate::rpc::ctx::Conn;
use crate::rpc::error::{ErrorKind, RpcError};
use crate::rpc::registry::MethodTable;

/// Turns request lines into answer lines.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    methods: MethodTable,
    max_response_bytes: usize,
}

/// A request id: a string, a non-negative integer or `null`, echoed in its answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Id {
    /// `"id": null`.
    Null,
    /// A number.
    Number(u64),
    /// A string.
    Str(String),
}

/// An error answer with the given id (`null` when unknown).
pub fn error_line(id: Option<&Id>, err: &RpcError) -> String {
    let id = id.map_or(Value::Null, |id| {
        serde_json::to_value(id).unwrap_or(Value::Null)
    });
    serde_json::json!({"jsonrpc": "2.0", "id": id, "error": err.to_json()}).to_string()
}

/// A result answer: `result` is the serialized result.
fn result_line(id: &Id, result: &str) -> String {
    let id = serde_json::to_string(id).unwrap_or_else(|_| "null".to_owned());
    format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#)
}

/// The fields of a request, each kept raw so that we can tell what is wrong with it.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default, borrow)]
    jsonrpc: Option<&'a RawValue>,
    /// `None` when absent (a notification); `Some("null")` when `"id": null`.
    #[serde(default, borrow, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    method: Option<&'a RawValue>,
    #[serde(default, borrow)]
    params: Option<&'a RawValue>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

/// A well-formed request.
struct Call<'a> {
    /// `None` for a notification.
    id: Option<Id>,
    method: Cow<'a, str>,
    params: Option<&'a str>,
}

/// `parse_error` saying where the line stops being JSON (`data.line`, `data.column`: 1-based,
/// the column counting bytes, as serde_json counts them).
fn parse_error(e: &serde_json::Error) -> RpcError {
    let what = match e.classify() {
        serde_json::error::Category::Eof => {
            "the JSON value is cut off at the end of the line".to_owned()
        }
        _ => {
            // serde_json's own words, without its position (given in ours).
            let text = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            text.strip_suffix(&suffix).unwrap_or(&text).to_owned()
        }
    };
    RpcError::new(
        ErrorKind::ParseError,
        format!(
            "parse error at line {}, column {}: {what}",
            e.line(),
            e.column()
        ),
    )
    .with_data(serde_json::json!({"line": e.line(), "column": e.column()}))
}

fn invalid_request(message: &str) -> RpcError {
    RpcError::new(ErrorKind::InvalidRequest, message)
}

/// Validates one request object. On error, returns the id if one could be read.
fn parse_call(raw: &RawValue) -> Result<Call<'_>, (Option<Id>, RpcError)> {
    let env: Envelope<'_> = match serde_json::from_str(raw.get()) {
        Ok(env) => env,
        Err(_) => return Err((None, invalid_request("a request must be a JSON object"))),
    };
    let id = match env.id {
        None => None,
        Some(raw_id) => match serde_json::from_str::<Id>(raw_id.get()) {
            Ok(id) => Some(id),
            Err(_) => {
                return Err((
                    None,
                    invalid_request("id must be a string, a non-negative integer or null"),
                ))
            }
        },
    };
    if env.jsonrpc.map(RawValue::get) != Some("\"2.0\"") {
        return Err((id, invalid_request("jsonrpc must be \"2.0\"")));
    }
    let method = match env
        .method
        .map(|m| serde_json::from_str::<Cow<'_, str>>(m.get()))
    {
        Some(Ok(m)) => m,
        _ => return Err((id, invalid_request("method must be a string"))),
    };
    let params = match env.params {
        None => None,
        Some(p) if p.get().starts_with(['{', '[']) => Some(p.get()),
        Some(_) => return Err((id, invalid_request("params must be an object or an array"))),
    };
    Ok(Call { id, method, params })
}

/// Takes `n` from `budget` if it has that much left.
fn take(budget: &AtomicUsize, n: usize) -> bool {
    budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
            left.checked_sub(n)
        })
        .is_ok()
}

impl Dispatcher {
    /// A dispatcher over `methods`.
    pub fn new(methods: MethodTable, max_response_bytes: usize) -> Self {
        Self {
            methods,
            max_response_bytes,
        }
    }

    /// Answers one line (one request or a batch). `None` when no answer is due (notifications).
    pub async fn handle_line(&self, line: &str, conn: &Conn) -> Option<String> {
        if line.trim_start().starts_with('[') {
            return match serde_json::from_str::<Vec<&RawValue>>(line) {
                Ok(items) => self.handle_batch(&items, conn).await,
                Err(e) => Some(error_line(None, &parse_error(&e))),
            };
        }
        // Parse once to check it is JSON at all.
        match serde_json::from_str::<&RawValue>(line) {
            Ok(raw) => self.handle_one(raw, conn).await,
            Err(e) => Some(error_line(None, &parse_error(&e))),
        }
    }

    async fn handle_batch(&self, items: &[&RawValue], conn: &Conn) -> Option<String> {
        if items.is_empty() {
            return Some(error_line(None, &invalid_request("empty batch")));
        }
        if items.len() > MAX_BATCH_LEN {
            return Some(error_line(
                None,
                &invalid_request(&format!(
                    "a batch may hold at most {MAX_BATCH_LEN} requests"
                )),
            ));
        }
        // The response limit holds for the batch's whole line. Each answer due first reserves
        // room for a `response_too_large` error with its id; as it completes, an answer larger
        // than that takes the difference from the rest of the budget, or is replaced by the error.
        let err = self.batch_too_large();
        let fallbacks: Vec<Option<String>> = items
            .iter()
            .map(|raw| match parse_call(raw) {
                Ok(Call { id: None, .. }) => None,
                Ok(Call { id, .. }) | Err((id, _)) => Some(error_line(id.as_ref(), &err)),
            })
            .collect();
        let reserved: usize = fallbacks.iter().flatten().map(|f| f.len() + 1).sum();
        let Some(left) = self.max_response_bytes.checked_sub(reserved + 2) else {
            return Some(error_line(None, &err));
        };
        let budget = AtomicUsize::new(left);
        let answers = join_all(items.iter().zip(fallbacks).map(|(raw, fallback)| {
            let budget = &budget;
            async move {
                let room = fallback.as_ref().map_or(0, String::len);
                let limit = budget.load(Ordering::Relaxed) + room;
                let answer = self.handle_one_within(raw, conn, limit).await?;
                if answer.len() <= room || take(budget, answer.len() - room) {
                    return Some(answer);
                }
                fallback
            }
        }))
        .await;
        let answers: Vec<String> = answers.into_iter().flatten().collect();
        if answers.is_empty() {
            return None;
        }
        Some(format!("[{}]", answers.join(",")))
    }

    fn batch_too_large(&self) -> RpcError {
        RpcError::new(
            ErrorKind::ResponseTooLarge,
            format!(
                "the batch's answers together exceed {} bytes",
                self.max_response_bytes
            ),
        )
        .with_data(serde_json::json!({"max_bytes": self.max_response_bytes}))
    }

    async fn handle_one(&self, raw: &RawValue, conn: &Conn) -> Option<String> {
        self.handle_one_within(raw, conn, self.max_response_bytes)
            .await
    }

    async fn handle_one_within(
        &self,
        raw: &RawValue,
        conn: &Conn,
        max_response_bytes: usize,
    ) -> Option<String> {
        let call = match parse_call(raw) {
            Ok(call) => call,
            Err((id, err)) => return Some(error_line(id.as_ref(), &err)),
        };
        let started = Instant::now();
        let notification = call.id.is_none();
        let id = call.id.unwrap_or(Id::Null);
        let Some(running) = self.methods.call(&call.method, conn.clone(), call.params) else {
            tracing::debug!(conn = conn.id(), method = %call.method, "method not found");
            if notification {
                return None;
            }
            let err = RpcError::new(
                ErrorKind::MethodNotFound,
                format!("method not found: {}", call.method),
            );
            return Some(error_line(Some(&id), &err));
        };
        let outcome = running.await;
        // Params and results are never logged: they may hold plaintext or key material.
        tracing::debug!(
            conn = conn.id(),
            method = %call.method,
            error_code = outcome.as_ref().err().map(|e| e.kind.code()),
            elapsed_us = started.elapsed().as_micros() as u64,
            "request"
        );
        if notification {
            return None;
        }
        let answer = match outcome {
            Ok(result) => result_line(&id, &result),
            Err(err) => error_line(Some(&id), &err),
        };
        if answer.len() > max_response_bytes {
            let err = RpcError::new(
                ErrorKind::ResponseTooLarge,
                format!("the response exceeds {max_response_bytes} bytes"),
            )
            .with_data(serde_json::json!({"max_bytes": max_response_bytes}));
            return Some(error_line(Some(&id), &err));
        }
        Some(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::test_support::test_ctx;

    async fn answer(line: &str) -> Option<Value> {
        let ctx = test_ctx();
        let module = crate::rpc::methods::build(ctx, true).ok()?;
        let d = Dispatcher::new(module, 1 << 20);
        let out = d.handle_line(line, &Conn::detached()).await?;
        serde_json::from_str(&out).ok()
    }

    #[tokio::test]
    async fn a_batch_answer_never_exceeds_the_response_limit() {
        let ctx = test_ctx();
        let module = crate::rpc::methods::build(ctx, true).unwrap();
        let one = Dispatcher::new(module.clone(), 1 << 24)
            .handle_line(
                r#"{"jsonrpc":"2.0","id":1,"method":"rpc.discover"}"#,
                &Conn::detached(),
            )
            .await
            .unwrap();
        // A limit that one answer fits but three do not (the issue: 3 × 47 kB under 100 kB).
        let limit = one.len() * 2 + 1_000;
        let d = Dispatcher::new(module, limit);
        let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"rpc.discover"},{"jsonrpc":"2.0","id":2,"method":"rpc.discover"},{"jsonrpc":"2.0","id":3,"method":"rpc.discover"}]"#;
        let line = d.handle_line(batch, &Conn::detached()).await.unwrap();
        assert!(line.len() <= limit, "{} > {limit}", line.len());
        let v: Value = serde_json::from_str(&line).unwrap();
        let answers = v.as_array().unwrap();
        assert_eq!(answers.len(), 3);
        let ok = answers.iter().filter(|a| a["result"].is_object()).count();
        let refused: Vec<&Value> = answers
            .iter()
            .filter(|a| a["error"]["data"]["kind"] == "response_too_large")
            .collect();
        assert_eq!((ok, refused.len()), (2, 1), "{v:#}");
        assert!(refused[0]["id"].is_u64());
        // A limit too small even for the error answers: one error object for the whole batch.
        let tiny = Dispatcher::new(crate::rpc::methods::build(test_ctx(), true).unwrap(), 300);
        let line = tiny.handle_line(batch, &Conn::detached()).await.unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["error"]["data"]["kind"], "response_too_large", "{v}");
        assert!(line.len() <= 300, "{}", line.len());
    }

    #[tokio::test]
    async fn framing() {
        let v = answer("{").await.unwrap_or_default();
        assert_eq!(v["error"]["code"], -32700);
        assert_eq!(v["id"], Value::Null);
        let v = answer(r#"{"jsonrpc":"2.0","id":3,"method":"nope"}"#)
            .await
            .unwrap_or_default();
        assert_eq!(v["error"]["data"]["kind"], "method_not_found");
        assert_eq!(v["id"], 3);
        let v = answer(r#"{"jsonrpc":"1.0","id":"a","method":"status"}"#)
            .await
            .unwrap_or_default();
        assert_eq!(v["error"]["code"], -32600);
        assert_eq!(v["id"], "a");
        let v = answer(r#"{"jsonrpc":"2.0","id":{},"method":"status"}"#)
            .await
            .unwrap_or_default();
        assert_eq!(v["error"]["code"], -32600);
        assert_eq!(answer(r#"{"jsonrpc":"2.0","method":"status"}"#).await, None);
        let v = answer(r#"{"jsonrpc":"2.0","id":null,"method":"status"}"#)
            .await
            .unwrap_or_default();
        assert_eq!(v["id"], Value::Null);
        assert!(v["result"].is_object());
        let v = answer(r#"{"jsonrpc":"2.0","id":1,"method":"debug.sleep","params":{"ms":"x"}}"#)
            .await
            .unwrap_or_default();
        assert_eq!(v["error"]["code"], -32602);
        assert_eq!(v["error"]["data"]["kind"], "invalid_params");
        let v = answer(r#"{"jsonrpc":"2.0","id":1,"method":"status","params":[]}"#)
            .await
            .unwrap_or_default();
        assert_eq!(v["error"]["code"], -32602);
    }
}

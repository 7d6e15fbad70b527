//! One connection's line protocol (docs/rpc.md, "Framing"): requests go out as whole lines
//! through a writer task, so that a call given up half-way never leaves half a line on the
//! socket; a reader task matches answers to their callers by id and hands events on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::event::Pushed;
use crate::Error;

/// A call's answer: its `result`, or its `error` object.
pub(crate) type Answer = Result<Value, Value>;

/// A caller waiting for the answer to one request.
struct Waiter {
    tx: oneshot::Sender<Answer>,
    /// The line the request went out in (lines are numbered in the order they are written).
    line: u64,
    /// That line's length in bytes, without its `\n`.
    len: usize,
}

#[derive(Default)]
struct Table {
    waiters: HashMap<u64, Waiter>,
    next_id: u64,
    next_line: u64,
    /// The daemon's last error about the connection itself (`id: null`), e.g. why it hung up.
    last_word: Option<Value>,
    closed: bool,
}

type Shared = Arc<Mutex<Table>>;

fn lock(table: &Shared) -> MutexGuard<'_, Table> {
    table.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Serialize)]
struct Request<'a> {
    jsonrpc: &'static str,
    id: u64,
    method: &'a str,
    params: &'a Value,
}

/// The requests of one line whose answers are still awaited; dropping it (a call given up)
/// forgets them, so that a late answer is ignored.
struct Pending<'a> {
    table: &'a Shared,
    ids: Vec<u64>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let mut t = lock(self.table);
        for id in &self.ids {
            t.waiters.remove(id);
        }
    }
}

/// The two tasks serving one socket, and the way to reach them.
pub(crate) struct Connection {
    table: Shared,
    lines: mpsc::UnboundedSender<Vec<u8>>,
    tasks: [JoinHandle<()>; 2],
}

impl Connection {
    /// Starts the reader and writer tasks on the current tokio runtime; events arrive on the
    /// receiver.
    pub(crate) fn start(stream: UnixStream) -> (Connection, mpsc::UnboundedReceiver<Pushed>) {
        let (read, write) = stream.into_split();
        let table = Shared::default();
        let (lines, lines_rx) = mpsc::unbounded_channel();
        let (events, events_rx) = mpsc::unbounded_channel();
        let tasks = [
            tokio::spawn(write_lines(write, lines_rx)),
            tokio::spawn(read_lines(BufReader::new(read), table.clone(), events)),
        ];
        let conn = Connection {
            table,
            lines,
            tasks,
        };
        (conn, events_rx)
    }

    /// Sends `calls` in one line (a JSON-RPC batch if `batch`, else exactly one call) and waits
    /// for their answers, in the order of `calls`. On a connection the daemon closed with an
    /// error about the connection, every call gets that error.
    pub(crate) async fn exchange(
        &self,
        calls: &[(&str, &Value)],
        batch: bool,
    ) -> Result<Vec<Answer>, Error> {
        let mut pending = Pending {
            table: &self.table,
            ids: Vec::with_capacity(calls.len()),
        };
        let mut receivers = Vec::with_capacity(calls.len());
        {
            let mut t = lock(&self.table);
            if t.closed {
                return match &t.last_word {
                    Some(word) => Ok(vec![Err(word.clone()); calls.len()]),
                    None => Err(Error::Closed),
                };
            }
            let requests: Vec<Request<'_>> = calls
                .iter()
                .map(|&(method, params)| {
                    t.next_id += 1;
                    Request {
                        jsonrpc: "2.0",
                        id: t.next_id,
                        method,
                        params,
                    }
                })
                .collect();
            let line = match (batch, requests.as_slice()) {
                (true, _) => serde_json::to_vec(&requests),
                (false, [one]) => serde_json::to_vec(one),
                (false, _) => return Err(Error::Protocol("one call expected".into())),
            };
            let mut line = line.map_err(|e| Error::Protocol(e.to_string()))?;
            t.next_line += 1;
            let (seq, len) = (t.next_line, line.len());
            for r in &requests {
                let (tx, rx) = oneshot::channel();
                t.waiters.insert(r.id, Waiter { tx, line: seq, len });
                pending.ids.push(r.id);
                receivers.push(rx);
            }
            line.push(b'\n');
            // Queued under the lock: lines are written in the order of their numbers.
            if self.lines.send(line).is_err() {
                return Err(Error::Closed);
            }
        }
        let mut answers = Vec::with_capacity(receivers.len());
        for rx in receivers {
            answers.push(rx.await.map_err(|_| Error::Closed)?);
        }
        Ok(answers)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Writes queued lines until the connection is dropped or the socket fails (the reader then
/// sees the end of the connection and fails whoever still waits).
async fn write_lines(mut socket: OwnedWriteHalf, mut lines: mpsc::UnboundedReceiver<Vec<u8>>) {
    while let Some(line) = lines.recv().await {
        if socket.write_all(&line).await.is_err() {
            return;
        }
    }
}

/// Reads answers and events until the connection closes.
async fn read_lines(
    mut socket: BufReader<OwnedReadHalf>,
    table: Shared,
    events: mpsc::UnboundedSender<Pushed>,
) {
    let mut line = Vec::new();
    loop {
        line.clear();
        match socket.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let Ok(msg) = serde_json::from_slice::<Value>(&line) else {
            continue;
        };
        match msg {
            Value::Array(answers) => {
                for a in answers {
                    answer(a, &table);
                }
            }
            Value::Object(mut o) if o.get("method").and_then(Value::as_str) == Some("event") => {
                let params = o.remove("params").unwrap_or_default();
                // Nobody listening (receiver dropped) is fine.
                let _ = events.send(Pushed::from_params(params));
            }
            other => answer(other, &table),
        }
    }
    let mut t = lock(&table);
    t.closed = true;
    let word = t.last_word.clone();
    for (_, w) in t.waiters.drain() {
        // Dropping the sender without a word wakes the caller with `Closed`.
        if let Some(word) = &word {
            let _ = w.tx.send(Err(word.clone()));
        }
    }
}

/// Hands one answer object to its caller.
fn answer(mut msg: Value, table: &Shared) {
    let error = msg.get_mut("error").map(Value::take);
    let id = msg.get("id").unwrap_or(&Value::Null);
    if let Some(id) = id.as_u64() {
        let waiter = lock(table).waiters.remove(&id);
        if let Some(w) = waiter {
            let result = msg.get_mut("result").map(Value::take).unwrap_or_default();
            let _ = w.tx.send(error.map_or(Ok(result), Err));
        }
    } else if let (true, Some(error)) = (id.is_null(), error) {
        about_the_connection(error, table);
    }
}

/// An error with `id: null`: the daemon could not tell which request it answers. A request line
/// over the daemon's limit (`request_too_large`, with `data.max_bytes`) is the oldest waiting line
/// that long, since the daemon reads lines in order; anything else is about the connection
/// (it is closing: `unauthorized`, `too_many_connections`, …) and answers whoever still waits
/// when it closes.
fn about_the_connection(error: Value, table: &Shared) {
    let mut t = lock(table);
    let max = (error["data"]["kind"] == "request_too_large")
        .then(|| error["data"]["max_bytes"].as_u64())
        .flatten();
    let line = max.and_then(|max| {
        t.waiters
            .values()
            .filter(|w| w.len as u64 > max)
            .map(|w| w.line)
            .min()
    });
    let Some(line) = line else {
        t.last_word = Some(error);
        return;
    };
    let ids: Vec<u64> = t
        .waiters
        .iter()
        .filter(|(_, w)| w.line == line)
        .map(|(id, _)| *id)
        .collect();
    for id in ids {
        if let Some(w) = t.waiters.remove(&id) {
            let _ = w.tx.send(Err(error.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::io::AsyncBufReadExt;

    /// A connection whose other end is played by the test: its request lines, and a way to
    /// answer them.
    struct Peer {
        lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
        write: OwnedWriteHalf,
    }

    impl Peer {
        async fn request(&mut self) -> Value {
            let line = self.lines.next_line().await.unwrap().unwrap();
            serde_json::from_str(&line).unwrap()
        }

        async fn send(&mut self, v: Value) {
            let mut line = v.to_string().into_bytes();
            line.push(b'\n');
            self.write.write_all(&line).await.unwrap();
        }
    }

    async fn one(conn: &Connection, method: &str, params: Value) -> Result<Vec<Answer>, Error> {
        conn.exchange(&[(method, &params)], false).await
    }

    fn pair() -> (Connection, mpsc::UnboundedReceiver<Pushed>, Peer) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (conn, events) = Connection::start(ours);
        let (read, write) = theirs.into_split();
        let lines = BufReader::new(read).lines();
        (conn, events, Peer { lines, write })
    }

    #[tokio::test]
    async fn answers_out_of_order_reach_their_callers_and_events_the_receiver() {
        let (conn, mut events, mut peer) = pair();
        let (p1, p2) = (json!({"n": 1}), json!({"n": 2}));
        let first = one(&conn, "one", p1.clone());
        let second = one(&conn, "two", p2.clone());
        let server = async {
            let a = peer.request().await;
            let b = peer.request().await;
            assert_eq!((&a["method"], &a["params"]), (&json!("one"), &p1));
            assert_eq!(a["jsonrpc"], "2.0");
            peer.send(json!({"jsonrpc": "2.0", "method": "event",
                "params": {"subscription": 1, "event": {"type": "events_lost", "missed": 2}}}))
                .await;
            peer.send(
                json!({"jsonrpc": "2.0", "id": b["id"], "error": {"code": -1, "message": "no"}}),
            )
            .await;
            peer.send(json!({"jsonrpc": "2.0", "id": a["id"], "result": "first"}))
                .await;
        };
        let (r1, r2, ()) = tokio::join!(first, second, server);
        assert_eq!(r1.unwrap(), [Ok(json!("first"))]);
        assert_eq!(r2.unwrap(), [Err(json!({"code": -1, "message": "no"}))]);
        let e = events.recv().await.unwrap();
        assert_eq!(e.event, crate::Event::EventsLost { missed: 2 });
    }

    #[tokio::test]
    async fn a_batch_is_one_line_and_its_answers_come_back_in_call_order() {
        let (conn, _events, mut peer) = pair();
        let p = json!({});
        let calls = [("a", &p), ("b", &p), ("c", &p)];
        let batch = conn.exchange(&calls, true);
        let server = async {
            let reqs = peer.request().await;
            let ids: Vec<Value> = reqs
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].clone())
                .collect();
            assert_eq!(ids.len(), 3);
            peer.send(json!([
                {"jsonrpc": "2.0", "id": ids[2], "result": "c"},
                {"jsonrpc": "2.0", "id": ids[0], "result": "a"},
                {"jsonrpc": "2.0", "id": ids[1], "error": {"code": -2, "message": "b"}},
            ]))
            .await;
        };
        let (answers, ()) = tokio::join!(batch, server);
        let answers = answers.unwrap();
        assert_eq!(answers[0], Ok(json!("a")));
        assert_eq!(answers[1], Err(json!({"code": -2, "message": "b"})));
        assert_eq!(answers[2], Ok(json!("c")));
    }

    #[tokio::test]
    async fn request_too_large_answers_the_oversized_line_not_an_older_one() {
        let (conn, _events, mut peer) = pair();
        let small = json!({});
        let big = json!({"pad": "x".repeat(5000)});
        let slow = one(&conn, "slow", small.clone());
        let oversized = one(&conn, "big", big.clone());
        let too_large = json!({"code": -32001, "message": "too large",
            "data": {"kind": "request_too_large", "max_bytes": 4096}});
        let server = async {
            let a = peer.request().await;
            let _ = peer.request().await;
            peer.send(json!({"jsonrpc": "2.0", "id": null, "error": too_large}))
                .await;
            peer.send(json!({"jsonrpc": "2.0", "id": a["id"], "result": "slept"}))
                .await;
        };
        let (slow, oversized, ()) = tokio::join!(slow, oversized, server);
        assert_eq!(slow.unwrap(), [Ok(json!("slept"))]);
        assert_eq!(oversized.unwrap(), [Err(too_large)]);
    }

    #[tokio::test]
    async fn the_last_word_of_a_closing_daemon_answers_every_call() {
        let (conn, _events, mut peer) = pair();
        let p = json!({});
        let waiting = one(&conn, "status", p.clone());
        let word = json!({"code": -32003, "message": "go away", "data": {"kind": "unauthorized"}});
        let server = async {
            let _ = peer.request().await;
            peer.send(json!({"jsonrpc": "2.0", "id": null, "error": word}))
                .await;
            drop(peer);
        };
        let (r, ()) = tokio::join!(waiting, server);
        assert_eq!(r.unwrap(), [Err(word.clone())]);
        assert_eq!(one(&conn, "later", p.clone()).await.unwrap(), [Err(word)]);
    }

    #[tokio::test]
    async fn a_closed_connection_fails_calls_and_a_call_given_up_is_forgotten() {
        let (conn, _events, mut peer) = pair();
        let p = json!({});
        let given_up = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            one(&conn, "slow", p.clone()),
        )
        .await;
        assert!(given_up.is_err());
        assert!(lock(&conn.table).waiters.is_empty());
        // Its late answer is ignored; the next call gets its own.
        let next = one(&conn, "next", p.clone());
        let server = async {
            let a = peer.request().await;
            let b = peer.request().await;
            peer.send(json!({"jsonrpc": "2.0", "id": a["id"], "result": "late"}))
                .await;
            peer.send(json!({"jsonrpc": "2.0", "id": b["id"], "result": "mine"}))
                .await;
            drop(peer);
        };
        let (r, ()) = tokio::join!(next, server);
        assert_eq!(r.unwrap(), [Ok(json!("mine"))]);
        // The other end is gone: calls fail with `Closed` (nothing was said).
        let r = one(&conn, "after", p.clone()).await;
        assert!(matches!(r, Err(Error::Closed)), "{r:?}");
    }
}

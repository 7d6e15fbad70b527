//! One client connection: check who it is, read request lines with a size limit, run each request
//! as its own task (at most `max_in_flight` at once), and write answers and events through one
//! writer task.

use std::sync::Arc;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::rpc::ctx::{ClientGuard, Conn, Ctx};
use crate::rpc::dispatch::{error_line, Dispatcher};
use crate::rpc::error::{ErrorKind, RpcError};

/// Lines queued for the writer before senders wait.
const OUT_QUEUE: usize = 256;

/// What [`LineReader::next_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line, without its `\n` (and `\r`).
    Data(Vec<u8>),
    /// A line longer than the limit; it was read and thrown away.
    TooLong,
}

/// Reads `\n`-terminated lines, never holding more than `max` bytes of one.
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    max: usize,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    /// Lines of at most `max` bytes from `inner`.
    pub fn new(inner: R, max: usize) -> Self {
        Self { inner, max }
    }

    /// The next line; `None` at end of input. A last line without `\n` still counts.
    pub async fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        let mut buf = Vec::new();
        let mut too_long = false;
        loop {
            let avail = self.inner.fill_buf().await?;
            if avail.is_empty() {
                return Ok(match (too_long, buf.is_empty()) {
                    (true, _) => Some(Line::TooLong),
                    (false, true) => None,
                    (false, false) => Some(finish(buf)),
                });
            }
            let (chunk, consumed, done) = match avail.iter().position(|&b| b == b'\n') {
                Some(i) => (&avail[..i], i + 1, true),
                None => (avail, avail.len(), false),
            };
            if !too_long {
                // `\r` before `\n` may push the line one byte over; allow for it.
                if buf.len() + chunk.len() > self.max.saturating_add(1) {
                    too_long = true;
                    buf = Vec::new();
                } else {
                    buf.extend_from_slice(chunk);
                }
            }
            self.inner.consume(consumed);
            if done {
                if too_long {
                    return Ok(Some(Line::TooLong));
                }
                let line = finish(buf);
                if matches!(&line, Line::Data(d) if d.len() > self.max) {
                    return Ok(Some(Line::TooLong));
                }
                return Ok(Some(line));
            }
        }
    }
}

fn finish(mut buf: Vec<u8>) -> Line {
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Line::Data(buf)
}

/// Limits applied to each connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest request line.
    pub max_request_bytes: usize,
    /// Requests running at once.
    pub max_in_flight: usize,
}

/// Serves one accepted connection until the client closes it or `shutdown` turns true.
pub async fn serve_connection(
    stream: UnixStream,
    conn_id: u64,
    ctx: Arc<Ctx>,
    dispatcher: Arc<Dispatcher>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let our_uid = crate::config::current_uid();
    let (peer_uid, peer_pid) = match stream.peer_cred() {
        Ok(cred) => (Some(cred.uid()), cred.pid()),
        Err(e) => {
            tracing::warn!(conn = conn_id, error = %e, "cannot read peer credentials");
            (None, None)
        }
    };
    if peer_uid != Some(our_uid) {
        tracing::warn!(
            conn = conn_id,
            ?peer_uid,
            ?peer_pid,
            "refused connection from another uid"
        );
        let line = error_line(None, &RpcError::from(ErrorKind::Unauthorized)) + "\n";
        let mut stream = stream;
        let _ = stream.write_all(line.as_bytes()).await;
        let _ = stream.shutdown().await;
        return;
    }
    let _client = ClientGuard::new(Arc::clone(&ctx));
    tracing::debug!(conn = conn_id, ?peer_pid, "client connected");

    let (read_half, write_half) = stream.into_split();
    let (out_tx, out_rx) = mpsc::channel::<String>(OUT_QUEUE);
    let writer = tokio::spawn(write_lines(write_half, out_rx, conn_id));
    let conn = Conn::new(conn_id, peer_pid, out_tx.clone());
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight.max(1)));
    let mut reader = LineReader::new(
        BufReader::with_capacity(64 * 1024, read_half),
        limits.max_request_bytes,
    );

    loop {
        let line = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            line = reader.next_line() => line,
        };
        let line = match line {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(conn = conn_id, error = %e, "read failed");
                break;
            }
        };
        let text = match line {
            Line::TooLong => {
                let err = RpcError::new(
                    ErrorKind::RequestTooLarge,
                    format!(
                        "request line exceeds {} bytes; it was discarded",
                        limits.max_request_bytes
                    ),
                )
                .with_data(serde_json::json!({"max_bytes": limits.max_request_bytes}));
                if out_tx.send(error_line(None, &err)).await.is_err() {
                    break;
                }
                continue;
            }
            Line::Data(bytes) => match String::from_utf8(bytes) {
                Ok(text) => text,
                Err(_) => {
                    let err = RpcError::new(ErrorKind::ParseError, "request is not valid UTF-8");
                    if out_tx.send(error_line(None, &err)).await.is_err() {
                        break;
                    }
                    continue;
                }
            },
        };
        if text.trim().is_empty() {
            continue;
        }
        // Backpressure: with `max_in_flight` requests running, stop reading until one ends.
        let permit = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            permit = Arc::clone(&in_flight).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let dispatcher = Arc::clone(&dispatcher);
        let out = out_tx.clone();
        let req_conn = conn.for_request();
        tokio::spawn(async move {
            if let Some(answer) = dispatcher.handle_line(&text, &req_conn).await {
                let _ = out.send(answer).await;
            }
            req_conn.answer_queued();
            drop(permit);
        });
    }

    // Let running requests finish (the server bounds the total wait), then close.
    let all = u32::try_from(limits.max_in_flight.max(1)).unwrap_or(u32::MAX);
    let _ = in_flight.acquire_many(all).await;
    conn.close();
    drop(conn);
    drop(out_tx);
    let _ = writer.await;
    tracing::debug!(conn = conn_id, "client disconnected");
}

async fn write_lines(
    half: tokio::net::unix::OwnedWriteHalf,
    mut rx: mpsc::Receiver<String>,
    conn_id: u64,
) {
    let mut w = BufWriter::new(half);
    while let Some(line) = rx.recv().await {
        let res = async {
            w.write_all(line.as_bytes()).await?;
            w.write_all(b"\n").await?;
            if rx.is_empty() {
                w.flush().await?;
            }
            std::io::Result::Ok(())
        }
        .await;
        if let Err(e) = res {
            tracing::debug!(conn = conn_id, error = %e, "write failed");
            // Keep draining so that senders never wait on a dead client.
            while rx.recv().await.is_some() {}
            return;
        }
    }
    let _ = w.flush().await;
    let _ = w.into_inner().shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<Line> {
        // A tiny buffer exercises lines split across reads.
        let mut r = LineReader::new(BufReader::with_capacity(4, input), max);
        let mut out = Vec::new();
        while let Ok(Some(l)) = r.next_line().await {
            out.push(l);
        }
        out
    }

    #[tokio::test]
    async fn reads_lines_within_the_limit() {
        let got = lines(b"abc\r\n\nabcdefgh\nxyz", 5).await;
        assert_eq!(
            got,
            vec![
                Line::Data(b"abc".to_vec()),
                Line::Data(Vec::new()),
                Line::TooLong,
                Line::Data(b"xyz".to_vec()),
            ]
        );
        assert_eq!(
            lines(b"12345\n123456\n", 5).await,
            vec![Line::Data(b"12345".to_vec()), Line::TooLong]
        );
    }
}

//! One client connection: check who it is, read request lines with a size limit, run each request
//! as its own task (at most `max_in_flight` at once), and write answers and events through one
//! writer task.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::rpc::ctx::{ClientGuard, Conn, Ctx};
use crate::rpc::dispatch::{error_line, Dispatcher};
use crate::rpc::error::{ErrorKind, RpcError};

/// Event and error lines queued for the writer before senders wait (answers are bounded in
/// bytes instead, see [`Limits::max_queued_bytes`]).
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
    /// How long a line may take from its first byte to its `\n`.
    partial_timeout: Option<Duration>,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    /// Lines of at most `max` bytes from `inner`.
    pub fn new(inner: R, max: usize) -> Self {
        Self {
            inner,
            max,
            partial_timeout: None,
        }
    }

    /// Fails a line (with `TimedOut`) that is not complete `timeout` after its first byte, so a
    /// client trickling bytes cannot hold a connection forever. Waiting between lines is not
    /// limited: an idle connection is not a partial line.
    pub fn with_partial_timeout(mut self, timeout: Duration) -> Self {
        self.partial_timeout = Some(timeout);
        self
    }

    /// The next line; `None` at end of input. A last line without `\n` still counts.
    pub async fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        let mut buf = Vec::new();
        let mut too_long = false;
        let mut deadline: Option<Instant> = None;
        loop {
            let avail = match (deadline, self.partial_timeout) {
                (Some(d), Some(_)) => match tokio::time::timeout_at(d, self.inner.fill_buf()).await
                {
                    Ok(r) => r?,
                    Err(_) => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "request line not completed in time",
                        ))
                    }
                },
                _ => self.inner.fill_buf().await?,
            };
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
            if deadline.is_none() && !done {
                deadline = self.partial_timeout.map(|t| Instant::now() + t);
            }
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
    /// Bytes of answers waiting to be written; while they are used up, no request is read.
    pub max_queued_bytes: usize,
    /// How long a request line may take from its first byte to its end.
    pub partial_line_timeout: Duration,
    /// How long a pending answer may stay unread before the client is disconnected.
    pub write_stall_timeout: Duration,
}

/// What the server knows of a connection, to pick one to close when at `--max-connections`.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last line read or answer written.
    last_ms: AtomicU64,
    /// Requests running.
    busy: AtomicUsize,
    /// Asked to close already (so the next new connection picks another one).
    evicted: AtomicBool,
    evict: Notify,
}

impl Activity {
    /// A fresh record (active now).
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long the connection has been idle; `None` while a request runs.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.busy.load(Ordering::Relaxed) > 0 || self.evicted.load(Ordering::Relaxed) {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.epoch.elapsed().saturating_sub(last))
    }

    /// Asks the connection to close (it answers `too_many_connections` first).
    pub fn evict(&self) {
        self.evicted.store(true, Ordering::Relaxed);
        self.evict.notify_one();
    }
}

/// An answer with the queue space it holds until written.
type Answer = (String, OwnedSemaphorePermit);

/// Serves one accepted connection until the client closes it or `shutdown` turns true.
pub async fn serve_connection(
    stream: UnixStream,
    conn_id: u64,
    ctx: Arc<Ctx>,
    dispatcher: Arc<Dispatcher>,
    limits: Limits,
    activity: Arc<Activity>,
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
    // Unbounded in lines, bounded in bytes by `queue` (each answer holds its size in permits).
    let (ans_tx, ans_rx) = mpsc::unbounded_channel::<Answer>();
    let queue_bytes = limits.max_queued_bytes.clamp(1, u32::MAX as usize);
    let queue = Arc::new(Semaphore::new(queue_bytes));
    let (dead_tx, mut dead) = watch::channel(false);
    let writer = tokio::spawn(write_lines(
        write_half,
        ans_rx,
        out_rx,
        conn_id,
        limits.write_stall_timeout,
        Arc::clone(&activity),
        dead_tx,
    ));
    let conn = Conn::new(conn_id, peer_pid, out_tx.clone());
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight.max(1)));
    let mut reader = LineReader::new(
        BufReader::with_capacity(64 * 1024, read_half),
        limits.max_request_bytes,
    )
    .with_partial_timeout(limits.partial_line_timeout);

    loop {
        // Backpressure: while the client leaves a full queue of answers unread, read nothing.
        if queue.available_permits() == 0 {
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => break,
                _ = dead.wait_for(|d| *d) => break,
                _ = queue.acquire() => {}
            }
        }
        let line = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            _ = dead.wait_for(|d| *d) => break,
            () = activity.evict.notified() => {
                tracing::info!(conn = conn_id, "closing the longest idle connection: --max-connections reached");
                let err = RpcError::new(
                    ErrorKind::TooManyConnections,
                    "closed to make room for a new connection (this one was the longest idle)",
                );
                let _ = out_tx.try_send(error_line(None, &err));
                break;
            }
            line = reader.next_line() => line,
        };
        let line = match line {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                tracing::info!(
                    conn = conn_id,
                    "request line not completed in time; closing"
                );
                let err = RpcError::new(
                    ErrorKind::LineTimeout,
                    format!(
                        "request line not completed within {} s; closing",
                        limits.partial_line_timeout.as_secs()
                    ),
                );
                let _ = out_tx.try_send(error_line(None, &err));
                break;
            }
            Err(e) => {
                tracing::debug!(conn = conn_id, error = %e, "read failed");
                break;
            }
        };
        activity.touch();
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
        let out = ans_tx.clone();
        let queue = Arc::clone(&queue);
        let req_conn = conn.for_request();
        let activity = Arc::clone(&activity);
        activity.busy.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            if let Some(answer) = dispatcher.handle_line(&text, &req_conn).await {
                let size = u32::try_from(answer.len().clamp(1, queue_bytes)).unwrap_or(u32::MAX);
                if let Ok(space) = queue.acquire_many_owned(size).await {
                    let _ = out.send((answer, space));
                }
            }
            req_conn.answer_queued();
            activity.busy.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }

    // Let running requests finish (the server bounds the total wait), then close.
    let all = u32::try_from(limits.max_in_flight.max(1)).unwrap_or(u32::MAX);
    let _ = in_flight.acquire_many(all).await;
    conn.close();
    drop(conn);
    drop(out_tx);
    drop(ans_tx);
    let _ = writer.await;
    tracing::debug!(conn = conn_id, "client disconnected");
}

async fn write_lines(
    half: tokio::net::unix::OwnedWriteHalf,
    mut answers: mpsc::UnboundedReceiver<Answer>,
    mut events: mpsc::Receiver<String>,
    conn_id: u64,
    stall: Duration,
    activity: Arc<Activity>,
    dead: watch::Sender<bool>,
) {
    let mut w = BufWriter::new(half);
    loop {
        // Answers first: a `subscribe` answer is queued before its first event can be.
        let (line, space) = tokio::select! {
            biased;
            Some((line, space)) = answers.recv() => (line, Some(space)),
            Some(line) = events.recv() => (line, None),
            else => break,
        };
        let write = async {
            w.write_all(line.as_bytes()).await?;
            w.write_all(b"\n").await?;
            if answers.is_empty() && events.is_empty() {
                w.flush().await?;
            }
            std::io::Result::Ok(())
        };
        let res = match tokio::time::timeout(stall, write).await {
            Ok(res) => res,
            Err(_) => {
                tracing::warn!(
                    conn = conn_id,
                    stall_s = stall.as_secs(),
                    "client reads none of its answers; disconnecting"
                );
                Err(std::io::ErrorKind::TimedOut.into())
            }
        };
        drop(space);
        activity.touch();
        if let Err(e) = res {
            tracing::debug!(conn = conn_id, error = %e, "write failed");
            let _ = dead.send(true);
            drop(w);
            // Keep draining so that senders never wait on a dead client.
            loop {
                tokio::select! {
                    Some(_) = answers.recv() => {}
                    Some(_) = events.recv() => {}
                    else => return,
                }
            }
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

//! One client connection: check who it is, read request lines with a size limit, run each request
//! as its own task (at most `max_in_flight` at once), and write answers and events through one
//! writer task.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::codec::{Decoder, LinesCodec, LinesCodecError};

use crate::rpc::ctx::{ClientGuard, Conn, Ctx};
use crate::rpc::dispatch::{error_line, Dispatcher};
use crate::rpc::error::{ErrorKind, RpcError};

/// Event and error lines queued for the writer before senders wait (answers are bounded in
/// bytes instead, see [`Limits::max_queued_bytes`]).
const OUT_QUEUE: usize = 256;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;

/// What [`LineReader::next_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line, without its `\n` (and `\r`).
    Text(String),
    /// A line longer than the limit: reported as soon as the limit is passed, and the rest of
    /// it is thrown away as it arrives.
    TooLong,
    /// A line that is not UTF-8 (thrown away).
    NotUtf8,
}

/// Reads `\n`-terminated lines through [`LinesCodec`], never holding more than `max` bytes of
/// one (plus one read).
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    codec: LinesCodec,
    buf: BytesMut,
    max: usize,
    /// How long a line may take from its first byte to its `\n`.
    partial_timeout: Option<Duration>,
    /// When the line whose bytes were read last began, while it is not complete.
    line_started: Option<Instant>,
    eof: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// Lines of at most `max` bytes from `inner`.
    pub fn new(inner: R, max: usize) -> Self {
        Self {
            inner,
            // One more for a `\r` before the `\n`, which the codec counts.
            codec: LinesCodec::new_with_max_length(max.saturating_add(1)),
            buf: BytesMut::new(),
            max,
            partial_timeout: None,
            line_started: None,
            eof: false,
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
        loop {
            let decoded = match self.eof {
                true => self.codec.decode_eof(&mut self.buf),
                false => self.codec.decode(&mut self.buf),
            };
            match decoded {
                Ok(Some(line)) if line.len() > self.max => return Ok(Some(Line::TooLong)),
                Ok(Some(line)) => return Ok(Some(Line::Text(line))),
                Ok(None) if self.eof => return Ok(None),
                Ok(None) => {}
                Err(LinesCodecError::MaxLineLengthExceeded) => return Ok(Some(Line::TooLong)),
                // The codec does no I/O of its own: its only I/O error is a line not in UTF-8.
                Err(LinesCodecError::Io(_)) => return Ok(Some(Line::NotUtf8)),
            }
            self.read().await?;
        }
    }

    /// Reads what has arrived, within the partial-line deadline if a line is under way.
    async fn read(&mut self) -> std::io::Result<()> {
        self.buf.reserve(READ_CHUNK);
        let deadline = self.line_started.zip(self.partial_timeout);
        let n = match deadline {
            Some((started, timeout)) => {
                tokio::time::timeout_at(started + timeout, self.inner.read_buf(&mut self.buf))
                    .await
                    .map_err(|_| {
                        std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "request line not completed in time",
                        )
                    })??
            }
            None => self.inner.read_buf(&mut self.buf).await?,
        };
        if n == 0 {
            self.eof = true;
            return Ok(());
        }
        let chunk = &self.buf[self.buf.len() - n..];
        self.line_started = match (chunk.last(), chunk.contains(&b'\n')) {
            (Some(b'\n'), _) => None,
            (_, true) => Some(Instant::now()),
            (_, false) => self.line_started.or_else(|| Some(Instant::now())),
        };
        Ok(())
    }
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

/// What every connection of the daemon shares.
#[derive(Debug)]
pub struct Service {
    /// The daemon-wide context.
    pub ctx: Arc<Ctx>,
    /// Request lines to answer lines.
    pub dispatcher: Dispatcher,
    /// The limits of each connection.
    pub limits: Limits,
}

/// Serves one accepted connection until the client closes it or `shutdown` turns true.
pub async fn serve_connection(
    stream: UnixStream,
    conn_id: u64,
    service: Arc<Service>,
    activity: Arc<Activity>,
    shutdown: watch::Receiver<bool>,
) {
    let Some((stream, peer_pid)) = authorize(stream, conn_id).await else {
        return;
    };
    let _client = ClientGuard::new(Arc::clone(&service.ctx));
    tracing::debug!(conn = conn_id, ?peer_pid, "client connected");

    let limits = service.limits;
    let (read_half, write_half) = stream.into_split();
    let (out_tx, out_rx) = mpsc::channel::<String>(OUT_QUEUE);
    // Unbounded in lines, bounded in bytes by `queue` (each answer holds its size in permits).
    let (ans_tx, ans_rx) = mpsc::unbounded_channel::<Answer>();
    let queue_bytes = limits.max_queued_bytes.clamp(1, u32::MAX as usize);
    let (dead_tx, dead) = watch::channel(false);
    let writer = Writer {
        out: BufWriter::new(write_half),
        answers: ans_rx,
        events: out_rx,
        conn_id,
        stall: limits.write_stall_timeout,
        activity: Arc::clone(&activity),
        dead: dead_tx,
    };
    let writer = tokio::spawn(writer.run());
    let mut requests = Requests {
        conn_id,
        conn: Conn::new(conn_id, peer_pid, out_tx.clone()),
        service,
        activity,
        out: out_tx,
        answers: ans_tx,
        queue: Arc::new(Semaphore::new(queue_bytes)),
        queue_bytes,
        in_flight: Arc::new(Semaphore::new(limits.max_in_flight.max(1))),
        shutdown,
        dead,
    };
    let reader = LineReader::new(read_half, limits.max_request_bytes)
        .with_partial_timeout(limits.partial_line_timeout);
    requests.run(reader).await;
    requests.close(writer).await;
    tracing::debug!(conn = conn_id, "client disconnected");
}

/// Lets only our own uid in: anyone else gets `unauthorized` and the connection is closed.
/// Returns the stream and the peer's pid.
async fn authorize(mut stream: UnixStream, conn_id: u64) -> Option<(UnixStream, Option<i32>)> {
    let (peer_uid, peer_pid) = match stream.peer_cred() {
        Ok(cred) => (Some(cred.uid()), cred.pid()),
        Err(e) => {
            tracing::warn!(conn = conn_id, error = %e, "cannot read peer credentials");
            (None, None)
        }
    };
    if peer_uid == Some(crate::socket_trust::current_uid()) {
        return Some((stream, peer_pid));
    }
    tracing::warn!(
        conn = conn_id,
        ?peer_uid,
        ?peer_pid,
        "refused connection from another uid"
    );
    let line = error_line(None, &RpcError::from(ErrorKind::Unauthorized)) + "\n";
    let _ = stream.write_all(line.as_bytes()).await;
    let _ = stream.shutdown().await;
    None
}

/// The reading side of a connection: request lines in, request tasks out.
struct Requests {
    conn_id: u64,
    conn: Conn,
    service: Arc<Service>,
    activity: Arc<Activity>,
    /// Error lines and events, to the writer.
    out: mpsc::Sender<String>,
    /// Answers, to the writer.
    answers: mpsc::UnboundedSender<Answer>,
    /// Room for answers not yet written, in bytes.
    queue: Arc<Semaphore>,
    queue_bytes: usize,
    /// One permit per request that may run.
    in_flight: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
    /// Turns true when the writer found the client gone.
    dead: watch::Receiver<bool>,
}

/// Resolves when the daemon shuts down or the client is gone.
async fn closing(shutdown: &mut watch::Receiver<bool>, dead: &mut watch::Receiver<bool>) {
    tokio::select! {
        biased;
        _ = shutdown.wait_for(|stop| *stop) => {}
        _ = dead.wait_for(|d| *d) => {}
    }
}

impl Requests {
    async fn run<R: AsyncRead + Unpin>(&mut self, mut reader: LineReader<R>) {
        while let Some(line) = self.next_line(&mut reader).await {
            self.activity.touch();
            let text = match line {
                Line::Text(text) => text,
                Line::TooLong => {
                    let max = self.service.limits.max_request_bytes;
                    let err = RpcError::new(
                        ErrorKind::RequestTooLarge,
                        format!("request line exceeds {max} bytes; it was discarded"),
                    )
                    .with_data(serde_json::json!({"max_bytes": max}));
                    if self.out.send(error_line(None, &err)).await.is_err() {
                        return;
                    }
                    continue;
                }
                Line::NotUtf8 => {
                    let err = RpcError::new(ErrorKind::ParseError, "request is not valid UTF-8");
                    if self.out.send(error_line(None, &err)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            if text.trim().is_empty() {
                continue;
            }
            // Backpressure: with `max_in_flight` requests running, stop reading until one ends.
            let permit = tokio::select! {
                biased;
                _ = self.shutdown.wait_for(|stop| *stop) => return,
                permit = Arc::clone(&self.in_flight).acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            self.spawn(text, permit);
        }
    }

    /// The next line, or `None` when the connection is to close (and why was said).
    async fn next_line<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut LineReader<R>,
    ) -> Option<Line> {
        // Backpressure: while the client leaves a full queue of answers unread, read nothing.
        if self.queue.available_permits() == 0 {
            tokio::select! {
                biased;
                () = closing(&mut self.shutdown, &mut self.dead) => return None,
                _ = self.queue.acquire() => {}
            }
        }
        let line = tokio::select! {
            biased;
            () = closing(&mut self.shutdown, &mut self.dead) => return None,
            () = self.activity.evict.notified() => {
                tracing::info!(conn = self.conn_id, "closing the longest idle connection: --max-connections reached");
                let err = RpcError::new(
                    ErrorKind::TooManyConnections,
                    "closed to make room for a new connection (this one was the longest idle)",
                );
                let _ = self.out.try_send(error_line(None, &err));
                return None;
            }
            line = reader.next_line() => line,
        };
        match line {
            Ok(line) => line,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                tracing::info!(
                    conn = self.conn_id,
                    "request line not completed in time; closing"
                );
                let err = RpcError::new(
                    ErrorKind::LineTimeout,
                    format!(
                        "request line not completed within {} s; closing",
                        self.service.limits.partial_line_timeout.as_secs()
                    ),
                );
                let _ = self.out.try_send(error_line(None, &err));
                None
            }
            Err(e) => {
                tracing::debug!(conn = self.conn_id, error = %e, "read failed");
                None
            }
        }
    }

    /// Runs one request line as its own task; its answer waits for room in the queue.
    fn spawn(&self, text: String, permit: OwnedSemaphorePermit) {
        let service = Arc::clone(&self.service);
        let out = self.answers.clone();
        let queue = Arc::clone(&self.queue);
        let queue_bytes = self.queue_bytes;
        let req_conn = self.conn.for_request();
        let activity = Arc::clone(&self.activity);
        activity.busy.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            if let Some(answer) = service.dispatcher.handle_line(&text, &req_conn).await {
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

    /// Lets running requests finish (the server bounds the total wait), then closes.
    async fn close(self, writer: JoinHandle<()>) {
        let all = u32::try_from(self.service.limits.max_in_flight.max(1)).unwrap_or(u32::MAX);
        let _ = self.in_flight.acquire_many(all).await;
        self.conn.close();
        // Dropping the senders (ours and the connection's) lets the writer finish.
        drop(self);
        let _ = writer.await;
    }
}

/// The writing side of a connection: answers and events out, in order, within the stall limit.
struct Writer {
    out: BufWriter<OwnedWriteHalf>,
    answers: mpsc::UnboundedReceiver<Answer>,
    events: mpsc::Receiver<String>,
    conn_id: u64,
    stall: Duration,
    activity: Arc<Activity>,
    dead: watch::Sender<bool>,
}

impl Writer {
    async fn run(mut self) {
        loop {
            // Answers first: a `subscribe` answer is queued before its first event can be.
            let (line, space) = tokio::select! {
                biased;
                Some((line, space)) = self.answers.recv() => (line, Some(space)),
                Some(line) = self.events.recv() => (line, None),
                else => break,
            };
            let res = self.write(&line).await;
            drop(space);
            self.activity.touch();
            if let Err(e) = res {
                tracing::debug!(conn = self.conn_id, error = %e, "write failed");
                let _ = self.dead.send(true);
                self.drain().await;
                return;
            }
        }
        let _ = self.out.flush().await;
        let _ = self.out.into_inner().shutdown().await;
    }

    /// Writes one line (flushing when nothing else waits), or fails after the stall limit.
    async fn write(&mut self, line: &str) -> std::io::Result<()> {
        let write = async {
            self.out.write_all(line.as_bytes()).await?;
            self.out.write_all(b"\n").await?;
            if self.answers.is_empty() && self.events.is_empty() {
                self.out.flush().await?;
            }
            std::io::Result::Ok(())
        };
        match tokio::time::timeout(self.stall, write).await {
            Ok(res) => res,
            Err(_) => {
                tracing::warn!(
                    conn = self.conn_id,
                    stall_s = self.stall.as_secs(),
                    "client reads none of its answers; disconnecting"
                );
                Err(std::io::ErrorKind::TimedOut.into())
            }
        }
    }

    /// After the client is gone: keeps draining so that senders never wait on a dead client.
    async fn drain(mut self) {
        loop {
            tokio::select! {
                Some(_) = self.answers.recv() => {}
                Some(_) = self.events.recv() => {}
                else => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<Line> {
        // Four bytes per read exercises lines split across reads.
        let chunks = input
            .chunks(4)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)));
        let stream = tokio_util::io::StreamReader::new(futures_util::stream::iter(chunks));
        let mut r = LineReader::new(stream, max);
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
                Line::Text("abc".into()),
                Line::Text(String::new()),
                Line::TooLong,
                Line::Text("xyz".into()),
            ]
        );
        assert_eq!(
            lines(b"12345\n123456\n", 5).await,
            vec![Line::Text("12345".into()), Line::TooLong]
        );
        assert_eq!(
            lines(b"12345\r\n\xff\nok\n", 5).await,
            vec![
                Line::Text("12345".into()),
                Line::NotUtf8,
                Line::Text("ok".into())
            ]
        );
    }
}

//! The MLLP listener: accept loop, per-connection framing, replies.
//!
//! [`run`] takes a bound listener, a [`Handler`], [`ServerSettings`] and a
//! stop signal, so a test binds `127.0.0.1:0` and stops the server at will
//! (the mini-redis shape). Each connection is served by one task that reads a
//! frame, awaits the handler, writes its reply, and only then reads the next
//! frame: replies go out in the order messages came in.
//!
//! Frames the framing core refuses (too large, bad end block in strict mode)
//! and payloads that are not HL7 messages never reach the handler: the
//! sender gets an AR NAK with an ERR segment and the connection stays open.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use causeway_message::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, trace, warn};

use crate::ack::{self, ControlIds};
use crate::frame::{Decoded, Frame, FrameDecoder, FramingEvent, FramingOptions};
use crate::tls::{PeerIdentity, ServerTls};

/// Read buffer growth step. Frames larger than this grow the buffer as they
/// arrive, up to the frame limit.
/// How far the idle timer may lag behind the real idle deadline before it is moved.
const TIMER_SLACK: Duration = Duration::from_secs(1);

const READ_CHUNK: usize = 8 * 1024;

/// First wait after a failed `accept`, doubled on each further failure.
const ACCEPT_BACKOFF_START: Duration = Duration::from_millis(10);

// === Handler ===

/// What the server sends back for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// Frame and send these bytes (usually an ACK), then read the next message.
    Send(Bytes),
    /// Send nothing and read the next message.
    Nothing,
    /// Send nothing and close the connection.
    Close,
}

impl From<Vec<u8>> for Reply {
    fn from(bytes: Vec<u8>) -> Self {
        Reply::Send(bytes.into())
    }
}

impl From<Bytes> for Reply {
    fn from(bytes: Bytes) -> Self {
        Reply::Send(bytes)
    }
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// Server-unique connection number, also in every log line of the connection.
    pub id: u64,
    /// The peer's address.
    pub peer_addr: SocketAddr,
    /// Our address on this connection.
    pub local_addr: SocketAddr,
    /// The verified client certificate's identity, when the client sent one (mTLS).
    pub peer_identity: Option<Arc<PeerIdentity>>,
}

/// Handles one message at a time for the server.
///
/// The server parses each message only far enough to log its control id and
/// type; the handler gets the raw payload and decides what to reply. A
/// closure `Fn(Bytes, ConnectionInfo) -> impl Future<Output = Reply>` is a
/// handler.
pub trait Handler: Send + Sync + 'static {
    /// Handles one message and says what to send back.
    fn call(&self, message: Bytes, conn: ConnectionInfo) -> impl Future<Output = Reply> + Send;
}

impl<F, Fut> Handler for F
where
    F: Fn(Bytes, ConnectionInfo) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send,
{
    fn call(&self, message: Bytes, conn: ConnectionInfo) -> impl Future<Output = Reply> + Send {
        self(message, conn)
    }
}

/// Hooks for metrics: told about connections and framing anomalies as they happen. All
/// methods default to doing nothing. Called on the connection's task: keep them cheap.
pub trait Observer: Send + Sync + std::fmt::Debug + 'static {
    /// A connection was accepted (before any TLS handshake).
    fn connection_opened(&self, _conn: &ConnectionInfo) {}
    /// A connection ended, however it ended.
    fn connection_closed(&self, _conn: &ConnectionInfo) {}
    /// A connection over `max_connections` was closed right after accept.
    fn connection_refused(&self, _peer: std::net::SocketAddr) {}
    /// The framing core reported an anomaly on a connection.
    fn framing_event(&self, _conn: &ConnectionInfo, _event: &FramingEvent) {}
}

/// Tells the observer a connection closed, on every way out of the connection task.
struct ClosedGuard {
    observer: Option<Arc<dyn Observer>>,
    info: ConnectionInfo,
}

impl Drop for ClosedGuard {
    fn drop(&mut self) {
        if let Some(o) = &self.observer {
            o.connection_closed(&self.info);
        }
    }
}

// === Settings ===

/// Listener configuration. Every limit has a default; the docs say what an
/// unset or large value risks.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerSettings {
    /// Most connections served at once. A connection over the limit is
    /// logged and closed right after accept. Default 256.
    pub max_connections: usize,
    /// Longest time to receive one whole frame once its start byte arrived;
    /// a sender trickling bytes slower than this is disconnected. Default 30 s.
    pub read_timeout: Duration,
    /// Longest time a connection may sit between frames before it is closed.
    /// `None` keeps idle connections forever (each holds a connection slot).
    /// Default 10 minutes.
    pub idle_timeout: Option<Duration>,
    /// Longest time to write one reply. Default 30 s.
    pub write_timeout: Duration,
    /// Longest time for a TLS handshake. Default 10 s.
    pub handshake_timeout: Duration,
    /// TCP keepalive idle time, so dead peers behind NATs are noticed.
    /// `None` disables keepalive. Default 60 s.
    pub tcp_keepalive: Option<Duration>,
    /// After the stop signal, how long open connections may take to finish
    /// the message in hand before they are cut. Default 30 s.
    pub grace_period: Duration,
    /// Longest wait between retries when `accept` keeps failing (e.g. out of
    /// file descriptors). Default 5 s.
    pub accept_backoff_max: Duration,
    /// Framing bytes, size limit and strictness.
    pub framing: FramingOptions,
    /// Send an MLLP Release 2 commit ACK block when the handler returns
    /// (before its reply), and a commit NAK block instead of an HL7 NAK for
    /// refused frames. Default `false` (Release 1).
    pub commit_acks: bool,
    /// TLS for this listener; `None` serves plain TCP. Reloading is the
    /// caller's business ([`ServerTls::reload`], [`ServerTls::watch`]).
    pub tls: Option<Arc<ServerTls>>,
    /// Control ids for the NAKs the server writes itself.
    pub control_ids: Arc<ControlIds>,
    /// Metrics hooks; `None` observes nothing.
    pub observer: Option<Arc<dyn Observer>>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            max_connections: 256,
            read_timeout: Duration::from_secs(30),
            idle_timeout: Some(Duration::from_secs(600)),
            write_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            tcp_keepalive: Some(Duration::from_secs(60)),
            grace_period: Duration::from_secs(30),
            accept_backoff_max: Duration::from_secs(5),
            framing: FramingOptions::default(),
            commit_acks: false,
            tls: None,
            control_ids: Arc::new(ControlIds::new()),
            observer: None,
        }
    }
}

/// Why the server stopped other than by its stop signal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The listener's local address could not be read.
    #[error("listener unusable: {0}")]
    Listener(io::Error),
}

// === run ===

/// Serves MLLP on `listener` until `shutdown` completes, then drains.
///
/// On shutdown the listener is closed at once, idle connections are closed,
/// and connections in the middle of a message finish it (reply included)
/// within `settings.grace_period`; whatever is still running then is aborted
/// with a warning.
pub async fn run<H: Handler>(
    listener: TcpListener,
    handler: H,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let local_addr = listener.local_addr().map_err(ServerError::Listener)?;
    let shared = Arc::new(Shared { handler, settings });
    let limit = Arc::new(Semaphore::new(shared.settings.max_connections));
    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let mut backoff = ACCEPT_BACKOFF_START;
    let next_id = AtomicU64::new(1);
    tokio::pin!(shutdown);
    info!(
        %local_addr,
        tls = shared.settings.tls.is_some(),
        max_connections = shared.settings.max_connections,
        "MLLP listener started"
    );

    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => log_task_end(done),
            accepted = listener.accept() => {
                let (socket, peer_addr) = match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        // Usually fd exhaustion: give connections time to
                        // close instead of spinning (mini-redis).
                        warn!(%error, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                        tokio::select! {
                            () = &mut shutdown => break,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(shared.settings.accept_backoff_max);
                        continue;
                    }
                };
                backoff = ACCEPT_BACKOFF_START;
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    warn!(
                        conn = id,
                        peer = %peer_addr,
                        max_connections = shared.settings.max_connections,
                        "connection limit reached; closing new connection"
                    );
                    if let Some(o) = &shared.settings.observer {
                        o.connection_refused(peer_addr);
                    }
                    drop(socket);
                    continue;
                };
                configure_socket(&socket, &shared.settings);
                let info = ConnectionInfo {
                    id,
                    peer_addr,
                    local_addr,
                    peer_identity: None,
                };
                let span = info_span!("mllp_conn", conn = id, peer = %peer_addr);
                tasks.spawn(
                    connection(socket, info, shared.clone(), permit, stop.child_token())
                        .instrument(span),
                );
            }
        }
    }

    drop(listener);
    stop.cancel();
    let open = tasks.len();
    info!(%local_addr, open, grace_ms = shared.settings.grace_period.as_millis() as u64, "MLLP listener stopping; draining connections");
    let drain = async {
        while let Some(done) = tasks.join_next().await {
            log_task_end(done);
        }
    };
    if timeout(shared.settings.grace_period, drain).await.is_err() {
        warn!(
            %local_addr,
            remaining = tasks.len(),
            "grace period overran; aborting remaining connections"
        );
        tasks.shutdown().await;
    } else {
        info!(%local_addr, "all connections drained");
    }
    Ok(())
}

fn log_task_end(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        error!("connection task panicked");
    }
}

fn configure_socket(socket: &TcpStream, settings: &ServerSettings) {
    // MLLP replies are small and latency-bound.
    if let Err(error) = socket.set_nodelay(true) {
        debug!(%error, "cannot set TCP_NODELAY");
    }
    if let Some(idle) = settings.tcp_keepalive {
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(idle)
            .with_interval(idle / 4);
        if let Err(error) = socket2::SockRef::from(socket).set_tcp_keepalive(&keepalive) {
            debug!(%error, "cannot set TCP keepalive");
        }
    }
}

struct Shared<H> {
    handler: H,
    settings: ServerSettings,
}

async fn connection<H: Handler>(
    socket: TcpStream,
    mut info: ConnectionInfo,
    shared: Arc<Shared<H>>,
    _permit: OwnedSemaphorePermit,
    stop: CancellationToken,
) {
    debug!("connection accepted");
    if let Some(o) = &shared.settings.observer {
        o.connection_opened(&info);
    }
    let _closed = ClosedGuard {
        observer: shared.settings.observer.clone(),
        info: info.clone(),
    };
    let Some(tls) = &shared.settings.tls else {
        Connection::new(socket, info, &shared, stop).serve().await;
        return;
    };
    let handshake = tls.acceptor().accept(socket);
    let stream = tokio::select! {
        () = stop.cancelled() => return,
        r = timeout(shared.settings.handshake_timeout, handshake) => match r {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                warn!(%error, "TLS handshake failed");
                return;
            }
            Err(_) => {
                warn!(timeout_ms = shared.settings.handshake_timeout.as_millis() as u64, "TLS handshake timed out");
                return;
            }
        },
    };
    let (_, session) = stream.get_ref();
    info.peer_identity = session
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|leaf| Arc::new(PeerIdentity::from_der(leaf)));
    match &info.peer_identity {
        Some(identity) => info!(%identity, "TLS client authenticated"),
        None => debug!("TLS handshake complete"),
    }
    Connection::new(stream, info, &shared, stop).serve().await;
}

// === impl Connection ===

/// One peer: its stream, read buffer and framing state.
struct Connection<'a, S, H> {
    stream: S,
    buf: BytesMut,
    decoder: FrameDecoder,
    info: ConnectionInfo,
    shared: &'a Shared<H>,
    stop: CancellationToken,
    /// When the frame in progress must be complete.
    frame_deadline: Option<Instant>,
    out: BytesMut,
}

/// Whether to keep serving after an item.
enum Next {
    Continue,
    Close,
}

impl<'a, S, H> Connection<'a, S, H>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    fn new(
        stream: S,
        info: ConnectionInfo,
        shared: &'a Shared<H>,
        stop: CancellationToken,
    ) -> Self {
        Self {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
            decoder: FrameDecoder::new(shared.settings.framing.clone()),
            info,
            shared,
            stop,
            frame_deadline: None,
            out: BytesMut::new(),
        }
    }

    async fn serve(mut self) {
        let settings = &self.shared.settings;
        // Created once per connection: registering a fresh cancellation waiter and a fresh
        // timer on every read costs more than the rest of a small message's handling.
        let stop = self.stop.clone();
        let cancelled = stop.cancelled();
        tokio::pin!(cancelled);
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        // Where `timer` is armed. The idle deadline moves with every read; the timer is only
        // moved when the deadline gets earlier or drifts more than TIMER_SLACK later, and a
        // timer that fires early is simply re-armed (below).
        let mut armed: Option<Instant> = None;
        'conn: loop {
            while let Some(item) = self.decoder.decode(&mut self.buf) {
                if let Next::Close = self.on_item(item).await {
                    break 'conn;
                }
            }
            if !self.decoder.is_mid_frame() {
                self.frame_deadline = None;
                if self.stop.is_cancelled() {
                    debug!("closing idle connection for shutdown");
                    break;
                }
            } else if self.frame_deadline.is_none() {
                self.frame_deadline = Some(Instant::now() + settings.read_timeout);
            }
            let deadline = self
                .frame_deadline
                .or_else(|| settings.idle_timeout.map(|idle| Instant::now() + idle));
            if let Some(deadline) = deadline
                && armed.is_none_or(|at| deadline < at || deadline > at + TIMER_SLACK)
            {
                timer.as_mut().reset(deadline);
                armed = Some(deadline);
            }
            self.buf.reserve(READ_CHUNK);
            let mid_frame = self.decoder.is_mid_frame();
            let result = tokio::select! {
                // Between frames the stop signal closes the connection at
                // once; mid-frame we let the message finish.
                () = &mut cancelled, if !mid_frame => {
                    debug!("closing idle connection for shutdown");
                    break;
                }
                r = self.stream.read_buf(&mut self.buf) => Ok(r),
                () = &mut timer, if deadline.is_some() => Err(()),
            };
            match result {
                Ok(Ok(0)) => {
                    while let Some(item) = self.decoder.decode_eof(&mut self.buf) {
                        if let Next::Close = self.on_item(item).await {
                            break;
                        }
                    }
                    debug!("peer closed the connection");
                    break;
                }
                Ok(Ok(n)) => trace!(bytes = n, "read"),
                Ok(Err(error)) => {
                    debug!(%error, "read failed");
                    break;
                }
                Err(()) if deadline.is_some_and(|d| Instant::now() < d) => {
                    // Armed early (see TIMER_SLACK): re-arm at the real deadline.
                    armed = None;
                }
                Err(()) if mid_frame => {
                    warn!(
                        timeout_ms = settings.read_timeout.as_millis() as u64,
                        buffered = self.buf.len(),
                        "frame not completed within the read timeout; closing"
                    );
                    break;
                }
                Err(()) => {
                    info!("idle timeout; closing");
                    break;
                }
            }
        }
        // Best effort: flush and, for TLS, send close_notify.
        let _ = timeout(settings.write_timeout, self.stream.shutdown()).await;
    }

    async fn on_item(&mut self, item: Decoded) -> Next {
        match item {
            Decoded::Frame(Frame::Message(payload)) => self.on_message(payload).await,
            Decoded::Frame(frame) => {
                debug!(?frame, "ignoring commit block from a sender");
                Next::Continue
            }
            Decoded::Event(event) => self.on_event(event).await,
        }
    }

    async fn on_message(&mut self, payload: Bytes) -> Next {
        let len = payload.len();
        // Parse to refuse garbage and to log the header fields. The fields are kept as
        // `Bytes` slices of the payload (no copy) and only turned into text when the debug
        // level is on, since this runs for every message.
        let header = Message::parse(&payload).map(|msg| {
            let slice = |b: Option<&[u8]>| b.map(|b| payload.slice_ref(b)).unwrap_or_default();
            (
                slice(msg.control_id()),
                slice(msg.message_code()),
                slice(msg.trigger_event()),
            )
        });
        let (control_id, code, trigger) = match header {
            Ok(header) => header,
            Err(error) => {
                warn!(len, %error, "payload is not an HL7 message; replying AR");
                let nak = ack::nak_for_parse_error(
                    &payload,
                    &error,
                    &self.shared.settings.control_ids,
                    SystemTime::now(),
                );
                return self.send(Frame::Message(nak.into())).await;
            }
        };
        let control_id = Lossy(control_id);
        debug!(
            %control_id,
            message_type = %format_args!("{}^{}", Lossy(code), Lossy(trigger)),
            len,
            "message received"
        );
        let reply = self.shared.handler.call(payload, self.info.clone()).await;
        match reply {
            Reply::Send(bytes) => {
                debug!(%control_id, reply_len = bytes.len(), "replying");
                if self.shared.settings.commit_acks
                    && let Next::Close = self.send(Frame::CommitAck).await
                {
                    return Next::Close;
                }
                self.send(Frame::Message(bytes)).await
            }
            Reply::Nothing => {
                if self.shared.settings.commit_acks {
                    return self.send(Frame::CommitAck).await;
                }
                Next::Continue
            }
            Reply::Close => {
                info!(%control_id, "handler asked to close the connection");
                Next::Close
            }
        }
    }

    async fn on_event(&mut self, event: FramingEvent) -> Next {
        let settings = &self.shared.settings;
        if let Some(o) = &settings.observer {
            o.framing_event(&self.info, &event);
        }
        match &event {
            FramingEvent::SkippedPadding { len } => debug!(len, "skipped padding between frames"),
            FramingEvent::SkippedGarbage { len } => warn!(len, "skipped bytes outside any frame"),
            FramingEvent::FrameTooLarge { len, limit, .. } => {
                warn!(len, limit, "frame too large; refused");
            }
            FramingEvent::MissingTrailer { found, refused, .. } => {
                warn!(found = ?found, refused, "end block not followed by the trailer byte");
            }
            FramingEvent::UnexpectedStart { dropped } => {
                warn!(dropped, "start byte inside a frame; partial frame dropped");
            }
            FramingEvent::Truncated { len } => warn!(len, "connection closed mid-frame"),
        }
        if !event.refused_frame() {
            return Next::Continue;
        }
        if settings.commit_acks {
            return self.send(Frame::CommitNak).await;
        }
        match ack::nak_for_event(&event, &settings.control_ids, SystemTime::now()) {
            Some(nak) => self.send(Frame::Message(nak.into())).await,
            None => Next::Continue,
        }
    }

    async fn send(&mut self, frame: Frame) -> Next {
        self.out.clear();
        if let Err(error) = frame.encode(self.decoder.options(), &mut self.out) {
            error!(%error, "reply cannot be framed; closing");
            return Next::Close;
        }
        let write = async {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await
        };
        match timeout(self.shared.settings.write_timeout, write).await {
            Ok(Ok(())) => Next::Continue,
            Ok(Err(error)) => {
                debug!(%error, "write failed");
                Next::Close
            }
            Err(_) => {
                warn!(
                    timeout_ms = self.shared.settings.write_timeout.as_millis() as u64,
                    "write timed out; closing"
                );
                Next::Close
            }
        }
    }
}

/// Bytes shown as lossy UTF-8 only when formatted (log fields are formatted lazily).
struct Lossy(Bytes);

impl std::fmt::Display for Lossy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

//! The MLLP sender: one message at a time over a kept-open connection.
//!
//! [`Client::send`] frames a message, writes it, and waits for the ACK whose
//! MSA-2 matches the message's MSH-10. An ACK for another message is an
//! error ([`ClientError::ControlIdMismatch`]), never a success. The
//! connection stays open for the next message; before each write the client
//! checks whether the server has closed it meanwhile and reconnects first,
//! with exponential backoff and jitter between attempts.
//!
//! A send that fails after the message was written (timeout, closed
//! connection) may or may not have been delivered: the client does not resend
//! on its own, since only the caller knows whether a duplicate is acceptable.

use std::hash::{BuildHasher, RandomState};
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use causeway_message::Message;
use causeway_message::ParseError;
use causeway_message::ack::{AckCode, AckReply, AckReplyError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{debug, info, warn};

use crate::frame::{Decoded, EncodeError, Frame, FrameDecoder, FramingEvent, FramingOptions};
use crate::tls::{ClientTls, TlsError, parse_server_name};

const READ_CHUNK: usize = 8 * 1024;

// === Backoff ===

/// Exponential backoff with jitter between reconnection attempts.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Backoff {
    /// Wait before the second attempt. Default 200 ms.
    pub initial: Duration,
    /// Longest wait between attempts. Default 30 s.
    pub max: Duration,
    /// Fraction of each wait taken off at random, 0.0 to 1.0, so many
    /// clients restarted together do not reconnect in lockstep. Default 0.25.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
            jitter: 0.25,
        }
    }
}

impl Backoff {
    /// The wait after failed attempt number `attempt` (0-based), with jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, random_unit())
    }

    /// The wait for `attempt` given `unit`, a number in `[0, 1)` standing for
    /// the random draw (deterministic for tests).
    pub fn delay_with(&self, attempt: u32, unit: f64) -> Duration {
        let base = self
            .initial
            .saturating_mul(2u32.saturating_pow(attempt.min(31)))
            .min(self.max);
        let jitter = self.jitter.clamp(0.0, 1.0) * unit.clamp(0.0, 1.0);
        base.mul_f64(1.0 - jitter)
    }
}

/// A random number in `[0, 1)` from std's randomly keyed hasher: enough for
/// jitter, no RNG crate needed.
fn random_unit() -> f64 {
    let bits = RandomState::new().hash_one(Instant::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

// === Settings ===

/// Sender configuration.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientSettings {
    /// Longest time to resolve, connect and finish the TLS handshake, per
    /// attempt. Default 10 s.
    pub connect_timeout: Duration,
    /// Longest time to write one message. Default 30 s.
    pub write_timeout: Duration,
    /// Longest time to wait for the ACK after the message is written.
    /// Default 30 s.
    pub ack_timeout: Duration,
    /// Connection attempts per send before giving up. Default 3.
    pub connect_attempts: u32,
    /// Waits between connection attempts.
    pub backoff: Backoff,
    /// Framing bytes and size limit (for the ACKs read back, too).
    pub framing: FramingOptions,
    /// TLS; `None` sends over plain TCP.
    pub tls: Option<ClientTls>,
    /// TCP keepalive idle time; `None` disables it. Default 60 s.
    pub tcp_keepalive: Option<Duration>,
    /// Count an MLLP Release 2 commit ACK block as delivery, for receivers
    /// that send no HL7 ACK. Default `false`: wait for the HL7 ACK.
    pub accept_commit_ack: bool,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            ack_timeout: Duration::from_secs(30),
            connect_attempts: 3,
            backoff: Backoff::default(),
            framing: FramingOptions::default(),
            tls: None,
            tcp_keepalive: Some(Duration::from_secs(60)),
            accept_commit_ack: false,
        }
    }
}

// === Errors and results ===

/// Why a send did not produce an acknowledgement.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The message is not a parsable HL7 message.
    #[error("message is not valid HL7: {0}")]
    InvalidMessage(#[source] ParseError),
    /// The message has no MSH-10, so its ACK could not be matched to it.
    #[error("message has no control id (MSH-10)")]
    MissingControlId,
    /// The message cannot be framed (end byte inside, or too large).
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The target name did not resolve.
    #[error("cannot resolve {target}: {source}")]
    Resolve {
        /// The `host:port` target.
        target: String,
        /// The resolver error.
        source: io::Error,
    },
    /// The target resolved to no address.
    #[error("{target} resolved to no address")]
    NoAddresses {
        /// The `host:port` target.
        target: String,
    },
    /// Every address refused or failed the TCP connection; this is the last failure.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The last address tried.
        addr: SocketAddr,
        /// Its error.
        source: io::Error,
    },
    /// Resolution, connection or TLS handshake did not finish in time.
    #[error("connecting to {target} timed out after {timeout:?}")]
    ConnectTimeout {
        /// The `host:port` target.
        target: String,
        /// The configured timeout.
        timeout: Duration,
    },
    /// The TLS handshake failed (untrusted certificate, pin mismatch, refused client).
    #[error("TLS handshake with {addr} failed: {source}")]
    Handshake {
        /// The server address.
        addr: SocketAddr,
        /// The TLS error, as reported by tokio-rustls.
        source: io::Error,
    },
    /// The TLS configuration does not fit the target (e.g. no valid server name).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Writing the message failed.
    #[error("write failed: {0}")]
    Write(#[source] io::Error),
    /// Writing the message took longer than the write timeout.
    #[error("write timed out after {0:?}")]
    WriteTimeout(Duration),
    /// Reading the reply failed.
    #[error("read failed: {0}")]
    Read(#[source] io::Error),
    /// No acknowledgement arrived within the ACK timeout.
    #[error("no ACK within {0:?}")]
    AckTimeout(Duration),
    /// The server closed the connection before acknowledging.
    #[error("server closed the connection before acknowledging")]
    ClosedBeforeAck,
    /// The reply is not a usable ACK.
    #[error("reply is not a usable ACK: {0}")]
    InvalidAck(#[source] AckReplyError),
    /// The reply acknowledges a different message (MSA-2 is not our MSH-10).
    #[error("ACK is for control id {received:?}, not {sent:?}")]
    ControlIdMismatch {
        /// MSH-10 of the message sent.
        sent: String,
        /// MSA-2 of the reply.
        received: String,
    },
    /// The server sent an MLLP Release 2 negative commit acknowledgement.
    #[error("server sent a negative commit acknowledgement (MLLP NAK block)")]
    CommitNak,
    /// The reply could not be framed (e.g. larger than the frame limit).
    #[error("reply refused by framing: {}", .0.kind())]
    BadReplyFrame(FramingEvent),
}

/// How the receiver classified the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AckStatus {
    /// AA or CA (or an MLLP commit ACK block when accepted as delivery).
    Accepted,
    /// AE or CE: the receiver failed to process it; a resend may succeed.
    Error,
    /// AR or CR: the receiver refused it; do not resend unchanged.
    Rejected,
    /// The message asks for no acknowledgement on success (MSH-15 and MSH-16 each NE or
    /// ER): it was written, and nothing was waited for.
    NotRequested,
}

impl AckStatus {
    /// Classifies an MSA-1 code.
    pub fn of(code: AckCode) -> Self {
        if code.is_accept() {
            AckStatus::Accepted
        } else if code.is_error() {
            AckStatus::Error
        } else {
            AckStatus::Rejected
        }
    }
}

/// The outcome of one successful exchange.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Delivery {
    /// Accept, error or reject.
    pub status: AckStatus,
    /// MSH-10 of the message sent (equal to MSA-2 of the reply).
    pub control_id: String,
    /// The parsed ACK; `None` when a commit ACK block was taken as delivery.
    pub reply: Option<AckReply>,
    /// The ACK as received (its payload, without the MLLP block bytes), when there was one.
    pub raw: Option<Bytes>,
}

// === Transport ===

/// Plain TCP or TLS over TCP.
#[derive(Debug)]
enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Transport {
    fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[derive(Debug)]
struct Conn {
    transport: Transport,
    peer: SocketAddr,
    buf: BytesMut,
    decoder: FrameDecoder,
}

// === impl Client ===

/// An MLLP sender bound to one `host:port` target.
#[derive(Debug)]
pub struct Client {
    target: String,
    settings: ClientSettings,
    conn: Option<Conn>,
    /// Control ids of messages sent without waiting (they asked for no ACK on success). A
    /// receiver may acknowledge them anyway; such a late ACK is recognised and skipped
    /// instead of being taken for the reply to the next message. Bounded.
    unanswered: std::collections::VecDeque<Vec<u8>>,
}

/// How many unanswered control ids are remembered.
const UNANSWERED: usize = 64;

impl Client {
    /// A client for `target` (`host:port`, `[v6]:port` or `ip:port`). Nothing
    /// connects until the first send (or [`connect`](Self::connect)).
    pub fn new(target: impl Into<String>, settings: ClientSettings) -> Self {
        Self {
            target: target.into(),
            settings,
            conn: None,
            unanswered: std::collections::VecDeque::new(),
        }
    }

    /// The address of the current connection, if connected.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.conn.as_ref().map(|c| c.peer)
    }

    /// Connects now (one attempt over all resolved addresses), replacing any
    /// current connection.
    pub async fn connect(&mut self) -> Result<(), ClientError> {
        self.conn = None;
        let conn = self.connect_once().await?;
        self.use_conn(conn);
        Ok(())
    }

    /// Takes a new connection: the messages that might still be answered late were sent
    /// on the old one, whose replies can no longer arrive.
    fn use_conn(&mut self, conn: Conn) {
        self.unanswered.clear();
        self.conn = Some(conn);
    }

    /// Closes the connection, if any, politely (TLS close_notify).
    pub async fn close(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            let _ = timeout(self.settings.write_timeout, conn.transport.shutdown()).await;
        }
    }

    /// Drops the connection at once, without a TLS close_notify. For a caller that gave up
    /// on a [`Client::send`] before it finished (dropped its future): the stream's state is
    /// unknown then (half a frame written, or a late ACK on its way), so the next send must
    /// start on a fresh connection.
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    /// Sends one message and waits for its acknowledgement.
    ///
    /// `Ok` means an ACK for this very message arrived; look at
    /// [`Delivery::status`] for accept, error or reject.
    pub async fn send(&mut self, message: &[u8]) -> Result<Delivery, ClientError> {
        let (control_id, wants_no_ack) = {
            let msg = Message::parse(message).map_err(ClientError::InvalidMessage)?;
            let id = msg.control_id().filter(|id| !id.is_empty());
            // Enhanced mode where neither MSH-15 nor MSH-16 asks for an ACK on success
            // (NE, or ER: only on error): a receiver that accepts sends nothing back, so
            // there is nothing to wait for. An error ACK sent anyway arrives before the next
            // exchange's reply and is reported there as a control id mismatch.
            let accepted = causeway_message::ack::Outcome::Accept;
            let no_ack = match causeway_message::ack::AckMode::of(&msg) {
                causeway_message::ack::AckMode::Enhanced {
                    accept,
                    application,
                } => !accept.applies(accepted) && !application.applies(accepted),
                causeway_message::ack::AckMode::Original => false,
            };
            (id.ok_or(ClientError::MissingControlId)?.to_vec(), no_ack)
        };
        let control_id_str = String::from_utf8_lossy(&control_id).into_owned();
        let mut out = BytesMut::new();
        crate::frame::encode_message(message, &self.settings.framing, &mut out)?;

        self.ensure_connected().await?;
        let result = if wants_no_ack {
            self.write_only(&out, &control_id_str).await
        } else {
            self.exchange(&out, &control_id, &control_id_str).await
        };
        match &result {
            Ok(delivery) => info!(
                control_id = %control_id_str,
                status = ?delivery.status,
                len = message.len(),
                "message acknowledged"
            ),
            Err(error) => {
                warn!(control_id = %control_id_str, %error, "send failed; dropping connection");
                // After any failure the stream's state is unknown (a late ACK
                // may still arrive): start the next send on a fresh connection.
                self.conn = None;
            }
        }
        result
    }

    /// Writes a message that asks for no acknowledgement on success (MSH-15/16 NE or ER).
    async fn write_only(
        &mut self,
        frame: &[u8],
        control_id_str: &str,
    ) -> Result<Delivery, ClientError> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(ClientError::ClosedBeforeAck);
        };
        let write = async {
            conn.transport.write_all(frame).await?;
            conn.transport.flush().await
        };
        match timeout(self.settings.write_timeout, write).await {
            Ok(Ok(())) => {
                if self.unanswered.len() == UNANSWERED {
                    self.unanswered.pop_front();
                }
                self.unanswered
                    .push_back(control_id_str.as_bytes().to_vec());
                Ok(Delivery {
                    status: AckStatus::NotRequested,
                    control_id: control_id_str.to_owned(),
                    reply: None,
                    raw: None,
                })
            }
            Ok(Err(e)) => Err(ClientError::Write(e)),
            Err(_) => Err(ClientError::WriteTimeout(self.settings.write_timeout)),
        }
    }

    async fn exchange(
        &mut self,
        frame: &[u8],
        control_id: &[u8],
        control_id_str: &str,
    ) -> Result<Delivery, ClientError> {
        let settings = &self.settings;
        let Some(conn) = self.conn.as_mut() else {
            // ensure_connected either set a connection or returned an error.
            return Err(ClientError::ClosedBeforeAck);
        };
        let write = async {
            conn.transport.write_all(frame).await?;
            conn.transport.flush().await
        };
        match timeout(settings.write_timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ClientError::Write(e)),
            Err(_) => return Err(ClientError::WriteTimeout(settings.write_timeout)),
        }
        debug!(control_id = %control_id_str, len = frame.len(), peer = %conn.peer, "message written");

        let deadline = Instant::now() + settings.ack_timeout;
        loop {
            while let Some(item) = conn.decoder.decode(&mut conn.buf) {
                match item {
                    Decoded::Frame(Frame::Message(reply)) => {
                        if let Some(late) = late_ack(&mut self.unanswered, &reply) {
                            debug!(control_id = %late, "skipping a late ACK for a message sent without waiting");
                            continue;
                        }
                        return check_reply(&reply, control_id, control_id_str);
                    }
                    Decoded::Frame(Frame::CommitAck) if settings.accept_commit_ack => {
                        // The HL7 ACK that may follow is late by then: remembered, so it is
                        // not taken as the answer to the next message.
                        if self.unanswered.len() == UNANSWERED {
                            self.unanswered.pop_front();
                        }
                        self.unanswered.push_back(control_id.to_vec());
                        return Ok(Delivery {
                            status: AckStatus::Accepted,
                            control_id: control_id_str.to_owned(),
                            reply: None,
                            raw: None,
                        });
                    }
                    Decoded::Frame(Frame::CommitAck) => {
                        debug!(control_id = %control_id_str, "commit ACK block; waiting for the HL7 ACK");
                    }
                    Decoded::Frame(Frame::CommitNak) => return Err(ClientError::CommitNak),
                    Decoded::Event(event) if event.refused_frame() => {
                        return Err(ClientError::BadReplyFrame(event));
                    }
                    Decoded::Event(event) => {
                        debug!(kind = event.kind(), "framing anomaly in reply stream");
                    }
                }
            }
            conn.buf.reserve(READ_CHUNK);
            match timeout_at(deadline, conn.transport.read_buf(&mut conn.buf)).await {
                Err(_) => return Err(ClientError::AckTimeout(settings.ack_timeout)),
                Ok(Err(e)) => return Err(ClientError::Read(e)),
                Ok(Ok(0)) => {
                    // A lenient reply without its trailer may end at EOF.
                    while let Some(item) = conn.decoder.decode_eof(&mut conn.buf) {
                        if let Decoded::Frame(Frame::Message(reply)) = item {
                            if let Some(late) = late_ack(&mut self.unanswered, &reply) {
                                debug!(control_id = %late, "skipping a late ACK for a message sent without waiting");
                                continue;
                            }
                            return check_reply(&reply, control_id, control_id_str);
                        }
                    }
                    return Err(ClientError::ClosedBeforeAck);
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Makes sure a live connection exists, reconnecting with backoff.
    async fn ensure_connected(&mut self) -> Result<(), ClientError> {
        if let Some(conn) = &mut self.conn {
            if probe(conn, &mut self.unanswered) {
                return Ok(());
            }
            info!(peer = %conn.peer, "server closed the connection; reconnecting");
            self.conn = None;
        }
        let attempts = self.settings.connect_attempts.max(1);
        let mut attempt = 0;
        loop {
            match self.connect_once().await {
                Ok(conn) => {
                    self.use_conn(conn);
                    return Ok(());
                }
                Err(error) if attempt + 1 < attempts && retryable(&error) => {
                    let wait = self.settings.backoff.delay(attempt);
                    warn!(target = %self.target, %error, attempt = attempt + 1, wait_ms = wait.as_millis() as u64, "connect failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn connect_once(&self) -> Result<Conn, ClientError> {
        let settings = &self.settings;
        let timed_out = || ClientError::ConnectTimeout {
            target: self.target.clone(),
            timeout: settings.connect_timeout,
        };
        let deadline = Instant::now() + settings.connect_timeout;
        let addrs: Vec<SocketAddr> = timeout_at(deadline, tokio::net::lookup_host(&self.target))
            .await
            .map_err(|_| timed_out())?
            .map_err(|source| ClientError::Resolve {
                target: self.target.clone(),
                source,
            })?
            .collect();
        let (stream, addr) = connect_first(&addrs, deadline).await.map_err(|e| match e {
            ConnectFailure::TimedOut => timed_out(),
            ConnectFailure::NoAddresses => ClientError::NoAddresses {
                target: self.target.clone(),
            },
            ConnectFailure::Refused { addr, source } => ClientError::Connect { addr, source },
        })?;
        let _ = stream.set_nodelay(true);
        if let Some(idle) = settings.tcp_keepalive {
            let keepalive = socket2::TcpKeepalive::new().with_time(idle);
            let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        }
        let transport = match &settings.tls {
            None => Transport::Plain(stream),
            Some(tls) => {
                let name = match tls.server_name() {
                    Some(name) => name.clone(),
                    None => parse_server_name(host_of(&self.target))?,
                };
                let connector = tokio_rustls::TlsConnector::from(tls.config());
                match timeout_at(deadline, connector.connect(name, stream)).await {
                    Ok(Ok(s)) => Transport::Tls(Box::new(s)),
                    Ok(Err(source)) => return Err(ClientError::Handshake { addr, source }),
                    Err(_) => return Err(timed_out()),
                }
            }
        };
        info!(target = %self.target, peer = %addr, tls = settings.tls.is_some(), "connected");
        Ok(Conn {
            transport,
            peer: addr,
            buf: BytesMut::with_capacity(READ_CHUNK),
            decoder: FrameDecoder::new(settings.framing.clone()),
        })
    }
}

enum ConnectFailure {
    TimedOut,
    NoAddresses,
    Refused { addr: SocketAddr, source: io::Error },
}

/// Connects to the first of `addrs` that accepts, in resolver order (IPv6
/// and IPv4 alike), all within `deadline`.
async fn connect_first(
    addrs: &[SocketAddr],
    deadline: Instant,
) -> Result<(TcpStream, SocketAddr), ConnectFailure> {
    let mut last = ConnectFailure::NoAddresses;
    for &addr in addrs {
        match timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok((stream, addr)),
            Ok(Err(source)) => {
                debug!(%addr, error = %source, "connect failed; trying next address");
                last = ConnectFailure::Refused { addr, source };
            }
            Err(_) => return Err(ConnectFailure::TimedOut),
        }
    }
    Err(last)
}

/// Whether another connection attempt might succeed.
fn retryable(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Connect { .. }
            | ClientError::ConnectTimeout { .. }
            | ClientError::Resolve { .. }
            | ClientError::NoAddresses { .. }
    )
}

fn check_reply(reply: &Bytes, sent: &[u8], sent_str: &str) -> Result<Delivery, ClientError> {
    let ack = AckReply::parse(reply).map_err(ClientError::InvalidAck)?;
    if ack.acked_control_id != sent {
        return Err(ClientError::ControlIdMismatch {
            sent: sent_str.to_owned(),
            received: String::from_utf8_lossy(&ack.acked_control_id).into_owned(),
        });
    }
    Ok(Delivery {
        status: AckStatus::of(ack.code),
        control_id: sent_str.to_owned(),
        reply: Some(ack),
        raw: Some(reply.clone()),
    })
}

/// The host part of `host:port` or `[v6]:port`.
fn host_of(target: &str) -> &str {
    let host = target.rsplit_once(':').map_or(target, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Checks without waiting whether the server is still there, and discards
/// anything it sent since the last exchange (a late ACK must not be taken as
/// the answer to the next message).
///
/// A non-blocking `MSG_PEEK` on the socket sees a close (`0`) or a reset
/// immediately; if bytes are waiting, one poll of the transport lets TLS
/// process them (a session ticket keeps the connection, a close_notify ends it).
fn probe(conn: &mut Conn, unanswered: &mut std::collections::VecDeque<Vec<u8>>) -> bool {
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    match socket2::SockRef::from(conn.transport.tcp()).peek(&mut byte) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
        Err(_) | Ok(0) => return false,
        Ok(_) => {}
    }
    let mut cx = Context::from_waker(Waker::noop());
    // Bounded so a server streaming garbage cannot keep us here.
    for _ in 0..16 {
        conn.buf.reserve(READ_CHUNK);
        match pin!(conn.transport.read_buf(&mut conn.buf)).poll(&mut cx) {
            Poll::Pending => break,
            Poll::Ready(Ok(0) | Err(_)) => return false,
            Poll::Ready(Ok(_)) => {}
        }
    }
    while let Some(item) = conn.decoder.decode(&mut conn.buf) {
        match item {
            Decoded::Frame(Frame::Message(stale)) => {
                // The HL7 ACK of a message sent without waiting, or delivered on a commit
                // ACK block: expected, and answered for.
                if let Some(late) = late_ack(unanswered, &stale) {
                    debug!(control_id = %late, "a late ACK for a message sent without waiting");
                    continue;
                }
                let acked = AckReply::parse(&stale)
                    .map(|a| String::from_utf8_lossy(&a.acked_control_id).into_owned())
                    .unwrap_or_default();
                warn!(peer = %conn.peer, len = stale.len(), %acked, "discarding unsolicited reply");
            }
            other => debug!(?other, "discarding unsolicited frame"),
        }
    }
    true
}

/// If `reply` acknowledges a message sent without waiting, forgets that message and returns
/// its control id.
fn late_ack(unanswered: &mut std::collections::VecDeque<Vec<u8>>, reply: &[u8]) -> Option<String> {
    if unanswered.is_empty() {
        return None;
    }
    let acked = AckReply::parse(reply).ok()?.acked_control_id;
    let i = unanswered.iter().position(|id| *id == acked)?;
    unanswered.remove(i);
    Some(String::from_utf8_lossy(&acked).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter: 0.5,
        };
        assert_eq!(b.delay_with(0, 0.0), Duration::from_millis(100));
        assert_eq!(b.delay_with(1, 0.0), Duration::from_millis(200));
        assert_eq!(b.delay_with(3, 0.0), Duration::from_millis(800));
        assert_eq!(b.delay_with(4, 0.0), Duration::from_secs(1));
        assert_eq!(b.delay_with(100, 0.0), Duration::from_secs(1));
        assert_eq!(
            b.delay_with(1, 0.999_999),
            Duration::from_millis(200).mul_f64(1.0 - 0.4999995)
        );
        for attempt in 0..10 {
            let d = b.delay(attempt);
            assert!(
                d <= Duration::from_secs(1) && d >= Duration::from_millis(50),
                "{d:?}"
            );
        }
    }

    #[tokio::test]
    async fn connect_tries_every_address_in_order() {
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let live = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let live_addr = live.local_addr().expect("addr");
        let deadline = Instant::now() + Duration::from_secs(5);
        let (_, addr) = connect_first(&[dead, live_addr], deadline)
            .await
            .unwrap_or_else(|_| panic!("second address reached"));
        assert_eq!(addr, live_addr);
        assert!(matches!(
            connect_first(&[dead], deadline).await,
            Err(ConnectFailure::Refused { .. })
        ));
        assert!(matches!(
            connect_first(&[], deadline).await,
            Err(ConnectFailure::NoAddresses)
        ));
    }

    #[test]
    fn host_of_targets() {
        assert_eq!(host_of("lab.example:2575"), "lab.example");
        assert_eq!(host_of("[::1]:2575"), "::1");
        assert_eq!(host_of("127.0.0.1:2575"), "127.0.0.1");
    }

    #[test]
    fn statuses_classify_codes() {
        assert_eq!(AckStatus::of(AckCode::AA), AckStatus::Accepted);
        assert_eq!(AckStatus::of(AckCode::CA), AckStatus::Accepted);
        assert_eq!(AckStatus::of(AckCode::AE), AckStatus::Error);
        assert_eq!(AckStatus::of(AckCode::CE), AckStatus::Error);
        assert_eq!(AckStatus::of(AckCode::AR), AckStatus::Rejected);
        assert_eq!(AckStatus::of(AckCode::CR), AckStatus::Rejected);
    }
}

//! The MLLP steps: the test message, one exchange over a connection, and the checks on the
//! reply, the size ladder and the latency samples.
//!
//! # The test message
//!
//! The built-in message is an `NMD^N02` (application management data) with MSH-11 = `T`
//! (training/test processing) and only an `NCK` (system clock) segment: it carries no patient,
//! so a receiver that ignores MSH-11 and processes it anyway cannot create or change a patient
//! record, which an ADT test message could. Many receivers do not take NMD and answer AR or
//! AE: that still proves messages travel and ACKs come back, so with the built-in message a
//! negative ACK is a warning, not a failure. `--message` sends a real message of the user's
//! choice once; the size ladder and the latency samples always use the built-in message, so a
//! real message is never delivered several times.

use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use causeway_message::Message;
use causeway_message::ack::AckReply;
use causeway_mllp::frame::{Decoded, Frame, FrameDecoder, FramingEvent, FramingOptions};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout_at;

use crate::report::{Check, Code, Verdict};
use crate::sniff::show;
use crate::tls::HEAD_LEN;
use crate::{fmt_duration, fmt_size, ms};

// === impl TestMessage ===

/// A message to send and what its ACK must echo.
#[derive(Debug, Clone)]
pub(crate) struct TestMessage {
    pub bytes: Vec<u8>,
    pub control_id: String,
    /// MSH-3.1 and MSH-4.1: what the ACK's MSH-5.1 and MSH-6.1 should carry.
    pub sender: (String, String),
    /// The built-in message (a negative ACK to it is only a warning).
    pub builtin: bool,
}

/// Padding segments are at most this long, well under any receiver's segment limit.
const PAD_SEGMENT: usize = 1000;

impl TestMessage {
    /// The built-in NMD^N02, padded with `ZCW` segments to about `size` bytes.
    pub(crate) fn builtin(control_id: &str, timestamp: &str, size: usize) -> Self {
        let mut text = format!(
            "MSH|^~\\&|CAUSEWAY|DOCTOR|||{timestamp}||NMD^N02^NMD_N02|{control_id}|T|2.5\r\
             NCK|{timestamp}\r"
        );
        let mut n = 1;
        while text.len() + 8 < size {
            let room = (size - text.len()).min(PAD_SEGMENT);
            let head = format!("ZCW|{n}|");
            let fill = room.saturating_sub(head.len() + 1).max(1);
            text.push_str(&head);
            text.extend(std::iter::repeat_n('X', fill));
            text.push('\r');
            n += 1;
        }
        Self {
            bytes: text.into_bytes(),
            control_id: control_id.to_owned(),
            sender: ("CAUSEWAY".into(), "DOCTOR".into()),
            builtin: true,
        }
    }

    /// A message given by the user, sent as is.
    pub(crate) fn user(bytes: Vec<u8>) -> Result<Self, String> {
        let msg = Message::parse(&bytes).map_err(|e| format!("--message is not HL7: {e}"))?;
        let text = |v: Option<&[u8]>| String::from_utf8_lossy(v.unwrap_or_default()).into_owned();
        let control_id = text(msg.control_id());
        if control_id.is_empty() {
            return Err(
                "--message has no MSH-10 (control id): its ACK could not be matched".into(),
            );
        }
        let header = msg.header();
        let sender = (
            text(header.field(3).component(1).as_bytes()),
            text(header.field(4).component(1).as_bytes()),
        );
        drop(msg);
        Ok(Self {
            bytes,
            control_id,
            sender,
            builtin: false,
        })
    }
}

// === impl Session ===

/// Anything a session can run over: TCP or TLS.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One connection and its framing state.
pub(crate) struct Session {
    stream: Box<dyn Io>,
    buf: BytesMut,
    decoder: FrameDecoder,
    pub addr: SocketAddr,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("addr", &self.addr).finish()
    }
}

/// How an exchange ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// A whole frame came back.
    Reply(Bytes),
    /// An MLLP Release 2 negative commit acknowledgement.
    CommitNak,
    /// Nothing complete within the wait. `writing`: the message was not even written out.
    TimedOut { writing: bool },
    /// The peer closed the connection before a whole frame.
    Closed,
    /// Writing failed.
    WriteFailed(io::Error),
    /// Reading failed.
    ReadFailed(io::Error),
}

/// One message sent and what came back.
#[derive(Debug)]
pub(crate) struct Exchange {
    pub outcome: Outcome,
    pub elapsed: Duration,
    /// The first bytes of the answer, raw.
    pub head: Vec<u8>,
    pub bytes_read: usize,
    /// Framing anomalies seen in the answer (padding excluded).
    pub events: Vec<FramingEvent>,
    /// An MLLP commit ACK block came (and no HL7 ACK yet).
    pub commit_ack: bool,
    /// A frame had started but not ended when the exchange stopped.
    pub mid_frame: bool,
}

const READ_CHUNK: usize = 16 * 1024;

impl Session {
    pub(crate) fn new(stream: Box<dyn Io>, addr: SocketAddr, framing: &FramingOptions) -> Self {
        Self {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
            decoder: FrameDecoder::new(framing.clone()),
            addr,
        }
    }

    /// Reads whatever arrives within `wait` into the buffer (for a TLS alert that follows the
    /// handshake). `Err` when the connection failed or closed.
    pub(crate) async fn settle(&mut self, wait: Duration) -> io::Result<()> {
        self.buf.reserve(READ_CHUNK);
        match tokio::time::timeout(wait, self.stream.read_buf(&mut self.buf)).await {
            Err(_) => Ok(()),
            Ok(Ok(0)) => Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e),
        }
    }

    /// Closes the connection politely (TLS close_notify), without waiting long.
    pub(crate) async fn close(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
    }

    /// Whether the connection still looks open, without waiting. Anything the peer sent
    /// meanwhile is dropped: a late answer must not pass for the next one.
    pub(crate) fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        // Bounded so a peer streaming bytes cannot keep us here.
        for _ in 0..16 {
            self.buf.reserve(READ_CHUNK);
            match pin!(self.stream.read_buf(&mut self.buf)).poll(&mut cx) {
                Poll::Pending => break,
                Poll::Ready(Ok(0) | Err(_)) => return false,
                Poll::Ready(Ok(_)) => {}
            }
        }
        while self.decoder.decode(&mut self.buf).is_some() {}
        true
    }

    /// Sends one message and waits up to `wait` for a whole frame back.
    pub(crate) async fn exchange(&mut self, message: &[u8], wait: Duration) -> Exchange {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + wait;
        let mut ex = Exchange {
            outcome: Outcome::Closed,
            elapsed: Duration::ZERO,
            head: self.buf.iter().take(HEAD_LEN).copied().collect(),
            bytes_read: self.buf.len(),
            events: Vec::new(),
            commit_ack: false,
            mid_frame: false,
        };
        let mut frame = BytesMut::new();
        if let Err(e) =
            causeway_mllp::frame::encode_message(message, self.decoder.options(), &mut frame)
        {
            ex.outcome = Outcome::WriteFailed(io::Error::other(e));
            return ex;
        }
        let write = async {
            self.stream.write_all(&frame).await?;
            self.stream.flush().await
        };
        match timeout_at(deadline, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                ex.outcome = Outcome::WriteFailed(e);
                ex.elapsed = started.elapsed();
                return ex;
            }
            Err(_) => {
                ex.outcome = Outcome::TimedOut { writing: true };
                ex.elapsed = started.elapsed();
                return ex;
            }
        }
        ex.outcome = loop {
            if let Some(outcome) = self.decode(&mut ex) {
                break outcome;
            }
            self.buf.reserve(READ_CHUNK);
            let before = self.buf.len();
            match timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => break Outcome::TimedOut { writing: false },
                Ok(Err(e)) => break Outcome::ReadFailed(e),
                Ok(Ok(0)) => {
                    // A reply without its trailer may end at EOF.
                    let mut last = None;
                    while let Some(item) = self.decoder.decode_eof(&mut self.buf) {
                        match item {
                            Decoded::Frame(Frame::Message(reply)) => {
                                last = Some(Outcome::Reply(reply));
                                break;
                            }
                            Decoded::Event(event) => note(&mut ex, event),
                            Decoded::Frame(_) => {}
                        }
                    }
                    break last.unwrap_or(Outcome::Closed);
                }
                Ok(Ok(n)) => {
                    let new = &self.buf[before..before + n];
                    let room = HEAD_LEN.saturating_sub(ex.head.len());
                    ex.head.extend_from_slice(&new[..n.min(room)]);
                    ex.bytes_read += n;
                }
            }
        };
        ex.mid_frame = self.decoder.is_mid_frame();
        ex.elapsed = started.elapsed();
        ex
    }

    fn decode(&mut self, ex: &mut Exchange) -> Option<Outcome> {
        while let Some(item) = self.decoder.decode(&mut self.buf) {
            match item {
                Decoded::Frame(Frame::Message(reply)) => return Some(Outcome::Reply(reply)),
                Decoded::Frame(Frame::CommitAck) => ex.commit_ack = true,
                Decoded::Frame(Frame::CommitNak) => return Some(Outcome::CommitNak),
                Decoded::Event(event) => note(ex, event),
                // Frame is non-exhaustive; anything new is not an answer.
                Decoded::Frame(_) => {}
            }
        }
        None
    }
}

fn note(ex: &mut Exchange, event: FramingEvent) {
    if !matches!(event, FramingEvent::SkippedPadding { .. }) {
        ex.events.push(event);
    }
}

// === Judging one exchange ===

/// What one exchange proved.
#[derive(Debug)]
pub(crate) struct Judged {
    pub check: Check,
    /// An ACK for this very message came back (any code).
    pub acknowledged: bool,
}

fn describe_event(event: &FramingEvent) -> String {
    match event {
        FramingEvent::SkippedGarbage { len } => format!("{len} stray bytes before the frame"),
        FramingEvent::MissingTrailer { found, .. } => match found {
            Some(b) => format!("end block followed by 0x{b:02x} instead of 0x0d"),
            None => "end block not followed by 0x0d".to_owned(),
        },
        FramingEvent::UnexpectedStart { dropped } => {
            format!("a new start block inside the frame ({dropped} bytes dropped)")
        }
        FramingEvent::Truncated { len } => format!("the frame ended after {len} bytes"),
        FramingEvent::FrameTooLarge { len, limit, .. } => {
            format!("a reply of {len} bytes, over the {limit}-byte limit")
        }
        other => other.kind().to_owned(),
    }
}

/// Judges the reply to `sent`.
pub(crate) fn judge(
    name: &'static str,
    ex: &Exchange,
    sent: &TestMessage,
    wait: Duration,
) -> Judged {
    let base = |check: Check| {
        check
            .with("control_id", sent.control_id.clone())
            .with("message_bytes", sent.bytes.len())
            .with("elapsed_ms", ms(ex.elapsed))
            .with("bytes_received", ex.bytes_read)
            .with(
                "framing_events",
                Value::Array(ex.events.iter().map(|e| describe_event(e).into()).collect()),
            )
    };
    let fail = |code: Code, summary: String, hint: &str| Judged {
        check: base(Check::new(name, Verdict::Fail, code, summary).hint(hint)),
        acknowledged: false,
    };
    let reply = match &ex.outcome {
        Outcome::Reply(reply) => reply,
        Outcome::CommitNak => {
            return fail(
                Code::MllpNack,
                "the receiver sent an MLLP negative commit acknowledgement (0x15 block)".into(),
                "The receiver's transport refused to store the message: look at its log.",
            );
        }
        Outcome::TimedOut { .. } | Outcome::Closed if ex.mid_frame => {
            return fail(
                Code::MllpBadFrame,
                format!(
                    "the reply started (0x0b) but its end block 0x1c 0x0d never came ({} bytes \
                     received): {}",
                    ex.bytes_read,
                    show(&ex.head)
                ),
                "The receiver does not end its replies with the MLLP end block (0x1c 0x0d), or \
                 uses other framing bytes. Fix the receiver's MLLP settings.",
            );
        }
        Outcome::TimedOut { .. } | Outcome::Closed if ex.bytes_read > 0 => {
            return fail(
                Code::MllpBadFrame,
                format!(
                    "{} bytes came back, but no MLLP frame: {}",
                    ex.bytes_read,
                    show(&ex.head)
                ),
                "The receiver answers without MLLP framing (0x0b ... 0x1c 0x0d), or with other \
                 framing bytes. Fix the receiver's MLLP settings.",
            );
        }
        Outcome::TimedOut { writing: true } => {
            return fail(
                Code::MllpNoAck,
                format!(
                    "the message could not even be written within {}",
                    fmt_duration(wait)
                ),
                "The receiver stopped reading: it is stuck or overloaded, or the path drops \
                 large packets.",
            );
        }
        Outcome::TimedOut { writing: false } => {
            let commit = if ex.commit_ack {
                " (only an MLLP commit ACK block 0x06 came)"
            } else {
                ""
            };
            return fail(
                Code::MllpNoAck,
                format!("no ACK within {}{commit}", fmt_duration(wait)),
                "The receiver took the message but did not answer in time. It may be slow (try \
                 a longer --timeout), drop messages it does not accept (message type, MSH-5/6, \
                 processing id), run without ACKs, or send ACKs over another connection.",
            );
        }
        Outcome::Closed => {
            return fail(
                Code::MllpClosed,
                "the receiver closed the connection without answering".into(),
                "Receivers hang up on messages they refuse outright: an unknown sending \
                 application or facility (MSH-3/4), an unexpected message type, or a crash. Look \
                 at the receiver's log for this connection.",
            );
        }
        Outcome::WriteFailed(e) | Outcome::ReadFailed(e) => {
            return fail(
                Code::MllpIo,
                format!("the connection failed mid-exchange: {e}"),
                "The connection was reset or a TLS alert ended it. Look at the receiver's log.",
            );
        }
    };
    let ack = match AckReply::parse(reply) {
        Ok(ack) => ack,
        Err(e) => {
            return fail(
                Code::MllpBadAck,
                format!("the reply is not a usable ACK: {e}: {}", show(reply)),
                "The receiver answered with a frame that is not an HL7 acknowledgement (no MSA \
                 segment, or an unknown MSA-1 code). Senders cannot tell delivered from lost.",
            );
        }
    };
    let acked = String::from_utf8_lossy(&ack.acked_control_id).into_owned();
    let code_text = ack.code.to_string();
    let with_ack = |check: Check| {
        base(check)
            .with("ack_code", code_text.clone())
            .with("acked_control_id", acked.clone())
            .with("ack_text", ack.text.clone())
            .with(
                "ack_error",
                ack.error
                    .as_ref()
                    .map(|e| json!({"code": e.code, "text": e.text})),
            )
    };
    if acked != sent.control_id {
        return Judged {
            check: with_ack(
                Check::new(
                    name,
                    Verdict::Fail,
                    Code::MllpControlIdMismatch,
                    format!(
                        "ACK {code_text} acknowledges control id {acked:?}, not ours ({:?})",
                        sent.control_id
                    ),
                )
                .hint(
                    "MSA-2 must echo the MSH-10 of the message acknowledged. This receiver \
                     answers with a fixed, stale or self-made id, so a sender cannot know which \
                     message was delivered. Fix the receiver's ACK generation.",
                ),
            ),
            acknowledged: false,
        };
    }
    let detail = ack
        .error
        .as_ref()
        .map(|e| format!(": {} {}", e.code, e.text))
        .or_else(|| ack.text.as_ref().map(|t| format!(": {t}")))
        .unwrap_or_default();
    let summary = format!(
        "ACK {code_text} for {} in {}",
        sent.control_id,
        fmt_duration(ex.elapsed)
    );
    let check = if !ack.code.is_accept() {
        let (verdict, hint) = if sent.builtin {
            (
                Verdict::Warn,
                "Messages travel and ACKs come back, but the receiver refused the doctor's test \
                 message (an NMD^N02 in test mode, which many receivers do not take). Run again \
                 with --message and a message of a type the receiver expects.",
            )
        } else {
            (
                Verdict::Fail,
                "The receiver refused the message: read the error text; AE means retry may \
                 work, AR means fix the message or the receiver's configuration first.",
            )
        };
        Check::new(name, verdict, Code::MllpNack, format!("{summary}{detail}")).hint(hint)
    } else if let Some(event) = ex.events.first() {
        Check::new(
            name,
            Verdict::Warn,
            Code::MllpBadFrame,
            format!("{summary}, but {}", describe_event(event)),
        )
        .hint(
            "The reply is framed sloppily. Lenient senders (Causeway among them) cope; strict \
             ones may not. Ask the receiver to frame replies as 0x0b ACK 0x1c 0x0d.",
        )
    } else if let Some(swap) = header_problem(reply, sent) {
        Check::new(
            name,
            Verdict::Warn,
            Code::MllpAckHeader,
            format!("{summary}, but {swap}"),
        )
        .hint(
            "An ACK goes back to the sender: its MSH-5/MSH-6 should be the message's MSH-3/MSH-4. \
             Engines that route ACKs by these fields may drop this one.",
        )
    } else {
        Check::pass(name, summary)
    };
    Judged {
        check: with_ack(check),
        acknowledged: true,
    }
}

/// Whether the ACK's receiving application and facility are not our sending ones.
fn header_problem(reply: &[u8], sent: &TestMessage) -> Option<String> {
    let msg = Message::parse(reply).ok()?;
    let header = msg.header();
    let text = |n: usize| {
        String::from_utf8_lossy(header.field(n).component(1).as_bytes().unwrap_or_default())
            .into_owned()
    };
    let (app, facility) = (text(5), text(6));
    let differs = |got: &str, want: &str| !got.is_empty() && !want.is_empty() && got != want;
    (differs(&app, &sent.sender.0) || differs(&facility, &sent.sender.1)).then(|| {
        format!(
            "its MSH-5/6 are {app:?}/{facility:?}, not our MSH-3/4 {:?}/{:?}",
            sent.sender.0, sent.sender.1
        )
    })
}

// === Size ladder ===

/// The ladder's default rungs: about 1 KB to 1 MB.
pub const DEFAULT_LADDER: &[usize] = &[
    1024,
    4 * 1024,
    16 * 1024,
    64 * 1024,
    256 * 1024,
    1024 * 1024,
];

/// The wait for a message of `size` bytes: the timeout plus time to move it at 2 Mbit/s,
/// so a slow but working link is not mistaken for a black hole.
pub(crate) fn wait_for(size: usize, wait: Duration) -> Duration {
    wait + Duration::from_secs_f64(size as f64 / (256.0 * 1024.0))
}

/// The result of one rung.
#[derive(Debug)]
pub(crate) struct Rung {
    pub size: usize,
    pub judged: Judged,
    pub elapsed: Duration,
    /// Stalled: no answer and nothing read, the signature of a black hole.
    pub stalled: bool,
    pub closed: bool,
}

impl Rung {
    pub(crate) fn of(size: usize, ex: &Exchange, judged: Judged) -> Self {
        Self {
            size,
            elapsed: ex.elapsed,
            stalled: matches!(ex.outcome, Outcome::TimedOut { .. }) && ex.bytes_read == 0,
            closed: matches!(
                ex.outcome,
                Outcome::Closed | Outcome::ReadFailed(_) | Outcome::WriteFailed(_)
            ),
            judged,
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "bytes": self.size,
            "code": self.judged.check.code.as_str(),
            "acknowledged": self.judged.acknowledged,
            "ack_code": self.judged.check.evidence.get("ack_code"),
            "elapsed_ms": ms(self.elapsed),
        })
    }
}

/// The size check from the rungs run (the last one is where it stopped, if it failed).
pub(crate) fn ladder_check(rungs: &[Rung], first_size: usize, wait: Duration) -> Check {
    let evidence = Value::Array(rungs.iter().map(Rung::to_json).collect());
    let passed: Vec<&Rung> = rungs.iter().filter(|r| r.judged.acknowledged).collect();
    let line = rungs
        .iter()
        .map(|r| {
            let what = if r.judged.acknowledged {
                r.judged
                    .check
                    .evidence
                    .get("ack_code")
                    .and_then(Value::as_str)
                    .unwrap_or("ok")
                    .to_owned()
            } else if r.stalled {
                "stalled".to_owned()
            } else {
                r.judged.check.code.as_str().to_owned()
            };
            format!("{} {what} {}", fmt_size(r.size), fmt_duration(r.elapsed))
        })
        .collect::<Vec<_>>()
        .join(", ");
    let Some(last) = rungs.last() else {
        return Check::pass("size", "no sizes tried");
    };
    if last.judged.acknowledged {
        // Every rung answered; refusals above a size are a receiver limit, not the path.
        let refused = rungs
            .iter()
            .filter(|_| rungs[0].judged.check.code != Code::MllpNack)
            .find(|r| r.judged.check.code == Code::MllpNack);
        return match refused {
            Some(r) => Check::new(
                "size",
                Verdict::Warn,
                Code::SizeLimit,
                format!("{line}; refused from {} up", fmt_size(r.size)),
            )
            .hint(
                "The receiver answers large messages with a negative ACK: it has a message size \
                 limit. Split large messages (e.g. reports with embedded PDFs) or ask for a \
                 higher limit.",
            )
            .with("rungs", evidence),
            None => Check::pass("size", line).with("rungs", evidence),
        };
    }
    let below = passed
        .last()
        .map_or_else(|| fmt_size(first_size), |r| fmt_size(r.size));
    if last.stalled {
        Check::new(
            "size",
            Verdict::Fail,
            Code::PathMtuBlackhole,
            format!(
                "{line}: messages up to {below} get through, {} stalls with no answer within {}",
                fmt_size(last.size),
                fmt_duration(wait_for(last.size, wait))
            ),
        )
        .hint(format!(
            "Probable MTU black hole starting between {below} and {}: a link on the way (often \
             a VPN or tunnel) carries smaller packets than the ends use, and the ICMP \
             'fragmentation needed' messages that would tell the sender are blocked. Small \
             messages pass, larger ones hang. Remedies: clamp the TCP MSS on the tunnel or \
             router (iptables ... -j TCPMSS --clamp-mss-to-pmtu), lower the MTU of the tunnel \
             interface, or let ICMP type 3 code 4 through the firewalls.",
            fmt_size(last.size)
        ))
        .with("rungs", evidence)
        .with("largest_ok_bytes", passed.last().map(|r| r.size))
        .with("stalled_bytes", last.size)
    } else {
        let mut check = last.judged.check.clone();
        check.name = "size";
        if last.closed {
            check.code = Code::SizeLimit;
            check.summary = format!(
                "{line}: the receiver closed the connection on a {} message",
                fmt_size(last.size)
            );
            check.hint = Some(
                "The receiver hangs up on messages above a size: a message size limit. Split \
                 large messages or ask for a higher limit."
                    .into(),
            );
        } else {
            check.summary = format!("{line}: {}", check.summary);
        }
        check.with("rungs", evidence)
    }
}

// === Latency ===

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Slower than this at the 90th percentile is a warning.
const SLOW_P90: Duration = Duration::from_secs(2);

/// The latency check from round-trip samples.
pub(crate) fn latency_check(samples: &[Duration]) -> Check {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let (p50, p90, max) = (
        percentile(&sorted, 50.0),
        percentile(&sorted, 90.0),
        percentile(&sorted, 100.0),
    );
    let min = sorted.first().copied().unwrap_or_default();
    let summary = format!(
        "{} round trip{}: min {}, p50 {}, p90 {}, max {}",
        sorted.len(),
        if sorted.len() == 1 { "" } else { "s" },
        fmt_duration(min),
        fmt_duration(p50),
        fmt_duration(p90),
        fmt_duration(max)
    );
    let check = if p90 > SLOW_P90 {
        Check::new("latency", Verdict::Warn, Code::LatencySlow, summary).hint(
            "Each message waits this long for its ACK, and senders send one at a time: a \
             second per ACK caps the interface at 3600 messages an hour. Slow ACKs usually \
             come from the receiver's processing or database, not the network.",
        )
    } else {
        Check::pass("latency", summary)
    };
    check
        .with("samples", sorted.len())
        .with(
            "samples_ms",
            Value::Array(samples.iter().map(|d| ms(*d).into()).collect()),
        )
        .with("min_ms", ms(min))
        .with("p50_ms", ms(p50))
        .with("p90_ms", ms(p90))
        .with("max_ms", ms(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply_exchange(reply: &[u8]) -> Exchange {
        Exchange {
            outcome: Outcome::Reply(Bytes::copy_from_slice(reply)),
            elapsed: Duration::from_millis(3),
            head: reply.to_vec(),
            bytes_read: reply.len(),
            events: Vec::new(),
            commit_ack: false,
            mid_frame: false,
        }
    }

    fn sent() -> TestMessage {
        TestMessage::builtin("CW1", "20260101000000", 0)
    }

    #[test]
    fn builtin_message_parses_and_pads() {
        let msg = sent();
        let parsed = Message::parse(&msg.bytes).unwrap();
        assert_eq!(parsed.control_id(), Some(&b"CW1"[..]));
        assert_eq!(parsed.header().field(11).as_bytes(), Some(&b"T"[..]));
        for size in DEFAULT_LADDER {
            let big = TestMessage::builtin("CW2", "20260101000000", *size);
            let len = big.bytes.len();
            assert!(len.abs_diff(*size) < 16, "{size}: {len}");
            assert!(Message::parse(&big.bytes).is_ok());
            assert!(!big.bytes.contains(&0x1c));
        }
    }

    #[test]
    fn judges_acks() {
        let ok = b"MSH|^~\\&|RCV|FAC|CAUSEWAY|DOCTOR|20260101||ACK^N02|A1|T|2.5\rMSA|AA|CW1\r";
        let judged = judge("mllp", &reply_exchange(ok), &sent(), Duration::from_secs(1));
        assert_eq!(judged.check.code, Code::Ok, "{:?}", judged.check);
        assert!(judged.acknowledged);

        let wrong = b"MSH|^~\\&|RCV|FAC|CAUSEWAY|DOCTOR|20260101||ACK|A1|T|2.5\rMSA|AA|OTHER\r";
        let judged = judge(
            "mllp",
            &reply_exchange(wrong),
            &sent(),
            Duration::from_secs(1),
        );
        assert_eq!(judged.check.code, Code::MllpControlIdMismatch);

        let nack = b"MSH|^~\\&|RCV|FAC|CAUSEWAY|DOCTOR|20260101||ACK|A1|T|2.5\rMSA|AR|CW1\r";
        let judged = judge(
            "mllp",
            &reply_exchange(nack),
            &sent(),
            Duration::from_secs(1),
        );
        assert_eq!(
            (judged.check.code, judged.check.verdict),
            (Code::MllpNack, Verdict::Warn)
        );

        let unswapped = b"MSH|^~\\&|CAUSEWAY|DOCTOR|RCV|FAC|20260101||ACK|A1|T|2.5\rMSA|AA|CW1\r";
        let judged = judge(
            "mllp",
            &reply_exchange(unswapped),
            &sent(),
            Duration::from_secs(1),
        );
        assert_eq!(judged.check.code, Code::MllpAckHeader);

        let garbage = b"MSH|^~\\&|RCV|FAC|||20260101||ADT|A1|T|2.5\r";
        let judged = judge(
            "mllp",
            &reply_exchange(garbage),
            &sent(),
            Duration::from_secs(1),
        );
        assert_eq!(judged.check.code, Code::MllpBadAck);
    }

    #[test]
    fn judges_silence_and_broken_frames() {
        let mut ex = reply_exchange(b"");
        ex.outcome = Outcome::TimedOut { writing: false };
        ex.bytes_read = 0;
        let judged = judge("mllp", &ex, &sent(), Duration::from_secs(1));
        assert_eq!(judged.check.code, Code::MllpNoAck);

        ex.mid_frame = true;
        ex.bytes_read = 20;
        let judged = judge("mllp", &ex, &sent(), Duration::from_secs(1));
        assert_eq!(judged.check.code, Code::MllpBadFrame);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let s: Vec<Duration> = (1..=10).map(Duration::from_millis).collect();
        assert_eq!(percentile(&s, 50.0), Duration::from_millis(5));
        assert_eq!(percentile(&s, 90.0), Duration::from_millis(9));
        assert_eq!(percentile(&s, 100.0), Duration::from_millis(10));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
        let check = latency_check(&s);
        assert_eq!(check.code, Code::Ok);
    }

    #[test]
    fn ladder_reports_black_hole_where_it_starts() {
        let ok = b"MSH|^~\\&|RCV|FAC|CAUSEWAY|DOCTOR|20260101||ACK|A1|T|2.5\rMSA|AA|CW1\r";
        let pass = |size| {
            let ex = reply_exchange(ok);
            Rung::of(
                size,
                &ex,
                judge("size", &ex, &sent(), Duration::from_secs(1)),
            )
        };
        let mut stall = reply_exchange(b"");
        stall.outcome = Outcome::TimedOut { writing: false };
        stall.bytes_read = 0;
        let stalled = Rung::of(
            4096,
            &stall,
            judge("size", &stall, &sent(), Duration::from_secs(1)),
        );
        let check = ladder_check(&[pass(1024), stalled], 200, Duration::from_secs(1));
        assert_eq!(check.code, Code::PathMtuBlackhole);
        assert_eq!(check.evidence["stalled_bytes"], 4096);
        assert_eq!(check.evidence["largest_ok_bytes"], 1024);
        let check = ladder_check(&[pass(1024), pass(4096)], 200, Duration::from_secs(1));
        assert_eq!(check.code, Code::Ok);
    }
}

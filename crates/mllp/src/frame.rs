//! The MLLP wire format: a sans-I/O framing core.
//!
//! MLLP Release 1 wraps each HL7 message as `<SB> payload <EB> <CR>`, by default
//! `0x0B payload 0x1C 0x0D`. Release 2 adds commit acknowledgement blocks: a
//! frame whose whole payload is `0x06` (ACK) or `0x15` (NAK).
//!
//! [`FrameDecoder`] is a state machine over a caller-owned [`BytesMut`]: the
//! caller appends what it read, calls [`FrameDecoder::decode`] until it returns
//! `None`, then reads again. It does no I/O and reads no clock, so every case
//! (splits, garbage, oversize) is tested here with plain byte slices.
//!
//! Decoding runs in two steps, like mini-redis's `Frame::check` then
//! `Frame::parse`: a `memchr` scan finds whether a whole frame is buffered
//! (resuming where the last scan stopped, so a frame trickling in byte by byte
//! costs linear time), and only then is the frame split off the buffer
//! without copying.
//!
//! Nothing the peer sends makes the decoder fail: every deviation from the
//! format is reported as a [`FramingEvent`] and the decoder resynchronises on
//! the next start byte.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Default start-block byte (`<VT>`).
pub const START_BLOCK: u8 = 0x0B;
/// Default end-block byte (`<FS>`).
pub const END_BLOCK: u8 = 0x1C;
/// Default trailer byte after the end block (`<CR>`).
pub const TRAILER: u8 = 0x0D;
/// Payload of an MLLP Release 2 commit acknowledgement (`<ACK>`).
pub const COMMIT_ACK: u8 = 0x06;
/// Payload of an MLLP Release 2 negative commit acknowledgement (`<NAK>`).
pub const COMMIT_NAK: u8 = 0x15;
/// Default largest payload accepted: 16 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// How many leading bytes of an oversized frame are kept so a NAK can still
/// echo its MSH segment (control id, sending application).
const OVERSIZE_HEAD_LEN: usize = 1024;

/// Framing parameters for one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FramingOptions {
    /// Byte that opens a frame. Default `0x0B`.
    pub start_byte: u8,
    /// Byte that closes a frame's payload. Default `0x1C`.
    pub end_byte: u8,
    /// Byte expected right after `end_byte`. Default `0x0D`.
    pub trailer_byte: u8,
    /// Largest payload accepted, in bytes. A longer frame is discarded without
    /// being buffered and reported as [`FramingEvent::FrameTooLarge`]. Default
    /// 16 MiB; a much larger value lets one peer hold that much memory per
    /// connection.
    pub max_frame_len: usize,
    /// Refuse a frame whose end byte is not followed by the trailer byte.
    /// Default `false`: such frames are accepted (many senders omit the CR)
    /// and reported as [`FramingEvent::MissingTrailer`].
    pub strict: bool,
    /// Recognise MLLP Release 2 commit blocks (`0x06` / `0x15` payloads) as
    /// [`Frame::CommitAck`] / [`Frame::CommitNak`]. Default `true`: an HL7
    /// message is never a single control byte, so this is safe to leave on.
    pub commit_acks: bool,
}

impl Default for FramingOptions {
    fn default() -> Self {
        Self {
            start_byte: START_BLOCK,
            end_byte: END_BLOCK,
            trailer_byte: TRAILER,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            strict: false,
            commit_acks: true,
        }
    }
}

impl FramingOptions {
    /// Strict framing: a missing trailer byte refuses the frame.
    pub fn strict() -> Self {
        Self {
            strict: true,
            ..Self::default()
        }
    }

    /// Returns these options with `max_frame_len` set.
    pub fn with_max_frame_len(mut self, max: usize) -> Self {
        self.max_frame_len = max;
        self
    }

    /// Returns these options with custom start, end and trailer bytes.
    pub fn with_bytes(mut self, start: u8, end: u8, trailer: u8) -> Self {
        self.start_byte = start;
        self.end_byte = end;
        self.trailer_byte = trailer;
        self
    }
}

/// One decoded MLLP block.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame {
    /// An HL7 message (or any payload that is not a commit block).
    Message(Bytes),
    /// MLLP Release 2 commit acknowledgement: the receiver stored the message.
    CommitAck,
    /// MLLP Release 2 negative commit acknowledgement: the receiver did not.
    CommitNak,
}

impl Frame {
    /// Length of the payload carried by this frame.
    pub fn payload_len(&self) -> usize {
        match self {
            Frame::Message(b) => b.len(),
            Frame::CommitAck | Frame::CommitNak => 1,
        }
    }

    /// Appends this frame, start and end bytes included, to `dst`.
    pub fn encode(&self, options: &FramingOptions, dst: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Frame::Message(payload) => encode_message(payload, options, dst),
            Frame::CommitAck => {
                encode_raw(&[COMMIT_ACK], options, dst);
                Ok(())
            }
            Frame::CommitNak => {
                encode_raw(&[COMMIT_NAK], options, dst);
                Ok(())
            }
        }
    }
}

/// Why a payload cannot be framed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The payload contains the end byte, which would end the frame early.
    #[error("payload contains the end-block byte at offset {offset}")]
    EndByteInPayload {
        /// Offset of the first end byte in the payload.
        offset: usize,
    },
    /// The payload is longer than the configured maximum frame length.
    #[error("payload of {len} bytes exceeds the {limit}-byte frame limit")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// Configured limit.
        limit: usize,
    },
}

/// Frames `payload` as an MLLP message block, appending to `dst`.
///
/// Refuses payloads the peer could not decode: ones containing the end byte,
/// or longer than `options.max_frame_len`.
pub fn encode_message(
    payload: &[u8],
    options: &FramingOptions,
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    if payload.len() > options.max_frame_len {
        return Err(EncodeError::TooLarge {
            len: payload.len(),
            limit: options.max_frame_len,
        });
    }
    if let Some(offset) = memchr::memchr(options.end_byte, payload) {
        return Err(EncodeError::EndByteInPayload { offset });
    }
    encode_raw(payload, options, dst);
    Ok(())
}

fn encode_raw(payload: &[u8], options: &FramingOptions, dst: &mut BytesMut) {
    dst.reserve(payload.len() + 3);
    dst.put_u8(options.start_byte);
    dst.put_slice(payload);
    dst.put_u8(options.end_byte);
    dst.put_u8(options.trailer_byte);
}

/// Something on the wire that was not a well-formed frame.
///
/// Each event is reported once, in stream order, so a metrics layer can count
/// them and a doctor tool can explain a misbehaving sender.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FramingEvent {
    /// Padding bytes (NUL, CR, LF, space, tab) between frames were skipped.
    SkippedPadding {
        /// Number of bytes skipped.
        len: usize,
    },
    /// Bytes between frames that are not padding were skipped.
    SkippedGarbage {
        /// Number of bytes skipped.
        len: usize,
    },
    /// A frame exceeded the size limit; it was discarded up to its end byte.
    FrameTooLarge {
        /// Payload bytes discarded.
        len: usize,
        /// Configured limit.
        limit: usize,
        /// The first bytes of the payload (at most 1 KiB and at most `limit`), so a NAK can echo its header.
        head: Bytes,
    },
    /// An end byte was followed by another byte (or by nothing at close) instead of the trailer.
    MissingTrailer {
        /// The byte found instead of the trailer, `None` when the stream ended.
        found: Option<u8>,
        /// Whether the frame was refused (strict mode) rather than accepted.
        refused: bool,
        /// Up to the first 1 KiB of the payload, so a NAK can echo its header.
        head: Bytes,
    },
    /// A start byte arrived inside a frame; the partial frame was dropped and a new one begun.
    UnexpectedStart {
        /// Payload bytes of the abandoned frame.
        dropped: usize,
    },
    /// The stream ended in the middle of a frame.
    Truncated {
        /// Payload bytes received before the end.
        len: usize,
    },
}

impl FramingEvent {
    /// Short stable name for metrics labels and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            FramingEvent::SkippedPadding { .. } => "skipped_padding",
            FramingEvent::SkippedGarbage { .. } => "skipped_garbage",
            FramingEvent::FrameTooLarge { .. } => "frame_too_large",
            FramingEvent::MissingTrailer { .. } => "missing_trailer",
            FramingEvent::UnexpectedStart { .. } => "unexpected_start",
            FramingEvent::Truncated { .. } => "truncated",
        }
    }

    /// Whether a frame the sender meant to deliver was refused because of this
    /// event, so the sender should be told (with a NAK).
    pub fn refused_frame(&self) -> bool {
        matches!(
            self,
            FramingEvent::FrameTooLarge { .. } | FramingEvent::MissingTrailer { refused: true, .. }
        )
    }
}

/// What [`FrameDecoder::decode`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A complete frame.
    Frame(Frame),
    /// A framing anomaly; decoding continues after it.
    Event(FramingEvent),
}

/// Counters of everything a decoder has seen, for a doctor tool or metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FramingStats {
    /// Frames yielded (messages and commit blocks).
    pub frames: u64,
    /// Bytes skipped between frames (padding and garbage).
    pub skipped_bytes: u64,
    /// Anomaly events reported.
    pub events: u64,
    /// Frames refused (too large, or missing trailer in strict mode).
    pub refused: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Between frames: looking for a start byte.
    Idle {
        /// Bytes skipped so far in the current run of out-of-frame bytes.
        skipped: usize,
        /// Whether every skipped byte in the run was padding.
        all_padding: bool,
    },
    /// `buf[0]` is a start byte; `buf[1..scanned]` holds no start or end byte.
    InFrame { scanned: usize },
    /// A frame exceeded the limit: drop bytes until its end.
    Discarding { len: usize, head: Bytes },
}

/// The MLLP decoding state machine. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    options: FramingOptions,
    state: State,
    /// A frame accepted along with an event (lenient missing trailer): the
    /// event is returned first, the frame on the next call.
    pending: Option<Frame>,
    stats: FramingStats,
}

const IDLE: State = State::Idle {
    skipped: 0,
    all_padding: true,
};

impl FrameDecoder {
    /// A decoder with the given options.
    pub fn new(options: FramingOptions) -> Self {
        Self {
            options,
            state: IDLE,
            pending: None,
            stats: FramingStats::default(),
        }
    }

    /// The options this decoder was built with.
    pub fn options(&self) -> &FramingOptions {
        &self.options
    }

    /// Counters of frames and anomalies seen so far.
    pub fn stats(&self) -> &FramingStats {
        &self.stats
    }

    /// Whether a frame has started but not yet ended. A server uses this to
    /// choose between its read timeout (mid-frame) and idle timeout.
    pub fn is_mid_frame(&self) -> bool {
        matches!(self.state, State::InFrame { .. } | State::Discarding { .. })
    }

    /// Takes the next frame or event out of `buf`.
    ///
    /// `buf` must be the same buffer on every call, only ever appended to in
    /// between (as `FramedRead` does): the decoder remembers how far it has
    /// scanned.
    ///
    /// Returns `None` when more bytes are needed. Consumed bytes are removed
    /// from `buf`; bytes outside frames and of oversized frames are dropped
    /// as soon as they are seen, so `buf` never holds much more than one
    /// frame of `max_frame_len` plus one read.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Option<Decoded> {
        let out = self.step(buf, false);
        self.count(&out);
        out
    }

    /// Like [`decode`](Self::decode), for when the stream has ended: whatever
    /// is left is reported (a partial frame as [`FramingEvent::Truncated`])
    /// and `buf` is emptied. Call until it returns `None`.
    pub fn decode_eof(&mut self, buf: &mut BytesMut) -> Option<Decoded> {
        let out = self.step(buf, true);
        self.count(&out);
        out
    }

    fn count(&mut self, out: &Option<Decoded>) {
        match out {
            None => {}
            Some(Decoded::Frame(_)) => self.stats.frames += 1,
            Some(Decoded::Event(event)) => {
                self.stats.events += 1;
                match event {
                    FramingEvent::SkippedPadding { len } | FramingEvent::SkippedGarbage { len } => {
                        self.stats.skipped_bytes += *len as u64;
                    }
                    e if e.refused_frame() => self.stats.refused += 1,
                    _ => {}
                }
            }
        }
    }

    fn step(&mut self, buf: &mut BytesMut, eof: bool) -> Option<Decoded> {
        if let Some(frame) = self.pending.take() {
            return Some(Decoded::Frame(frame));
        }
        loop {
            match &mut self.state {
                State::Idle {
                    skipped,
                    all_padding,
                } => {
                    let start = memchr::memchr(self.options.start_byte, buf);
                    let skip_to = start.unwrap_or(buf.len());
                    if skip_to > 0 {
                        *all_padding &= buf[..skip_to].iter().all(|b| is_padding(*b));
                        *skipped += skip_to;
                        buf.advance(skip_to);
                    }
                    let (run, padding) = (*skipped, *all_padding);
                    let run_event = (run > 0).then(|| Decoded::Event(skipped_event(run, padding)));
                    if start.is_none() {
                        if !eof {
                            // Keep counting the run until a start byte or the end.
                            return None;
                        }
                        self.state = IDLE;
                        return run_event;
                    }
                    self.state = State::InFrame { scanned: 1 };
                    if run_event.is_some() {
                        return run_event;
                    }
                }
                State::InFrame { scanned } => {
                    let opts = &self.options;
                    if buf.is_empty() || *scanned > buf.len() {
                        // The caller emptied the buffer under us (it should
                        // only ever append): start over rather than index
                        // past the end.
                        self.state = IDLE;
                        continue;
                    }
                    // From here `buf[0]` is the start byte and `1 <= scanned <= buf.len()`,
                    // so `pos - 1` and `buf.len() - 1` below cannot underflow.
                    let found = memchr::memchr2(opts.end_byte, opts.start_byte, &buf[*scanned..])
                        .map(|i| i + *scanned);
                    let Some(pos) = found else {
                        *scanned = buf.len();
                        let len = buf.len() - 1;
                        if eof {
                            buf.clear();
                            self.state = IDLE;
                            return Some(Decoded::Event(FramingEvent::Truncated { len }));
                        }
                        if len > opts.max_frame_len {
                            // Refuse before buffering more: keep only a head
                            // for the NAK and drop everything else.
                            let head = head_of(&buf[1..], opts.max_frame_len);
                            buf.clear();
                            self.state = State::Discarding { len, head };
                        }
                        return None;
                    };
                    let len = pos - 1;
                    if len > opts.max_frame_len {
                        // The oversized frame's end (or a new start) is
                        // already here: leave that byte at buf[0] and let the
                        // discarding state finish, exactly as if the frame had
                        // arrived in pieces.
                        let head = head_of(&buf[1..pos], opts.max_frame_len);
                        buf.advance(pos);
                        self.state = State::Discarding { len, head };
                        continue;
                    }
                    if buf[pos] == opts.start_byte {
                        buf.advance(pos);
                        self.state = State::InFrame { scanned: 1 };
                        return Some(Decoded::Event(FramingEvent::UnexpectedStart {
                            dropped: len,
                        }));
                    }
                    let Some(&next) = buf.get(pos + 1) else {
                        if !eof {
                            *scanned = pos;
                            return None;
                        }
                        // Stream ended right after the end byte.
                        return Some(self.missing_trailer(buf, pos, None));
                    };
                    if next == opts.trailer_byte {
                        let frame = buf.split_to(pos + 2).freeze().slice(1..pos);
                        self.state = IDLE;
                        return Some(Decoded::Frame(self.classify(frame)));
                    }
                    return Some(self.missing_trailer(buf, pos, Some(next)));
                }
                State::Discarding { len, head } => {
                    let opts = &self.options;
                    let found = memchr::memchr2(opts.end_byte, opts.start_byte, buf);
                    let Some(pos) = found else {
                        *len += buf.len();
                        buf.clear();
                        if eof {
                            let len = *len;
                            self.state = IDLE;
                            return Some(Decoded::Event(FramingEvent::Truncated { len }));
                        }
                        return None;
                    };
                    *len += pos;
                    let ends_here = buf[pos] == opts.end_byte;
                    if ends_here {
                        match buf.get(pos + 1) {
                            Some(&b) if b == opts.trailer_byte => buf.advance(pos + 2),
                            Some(_) => buf.advance(pos + 1),
                            None if eof => buf.advance(pos + 1),
                            None => {
                                // Keep the end byte to see whether a trailer follows.
                                buf.advance(pos);
                                return None;
                            }
                        }
                    } else {
                        // Never ended: a new frame starts at this start byte.
                        buf.advance(pos);
                    }
                    let event = FramingEvent::FrameTooLarge {
                        len: *len,
                        limit: opts.max_frame_len,
                        head: std::mem::take(head),
                    };
                    self.state = if ends_here {
                        IDLE
                    } else {
                        State::InFrame { scanned: 1 }
                    };
                    return Some(Decoded::Event(event));
                }
            }
        }
    }

    /// Handles an end byte at `buf[pos]` followed by `found` instead of the trailer.
    fn missing_trailer(&mut self, buf: &mut BytesMut, pos: usize, found: Option<u8>) -> Decoded {
        // Consume through the end byte; `found` is left in place to be read as
        // the next out-of-frame byte (it may be a start byte).
        let frame = buf.split_to(pos + 1).freeze().slice(1..pos);
        self.state = IDLE;
        let refused = self.options.strict;
        let head = head_of(&frame, OVERSIZE_HEAD_LEN);
        if !refused {
            self.pending = Some(self.classify(frame));
        }
        Decoded::Event(FramingEvent::MissingTrailer {
            found,
            refused,
            head,
        })
    }

    fn classify(&self, payload: Bytes) -> Frame {
        if self.options.commit_acks && payload.len() == 1 {
            match payload[0] {
                COMMIT_ACK => return Frame::CommitAck,
                COMMIT_NAK => return Frame::CommitNak,
                _ => {}
            }
        }
        Frame::Message(payload)
    }
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(FramingOptions::default())
    }
}

fn is_padding(b: u8) -> bool {
    matches!(b, 0x00 | b'\r' | b'\n' | b' ' | b'\t')
}

fn skipped_event(len: usize, all_padding: bool) -> FramingEvent {
    if all_padding {
        FramingEvent::SkippedPadding { len }
    } else {
        FramingEvent::SkippedGarbage { len }
    }
}

/// The first bytes of a refused payload, at most [`OVERSIZE_HEAD_LEN`] and
/// at most `limit` (so the head of an oversized frame does not depend on how
/// the frame was split across reads).
fn head_of(payload: &[u8], limit: usize) -> Bytes {
    let n = payload.len().min(OVERSIZE_HEAD_LEN).min(limit);
    Bytes::copy_from_slice(&payload[..n])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut v = vec![START_BLOCK];
        v.extend_from_slice(payload);
        v.extend_from_slice(&[END_BLOCK, TRAILER]);
        v
    }

    fn msg(payload: &[u8]) -> Decoded {
        Decoded::Frame(Frame::Message(Bytes::copy_from_slice(payload)))
    }

    /// Feeds `chunks` one at a time, draining after each, then signals EOF.
    fn run(options: FramingOptions, chunks: &[&[u8]]) -> Vec<Decoded> {
        let mut decoder = FrameDecoder::new(options);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(d) = decoder.decode(&mut buf) {
                out.push(d);
            }
        }
        while let Some(d) = decoder.decode_eof(&mut buf) {
            out.push(d);
        }
        assert!(buf.is_empty(), "decode_eof leaves an empty buffer");
        out
    }

    fn one_shot(options: FramingOptions, input: &[u8]) -> Vec<Decoded> {
        run(options, &[input])
    }

    fn byte_by_byte(options: FramingOptions, input: &[u8]) -> Vec<Decoded> {
        let chunks: Vec<&[u8]> = input.chunks(1).collect();
        run(options, &chunks)
    }

    #[test]
    fn single_frame() {
        let out = one_shot(FramingOptions::default(), &frame(b"MSH|^~\\&|A"));
        assert_eq!(out, vec![msg(b"MSH|^~\\&|A")]);
    }

    #[test]
    fn several_frames_in_one_read() {
        let mut input = frame(b"one");
        input.extend(frame(b"two"));
        input.extend(frame(b"three"));
        let out = one_shot(FramingOptions::default(), &input);
        assert_eq!(out, vec![msg(b"one"), msg(b"two"), msg(b"three")]);
    }

    #[test]
    fn byte_by_byte_delivery() {
        let mut input = frame(b"MSH|first\rPID|1");
        input.extend(frame(b"MSH|second"));
        let out = byte_by_byte(FramingOptions::default(), &input);
        assert_eq!(out, vec![msg(b"MSH|first\rPID|1"), msg(b"MSH|second")]);
    }

    #[test]
    fn every_split_point_decodes_identically() {
        let mut input = b"\r\n".to_vec();
        input.extend(frame(b"MSH|a"));
        input.extend(b"junk");
        input.extend(frame(b"MSH|bb"));
        input.extend([START_BLOCK, b'x', END_BLOCK, b'y']);
        input.extend(frame(&[COMMIT_ACK]));
        let whole = one_shot(FramingOptions::default(), &input);
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let parts = [&input[..i], &input[i..j], &input[j..]];
                assert_eq!(
                    run(FramingOptions::default(), &parts),
                    whole,
                    "split at {i},{j}"
                );
            }
        }
    }

    #[test]
    fn empty_payload_is_a_frame() {
        let out = one_shot(FramingOptions::default(), &frame(b""));
        assert_eq!(out, vec![msg(b"")]);
    }

    #[test]
    fn padding_between_frames_is_skipped_and_counted() {
        let mut input = vec![0, 0, 0];
        input.extend(frame(b"a"));
        input.extend(b"\r\n");
        input.extend(frame(b"b"));
        input.extend(b"\n");
        let out = byte_by_byte(FramingOptions::default(), &input);
        assert_eq!(
            out,
            vec![
                Decoded::Event(FramingEvent::SkippedPadding { len: 3 }),
                msg(b"a"),
                Decoded::Event(FramingEvent::SkippedPadding { len: 2 }),
                msg(b"b"),
                Decoded::Event(FramingEvent::SkippedPadding { len: 1 }),
            ]
        );
    }

    #[test]
    fn garbage_between_frames_is_skipped_and_counted() {
        let mut input = b"GET / HTTP/1.1\r\n".to_vec();
        input.extend(frame(b"a"));
        let mut decoder = FrameDecoder::default();
        let mut buf = BytesMut::from(&input[..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Some(Decoded::Event(FramingEvent::SkippedGarbage { len: 16 }))
        );
        assert_eq!(decoder.decode(&mut buf), Some(msg(b"a")));
        assert_eq!(decoder.stats().skipped_bytes, 16);
        assert_eq!(decoder.stats().frames, 1);
    }

    #[test]
    fn out_of_frame_bytes_are_not_buffered() {
        let mut decoder = FrameDecoder::default();
        let mut buf = BytesMut::from(&b"garbage without a start byte"[..]);
        assert_eq!(decoder.decode(&mut buf), None);
        assert!(buf.is_empty());
    }

    #[test]
    fn missing_trailer_is_accepted_when_lenient() {
        let mut input = vec![START_BLOCK];
        input.extend(b"MSH|x");
        input.push(END_BLOCK);
        input.extend(frame(b"MSH|y"));
        let out = one_shot(FramingOptions::default(), &input);
        assert_eq!(
            out,
            vec![
                Decoded::Event(FramingEvent::MissingTrailer {
                    found: Some(START_BLOCK),
                    refused: false,
                    head: Bytes::from_static(b"MSH|x"),
                }),
                msg(b"MSH|x"),
                msg(b"MSH|y"),
            ]
        );
    }

    #[test]
    fn missing_trailer_is_refused_when_strict() {
        let mut input = vec![START_BLOCK];
        input.extend(b"MSH|x");
        input.extend([END_BLOCK, b'\n']);
        input.extend(frame(b"MSH|y"));
        let out = byte_by_byte(FramingOptions::strict(), &input);
        assert_eq!(
            out,
            vec![
                Decoded::Event(FramingEvent::MissingTrailer {
                    found: Some(b'\n'),
                    refused: true,
                    head: Bytes::from_static(b"MSH|x"),
                }),
                Decoded::Event(FramingEvent::SkippedPadding { len: 1 }),
                msg(b"MSH|y"),
            ]
        );
    }

    #[test]
    fn end_byte_at_close_without_trailer() {
        let input = [START_BLOCK, b'a', END_BLOCK];
        let lenient = one_shot(FramingOptions::default(), &input);
        assert_eq!(
            lenient,
            vec![
                Decoded::Event(FramingEvent::MissingTrailer {
                    found: None,
                    refused: false,
                    head: Bytes::from_static(b"a"),
                }),
                msg(b"a"),
            ]
        );
        let strict = one_shot(FramingOptions::strict(), &input);
        assert_eq!(strict.len(), 1);
        assert!(matches!(&strict[0], Decoded::Event(e) if e.refused_frame()));
    }

    #[test]
    fn end_byte_waits_for_the_next_read_to_check_the_trailer() {
        let mut decoder = FrameDecoder::default();
        let mut buf = BytesMut::from(&[START_BLOCK, b'a', END_BLOCK][..]);
        assert_eq!(decoder.decode(&mut buf), None);
        buf.extend_from_slice(&[TRAILER]);
        assert_eq!(decoder.decode(&mut buf), Some(msg(b"a")));
    }

    #[test]
    fn closed_mid_frame_is_reported() {
        let out = one_shot(FramingOptions::default(), &[START_BLOCK, b'M', b'S', b'H']);
        assert_eq!(
            out,
            vec![Decoded::Event(FramingEvent::Truncated { len: 3 })]
        );
    }

    #[test]
    fn start_byte_inside_a_frame_restarts_it() {
        let mut input = vec![START_BLOCK];
        input.extend(b"MSH|abandoned");
        input.extend(frame(b"MSH|real"));
        let out = byte_by_byte(FramingOptions::default(), &input);
        assert_eq!(
            out,
            vec![
                Decoded::Event(FramingEvent::UnexpectedStart { dropped: 13 }),
                msg(b"MSH|real"),
            ]
        );
    }

    #[test]
    fn frame_at_the_limit_is_accepted() {
        let payload = vec![b'x'; 64];
        let options = FramingOptions::default().with_max_frame_len(64);
        assert_eq!(
            byte_by_byte(options.clone(), &frame(&payload)),
            vec![msg(&payload)]
        );
        assert_eq!(one_shot(options, &frame(&payload)), vec![msg(&payload)]);
    }

    #[test]
    fn oversized_frame_is_refused_before_buffering_and_stream_resyncs() {
        let options = FramingOptions::default().with_max_frame_len(64);
        let mut decoder = FrameDecoder::new(options);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[START_BLOCK]);
        buf.extend_from_slice(b"MSH|big");
        for _ in 0..100 {
            buf.extend_from_slice(&[b'x'; 50]);
            assert_eq!(decoder.decode(&mut buf), None);
            assert!(buf.len() <= 65 + 50, "buffer grew to {}", buf.len());
            assert!(decoder.is_mid_frame());
        }
        assert!(buf.is_empty());
        buf.extend_from_slice(&[END_BLOCK, TRAILER]);
        buf.extend_from_slice(&frame(b"MSH|small"));
        let Some(Decoded::Event(FramingEvent::FrameTooLarge { len, limit, head })) =
            decoder.decode(&mut buf)
        else {
            panic!("expected FrameTooLarge");
        };
        assert_eq!(len, 7 + 5000);
        assert_eq!(limit, 64);
        assert!(head.starts_with(b"MSH|big"));
        assert_eq!(decoder.decode(&mut buf), Some(msg(b"MSH|small")));
        assert_eq!(decoder.stats().refused, 1);
    }

    #[test]
    fn oversized_frame_in_one_read_is_refused() {
        let options = FramingOptions::default().with_max_frame_len(4);
        let mut input = frame(b"toolong");
        input.extend(frame(b"ok"));
        let out = one_shot(options.clone(), &input);
        assert_eq!(
            out,
            vec![
                Decoded::Event(FramingEvent::FrameTooLarge {
                    len: 7,
                    limit: 4,
                    head: Bytes::from_static(b"tool"),
                }),
                msg(b"ok"),
            ]
        );
        assert_eq!(byte_by_byte(options, &input), out);
    }

    #[test]
    fn oversized_frame_cut_by_a_new_start_byte() {
        let options = FramingOptions::default().with_max_frame_len(4);
        let mut input = vec![START_BLOCK];
        input.extend(b"toolong");
        input.extend(frame(b"ok"));
        let out = byte_by_byte(options, &input);
        assert!(matches!(
            &out[0],
            Decoded::Event(FramingEvent::FrameTooLarge { len: 7, .. })
        ));
        assert_eq!(out[1], msg(b"ok"));
    }

    #[test]
    fn closed_while_discarding_oversized_frame() {
        let options = FramingOptions::default().with_max_frame_len(4);
        let out = byte_by_byte(options, &[START_BLOCK, 1, 2, 3, 4, 5, 6]);
        assert_eq!(
            out,
            vec![Decoded::Event(FramingEvent::Truncated { len: 6 })]
        );
    }

    #[test]
    fn commit_blocks_are_distinct_frames() {
        let mut input = frame(&[COMMIT_ACK]);
        input.extend(frame(&[COMMIT_NAK]));
        let out = one_shot(FramingOptions::default(), &input);
        assert_eq!(
            out,
            vec![
                Decoded::Frame(Frame::CommitAck),
                Decoded::Frame(Frame::CommitNak)
            ]
        );
        let plain = FramingOptions {
            commit_acks: false,
            ..FramingOptions::default()
        };
        assert_eq!(
            one_shot(plain, &input),
            vec![msg(&[COMMIT_ACK]), msg(&[COMMIT_NAK])]
        );
    }

    #[test]
    fn custom_framing_bytes() {
        let options = FramingOptions::default().with_bytes(b'<', b'>', b'\n');
        let out = byte_by_byte(options.clone(), b"<one>\n<two>\n");
        assert_eq!(out, vec![msg(b"one"), msg(b"two")]);
        let mut encoded = BytesMut::new();
        encode_message(b"one", &options, &mut encoded).expect("encodable");
        assert_eq!(&encoded[..], b"<one>\n");
    }

    #[test]
    fn encode_round_trips_and_refuses_bad_payloads() {
        let options = FramingOptions::default().with_max_frame_len(8);
        let mut dst = BytesMut::new();
        Frame::Message(Bytes::from_static(b"MSH|1"))
            .encode(&options, &mut dst)
            .expect("encodable");
        Frame::CommitAck
            .encode(&options, &mut dst)
            .expect("encodable");
        Frame::CommitNak
            .encode(&options, &mut dst)
            .expect("encodable");
        assert_eq!(&dst[..], b"\x0bMSH|1\x1c\r\x0b\x06\x1c\r\x0b\x15\x1c\r");
        assert_eq!(
            one_shot(options.clone(), &dst),
            vec![
                msg(b"MSH|1"),
                Decoded::Frame(Frame::CommitAck),
                Decoded::Frame(Frame::CommitNak)
            ]
        );
        assert_eq!(
            encode_message(b"ab\x1ccd", &options, &mut dst),
            Err(EncodeError::EndByteInPayload { offset: 2 })
        );
        assert_eq!(
            encode_message(b"123456789", &options, &mut dst),
            Err(EncodeError::TooLarge { len: 9, limit: 8 })
        );
    }

    /// Pieces a hostile or sloppy sender might put on the wire.
    fn piece() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(0x20u8..0x7f, 0..40).prop_map(|p| frame(&p)),
            Just(frame(&[COMMIT_ACK])),
            Just(b"\r\n".to_vec()),
            Just(vec![0u8; 3]),
            proptest::collection::vec(any::<u8>(), 0..20),
            proptest::collection::vec(0x20u8..0x7f, 0..40).prop_map(|p| {
                let mut v = vec![START_BLOCK];
                v.extend(p);
                v.push(END_BLOCK);
                v
            }),
        ]
    }

    proptest! {
        #[test]
        fn random_split_points_decode_identically(
            pieces in proptest::collection::vec(piece(), 0..12),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
            max in 8usize..64,
            strict in any::<bool>(),
        ) {
            let input: Vec<u8> = pieces.concat();
            let options = FramingOptions { strict, ..FramingOptions::default().with_max_frame_len(max) };
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut last = 0;
            for p in points {
                chunks.push(&input[last..p]);
                last = p;
            }
            chunks.push(&input[last..]);
            let whole = one_shot(options.clone(), &input);
            prop_assert_eq!(&run(options.clone(), &chunks), &whole);
            prop_assert_eq!(&byte_by_byte(options, &input), &whole);
        }

        #[test]
        fn encoded_messages_decode_to_themselves(
            payloads in proptest::collection::vec(proptest::collection::vec(0x20u8..0x7f, 2..200), 1..8),
        ) {
            let options = FramingOptions::default();
            let mut wire = BytesMut::new();
            for p in &payloads {
                encode_message(p, &options, &mut wire).expect("printable payloads encode");
            }
            let out = byte_by_byte(options, &wire);
            let expected: Vec<Decoded> = payloads.iter().map(|p| msg(p)).collect();
            prop_assert_eq!(out, expected);
        }

        #[test]
        fn never_panics_and_never_buffers_past_the_limit(
            input in proptest::collection::vec(any::<u8>(), 0..2000),
            chunk in 1usize..64,
        ) {
            let mut decoder = FrameDecoder::new(FramingOptions::default().with_max_frame_len(100));
            let mut buf = BytesMut::new();
            for c in input.chunks(chunk) {
                buf.extend_from_slice(c);
                while decoder.decode(&mut buf).is_some() {}
                prop_assert!(buf.len() <= 102 + chunk);
            }
            while decoder.decode_eof(&mut buf).is_some() {}
            prop_assert!(buf.is_empty());
        }
    }
}

/// Entry point for fuzzers. The first byte picks the options and the read size; the rest is
/// the stream. Checks that delivering the stream in small reads yields the same frames as one
/// read, that the buffer never grows far past the frame limit, and that every decoded message
/// frame encodes and decodes back to itself.
#[doc(hidden)]
pub fn fuzz_decode(data: &[u8]) {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let mut options =
        FramingOptions::default().with_max_frame_len(1 + usize::from(control % 64) * 64);
    options.strict = control & 0x80 != 0;
    let chunk = 1 + usize::from((control >> 3) & 0x0F);
    let frames = |read_size: usize| {
        let mut decoder = FrameDecoder::new(options.clone());
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in stream.chunks(read_size.max(1)) {
            buf.extend_from_slice(piece);
            while let Some(item) = decoder.decode(&mut buf) {
                out.push(item);
            }
            assert!(
                buf.len() <= options.max_frame_len + read_size + 3,
                "buffered {} bytes with a {}-byte limit",
                buf.len(),
                options.max_frame_len
            );
        }
        while let Some(item) = decoder.decode_eof(&mut buf) {
            out.push(item);
        }
        out.into_iter()
            .filter_map(|d| match d {
                Decoded::Frame(f) => Some(f),
                Decoded::Event(_) => None,
            })
            .collect::<Vec<_>>()
    };
    let whole = frames(stream.len());
    assert_eq!(whole, frames(chunk), "frames depend on read boundaries");
    for frame in whole {
        let mut buf = BytesMut::new();
        if frame.encode(&options, &mut buf).is_ok() {
            let mut decoder = FrameDecoder::new(options.clone());
            let again = decoder.decode(&mut buf);
            assert_eq!(
                again,
                Some(Decoded::Frame(frame)),
                "re-encoded frame decodes differently"
            );
        }
    }
}

#[cfg(test)]
mod fuzz_entry_tests {
    #[test]
    fn fuzz_entry_holds_on_sample_streams() {
        for control in [0x00u8, 0x10, 0x7F, 0x80, 0xFF, 0x09] {
            let mut data = vec![control];
            data.extend_from_slice(
                b"\0\r\n\x0bMSH|^~\\&|A|B\x1c\x0d\x0b\x06\x1c\x0dnoise\x0bMSH|x\x1cZ\x0b",
            );
            data.extend(std::iter::repeat_n(b'x', 5000));
            data.extend_from_slice(b"\x1c\x0d\x0bMSH|tail");
            super::fuzz_decode(&data);
        }
    }
}

//! MLLP transport for Causeway: how HL7 v2 messages travel over TCP and TLS.
//!
//! MLLP (Minimal Lower Layer Protocol) wraps each message in a start byte
//! and an end sequence, `0x0B payload 0x1C 0x0D`. This crate frames and
//! unframes those blocks, runs a listener that hands each message to a
//! [`Handler`](server::Handler) and writes its reply back, and runs a sender
//! that waits for the ACK of each message it sends. TLS (1.2 and 1.3, rustls
//! with the ring provider) covers server certificates with hot reload,
//! client certificates with an identity allowlist, and certificate pinning.
//!
//! What it is not: it does not store, route or interpret messages. The
//! server parses a message only far enough to log its control id and to
//! answer garbage with an AR; what to acknowledge, and when, is the
//! handler's decision (ACK only after commit). Message parsing and ACK
//! building live in `causeway-message`; this crate only adds what needs a
//! clock (ACK timestamps, control ids).
//!
//! The types that matter:
//! - [`frame::FrameDecoder`]: the sans-I/O framing state machine. Bytes in,
//!   [`frame::Frame`]s and [`frame::FramingEvent`]s out; never fails, never
//!   buffers more than one frame of the configured maximum.
//! - [`codec::MllpCodec`]: the same core as a tokio-util codec.
//! - [`server::run`] with [`server::ServerSettings`] and [`server::Handler`].
//! - [`client::Client`] with [`client::ClientSettings`], returning a
//!   [`client::Delivery`] or a [`client::ClientError`].
//! - [`tls::ServerTls`] (reloadable) and [`tls::ClientTls`].
//!
//! ```
//! use bytes::BytesMut;
//! use causeway_mllp::frame::{Decoded, Frame, FrameDecoder, FramingEvent, FramingOptions};
//!
//! let mut decoder = FrameDecoder::new(FramingOptions::default());
//! let mut buf = BytesMut::from(&b"\r\n\x0bMSH|^~\\&|A\x1c\r\x0bMSH|^~"[..]);
//! assert_eq!(decoder.decode(&mut buf), Some(Decoded::Event(FramingEvent::SkippedPadding { len: 2 })));
//! assert!(matches!(decoder.decode(&mut buf), Some(Decoded::Frame(Frame::Message(m))) if &m[..] == b"MSH|^~\\&|A"));
//! assert_eq!(decoder.decode(&mut buf), None); // the second frame is not complete yet
//! ```
//!
//! # Layout
//! - [`frame`]: the wire format: options, decoder state machine, encoder,
//!   framing events. No tokio, no clock.
//! - [`codec`]: tokio-util `Decoder`/`Encoder` over [`frame`].
//! - [`server`]: accept loop, connection limit, timeouts, graceful shutdown,
//!   per-connection sequential handling, NAKs for refused frames.
//! - [`client`]: connect (all resolved addresses), send, match the ACK,
//!   dead-peer detection, reconnect with backoff and jitter.
//! - [`tls`]: rustls server and client configurations, mTLS allowlist,
//!   pinning, reload.
//! - [`ack`]: control ids, HL7 timestamps, and the NAKs the transport writes
//!   on its own.
#![warn(missing_docs)]

pub mod ack;
pub mod client;
pub mod codec;
pub mod frame;
pub mod server;
pub mod tls;

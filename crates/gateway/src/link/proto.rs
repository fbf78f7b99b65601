//! The link's frames. Each is one binary WebSocket message: a 4-byte big-endian header
//! length, the header as JSON, then the payload (a message's bytes, unchanged). JSON keeps
//! the header readable in a packet capture taken inside the TLS endpoint and lets fields be
//! added without breaking older peers; the payload is never re-encoded.
//!
//! A session: the edge sends `hello`, the hub answers `welcome` (or `refused` and closes).
//! Then either side sends `msg` frames for its link destinations; the receiver answers each
//! with `stored` (durably stored: the sender may forget it) or `failed`, and, when the
//! sender asked, later with `outcome` (what the receiver's first destination answered).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Version spoken; a hub refuses an edge speaking another.
pub const VERSION: u32 = 1;

/// Largest header accepted (the payload is bounded by the frame size).
const MAX_HEADER: usize = 64 * 1024;

/// A frame's header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Header {
    /// Edge to hub, first frame.
    Hello {
        /// Protocol version.
        version: u32,
        /// The edge's name.
        name: String,
    },
    /// Hub to edge: the session is open.
    Welcome {
        /// The hub's name.
        name: String,
    },
    /// Hub to edge: the session is refused (the hub closes it).
    Refused {
        /// Why, for the edge's log.
        reason: String,
    },
    /// A message for the peer's `channel`; the payload is its bytes.
    Msg {
        /// The sending link destination (sequence numbers are per destination).
        dest: String,
        /// Delivery id at the sender: grows along the sender's queue.
        seq: i64,
        /// Sender's attempt number, echoed in replies (a late reply to an earlier attempt
        /// is recognised and ignored).
        n: u64,
        /// The receiver's channel.
        channel: String,
        /// The sender's message id (for logs and tracing across the hop).
        id: i64,
        /// When the sender received it (ms since the epoch). The receiver stores the
        /// message with this time, so a resend has the same duplicate key and time and is
        /// recognised as a duplicate however late it comes.
        received_at: i64,
        /// MSH-10, for logs.
        control_id: String,
        /// Also answer with an `outcome` once the receiver's first destination answered.
        want_outcome: bool,
    },
    /// The receiver stored `seq` durably (or already had it).
    Stored {
        /// Sending destination.
        dest: String,
        /// Sequence.
        seq: i64,
        /// Attempt echoed.
        n: u64,
        /// The receiver's message id (the original when this was a resend).
        id: i64,
        /// It was a resend of a message already stored.
        duplicate: bool,
    },
    /// The receiver did not store `seq`; the sender retries later, from `seq`.
    Failed {
        /// Sending destination.
        dest: String,
        /// Sequence.
        seq: i64,
        /// Attempt echoed.
        n: u64,
        /// Why (logged on both sides).
        reason: String,
    },
    /// What the receiver's first destination finally answered for `seq`.
    Outcome {
        /// Sending destination.
        dest: String,
        /// Sequence.
        seq: i64,
        /// Attempt echoed.
        n: u64,
        /// Delivered (with its ACK), refused for good (dead-lettered), or an attempt that
        /// failed and will be retried (more outcomes follow).
        result: Verdict,
        /// MSA-1 (or HTTP status) of the destination's answer.
        code: Option<String>,
        /// Its text (MSA-3, ERR), or why it was refused.
        text: Option<String>,
    },
}

/// What an attempt at the receiver's destination came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Delivered; final.
    Delivered,
    /// Failed, will be retried; not final.
    Retry,
    /// Refused for good (dead-lettered); final.
    Refused,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Header.
    pub header: Header,
    /// Payload (empty but for `msg`).
    pub payload: Bytes,
}

impl Frame {
    /// A frame without payload.
    pub fn new(header: Header) -> Frame {
        Frame {
            header,
            payload: Bytes::new(),
        }
    }

    /// The bytes of the WebSocket message.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing an enum of strings and integers cannot fail.
        let header = serde_json::to_vec(&self.header).unwrap_or_default();
        let mut out = Vec::with_capacity(4 + header.len() + self.payload.len());
        out.extend_from_slice(
            &u32::try_from(header.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(&header);
        out.extend_from_slice(&self.payload);
        out
    }

    /// Decodes one WebSocket message.
    pub fn decode(bytes: Bytes) -> Result<Frame, String> {
        if bytes.len() < 4 {
            return Err(format!(
                "frame of {} bytes is shorter than its length prefix",
                bytes.len()
            ));
        }
        let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if len > MAX_HEADER || 4 + len > bytes.len() {
            return Err(format!(
                "frame header of {len} bytes does not fit (frame {} bytes, most {MAX_HEADER})",
                bytes.len()
            ));
        }
        let header: Header = serde_json::from_slice(&bytes[4..4 + len])
            .map_err(|e| format!("frame header is not understood: {e}"))?;
        let payload = bytes.slice(4 + len..);
        if !payload.is_empty() && !matches!(header, Header::Msg { .. }) {
            return Err("payload on a frame that takes none".to_owned());
        }
        Ok(Frame { header, payload })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let f = Frame {
            header: Header::Msg {
                dest: "to-hub".into(),
                seq: 7,
                n: 1,
                channel: "adt".into(),
                id: 3,
                received_at: 1_700_000_000_000,
                control_id: "C1".into(),
                want_outcome: true,
            },
            payload: Bytes::from_static(b"MSH|^~\\&|A\r"),
        };
        let bytes = Bytes::from(f.encode());
        assert_eq!(Frame::decode(bytes).unwrap(), f);
        let s = Frame::new(Header::Stored {
            dest: "d".into(),
            seq: 1,
            n: 2,
            id: 9,
            duplicate: false,
        });
        assert_eq!(Frame::decode(Bytes::from(s.encode())).unwrap(), s);
        assert!(Frame::decode(Bytes::from_static(b"\0\0")).is_err());
        assert!(Frame::decode(Bytes::from_static(b"\0\0\0\x09{\"t\":\"x\"}")).is_err());
        assert!(Frame::decode(Bytes::from_static(b"\xff\0\0\0{}")).is_err());
        let mut bad = s.encode();
        bad.extend_from_slice(b"junk");
        assert!(Frame::decode(Bytes::from(bad)).is_err());
    }
}

//! The part of acknowledging that needs a clock: control ids and timestamps
//! for the ACKs this crate writes, and the NAKs for frames that never reached
//! a handler.
//!
//! `causeway-message` builds ACKs but reads no clock, so MSH-7 and MSH-10 of
//! every reply are filled in here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use causeway_message::ParseError;
use causeway_message::ack::{Ack, ErrorCode};

use crate::frame::FramingEvent;

/// Generates process-unique HL7 control ids (MSH-10) for outgoing ACKs.
///
/// An id is a prefix fixed at construction (`CW` plus the start time in
/// milliseconds, base 36) followed by a counter in base 36, so ids from two
/// runs of the daemon do not collide and every id fits MSH-10's 20 characters
/// for the first 36^10 replies.
#[derive(Debug)]
pub struct ControlIds {
    prefix: String,
    next: AtomicU64,
}

impl ControlIds {
    /// A generator whose prefix comes from the current time.
    pub fn new() -> Self {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self::with_prefix(format!("CW{}", base36(millis)))
    }

    /// A generator with a fixed prefix (deterministic output for tests).
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            next: AtomicU64::new(1),
        }
    }

    /// The next id.
    pub fn next_id(&self) -> String {
        // Relaxed: only uniqueness matters, not ordering with other memory.
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}{}", self.prefix, base36(n))
    }
}

impl Default for ControlIds {
    fn default() -> Self {
        Self::new()
    }
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut out = Vec::with_capacity(13);
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    // Only ASCII digits and letters were pushed.
    String::from_utf8_lossy(&out).into_owned()
}

/// Formats `t` as an HL7 DTM in UTC: `YYYYMMDDHHMMSS`.
///
/// Times before 1970 (a badly set clock) format as the epoch.
pub fn hl7_timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = causeway_message::date::civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// The reason text sent in the ERR segment for a refused frame.
pub fn refusal_reason(event: &FramingEvent) -> Option<String> {
    match event {
        FramingEvent::FrameTooLarge { len, limit, .. } => Some(format!(
            "MLLP frame of {len} bytes exceeds the {limit}-byte limit"
        )),
        FramingEvent::MissingTrailer { refused: true, .. } => {
            Some("MLLP frame end block not followed by the trailer byte".to_owned())
        }
        _ => None,
    }
}

/// The AR NAK for a frame the framing core refused, or `None` for events that
/// refuse nothing. The frame's first bytes (kept in the event) let the NAK
/// echo the sender's MSH fields and control id when they are there.
pub fn nak_for_event(event: &FramingEvent, ids: &ControlIds, now: SystemTime) -> Option<Vec<u8>> {
    let reason = refusal_reason(event)?;
    let head: &[u8] = match event {
        FramingEvent::FrameTooLarge { head, .. } | FramingEvent::MissingTrailer { head, .. } => {
            head
        }
        _ => &[],
    };
    let code = match event {
        FramingEvent::FrameTooLarge { .. } => ErrorCode::ValueTooLong,
        _ => ErrorCode::SegmentSequence,
    };
    Some(
        Ack::for_unparseable_with(head, code, &reason)
            .control_id(ids.next_id())
            .timestamp(hl7_timestamp(now))
            .encode(),
    )
}

/// The AR NAK for a frame whose payload is not an HL7 message.
pub fn nak_for_parse_error(
    payload: &[u8],
    error: &ParseError,
    ids: &ControlIds,
    now: SystemTime,
) -> Vec<u8> {
    Ack::for_parse_error(payload, error)
        .control_id(ids.next_id())
        .timestamp(hl7_timestamp(now))
        .encode()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_dtm() {
        assert_eq!(hl7_timestamp(UNIX_EPOCH), "19700101000000");
        // 2026-11-27T12:34:56Z
        let t = UNIX_EPOCH + Duration::from_secs(1_795_782_896);
        assert_eq!(hl7_timestamp(t), "20261127123456");
        // Leap day.
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(hl7_timestamp(t), "20000229000000");
    }

    #[test]
    fn control_ids_are_unique_and_short() {
        let ids = ControlIds::new();
        let a = ids.next_id();
        let b = ids.next_id();
        assert_ne!(a, b);
        assert!(a.starts_with("CW"));
        assert!(a.len() <= 20, "{a}");
        let fixed = ControlIds::with_prefix("T");
        assert_eq!(fixed.next_id(), "T1");
        assert_eq!(fixed.next_id(), "T2");
    }

    #[test]
    fn only_refusals_get_a_nak() {
        let ids = ControlIds::with_prefix("T");
        let padding = FramingEvent::SkippedPadding { len: 2 };
        assert!(nak_for_event(&padding, &ids, UNIX_EPOCH).is_none());
        let big = FramingEvent::FrameTooLarge {
            len: 100,
            limit: 10,
            head: bytes::Bytes::from_static(b"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|MSG42|P|2.5"),
        };
        let nak = nak_for_event(&big, &ids, UNIX_EPOCH).expect("refusal");
        let text = String::from_utf8_lossy(&nak);
        assert!(text.contains("MSA|AR|MSG42"), "{text}");
        assert!(text.contains("ERR"), "{text}");
    }
}

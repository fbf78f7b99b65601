//! The HL7 v2 message model of Causeway: parse, read by path, escape, decode, build, batch
//! and acknowledge. No I/O and no clock: bytes in, values out, time passed in.
//!
//! A [`Message`] is the bytes it was parsed from plus an index of where each segment and
//! field starts; nothing is copied, and parsing never changes a byte. Values are read with
//! paths such as `PID-3[2].1` and come back raw (escapes in) as a [`Value`], which can be
//! unescaped and decoded to text with a [`Charset`]. [`MessageBuf`] is the owned, editable
//! form used to build messages (ACKs among them). [`ack`] builds replies and reads them
//! back; [`batch`] splits and builds FHS/BHS batch files.
//!
//! What it is not: a validator against message structures or a data-type library. It reads
//! every message real systems send (lenient by default, every tolerance reported as a
//! [`Warning`]) and never panics on input.
//!
//! # Layout
//! - [`message`]: [`Message`], [`Segment`], [`ParseOptions`]: the parser and its index.
//! - [`value`]: [`Value`] and [`Presence`]: a field, repetition, component or subcomponent.
//! - [`path`]: [`Path`], the `SEG[n]-f[r].c.s` syntax.
//! - [`delim`]: [`Delimiters`] from MSH-1/MSH-2.
//! - [`escape`]: `\F\`-style escape sequences.
//! - [`charset`]: MSH-18 names to decoders, [`TextDecoding`] for overrides and fallback.
//! - [`build`]: [`MessageBuf`], owned messages.
//! - [`ack`]: acknowledgements, both directions.
//! - [`batch`]: batch files.
//! - [`error`]: [`ParseError`], [`Warning`], [`PathError`].
//! - [`date`]: calendar arithmetic for timestamps (no clock).

pub mod ack;
pub mod batch;
pub mod build;
pub mod charset;
pub mod date;
pub mod delim;
pub mod error;
pub mod escape;
pub mod message;
pub mod path;
pub mod value;

pub use build::{MessageBuf, SegmentBuf};
pub use charset::{Charset, CharsetError, DecodeError, TextDecoding};
pub use delim::Delimiters;
pub use error::{ParseError, ParseErrorKind, PathError, Warning, WarningKind};
pub use message::{Message, ParseOptions, Segment};
pub use path::Path;
pub use value::{Children, Presence, Value};

/// Entry point for fuzzers: parse, walk every value, rebuild, acknowledge. Panics only on a
/// broken invariant (a round trip that changes bytes), which is what a fuzzer should find.
#[doc(hidden)]
pub fn fuzz_parse(data: &[u8]) {
    for options in [ParseOptions::LENIENT, ParseOptions::STRICT] {
        match Message::parse_with(data, options) {
            Ok(msg) => {
                for seg in msg.segments() {
                    for field in seg.fields() {
                        for rep in field.children() {
                            for comp in rep.children() {
                                for sub in comp.children() {
                                    let _ = sub.text(Charset::Utf8);
                                }
                            }
                        }
                    }
                }
                let _ = msg.declared_charset();
                assert_eq!(
                    MessageBuf::from_message(&msg).encode(),
                    data,
                    "round trip changed bytes"
                );
                let ack = ack::Ack::for_message(&msg, ack::Outcome::Accept)
                    .control_id("F")
                    .timestamp("T")
                    .encode();
                assert!(
                    ack::AckReply::parse(&ack).is_ok(),
                    "our own ACK does not parse"
                );
            }
            Err(e) => {
                let nak = ack::Ack::for_parse_error(data, &e)
                    .control_id("F")
                    .timestamp("T")
                    .encode();
                assert!(
                    ack::AckReply::parse(&nak).is_ok(),
                    "our own NAK does not parse"
                );
            }
        }
    }
    let _ = batch::split(data, false);
}

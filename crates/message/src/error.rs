//! Errors and warnings of the message core.
//!
//! Every error carries the byte offset (into the bytes given to the parser) where the problem
//! was seen, and says what was expected there.

use std::fmt;

/// Why some bytes could not be read as an HL7 v2 message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} (at byte {offset})")]
pub struct ParseError {
    /// What went wrong.
    pub kind: ParseErrorKind,
    /// Byte offset into the input where it went wrong.
    pub offset: usize,
}

impl ParseError {
    pub(crate) fn new(kind: ParseErrorKind, offset: usize) -> Self {
        Self { kind, offset }
    }
}

/// The kinds of [`ParseError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// The input holds no bytes other than whitespace and control characters.
    #[error("empty input: expected a message starting with MSH")]
    Empty,
    /// The first segment is not `MSH` (or `FHS`/`BHS` where a batch header is allowed).
    #[error("expected the message to start with MSH, found {found:?}")]
    MissingMsh {
        /// Up to the first 8 bytes found instead, lossily decoded.
        found: String,
    },
    /// The input stops inside the MSH segment before its encoding characters.
    #[error("message ends inside MSH before the encoding characters (MSH-2)")]
    TruncatedHeader,
    /// MSH-1, the field separator, is a letter, digit, space or line break.
    #[error(
        "invalid field separator {0:?} in MSH-1: expected a printable non-alphanumeric character"
    )]
    InvalidFieldSeparator(char),
    /// MSH-2 does not hold 4 (or 5, with the v2.7 truncation character) distinct encoding characters.
    #[error("invalid encoding characters in MSH-2: {reason}")]
    InvalidEncodingCharacters {
        /// What is wrong with them.
        reason: &'static str,
    },
    /// A segment is terminated by LF or CRLF and the parser runs in strict mode.
    #[error("segment terminated by {found} but strict mode accepts only CR")]
    NonStandardTerminator {
        /// `"LF"` or `"CRLF"`.
        found: &'static str,
    },
    /// A segment ID is not three upper-case letters or digits (strict mode only).
    #[error("invalid segment ID {found:?}: expected three upper-case letters or digits")]
    InvalidSegmentId {
        /// The ID found, lossily decoded.
        found: String,
    },
    /// Bytes that are not a segment (stray control characters) in strict mode.
    #[error("stray bytes between or after segments")]
    StrayBytes,
    /// The message is larger than the index can address (4 GiB).
    #[error("message too large: {0} bytes, the limit is 4 GiB")]
    TooLarge(usize),
    /// A second MSH: several messages back to back (strict mode; see [`crate::batch::split`]).
    #[error("a second MSH segment: several messages in one input; split them as a batch")]
    SecondHeader,
    /// A batch file is structured wrongly (strict mode).
    #[error("malformed batch: {0}")]
    MalformedBatch(&'static str),
}

/// Something the lenient parser tolerated, with where it saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// What was tolerated.
    pub kind: WarningKind,
    /// Byte offset into the input.
    pub offset: usize,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at byte {})", self.kind, self.offset)
    }
}

/// The kinds of [`Warning`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WarningKind {
    /// A UTF-8 byte order mark precedes MSH; it is kept but not part of the message.
    #[error("UTF-8 byte order mark before MSH")]
    ByteOrderMark,
    /// Whitespace or control bytes precede MSH.
    #[error("{0} stray bytes before MSH")]
    LeadingBytes(usize),
    /// Segments end in LF or CRLF instead of CR.
    #[error("segments terminated by {0} instead of CR")]
    NonStandardTerminator(&'static str),
    /// A line holds only whitespace or control bytes (e.g. a stray MLLP start byte); it is skipped.
    #[error("skipped a line of {0} whitespace/control bytes")]
    StrayLine(usize),
    /// A segment ID is not three upper-case letters or digits; the segment is kept.
    #[error("invalid segment ID {0:?}")]
    InvalidSegmentId(String),
    /// MSH-2 was repaired: encoding characters were missing or doubled.
    #[error("repaired encoding characters in MSH-2: {0}")]
    RepairedEncodingCharacters(&'static str),
    /// A field starts with a space and a segment ID (` OBX|`): probably segments joined
    /// on one line by an editor; they are kept as fields of the segment.
    #[error("field starts with a segment ID ({0:?}): segments joined on one line?")]
    SuspectedJoinedSegment(String),
    /// A second MSH segment: these are several messages back to back, read here as one.
    /// [`crate::batch::split`] separates them.
    #[error("a second MSH segment: several messages back to back? split them as a batch")]
    SecondHeader,
    /// MSH-2 uses letters or digits as encoding characters (`$r?@`); every such letter in
    /// data is read as a separator.
    #[error("letters or digits used as encoding characters in MSH-2")]
    AlphanumericEncodingCharacters,
    /// A header field every message needs (MSH-7, -9, -10, -11 or -12) is empty.
    #[error("required field {0} is empty")]
    MissingRequiredField(&'static str),
    /// A batch trailer's count disagrees with what the batch holds.
    #[error("batch trailer says {declared} but {actual} were found")]
    BatchCountMismatch {
        /// The count written in BTS-1 or FTS-1.
        declared: usize,
        /// The count found.
        actual: usize,
    },
    /// A batch structure problem that was tolerated.
    #[error("batch structure: {0}")]
    BatchStructure(&'static str),
}

/// Why a path such as `PID-3[2].1` could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path text does not follow `SEG[occurrence]-field[repetition].component.subcomponent`.
    #[error("invalid path {path:?} at character {position}: expected {expected}")]
    Syntax {
        /// The path as given.
        path: String,
        /// Character position in the path.
        position: usize,
        /// What was expected there.
        expected: &'static str,
    },
    /// The path is valid but cannot be written to in this message.
    #[error("cannot set {path}: {reason}")]
    NotSettable {
        /// The path as given.
        path: String,
        /// Why not.
        reason: &'static str,
    },
}

//! The parsed message: the original bytes plus an index of segment and field positions.
//!
//! Parsing makes one pass over the bytes with `memchr3` looking for the field separator and
//! the two line-break bytes, recording where each segment and each field starts. Nothing is
//! copied; repetitions, components and subcomponents are split on demand when a value is read
//! (they are rarely all needed, and splitting a field of a few bytes is cheaper than indexing
//! every message in full).
//!
//! Positions are `u32`: a message over 4 GiB is refused ([`ParseErrorKind::TooLarge`]).

use crate::charset::{Charset, CharsetError};
use crate::delim::Delimiters;
use crate::error::{ParseError, ParseErrorKind, PathError, Warning, WarningKind};
use crate::path::Path;
use crate::value::{Level, Value};

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// How forgiving the parser is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParseOptions {
    /// Refuse what the standard does not allow but real systems send: LF or CRLF segment
    /// terminators, stray control bytes between segments, invalid segment IDs and repaired
    /// MSH-2 sets. Off by default: each of those is then accepted and reported as a
    /// [`Warning`].
    pub strict: bool,
}

impl ParseOptions {
    /// The lenient default.
    pub const LENIENT: ParseOptions = ParseOptions { strict: false };
    /// Strict mode.
    pub const STRICT: ParseOptions = ParseOptions { strict: true };
}

/// One segment's place in the input.
#[derive(Debug, Clone, Copy)]
struct SegmentIndex {
    /// First byte of the segment ID.
    start: u32,
    /// One past the last byte before the terminator.
    end: u32,
    /// Index into `Message::pieces` of the segment's first piece (its ID).
    first_piece: u32,
    /// How many field-separated pieces the segment has (ID included).
    pieces: u32,
}

/// A parsed HL7 v2 message borrowing its bytes.
///
/// ```
/// use causeway_message::Message;
/// let msg = Message::parse(b"MSH|^~\\&|LAB||EHR||20261127||ORU^R01|42|P|2.5\rPID|||123^^^MRN~456\r")?;
/// assert_eq!(msg.get("MSH-9.2")?.as_bytes(), Some(&b"R01"[..]));
/// assert_eq!(msg.get("PID-3[2].1")?.as_bytes(), Some(&b"456"[..]));
/// assert!(msg.get("PID-8")?.is_absent());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Message<'a> {
    bytes: &'a [u8],
    delimiters: Delimiters,
    segments: Vec<SegmentIndex>,
    /// Start offset of every field-separated piece of every segment, in order.
    pieces: Vec<u32>,
    warnings: Vec<Warning>,
}

impl<'a> Message<'a> {
    /// Parses leniently (see [`ParseOptions`]).
    pub fn parse(bytes: &'a [u8]) -> Result<Message<'a>, ParseError> {
        Self::parse_with(bytes, ParseOptions::LENIENT)
    }

    /// Parses with the given options.
    pub fn parse_with(bytes: &'a [u8], options: ParseOptions) -> Result<Message<'a>, ParseError> {
        Parser::new(bytes, options)?.run()
    }

    /// The bytes as given to the parser, unchanged.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The delimiters from MSH-1 and MSH-2.
    pub fn delimiters(&self) -> Delimiters {
        self.delimiters
    }

    /// What the lenient parser tolerated. Empty for a clean message.
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// Every segment in order.
    pub fn segments(&self) -> impl ExactSizeIterator<Item = Segment<'_, 'a>> + '_ {
        (0..self.segments.len()).map(move |i| Segment {
            msg: self,
            index: i,
        })
    }

    /// How many segments the message has.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The `occurrence`-th (1-based) segment with this ID.
    pub fn segment(&self, id: &str, occurrence: usize) -> Option<Segment<'_, 'a>> {
        let id = id.as_bytes();
        self.segments()
            .filter(|s| s.id() == id)
            .nth(occurrence.checked_sub(1)?)
    }

    /// The value at a path such as `PID-3`, `PID-3[2].1`, `OBX[3]-5.1` or `MSH-9.2`.
    ///
    /// A path naming a field without a repetition gives the whole field, repetitions and all.
    /// A missing segment or field gives an absent value, not an error; only a malformed path
    /// is an error.
    pub fn get(&self, path: &str) -> Result<Value<'a>, PathError> {
        Ok(self.at(&Path::parse(path)?))
    }

    /// The value at a parsed [`Path`].
    pub fn at(&self, path: &Path) -> Value<'a> {
        let Some(segment) = self.segment_by_bytes(path.segment(), path.occurrence) else {
            return Value::absent(self.delimiters);
        };
        let mut value = segment.field(path.field);
        if let Some(rep) = path.repetition {
            value = value.repetition(rep);
        }
        if let Some(component) = path.component {
            value = value.component(component);
            if let Some(sub) = path.subcomponent {
                value = value.subcomponent(sub);
            }
        }
        value
    }

    fn segment_by_bytes(&self, id: &[u8], occurrence: usize) -> Option<Segment<'_, 'a>> {
        self.segments()
            .filter(|s| s.id() == id)
            .nth(occurrence.checked_sub(1)?)
    }

    /// MSH, which every message starts with.
    pub fn header(&self) -> Segment<'_, 'a> {
        // Invariant: the parser refuses input whose first segment is not MSH.
        Segment {
            msg: self,
            index: 0,
        }
    }

    /// MSH-10, the message control ID, raw.
    pub fn control_id(&self) -> Option<&'a [u8]> {
        self.header().field(10).as_bytes().filter(|b| !b.is_empty())
    }

    /// MSH-9.1, the message code (`ADT`).
    pub fn message_code(&self) -> Option<&'a [u8]> {
        self.header()
            .field(9)
            .component(1)
            .as_bytes()
            .filter(|b| !b.is_empty())
    }

    /// MSH-9.2, the trigger event (`A01`).
    pub fn trigger_event(&self) -> Option<&'a [u8]> {
        self.header()
            .field(9)
            .component(2)
            .as_bytes()
            .filter(|b| !b.is_empty())
    }

    /// MSH-12.1, the version ID (`2.5.1`).
    pub fn version(&self) -> Option<&'a [u8]> {
        self.header()
            .field(12)
            .component(1)
            .as_bytes()
            .filter(|b| !b.is_empty())
    }

    /// The character set MSH-18 declares (its first repetition), `None` when it is empty.
    ///
    /// An MSH-18 naming a set Causeway does not know, or one that cannot be split on
    /// delimiter bytes safely, is an error rather than a guess.
    pub fn declared_charset(&self) -> Result<Option<Charset>, CharsetError> {
        let name = self
            .header()
            .field(18)
            .repetition(1)
            .as_bytes()
            .unwrap_or_default();
        if name.is_empty() {
            return Ok(None);
        }
        Charset::from_hl7_name_bytes(name).map(Some)
    }

    /// Warns about empty header fields that every version requires. The message is still
    /// usable (an ACK to a message without MSH-10 simply cannot name it), so this is a
    /// warning, not an error; a receiver may choose to reject on it.
    fn check_required_header_fields(&mut self) {
        const REQUIRED: [(usize, &str); 5] = [
            (7, "MSH-7"),
            (9, "MSH-9"),
            (10, "MSH-10"),
            (11, "MSH-11"),
            (12, "MSH-12"),
        ];
        let header = self.header();
        let offset = header.offset();
        let missing: Vec<&'static str> = REQUIRED
            .iter()
            .filter(|(n, _)| header.field(*n).is_empty())
            .map(|(_, name)| *name)
            .collect();
        self.warnings
            .extend(missing.into_iter().map(|name| Warning {
                kind: WarningKind::MissingRequiredField(name),
                offset,
            }));
    }

    /// Bytes before MSH (a byte order mark, stray bytes) that are kept but not parsed.
    pub fn prefix(&self) -> &'a [u8] {
        &self.bytes[..self.segments[0].start as usize]
    }

    /// The bytes after segment `index`'s content up to the next segment: its terminator plus
    /// any blank or stray lines. For the last segment, everything to the end of the input.
    pub(crate) fn trailer_of(&self, index: usize) -> &'a [u8] {
        let end = self.segments[index].end as usize;
        let next = self
            .segments
            .get(index + 1)
            .map_or(self.bytes.len(), |s| s.start as usize);
        &self.bytes[end..next]
    }
}

// === impl Segment ===

/// One segment of a [`Message`].
#[derive(Debug, Clone, Copy)]
pub struct Segment<'m, 'a> {
    msg: &'m Message<'a>,
    index: usize,
}

impl<'m, 'a> Segment<'m, 'a> {
    fn idx(&self) -> SegmentIndex {
        self.msg.segments[self.index]
    }

    /// The segment ID (`PID`), as written.
    pub fn id(&self) -> &'a [u8] {
        let ix = self.idx();
        let start = ix.start as usize;
        &self.msg.bytes[start..self.piece_end(0)]
    }

    /// Position of this segment among all segments (0-based).
    pub fn position(&self) -> usize {
        self.index
    }

    /// The whole segment without its terminator.
    pub fn as_bytes(&self) -> &'a [u8] {
        let ix = self.idx();
        &self.msg.bytes[ix.start as usize..ix.end as usize]
    }

    /// Byte offset of the segment in the input.
    pub fn offset(&self) -> usize {
        self.idx().start as usize
    }

    /// The segment terminator and any blank or stray lines after it.
    pub fn trailer(&self) -> &'a [u8] {
        self.msg.trailer_of(self.index)
    }

    fn is_msh(&self) -> bool {
        self.index == 0
    }

    /// Number of fields (the highest field number present).
    pub fn field_count(&self) -> usize {
        let pieces = self.idx().pieces as usize;
        // MSH-1 is the separator itself, so MSH has one more field than separated pieces - 1.
        if self.is_msh() { pieces } else { pieces - 1 }
    }

    fn piece_end(&self, piece: usize) -> usize {
        let ix = self.idx();
        if piece + 1 < ix.pieces as usize {
            // The next piece starts right after the separator that ends this one.
            self.msg.pieces[ix.first_piece as usize + piece + 1] as usize - 1
        } else {
            ix.end as usize
        }
    }

    fn piece(&self, piece: usize) -> Option<&'a [u8]> {
        let ix = self.idx();
        if piece >= ix.pieces as usize {
            return None;
        }
        let start = self.msg.pieces[ix.first_piece as usize + piece] as usize;
        Some(&self.msg.bytes[start..self.piece_end(piece)])
    }

    /// Field `n` (1-based). `MSH-1` is the field separator and `MSH-2` the encoding
    /// characters, both returned whole, as the standard numbers them.
    pub fn field(&self, n: usize) -> Value<'a> {
        let delimiters = self.msg.delimiters;
        if n == 0 {
            return Value::absent(delimiters);
        }
        if self.is_msh() {
            let start = self.idx().start as usize;
            return match n {
                1 => Value::new(
                    &self.msg.bytes[start + 3..start + 4],
                    delimiters,
                    Level::Leaf,
                ),
                2 => self.piece(1).map_or(Value::absent(delimiters), |b| {
                    Value::new(b, delimiters, Level::Leaf)
                }),
                n => self.piece(n - 1).map_or(Value::absent(delimiters), |b| {
                    Value::new(b, delimiters, Level::Field)
                }),
            };
        }
        self.piece(n).map_or(Value::absent(delimiters), |b| {
            Value::new(b, delimiters, Level::Field)
        })
    }

    /// Every field in order, from field 1.
    pub fn fields(&self) -> impl Iterator<Item = Value<'a>> + '_ {
        (1..=self.field_count()).map(move |n| self.field(n))
    }
}

// === impl Parser ===

struct Parser<'a> {
    bytes: &'a [u8],
    strict: bool,
    delimiters: Delimiters,
    /// Where MSH starts.
    start: usize,
    warnings: Vec<Warning>,
}

impl<'a> Parser<'a> {
    /// Finds MSH and reads the delimiters.
    fn new(bytes: &'a [u8], options: ParseOptions) -> Result<Self, ParseError> {
        if u32::try_from(bytes.len()).is_err() {
            return Err(ParseError::new(ParseErrorKind::TooLarge(bytes.len()), 0));
        }
        let strict = options.strict;
        let mut warnings = Vec::new();
        let mut pos = 0;
        if bytes.starts_with(BOM) {
            warnings.push(Warning {
                kind: WarningKind::ByteOrderMark,
                offset: 0,
            });
            pos = BOM.len();
        }
        let skipped = bytes[pos..].iter().take_while(|&&b| is_blank(b)).count();
        if skipped == bytes.len() - pos {
            return Err(ParseError::new(ParseErrorKind::Empty, pos));
        }
        if skipped > 0 {
            if strict {
                return Err(ParseError::new(ParseErrorKind::StrayBytes, pos));
            }
            warnings.push(Warning {
                kind: WarningKind::LeadingBytes(skipped),
                offset: pos,
            });
            pos += skipped;
        }
        let (delimiters, warning) = read_header(bytes, pos, b"MSH", strict)?;
        if let Some(kind) = warning {
            warnings.push(Warning {
                kind,
                offset: pos + 4,
            });
        }
        Ok(Parser {
            bytes,
            strict,
            delimiters,
            start: pos,
            warnings,
        })
    }

    fn run(mut self) -> Result<Message<'a>, ParseError> {
        let bytes = self.bytes;
        let fs = self.delimiters.field;
        // A rough guess that avoids most reallocations: one segment per 80 bytes, one field
        // per 8.
        let mut segments = Vec::with_capacity(bytes.len() / 80 + 1);
        let mut pieces: Vec<u32> = Vec::with_capacity(bytes.len() / 8 + 4);
        let mut seg_start = self.start;
        pieces.push(seg_start as u32);
        let mut first_piece = 0usize;
        let mut lf_seen = false;
        let mut crlf_seen = false;

        let mut hits = memchr::memchr3_iter(fs, b'\r', b'\n', &bytes[self.start..]);
        loop {
            let (end, next) = match hits.next() {
                Some(i) => {
                    let i = i + self.start;
                    let b = bytes[i];
                    if b == fs {
                        pieces.push((i + 1) as u32);
                        continue;
                    }
                    if b == b'\r' {
                        if bytes.get(i + 1) == Some(&b'\n') {
                            hits.next();
                            crlf_seen = true;
                            (i, i + 2)
                        } else {
                            (i, i + 1)
                        }
                    } else {
                        lf_seen = true;
                        (i, i + 1)
                    }
                }
                None => (bytes.len(), bytes.len()),
            };
            self.close_segment(seg_start, end, first_piece, &mut pieces, &mut segments)?;
            if next >= bytes.len() {
                break;
            }
            seg_start = next;
            first_piece = pieces.len();
            pieces.push(seg_start as u32);
        }

        if crlf_seen || lf_seen {
            let found = if crlf_seen { "CRLF" } else { "LF" };
            if self.strict {
                return Err(ParseError::new(
                    ParseErrorKind::NonStandardTerminator { found },
                    self.first_terminator_offset(),
                ));
            }
            self.warnings.push(Warning {
                kind: WarningKind::NonStandardTerminator(found),
                offset: self.first_terminator_offset(),
            });
        }
        let mut msg = Message {
            bytes,
            delimiters: self.delimiters,
            segments,
            pieces,
            warnings: self.warnings,
        };
        msg.check_required_header_fields();
        Ok(msg)
    }

    /// Records the line `[start, end)` as a segment, or drops it when it is blank or stray.
    fn close_segment(
        &mut self,
        start: usize,
        end: usize,
        first_piece: usize,
        pieces: &mut Vec<u32>,
        segments: &mut Vec<SegmentIndex>,
    ) -> Result<(), ParseError> {
        let count = pieces.len() - first_piece;
        let line = &self.bytes[start..end];
        if count == 1 && line.iter().all(|&b| is_blank(b)) {
            // A blank line (trailing empty segment) or stray bytes such as an MLLP start byte.
            pieces.truncate(first_piece);
            if !line.is_empty() {
                if self.strict {
                    return Err(ParseError::new(ParseErrorKind::StrayBytes, start));
                }
                self.warnings.push(Warning {
                    kind: WarningKind::StrayLine(line.len()),
                    offset: start,
                });
            }
            return Ok(());
        }
        let id_end = if count > 1 {
            pieces[first_piece + 1] as usize - 1
        } else {
            end
        };
        let id = &self.bytes[start..id_end];
        if !is_segment_id(id) {
            let found = String::from_utf8_lossy(id).into_owned();
            if self.strict {
                return Err(ParseError::new(
                    ParseErrorKind::InvalidSegmentId { found },
                    start,
                ));
            }
            self.warnings.push(Warning {
                kind: WarningKind::InvalidSegmentId(found),
                offset: start,
            });
        }
        if !segments.is_empty() && id == b"MSH" {
            if self.strict {
                return Err(ParseError::new(ParseErrorKind::SecondHeader, start));
            }
            self.warnings.push(Warning {
                kind: WarningKind::SecondHeader,
                offset: start,
            });
        }
        self.check_joined_segments(&pieces[first_piece + 1..]);
        segments.push(SegmentIndex {
            start: start as u32,
            end: end as u32,
            first_piece: first_piece as u32,
            pieces: count as u32,
        });
        Ok(())
    }

    /// Warns about fields that look like segments joined onto this line (` OBX|1|...`), a
    /// common result of editors rewrapping messages. One byte compared per field.
    fn check_joined_segments(&mut self, piece_starts: &[u32]) {
        let fs = self.delimiters.field;
        for &p in piece_starts {
            let p = p as usize;
            if self.bytes.get(p) == Some(&b' ')
                && let Some(candidate) = self.bytes.get(p + 1..p + 5)
                && candidate[3] == fs
                && is_segment_id(&candidate[..3])
            {
                let id = String::from_utf8_lossy(&candidate[..3]).into_owned();
                self.warnings.push(Warning {
                    kind: WarningKind::SuspectedJoinedSegment(id),
                    offset: p,
                });
            }
        }
    }

    fn first_terminator_offset(&self) -> usize {
        memchr::memchr2(b'\r', b'\n', &self.bytes[self.start..]).map_or(0, |i| i + self.start)
    }
}

/// Reads the delimiters of a header segment (`MSH`, `FHS` or `BHS`) starting at `pos`.
pub(crate) fn read_header(
    bytes: &[u8],
    pos: usize,
    id: &[u8],
    strict: bool,
) -> Result<(Delimiters, Option<WarningKind>), ParseError> {
    let rest = &bytes[pos..];
    if !rest.starts_with(id) {
        let found = String::from_utf8_lossy(&rest[..rest.len().min(8)]).into_owned();
        return Err(ParseError::new(ParseErrorKind::MissingMsh { found }, pos));
    }
    let Some(&field) = rest.get(3) else {
        return Err(ParseError::new(ParseErrorKind::TruncatedHeader, pos + 3));
    };
    if !field.is_ascii_graphic() || field.is_ascii_alphanumeric() {
        return Err(ParseError::new(
            ParseErrorKind::InvalidFieldSeparator(char::from(field)),
            pos + 3,
        ));
    }
    let enc_start = pos + 4;
    let enc_len = bytes[enc_start..]
        .iter()
        .position(|&b| b == field || b == b'\r' || b == b'\n')
        .unwrap_or(bytes.len() - enc_start);
    let enc = &bytes[enc_start..enc_start + enc_len];
    Delimiters::from_encoding_characters(field, enc, !strict)
        .map_err(|kind| ParseError::new(kind, enc_start))
}

/// Whitespace and control bytes: what stray lines and padding are made of.
fn is_blank(b: u8) -> bool {
    b <= b' ' || b == 0x7F
}

fn is_segment_id(id: &[u8]) -> bool {
    id.len() == 3
        && id
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Presence;

    const ADT: &[u8] = b"MSH|^~\\&|SEND|FAC|RECV|FAC2|20261127120000||ADT^A01^ADT_A01|MSG001|P|2.5.1\rEVN|A01|20261127\rPID|1||123^^^MRN~456^^^SSN||DOE^JOHN^^^^^L||19700101|M|||1 MAIN ST^^TOWN^ST^12345\rOBX|1|ST|A||one\rOBX|2|ST|B||two&half\rOBX|3|ST|C||\"\"\r";

    #[test]
    fn paths() {
        let m = Message::parse(ADT).unwrap();
        assert!(m.warnings().is_empty(), "{:?}", m.warnings());
        let get = |p: &str| {
            m.get(p)
                .unwrap()
                .as_bytes()
                .map(|b| String::from_utf8_lossy(b).into_owned())
        };
        assert_eq!(get("MSH-1").as_deref(), Some("|"));
        assert_eq!(get("MSH-2").as_deref(), Some("^~\\&"));
        assert_eq!(get("MSH-9").as_deref(), Some("ADT^A01^ADT_A01"));
        assert_eq!(get("MSH-9.2").as_deref(), Some("A01"));
        assert_eq!(get("MSH-10").as_deref(), Some("MSG001"));
        assert_eq!(get("PID-3").as_deref(), Some("123^^^MRN~456^^^SSN"));
        assert_eq!(get("PID-3[2].1").as_deref(), Some("456"));
        assert_eq!(get("PID-3.4").as_deref(), Some("MRN"));
        assert_eq!(get("PID-5.2").as_deref(), Some("JOHN"));
        assert_eq!(get("OBX[3]-5").as_deref(), Some("\"\""));
        assert_eq!(get("OBX[2]-5.1.2").as_deref(), Some("half"));
        assert_eq!(get("OBX[2]-5.1.3"), None);
        assert_eq!(m.get("OBX[3]-5").unwrap().presence(), Presence::Null);
        assert_eq!(m.get("PID-2").unwrap().presence(), Presence::Empty);
        assert_eq!(m.get("PID-40").unwrap().presence(), Presence::Absent);
        assert_eq!(m.get("ZZZ-1").unwrap().presence(), Presence::Absent);
        assert_eq!(m.get("OBX[4]-1").unwrap().presence(), Presence::Absent);
        assert_eq!(m.control_id(), Some(&b"MSG001"[..]));
        assert_eq!(m.header().field_count(), 12);
        assert_eq!(m.segment_count(), 6);
    }

    #[test]
    fn line_endings_lenient_and_strict() {
        let lf = b"MSH|^~\\&|A\nPID|1\n";
        let m = Message::parse(lf).unwrap();
        assert_eq!(m.segment_count(), 2);
        assert_eq!(
            m.warnings()[0].kind,
            WarningKind::NonStandardTerminator("LF")
        );
        let err = Message::parse_with(lf, ParseOptions::STRICT).unwrap_err();
        assert_eq!(
            err.kind,
            ParseErrorKind::NonStandardTerminator { found: "LF" }
        );
        assert_eq!(err.offset, 10);

        let crlf = b"MSH|^~\\&|A\r\nPID|1\r\n\r\n";
        let m = Message::parse(crlf).unwrap();
        assert_eq!(m.segment_count(), 2);
        assert_eq!(m.get("PID-1").unwrap().as_bytes(), Some(&b"1"[..]));
        assert!(Message::parse_with(crlf, ParseOptions::STRICT).is_err());
    }

    #[test]
    fn tolerated_oddities() {
        // BOM, no final terminator, trailing delimiters, blank lines and a stray VT line.
        let m = Message::parse(b"\xEF\xBB\xBFMSH|^~\\&|A||\r\rPID|1|||\r\x0b\r").unwrap();
        assert_eq!(m.segment_count(), 2);
        assert_eq!(m.prefix(), BOM);
        assert_eq!(m.get("PID-4").unwrap().presence(), Presence::Empty);
        assert_eq!(m.get("PID-5").unwrap().presence(), Presence::Absent);
        let kinds: Vec<_> = m.warnings().iter().map(|w| w.kind.clone()).collect();
        assert!(kinds.contains(&WarningKind::ByteOrderMark));
        assert!(kinds.contains(&WarningKind::StrayLine(1)));
    }

    #[test]
    fn errors_carry_offsets() {
        let e = Message::parse(b"  PID|1\r").unwrap_err();
        assert!(matches!(e.kind, ParseErrorKind::MissingMsh { .. }));
        assert_eq!(e.offset, 2);
        assert_eq!(
            Message::parse(b"\r\n\x00").unwrap_err().kind,
            ParseErrorKind::Empty
        );
        assert_eq!(
            Message::parse(b"MSH").unwrap_err().kind,
            ParseErrorKind::TruncatedHeader
        );
        let e = Message::parse(b"MSHA^~\\&").unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::InvalidFieldSeparator('A'));
        let e = Message::parse(b"MSH|^&&^|x").unwrap_err();
        assert!(matches!(
            e.kind,
            ParseErrorKind::InvalidEncodingCharacters { .. }
        ));
        assert_eq!(e.offset, 4);
    }

    #[test]
    fn custom_delimiters() {
        let m = Message::parse(b"MSH^~|\\&^A^B^C^D^20261127^^ADT~A24^1^P^2.4\rPID^^^1~MRN|2~MRN\r")
            .unwrap();
        assert_eq!(m.get("MSH-9.2").unwrap().as_bytes(), Some(&b"A24"[..]));
        assert_eq!(m.get("PID-3[2].1").unwrap().as_bytes(), Some(&b"2"[..]));
    }

    #[test]
    fn msh_only_without_terminator() {
        let m = Message::parse(b"MSH|^~\\&").unwrap();
        assert_eq!(m.segment_count(), 1);
        assert_eq!(m.get("MSH-2").unwrap().as_bytes(), Some(&b"^~\\&"[..]));
        assert!(m.get("MSH-3").unwrap().is_absent());
    }
}

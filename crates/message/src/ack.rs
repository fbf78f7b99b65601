//! Acknowledgements: building the reply to a message, and reading the reply to ours.
//!
//! Original mode answers AA/AE/AR. Enhanced mode (MSH-15 or MSH-16 valued) answers an accept
//! acknowledgement CA/CE/CR when MSH-15 asks for one, and an application acknowledgement
//! AA/AE/AR when MSH-16 does; [`AckMode`] says which are due for an outcome.
//!
//! The reply swaps MSH-3/4 with MSH-5/6, copies MSH-11, MSH-12 and MSH-18, sets MSH-9 to
//! `ACK^<trigger>^ACK` (the trigger omitted when the original has none; the third component
//! only from v2.3.1 on, when it exists), takes a fresh MSH-10 and MSH-7 from the caller (this
//! crate reads no clock), and MSA-2 is the original MSH-10. Errors go in an ERR segment in the
//! form of the message's version: ERR-2 location, ERR-3 HL70357 code, ERR-4 severity and ERR-8
//! text from v2.5 on; ERR-1 before. When the version is unknown both forms are written.

use crate::build::MessageBuf;
use crate::delim::Delimiters;
use crate::error::{ParseError, ParseErrorKind};
use crate::message::Message;

/// MSA-1 acknowledgement codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum AckCode {
    /// Original mode: application accept.
    AA,
    /// Original mode: application error.
    AE,
    /// Original mode: application reject.
    AR,
    /// Enhanced mode: commit accept.
    CA,
    /// Enhanced mode: commit error.
    CE,
    /// Enhanced mode: commit reject.
    CR,
}

impl AckCode {
    /// Reads an MSA-1 value.
    pub fn from_bytes(b: &[u8]) -> Option<AckCode> {
        Some(match b {
            b"AA" => AckCode::AA,
            b"AE" => AckCode::AE,
            b"AR" => AckCode::AR,
            b"CA" => AckCode::CA,
            b"CE" => AckCode::CE,
            b"CR" => AckCode::CR,
            _ => return None,
        })
    }

    /// The two letters.
    pub fn as_str(&self) -> &'static str {
        match self {
            AckCode::AA => "AA",
            AckCode::AE => "AE",
            AckCode::AR => "AR",
            AckCode::CA => "CA",
            AckCode::CE => "CE",
            AckCode::CR => "CR",
        }
    }

    /// The outcome this code reports.
    pub fn outcome(&self) -> Outcome {
        match self {
            AckCode::AA | AckCode::CA => Outcome::Accept,
            AckCode::AE | AckCode::CE => Outcome::Error,
            AckCode::AR | AckCode::CR => Outcome::Reject,
        }
    }

    /// AA or CA.
    pub fn is_accept(&self) -> bool {
        self.outcome() == Outcome::Accept
    }

    /// AE or CE.
    pub fn is_error(&self) -> bool {
        self.outcome() == Outcome::Error
    }

    /// AR or CR.
    pub fn is_reject(&self) -> bool {
        self.outcome() == Outcome::Reject
    }
}

impl std::fmt::Display for AckCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to a message, independent of the acknowledgement mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Accepted (AA/CA).
    Accept,
    /// Failed in a way a retry may fix (AE/CE).
    Error,
    /// Refused: resending the same message will not help (AR/CR).
    Reject,
}

/// MSH-15/MSH-16 conditions (HL7 table 0155).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCondition {
    /// AL: always.
    Always,
    /// NE: never.
    Never,
    /// ER: only on error or reject.
    OnError,
    /// SU: only on success.
    OnSuccess,
}

impl AckCondition {
    fn read(b: &[u8]) -> Option<AckCondition> {
        Some(match b {
            b"AL" => AckCondition::Always,
            b"NE" => AckCondition::Never,
            b"ER" => AckCondition::OnError,
            b"SU" => AckCondition::OnSuccess,
            _ => return None,
        })
    }

    /// Whether an acknowledgement is due for `outcome`.
    pub fn applies(&self, outcome: Outcome) -> bool {
        match self {
            AckCondition::Always => true,
            AckCondition::Never => false,
            AckCondition::OnError => outcome != Outcome::Accept,
            AckCondition::OnSuccess => outcome == Outcome::Accept,
        }
    }
}

/// Which acknowledgements a message asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// MSH-15 and MSH-16 empty: one AA/AE/AR reply.
    Original,
    /// MSH-15 or MSH-16 valued.
    Enhanced {
        /// MSH-15: when a CA/CE/CR accept acknowledgement is due. An empty or unknown MSH-15
        /// reads as AL (always), so a sender that asked only for application acks still
        /// learns that its message was committed.
        accept: AckCondition,
        /// MSH-16: when an AA/AE/AR application acknowledgement is due (empty reads as NE).
        application: AckCondition,
    },
}

impl AckMode {
    /// The mode `msg` asks for.
    pub fn of(msg: &Message<'_>) -> AckMode {
        let header = msg.header();
        let accept = header.field(15).as_bytes().unwrap_or_default();
        let application = header.field(16).as_bytes().unwrap_or_default();
        if accept.is_empty() && application.is_empty() {
            return AckMode::Original;
        }
        AckMode::Enhanced {
            accept: AckCondition::read(accept).unwrap_or(AckCondition::Always),
            application: AckCondition::read(application).unwrap_or(AckCondition::Never),
        }
    }

    /// The code of the acknowledgement a receiver sends on commit: AA/AE/AR in original mode,
    /// CA/CE/CR in enhanced mode.
    pub fn commit_code(&self, outcome: Outcome) -> AckCode {
        match (self, outcome) {
            (AckMode::Original, Outcome::Accept) => AckCode::AA,
            (AckMode::Original, Outcome::Error) => AckCode::AE,
            (AckMode::Original, Outcome::Reject) => AckCode::AR,
            (AckMode::Enhanced { .. }, Outcome::Accept) => AckCode::CA,
            (AckMode::Enhanced { .. }, Outcome::Error) => AckCode::CE,
            (AckMode::Enhanced { .. }, Outcome::Reject) => AckCode::CR,
        }
    }

    /// Whether the commit acknowledgement is due for `outcome` (always in original mode).
    pub fn commit_ack_due(&self, outcome: Outcome) -> bool {
        match self {
            AckMode::Original => true,
            AckMode::Enhanced { accept, .. } => accept.applies(outcome),
        }
    }
}

/// HL7 table 0357 message error condition codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 0: message accepted.
    Accepted,
    /// 100: segment sequence error.
    SegmentSequence,
    /// 101: required field missing.
    RequiredFieldMissing,
    /// 102: data type error.
    DataType,
    /// 103: table value not found.
    TableValueNotFound,
    /// 104: value too long.
    ValueTooLong,
    /// 200: unsupported message type.
    UnsupportedMessageType,
    /// 201: unsupported event code.
    UnsupportedEventCode,
    /// 202: unsupported processing ID.
    UnsupportedProcessingId,
    /// 203: unsupported version ID.
    UnsupportedVersionId,
    /// 204: unknown key identifier.
    UnknownKey,
    /// 205: duplicate key identifier.
    DuplicateKey,
    /// 206: application record locked.
    RecordLocked,
    /// 207: application internal error.
    ApplicationInternal,
}

impl ErrorCode {
    /// The numeric code and its table text.
    pub fn code_and_text(&self) -> (&'static str, &'static str) {
        match self {
            ErrorCode::Accepted => ("0", "Message accepted"),
            ErrorCode::SegmentSequence => ("100", "Segment sequence error"),
            ErrorCode::RequiredFieldMissing => ("101", "Required field missing"),
            ErrorCode::DataType => ("102", "Data type error"),
            ErrorCode::TableValueNotFound => ("103", "Table value not found"),
            ErrorCode::ValueTooLong => ("104", "Value too long"),
            ErrorCode::UnsupportedMessageType => ("200", "Unsupported message type"),
            ErrorCode::UnsupportedEventCode => ("201", "Unsupported event code"),
            ErrorCode::UnsupportedProcessingId => ("202", "Unsupported processing id"),
            ErrorCode::UnsupportedVersionId => ("203", "Unsupported version id"),
            ErrorCode::UnknownKey => ("204", "Unknown key identifier"),
            ErrorCode::DuplicateKey => ("205", "Duplicate key identifier"),
            ErrorCode::RecordLocked => ("206", "Application record locked"),
            ErrorCode::ApplicationInternal => ("207", "Application internal error"),
        }
    }

    /// The code that best describes a parse error.
    pub fn for_parse_error(error: &ParseError) -> ErrorCode {
        match error.kind {
            ParseErrorKind::Empty
            | ParseErrorKind::MissingMsh { .. }
            | ParseErrorKind::TruncatedHeader => ErrorCode::SegmentSequence,
            ParseErrorKind::TooLarge(_) => ErrorCode::ValueTooLong,
            _ => ErrorCode::DataType,
        }
    }
}

/// ERR-4 severity (HL7 table 0516).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// E: error.
    Error,
    /// W: warning.
    Warning,
    /// I: information.
    Information,
    /// F: fatal error.
    Fatal,
}

impl Severity {
    fn as_str(&self) -> &'static str {
        match self {
            Severity::Error => "E",
            Severity::Warning => "W",
            Severity::Information => "I",
            Severity::Fatal => "F",
        }
    }
}

/// Where an error is (ERR-2, an ERL).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorLocation {
    /// Segment ID.
    pub segment: String,
    /// Segment occurrence (1-based).
    pub occurrence: Option<usize>,
    /// Field position.
    pub field: Option<usize>,
    /// Field repetition.
    pub repetition: Option<usize>,
    /// Component.
    pub component: Option<usize>,
    /// Subcomponent.
    pub subcomponent: Option<usize>,
}

/// One error to report in an ERR segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorDetail {
    /// The HL70357 code.
    pub code: ErrorCode,
    /// ERR-4.
    pub severity: Severity,
    /// ERR-2.
    pub location: Option<ErrorLocation>,
    /// Free text for a person (ERR-8, or ELD's text before v2.5).
    pub text: Option<String>,
}

impl ErrorDetail {
    /// An error of severity E with a text.
    pub fn new(code: ErrorCode, text: impl Into<String>) -> Self {
        ErrorDetail {
            code,
            severity: Severity::Error,
            location: None,
            text: Some(text.into()),
        }
    }
}

/// What is known of the message being answered.
#[derive(Debug, Clone, Default)]
struct Original {
    delimiters: Delimiters,
    /// Raw MSH fields by number; absent ones empty.
    sending_app: Vec<u8>,
    sending_facility: Vec<u8>,
    receiving_app: Vec<u8>,
    receiving_facility: Vec<u8>,
    trigger: Vec<u8>,
    control_id: Vec<u8>,
    processing_id: Vec<u8>,
    version: Vec<u8>,
    charset: Vec<u8>,
    mode: Option<AckMode>,
}

/// A reply being built. See the module documentation for what it copies.
///
/// ```
/// use causeway_message::{Message, ack::{Ack, Outcome}};
/// let msg = Message::parse(b"MSH|^~\\&|LAB|H|EHR|H|20261127||ORU^R01|42|P|2.5\rPID|1\r")?;
/// let ack = Ack::for_message(&msg, Outcome::Accept).control_id("CW1").timestamp("20261127120000").encode();
/// assert_eq!(ack, b"MSH|^~\\&|EHR|H|LAB|H|20261127120000||ACK^R01^ACK|CW1|P|2.5\rMSA|AA|42\r");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Ack {
    original: Original,
    code: AckCode,
    text: Option<String>,
    errors: Vec<ErrorDetail>,
    control_id: String,
    timestamp: String,
}

impl Ack {
    /// The commit acknowledgement for `msg`: AA/AE/AR in original mode, CA/CE/CR in
    /// enhanced mode. Use [`Ack::code`] for an application acknowledgement in enhanced mode.
    pub fn for_message(msg: &Message<'_>, outcome: Outcome) -> Ack {
        let h = msg.header();
        let field = |n| h.field(n).as_bytes().unwrap_or_default().to_vec();
        let mode = AckMode::of(msg);
        let original = Original {
            delimiters: msg.delimiters(),
            sending_app: field(3),
            sending_facility: field(4),
            receiving_app: field(5),
            receiving_facility: field(6),
            trigger: h
                .field(9)
                .component(2)
                .as_bytes()
                .unwrap_or_default()
                .to_vec(),
            control_id: field(10),
            processing_id: field(11),
            version: field(12),
            charset: field(18),
            mode: Some(mode),
        };
        Ack::new(original, mode.commit_code(outcome))
    }

    /// An AR (or CR, when the header that could be recovered asks for enhanced mode) for
    /// bytes that are not a valid message, with an ERR saying why. Whatever MSH fields can be
    /// recovered are used; otherwise the reply has standard delimiters and empty fields.
    pub fn for_unparseable(bytes: &[u8], reason: &str) -> Ack {
        let original = recover_header(bytes);
        let code = original
            .mode
            .unwrap_or(AckMode::Original)
            .commit_code(Outcome::Reject);
        Ack::new(original, code).error(ErrorCode::SegmentSequence, reason)
    }

    /// [`Ack::for_unparseable`] with another HL70357 code than 100 (segment sequence), e.g.
    /// 104 for a frame over the size limit.
    pub fn for_unparseable_with(bytes: &[u8], code: ErrorCode, reason: &str) -> Ack {
        let mut ack = Ack::for_unparseable(bytes, reason);
        ack.errors[0].code = code;
        ack
    }

    /// [`Ack::for_unparseable`] with the code and text from a parse error.
    pub fn for_parse_error(bytes: &[u8], error: &ParseError) -> Ack {
        let mut ack = Ack::for_unparseable(bytes, &error.to_string());
        ack.errors[0].code = ErrorCode::for_parse_error(error);
        ack
    }

    fn new(original: Original, code: AckCode) -> Ack {
        Ack {
            original,
            code,
            text: None,
            errors: Vec::new(),
            control_id: String::new(),
            timestamp: String::new(),
        }
    }

    /// Overrides MSA-1.
    pub fn code(mut self, code: AckCode) -> Ack {
        self.code = code;
        self
    }

    /// MSA-3, a text message (escaped on output).
    pub fn text(mut self, text: impl Into<String>) -> Ack {
        self.text = Some(text.into());
        self
    }

    /// Adds an ERR segment with severity E.
    pub fn error(mut self, code: ErrorCode, text: impl Into<String>) -> Ack {
        self.errors.push(ErrorDetail::new(code, text));
        self
    }

    /// Adds an ERR segment.
    pub fn error_detail(mut self, detail: ErrorDetail) -> Ack {
        self.errors.push(detail);
        self
    }

    /// MSH-10 of the reply: must be unique, the caller makes it.
    pub fn control_id(mut self, id: impl Into<String>) -> Ack {
        self.control_id = id.into();
        self
    }

    /// MSH-7 of the reply, an HL7 DTM such as `20261127120000+0000`.
    pub fn timestamp(mut self, ts: impl Into<String>) -> Ack {
        self.timestamp = ts.into();
        self
    }

    /// The MSA-1 code this reply carries.
    pub fn ack_code(&self) -> AckCode {
        self.code
    }

    /// The reply as an editable message.
    pub fn build(&self) -> MessageBuf {
        let mut m = MessageBuf::new(self.original.delimiters);
        self.write_to(&mut m);
        m
    }

    /// The reply's bytes, segments terminated by CR. Written straight into one buffer: this
    /// runs for every message a listener acknowledges.
    pub fn encode(&self) -> Vec<u8> {
        let d = self.original.delimiters;
        let mut sink = BytesSink {
            out: Vec::with_capacity(256),
            field: d.field,
            piece: 1,
        };
        sink.out.extend_from_slice(b"MSH");
        sink.out.push(d.field);
        sink.out.extend_from_slice(&d.encoding_characters());
        self.write_to(&mut sink);
        sink.out.push(b'\r');
        sink.out
    }

    /// Writes the reply's pieces after `MSH|^~\&` into `sink`, in increasing order.
    fn write_to(&self, sink: &mut impl AckSink) {
        let o = &self.original;
        let d = o.delimiters;
        let esc = |s: &str| crate::escape::escape(s.as_bytes(), &d).into_owned();
        let version = parse_version(&o.version);
        // MSH-n is piece n-1 of the MSH segment (MSH-1 is the separator itself).
        let mut msh9 = b"ACK".to_vec();
        if !o.trigger.is_empty() {
            msh9.push(d.component);
            msh9.extend_from_slice(&o.trigger);
            if version.is_none_or(|v| v >= (2, 3, 1)) {
                msh9.push(d.component);
                msh9.extend_from_slice(b"ACK");
            }
        }
        sink.piece(2, &o.receiving_app);
        sink.piece(3, &o.receiving_facility);
        sink.piece(4, &o.sending_app);
        sink.piece(5, &o.sending_facility);
        sink.piece(6, &esc(&self.timestamp));
        sink.piece(8, &msh9);
        sink.piece(9, &esc(&self.control_id));
        sink.piece(10, &o.processing_id);
        sink.piece(11, &o.version);
        if matches!(o.mode, Some(AckMode::Enhanced { .. })) {
            // Nobody acknowledges an acknowledgement.
            sink.piece(14, b"NE");
            sink.piece(15, b"NE");
        }
        if !o.charset.is_empty() {
            sink.piece(17, &o.charset);
        }
        sink.segment("MSA");
        sink.piece(1, self.code.as_str().as_bytes());
        sink.piece(2, &o.control_id);
        if let Some(text) = &self.text {
            sink.piece(3, &esc(text));
        }
        for e in &self.errors {
            sink.segment("ERR");
            let (code, code_text) = e.code.code_and_text();
            let sub = d.subcomponent.unwrap_or(d.component);
            let text = e.text.as_deref().map(esc).unwrap_or_default();
            let loc = e.location.clone().unwrap_or_default();
            let new_form = version.is_none_or(|v| v >= (2, 5, 0));
            let old_form = version.is_none_or(|v| v < (2, 5, 0));
            if old_form {
                // ERR-1 (ELD): segment ^ sequence ^ field ^ code&text&HL70357.
                let mut eld = esc(&loc.segment);
                for n in [loc.occurrence, loc.field] {
                    eld.push(d.component);
                    eld.extend(n.map(|n| n.to_string().into_bytes()).unwrap_or_default());
                }
                eld.push(d.component);
                eld.extend_from_slice(code.as_bytes());
                eld.push(sub);
                eld.extend_from_slice(if text.is_empty() {
                    code_text.as_bytes()
                } else {
                    &text
                });
                eld.push(sub);
                eld.extend_from_slice(b"HL70357");
                sink.piece(1, &eld);
            }
            if new_form {
                if e.location.is_some() {
                    let mut erl = esc(&loc.segment);
                    for n in [
                        loc.occurrence,
                        loc.field,
                        loc.repetition,
                        loc.component,
                        loc.subcomponent,
                    ] {
                        erl.push(d.component);
                        erl.extend(n.map(|n| n.to_string().into_bytes()).unwrap_or_default());
                    }
                    while erl.last() == Some(&d.component) {
                        erl.pop();
                    }
                    sink.piece(2, &erl);
                }
                let mut cwe = code.as_bytes().to_vec();
                cwe.push(d.component);
                cwe.extend_from_slice(code_text.as_bytes());
                cwe.push(d.component);
                cwe.extend_from_slice(b"HL70357");
                sink.piece(3, &cwe);
                sink.piece(4, e.severity.as_str().as_bytes());
                if !text.is_empty() {
                    sink.piece(8, &text);
                }
            }
        }
    }
}

/// Where [`Ack::write_to`] writes: a [`MessageBuf`] or straight into bytes. Pieces are
/// numbered as [`crate::SegmentBuf::field`] numbers them (MSH-n is piece n-1).
trait AckSink {
    /// Ends the current segment and starts segment `id`.
    fn segment(&mut self, id: &str);
    /// Sets piece `n` (already escaped) of the current segment.
    fn piece(&mut self, n: usize, raw: &[u8]);
}

impl AckSink for MessageBuf {
    fn segment(&mut self, id: &str) {
        self.push_segment(id);
    }

    fn piece(&mut self, n: usize, raw: &[u8]) {
        self.last_segment_mut().field(n, raw);
    }
}

/// Bytes written in order; `piece` is the number of the piece being written.
struct BytesSink {
    out: Vec<u8>,
    field: u8,
    piece: usize,
}

impl AckSink for BytesSink {
    fn segment(&mut self, id: &str) {
        self.out.push(b'\r');
        self.out.extend_from_slice(id.as_bytes());
        self.piece = 0;
    }

    fn piece(&mut self, n: usize, raw: &[u8]) {
        // Pieces come in increasing order; skipped ones are empty.
        while self.piece < n {
            self.out.push(self.field);
            self.piece += 1;
        }
        self.out.extend_from_slice(raw);
    }
}

/// `2.5.1` to (2, 5, 1); `None` when it does not start with a number.
fn parse_version(v: &[u8]) -> Option<(u32, u32, u32)> {
    let text = std::str::from_utf8(v).ok()?;
    let mut parts = text.split('.').map(|p| p.trim().parse::<u32>());
    let major = parts.next()?.ok()?;
    let minor = parts.next().and_then(Result::ok).unwrap_or(0);
    let patch = parts.next().and_then(Result::ok).unwrap_or(0);
    Some((major, minor, patch))
}

/// Salvages MSH fields from bytes the parser refused.
fn recover_header(bytes: &[u8]) -> Original {
    let Some(start) = memchr::memmem::find(bytes, b"MSH") else {
        return Original::default();
    };
    let line_end =
        memchr::memchr2(b'\r', b'\n', &bytes[start..]).map_or(bytes.len(), |i| start + i);
    let line = &bytes[start..line_end];
    // `source`: the delimiters the fields are written with, when MSH-2 could be read.
    let (fs, source) = match crate::message::read_header(bytes, start, b"MSH", false) {
        Ok((d, _)) => (d.field, Some(d)),
        // The field separator may still be usable when only MSH-2 is broken.
        Err(_) => match line.get(3) {
            Some(&fs) if fs.is_ascii_punctuation() => (fs, None),
            _ => return Original::default(),
        },
    };
    let pieces: Vec<&[u8]> = line.split(|&b| b == fs).collect();
    // MSH-n is piece n-1; a value holding a CR/LF or other control bytes is not copied.
    let field = |n: usize| {
        pieces
            .get(n - 1)
            .filter(|p| p.iter().all(|b| !b.is_ascii_control()))
            .map(|p| p.to_vec())
            .unwrap_or_default()
    };
    // The reply keeps the sender's delimiters when they are complete, else uses standard ones.
    let d = source
        .filter(|d| d.escape.is_some() && d.repetition.is_some())
        .unwrap_or(Delimiters::STANDARD);
    let same = source == Some(d);
    let component = source.map_or(b'^', |s| s.component);
    let msh9 = field(9);
    let trigger = msh9
        .split(|&b| b == component)
        .nth(1)
        .unwrap_or_default()
        .to_vec();
    let accept = field(15);
    let application = field(16);
    let mode = (!accept.is_empty() || !application.is_empty()).then_some(AckMode::Enhanced {
        accept: AckCondition::read(&accept).unwrap_or(AckCondition::Always),
        application: AckCondition::read(&application).unwrap_or(AckCondition::Never),
    });
    // Fields written with other delimiters than the reply's are dropped, not mangled.
    let keep = |v: Vec<u8>| {
        if same || !v.iter().any(|&b| d.is_special(b)) {
            v
        } else {
            Vec::new()
        }
    };
    Original {
        delimiters: d,
        sending_app: keep(field(3)),
        sending_facility: keep(field(4)),
        receiving_app: keep(field(5)),
        receiving_facility: keep(field(6)),
        trigger: keep(trigger),
        control_id: keep(field(10)),
        processing_id: keep(field(11)),
        version: keep(field(12)),
        charset: keep(field(18)),
        mode,
    }
}

// === impl AckReply ===

/// A reply read back: what a sender checks after sending a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckReply {
    /// MSA-1.
    pub code: AckCode,
    /// MSA-2: the control ID of the message this acknowledges.
    pub acked_control_id: Vec<u8>,
    /// MSH-10 of the reply itself.
    pub control_id: Vec<u8>,
    /// MSA-3, unescaped and decoded lossily, if present.
    pub text: Option<String>,
    /// ERR-3.1/ERR-3.2 (or ERR-1.4 before v2.5) and ERR-8 of the first ERR, if any.
    pub error: Option<ReplyError>,
}

/// The first ERR of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyError {
    /// The HL70357 (or local) code, as written.
    pub code: String,
    /// The text for a person: ERR-8, else the code's text.
    pub text: String,
}

/// Why a reply is not a usable acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AckReplyError {
    /// The reply is not a parsable message.
    #[error("reply is not an HL7 message: {0}")]
    Parse(#[from] ParseError),
    /// The reply has no MSA segment.
    #[error("reply has no MSA segment")]
    MissingMsa,
    /// MSA-1 is not one of AA/AE/AR/CA/CE/CR.
    #[error("reply has an unknown MSA-1 code {0:?}")]
    UnknownCode(String),
}

impl AckReply {
    /// Reads a reply.
    pub fn parse(bytes: &[u8]) -> Result<AckReply, AckReplyError> {
        let msg = Message::parse(bytes)?;
        let msa = msg.segment("MSA", 1).ok_or(AckReplyError::MissingMsa)?;
        let code_raw = msa.field(1).as_bytes().unwrap_or_default();
        let code = AckCode::from_bytes(code_raw).ok_or_else(|| {
            AckReplyError::UnknownCode(String::from_utf8_lossy(code_raw).into_owned())
        })?;
        let lossy = |v: crate::Value<'_>| String::from_utf8_lossy(&v.unescaped()).into_owned();
        let text = Some(msa.field(3)).filter(|v| !v.is_empty()).map(lossy);
        let error = msg.segment("ERR", 1).map(|err| {
            let (code, code_text) = if err.field(3).is_empty() {
                (
                    err.field(1).component(4).subcomponent(1),
                    err.field(1).component(4).subcomponent(2),
                )
            } else {
                (err.field(3).component(1), err.field(3).component(2))
            };
            let user = err.field(8);
            ReplyError {
                code: lossy(code),
                text: if user.is_empty() {
                    lossy(code_text)
                } else {
                    lossy(user)
                },
            }
        });
        Ok(AckReply {
            code,
            acked_control_id: msa.field(2).as_bytes().unwrap_or_default().to_vec(),
            control_id: msg.control_id().unwrap_or_default().to_vec(),
            text,
            error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack_of(input: &[u8], outcome: Outcome) -> Ack {
        let msg = Message::parse(input).unwrap();
        Ack::for_message(&msg, outcome)
            .control_id("ACK1")
            .timestamp("20261127120000")
    }

    #[test]
    fn original_mode_reply_swaps_and_copies() {
        let bytes = ack_of(
            b"MSH|^~\\&|SA|SF|RA|RF|2020||ADT^A01^ADT_A01|C1|P|2.5.1||||||UNICODE UTF-8\r",
            Outcome::Accept,
        )
        .encode();
        assert_eq!(bytes, b"MSH|^~\\&|RA|RF|SA|SF|20261127120000||ACK^A01^ACK|ACK1|P|2.5.1||||||UNICODE UTF-8\rMSA|AA|C1\r".to_vec());
    }

    #[test]
    fn enhanced_mode_codes_and_conditions() {
        let msg = Message::parse(b"MSH|^~\\&|A|B|C|D|2020||ORU^R01|C2|P|2.6|||ER|AL\r").unwrap();
        let mode = AckMode::of(&msg);
        assert!(!mode.commit_ack_due(Outcome::Accept));
        assert!(mode.commit_ack_due(Outcome::Error));
        assert_eq!(mode.commit_code(Outcome::Error), AckCode::CE);
        let reply = AckReply::parse(&Ack::for_message(&msg, Outcome::Error).encode()).unwrap();
        assert_eq!(reply.code, AckCode::CE);
        // Only MSH-16 valued still means enhanced mode, accept acks always.
        let msg = Message::parse(b"MSH|^~\\&|A|B|C|D|2020||ORU^R01|C2|P|2.6||||ER\r").unwrap();
        assert_eq!(
            AckMode::of(&msg),
            AckMode::Enhanced {
                accept: AckCondition::Always,
                application: AckCondition::OnError
            }
        );
    }

    #[test]
    fn msh9_follows_the_original() {
        let one = ack_of(b"MSH|^~\\&|A|B|C|D|2020||ADT|C3|P|2.1\r", Outcome::Accept).build();
        let m = one.encode();
        let msg = Message::parse(&m).unwrap();
        assert_eq!(msg.get("MSH-9").unwrap().as_bytes(), Some(&b"ACK"[..]));
        let old = ack_of(
            b"MSH|^~\\&|A|B|C|D|2020||ADT^A01|C3|P|2.2\r",
            Outcome::Accept,
        )
        .encode();
        assert_eq!(
            Message::parse(&old)
                .unwrap()
                .get("MSH-9")
                .unwrap()
                .as_bytes(),
            Some(&b"ACK^A01"[..])
        );
    }

    #[test]
    fn err_segment_by_version() {
        let new = ack_of(
            b"MSH|^~\\&|A|B|C|D|2020||ADT^A01|C4|P|2.5\r",
            Outcome::Error,
        )
        .error_detail(ErrorDetail {
            code: ErrorCode::RequiredFieldMissing,
            severity: Severity::Error,
            location: Some(ErrorLocation {
                segment: "PID".into(),
                occurrence: Some(1),
                field: Some(3),
                ..Default::default()
            }),
            text: Some("PID-3 | missing".into()),
        })
        .encode();
        let text = String::from_utf8(new.clone()).unwrap();
        assert!(
            text.contains(
                "\rERR||PID^1^3|101^Required field missing^HL70357|E||||PID-3 \\F\\ missing\r"
            ),
            "{text}"
        );
        let reply = AckReply::parse(&new).unwrap();
        assert_eq!(
            reply.error,
            Some(ReplyError {
                code: "101".into(),
                text: "PID-3 | missing".into()
            })
        );

        let old = ack_of(
            b"MSH|^~\\&|A|B|C|D|2020||ADT^A01|C4|P|2.3\r",
            Outcome::Reject,
        )
        .error(ErrorCode::UnsupportedMessageType, "no")
        .encode();
        let text = String::from_utf8(old.clone()).unwrap();
        assert!(text.contains("\rERR|^^^200&no&HL70357\r"), "{text}");
        assert_eq!(AckReply::parse(&old).unwrap().error.unwrap().code, "200");
    }

    #[test]
    fn nak_for_garbage() {
        let nak = Ack::for_unparseable(b"GET / HTTP/1.1\r\n", "not HL7")
            .control_id("N1")
            .timestamp("2026")
            .encode();
        let reply = AckReply::parse(&nak).unwrap();
        assert_eq!(reply.code, AckCode::AR);
        assert!(reply.acked_control_id.is_empty());
        assert_eq!(reply.error.unwrap().text, "not HL7");
        // Broken MSH-2 but a readable field separator: the control id is recovered.
        let bytes = b"MSH|^&&^|APP|FAC|||2020||ADT^A01|CTL9|P|2.6\rPID|1\r";
        let err = Message::parse(bytes).unwrap_err();
        let nak = Ack::for_parse_error(bytes, &err)
            .control_id("N2")
            .timestamp("2026")
            .encode();
        let reply = AckReply::parse(&nak).unwrap();
        assert_eq!(reply.acked_control_id, b"CTL9");
        assert_eq!(reply.error.unwrap().code, "102");
        let m = Message::parse(&nak).unwrap();
        assert_eq!(m.get("MSH-5").unwrap().as_bytes(), Some(&b"APP"[..]));
    }

    #[test]
    fn nak_for_header_whose_separator_collides_with_standard_ones() {
        // Found by fuzzing: field separator `^` and an unreadable MSH-2.
        let bytes = b"MSH^|~\\}|RAD\xe7IO^ACK^|x^^^CTL^P\n";
        let err = Message::parse(bytes).unwrap_err();
        let nak = Ack::for_parse_error(bytes, &err)
            .control_id("N3")
            .timestamp("2026")
            .encode();
        assert!(AckReply::parse(&nak).is_ok());
    }

    #[test]
    fn direct_encoding_equals_the_built_message() {
        for (input, version_err) in [
            (
                &b"MSH|^~\\&|A|B|C|D|2020||ADT^A01|C4|P|2.5|||AL|NE||UNICODE UTF-8\r"[..],
                true,
            ),
            (&b"MSH|^~\\&|A|B|C|D|2020||ADT|C5|P|2.2\r"[..], true),
            (&b"MSH|^~\\&|||||||||\r"[..], false),
        ] {
            let msg = Message::parse(input).unwrap();
            let mut ack = Ack::for_message(&msg, Outcome::Error)
                .control_id("X|1")
                .timestamp("2026")
                .text("a^b");
            if version_err {
                ack = ack.error_detail(ErrorDetail {
                    code: ErrorCode::DataType,
                    severity: Severity::Warning,
                    location: Some(ErrorLocation {
                        segment: "PID".into(),
                        field: Some(3),
                        ..Default::default()
                    }),
                    text: Some("t&t".into()),
                });
            }
            assert_eq!(ack.encode(), ack.build().encode());
            assert!(AckReply::parse(&ack.encode()).is_ok());
        }
    }

    #[test]
    fn reply_errors() {
        assert!(matches!(
            AckReply::parse(b"MSH|^~\\&|A\rPID|1\r"),
            Err(AckReplyError::MissingMsa)
        ));
        assert!(matches!(
            AckReply::parse(b"MSH|^~\\&|A\rMSA|OK|1\r"),
            Err(AckReplyError::UnknownCode(_))
        ));
        assert!(matches!(
            AckReply::parse(b"garbage"),
            Err(AckReplyError::Parse(_))
        ));
    }
}

//! Every message of the shared corpus (`../shared/corpus/hl7v2`) goes through parse,
//! round trip and ACK. Files the corpus marks MALFORMED have their outcome stated here, one
//! by one: either a lenient parse with a named warning, or a typed error and an AR NAK.

use causeway_message::ack::{Ack, AckCode, AckMode, AckReply, Outcome};
use causeway_message::{Message, MessageBuf, ParseErrorKind, ParseOptions, WarningKind, batch};
use causeway_testkit::corpus;

/// What a corpus file is expected to do.
#[derive(Debug)]
enum Expect {
    /// Parses; the only warnings allowed are about line endings, a BOM and blank lines.
    Clean,
    /// Parses leniently with (at least) a warning matching this, and fails in strict mode.
    Warns(fn(&WarningKind) -> bool),
    /// Parses leniently with a warning matching this; strict mode may also accept it.
    WarnsStrictOk(fn(&WarningKind) -> bool),
    /// Refused with this error kind; the NAK is an AR.
    Error(fn(&ParseErrorKind) -> bool),
    /// A batch file (or messages back to back) that splits into this many messages.
    Batch { messages: usize, warns: bool },
    /// A batch file that is refused.
    BatchError,
}

/// The MALFORMED files and other special cases of the corpus README, with what we do.
fn expectation(name: &str) -> Expect {
    use Expect::*;
    match name {
        // MSH-2 "^\&": the repetition separator is missing; roles are assigned by convention.
        // Ends with a stray MLLP start byte (VT) on its own line, which is skipped.
        "rubyhl7__ADT_A01__1.hl7" => {
            Warns(|w| matches!(w, WarningKind::RepairedEncodingCharacters(_)))
        }
        // MSH with 10 fields (no MSH-12); segments with no segment ID; stray VT line.
        "rubyhl7__ORU_R03__1.hl7" => Warns(|w| matches!(w, WarningKind::InvalidSegmentId(_))),
        // MSH-2 "^~&": no escape character; "&" stays the subcomponent separator.
        "rubyhl7__ORU_R01__2.hl7" => {
            Warns(|w| matches!(w, WarningKind::RepairedEncodingCharacters(_)))
        }
        // MSH-2 "^~}": three characters.
        "hapi__BAR_P01__2.hl7" => {
            Warns(|w| matches!(w, WarningKind::RepairedEncodingCharacters(_)))
        }
        // MSH-2 "^~\\&": a doubled backslash.
        "lfh__ADT_A01__1.hl7" | "lfh__ADT_A01__2.hl7" => Warns(|w| {
            matches!(
                w,
                WarningKind::RepairedEncodingCharacters("doubled character")
            )
        }),
        // OBX segments run together on the OBR line: kept as OBR fields, and said so.
        "hapi__ORU_R01__1.hl7" => {
            WarnsStrictOk(|w| matches!(w, WarningKind::SuspectedJoinedSegment(s) if s == "OBX"))
        }
        // MSH-7 and MSH-10 empty.
        "hapi__OML_O21__1.hl7" => {
            WarnsStrictOk(|w| *w == WarningKind::MissingRequiredField("MSH-10"))
        }
        // Unknown non-Z segments (OMG, WTF, BBQ) are fine; MSH-7 is empty; stray VT line.
        "rubyhl7__ORM_O01__1.hl7" => Warns(|w| *w == WarningKind::MissingRequiredField("MSH-7")),
        // MSH-2 "^&&^": the same character for two roles cannot be read either way.
        "hl7apy__ADT_A01__1.hl7" => {
            Error(|e| matches!(e, ParseErrorKind::InvalidEncodingCharacters { .. }))
        }
        // Field separator "!" and MSH-2 "$r?@": a letter as repetition separator.
        "hl7apy__RSP_SLI__1.hl7" => Warns(|w| *w == WarningKind::AlphanumericEncodingCharacters),
        // ipf__ADT_A01__2 (no PID in an ADT^A01; MSH-15 ER without MSH-16) is malformed
        // only against the message structure, which the core does not validate (it has no
        // structure tables): it parses clean, and its enhanced-mode ACK rules are tested.
        "ipf__ADT_A01__2.hl7" => Clean,
        "pythonhl7__BATCH_ADT_A04__1.hl7" => Batch {
            messages: 3,
            warns: false,
        },
        // A second BHS in the middle of a message leaves PID lines outside any message.
        "pythonhl7__BATCH_ADT_A04__2.hl7" => BatchError,
        "pythonhl7__BATCH_ADT_A04__3.hl7" => Batch {
            messages: 2,
            warns: false,
        },
        "rubyhl7__BATCH_ORU_R01__1.hl7" => Batch {
            messages: 2,
            warns: false,
        },
        // Zero messages, and BTS says 2.
        "rubyhl7__BATCH_EMPTY__1.hl7" => Batch {
            messages: 0,
            warns: true,
        },
        _ => Clean,
    }
}

/// Warnings about form only: line endings, a byte order mark, blank or stray lines.
fn is_form_warning(w: &WarningKind) -> bool {
    matches!(
        w,
        WarningKind::NonStandardTerminator(_)
            | WarningKind::ByteOrderMark
            | WarningKind::StrayLine(_)
    )
}

#[test]
fn every_corpus_file_parses_round_trips_and_acks() {
    let files = corpus::all();
    assert!(
        files.len() >= 63,
        "expected the whole corpus, found {} files",
        files.len()
    );
    let mut failures = Vec::new();
    for file in &files {
        if let Err(e) = check_file(&file.name, &file.bytes) {
            failures.push(format!("{}: {e}", file.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} files failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

fn check_file(name: &str, bytes: &[u8]) -> Result<(), String> {
    match expectation(name) {
        Expect::Batch { messages, warns } => {
            let file =
                batch::split(bytes, false).map_err(|e| format!("batch split failed: {e}"))?;
            if file.message_count() != messages {
                return Err(format!(
                    "expected {messages} messages, found {}",
                    file.message_count()
                ));
            }
            if warns == file.warnings.is_empty() {
                return Err(format!("warnings: {:?}", file.warnings));
            }
            // The parts cover the file byte for byte.
            let mut ranges: Vec<_> = file
                .file_header
                .iter()
                .chain(file.file_trailer.iter())
                .cloned()
                .collect();
            for b in &file.batches {
                ranges.extend(
                    b.header
                        .iter()
                        .chain(b.trailer.iter())
                        .chain(b.messages.iter())
                        .cloned(),
                );
            }
            ranges.sort_by_key(|r| r.start);
            let rebuilt: Vec<u8> = ranges
                .iter()
                .flat_map(|r| bytes[r.clone()].iter().copied())
                .collect();
            if rebuilt != bytes {
                return Err("batch parts do not cover the file".into());
            }
            for m in file.messages() {
                let msg = Message::parse(m).map_err(|e| format!("batch message: {e}"))?;
                check_message(&msg)?;
            }
            Ok(())
        }
        Expect::BatchError => match batch::split(bytes, false) {
            Ok(f) => Err(format!(
                "expected a batch error, got {} messages",
                f.message_count()
            )),
            Err(e) => {
                check_nak(bytes, &e)?;
                Ok(())
            }
        },
        Expect::Error(kind) => match Message::parse(bytes) {
            Ok(_) => Err("expected a parse error".into()),
            Err(e) if kind(&e.kind) => check_nak(bytes, &e),
            Err(e) => Err(format!("unexpected error {e}")),
        },
        expect => {
            let msg = Message::parse(bytes).map_err(|e| format!("parse failed: {e}"))?;
            let strict = Message::parse_with(bytes, ParseOptions::STRICT);
            let warnings: Vec<_> = msg.warnings().iter().map(|w| &w.kind).collect();
            match expect {
                Expect::Clean => {
                    if let Some(w) = warnings.iter().find(|w| !is_form_warning(w)) {
                        return Err(format!("unexpected warning {w}"));
                    }
                    // Clean CR-terminated files pass strict mode too.
                    if warnings.is_empty() && strict.is_err() {
                        return Err(format!("strict mode refused a clean message: {strict:?}"));
                    }
                }
                Expect::Warns(want) | Expect::WarnsStrictOk(want) => {
                    if !warnings.iter().any(|w| want(w)) {
                        return Err(format!("expected warning missing; got {warnings:?}"));
                    }
                    if matches!(expect, Expect::Warns(_)) && strict.is_ok() {
                        return Err("strict mode accepted a malformed message".into());
                    }
                }
                _ => unreachable!(),
            }
            check_message(&msg)
        }
    }
}

/// Round trip, every value readable, a valid ACK.
fn check_message(msg: &Message<'_>) -> Result<(), String> {
    let bytes = msg.as_bytes();
    if MessageBuf::from_message(msg).encode() != bytes {
        return Err("round trip changed bytes".into());
    }
    // Every field rebuilt from its parts equals the field.
    let d = msg.delimiters();
    for seg in msg.segments() {
        for field in seg.fields() {
            let reps = field.children().collect::<Vec<_>>();
            let joined: Vec<u8> = reps
                .iter()
                .map(|r| {
                    r.children()
                        .collect::<Vec<_>>()
                        .iter()
                        .map(|c| c.as_bytes().unwrap_or_default().to_vec())
                        .collect::<Vec<_>>()
                        .join(&d.component)
                })
                .collect::<Vec<_>>()
                .join(&d.repetition.unwrap_or(0));
            if field.as_bytes().is_some_and(|f| f != joined.as_slice()) && d.repetition.is_some() {
                return Err(format!(
                    "field of {} does not rebuild from its parts",
                    String::from_utf8_lossy(seg.id())
                ));
            }
        }
    }
    let ack = Ack::for_message(msg, Outcome::Accept)
        .control_id("CWTEST1")
        .timestamp("20261127120000")
        .encode();
    let reply = AckReply::parse(&ack).map_err(|e| format!("our ACK does not parse: {e}"))?;
    let want = match AckMode::of(msg) {
        AckMode::Original => AckCode::AA,
        AckMode::Enhanced { .. } => AckCode::CA,
    };
    if reply.code != want {
        return Err(format!("ACK code {} instead of {want}", reply.code));
    }
    if reply.acked_control_id != msg.control_id().unwrap_or_default() {
        return Err("MSA-2 is not the original MSH-10".into());
    }
    let ack_msg = Message::parse(&ack).map_err(|e| e.to_string())?;
    for (ours, theirs) in [
        ("MSH-3", "MSH-5"),
        ("MSH-4", "MSH-6"),
        ("MSH-5", "MSH-3"),
        ("MSH-6", "MSH-4"),
        ("MSH-12", "MSH-12"),
    ] {
        let a = ack_msg.get(ours).map_err(|e| e.to_string())?;
        let o = msg.get(theirs).map_err(|e| e.to_string())?;
        if a.as_bytes().unwrap_or_default() != o.as_bytes().unwrap_or_default() {
            return Err(format!("ACK {ours} is not the original {theirs}"));
        }
    }
    let msh9 = ack_msg.get("MSH-9").map_err(|e| e.to_string())?;
    if !msh9.as_bytes().unwrap_or_default().starts_with(b"ACK") {
        return Err("ACK MSH-9 does not start with ACK".into());
    }
    Ok(())
}

fn check_nak(bytes: &[u8], error: &causeway_message::ParseError) -> Result<(), String> {
    let nak = Ack::for_parse_error(bytes, error)
        .control_id("CWNAK1")
        .timestamp("20261127120000")
        .encode();
    let reply = AckReply::parse(&nak).map_err(|e| format!("our NAK does not parse: {e}"))?;
    if !reply.code.is_reject() || reply.error.is_none() {
        return Err(format!("NAK is {} without ERR", reply.code));
    }
    Ok(())
}

#[test]
fn charsets_of_the_corpus() {
    use causeway_message::{Charset, CharsetError};
    // Declared ISO-8859-1 with ASCII content, and an undeclared ISO-8859-1 file.
    let m = corpus::file("ipf__ORU_R01__1.hl7");
    assert_eq!(
        Message::parse(&m).unwrap().declared_charset(),
        Ok(Some(Charset::Iso8859(1)))
    );
    let latin = corpus::file("ipf__ADT_A40__1.hl7");
    let msg = Message::parse(&latin).unwrap();
    assert_eq!(msg.declared_charset(), Ok(None));
    let receiver = msg.get("MSH-5").unwrap();
    assert!(
        receiver.text(Charset::Utf8).is_err(),
        "ISO-8859-1 bytes are not UTF-8"
    );
    assert_eq!(receiver.text(Charset::Iso8859(1)).unwrap(), "BLÄH");
    // MSH-18 "code1~code2" names no known set: a typed error, not a guess.
    let m = corpus::file("ipf__ORU_R01__2.hl7");
    assert!(
        matches!(Message::parse(&m).unwrap().declared_charset(), Err(CharsetError::Unknown(n)) if n == "code1")
    );
    // Undeclared UTF-8.
    let m = corpus::file("ipf__ADT_A01__1.hl7");
    let msg = Message::parse(&m).unwrap();
    let names: Vec<String> = msg
        .segments()
        .flat_map(|s| {
            s.fields()
                .map(|f| f.text(Charset::Utf8).unwrap().into_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(names.iter().any(|n| !n.is_ascii()));
}

#[test]
fn escapes_of_the_corpus() {
    let m = corpus::file("dotnethl7__ORM_O01__1.hl7");
    let msg = Message::parse(&m).unwrap();
    let all: Vec<u8> = msg
        .segment("NTE", 1)
        .into_iter()
        .chain(msg.segments().filter(|s| s.id() == b"NTE"))
        .flat_map(|s| s.field(3).unescaped().into_owned())
        .collect();
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.contains("\r\n"),
        "\\X0D\\\\X0A\\ decodes to CR LF: {text}"
    );
    assert!(
        text.contains("\\H\\"),
        "highlighting is kept verbatim: {text}"
    );
    let m = corpus::file("ipf__ACK_Q23__1.hl7");
    let reply = AckReply::parse(&m).unwrap();
    assert_eq!(reply.code, AckCode::AR);
    assert!(reply.text.unwrap().contains('^'), "\\S\\ decodes to ^");
}

//! Differential test: our parser against two independent ones, `er7` and `hl7-parser`, over
//! the shared corpus.
//!
//! For every corpus file that both sides accept, every segment and every field is compared:
//! the segment ID, the field count, the raw field, and its repetitions, components and
//! subcomponents (both peers expose the whole tree). Values are compared raw, escapes in.
//!
//! A file that does not agree must be listed in [`ER7_EXCEPTIONS`] or
//! [`HL7_PARSER_EXCEPTIONS`] with the outcome seen and the reason; the test fails both when
//! an unlisted file disagrees and when a listed file behaves differently from its entry
//! (agrees after all, or fails in another way), so the lists cannot rot.
//!
//! What the peers are given, and why (legitimate normalisations, not hidden differences):
//! - Both peers take `&str`. A file that is valid UTF-8 is given as is. The one file that is
//!   not (ISO-8859-1 bytes) is given as Latin-1-decoded text, one char per byte; delimiters
//!   are ASCII so the structure is unchanged, and our values are decoded the same way before
//!   they are compared.
//! - `hl7-parser` gets `parse_with_lenient_newlines(.., true)`, its own switch for LF and
//!   CRLF terminators (we accept CR, LF and CRLF; `er7` does too). No terminator is rewritten.
//! - `hl7-parser` does not skip a byte order mark (its grammar starts with the tag `MSH`), so
//!   it gets the input without the UTF-8 BOM. We keep the BOM as [`Message::prefix`] and
//!   `er7` strips it itself, so all three then read the same message.
//! - `hl7-parser` returns `Ok` with whatever prefix of the input its grammar matched and
//!   silently drops the rest. It counts as accepting a file only when what it left over is
//!   blank (terminators, whitespace, control bytes such as a stray MLLP start byte), which is
//!   exactly what we drop as blank or stray lines.
//! - `er7` stores an empty field (`||`) as a field with no repetitions (its way to tell "not
//!   sent" from "sent blank"); we and `hl7-parser` give it one empty repetition. Both describe
//!   the same bytes, so an empty `er7` field is compared as one empty repetition.

use std::fmt::Write as _;

use causeway_message::Message;
use causeway_testkit::corpus;

/// How a peer handles a corpus file relative to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Both parse it and every value matches.
    Agree,
    /// Both parse it and some value differs.
    Differs,
    /// We parse it, the peer refuses it (or stops early).
    PeerRejects,
    /// The peer parses it, we refuse it.
    OursRejects,
    /// Neither parses it.
    BothReject,
}

/// A known, explained departure from [`Outcome::Agree`]: file name, outcome, reason.
type Exception = (&'static str, Outcome, &'static str);

/// Every corpus file on which `er7` does not agree with us, and why.
const ER7_EXCEPTIONS: &[Exception] = &[
    // Batch files: `Message::parse` reads one message and wants MSH first (`batch::split` is
    // our API for these); er7 accepts an FHS/BHS header and reads the file as one tree.
    (
        "pythonhl7__BATCH_ADT_A04__1.hl7",
        Outcome::OursRejects,
        "batch file starting with FHS",
    ),
    (
        "pythonhl7__BATCH_ADT_A04__2.hl7",
        Outcome::OursRejects,
        "batch file starting with BHS",
    ),
    (
        "rubyhl7__BATCH_EMPTY__1.hl7",
        Outcome::OursRejects,
        "batch file starting with FHS",
    ),
    (
        "rubyhl7__BATCH_ORU_R01__1.hl7",
        Outcome::OursRejects,
        "batch file starting with FHS",
    ),
    // Two messages back to back without an envelope. We read them as one message and index
    // the second MSH as an ordinary segment (its field 1 is `^~\&`); er7 numbers every
    // MSH/BHS/FHS as a header (field 1 `|`). See the report: we give no warning here.
    (
        "pythonhl7__BATCH_ADT_A04__3.hl7",
        Outcome::Differs,
        "implicit batch: second MSH numbered as a plain segment by us, as a header by er7",
    ),
    // MSH-2 `^&&^`: one character in two roles. Both refuse it, rightly.
    (
        "hl7apy__ADT_A01__1.hl7",
        Outcome::BothReject,
        "MSH-2 `^&&^` repeats a delimiter",
    ),
    // MSH-2 `$r?@`: er7 refuses a letter as a delimiter; we accept it with a warning.
    (
        "hl7apy__RSP_SLI__1.hl7",
        Outcome::PeerRejects,
        "er7 refuses the alphanumeric repetition separator `r`",
    ),
    // Malformed MSH-2 sets that we repair (with a warning) and er7 reads positionally, filling
    // missing roles with defaults, which collide: `^~\\&` (doubled escape, role 4 = `\`),
    // `^\&` and `^~&` (role 3 = `&`, default subcomponent `&`).
    (
        "lfh__ADT_A01__1.hl7",
        Outcome::PeerRejects,
        "MSH-2 `^~\\\\&`: er7 refuses the doubled escape",
    ),
    (
        "lfh__ADT_A01__2.hl7",
        Outcome::PeerRejects,
        "MSH-2 `^~\\\\&`: er7 refuses the doubled escape",
    ),
    (
        "rubyhl7__ADT_A01__1.hl7",
        Outcome::PeerRejects,
        "MSH-2 `^\\&`: er7 reads `&` as escape, collides",
    ),
    (
        "rubyhl7__ORU_R01__2.hl7",
        Outcome::PeerRejects,
        "MSH-2 `^~&`: er7 reads `&` as escape, collides",
    ),
];

/// Every corpus file on which `hl7-parser` does not agree with us, and why.
const HL7_PARSER_EXCEPTIONS: &[Exception] = &[
    // Batch files: neither `Message::parse` nor hl7-parser reads a file that starts with
    // FHS/BHS as a message.
    (
        "pythonhl7__BATCH_ADT_A04__1.hl7",
        Outcome::BothReject,
        "batch file starting with FHS",
    ),
    (
        "pythonhl7__BATCH_ADT_A04__2.hl7",
        Outcome::BothReject,
        "batch file starting with BHS",
    ),
    (
        "rubyhl7__BATCH_EMPTY__1.hl7",
        Outcome::BothReject,
        "batch file starting with FHS",
    ),
    (
        "rubyhl7__BATCH_ORU_R01__1.hl7",
        Outcome::BothReject,
        "batch file starting with FHS",
    ),
    // MSH-2 `^&&^`: one character in two roles. We refuse it; hl7-parser does not check.
    (
        "hl7apy__ADT_A01__1.hl7",
        Outcome::OursRejects,
        "MSH-2 `^&&^` repeats a delimiter: we refuse, rightly",
    ),
    // hl7-parser stops at a blank line (`\r\n\r\n`) inside the message and drops the rest.
    (
        "dotnethl7__ADT_O01__1.hl7",
        Outcome::PeerRejects,
        "hl7-parser stops at a blank line mid-message",
    ),
    // hl7-parser needs a three-character segment ID; `||||` lines end its parse.
    (
        "rubyhl7__ORU_R03__1.hl7",
        Outcome::PeerRejects,
        "hl7-parser stops at segments without an ID",
    ),
    // hl7-parser always reads exactly four encoding characters after MSH-1, so any other MSH-2
    // length shifts MSH: v2.7's fifth (truncation) character becomes MSH-3, and a short MSH-2
    // takes the following field separator as its fourth character.
    (
        "hl7apy__RSP_K22__1.hl7",
        Outcome::Differs,
        "MSH-2 `^~\\&#` (v2.7 truncation char): hl7-parser reads 4 chars",
    ),
    (
        "lfh__ADT_A01__1.hl7",
        Outcome::Differs,
        "MSH-2 `^~\\\\&` (5 chars): hl7-parser reads 4",
    ),
    (
        "lfh__ADT_A01__2.hl7",
        Outcome::Differs,
        "MSH-2 `^~\\\\&` (5 chars): hl7-parser reads 4",
    ),
    (
        "hapi__BAR_P01__2.hl7",
        Outcome::Differs,
        "MSH-2 `^~}` (3 chars): hl7-parser takes `|` as 4th",
    ),
    (
        "rubyhl7__ADT_A01__1.hl7",
        Outcome::Differs,
        "MSH-2 `^\\&` (3 chars): hl7-parser takes `|` as 4th",
    ),
    (
        "rubyhl7__ORU_R01__2.hl7",
        Outcome::Differs,
        "MSH-2 `^~&` (3 chars): hl7-parser takes `|` as 4th",
    ),
];

/// Fewer compared files than this means the comparison quietly stopped covering the corpus.
const MIN_COMPARED: usize = 50;

// === the common tree ===

/// A segment as a plain tree of raw strings: the shape all three parsers can be put in.
#[derive(Debug, PartialEq, Eq)]
struct Seg {
    id: String,
    fields: Vec<Field>,
}

#[derive(Debug, PartialEq, Eq)]
struct Field {
    raw: String,
    reps: Vec<Rep>,
}

#[derive(Debug, PartialEq, Eq)]
struct Rep {
    raw: String,
    comps: Vec<Comp>,
}

#[derive(Debug, PartialEq, Eq)]
struct Comp {
    raw: String,
    subs: Vec<String>,
}

/// How a peer's `&str` was made from the file's bytes, so our bytes get the same treatment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Text {
    Utf8,
    Latin1,
}

impl Text {
    fn of(bytes: &[u8]) -> Text {
        if std::str::from_utf8(bytes).is_ok() {
            Text::Utf8
        } else {
            Text::Latin1
        }
    }

    fn decode(self, bytes: &[u8]) -> String {
        match self {
            // Slices of a valid UTF-8 input cut at ASCII delimiters are valid UTF-8 too; a
            // lossy decode can only differ if that is broken, which the comparison would show.
            Text::Utf8 => String::from_utf8_lossy(bytes).into_owned(),
            Text::Latin1 => bytes.iter().map(|&b| char::from(b)).collect(),
        }
    }
}

/// Our parse, as the common tree. Walks the public API: `segments`, `field_count`, `field`,
/// `children` at each level, and checks the indexed accessors (`repetition(n)`,
/// `component(n)`, `subcomponent(n)`) give the same bytes as `children`.
fn ours(msg: &Message<'_>, text: Text) -> Vec<Seg> {
    let s = |v: &causeway_message::Value<'_>| text.decode(v.as_bytes().unwrap_or_default());
    msg.segments()
        .map(|seg| Seg {
            id: text.decode(seg.id()),
            fields: (1..=seg.field_count())
                .map(|n| {
                    let field = seg.field(n);
                    assert!(
                        !field.is_absent(),
                        "{}-{n} absent below field_count",
                        s_id(&seg)
                    );
                    let reps = field.children().collect::<Vec<_>>();
                    Field {
                        raw: s(&field),
                        reps: reps
                            .iter()
                            .enumerate()
                            .map(|(r, rep)| {
                                assert_eq!(field.repetition(r + 1).as_bytes(), rep.as_bytes());
                                let comps = rep.children().collect::<Vec<_>>();
                                Rep {
                                    raw: s(rep),
                                    comps: comps
                                        .iter()
                                        .enumerate()
                                        .map(|(c, comp)| {
                                            assert_eq!(
                                                rep.component(c + 1).as_bytes(),
                                                comp.as_bytes()
                                            );
                                            let subs = comp.children().collect::<Vec<_>>();
                                            for (k, sub) in subs.iter().enumerate() {
                                                assert_eq!(
                                                    comp.subcomponent(k + 1).as_bytes(),
                                                    sub.as_bytes()
                                                );
                                            }
                                            Comp {
                                                raw: s(comp),
                                                subs: subs.iter().map(s).collect(),
                                            }
                                        })
                                        .collect(),
                                }
                            })
                            .collect(),
                    }
                })
                .collect(),
        })
        .collect()
}

fn s_id(seg: &causeway_message::Segment<'_, '_>) -> String {
    String::from_utf8_lossy(seg.id()).into_owned()
}

/// `er7`'s parse, as the common tree.
fn er7_tree(msg: &er7::Message) -> Vec<Seg> {
    let seps = &msg.separators;
    msg.segments
        .iter()
        .map(|seg| Seg {
            id: seg.name.clone(),
            fields: seg
                .fields
                .iter()
                .map(|field| {
                    let mut reps: Vec<Rep> = field
                        .repetitions
                        .iter()
                        .map(|rep| Rep {
                            raw: rep.to_er7(seps),
                            comps: rep
                                .components
                                .iter()
                                .map(|comp| Comp {
                                    raw: comp.to_er7(seps),
                                    subs: comp
                                        .subcomponents
                                        .iter()
                                        .map(|sub| sub.raw.clone())
                                        .collect(),
                                })
                                .collect(),
                        })
                        .collect();
                    if reps.is_empty() {
                        // An empty field: no repetitions in er7, one empty one for us.
                        reps.push(Rep {
                            raw: String::new(),
                            comps: vec![Comp {
                                raw: String::new(),
                                subs: vec![String::new()],
                            }],
                        });
                    }
                    Field {
                        raw: field.to_er7(seps),
                        reps,
                    }
                })
                .collect(),
        })
        .collect()
}

/// `hl7-parser`'s parse, as the common tree.
fn hl7_parser_tree(msg: &hl7_parser::Message<'_>) -> Vec<Seg> {
    msg.segments()
        .map(|seg| Seg {
            id: seg.name.to_owned(),
            fields: seg
                .fields()
                .map(|field| Field {
                    raw: field.raw_value().to_owned(),
                    reps: field
                        .repeats()
                        .map(|rep| Rep {
                            raw: rep.raw_value().to_owned(),
                            comps: rep
                                .components()
                                .map(|comp| Comp {
                                    raw: comp.raw_value().to_owned(),
                                    subs: comp
                                        .subcomponents()
                                        .map(|sub| sub.raw_value().to_owned())
                                        .collect(),
                                })
                                .collect(),
                        })
                        .collect(),
                })
                .collect(),
        })
        .collect()
}

// === comparison ===

/// The first place the two trees differ, as `path: ours=.. peer=..`, or `None` when equal.
fn first_difference(ours: &[Seg], peer: &[Seg]) -> Option<String> {
    if ours.len() != peer.len() {
        let ids = |t: &[Seg]| {
            t.iter()
                .map(|s| s.id.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        return Some(format!(
            "segment count: ours={} [{}] peer={} [{}]",
            ours.len(),
            ids(ours),
            peer.len(),
            ids(peer)
        ));
    }
    for (i, (a, b)) in ours.iter().zip(peer).enumerate() {
        let at = format!("segment #{} {}", i + 1, a.id);
        if a.id != b.id {
            return Some(format!("{at}: id ours={:?} peer={:?}", a.id, b.id));
        }
        // Values first: a shifted field shows up as the value that moved, which says more
        // than the count it also changes.
        for (f, (fa, fb)) in a.fields.iter().zip(&b.fields).enumerate() {
            let path = format!("{}-{}", a.id, f + 1);
            if let Some(d) = field_difference(&path, fa, fb) {
                return Some(format!("segment #{}: {d}", i + 1));
            }
        }
        if a.fields.len() != b.fields.len() {
            return Some(format!(
                "{at}: field count ours={} peer={}",
                a.fields.len(),
                b.fields.len()
            ));
        }
    }
    None
}

fn field_difference(path: &str, a: &Field, b: &Field) -> Option<String> {
    let differ = |p: String, x: &str, y: &str| Some(format!("{p}: ours={x:?} peer={y:?}"));
    if a.raw != b.raw {
        return differ(path.to_owned(), &a.raw, &b.raw);
    }
    if a.reps.len() != b.reps.len() {
        return Some(format!(
            "{path}: repetitions ours={} peer={}",
            a.reps.len(),
            b.reps.len()
        ));
    }
    for (r, (ra, rb)) in a.reps.iter().zip(&b.reps).enumerate() {
        let path = format!("{path}[{}]", r + 1);
        if ra.raw != rb.raw {
            return differ(path, &ra.raw, &rb.raw);
        }
        if ra.comps.len() != rb.comps.len() {
            return Some(format!(
                "{path}: components ours={} peer={}",
                ra.comps.len(),
                rb.comps.len()
            ));
        }
        for (c, (ca, cb)) in ra.comps.iter().zip(&rb.comps).enumerate() {
            let path = format!("{path}.{}", c + 1);
            if ca.raw != cb.raw {
                return differ(path, &ca.raw, &cb.raw);
            }
            if ca.subs != cb.subs {
                return Some(format!(
                    "{path}: subcomponents ours={:?} peer={:?}",
                    ca.subs, cb.subs
                ));
            }
        }
    }
    None
}

/// One peer's result on one file: the outcome and what it was about (the first difference
/// or the error).
fn run_peer(
    name: &str,
    bytes: &[u8],
    peer: &dyn Fn(&str) -> Result<Vec<Seg>, String>,
) -> (Outcome, String) {
    let text = Text::of(bytes);
    let input = text.decode(bytes);
    let ours = Message::parse(bytes).map(|m| (ours(&m, text), m.warnings().len()));
    let theirs = peer(&input);
    match (ours, theirs) {
        (Ok((a, _)), Ok(b)) => match first_difference(&a, &b) {
            None => (Outcome::Agree, String::new()),
            Some(d) => (Outcome::Differs, d),
        },
        (Ok(_), Err(e)) => (Outcome::PeerRejects, e),
        (Err(e), Ok(_)) => (Outcome::OursRejects, format!("{name}: ours: {e}")),
        (Err(a), Err(b)) => (Outcome::BothReject, format!("ours: {a}; peer: {b}")),
    }
}

fn er7_parse(input: &str) -> Result<Vec<Seg>, String> {
    er7::parse(input)
        .map(|m| er7_tree(&m))
        .map_err(|e| e.to_string())
}

fn hl7_parser_parse(input: &str) -> Result<Vec<Seg>, String> {
    let input = input.strip_prefix('\u{feff}').unwrap_or(input);
    let msg =
        hl7_parser::Message::parse_with_lenient_newlines(input, true).map_err(|e| e.to_string())?;
    let rest = &input[msg.raw_value().len()..];
    if !rest.bytes().all(|b| b <= b' ' || b == 0x7F) {
        let shown: String = rest.chars().take(24).collect();
        return Err(format!(
            "stopped at byte {} of {}, before {shown:?}",
            msg.raw_value().len(),
            input.len()
        ));
    }
    Ok(hl7_parser_tree(&msg))
}

/// Runs one peer over the corpus and checks every outcome against its exception list.
fn check_peer(
    peer_name: &str,
    exceptions: &[Exception],
    peer: &dyn Fn(&str) -> Result<Vec<Seg>, String>,
) {
    let files = corpus::all();
    for (name, ..) in exceptions {
        assert!(
            files.iter().any(|f| f.name == *name),
            "{peer_name}: exception names {name}, which is not in the corpus"
        );
    }
    let mut compared = 0;
    let mut failures = String::new();
    let mut report = String::new();
    for file in &files {
        let (outcome, detail) = run_peer(&file.name, &file.bytes, peer);
        if matches!(outcome, Outcome::Agree | Outcome::Differs) {
            compared += 1;
        }
        let (expected, reason) = exceptions
            .iter()
            .find(|(n, ..)| *n == file.name)
            .map_or((Outcome::Agree, "not listed"), |&(_, o, r)| (o, r));
        let _ = writeln!(report, "  {:<34} {outcome:?}  {detail}", file.name);
        if outcome != expected {
            let _ = writeln!(
                failures,
                "  {}: expected {expected:?} ({reason}), got {outcome:?}  {detail}",
                file.name
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{peer_name}: outcomes differ from the exception list:\n{failures}\nall outcomes:\n{report}"
    );
    assert!(
        compared >= MIN_COMPARED,
        "{peer_name}: only {compared} files compared (minimum {MIN_COMPARED}):\n{report}"
    );
}

#[test]
fn agrees_with_er7() {
    check_peer("er7", ER7_EXCEPTIONS, &er7_parse);
}

#[test]
fn agrees_with_hl7_parser() {
    check_peer("hl7-parser", HL7_PARSER_EXCEPTIONS, &hl7_parser_parse);
}

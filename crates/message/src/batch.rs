//! Batches: FHS/BHS/BTS/FTS batch files, and files holding messages back to back.
//!
//! Splitting works on lines and segment IDs only, so each message keeps its own bytes and
//! its own delimiters (a batch may mix them) and is parsed separately afterwards. Blank or
//! stray lines after a message stay with that message, so the pieces put together give back
//! the file byte for byte.

use std::ops::Range;

use crate::delim::Delimiters;
use crate::error::{ParseError, ParseErrorKind, Warning, WarningKind};
use crate::escape;

/// A batch file split into its parts. Ranges index the bytes given to [`split`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchFile<'a> {
    bytes: &'a [u8],
    /// The FHS segment line (with its terminator), if any.
    pub file_header: Option<Range<usize>>,
    /// The FTS segment line, if any.
    pub file_trailer: Option<Range<usize>>,
    /// The batches; messages outside any BHS..BTS sit in a batch with no header.
    pub batches: Vec<Batch>,
    /// What was tolerated.
    pub warnings: Vec<Warning>,
}

/// One batch (BHS..BTS), or a run of messages without a batch header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch {
    /// The BHS line, if any.
    pub header: Option<Range<usize>>,
    /// The BTS line, if any.
    pub trailer: Option<Range<usize>>,
    /// Each message's bytes.
    pub messages: Vec<Range<usize>>,
}

impl<'a> BatchFile<'a> {
    /// Every message's bytes, in order, across batches.
    pub fn messages(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.batches
            .iter()
            .flat_map(|b| b.messages.iter())
            .map(|r| &self.bytes[r.clone()])
    }

    /// Number of messages.
    pub fn message_count(&self) -> usize {
        self.batches.iter().map(|b| b.messages.len()).sum()
    }

    /// Whether the input had any batch envelope (FHS/BHS).
    pub fn is_enveloped(&self) -> bool {
        self.file_header.is_some() || self.batches.iter().any(|b| b.header.is_some())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Line {
    Fhs,
    Bhs,
    Bts,
    Fts,
    Msh,
    Other,
    Blank,
}

fn classify(line: &[u8]) -> Line {
    let header =
        |id: &[u8]| line.starts_with(id) && line.get(3).is_none_or(|b| !b.is_ascii_alphanumeric());
    match line.get(..3) {
        _ if line.iter().all(|&b| b <= b' ' || b == 0x7F) => Line::Blank,
        Some(b"MSH") if header(b"MSH") => Line::Msh,
        Some(b"FHS") if header(b"FHS") => Line::Fhs,
        Some(b"BHS") if header(b"BHS") => Line::Bhs,
        Some(b"BTS") if header(b"BTS") => Line::Bts,
        Some(b"FTS") if header(b"FTS") => Line::Fts,
        _ => Line::Other,
    }
}

/// Lines with their terminators: (start of content, end of content, end of terminator).
fn lines(bytes: &[u8]) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
    let mut pos = 0;
    std::iter::from_fn(move || {
        if pos >= bytes.len() {
            return None;
        }
        let start = pos;
        let (end, next) = match memchr::memchr2(b'\r', b'\n', &bytes[pos..]) {
            Some(i) => {
                let end = pos + i;
                let crlf = bytes[end] == b'\r' && bytes.get(end + 1) == Some(&b'\n');
                (end, end + if crlf { 2 } else { 1 })
            }
            None => (bytes.len(), bytes.len()),
        };
        pos = next;
        Some((start, end, next))
    })
}

/// Splits a batch file or a file of messages back to back. `strict` refuses count
/// mismatches and structure errors that are otherwise reported as warnings.
pub fn split(bytes: &[u8], strict: bool) -> Result<BatchFile<'_>, ParseError> {
    let mut file = BatchFile {
        bytes,
        file_header: None,
        file_trailer: None,
        batches: Vec::new(),
        warnings: Vec::new(),
    };
    let problem = |file: &mut BatchFile<'_>, what: &'static str, offset: usize| {
        if strict {
            return Err(ParseError::new(
                ParseErrorKind::MalformedBatch(what),
                offset,
            ));
        }
        file.warnings.push(Warning {
            kind: WarningKind::BatchStructure(what),
            offset,
        });
        Ok(())
    };
    let mut current: Option<Batch> = None;
    // The message being collected: its start, and where its last line (with trailers) ends.
    let mut message: Option<(usize, usize)> = None;
    let mut skip_bom = bytes.starts_with(b"\xEF\xBB\xBF");

    let close_message = |batch: &mut Option<Batch>, message: &mut Option<(usize, usize)>| {
        if let Some((start, end)) = message.take() {
            batch
                .get_or_insert_with(Batch::default)
                .messages
                .push(start..end);
        }
    };
    for (start, end, next) in lines(bytes) {
        let content_start = if skip_bom { start + 3 } else { start };
        skip_bom = false;
        let kind = classify(&bytes[content_start.min(end)..end]);
        match kind {
            Line::Blank | Line::Other => match &mut message {
                Some((_, last)) => *last = next,
                None if kind == Line::Blank => {
                    // Blank lines between envelope segments belong to the line before.
                    extend_last(&mut file, &mut current, next);
                }
                None => {
                    let found =
                        String::from_utf8_lossy(&bytes[start..end.min(start + 8)]).into_owned();
                    return Err(ParseError::new(ParseErrorKind::MissingMsh { found }, start));
                }
            },
            Line::Msh => {
                close_message(&mut current, &mut message);
                message = Some((start, next));
            }
            Line::Bhs => {
                close_message(&mut current, &mut message);
                if let Some(open) = current.take() {
                    if open.header.is_some() && open.trailer.is_none() {
                        problem(&mut file, "BHS before the previous batch's BTS", start)?;
                    }
                    file.batches.push(open);
                }
                current = Some(Batch {
                    header: Some(start..next),
                    ..Batch::default()
                });
            }
            Line::Bts => {
                close_message(&mut current, &mut message);
                let mut batch = current.take().unwrap_or_default();
                if batch.header.is_none() {
                    problem(&mut file, "BTS without BHS", start)?;
                }
                let declared = count_field(&bytes[start..end]);
                check_count(&mut file, declared, batch.messages.len(), start, strict)?;
                batch.trailer = Some(start..next);
                file.batches.push(batch);
            }
            Line::Fhs => {
                if file.file_header.is_some()
                    || message.is_some()
                    || !file.batches.is_empty()
                    || current.is_some()
                {
                    problem(&mut file, "FHS after the start of the file", start)?;
                }
                close_message(&mut current, &mut message);
                file.file_header = Some(start..next);
            }
            Line::Fts => {
                close_message(&mut current, &mut message);
                if let Some(open) = current.take() {
                    if open.header.is_some() {
                        problem(&mut file, "FTS before the batch's BTS", start)?;
                    }
                    file.batches.push(open);
                }
                if file.file_header.is_none() {
                    problem(&mut file, "FTS without FHS", start)?;
                }
                let declared = count_field(&bytes[start..end]);
                let batches = file.batches.iter().filter(|b| b.header.is_some()).count();
                check_count(&mut file, declared, batches, start, strict)?;
                file.file_trailer = Some(start..next);
            }
        }
    }
    close_message(&mut current, &mut message);
    if let Some(open) = current.take() {
        if open.header.is_some() && open.trailer.is_none() {
            problem(&mut file, "batch without BTS", bytes.len())?;
        }
        file.batches.push(open);
    }
    if file.file_header.is_some() && file.file_trailer.is_none() {
        problem(&mut file, "file without FTS", bytes.len())?;
    }
    if file.message_count() == 0 && !file.is_enveloped() {
        return Err(ParseError::new(ParseErrorKind::Empty, 0));
    }
    Ok(file)
}

/// Blank lines outside messages are appended to whatever range precedes them.
fn extend_last(file: &mut BatchFile<'_>, current: &mut Option<Batch>, next: usize) {
    let range = match current {
        Some(b) => b.trailer.as_mut().or(b.header.as_mut()),
        None => file
            .file_trailer
            .as_mut()
            .or_else(|| file.batches.last_mut().and_then(|b| b.trailer.as_mut()))
            .or(file.file_header.as_mut()),
    };
    if let Some(r) = range
        && r.end <= next
    {
        r.end = next;
    }
}

/// BTS-1 / FTS-1: the first field after the segment ID, as a count.
fn count_field(line: &[u8]) -> Option<usize> {
    let fs = *line.get(3)?;
    let field = line[4..].split(|&b| b == fs).next()?;
    std::str::from_utf8(field).ok()?.trim().parse().ok()
}

fn check_count(
    file: &mut BatchFile<'_>,
    declared: Option<usize>,
    actual: usize,
    offset: usize,
    strict: bool,
) -> Result<(), ParseError> {
    match declared {
        Some(declared) if declared != actual => {
            if strict {
                return Err(ParseError::new(
                    ParseErrorKind::MalformedBatch("trailer count disagrees with content"),
                    offset,
                ));
            }
            file.warnings.push(Warning {
                kind: WarningKind::BatchCountMismatch { declared, actual },
                offset,
            });
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Header fields for [`build`]: FHS/BHS-3..-7, -10 and -11 are taken from here.
#[derive(Debug, Clone, Default)]
pub struct BatchHeader {
    /// -3 sending application.
    pub sending_application: String,
    /// -4 sending facility.
    pub sending_facility: String,
    /// -5 receiving application.
    pub receiving_application: String,
    /// -6 receiving facility.
    pub receiving_facility: String,
    /// -7 creation time (an HL7 DTM from the caller: this crate reads no clock).
    pub timestamp: String,
    /// -11 control ID (BHS gets `<id>.1`).
    pub control_id: String,
    /// Whether to wrap the batch in FHS/FTS as well.
    pub file_envelope: bool,
}

/// Builds a batch of `messages` (each given with or without a final CR) with standard
/// delimiters: `[FHS] BHS messages BTS|n [FTS|1]`, CR-terminated.
pub fn build(messages: &[&[u8]], header: &BatchHeader) -> Vec<u8> {
    let d = Delimiters::STANDARD;
    let esc = |s: &str| escape::escape(s.as_bytes(), &d).into_owned();
    let head = |id: &[u8], control: &str| {
        let mut line = id.to_vec();
        line.extend_from_slice(b"|^~\\&|");
        for (i, part) in [
            esc(&header.sending_application),
            esc(&header.sending_facility),
            esc(&header.receiving_application),
            esc(&header.receiving_facility),
            esc(&header.timestamp),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            esc(control),
        ]
        .iter()
        .enumerate()
        {
            if i > 0 {
                line.push(b'|');
            }
            line.extend_from_slice(part);
        }
        while line.last() == Some(&b'|') {
            line.pop();
        }
        line.push(b'\r');
        line
    };
    let mut out = Vec::with_capacity(messages.iter().map(|m| m.len() + 1).sum::<usize>() + 256);
    if header.file_envelope {
        out.extend(head(b"FHS", &header.control_id));
    }
    let batch_id = if header.control_id.is_empty() {
        String::new()
    } else {
        format!("{}.1", header.control_id)
    };
    out.extend(head(b"BHS", &batch_id));
    for m in messages {
        out.extend_from_slice(m);
        if !m.ends_with(b"\r") && !m.ends_with(b"\n") {
            out.push(b'\r');
        }
    }
    out.extend(format!("BTS|{}\r", messages.len()).bytes());
    if header.file_envelope {
        out.extend(b"FTS|1\r");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const M1: &[u8] = b"MSH|^~\\&|A|B|C|D|2020||ADT^A04|1|P|2.5\rPID|1\r";
    const M2: &[u8] = b"MSH|^~\\&|A|B|C|D|2020||ADT^A04|2|P|2.5\rPID|2\r";

    #[test]
    fn build_then_split() {
        let header = BatchHeader {
            control_id: "B1".into(),
            file_envelope: true,
            ..Default::default()
        };
        let bytes = build(&[M1, M2], &header);
        let file = split(&bytes, true).unwrap();
        assert!(file.warnings.is_empty());
        assert_eq!(file.messages().collect::<Vec<_>>(), vec![M1, M2]);
        assert!(file.file_header.is_some() && file.file_trailer.is_some());
        assert_eq!(file.batches.len(), 1);
    }

    #[test]
    fn back_to_back_and_blank_lines() {
        let bytes = [M1, b"\r\n", M2].concat();
        let file = split(&bytes, false).unwrap();
        assert!(!file.is_enveloped());
        let msgs: Vec<_> = file.messages().collect();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs.concat(), bytes);
    }

    #[test]
    fn count_mismatch_and_structure() {
        let bytes = [&b"BHS|^~\\&\r"[..], M1, b"BTS|3\r"].concat();
        let file = split(&bytes, false).unwrap();
        assert_eq!(
            file.warnings[0].kind,
            WarningKind::BatchCountMismatch {
                declared: 3,
                actual: 1
            }
        );
        assert!(split(&bytes, true).is_err());
        let nested = [&b"BHS|^~\\&\r"[..], M1, b"BHS|^~\\&\r", M2, b"BTS|1\r"].concat();
        let file = split(&nested, false).unwrap();
        assert_eq!(file.message_count(), 2);
        assert!(!file.warnings.is_empty());
        assert!(split(b"PID|1\r", false).is_err());
        assert!(split(b"\r\n", false).is_err());
    }
}

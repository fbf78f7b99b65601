//! Building and editing messages: [`MessageBuf`], an owned message whose fields hold their
//! raw (escaped) bytes.
//!
//! Keeping raw field bytes is what makes parse-then-serialize byte-identical: nothing is
//! normalised unless it is edited. Edits at any depth (`PID-5.2`, `OBX[2]-5[3].1.2`) split
//! just the field being edited, change one part, and join it again.

use crate::delim::Delimiters;
use crate::error::PathError;
use crate::escape;
use crate::message::Message;
use crate::path::Path;

/// An owned, editable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageBuf {
    delimiters: Delimiters,
    /// Bytes before MSH (a byte order mark), kept for round trips.
    prefix: Vec<u8>,
    segments: Vec<SegmentBuf>,
}

/// One segment of a [`MessageBuf`]: its field-separated pieces (the ID first) and what
/// follows it (its terminator, and for a parsed message any blank lines after it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentBuf {
    pieces: Vec<Vec<u8>>,
    trailer: Vec<u8>,
}

impl MessageBuf {
    /// A message holding only `MSH|^~\&` (with the given delimiters).
    pub fn new(delimiters: Delimiters) -> Self {
        let msh = SegmentBuf {
            pieces: vec![b"MSH".to_vec(), delimiters.encoding_characters()],
            trailer: b"\r".to_vec(),
        };
        MessageBuf {
            delimiters,
            prefix: Vec::new(),
            segments: vec![msh],
        }
    }

    /// An owned copy of a parsed message; [`MessageBuf::encode`] gives back the same bytes.
    pub fn from_message(msg: &Message<'_>) -> Self {
        let fs = msg.delimiters().field;
        let segments = msg
            .segments()
            .map(|s| SegmentBuf {
                pieces: s
                    .as_bytes()
                    .split(|&b| b == fs)
                    .map(<[u8]>::to_vec)
                    .collect(),
                trailer: s.trailer().to_vec(),
            })
            .collect();
        MessageBuf {
            delimiters: msg.delimiters(),
            prefix: msg.prefix().to_vec(),
            segments,
        }
    }

    /// The delimiters.
    pub fn delimiters(&self) -> Delimiters {
        self.delimiters
    }

    /// The segments.
    pub fn segments(&self) -> &[SegmentBuf] {
        &self.segments
    }

    /// The MSH segment, for setting fields by piece: MSH-n is piece n-1 (see
    /// [`SegmentBuf::field`]).
    pub fn header_mut(&mut self) -> &mut SegmentBuf {
        // Invariant: every constructor creates MSH as the first segment.
        &mut self.segments[0]
    }

    /// The last segment, for setting fields by piece.
    pub fn last_segment_mut(&mut self) -> &mut SegmentBuf {
        // Invariant: there is always MSH, so the vector is never empty.
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }

    /// Appends a segment with this ID, terminated by CR, and returns it for filling in.
    pub fn push_segment(&mut self, id: &str) -> &mut SegmentBuf {
        // A segment that followed a message without a final terminator now needs one.
        if let Some(last) = self.segments.last_mut()
            && last.trailer.is_empty()
        {
            last.trailer.push(b'\r');
        }
        self.segments.push(SegmentBuf {
            pieces: vec![id.as_bytes().to_vec()],
            trailer: b"\r".to_vec(),
        });
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }

    /// Sets the value at `path` to `text`, escaping it. Missing segments are not created
    /// (push them first); missing fields, repetitions and components are.
    pub fn set(&mut self, path: &str, text: &str) -> Result<(), PathError> {
        let escaped = escape::escape(text.as_bytes(), &self.delimiters).into_owned();
        self.set_raw(path, &escaped)
    }

    /// Sets the value at `path` to `raw` bytes as they are (already escaped, or holding
    /// separators on purpose).
    pub fn set_raw(&mut self, path: &str, raw: &[u8]) -> Result<(), PathError> {
        let p = Path::parse(path)?;
        let not_settable = |reason| PathError::NotSettable {
            path: path.to_owned(),
            reason,
        };
        let d = self.delimiters;
        let seg = self
            .segments
            .iter_mut()
            .filter(|s| s.pieces[0] == p.segment())
            .nth(p.occurrence - 1)
            .ok_or_else(|| not_settable("no such segment; push it first"))?;
        let is_msh = seg.pieces[0] == b"MSH";
        let piece = match (is_msh, p.field) {
            (true, 1 | 2) => return Err(not_settable("MSH-1 and MSH-2 follow the delimiters")),
            (true, n) => n - 1,
            (false, n) => n,
        };
        let field = seg.field_mut(piece);
        // Separators from the field level down, and the path's index at each.
        let mut levels: Vec<(u8, usize)> = Vec::new();
        match (p.repetition, p.component) {
            (None, None) => {}
            (rep, comp) => {
                // Without a repetition separator a field is its one repetition.
                match (d.repetition, rep.unwrap_or(1)) {
                    (Some(sep), r) => levels.push((sep, r)),
                    (None, 1) => {}
                    (None, _) => {
                        return Err(not_settable("the message has no repetition separator"));
                    }
                }
                if let Some(c) = comp {
                    levels.push((d.component, c));
                    if let Some(s) = p.subcomponent {
                        let sub = d.subcomponent.ok_or_else(|| {
                            not_settable("the message has no subcomponent separator")
                        })?;
                        levels.push((sub, s));
                    }
                }
            }
        }
        *field = replace_part(field, &levels, raw);
        Ok(())
    }

    /// The message as bytes.
    pub fn encode(&self) -> Vec<u8> {
        let fs = self.delimiters.field;
        let size: usize = self.prefix.len()
            + self
                .segments
                .iter()
                .map(|s| s.pieces.iter().map(|p| p.len() + 1).sum::<usize>() + s.trailer.len())
                .sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&self.prefix);
        for seg in &self.segments {
            for (i, piece) in seg.pieces.iter().enumerate() {
                if i > 0 {
                    out.push(fs);
                }
                out.extend_from_slice(piece);
            }
            out.extend_from_slice(&seg.trailer);
        }
        out
    }
}

impl SegmentBuf {
    /// The segment ID.
    pub fn id(&self) -> &[u8] {
        &self.pieces[0]
    }

    /// Piece `n` (0 is the ID), created empty if missing.
    fn field_mut(&mut self, n: usize) -> &mut Vec<u8> {
        if self.pieces.len() <= n {
            self.pieces.resize(n + 1, Vec::new());
        }
        &mut self.pieces[n]
    }

    /// Sets piece `n` to `raw` bytes (already escaped). Piece `n` is field `n`, except in MSH
    /// where it is field `n + 1` (MSH-1 is the separator). Chains, for builders.
    pub fn field(&mut self, n: usize, raw: &[u8]) -> &mut Self {
        *self.field_mut(n) = raw.to_vec();
        self
    }
}

/// Replaces the part of `raw` at `levels` (separator and 1-based index per level).
fn replace_part(raw: &[u8], levels: &[(u8, usize)], value: &[u8]) -> Vec<u8> {
    let Some(&(sep, index)) = levels.first() else {
        return value.to_vec();
    };
    let mut parts: Vec<&[u8]> = raw.split(|&b| b == sep).collect();
    if parts.len() < index {
        parts.resize(index, &[]);
    }
    let replaced = replace_part(parts[index - 1], &levels[1..], value);
    let mut out = Vec::with_capacity(raw.len() + value.len());
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(sep);
        }
        if i == index - 1 {
            out.extend_from_slice(&replaced);
        } else {
            out.extend_from_slice(part);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_read_back() {
        let mut m = MessageBuf::new(Delimiters::STANDARD);
        m.set("MSH-3", "APP").unwrap();
        m.set("MSH-9.1", "ADT").unwrap();
        m.set("MSH-9.2", "A01").unwrap();
        m.push_segment("PID");
        m.set("PID-5.1", "O'Brien|Smith").unwrap();
        m.set("PID-3[2].1", "456").unwrap();
        m.set("PID-3[2].4.2", "sub").unwrap();
        let bytes = m.encode();
        assert_eq!(
            bytes,
            b"MSH|^~\\&|APP||||||ADT^A01\rPID|||~456^^^&sub||O'Brien\\F\\Smith\r"
        );
        let parsed = Message::parse(&bytes).unwrap();
        assert_eq!(
            parsed.get("PID-5.1").unwrap().unescaped().as_ref(),
            b"O'Brien|Smith"
        );
        assert!(m.set("MSH-2", "x").is_err());
        assert!(m.set("OBX-1", "x").is_err());
    }

    #[test]
    fn round_trip_is_byte_identical() {
        let input = b"\xEF\xBB\xBFMSH|^~\\&|A|B\r\nPID|1||x^y~z||\r\n\r\n";
        let parsed = Message::parse(input).unwrap();
        assert_eq!(MessageBuf::from_message(&parsed).encode(), input);
    }
}

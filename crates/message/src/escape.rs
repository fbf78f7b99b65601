//! HL7 escape sequences.
//!
//! Decoded: `\F\ \S\ \T\ \R\ \E\ \P\` (the delimiters and the truncation character),
//! `\Xhh..\` (raw bytes), `\.br\` (a line break, decoded as LF), `\Cxxyy\` and `\Mxxyy[zz]\`
//! (ISO 2022 character-set switches, decoded to their `ESC` byte sequences so that
//! [`crate::Charset::decode`] can apply them).
//!
//! Kept verbatim, escape characters included, because plain text cannot represent them:
//! highlighting `\H\ \N\`, the other formatting commands `\.sp\ \.in\ \.ti\ \.sk\ \.ce\
//! \.fi\ \.nf\`, local `\Z..\` sequences, and anything unknown or unterminated.
//!
//! Written in `\E\`-style order from the message's own escape character: a message that
//! declares `!` as escape character escapes with `!F!`.

use std::borrow::Cow;

use crate::delim::Delimiters;

const ESC: u8 = 0x1B;

/// How [`escape_with`] writes line breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LineBreaks {
    /// LF becomes `\.br\` (formatted text, FT), CR becomes `\X0D\`.
    #[default]
    Formatted,
    /// LF becomes `\X0A\`, CR becomes `\X0D\`.
    Hex,
}

/// Decodes the escape sequences in `raw`. Borrows when there are none.
pub fn unescape<'a>(raw: &'a [u8], delimiters: &Delimiters) -> Cow<'a, [u8]> {
    let Some(esc) = delimiters.escape else {
        return Cow::Borrowed(raw);
    };
    let Some(first) = memchr::memchr(esc, raw) else {
        return Cow::Borrowed(raw);
    };
    let mut out = Vec::with_capacity(raw.len());
    out.extend_from_slice(&raw[..first]);
    let mut i = first;
    while i < raw.len() {
        let Some(len) = memchr::memchr(esc, &raw[i + 1..]) else {
            // Unterminated: keep the rest as it is.
            out.extend_from_slice(&raw[i..]);
            break;
        };
        let end = i + 1 + len; // index of the closing escape character
        let seq = &raw[i + 1..end];
        if !decode_sequence(seq, delimiters, &mut out) {
            out.extend_from_slice(&raw[i..=end]);
        }
        i = end + 1;
        match memchr::memchr(esc, &raw[i..]) {
            Some(next) => {
                out.extend_from_slice(&raw[i..i + next]);
                i += next;
            }
            None => {
                out.extend_from_slice(&raw[i..]);
                break;
            }
        }
    }
    Cow::Owned(out)
}

/// Appends the decoding of one sequence (between the escape characters) to `out`; `false`
/// when it is to be kept verbatim.
fn decode_sequence(seq: &[u8], d: &Delimiters, out: &mut Vec<u8>) -> bool {
    let single = match seq {
        b"F" => Some(d.field),
        b"S" => Some(d.component),
        b"T" => d.subcomponent,
        b"R" => d.repetition,
        b"E" => d.escape,
        b"P" => d.truncation,
        b".br" => Some(b'\n'),
        _ => None,
    };
    if let Some(b) = single {
        out.push(b);
        return true;
    }
    match seq.split_first() {
        Some((b'X', hex)) if !hex.is_empty() => push_hex(hex, &[], out),
        Some((b'C', hex)) if hex.len() == 4 => push_hex(hex, &[ESC], out),
        Some((b'M', hex)) if hex.len() == 4 || hex.len() == 6 => push_hex(hex, &[ESC], out),
        _ => false,
    }
}

fn push_hex(hex: &[u8], prefix: &[u8], out: &mut Vec<u8>) -> bool {
    if !hex.len().is_multiple_of(2) {
        return false;
    }
    let mut bytes = prefix.to_vec();
    for pair in hex.chunks_exact(2) {
        match (hex_val(pair[0]), hex_val(pair[1])) {
            (Some(h), Some(l)) => bytes.push(h << 4 | l),
            _ => return false,
        }
    }
    out.extend_from_slice(&bytes);
    true
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Escapes `data` for use as one value (a subcomponent, or a component, repetition or field
/// with no structure below it). Borrows when nothing needs escaping.
///
/// A message without an escape character (MSH-2 left it out) cannot carry its delimiters in
/// data: they are replaced by spaces there, and the caller should build with
/// [`Delimiters::STANDARD`] instead when it can.
pub fn escape<'a>(data: &'a [u8], delimiters: &Delimiters) -> Cow<'a, [u8]> {
    escape_with(data, delimiters, LineBreaks::default())
}

/// [`escape`] with a choice of how line breaks are written.
pub fn escape_with<'a>(data: &'a [u8], d: &Delimiters, line_breaks: LineBreaks) -> Cow<'a, [u8]> {
    let needs = |b: u8| d.is_special(b) || b == b'\r' || b == b'\n' || b == ESC;
    let Some(first) = data.iter().position(|&b| needs(b)) else {
        return Cow::Borrowed(data);
    };
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&data[..first]);
    let Some(e) = d.escape else {
        out.extend(
            data[first..]
                .iter()
                .map(|&b| if needs(b) { b' ' } else { b }),
        );
        return Cow::Owned(out);
    };
    let push_seq = |out: &mut Vec<u8>, body: &[u8]| {
        out.push(e);
        out.extend_from_slice(body);
        out.push(e);
    };
    let mut i = first;
    while i < data.len() {
        let b = data[i];
        i += 1;
        if !needs(b) {
            out.push(b);
            continue;
        }
        let code: &[u8] = match b {
            _ if b == d.field => b"F",
            _ if b == d.component => b"S",
            _ if Some(b) == d.subcomponent => b"T",
            _ if Some(b) == d.repetition => b"R",
            _ if Some(b) == d.escape => b"E",
            _ if Some(b) == d.truncation => b"P",
            // `.` may itself be a delimiter in an unusual set; then \.br\ cannot be written.
            b'\n' if line_breaks == LineBreaks::Formatted && !d.is_special(b'.') => b".br",
            b'\n' => b"X0A",
            b'\r' => b"X0D",
            _ => {
                // ESC: a character-set switch becomes \C..\ (ESC + 2 bytes) or \M..\
                // (ESC $ + 1 or 2 bytes); a lone ESC becomes \X1B\.
                let rest = &data[i..];
                let take = match rest {
                    [b'$', b'(' | b')' | b'*' | b'+', _, ..] => 3,
                    [b'$', _, ..] => 2,
                    [b'(' | b')' | b'*' | b'+' | b'-' | b'.' | b'/', _, ..] => 2,
                    _ => 0,
                };
                let mut body = Vec::with_capacity(7);
                body.push(match take {
                    0 => b'X',
                    _ if rest[0] == b'$' => b'M',
                    _ => b'C',
                });
                if take == 0 {
                    body.extend_from_slice(b"1B");
                }
                for &x in &rest[..take] {
                    body.extend_from_slice(format!("{x:02X}").as_bytes());
                }
                i += take;
                push_seq(&mut out, &body);
                continue;
            }
        };
        push_seq(&mut out, code);
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: Delimiters = Delimiters::STANDARD;

    fn un(s: &str) -> Vec<u8> {
        unescape(s.as_bytes(), &D).into_owned()
    }

    #[test]
    fn decodes_every_sequence() {
        assert_eq!(un(r"a\F\b\S\c\T\d\R\e\E\f"), b"a|b^c&d~e\\f");
        assert_eq!(un(r"\X0D0A\x\X41\"), b"\r\nxA");
        assert_eq!(un(r"line1\.br\line2"), b"line1\nline2");
        assert_eq!(un(r"\C2842\abc\M2442\"), b"\x1b(Babc\x1b$B");
        assert_eq!(un(r"\M242844\"), b"\x1b$(D");
        let d = Delimiters {
            truncation: Some(b'#'),
            ..D
        };
        assert_eq!(unescape(br"x\P\", &d).as_ref(), b"x#");
    }

    #[test]
    fn keeps_formatting_and_broken_sequences_verbatim() {
        for s in [
            r"\H\bold\N\",
            r"a\.sp2\b",
            r"\Zlocal\",
            r"\Q\",
            r"\X4\",
            r"\XZZ\",
            r"tail\F",
            r"\\",
        ] {
            assert_eq!(un(s), s.as_bytes(), "{s}");
        }
        assert!(matches!(unescape(b"plain", &D), Cow::Borrowed(_)));
    }

    #[test]
    fn escapes() {
        assert_eq!(
            escape(b"a|b^c&d~e\\f", &D).as_ref(),
            br"a\F\b\S\c\T\d\R\e\E\f"
        );
        assert_eq!(escape(b"1\r\n2", &D).as_ref(), br"1\X0D\\.br\2");
        assert_eq!(escape_with(b"\n", &D, LineBreaks::Hex).as_ref(), br"\X0A\");
        assert_eq!(
            escape(b"\x1b$Bxx\x1b(B\x1b", &D).as_ref(),
            br"\M2442\xx\C2842\\X1B\"
        );
        assert!(matches!(escape(b"plain", &D), Cow::Borrowed(_)));
        let none = Delimiters { escape: None, ..D };
        assert_eq!(escape(b"a|b", &none).as_ref(), b"a b");
    }

    fn delimiter_set() -> impl Strategy<Value = Delimiters> {
        let pool: Vec<u8> = (0x21u8..0x7F)
            .filter(|b| !b.is_ascii_alphanumeric())
            .collect();
        proptest::sample::subsequence(pool, 6)
            .prop_shuffle()
            .prop_map(|c| Delimiters {
                field: c[0],
                component: c[1],
                repetition: Some(c[2]),
                escape: Some(c[3]),
                subcomponent: Some(c[4]),
                truncation: Some(c[5]),
            })
    }

    proptest! {
        #[test]
        fn unescape_inverts_escape(data in proptest::collection::vec(any::<u8>(), 0..64), d in delimiter_set()) {
            let escaped = escape(&data, &d);
            // No delimiter or line break survives escaping, except inside sequences.
            prop_assert!(!escaped.iter().any(|&b| b == d.field || b == d.component || b == b'\r' || b == b'\n'));
            let back = unescape(&escaped, &d);
            prop_assert_eq!(back.as_ref(), &data[..]);
        }

        #[test]
        fn unescape_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = unescape(&raw, &D);
        }
    }
}

//! Character sets: MSH-18 names to decoders.
//!
//! Decoding never changes the message's bytes; it only turns a value's bytes into text.
//! ISO-8859-x is decoded as ISO-8859-x: `encoding_rs` follows the WHATWG rule that maps the
//! labels `iso-8859-1` and `iso-8859-9` to windows-1252 and windows-1254, which differ in
//! 0x80..=0x9F, so those two are done here by hand. windows-1252 is available, but only when
//! asked for (HL7 has no name for it; it is the usual "what the sender really meant").
//!
//! Only sets whose bytes never collide with delimiter bytes are accepted: ASCII, ISO-8859-x
//! and UTF-8. Shift_JIS, Big5, GB 18030 and UTF-16/32 put ASCII-range bytes inside
//! multi-byte characters, so splitting on `|` and `^` would cut characters in half: those
//! names are refused with [`CharsetError::NotByteSafe`] rather than decoded wrongly.

use std::borrow::Cow;
use std::fmt;

const ESC: u8 = 0x1B;

/// A character set Causeway can decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Charset {
    /// US-ASCII (`ASCII`, `ISO IR6`).
    Ascii,
    /// ISO-8859-n, n in 1..=9 or 15 (`8859/1`, `ISO IR100`, ...).
    Iso8859(u8),
    /// UTF-8 (`UNICODE UTF-8`, `ISO IR192`).
    Utf8,
    /// windows-1252: never declared by HL7 names; used when asked for, as a fallback.
    Windows1252,
}

/// Why an MSH-18 value or charset name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CharsetError {
    /// The name is not one Causeway knows.
    #[error(
        "unknown character set {0:?}: expected an HL7 table 0211 name such as ASCII, 8859/1 or UNICODE UTF-8"
    )]
    Unknown(String),
    /// The set is known but its bytes can collide with delimiters (multi-byte sets).
    #[error(
        "character set {0:?} is not supported: its multi-byte characters can contain delimiter bytes"
    )]
    NotByteSafe(String),
}

/// A byte sequence that is not valid in the character set it was decoded with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {charset} at byte {offset} of the value")]
pub struct DecodeError {
    /// The set used.
    pub charset: Charset,
    /// Offset of the first offending byte within the value.
    pub offset: usize,
}

/// Text that cannot be written in a character set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("character {character:?} cannot be written in {charset}")]
pub struct EncodeError {
    /// The set asked for.
    pub charset: Charset,
    /// The first character that has no encoding.
    pub character: char,
}

impl fmt::Display for Charset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hl7_name())
    }
}

impl std::str::FromStr for Charset {
    type Err = CharsetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Charset::from_hl7_name(s)
    }
}

impl Charset {
    /// Reads an HL7 table 0211 name (`8859/1`, `UNICODE UTF-8`, `ISO IR100`, ...), also the
    /// common labels `UTF-8`, `ISO-8859-1`, `US-ASCII` and `windows-1252`. Case and the
    /// space/underscore in `ISO IR` / `ISO_IR` do not matter.
    pub fn from_hl7_name(name: &str) -> Result<Charset, CharsetError> {
        let norm: String = name
            .trim()
            .chars()
            .map(|c| {
                if c == '_' {
                    ' '
                } else {
                    c.to_ascii_uppercase()
                }
            })
            .collect();
        let iso = |n: &str| {
            n.parse::<u8>()
                .ok()
                .filter(|n| (1..=9).contains(n) || *n == 15)
        };
        let c = match norm.as_str() {
            "ASCII" | "US-ASCII" | "ISO IR6" | "ISO IR 6" => Charset::Ascii,
            "UNICODE UTF-8" | "UTF-8" | "UTF8" | "ISO IR192" | "ISO IR 192" => Charset::Utf8,
            "WINDOWS-1252" | "CP1252" => Charset::Windows1252,
            "ISO IR100" | "ISO IR 100" => Charset::Iso8859(1),
            "ISO IR101" | "ISO IR 101" => Charset::Iso8859(2),
            "ISO IR109" | "ISO IR 109" => Charset::Iso8859(3),
            "ISO IR110" | "ISO IR 110" => Charset::Iso8859(4),
            "ISO IR144" | "ISO IR 144" => Charset::Iso8859(5),
            "ISO IR127" | "ISO IR 127" => Charset::Iso8859(6),
            "ISO IR126" | "ISO IR 126" => Charset::Iso8859(7),
            "ISO IR138" | "ISO IR 138" => Charset::Iso8859(8),
            "ISO IR148" | "ISO IR 148" => Charset::Iso8859(9),
            "UNICODE" | "UNICODE UTF-16" | "UNICODE UTF-32" | "GB 18030-2000" | "BIG-5"
            | "CNS 11643-1992" | "KS X 1001" | "ISO IR87" | "ISO IR159" | "ISO IR 87"
            | "ISO IR 159" | "SHIFT JIS" | "SHIFT_JIS" => {
                return Err(CharsetError::NotByteSafe(name.to_owned()));
            }
            other => {
                let n = other
                    .strip_prefix("8859/")
                    .or_else(|| other.strip_prefix("ISO-8859-"))
                    .or_else(|| other.strip_prefix("ISO8859-"))
                    .and_then(iso);
                match n {
                    Some(n) => Charset::Iso8859(n),
                    None => return Err(CharsetError::Unknown(name.to_owned())),
                }
            }
        };
        Ok(c)
    }

    pub(crate) fn from_hl7_name_bytes(name: &[u8]) -> Result<Charset, CharsetError> {
        match std::str::from_utf8(name) {
            Ok(s) => Charset::from_hl7_name(s),
            Err(_) => Err(CharsetError::Unknown(
                String::from_utf8_lossy(name).into_owned(),
            )),
        }
    }

    /// The HL7 name, as written in MSH-18.
    pub fn hl7_name(&self) -> &'static str {
        match self {
            Charset::Ascii => "ASCII",
            Charset::Utf8 => "UNICODE UTF-8",
            Charset::Windows1252 => "windows-1252",
            Charset::Iso8859(n) => match n {
                1 => "8859/1",
                2 => "8859/2",
                3 => "8859/3",
                4 => "8859/4",
                5 => "8859/5",
                6 => "8859/6",
                7 => "8859/7",
                8 => "8859/8",
                9 => "8859/9",
                _ => "8859/15",
            },
        }
    }

    /// The `charset=` label for MIME types (HL7 over HTTP).
    pub fn mime_name(&self) -> &'static str {
        match self {
            Charset::Ascii => "US-ASCII",
            Charset::Utf8 => "UTF-8",
            Charset::Windows1252 => "windows-1252",
            Charset::Iso8859(n) => match n {
                1 => "ISO-8859-1",
                2 => "ISO-8859-2",
                3 => "ISO-8859-3",
                4 => "ISO-8859-4",
                5 => "ISO-8859-5",
                6 => "ISO-8859-6",
                7 => "ISO-8859-7",
                8 => "ISO-8859-8",
                9 => "ISO-8859-9",
                _ => "ISO-8859-15",
            },
        }
    }

    /// The encoding_rs decoder for single-byte sets it gets right.
    fn encoding(&self) -> Option<&'static encoding_rs::Encoding> {
        match self {
            Charset::Windows1252 => Some(encoding_rs::WINDOWS_1252),
            // 8859-1 and 8859-9 are done by hand (see the module docs), on top of 1252/1254.
            Charset::Iso8859(1) => Some(encoding_rs::WINDOWS_1252),
            Charset::Iso8859(9) => Some(encoding_rs::WINDOWS_1254),
            Charset::Iso8859(n) => {
                encoding_rs::Encoding::for_label(format!("iso-8859-{n}").as_bytes())
            }
            Charset::Ascii | Charset::Utf8 => None,
        }
    }

    /// Decodes bytes to text. Borrows when the bytes are already valid UTF-8 text of the
    /// same meaning. ISO 2022 switches (`ESC ( B`, `ESC - A`, `ESC $ B`, from `\C..\` and
    /// `\M..\` escapes) are applied.
    pub fn decode<'b>(&self, bytes: &'b [u8]) -> Result<Cow<'b, str>, DecodeError> {
        if memchr::memchr(ESC, bytes).is_some() {
            return iso2022::decode(bytes, *self).map(Cow::Owned);
        }
        self.decode_plain(bytes)
    }

    fn decode_plain<'b>(&self, bytes: &'b [u8]) -> Result<Cow<'b, str>, DecodeError> {
        let err = |offset| DecodeError {
            charset: *self,
            offset,
        };
        match self {
            Charset::Ascii => match bytes.iter().position(|b| !b.is_ascii()) {
                Some(offset) => Err(err(offset)),
                // Invariant: all bytes are ASCII, hence valid UTF-8.
                None => Ok(Cow::Borrowed(
                    std::str::from_utf8(bytes).map_err(|e| err(e.valid_up_to()))?,
                )),
            },
            Charset::Utf8 => std::str::from_utf8(bytes)
                .map(Cow::Borrowed)
                .map_err(|e| err(e.valid_up_to())),
            _ if bytes.is_ascii() => Ok(Cow::Borrowed(
                std::str::from_utf8(bytes).map_err(|e| err(e.valid_up_to()))?,
            )),
            Charset::Iso8859(1) => Ok(Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect())),
            _ => {
                let Some(encoding) = self.encoding() else {
                    return Err(err(0));
                };
                let (text, _) = encoding.decode_without_bom_handling(bytes);
                // Single-byte sets: the n-th character came from the n-th byte.
                let mut out = String::with_capacity(text.len());
                for (offset, (c, &b)) in text.chars().zip(bytes).enumerate() {
                    if c == char::REPLACEMENT_CHARACTER {
                        return Err(err(offset));
                    }
                    // 8859-9's C1 range is controls, not windows-1254's punctuation.
                    let c = if *self == Charset::Iso8859(9) && (0x80..=0x9F).contains(&b) {
                        char::from(b)
                    } else {
                        c
                    };
                    out.push(c);
                }
                Ok(Cow::Owned(out))
            }
        }
    }

    /// Encodes text in this set.
    pub fn encode<'s>(&self, text: &'s str) -> Result<Cow<'s, [u8]>, EncodeError> {
        let err = |character| EncodeError {
            charset: *self,
            character,
        };
        if text.is_ascii() || *self == Charset::Utf8 {
            return Ok(Cow::Borrowed(text.as_bytes()));
        }
        match self {
            Charset::Ascii => Err(err(text.chars().find(|c| !c.is_ascii()).unwrap_or('?'))),
            Charset::Iso8859(1) => text
                .chars()
                .map(|c| u8::try_from(u32::from(c)).map_err(|_| err(c)))
                .collect::<Result<Vec<u8>, _>>()
                .map(Cow::Owned),
            _ => {
                let mut out = Vec::with_capacity(text.len());
                for c in text.chars() {
                    if *self == Charset::Iso8859(9) && ('\u{80}'..='\u{9F}').contains(&c) {
                        out.push(c as u8);
                        continue;
                    }
                    let Some(encoding) = self.encoding() else {
                        return Err(err(c));
                    };
                    let mut buf = [0u8; 4];
                    let (bytes, _, unmappable) = encoding.encode(c.encode_utf8(&mut buf));
                    if unmappable || bytes.len() != 1 {
                        return Err(err(c));
                    }
                    out.push(bytes[0]);
                }
                Ok(Cow::Owned(out))
            }
        }
    }
}

/// Text decoding with an override and a fallback, as configured per channel or on the
/// command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextDecoding {
    /// Use this set whatever MSH-18 says.
    pub override_charset: Option<Charset>,
    /// Used when MSH-18 is empty. HL7 says ASCII; UTF-8 is the default here because it reads
    /// every ASCII byte the same and also what senders send without declaring it.
    pub default_charset: Charset,
    /// Tried when the chosen set fails (typically [`Charset::Windows1252`]).
    pub fallback: Option<Charset>,
}

impl Default for TextDecoding {
    fn default() -> Self {
        TextDecoding {
            override_charset: None,
            default_charset: Charset::Utf8,
            fallback: None,
        }
    }
}

impl TextDecoding {
    /// The set to use for a message declaring `declared` in MSH-18.
    pub fn choose(&self, declared: Option<Charset>) -> Charset {
        self.override_charset
            .or(declared)
            .unwrap_or(self.default_charset)
    }

    /// Decodes with `charset`, then the fallback.
    pub fn decode<'b>(
        &self,
        charset: Charset,
        bytes: &'b [u8],
    ) -> Result<Cow<'b, str>, DecodeError> {
        match (charset.decode(bytes), self.fallback) {
            (Err(_), Some(fallback)) if fallback != charset => fallback.decode(bytes),
            (result, _) => result,
        }
    }
}

/// ISO 2022 character-set switching, as HL7's `\C..\` and `\M..\` escapes produce.
mod iso2022 {
    use super::{Charset, DecodeError, ESC};

    /// Decodes `bytes` in which ESC sequences switch sets: `ESC ( B`/`ESC ( J` back to the
    /// base set, `ESC - F` (G1 96-sets: ISO-8859 right halves), and `ESC $ ...` /
    /// `ESC ( I` runs, handed to the ISO-2022-JP decoder.
    pub(super) fn decode(bytes: &[u8], base: Charset) -> Result<String, DecodeError> {
        let mut out = String::with_capacity(bytes.len());
        let mut current = Mode::Base;
        let mut run_start = 0;
        let mut i = 0;
        let flush =
            |out: &mut String, mode: Mode, run: &[u8], offset: usize| -> Result<(), DecodeError> {
                let fix = |e: DecodeError| DecodeError {
                    offset: e.offset + offset,
                    ..e
                };
                match mode {
                    Mode::Base => out.push_str(&base.decode_plain(run).map_err(fix)?),
                    Mode::Right(set) => {
                        for (k, &b) in run.iter().enumerate() {
                            if b < 0x80 {
                                out.push(char::from(b));
                            } else {
                                out.push_str(
                                    &set.decode_plain(&[b])
                                        .map_err(|e| fix(DecodeError { offset: k, ..e }))?,
                                );
                            }
                        }
                    }
                    Mode::Jis(designation) => {
                        let mut buf = designation.to_vec();
                        buf.extend_from_slice(run);
                        let (text, had_errors) =
                            encoding_rs::ISO_2022_JP.decode_without_bom_handling(&buf);
                        if had_errors {
                            return Err(DecodeError {
                                charset: base,
                                offset,
                            });
                        }
                        out.push_str(&text);
                    }
                }
                Ok(())
            };
        while i < bytes.len() {
            if bytes[i] != ESC {
                i += 1;
                continue;
            }
            let (mode, len) = match &bytes[i + 1..] {
                [b'(', b'B' | b'J', ..] => (Mode::Base, 3),
                [b'(', b'I', ..] => (Mode::Jis(&[ESC, b'(', b'I']), 3),
                [b'$', b'@', ..] => (Mode::Jis(&[ESC, b'$', b'@']), 3),
                [b'$', b'B', ..] => (Mode::Jis(&[ESC, b'$', b'B']), 3),
                [b'-', f, ..] => match right_half(*f) {
                    Some(set) => (Mode::Right(set), 3),
                    None => {
                        return Err(DecodeError {
                            charset: base,
                            offset: i,
                        });
                    }
                },
                _ => {
                    return Err(DecodeError {
                        charset: base,
                        offset: i,
                    });
                }
            };
            flush(&mut out, current, &bytes[run_start..i], run_start)?;
            current = mode;
            i += len;
            run_start = i;
        }
        flush(&mut out, current, &bytes[run_start..], run_start)?;
        Ok(out)
    }

    #[derive(Clone, Copy)]
    enum Mode {
        Base,
        Right(Charset),
        Jis(&'static [u8]),
    }

    /// The ISO-8859 part a G1 96-set final byte designates.
    fn right_half(f: u8) -> Option<Charset> {
        let n = match f {
            b'A' => 1,
            b'B' => 2,
            b'C' => 3,
            b'D' => 4,
            b'L' => 5,
            b'G' => 6,
            b'F' => 7,
            b'H' => 8,
            b'M' => 9,
            b'b' => 15,
            _ => return None,
        };
        Some(Charset::Iso8859(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(Charset::from_hl7_name("8859/1"), Ok(Charset::Iso8859(1)));
        assert_eq!(Charset::from_hl7_name("unicode utf-8"), Ok(Charset::Utf8));
        assert_eq!(
            Charset::from_hl7_name("ISO_IR 100"),
            Ok(Charset::Iso8859(1))
        );
        assert_eq!(Charset::from_hl7_name("8859/15"), Ok(Charset::Iso8859(15)));
        assert!(matches!(
            Charset::from_hl7_name("8859/10"),
            Err(CharsetError::Unknown(_))
        ));
        assert!(matches!(
            Charset::from_hl7_name("code1"),
            Err(CharsetError::Unknown(_))
        ));
        assert!(matches!(
            Charset::from_hl7_name("BIG-5"),
            Err(CharsetError::NotByteSafe(_))
        ));
        for c in [
            Charset::Ascii,
            Charset::Utf8,
            Charset::Iso8859(1),
            Charset::Iso8859(5),
            Charset::Iso8859(15),
        ] {
            assert_eq!(Charset::from_hl7_name(c.hl7_name()), Ok(c));
        }
    }

    #[test]
    fn true_iso_8859_1_and_9() {
        // 0x80 is a C1 control in ISO-8859-1 but the euro sign in windows-1252.
        assert_eq!(Charset::Iso8859(1).decode(b"\x80\xe9").unwrap(), "\u{80}é");
        assert_eq!(Charset::Windows1252.decode(b"\x80\xe9").unwrap(), "€é");
        assert_eq!(Charset::Iso8859(9).decode(b"\x80\xfd").unwrap(), "\u{80}ı");
        assert_eq!(
            Charset::Iso8859(1).encode("é\u{80}").unwrap().as_ref(),
            b"\xe9\x80"
        );
        assert_eq!(Charset::Iso8859(9).encode("ı").unwrap().as_ref(), b"\xfd");
        assert!(Charset::Iso8859(1).encode("€").is_err());
    }

    #[test]
    fn decode_errors_have_offsets() {
        assert_eq!(Charset::Ascii.decode(b"ab\xe9").unwrap_err().offset, 2);
        assert_eq!(Charset::Utf8.decode(b"abc\xff").unwrap_err().offset, 3);
        // 0xA5 is unassigned in ISO-8859-3.
        assert_eq!(Charset::Iso8859(3).decode(b"a\xa5").unwrap_err().offset, 1);
        assert_eq!(Charset::Iso8859(5).decode(b"\xb6").unwrap(), "Ж");
    }

    #[test]
    fn iso2022_switches() {
        // \C2D41\ designates ISO-8859-1's right half; \C2842\ returns to ASCII.
        assert_eq!(Charset::Ascii.decode(b"a\x1b-A\xe9\x1b(Bz").unwrap(), "aéz");
        // \M2442\: JIS X 0208 ("日本" = 0x467C 0x4B5C).
        assert_eq!(
            Charset::Ascii.decode(b"\x1b$BF|K\\\x1b(B!").unwrap(),
            "日本!"
        );
        assert!(Charset::Ascii.decode(b"\x1b%G").is_err());
    }

    #[test]
    fn fallback() {
        let d = TextDecoding {
            fallback: Some(Charset::Windows1252),
            ..TextDecoding::default()
        };
        assert_eq!(d.choose(None), Charset::Utf8);
        assert_eq!(d.decode(Charset::Utf8, b"caf\xe9").unwrap(), "café");
        assert!(
            TextDecoding::default()
                .decode(Charset::Utf8, b"caf\xe9")
                .is_err()
        );
    }
}

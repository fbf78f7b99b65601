//! Delimiters, read from MSH-1 and MSH-2 (or FHS/BHS-1 and -2 of a batch header).

use crate::error::{ParseErrorKind, WarningKind};

/// The separators and escape character a message declares in MSH-1 and MSH-2.
///
/// Standard set: `|^~\&`. Any distinct printable non-alphanumeric characters are allowed
/// (`!$r?@` style sets occur in the wild). v2.7 adds a fifth, the truncation character (`#`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Delimiters {
    /// MSH-1, between fields.
    pub field: u8,
    /// Between components (usually `^`).
    pub component: u8,
    /// Between repetitions (usually `~`); `None` when MSH-2 left it out.
    pub repetition: Option<u8>,
    /// Starts and ends an escape sequence (usually `\`); `None` when MSH-2 left it out.
    pub escape: Option<u8>,
    /// Between subcomponents (usually `&`); `None` when MSH-2 left it out.
    pub subcomponent: Option<u8>,
    /// v2.7 truncation character (usually `#`).
    pub truncation: Option<u8>,
}

impl Default for Delimiters {
    fn default() -> Self {
        Self::STANDARD
    }
}

impl Delimiters {
    /// `|^~\&`, the set nearly everyone uses.
    pub const STANDARD: Delimiters = Delimiters {
        field: b'|',
        component: b'^',
        repetition: Some(b'~'),
        escape: Some(b'\\'),
        subcomponent: Some(b'&'),
        truncation: None,
    };

    /// The encoding characters as written in MSH-2, in their standard order.
    pub fn encoding_characters(&self) -> Vec<u8> {
        let mut out = vec![self.component];
        out.extend(self.repetition);
        out.extend(self.escape);
        out.extend(self.subcomponent);
        out.extend(self.truncation);
        out
    }

    /// Whether `b` is one of the delimiters (or the escape or truncation character).
    pub fn is_special(&self, b: u8) -> bool {
        b == self.field
            || b == self.component
            || Some(b) == self.repetition
            || Some(b) == self.escape
            || Some(b) == self.subcomponent
            || Some(b) == self.truncation
    }

    /// Reads MSH-2's bytes. `lenient` repairs the malformed sets seen in real traffic
    /// (a doubled escape character, three characters with one role missing) and returns a
    /// warning saying so; strict mode refuses them.
    pub(crate) fn from_encoding_characters(
        field: u8,
        enc: &[u8],
        lenient: bool,
    ) -> Result<(Delimiters, Option<WarningKind>), ParseErrorKind> {
        let invalid = |reason| ParseErrorKind::InvalidEncodingCharacters { reason };
        if !is_valid_separator(field) {
            return Err(ParseErrorKind::InvalidFieldSeparator(char::from(field)));
        }
        if enc.iter().any(|&b| !b.is_ascii_graphic()) {
            return Err(invalid("a space or control character"));
        }
        let mut warning = None;
        if enc.iter().any(|b| b.is_ascii_alphanumeric()) {
            // Seen in the wild (`$r?@`): legal to parse, but every such letter in data is
            // read as a separator, so strict mode refuses it.
            if !lenient {
                return Err(invalid("a letter or digit"));
            }
            warning = Some(WarningKind::AlphanumericEncodingCharacters);
        }
        let mut chars: Vec<u8> = enc.to_vec();
        // `^~\\&`: an escape character doubled by a tool that escaped the backslash.
        if lenient && chars.len() == 5 && has_duplicates(&chars) {
            chars.dedup();
            if chars.len() == 4 {
                warning = Some(WarningKind::RepairedEncodingCharacters("doubled character"));
            }
        }
        if has_duplicates(&chars) || chars.contains(&field) {
            return Err(invalid("the same character is used for two roles"));
        }
        let d = match chars.len() {
            4 | 5 => Delimiters {
                field,
                component: chars[0],
                repetition: Some(chars[1]),
                escape: Some(chars[2]),
                subcomponent: Some(chars[3]),
                truncation: chars.get(4).copied(),
            },
            1..=3 if lenient => {
                warning = Some(WarningKind::RepairedEncodingCharacters(
                    "fewer than four encoding characters; roles assigned by convention",
                ));
                assign_by_convention(field, &chars)
            }
            0 => return Err(invalid("MSH-2 is empty")),
            1..=3 => return Err(invalid("fewer than four characters")),
            _ => return Err(invalid("more than five characters")),
        };
        Ok((d, warning))
    }
}

/// For a short MSH-2 (`^~&`, `^\&`, `^~}`): a standard character takes its standard role,
/// others fill the remaining roles in MSH-2 order. What is left has no character.
fn assign_by_convention(field: u8, chars: &[u8]) -> Delimiters {
    // Roles in MSH-2 order: component, repetition, escape, subcomponent.
    const STANDARD: [u8; 4] = [b'^', b'~', b'\\', b'&'];
    let mut roles: [Option<u8>; 4] = [None; 4];
    let mut others = Vec::new();
    for &c in chars {
        match STANDARD.iter().position(|&s| s == c) {
            Some(role) if roles[role].is_none() => roles[role] = Some(c),
            _ => others.push(c),
        }
    }
    // Unknown characters fill the subcomponent role before the escape role: a short MSH-2
    // nearly always lost its escape character (`^~&`), and data uses subcomponents far more
    // than escapes (`^~}` next to a sibling message's `^~\}`).
    for c in others {
        if let Some(&role) = [0, 1, 3, 2].iter().find(|&&r| roles[r].is_none()) {
            roles[role] = Some(c);
        }
    }
    // Every message needs a component separator: when MSH-2 gave none, take the first
    // conventional character that is not already in use (the field separator may be `^`).
    let component = roles[0].unwrap_or_else(|| {
        b"^~\\&#$%*!"
            .iter()
            .copied()
            .find(|c| *c != field && !chars.contains(c))
            .unwrap_or(b'^')
    });
    Delimiters {
        field,
        component,
        repetition: roles[1],
        escape: roles[2],
        subcomponent: roles[3],
        truncation: None,
    }
}

fn has_duplicates(chars: &[u8]) -> bool {
    chars
        .iter()
        .enumerate()
        .any(|(i, c)| chars[i + 1..].contains(c))
}

/// Delimiters must be printable, non-alphanumeric ASCII.
fn is_valid_separator(b: u8) -> bool {
    b.is_ascii_graphic() && !b.is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(enc: &str, lenient: bool) -> Result<(Delimiters, Option<WarningKind>), ParseErrorKind> {
        Delimiters::from_encoding_characters(b'|', enc.as_bytes(), lenient)
    }

    #[test]
    fn standard_and_truncation() {
        assert_eq!(read("^~\\&", false).unwrap().0, Delimiters::STANDARD);
        let d = read("^~\\&#", false).unwrap().0;
        assert_eq!(d.truncation, Some(b'#'));
    }

    #[test]
    fn doubled_backslash_is_repaired_only_when_lenient() {
        let (d, w) = read("^~\\\\&", true).unwrap();
        assert_eq!(d, Delimiters::STANDARD);
        assert!(w.is_some());
        assert!(read("^~\\\\&", false).is_err());
    }

    #[test]
    fn short_sets_by_convention() {
        let d = read("^~&", true).unwrap().0;
        assert_eq!(
            (d.repetition, d.escape, d.subcomponent),
            (Some(b'~'), None, Some(b'&'))
        );
        let d = read("^~}", true).unwrap().0;
        assert_eq!((d.escape, d.subcomponent), (None, Some(b'}')));
        let d = read("^\\&", true).unwrap().0;
        assert_eq!(
            (d.repetition, d.escape, d.subcomponent),
            (None, Some(b'\\'), Some(b'&'))
        );
        assert!(read("^~&", false).is_err());
    }

    #[test]
    fn a_missing_component_separator_never_collides() {
        // Found by fuzzing: field separator `^` and MSH-2 `~`.
        let d = Delimiters::from_encoding_characters(b'^', b"~", true)
            .unwrap()
            .0;
        assert_ne!(d.component, d.field);
        assert_ne!(Some(d.component), d.repetition);
    }

    #[test]
    fn duplicates_and_bad_characters_are_refused() {
        assert!(read("^&&^", true).is_err());
        assert!(read("^~a&", false).is_err());
        assert_eq!(read("$r?@", true).unwrap().0.repetition, Some(b'r'));
        assert!(read("^~ &", true).is_err());
        assert!(read("^~|&", true).is_err());
        assert!(Delimiters::from_encoding_characters(b'A', b"^~\\&", true).is_err());
    }
}

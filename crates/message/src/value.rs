//! Values read from a message: a field, a repetition, a component or a subcomponent.

use std::borrow::Cow;

use crate::charset::{Charset, DecodeError};
use crate::delim::Delimiters;
use crate::escape;

/// Which level of the hierarchy a [`Value`] is at; it decides what splits it further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Field,
    Repetition,
    Component,
    Subcomponent,
    /// MSH-1 and MSH-2: never split.
    Leaf,
}

/// Whether a value is there, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Not in the message at all (beyond the last field, a missing segment, ...).
    Absent,
    /// Present but empty (`||`).
    Empty,
    /// The HL7 null `""`: "delete this value" to the receiver.
    Null,
    /// Present with content.
    Present,
}

/// A value at some level of a message, borrowing the message's bytes. Raw: escapes are
/// still in; [`Value::unescaped`] and [`Value::text`] decode them.
#[derive(Debug, Clone, Copy)]
pub struct Value<'a> {
    raw: Option<&'a [u8]>,
    delimiters: Delimiters,
    level: Level,
}

impl<'a> Value<'a> {
    pub(crate) fn new(raw: &'a [u8], delimiters: Delimiters, level: Level) -> Self {
        Value {
            raw: Some(raw),
            delimiters,
            level,
        }
    }

    pub(crate) fn absent(delimiters: Delimiters) -> Self {
        Value {
            raw: None,
            delimiters,
            level: Level::Leaf,
        }
    }

    /// The raw bytes (escapes not decoded), `None` when absent.
    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        self.raw
    }

    /// Absent, empty, the HL7 null `""`, or present.
    pub fn presence(&self) -> Presence {
        match self.raw {
            None => Presence::Absent,
            Some([]) => Presence::Empty,
            Some(b"\"\"") => Presence::Null,
            Some(_) => Presence::Present,
        }
    }

    /// Whether the value is absent from the message.
    pub fn is_absent(&self) -> bool {
        self.raw.is_none()
    }

    /// Whether the value is absent or empty.
    pub fn is_empty(&self) -> bool {
        self.raw.is_none_or(<[u8]>::is_empty)
    }

    fn split(&self, separator: Option<u8>, n: usize, level: Level) -> Value<'a> {
        let Some(raw) = self.raw else { return *self };
        let Some(sep) = separator else {
            return if n == 1 {
                Value { level, ..*self }
            } else {
                Value::absent(self.delimiters)
            };
        };
        match memchr::memchr_iter(sep, raw)
            .chain(std::iter::once(raw.len()))
            .scan(0, |start, end| {
                let piece = &raw[*start..end];
                *start = end + 1;
                Some(piece)
            })
            .nth(n.wrapping_sub(1))
        {
            Some(piece) if n >= 1 => Value::new(piece, self.delimiters, level),
            _ => Value::absent(self.delimiters),
        }
    }

    /// Repetition `n` (1-based) of a field. On anything below field level, repetition 1 is
    /// the value itself.
    pub fn repetition(&self, n: usize) -> Value<'a> {
        match self.level {
            Level::Field => self.split(self.delimiters.repetition, n, Level::Repetition),
            _ if n == 1 => *self,
            _ => Value::absent(self.delimiters),
        }
    }

    /// Component `n` (1-based). On a whole field, of its first repetition.
    pub fn component(&self, n: usize) -> Value<'a> {
        match self.level {
            Level::Field => self.repetition(1).component(n),
            Level::Repetition => self.split(Some(self.delimiters.component), n, Level::Component),
            _ if n == 1 => *self,
            _ => Value::absent(self.delimiters),
        }
    }

    /// Subcomponent `n` (1-based). On a field or repetition, of its first component.
    pub fn subcomponent(&self, n: usize) -> Value<'a> {
        match self.level {
            Level::Field | Level::Repetition => self.component(1).subcomponent(n),
            Level::Component => self.split(self.delimiters.subcomponent, n, Level::Subcomponent),
            _ if n == 1 => *self,
            _ => Value::absent(self.delimiters),
        }
    }

    /// The parts one level down: repetitions of a field, components of a repetition,
    /// subcomponents of a component. A leaf yields itself; an absent value nothing.
    pub fn children(&self) -> Children<'a> {
        let (separator, level) = match self.level {
            Level::Field => (self.delimiters.repetition, Level::Repetition),
            Level::Repetition => (Some(self.delimiters.component), Level::Component),
            Level::Component => (self.delimiters.subcomponent, Level::Subcomponent),
            Level::Subcomponent | Level::Leaf => (None, Level::Leaf),
        };
        Children {
            rest: self.raw,
            separator,
            delimiters: self.delimiters,
            level,
        }
    }

    /// Whether the value holds a separator of a lower level (it has structure below it).
    pub fn has_children(&self) -> bool {
        let Some(raw) = self.raw else { return false };
        let d = &self.delimiters;
        match self.level {
            Level::Field => raw
                .iter()
                .any(|&b| Some(b) == d.repetition || b == d.component || Some(b) == d.subcomponent),
            Level::Repetition => raw
                .iter()
                .any(|&b| b == d.component || Some(b) == d.subcomponent),
            Level::Component => raw.iter().any(|&b| Some(b) == d.subcomponent),
            _ => false,
        }
    }

    /// The bytes with escape sequences decoded (see [`escape::unescape`]). Separators of
    /// lower levels, if any, stay as they are.
    pub fn unescaped(&self) -> Cow<'a, [u8]> {
        match (self.raw, self.level) {
            (None, _) => Cow::Borrowed(&[]),
            (Some(raw), Level::Leaf) => Cow::Borrowed(raw),
            (Some(raw), _) => escape::unescape(raw, &self.delimiters),
        }
    }

    /// The value as text: escapes decoded, then bytes decoded with `charset`.
    pub fn text(&self, charset: Charset) -> Result<Cow<'a, str>, DecodeError> {
        match self.unescaped() {
            Cow::Borrowed(b) => charset.decode(b),
            Cow::Owned(b) => charset.decode(&b).map(|s| Cow::Owned(s.into_owned())),
        }
    }
}

/// Iterator over the parts of a [`Value`] one level down; see [`Value::children`].
#[derive(Debug, Clone)]
pub struct Children<'a> {
    rest: Option<&'a [u8]>,
    separator: Option<u8>,
    delimiters: Delimiters,
    level: Level,
}

impl<'a> Iterator for Children<'a> {
    type Item = Value<'a>;

    fn next(&mut self) -> Option<Value<'a>> {
        let raw = self.rest?;
        let (part, rest) = match self.separator.and_then(|sep| memchr::memchr(sep, raw)) {
            Some(i) => (&raw[..i], Some(&raw[i + 1..])),
            None => (raw, None),
        };
        self.rest = rest;
        Some(Value::new(part, self.delimiters, self.level))
    }
}

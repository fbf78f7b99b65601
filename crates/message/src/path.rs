//! Paths to values: `PID-3`, `PID-3[2].1`, `OBX[3]-5.1`, `MSH-9.2`, `PID-3.1.2`.
//!
//! Grammar: `SEG[occurrence]-field[repetition].component.subcomponent`, all numbers 1-based,
//! the bracketed parts optional (default 1). A `.` is accepted in place of the `-` after the
//! segment ID, as Mirth and python-hl7 users write `PID.3.1`.

use std::fmt;

use crate::error::PathError;

/// A parsed path. See the module documentation for the grammar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    segment: [u8; 3],
    /// Which occurrence of the segment (1-based).
    pub occurrence: usize,
    /// Field number (1-based; `MSH-1` is the field separator).
    pub field: usize,
    /// Repetition (1-based); `None` selects the whole field.
    pub repetition: Option<usize>,
    /// Component (1-based).
    pub component: Option<usize>,
    /// Subcomponent (1-based); only with a component.
    pub subcomponent: Option<usize>,
}

impl Path {
    /// Parses a path.
    pub fn parse(text: &str) -> Result<Path, PathError> {
        let mut cur = Cursor { text, pos: 0 };
        let segment = cur.segment_id()?;
        let occurrence = cur.bracketed()?.unwrap_or(1);
        cur.expect_any(b"-.", "'-' and a field number")?;
        let field = cur.number("a field number")?;
        let repetition = cur.bracketed()?;
        let mut component = None;
        let mut subcomponent = None;
        if cur.eat(b'.') {
            component = Some(cur.number("a component number")?);
            if cur.eat(b'.') {
                subcomponent = Some(cur.number("a subcomponent number")?);
            }
        }
        if cur.pos != text.len() {
            return Err(cur.error("the end of the path"));
        }
        Ok(Path {
            segment,
            occurrence,
            field,
            repetition,
            component,
            subcomponent,
        })
    }

    /// The segment ID.
    pub fn segment(&self) -> &[u8] {
        &self.segment
    }
}

impl std::str::FromStr for Path {
    type Err = PathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Path::parse(s)
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.segment))?;
        if self.occurrence != 1 {
            write!(f, "[{}]", self.occurrence)?;
        }
        write!(f, "-{}", self.field)?;
        if let Some(r) = self.repetition {
            write!(f, "[{r}]")?;
        }
        if let Some(c) = self.component {
            write!(f, ".{c}")?;
        }
        if let Some(s) = self.subcomponent {
            write!(f, ".{s}")?;
        }
        Ok(())
    }
}

struct Cursor<'t> {
    text: &'t str,
    pos: usize,
}

impl Cursor<'_> {
    fn error(&self, expected: &'static str) -> PathError {
        PathError::Syntax {
            path: self.text.to_owned(),
            position: self.pos,
            expected,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_any(&mut self, any: &[u8], expected: &'static str) -> Result<(), PathError> {
        match self.peek() {
            Some(b) if any.contains(&b) => {
                self.pos += 1;
                Ok(())
            }
            _ => Err(self.error(expected)),
        }
    }

    fn segment_id(&mut self) -> Result<[u8; 3], PathError> {
        let bytes = self.text.as_bytes();
        match bytes.get(..3) {
            Some(&[a, b, c]) if [a, b, c].iter().all(|x| x.is_ascii_alphanumeric()) => {
                self.pos = 3;
                Ok([a, b, c].map(|x| x.to_ascii_uppercase()))
            }
            _ => Err(self.error("a three-character segment ID such as PID")),
        }
    }

    fn number(&mut self, expected: &'static str) -> Result<usize, PathError> {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        match self.text[start..self.pos].parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => {
                self.pos = start;
                Err(self.error(expected))
            }
        }
    }

    fn bracketed(&mut self) -> Result<Option<usize>, PathError> {
        if !self.eat(b'[') {
            return Ok(None);
        }
        let n = self.number("a number from 1 inside [ ]")?;
        if !self.eat(b']') {
            return Err(self.error("']'"));
        }
        Ok(Some(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let p = Path::parse("OBX[3]-5[2].1.2").unwrap();
        assert_eq!(
            (
                p.occurrence,
                p.field,
                p.repetition,
                p.component,
                p.subcomponent
            ),
            (3, 5, Some(2), Some(1), Some(2))
        );
        assert_eq!(p.to_string(), "OBX[3]-5[2].1.2");
        assert_eq!(Path::parse("pid.3.1").unwrap().to_string(), "PID-3.1");
        assert_eq!(Path::parse("MSH-9").unwrap().component, None);
    }

    #[test]
    fn errors_point_at_the_problem() {
        for (text, pos) in [
            ("PI", 0),
            ("PID", 3),
            ("PID-", 4),
            ("PID-0", 4),
            ("PID-3[", 6),
            ("PID-3x", 5),
            ("PID-3.1.2.3", 9),
        ] {
            match Path::parse(text) {
                Err(PathError::Syntax { position, .. }) => assert_eq!(position, pos, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}

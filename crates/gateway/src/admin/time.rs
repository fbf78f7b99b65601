//! Timestamps in the API: RFC 3339 out (UTC, milliseconds), RFC 3339 or Unix
//! milliseconds in. No clock is read here.

use causeway_message::date::{civil_from_days, days_from_civil};
use causeway_store::Timestamp;
use serde::Deserialize;

const MS_PER_DAY: i64 = 86_400_000;

/// `2024-05-01T12:30:00.250Z`.
pub fn format(t: Timestamp) -> String {
    let ms = t.as_millis();
    let days = ms.div_euclid(MS_PER_DAY);
    let rem = ms.rem_euclid(MS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    let (h, rem) = (rem / 3_600_000, rem % 3_600_000);
    let (min, rem) = (rem / 60_000, rem % 60_000);
    let (s, milli) = (rem / 1000, rem % 1000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{milli:03}Z")
}

/// A time as a request gives it: Unix milliseconds (number or digits), or RFC 3339.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TimeArg {
    /// Milliseconds since the epoch.
    Millis(i64),
    /// RFC 3339 text, or digits.
    Text(String),
}

impl TimeArg {
    /// The timestamp, or why not.
    pub fn to_timestamp(&self) -> Result<Timestamp, String> {
        match self {
            TimeArg::Millis(ms) => Ok(Timestamp::from_millis(*ms)),
            TimeArg::Text(text) => match text.parse::<i64>() {
                Ok(ms) => Ok(Timestamp::from_millis(ms)),
                Err(_) => parse(text).ok_or_else(|| {
                    format!(
                        "{text:?} is neither RFC 3339 (2024-05-01T12:30:00Z) nor Unix milliseconds"
                    )
                }),
            },
        }
    }
}

/// `YYYY-MM-DD(T| )HH:MM:SS[.fraction](Z|±HH:MM)`.
pub fn parse(text: &str) -> Option<Timestamp> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        let part = text.get(from..to)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = text.get(19..)?;
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &frac[..digits.min(3)]);
        millis = padded.parse::<i64>().ok()?;
        rest = &frac[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let r = rest.as_bytes();
            if r.len() != 6 || r[3] != b':' {
                return None;
            }
            let h: i64 = rest.get(1..3)?.parse().ok()?;
            let m: i64 = rest.get(4..6)?.parse().ok()?;
            if h > 23 || m > 59 {
                return None;
            }
            sign * (h * 60 + m)
        }
    };
    let days = days_from_civil(year, month as u32, day as u32);
    let local = days * MS_PER_DAY + ((hour * 60 + minute) * 60 + second.min(59)) * 1000 + millis;
    Some(Timestamp::from_millis(local - offset_minutes * 60_000))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_with_millis() {
        assert_eq!(format(Timestamp(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format(Timestamp(1_700_000_000_123)),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(format(Timestamp(-1)), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            format(Timestamp(951_782_400_000)),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn parses_rfc3339() {
        let p = |s| parse(s).map(Timestamp::as_millis);
        assert_eq!(p("2023-11-14T22:13:20.123Z"), Some(1_700_000_000_123));
        assert_eq!(p("2023-11-14T22:13:20Z"), Some(1_700_000_000_000));
        assert_eq!(p("2023-11-14T23:13:20.1+01:00"), Some(1_700_000_000_100));
        assert_eq!(p("2023-11-14T21:13:20-01:00"), Some(1_700_000_000_000));
        assert_eq!(p("2023-11-14 22:13:20.123456Z"), Some(1_700_000_000_123));
        for bad in [
            "",
            "2023-11-14",
            "2023-13-14T22:13:20Z",
            "2023-02-29T22:13:20Z",
            "2023-11-14T22:13:20",
            "2023-11-14T22:13:20+1:00",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:2xZ",
            "２０２3-11-14T22:13:20Z",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }

    #[test]
    fn round_trips() {
        for ms in [0, 1, -86_400_001, 1_700_000_000_123, 4_102_444_800_000] {
            assert_eq!(parse(&format(Timestamp(ms))), Some(Timestamp(ms)), "{ms}");
        }
    }

    #[test]
    fn time_args() {
        let t = |j: &str| serde_json::from_str::<TimeArg>(j).unwrap().to_timestamp();
        assert_eq!(t("5"), Ok(Timestamp(5)));
        assert_eq!(t("\"5\""), Ok(Timestamp(5)));
        assert_eq!(t("\"1970-01-01T00:00:00.005Z\""), Ok(Timestamp(5)));
        assert!(t("\"yesterday\"").is_err());
    }
}

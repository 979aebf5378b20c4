//! Wall-clock helpers. Times are stored as Unix microseconds (UTC).

use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::error::Error;

/// Now, in Unix microseconds.
pub fn now_us() -> i64 {
    Utc::now().timestamp_micros()
}

/// A file time, in Unix microseconds.
pub fn system_time_us(t: std::time::SystemTime) -> i64 {
    DateTime::<Utc>::from(t).timestamp_micros()
}

/// Formats Unix microseconds as RFC 3339 UTC with second precision.
pub fn format_us(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us).map_or_else(
        || format!("@{us}us"),
        |t| t.to_rfc3339_opts(SecondsFormat::Secs, true),
    )
}

/// `us` rounded up to a whole second (retention dates are kept in whole seconds, and must
/// never come out earlier than asked).
pub fn ceil_to_second(us: i64) -> i64 {
    let rem = us.rem_euclid(1_000_000);
    if rem == 0 {
        us
    } else {
        us.saturating_add(1_000_000 - rem)
    }
}

/// Now, as RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    format_us(now_us())
}

/// A point in time as options write it: RFC 3339 (`2026-01-31T12:00:00Z`, any offset), or
/// a UTC date `2026-01-31` (its midnight) or date and time `2026-01-31T12:00:00`; in Unix
/// microseconds.
pub fn parse_time(s: &str) -> Result<i64, Error> {
    let t = s.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Ok(d.timestamp_micros());
    }
    if let Ok(d) = chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S") {
        return Ok(d.and_utc().timestamp_micros());
    }
    if let Some(d) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
    {
        return Ok(d.and_utc().timestamp_micros());
    }
    Err(Error::Usage(format!(
        "{s:?} is not a time (examples: 2026-01-31, 2026-01-31T12:00:00 in UTC, 2026-01-31T12:00:00+01:00)"
    )))
}

/// A span of time as retention and verification options write it: a sum of terms like
/// `90s`, `12h`, `30d`, `2w`, `6m` (30 days), `1y` (365 days), e.g. `1y6m`. Never zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span {
    /// Length in microseconds (positive).
    pub us: i64,
}

impl FromStr for Span {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || {
            Error::Usage(format!(
                "{s:?} is not a duration (examples: 90s, 12h, 30d, 2w, 6m, 1y)"
            ))
        };
        let mut total: i64 = 0;
        let mut num = String::new();
        for c in s.trim().chars() {
            if c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            let n: i64 = num.parse().map_err(|_| bad())?;
            num.clear();
            let seconds: i64 = match c {
                's' => 1,
                'h' => 3600,
                'd' => 3600 * 24,
                'w' => 3600 * 24 * 7,
                'm' => 3600 * 24 * 30,
                'y' => 3600 * 24 * 365,
                _ => return Err(bad()),
            };
            total = n
                .checked_mul(seconds * 1_000_000)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(bad)?;
        }
        if !num.is_empty() || total == 0 {
            return Err(bad());
        }
        Ok(Self { us: total })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_utc_and_bad_ones_are_usage_errors() {
        let day = parse_time("2026-01-31").unwrap();
        assert_eq!(format_us(day), "2026-01-31T00:00:00Z");
        assert_eq!(
            parse_time("2026-01-31T01:00:00").unwrap(),
            day + 3_600_000_000
        );
        assert_eq!(
            parse_time("2026-01-31T02:00:00+01:00").unwrap(),
            day + 3_600_000_000
        );
        for bad in ["", "yesterday", "2026-13-01", "31/01/2026"] {
            assert_eq!(
                parse_time(bad).unwrap_err().kind(),
                crate::ErrorKind::Usage,
                "{bad}"
            );
        }
    }

    #[test]
    fn spans_parse_and_bad_ones_are_usage_errors() {
        const DAY: i64 = 86_400_000_000;
        assert_eq!("1d12h".parse::<Span>().unwrap().us, DAY * 3 / 2);
        assert_eq!("1y6m".parse::<Span>().unwrap().us, DAY * (365 + 180));
        assert_eq!("90s".parse::<Span>().unwrap().us, 90_000_000);
        for bad in ["", "30", "d", "3x", "0d", "99999999999999y"] {
            let err = bad.parse::<Span>().unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Usage, "{bad}");
            assert!(err.to_string().contains("is not a duration"), "{err}");
        }
    }
}

//! Wall-clock helpers. Times are stored as Unix microseconds (UTC).

use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::error::Error;

/// Now, in Unix microseconds.
pub fn now_us() -> i64 {
    Utc::now().timestamp_micros()
}

/// Formats Unix microseconds as RFC 3339 UTC with second precision.
pub fn format_us(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us).map_or_else(
        || format!("@{us}us"),
        |t| t.to_rfc3339_opts(SecondsFormat::Secs, true),
    )
}

/// Now, as RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    format_us(now_us())
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

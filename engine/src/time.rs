//! Wall-clock helpers. Times are stored as Unix microseconds (UTC).

use chrono::{DateTime, SecondsFormat, Utc};

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

//! The checked value types of a job file (SPEC.md §26.1). Each parses in its `Deserialize`,
//! so a bad value is reported by `toml` with the span of the value itself, which
//! [`super::file`] turns into a line, a column and the key.

use std::fmt;

use serde::de::{Deserializer, Error as _};
use serde::Deserialize;

use crate::ops::check::SampleSize;
use crate::time::Span;

/// Deserializes a string and parses it with `parse`, whose error becomes the value's error.
fn parsed<'de, D, T, E>(d: D, parse: impl FnOnce(&str) -> Result<T, E>) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    E: fmt::Display,
{
    let text = String::deserialize(d)?;
    parse(&text).map_err(D::Error::custom)
}

/// A duration of a job file: a sum of terms `30s`, `15min`, `36h`, `7d`, `2w` (`1h30min`).
/// Unlike retention spans, where `m` is a month, a job's durations are mostly short
/// (timeouts, delays), so a bare `m` is refused as ambiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Span);

impl Dur {
    /// Parses the grammar above; never zero.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut rest = text.trim();
        let mut seconds: i64 = 0;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            let letters = rest[digits..]
                .find(|c: char| !c.is_ascii_alphabetic())
                .map_or(rest.len(), |n| n + digits);
            let (num, unit) = (&rest[..digits], &rest[digits..letters]);
            let n: i64 = num.parse().map_err(|_| bad_duration(text))?;
            let per: i64 = match unit {
                "s" | "sec" => 1,
                "min" => 60,
                "h" => 3600,
                "d" => 86_400,
                "w" => 604_800,
                "m" => {
                    return Err(format!(
                        "{text:?}: `m` is ambiguous in a job file; write `min` for minutes or `30d` for a month"
                    ))
                }
                _ => return Err(bad_duration(text)),
            };
            seconds = n
                .checked_mul(per)
                .and_then(|v| seconds.checked_add(v))
                .filter(|&v| v <= i64::MAX / 1_000_000)
                .ok_or_else(|| bad_duration(text))?;
            rest = &rest[letters..];
        }
        if seconds == 0 {
            return Err(bad_duration(text));
        }
        Ok(Self(Span {
            us: seconds * 1_000_000,
        }))
    }

    /// As a `std` duration.
    pub fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_micros(u64::try_from(self.0.us).unwrap_or(0))
    }
}

fn bad_duration(text: &str) -> String {
    format!("{text:?} is not a duration (examples: 30s, 15min, 36h, 7d, 2w)")
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, Self::parse)
    }
}

/// A verify sample (`5%` or `10GiB`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample(pub SampleSize);

impl<'de> Deserialize<'de> for Sample {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, crate::units::parse_sample).map(Self)
    }
}

/// A bandwidth limit in bytes per second (`50M`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(pub u64);

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, |t| {
            crate::sync::bwlimit::parse_rate(t)
                .ok_or_else(|| format!("{t:?} is not a rate: give bytes per second, e.g. 50M"))
        })
        .map(Self)
    }
}

/// A series, disk or tag name (the snapshot format's rule, SPEC.md §6).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(pub String);

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, |t| {
            tessera_format::snapshot::validate_name("name", t)
                .map(|()| Self(t.to_string()))
                .map_err(|e| e.to_string())
        })
    }
}

/// A hook's command line: a program and its arguments, run without a shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Argv(pub Vec<String>);

impl<'de> Deserialize<'de> for Argv {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let argv = Vec::<String>::deserialize(d)?;
        match argv.first() {
            None => Err(D::Error::custom(
                "the command is empty: give the program and its arguments, e.g. [\"/usr/local/bin/snap\", \"create\"]",
            )),
            Some(p) if p.is_empty() || p.contains('\0') => {
                Err(D::Error::custom("the program name is empty or holds NUL"))
            }
            Some(_) if argv.iter().any(|a| a.contains('\0')) => {
                Err(D::Error::custom("an argument holds NUL"))
            }
            Some(_) => Ok(Self(argv)),
        }
    }
}

/// The reference mode of a job's backups (SPEC.md §26.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RefMode {
    /// Changes since the series' newest snapshot.
    #[default]
    Incremental,
    /// Changes since the series' newest full (or key) snapshot.
    Differential,
    /// Every disk read in full, as a key backup.
    Full,
}

impl RefMode {
    /// The name in job files and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Incremental => "incremental",
            Self::Differential => "differential",
            Self::Full => "full",
        }
    }
}

/// What a notification target is told about (SPEC.md §26.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    /// A run succeeded.
    Success,
    /// A run succeeded with warnings (drift, a delta read in full).
    Warning,
    /// A run failed or was interrupted.
    Failure,
    /// Verify found damage.
    Damage,
    /// No successful run for longer than `stale-after`.
    Stale,
}

impl Event {
    /// The name in job files, payloads and subjects.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Warning => "warning",
            Self::Failure => "failure",
            Self::Damage => "damage",
            Self::Stale => "stale",
        }
    }

    /// The events a target gets when its file names none.
    pub const DEFAULT: [Self; 4] = [Self::Failure, Self::Damage, Self::Warning, Self::Stale];
}

/// A retention or verification span, in `tessera prune`'s grammar (`30d`, `6m` = 180 days,
/// `1y`), so that a job file and the command line mean the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Within(pub Span);

impl<'de> Deserialize<'de> for Within {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, |t| t.parse::<Span>().map(Self))
    }
}

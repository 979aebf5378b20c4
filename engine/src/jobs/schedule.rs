//! When a job runs (SPEC.md §26.1 `[schedule]`, §26.6): a cron expression read by
//! `croner` in a time zone, plus a random delay drawn per slot.

use std::str::FromStr as _;

use chrono::{DateTime, Local, TimeZone, Utc};
use serde::de::{Deserializer, Error as _};
use serde::Deserialize;

use super::values::Dur;

/// A parsed cron expression, with the text it came from.
#[derive(Debug, Clone)]
pub struct CronExpr {
    /// As written.
    pub text: String,
    cron: croner::Cron,
}

impl<'de> Deserialize<'de> for CronExpr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let fields = text.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(D::Error::custom(format!(
                "{text:?} has {fields} fields; a cron expression has 5 (minute hour day month weekday) or 6 (seconds first)"
            )));
        }
        croner::Cron::from_str(&text)
            .map(|cron| Self {
                text: text.clone(),
                cron,
            })
            .map_err(|e| D::Error::custom(format!("{text:?} is not a cron expression: {e}")))
    }
}

/// The time zone slots are computed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Zone {
    /// The machine's local time (`TZ`, `/etc/localtime`), as cron does.
    #[default]
    Local,
    /// An IANA zone.
    Named(chrono_tz::Tz),
}

impl<'de> Deserialize<'de> for Zone {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text == "local" {
            return Ok(Self::Local);
        }
        text.parse::<chrono_tz::Tz>().map(Self::Named).map_err(|_| {
            D::Error::custom(format!(
                "{text:?} is not a time zone: give an IANA name such as \"Europe/Paris\" or \"UTC\", or \"local\""
            ))
        })
    }
}

/// A job's `[schedule]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Schedule {
    /// When.
    pub cron: CronExpr,
    /// In which zone.
    #[serde(default)]
    pub timezone: Zone,
    /// Each run starts up to this long after its slot.
    pub random_delay: Option<Dur>,
}

fn next_in<Tz: TimeZone>(cron: &croner::Cron, zone: &Tz, after: DateTime<Utc>) -> Option<i64> {
    cron.find_next_occurrence(&after.with_timezone(zone), false)
        .ok()
        .map(|t| t.with_timezone(&Utc).timestamp_micros())
}

impl Schedule {
    /// The first slot strictly after `after_us` (µs since the epoch, UTC), if there is one.
    pub fn next_after(&self, after_us: i64) -> Option<i64> {
        let after = DateTime::<Utc>::from_timestamp_micros(after_us)?;
        match self.timezone {
            Zone::Local => next_in(&self.cron.cron, &Local, after),
            Zone::Named(tz) => next_in(&self.cron.cron, &tz, after),
        }
    }

    /// The newest slot at or before `at_us`, if there is one.
    pub fn prev_at_or_before(&self, at_us: i64) -> Option<i64> {
        let at = DateTime::<Utc>::from_timestamp_micros(at_us)?;
        let prev = |cron: &croner::Cron| match self.timezone {
            Zone::Local => cron
                .find_previous_occurrence(&at.with_timezone(&Local), true)
                .ok()
                .map(|t| t.with_timezone(&Utc).timestamp_micros()),
            Zone::Named(tz) => cron
                .find_previous_occurrence(&at.with_timezone(&tz), true)
                .ok()
                .map(|t| t.with_timezone(&Utc).timestamp_micros()),
        };
        prev(&self.cron.cron)
    }

    /// A random delay for one slot, in µs (0 without `random-delay`).
    pub fn draw_delay_us(&self) -> i64 {
        use rand::Rng as _;
        self.random_delay
            .map_or(0, |d| rand::thread_rng().gen_range(0..=d.0.us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(toml_text: &str) -> Schedule {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn slots_follow_the_expression_in_its_zone_across_dst() {
        let s = schedule("cron = \"30 2 * * *\"\ntimezone = \"Europe/Paris\"\n");
        // 2026-03-28 12:00 UTC; the next 02:30 Paris is 2026-03-29, the day clocks jump
        // from 02:00 to 03:00: croner moves a slot in the gap to the first valid instant.
        let start = chrono::Utc.with_ymd_and_hms(2026, 3, 28, 12, 0, 0).unwrap();
        let next = s.next_after(start.timestamp_micros()).unwrap();
        let next = DateTime::<Utc>::from_timestamp_micros(next).unwrap();
        assert!(
            next > start && next - start < chrono::Duration::hours(24),
            "{next}"
        );
        // An ordinary day: 02:30 CET is 01:30 UTC.
        let jan = chrono::Utc.with_ymd_and_hms(2026, 1, 10, 12, 0, 0).unwrap();
        let n = s.next_after(jan.timestamp_micros()).unwrap();
        assert_eq!(
            DateTime::<Utc>::from_timestamp_micros(n).unwrap(),
            chrono::Utc.with_ymd_and_hms(2026, 1, 11, 1, 30, 0).unwrap()
        );
    }

    #[test]
    fn seconds_fields_and_bad_expressions() {
        let s = schedule("cron = \"*/2 * * * * *\"\ntimezone = \"UTC\"\n");
        let t = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 1).unwrap();
        let n = s.next_after(t.timestamp_micros()).unwrap();
        assert_eq!(n - t.timestamp_micros(), 1_000_000);
        for bad in [
            "cron = \"61 * * * *\"",
            "cron = \"* * *\"",
            "cron = \"* * * * *\"\ntimezone = \"Mars/Base\"",
        ] {
            assert!(toml::from_str::<Schedule>(bad).is_err(), "{bad}");
        }
    }
}

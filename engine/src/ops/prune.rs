//! Retention policies (GFS style) as a pure plan: which snapshots stay, and by which rules.
//!
//! Per series, snapshots are walked newest first. `last N` keeps the N newest; `hourly N`
//! keeps the newest snapshot of each of the N most recent hours that have one, and likewise
//! for days, ISO weeks, months and years (UTC); `within D` keeps every snapshot taken within
//! D of the series' newest snapshot. A snapshot kept by any rule stays, and protected
//! snapshots always stay. The plan is computed without touching the repository, so
//! `--dry-run` shows exactly what a real run does.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Datelike, Timelike, Utc};
use tessera_format::{SnapshotHeader, SnapshotId};

use crate::error::{Error, Result};

/// How many snapshots to keep by each rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    /// The N newest.
    pub last: u32,
    /// Newest of each of the N latest hours.
    pub hourly: u32,
    /// Newest of each of the N latest days.
    pub daily: u32,
    /// Newest of each of the N latest ISO weeks.
    pub weekly: u32,
    /// Newest of each of the N latest months.
    pub monthly: u32,
    /// Newest of each of the N latest years.
    pub yearly: u32,
    /// Everything within this many microseconds of the newest snapshot.
    pub within_us: Option<i64>,
}

impl KeepPolicy {
    /// Whether no rule is set (such a policy would delete everything and is refused).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The fate of one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    /// The snapshot.
    #[serde(serialize_with = "hex_id")]
    pub id: SnapshotId,
    /// Its series.
    pub series: String,
    /// Its time, Unix microseconds.
    pub time_us: i64,
    /// Why it is kept; empty means it will be forgotten.
    pub reasons: Vec<String>,
}

fn hex_id<S: serde::Serializer>(id: &SnapshotId, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&id.to_hex())
}

impl Decision {
    /// Whether the snapshot stays.
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }
}

/// Parses durations such as `30d`, `12h`, `2w`, `6m` (30 days), `1y` (365 days), `1y6m`.
pub fn parse_duration(s: &str) -> Result<i64> {
    let bad = || {
        Error::InvalidArgument(format!(
            "{s:?} is not a duration (examples: 12h, 30d, 2w, 6m, 1y)"
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
        let hours = match c {
            'h' => 1,
            'd' => 24,
            'w' => 24 * 7,
            'm' => 24 * 30,
            'y' => 24 * 365,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(hours * 3_600_000_000)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if !num.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(total)
}

type Bucket = fn(&DateTime<Utc>) -> (i32, u32, u32, u32);

fn rules(policy: &KeepPolicy) -> [(&'static str, u32, Bucket); 5] {
    [
        ("hourly", policy.hourly, |t| {
            (t.year(), t.ordinal(), t.hour(), 0)
        }),
        ("daily", policy.daily, |t| (t.year(), t.ordinal(), 0, 0)),
        ("weekly", policy.weekly, |t| {
            (t.iso_week().year(), t.iso_week().week(), 0, 0)
        }),
        ("monthly", policy.monthly, |t| (t.year(), t.month(), 0, 0)),
        ("yearly", policy.yearly, |t| (t.year(), 0, 0, 0)),
    ]
}

/// Decides, for every snapshot of the selected series (all series when `series` is `None`),
/// whether it stays and why. Snapshots of other series are not listed.
pub fn plan_prune<S: std::hash::BuildHasher>(
    snapshots: &[(SnapshotId, SnapshotHeader)],
    protected: &HashSet<SnapshotId, S>,
    policy: &KeepPolicy,
    series: Option<&str>,
) -> Result<Vec<Decision>> {
    if policy.is_empty() {
        return Err(Error::InvalidArgument(
            "no keep rule given: pass at least one of --keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly, --keep-within".into(),
        ));
    }
    let mut by_series: BTreeMap<&str, Vec<&(SnapshotId, SnapshotHeader)>> = BTreeMap::new();
    for s in snapshots
        .iter()
        .filter(|(_, h)| series.is_none_or(|name| h.series == name))
    {
        by_series.entry(s.1.series.as_str()).or_default().push(s);
    }
    let mut out = Vec::new();
    for (_, mut group) in by_series {
        group.sort_by(|a, b| b.1.time_us.cmp(&a.1.time_us).then(b.0.cmp(&a.0)));
        let mut decisions: Vec<Decision> = group
            .iter()
            .map(|(id, h)| Decision {
                id: *id,
                series: h.series.clone(),
                time_us: h.time_us,
                reasons: Vec::new(),
            })
            .collect();
        for (i, d) in decisions.iter_mut().enumerate() {
            if protected.contains(&d.id) {
                d.reasons.push("protected".into());
            }
            if (i as u64) < u64::from(policy.last) {
                d.reasons.push(format!("last {}", i + 1));
            }
        }
        if let (Some(within), Some(newest)) =
            (policy.within_us, decisions.first().map(|d| d.time_us))
        {
            for d in &mut decisions {
                if d.time_us >= newest.saturating_sub(within) {
                    d.reasons.push("within".into());
                }
            }
        }
        for (name, count, bucket_of) in rules(policy) {
            let mut kept = 0u32;
            let mut last_bucket = None;
            for d in &mut decisions {
                if kept >= count {
                    break;
                }
                let Some(t) = DateTime::<Utc>::from_timestamp_micros(d.time_us) else {
                    continue;
                };
                let bucket = bucket_of(&t);
                if last_bucket != Some(bucket) {
                    kept += 1;
                    last_bucket = Some(bucket);
                    d.reasons.push(format!("{name} {kept}"));
                }
            }
        }
        out.extend(decisions);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_format::SnapshotHeader;

    fn snap(n: u8, series: &str, time_us: i64) -> (SnapshotId, SnapshotHeader) {
        (
            SnapshotId([n; 32]),
            SnapshotHeader {
                series: series.into(),
                time_us,
                duration_ms: 0,
                tags: vec![],
                disks: vec![],
            },
        )
    }

    const DAY: i64 = 86_400_000_000;

    #[test]
    fn keep_last_and_daily() {
        // Two snapshots a day for 10 days.
        let snaps: Vec<_> = (0..20u8)
            .map(|i| snap(i, "vm", i64::from(i) * DAY / 2))
            .collect();
        let policy = KeepPolicy {
            last: 2,
            daily: 3,
            ..KeepPolicy::default()
        };
        let plan = plan_prune(&snaps, &HashSet::new(), &policy, None).unwrap();
        let kept: Vec<u8> = plan
            .iter()
            .filter(|d| d.keep())
            .map(|d| d.id.0[0])
            .collect();
        // Newest two (19, 18); newest of days 9, 8, 7 = 19, 17, 15.
        assert_eq!(kept, vec![19, 18, 17, 15]);
        assert_eq!(
            plan.iter().find(|d| d.id.0[0] == 19).unwrap().reasons,
            vec!["last 1", "daily 1"]
        );
    }

    #[test]
    fn protected_always_stay_and_series_are_independent() {
        let snaps = vec![
            snap(1, "a", 0),
            snap(2, "a", DAY),
            snap(3, "b", 0),
            snap(4, "b", DAY),
        ];
        let protected: HashSet<_> = [SnapshotId([1; 32])].into_iter().collect();
        let plan = plan_prune(
            &snaps,
            &protected,
            &KeepPolicy {
                last: 1,
                ..KeepPolicy::default()
            },
            None,
        )
        .unwrap();
        let kept: Vec<u8> = plan
            .iter()
            .filter(|d| d.keep())
            .map(|d| d.id.0[0])
            .collect();
        assert_eq!(kept, vec![2, 1, 4]);
        let only_b = plan_prune(
            &snaps,
            &protected,
            &KeepPolicy {
                last: 1,
                ..KeepPolicy::default()
            },
            Some("b"),
        )
        .unwrap();
        assert_eq!(only_b.len(), 2);
    }

    #[test]
    fn within_is_relative_to_newest() {
        let snaps: Vec<_> = (0..10u8)
            .map(|i| snap(i, "vm", i64::from(i) * DAY))
            .collect();
        let policy = KeepPolicy {
            within_us: Some(parse_duration("3d").unwrap()),
            ..KeepPolicy::default()
        };
        let kept = plan_prune(&snaps, &HashSet::new(), &policy, None)
            .unwrap()
            .iter()
            .filter(|d| d.keep())
            .count();
        assert_eq!(kept, 4);
    }

    #[test]
    fn empty_policy_and_bad_durations_are_refused() {
        assert!(plan_prune(&[], &HashSet::new(), &KeepPolicy::default(), None).is_err());
        for bad in ["", "30", "d", "3x", "0d", "99999999999999y"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration("1d12h").unwrap(), DAY * 3 / 2);
    }
}

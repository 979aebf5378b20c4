//! Retention policies (GFS style) as a pure plan: which snapshots stay, and by which rules.
//!
//! Per series, snapshots are walked newest first. `last N` keeps the N newest; `hourly N`
//! keeps the newest snapshot of each of the N most recent hours that have one, and likewise
//! for days, ISO weeks, months and years (UTC); `within D` keeps every snapshot taken within
//! D of the series' newest snapshot. A snapshot kept by any rule stays, and protected
//! snapshots always stay. The plan ([`plan_prune`]) is computed without touching the
//! repository, so `--dry-run` shows exactly what a real run does; [`prune`] then forgets
//! what it does not keep through the forget plan (`forget.rs`).

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Datelike, Timelike, Utc};
use tessera_format::{SnapshotHeader, SnapshotId};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::ops::forget::{apply_forget, plan_forget, Freed};
use crate::repo::Repository;
use crate::time::Span;

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
    /// Everything within this span of the newest snapshot.
    pub within: Option<Span>,
}

impl KeepPolicy {
    /// Whether no rule is set (such a policy would delete everything and is refused).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Refuses a policy without any rule (a usage error): it would forget everything.
    pub fn validate(&self) -> Result<()> {
        if self.is_empty() {
            return Err(Error::Usage(
                "no keep rule given: pass at least one of --keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly, --keep-within".into(),
            ));
        }
        Ok(())
    }
}

/// The fate of one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The snapshot.
    #[serde(serialize_with = "crate::serde_ids::hex")]
    pub id: SnapshotId,
    /// Its series.
    pub series: String,
    /// Its time, Unix microseconds.
    pub time_us: i64,
    /// Why it is kept; empty means it will be forgotten.
    pub reasons: Vec<String>,
}

impl Decision {
    /// Whether the snapshot stays.
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }
}

/// What `tessera prune` did, or would do with `dry_run`.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    /// Whether nothing was changed.
    pub dry_run: bool,
    /// The fate of every snapshot of the selected series, newest first per series.
    pub decisions: Vec<Decision>,
    /// What forgetting the snapshots no rule keeps frees.
    pub freed: Freed,
}

impl PruneReport {
    /// How many snapshots are (or would be) forgotten.
    pub fn forgotten(&self) -> usize {
        self.decisions.iter().filter(|d| !d.keep()).count()
    }
}

/// Applies `policy` to the selected series (all when `series` is `None`): plans which
/// snapshots stay ([`plan_prune`]) and forgets the others through the forget plan, unless
/// `dry_run`. `repo` is open as the writer. A policy without any rule is a usage error.
pub fn prune(
    repo: &Repository,
    policy: &KeepPolicy,
    series: Option<&str>,
    dry_run: bool,
) -> Result<PruneReport> {
    let snapshots = repo.index().snapshots()?;
    let mut decisions = plan_prune(&snapshots, &repo.index().protected()?, policy, series)?;
    // Immutable snapshots (SPEC §28) stay until their retention passes, whatever the rules.
    if let Some(policy) = crate::ops::immutable::effective_policy(repo.index(), repo.backend())? {
        let now = crate::ops::immutable::store_now(repo.backend())?;
        for d in &mut decisions {
            let by_time = Some(policy.until(d.time_us)).filter(|&u| u > now);
            if let Some(until) =
                crate::ops::immutable::still_protected(repo, d.id, now)?.max(by_time)
            {
                d.reasons
                    .push(format!("immutable until {}", crate::time::format_us(until)));
            }
        }
    }
    let doomed: Vec<SnapshotId> = decisions
        .iter()
        .filter(|d| !d.keep())
        .map(|d| d.id)
        .collect();
    let plan = plan_forget(repo, &doomed, false)?;
    if !dry_run {
        apply_forget(repo, &plan)?;
    }
    Ok(PruneReport {
        dry_run,
        decisions,
        freed: plan.freed(),
    })
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
    policy.validate()?;
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
        if let (Some(within), Some(newest)) = (policy.within, decisions.first().map(|d| d.time_us))
        {
            for d in &mut decisions {
                if d.time_us >= newest.saturating_sub(within.us) {
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
            within: Some("3d".parse().unwrap()),
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
    fn an_empty_policy_is_a_usage_error() {
        let err = plan_prune(&[], &HashSet::new(), &KeepPolicy::default(), None).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Usage, "{err}");
    }
}

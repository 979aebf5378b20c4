//! One series: its snapshots newest first, with their mode (key backups marked), protection,
//! damage, sizes, the exact bytes forgetting each would free, and what the configured
//! retention would do to each.

use std::collections::HashMap;

use maud::html;
use tessera_format::SnapshotId;

use super::{bytes_cell, layout, short, time_cell, Viewer};
use crate::dashboard::data::Snap;
use crate::ops::prune::Decision;

/// What the series page shows.
pub struct SeriesView<'a> {
    /// The series.
    pub name: &'a str,
    /// Its snapshots, oldest first.
    pub snaps: Vec<&'a Snap>,
    /// Stored bytes each snapshot alone references, and when they were computed.
    pub exclusive: (&'a HashMap<SnapshotId, u64>, i64),
    /// The job whose retention prunes the series, and what it would decide; or why there is
    /// none.
    pub retention: Result<(String, HashMap<SnapshotId, Decision>), String>,
    /// Now, µs.
    pub now_us: i64,
    /// A line about what was just done (after an action).
    pub notice: Option<String>,
}

/// The page.
pub fn page(viewer: &Viewer, s: &SeriesView<'_>) -> String {
    let body = html! {
        h1 { "Series " span #series-name { (s.name) } }
        @if let Some(n) = &s.notice {
            p.notice #notice { (n) }
        }
        p.muted #retention-note {
            @match &s.retention {
                Ok((job, _)) => { "Retention of job " strong { (job) } ": each snapshot shows whether its next prune would keep it." }
                Err(why) => { (why) }
            }
        }
        div.scroll {
            table #snapshots data-count=(s.snaps.len()) {
                thead { tr {
                    th { "Taken" } th { "Snapshot" } th { "Mode" } th { "Marks" }
                    th.num { "Logical" } th.num { "New stored" } th.num { "Freed if forgotten" } th { "Retention" }
                } }
                tbody {
                    @for snap in s.snaps.iter().rev() {
                        @let hex = snap.id.to_hex();
                        @let decision = s.retention.as_ref().ok().and_then(|(_, d)| d.get(&snap.id));
                        @let keep = decision.map(Decision::keep);
                        tr.forget[keep == Some(false)] data-id=(hex) data-mode=(snap.mode)
                            data-protected=(u8::from(snap.protected)) data-damaged=(u8::from(snap.damage.is_some()))
                            data-retention=(match keep { Some(true) => "keep", Some(false) => "forget", None => "none" }) {
                            td { (time_cell(s.now_us, snap.header.time_us)) }
                            td { a href=(format!("/ui/snapshot/{hex}")) { code { (short(&hex)) } } }
                            td { @if snap.mode == "key" { span.badge.key { "key" } } @else { (snap.mode) } }
                            td {
                                @if snap.protected { span.badge.protected { "protected" } " " }
                                @if snap.damage.is_some() { span.badge.damaged { "damaged" } }
                            }
                            td.num.logical { (bytes_cell(snap.logical_bytes)) }
                            td.num.new { (bytes_cell(snap.new_stored_bytes)) }
                            td.num.freed { @match s.exclusive.0.get(&snap.id) { Some(b) => (bytes_cell(*b)), None => span.muted { "—" } } }
                            td.retention {
                                @match decision {
                                    Some(d) if d.keep() => { "would be kept (" (d.reasons.join(", ")) ")" }
                                    Some(_) => span.bad { "would be forgotten" },
                                    None => span.muted { "—" },
                                }
                            }
                        }
                    }
                }
            }
        }
        p.muted { "Freed bytes are exact (stored bytes no other snapshot references, reclaimed by the next compaction), as of " (time_cell(s.now_us, s.exclusive.1)) "." }
    };
    layout(&format!("Series {}", s.name), Some(viewer), "", &body)
}

//! The overview: every visible series with its newest snapshot, its age against what its
//! job allows, the last verification, its space; the repository's totals; two plots.

use std::collections::BTreeMap;

use maud::html;

use super::{age, bytes_cell, layout, ratio, short, time_cell, Viewer};
use crate::dashboard::data::{cumulative_stored, daily_deltas, Catalogue};
use crate::dashboard::jobs::AgeLimit;
use crate::dashboard::svg;
use crate::ops::stats::RepoStats;
use crate::verify_log::VerifyRecord;

/// Days of daily deltas plotted.
pub const DAYS: i64 = 30;

/// What the overview shows.
pub struct Overview<'a> {
    /// The visible snapshots.
    pub catalogue: &'a Catalogue,
    /// The age limit of each visible series.
    pub limits: BTreeMap<String, AgeLimit>,
    /// The newest verification run.
    pub last_verify: Option<&'a VerifyRecord>,
    /// The repository's totals and when they were computed (for viewers of every series).
    pub stats: Option<(RepoStats, i64)>,
    /// Now, µs.
    pub now_us: i64,
    /// A line about what was just done (after a forget of a series' last snapshot).
    pub notice: Option<String>,
}

/// `a / b` as a ratio, or a dash when nothing was added (`b` zero).
fn ratio_cell(a: u64, b: u64) -> maud::Markup {
    if b == 0 {
        html! { span.muted title="nothing new was stored" { "—" } }
    } else {
        let r = a as f64 / b as f64;
        html! { span data-value=(format!("{r:.4}")) { (ratio(r)) } }
    }
}

/// The page.
pub fn page(viewer: &Viewer, o: &Overview<'_>) -> String {
    let by_series = o.catalogue.by_series();
    let names: Vec<&str> = by_series.keys().copied().collect();
    let daily = daily_deltas(o.catalogue, o.now_us, DAYS);
    let body = html! {
        h1 { "Overview" }
        @if let Some(n) = &o.notice {
            p.notice #notice { (n) }
        }
        @if let Some((s, at)) = &o.stats {
            section #totals {
                h2 { "Repository" }
                dl.figures {
                    div { dt { "Snapshots" } dd data-stat="snapshots" data-value=(s.snapshots) { (s.snapshots) } }
                    div { dt { "Series" } dd data-stat="series" data-value=(s.series) { (s.series) } }
                    div { dt { "Logical" } dd data-stat="logical_bytes" data-value=(s.logical_bytes) { (bytes_cell(s.logical_bytes)) } }
                    div { dt { "Stored (live)" } dd data-stat="live_stored_bytes" data-value=(s.live_stored_bytes + s.page_stored_bytes) { (bytes_cell(s.live_stored_bytes + s.page_stored_bytes)) } }
                    div { dt { "Pack files" } dd data-stat="pack_bytes" data-value=(s.pack_bytes) { (bytes_cell(s.pack_bytes)) " in " (s.packs) } }
                    div { dt { "Reclaimable" } dd data-stat="unreferenced_stored_bytes" data-value=(s.unreferenced_stored_bytes) { (bytes_cell(s.unreferenced_stored_bytes)) } }
                    div { dt { "Dedup" } dd data-stat="dedup_ratio" data-value=(format!("{:.4}", s.dedup_ratio)) { (ratio(s.dedup_ratio)) } }
                    div { dt { "Compression" } dd data-stat="compression_ratio" data-value=(format!("{:.4}", s.compression_ratio)) { (ratio(s.compression_ratio)) } }
                    div { dt { "Encryption" } dd data-stat="encryption" { (s.encryption) } }
                }
                p.muted { "Figures as of " (time_cell(o.now_us, *at)) "." }
            }
        }
        section {
            h2 { "Series" }
            @if by_series.is_empty() {
                p.muted #no-series { "No snapshots this token may see." }
            } @else {
                div.scroll {
                    table #series {
                        thead { tr {
                            th { "Series" } th.num { "Snapshots" } th { "Newest" } th { "Age" }
                            th { "Last verify" } th.num { "Logical (newest)" } th.num { "Stored added" }
                            th.num { "Dedup" } th.num { "Compression" }
                        } }
                        tbody {
                            @for (name, snaps) in &by_series {
                                @let newest = snaps[snaps.len() - 1];
                                @let age_us = o.now_us - newest.header.time_us;
                                @let limit = o.limits.get(*name);
                                @let stale = limit.is_some_and(|l| age_us > l.max_us);
                                @let damaged = snaps.iter().filter(|s| s.damage.is_some()).count();
                                @let logical: u64 = snaps.iter().map(|s| s.logical_bytes).sum();
                                @let raw: u64 = snaps.iter().map(|s| s.new_raw_bytes).sum();
                                @let stored: u64 = snaps.iter().map(|s| s.new_stored_bytes).sum();
                                tr data-series=(name) data-stale=(u8::from(stale)) data-damaged=(damaged) {
                                    td { a href=(format!("/ui/series/{name}")) { (name) } }
                                    td.num.count { (snaps.len()) }
                                    td.newest { a href=(format!("/ui/snapshot/{}", newest.id.to_hex())) data-id=(newest.id.to_hex()) { (short(&newest.id.to_hex())) } " " (time_cell(o.now_us, newest.header.time_us)) }
                                    td.age.stale[stale] data-age-seconds=(age_us / 1_000_000) title=[limit.map(|l| l.why.clone())] {
                                        (age(o.now_us, newest.header.time_us))
                                        @if stale { " — stale" }
                                    }
                                    @match (o.last_verify, damaged) {
                                        (_, d) if d > 0 => td.verify.bad data-result="damaged" { (d) " damaged snapshot(s)" },
                                        (Some(v), _) => td.verify.good data-result="clean" title="the newest run that read the whole repository" { "clean, " (v.kind) " " (age(o.now_us, v.time_us)) },
                                        (None, _) => td.verify.warn data-result="never" { "never verified" },
                                    }
                                    td.num.logical { (bytes_cell(newest.logical_bytes)) }
                                    td.num.stored { (bytes_cell(stored)) }
                                    td.num.dedup { (ratio_cell(logical, raw)) }
                                    td.num.compression { (ratio_cell(raw, stored)) }
                                }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Stored bytes over time" }
            p.muted { "Bytes the backups of the snapshots shown added, summed in time order." }
            (svg::line("plot-stored", "Stored bytes over time", &cumulative_stored(o.catalogue)))
            h2 { "Daily delta per series (last " (DAYS) " days)" }
            (svg::stacked_bars("plot-delta", "Stored bytes added per day and series", &daily, &names))
        }
    };
    layout("Overview", Some(viewer), "overview", &body)
}

//! Health: the verification history, the damage map with how to repair it, the quarantine,
//! and (with `serve --jobs`) the job runs with their steps and hook output.

use maud::{html, Markup};

use super::{age, bytes_cell, layout, short, time_cell, Viewer};
use crate::dashboard::data::Catalogue;
use crate::jobs::record::RunRecord;
use crate::verify_log::VerifyRecord;

/// What the health page shows.
pub struct HealthView<'a> {
    /// The visible snapshots.
    pub catalogue: &'a Catalogue,
    /// Verification runs, newest first.
    pub verifies: &'a [VerifyRecord],
    /// Quarantined objects (key, bytes; the first of them) and how many there are, for
    /// viewers of every series.
    pub quarantine: Option<(Vec<(String, u64)>, usize)>,
    /// Job runs per job (name, newest first, unreadable records).
    pub jobs: Vec<(String, Vec<RunRecord>, Vec<String>)>,
    /// Job files that did not load.
    pub job_errors: Vec<String>,
    /// Whether `serve --jobs` was given.
    pub jobs_configured: bool,
    /// The repository as commands name it.
    pub repository: String,
    /// Now, µs.
    pub now_us: i64,
}

/// The page.
pub fn page(viewer: &Viewer, h: &HealthView<'_>) -> String {
    let body = html! {
        h1 { "Health" }
        (damage_section(h))
        (verify_section(h))
        (quarantine_section(h))
        (jobs_section(h))
    };
    layout("Health", Some(viewer), "health", &body)
}

/// Damaged snapshots, the damage map, how to repair.
fn damage_section(h: &HealthView<'_>) -> Markup {
    let damaged: Vec<_> = h
        .catalogue
        .snaps
        .iter()
        .filter(|s| s.damage.is_some())
        .collect();
    // The newest run that listed ranges, for the map.
    let ranges_from = h.verifies.iter().find(|v| !v.damaged_ranges.is_empty());
    html! {
        section {
            h2 { "Damage" }
            @if damaged.is_empty() {
                p.good #no-damage { "No snapshot this token may see is marked damaged." }
            } @else {
                div.scroll { table #damage {
                    thead { tr { th { "Snapshot" } th { "Series" } th { "Found" } th.num { "Ranges" } th.num { "Bytes" } th { "File" } } }
                    tbody { @for s in &damaged {
                        @let d = s.damage.unwrap_or_default();
                        @let hex = s.id.to_hex();
                        tr data-id=(hex) data-ranges=(d.ranges) data-bytes=(d.bytes) {
                            td { a href=(format!("/ui/snapshot/{hex}")) { code { (short(&hex)) } } }
                            td { (s.series()) }
                            td { (time_cell(h.now_us, d.marked_at_us)) }
                            td.num { (d.ranges) }
                            td.num { (bytes_cell(d.bytes)) }
                            td { @if d.file_damaged { span.bad { "damaged" } } @else { "ok" } }
                        }
                    } }
                } }
                @if let Some(v) = ranges_from {
                    h2 { "Damage map" }
                    p.muted { "Byte ranges the verification of " (time_cell(h.now_us, v.time_us)) " found damaged"
                        @if v.ranges_left_out > 0 && h.catalogue.whole { " (" (v.ranges_left_out) " more not listed)" } "." }
                    div.scroll { table #damage-map {
                        thead { tr { th { "Snapshot" } th { "Disk" } th.num { "Offset" } th.num { "Length" } } }
                        tbody { @for r in v.damaged_ranges.iter().filter(|r| damaged.iter().any(|s| s.id.to_hex() == r.snapshot)) {
                            tr data-id=(r.snapshot) data-disk=(r.disk) data-offset=(r.offset) data-length=(r.length) {
                                td { a href=(format!("/ui/snapshot/{}", r.snapshot)) { code { (short(&r.snapshot)) } } }
                                td { (r.disk) } td.num { (r.offset) } td.num { (r.length) }
                            }
                        } }
                    } }
                }
                h2 { "How to repair" }
                pre #repair-help {
                    "# from another copy of the repository (a sync target, a seed)\n"
                    "tessera repair " (h.repository) " --from /offsite/repo\n"
                    "# from the machines' disks themselves, for the damaged ranges they still hold\n"
                    "tessera repair " (h.repository) " --from-source DISK=/dev/...\n"
                    "# or take a key backup of the affected series: it re-stores damaged chunks it reads\n"
                    "tessera backup " (h.repository) " --series SERIES --full ...\n"
                    "# then check again\n"
                    "tessera verify " (h.repository)
                }
            }
        }
    }
}

/// The verification runs.
fn verify_section(h: &HealthView<'_>) -> Markup {
    html! {
        section {
            h2 { "Verification runs" }
            @if h.verifies.is_empty() {
                p.warn #no-verify { "No verification has run yet: " code { "tessera verify " (h.repository) } }
            } @else {
                div.scroll { table #verify-history {
                    thead { tr { th { "Ended" } th { "Kind" } th { "Host" } th { "Scope" } th.num { "Objects read" } th.num { "Bytes read" } th { "Result" } } }
                    tbody { @for v in h.verifies {
                        @if h.catalogue.whole {
                            tr data-kind=(v.kind) data-clean=(u8::from(v.clean())) data-problems=(v.problems) {
                                (run_cells(h, v))
                                td { @if v.clean() { span.good { "clean" } } @else {
                                    span.bad { (v.problems) " problem(s): " (v.damaged_objects) " damaged object(s), " (v.damaged_packs) " damaged pack(s), " (v.damaged_snapshot_count.max(v.damaged_snapshots.len() as u64)) " snapshot(s)" }
                                } }
                            }
                        } @else {
                            // A token of some series learns only about its own snapshots.
                            @let mine = v.damaged_snapshots.iter().filter(|id| h.catalogue.snaps.iter().any(|s| s.id.to_hex() == **id)).count();
                            tr data-kind=(v.kind) data-clean=(u8::from(mine == 0)) data-problems=(mine) {
                                (run_cells(h, v))
                                td { @if mine == 0 { span.good { "no damage in these series" } } @else { span.bad { (mine) " damaged snapshot(s)" } } }
                            }
                        }
                    } }
                } }
            }
        }
    }
}

/// The cells of a verification run that every viewer may see.
fn run_cells(h: &HealthView<'_>, v: &VerifyRecord) -> Markup {
    html! {
        td { (time_cell(h.now_us, v.time_us)) }
        td { (v.kind) @if v.objects_skipped_recently_verified > 0 { " (skipping " (v.objects_skipped_recently_verified) " recently verified)" } }
        td { (v.host) }
        td { @match (v.scope_snapshots, h.catalogue.whole) {
            (None, _) => "everything",
            (Some(n), true) => { (n) " snapshot(s)" },
            (Some(_), false) => "some snapshots",
        } }
        td.num { (v.objects_read) }
        td.num { (bytes_cell(v.bytes_read)) }
    }
}

/// The quarantine (for viewers of every series).
fn quarantine_section(h: &HealthView<'_>) -> Markup {
    html! {
        @if let Some((q, count)) = &h.quarantine {
            section {
                h2 { "Quarantine" }
                @if *count > q.len() {
                    p.muted #quarantine-more { (count) " objects are quarantined; the first " (q.len()) " are listed." }
                }
                @if q.is_empty() {
                    p.muted #quarantine-empty { "Nothing is quarantined." }
                } @else {
                    table #quarantine { thead { tr { th { "Object" } th.num { "Bytes" } } }
                        tbody { @for (key, size) in q { tr data-key=(key) { td { code { (key) } } td.num { (bytes_cell(*size)) } } } } }
                }
            }
        }
    }
}

/// The job runs.
fn jobs_section(h: &HealthView<'_>) -> Markup {
    html! {
        section {
            h2 { "Job runs" }
            @if !h.jobs_configured {
                p.muted #no-jobs { "No jobs: start " code { "tessera serve" } " with " code { "--jobs DIR" } " to show their runs." }
            }
            @for e in &h.job_errors { p.error.job-error { (e) } }
            @for (name, runs, skipped) in &h.jobs {
                h2.job data-job=(name) { "Job " (name) }
                @for s in skipped { p.error { (s) } }
                @if runs.is_empty() { p.muted { "No runs yet." } }
                div.scroll { table.runs data-job=(name) {
                    thead { tr { th { "Started" } th { "Trigger" } th { "Mode" } th { "Outcome" } th.num { "Took" } th { "Summary" } } }
                    tbody { @for r in runs {
                        tr data-run=(r.id) data-outcome=(r.outcome.as_str()) {
                            td { (time_cell(h.now_us, r.started_us)) }
                            td { (format!("{:?}", r.trigger).to_lowercase()) }
                            td { (r.mode) }
                            td class=(if r.outcome.succeeded() { "good" } else { "bad" }) { (r.outcome.as_str()) }
                            td.num { @if r.duration_ms < 1000 { (r.duration_ms) " ms" } @else { (r.duration_ms / 1000) " s" } }
                            td {
                                details.run-log {
                                    summary { (r.summary()) }
                                    table { tbody { @for st in &r.steps { tr data-step=(st.step) { th { (st.step) } td { (st.outcome) } td.num { (st.duration_ms) " ms" } td { (st.detail) } } } } }
                                    @for w in &r.warnings { p.warn { (w) } }
                                    @for hook in &r.hooks { p { "hook " (hook.phase) ", exit " (hook.exit_code.map_or_else(|| "none".to_string(), |c| c.to_string())) @if hook.timed_out { " (timed out)" } } pre.hook-output { (hook.output) } }
                                }
                            }
                        }
                    } }
                } }
            }
            @if h.verifies.first().is_some_and(|v| h.now_us - v.time_us > 7 * 86_400_000_000) {
                p.warn #verify-old { "The last verification ran " (age(h.now_us, h.verifies[0].time_us)) "." }
            }
        }
    }
}

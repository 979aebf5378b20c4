//! One snapshot: its disks, tags and sources, what changed since the previous snapshot of
//! its series (a strip per disk), its space, its damage, the buttons that protect or forget
//! it (admin), and the commands that restore, export or mount it.

use maud::{html, Markup};

use super::{bytes_cell, csrf_field, layout, short, time_cell, Viewer};
use crate::dashboard::data::Snap;
use crate::dashboard::svg;
use crate::verify_log::RangeRecord;

/// The most rects a strip draws (extents are merged to this resolution).
pub const STRIP_RESOLUTION: usize = 1000;

/// What changed in one disk since the previous snapshot.
pub struct DiskChanges {
    /// The disk.
    pub name: String,
    /// Its size now.
    pub size: u64,
    /// Changed `(offset, length)` ranges.
    pub extents: Vec<(u64, u64)>,
}

/// What the snapshot page shows.
pub struct SnapshotView<'a> {
    /// The snapshot.
    pub snap: &'a Snap,
    /// Stored bytes it alone references (from the cache), and when they were computed.
    pub freed: (Option<u64>, i64),
    /// The previous snapshot of the series (hex) and the changes since, or why there are none.
    pub changes: Result<(String, Vec<DiskChanges>), String>,
    /// Damaged ranges the last verification that found damage listed for it.
    pub damaged_ranges: Vec<&'a RangeRecord>,
    /// The repository as commands name it.
    pub repository: String,
    /// Now, µs.
    pub now_us: i64,
    /// A line about what was just done.
    pub notice: Option<String>,
}

/// Merges `extents` of a disk of `size` bytes so that at most [`STRIP_RESOLUTION`] remain
/// (neighbours closer than one strip pixel are joined).
pub fn coarsen(extents: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    let pixel = (size / STRIP_RESOLUTION as u64).max(1);
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(off, len) in extents {
        match out.last_mut() {
            Some((o, l)) if off <= *o + *l + pixel => *l = (off + len).max(*o + *l) - *o,
            _ => out.push((off, len)),
        }
    }
    out
}

/// The page.
pub fn page(viewer: &Viewer, v: &SnapshotView<'_>) -> String {
    let snap = v.snap;
    let hex = snap.id.to_hex();
    let series = snap.series();
    let body = html! {
        h1 { "Snapshot " code #snapshot-id data-id=(hex) { (short(&hex)) } }
        @if let Some(n) = &v.notice {
            p.notice #notice { (n) }
        }
        @if let Some(d) = &snap.damage {
            p.notice.bad #damage-note data-ranges=(d.ranges) data-bytes=(d.bytes) {
                "The last verification found this snapshot damaged: " (d.ranges) " range(s), " (bytes_cell(d.bytes))
                @if d.file_damaged { ", and its snapshot file" }
                ". See " a href="/ui/health" { "Health" } " for the ranges and how to repair."
            }
        }
        dl.figures #facts {
            div { dt { "Series" } dd { a #series-link href=(format!("/ui/series/{series}")) { (series) } } }
            div { dt { "Taken" } dd { (time_cell(v.now_us, snap.header.time_us)) } }
            div { dt { "Mode" } dd #mode data-mode=(snap.mode) { (snap.mode) } }
            div { dt { "Protected" } dd #protected data-protected=(u8::from(snap.protected)) { @if snap.protected { "yes" } @else { "no" } } }
            div { dt { "Logical" } dd { (bytes_cell(snap.logical_bytes)) } }
            div { dt { "New stored" } dd #new-stored { (bytes_cell(snap.new_stored_bytes)) } }
            @if let Some(freed) = v.freed.0 {
                div { dt { "Freed if forgotten" } dd #freed title=(format!("as of {}", crate::time::format_us(v.freed.1))) { (bytes_cell(freed)) } }
            }
            div { dt { "Took" } dd { (snap.header.duration_ms) " ms" } }
        }
        @if viewer.admin() {
            section #actions {
                @if snap.protected {
                    form.inline #unprotect method="post" action=(format!("/ui/snapshot/{hex}/unprotect")) {
                        (csrf_field(viewer)) button type="submit" { "Unprotect" }
                    }
                } @else {
                    form.inline #protect method="post" action=(format!("/ui/snapshot/{hex}/protect")) {
                        (csrf_field(viewer)) button type="submit" { "Protect" }
                    }
                    " "
                    a #forget href=(format!("/ui/snapshot/{hex}/forget")) { "Forget…" }
                }
            }
        }
        h2 { "Disks" }
        div.scroll { table #disks {
            thead { tr { th { "Disk" } th.num { "Size" } th.num { "Block" } th { "Mode" } th.num { "Read" } th.num { "New chunks" } th.num { "New stored" } } }
            tbody {
                @for d in &snap.header.disks {
                    tr data-disk=(d.name) data-bytes=(d.size) {
                        td { (d.name) }
                        td.num { (bytes_cell(d.size)) }
                        td.num { (bytes_cell(u64::from(d.block_size))) }
                        td { (d.identity.iter().find(|(k, _)| k == "backup.mode").map_or("", |(_, m)| m.as_str())) }
                        td.num { (bytes_cell(d.stats.bytes_read)) }
                        td.num { (d.stats.new_chunks) }
                        td.num { (bytes_cell(d.stats.new_stored_bytes)) }
                    }
                }
            }
        } }
        (changes_section(v))
        @if !snap.header.tags.is_empty() {
            h2 { "Tags" }
            table #tags { tbody { @for (k, val) in &snap.header.tags { tr data-tag=(k) { th { (k) } td { (val) } } } } }
        }
        h2 { "Sources" }
        @for d in &snap.header.disks {
            details {
                summary { (d.name) }
                table.identity data-disk=(d.name) { tbody { @for (k, val) in &d.identity { tr { th { (k) } td { (val) } } } } }
            }
        }
        @if !v.damaged_ranges.is_empty() {
            h2 { "Damaged ranges" }
            table #damaged-ranges { thead { tr { th { "Disk" } th.num { "Offset" } th.num { "Length" } } }
                tbody { @for r in &v.damaged_ranges { tr data-disk=(r.disk) data-offset=(r.offset) data-length=(r.length) { td { (r.disk) } td.num { (r.offset) } td.num { (r.length) } } } } }
        }
        (commands(v))
    };
    layout(
        &format!("Snapshot {}", short(&hex)),
        Some(viewer),
        "",
        &body,
    )
}

/// The changed extents against the previous snapshot, a strip per disk.
fn changes_section(v: &SnapshotView<'_>) -> Markup {
    html! {
        h2 { "Changed since the previous snapshot" }
        @match &v.changes {
            Ok((prev, disks)) => {
                p.muted { "Against " a href=(format!("/ui/snapshot/{prev}")) #previous data-id=(prev) { code { (short(prev)) } } "." }
                @for d in disks {
                    @let changed: u64 = d.extents.iter().map(|e| e.1).sum();
                    p { strong { (d.name) } ": " (bytes_cell(changed)) " changed in " (d.extents.len()) " extent(s)" }
                    (svg::strip(&d.name, d.size, &coarsen(&d.extents, d.size)))
                }
            }
            Err(why) => p.muted #no-changes { (why) },
        }
    }
}

/// The commands that restore, export, serve and explore it.
fn commands(v: &SnapshotView<'_>) -> Markup {
    let hex = v.snap.id.to_hex();
    let repo = &v.repository;
    let first_disk = v
        .snap
        .header
        .disks
        .first()
        .map_or("disk0", |d| d.name.as_str());
    html! {
        h2 { "Use it" }
        pre #commands {
            "# restore every disk (sparse files DIR/NAME.raw)\n"
            "tessera restore " (repo) " " (hex) " /restore/dir\n"
            "# export one disk as qcow2\n"
            "tessera export " (repo) " " (hex) ":" (first_disk) " " (first_disk) ".qcow2 --format qcow2\n"
            "# serve it read-only over NBD (mount it with qemu-nbd or nbdfuse)\n"
            "tessera serve-nbd " (repo) " " (hex) " --listen 127.0.0.1:10809\n"
            "# mount every snapshot's disks and partitions as files (FUSE), for mount -o loop,ro\n"
            "tessera mount " (repo) " /mnt/backups\n"
            "# list files inside it\n"
            "tessera files ls -l " (repo) " " (hex) ":" (first_disk) ":/"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::coarsen;

    #[test]
    fn coarsen_joins_neighbours_within_a_pixel() {
        let size = 1000 * 4096;
        let extents: Vec<(u64, u64)> = (0..5000).map(|i| (i * 800, 100)).collect();
        let c = coarsen(&extents, size);
        assert!(c.len() <= 1000, "{}", c.len());
        assert_eq!(c[0].0, 0);
        let last = extents.last().unwrap();
        let end = c.last().map(|(o, l)| o + l).unwrap();
        assert_eq!(end, last.0 + last.1);
        assert_eq!(coarsen(&[(0, 10), (1_000_000, 10)], size).len(), 2);
    }
}

//! The forget confirmation: the exact stored bytes forgetting a snapshot frees, and the form
//! that forgets it, carrying the confirmation token of this showing (SPEC §27.2).

use maud::html;

use super::{bytes_cell, csrf_field, layout, short, time_cell, Viewer};
use crate::dashboard::data::Snap;

/// The page for `snap`, whose forget frees `freed` stored bytes (`objects` objects), with
/// `notice` (the figures changed since the last showing) if any.
pub fn page(
    viewer: &Viewer,
    snap: &Snap,
    freed: u64,
    objects: u64,
    confirm: &str,
    notice: Option<&str>,
    now_us: i64,
) -> String {
    let hex = snap.id.to_hex();
    let body = html! {
        h1 { "Forget snapshot " code { (short(&hex)) } "?" }
        @if let Some(n) = notice {
            p.notice.bad #notice { (n) }
        }
        p {
            "Snapshot " code { (hex) } " of series " strong { (snap.series()) } ", taken " (time_cell(now_us, snap.header.time_us)) "."
        }
        p #freed data-bytes=(freed) data-objects=(objects) {
            "Forgetting it frees " strong { (bytes_cell(freed)) } " (" (objects) " objects no other snapshot references), reclaimed by the next "
            code { "tessera compact" } ". Every other snapshot stays whole: nothing is rewritten."
        }
        form #confirm-forget method="post" action=(format!("/ui/snapshot/{hex}/forget")) {
            (csrf_field(viewer))
            input type="hidden" name="confirm" value=(confirm);
            button.danger type="submit" { "Forget this snapshot" }
            " "
            a href=(format!("/ui/snapshot/{hex}")) { "Cancel" }
        }
    };
    layout("Forget snapshot", Some(viewer), "", &body)
}

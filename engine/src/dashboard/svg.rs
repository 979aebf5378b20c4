//! The dashboard's plots, as SVG markup inside the page: presentation attributes only (no
//! `style`), so the Content-Security-Policy needs no `unsafe-inline`. Each plot carries its
//! figures in `data-*` attributes for scripts and tests.

use maud::{html, Markup};

use super::pages::bytes;

const W: f64 = 640.0;
const H: f64 = 220.0;
const LEFT: f64 = 70.0;
const BOTTOM: f64 = 24.0;
const TOP: f64 = 10.0;
const PALETTE: [&str; 8] = [
    "#2a6f97", "#e76f51", "#2a9d8f", "#e9c46a", "#8d5a97", "#577590", "#f4a261", "#43aa8b",
];

/// The colour of the `i`-th series.
pub fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

fn date(us: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_micros(us)
        .map_or_else(String::new, |t| t.format("%Y-%m-%d").to_string())
}

/// A line of `(time µs, bytes)` points, oldest first.
pub fn line(id: &str, title: &str, points: &[(i64, u64)]) -> Markup {
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return html! { p.muted #(id) { "No snapshots yet." } };
    };
    let max_bytes = points.iter().map(|p| p.1).max().unwrap_or(0).max(1);
    let max = max_bytes as f64;
    let span = (last.0 - first.0).max(1) as f64;
    let x = |t: i64| LEFT + (t - first.0) as f64 / span * (W - LEFT - 10.0);
    let y = |v: u64| TOP + (1.0 - v as f64 / max) * (H - TOP - BOTTOM);
    let path: Vec<String> = points
        .iter()
        .map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v)))
        .collect();
    html! {
        svg.plot #(id) viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(title)
            data-points=(points.len()) data-last-bytes=(last.1) {
            title { (title) }
            line x1=(LEFT) y1=(H - BOTTOM) x2=(W - 10.0) y2=(H - BOTTOM) stroke="#9aa5ab" {}
            line x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(H - BOTTOM) stroke="#9aa5ab" {}
            text x=(LEFT - 6.0) y=(TOP + 10.0) text-anchor="end" font-size="11" fill="#5c6b73" { (bytes(max_bytes)) }
            text x=(LEFT - 6.0) y=(H - BOTTOM) text-anchor="end" font-size="11" fill="#5c6b73" { "0" }
            text x=(LEFT) y=(H - 6.0) font-size="11" fill="#5c6b73" { (date(first.0)) }
            text x=(W - 10.0) y=(H - 6.0) text-anchor="end" font-size="11" fill="#5c6b73" { (date(last.0)) }
            polyline points=(path.join(" ")) fill="none" stroke=(colour(0)) stroke-width="2" {}
        }
    }
}

/// Stacked bars: per day, the bytes of each series (`series` gives their order and colours).
pub fn stacked_bars(
    id: &str,
    title: &str,
    days: &[(i64, Vec<(String, u64)>)],
    series: &[&str],
) -> Markup {
    let totals: Vec<u64> = days
        .iter()
        .map(|(_, v)| v.iter().map(|(_, b)| b).sum())
        .collect();
    let max_bytes = totals.iter().copied().max().unwrap_or(0).max(1);
    let max = max_bytes as f64;
    let n = days.len().max(1) as f64;
    let slot = (W - LEFT - 10.0) / n;
    let plot_h = H - TOP - BOTTOM;
    let colour_of = |name: &str| colour(series.iter().position(|s| *s == name).unwrap_or(0));
    html! {
        svg.plot #(id) viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(title)
            data-days=(days.len()) data-total-bytes=(totals.iter().sum::<u64>()) {
            title { (title) }
            line x1=(LEFT) y1=(H - BOTTOM) x2=(W - 10.0) y2=(H - BOTTOM) stroke="#9aa5ab" {}
            text x=(LEFT - 6.0) y=(TOP + 10.0) text-anchor="end" font-size="11" fill="#5c6b73" { (bytes(max_bytes)) }
            @if let (Some(a), Some(b)) = (days.first(), days.last()) {
                text x=(LEFT) y=(H - 6.0) font-size="11" fill="#5c6b73" { (date(a.0)) }
                text x=(W - 10.0) y=(H - 6.0) text-anchor="end" font-size="11" fill="#5c6b73" { (date(b.0)) }
            }
            @for (i, (day, parts)) in days.iter().enumerate() {
                @for (name, b, y0, h) in stack(parts, max, plot_h) {
                    rect x=(format!("{:.1}", LEFT + i as f64 * slot + 1.0)) y=(format!("{y0:.1}"))
                        width=(format!("{:.1}", (slot - 2.0).max(1.0))) height=(format!("{h:.1}"))
                        fill=(colour_of(name)) data-series=(name) data-day=(date(*day)) data-bytes=(b) {
                        title { (name) " " (date(*day)) ": " (bytes(b)) }
                    }
                }
            }
        }
        p.legend {
            @for (i, name) in series.iter().enumerate() {
                span {
                    svg width="10" height="10" aria-hidden="true" { rect width="10" height="10" fill=(colour(i)) {} }
                    " " (name)
                }
            }
        }
    }
}

/// The bars of one day, bottom up: each part with its top and height.
fn stack(parts: &[(String, u64)], max: f64, plot_h: f64) -> Vec<(&str, u64, f64, f64)> {
    let mut base = H - BOTTOM;
    parts
        .iter()
        .map(|(name, b)| {
            let h = *b as f64 / max * plot_h;
            base -= h;
            (name.as_str(), *b, base, h)
        })
        .collect()
}

/// The changed extents of a disk of `size` bytes as a strip: one rect per extent.
pub fn strip(disk: &str, size: u64, extents: &[(u64, u64)]) -> Markup {
    let size = size.max(1) as f64;
    html! {
        svg.strip viewBox="0 0 1000 18" preserveAspectRatio="none" data-disk=(disk)
            data-extents=(extents.len()) data-changed-bytes=(extents.iter().map(|e| e.1).sum::<u64>()) {
            title { (disk) ": " (extents.len()) " changed extents" }
            @for (off, len) in extents {
                rect.changed x=(format!("{:.2}", *off as f64 / size * 1000.0)) y="0"
                    width=(format!("{:.2}", (*len as f64 / size * 1000.0).max(0.5))) height="18"
                    fill="#e76f51" data-offset=(off) data-length=(len) {}
            }
        }
    }
}

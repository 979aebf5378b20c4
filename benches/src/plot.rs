//! SVG bar charts of benchmark results, with no plotting dependency: grouped horizontal
//! bars (one group per operation, one bar per tool) with the value printed at each bar's
//! end, so the README can embed the figures the macro benchmark measured.

use std::fmt::Write as _;

/// One group of bars: a label (the operation) and `(series, value)` pairs.
pub struct Group {
    /// Operation name.
    pub label: String,
    /// One bar per series (tool); the order is kept.
    pub bars: Vec<(String, f64)>,
}

/// Colours of the tools; anything else (baselines) is grey.
fn color_of(series: &str) -> &'static str {
    match series {
        "tessera" => "#1b7837",
        "restic" => "#2166ac",
        "borg" => "#b2182b",
        _ => "#8c8c8c",
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A chart titled `title` whose values are in `unit` (e.g. "MB/s"). Each bar is labelled
/// with its value and series; tools have fixed colours, baselines are grey.
pub fn bar_chart(title: &str, unit: &str, groups: &[Group]) -> String {
    let max = groups
        .iter()
        .flat_map(|g| g.bars.iter().map(|(_, v)| *v))
        .fold(0.0_f64, f64::max)
        .max(1e-9);
    let (left, bar_h, gap, width) = (170.0, 17.0, 14.0, 800.0);
    let plot_w = width - left - 250.0;
    let mut y = 40.0;
    let mut body = String::new();
    for g in groups {
        let group_h = bar_h * g.bars.len() as f64;
        let _ = writeln!(
            body,
            r#"<text x="{}" y="{:.1}" text-anchor="end" font-size="13" dominant-baseline="middle">{}</text>"#,
            left - 8.0,
            y + group_h / 2.0,
            escape(&g.label)
        );
        for (s, v) in &g.bars {
            let color = color_of(s);
            let w = (v / max * plot_w).max(1.0);
            let _ = writeln!(
                body,
                r#"<rect x="{left}" y="{y:.1}" width="{w:.1}" height="{:.1}" fill="{color}"><title>{}: {v:.0} {unit}</title></rect>"#,
                bar_h - 2.0,
                escape(s)
            );
            let _ = writeln!(
                body,
                r#"<text x="{:.1}" y="{:.1}" font-size="11" dominant-baseline="middle">{v:.0} {}</text>"#,
                left + w + 4.0,
                y + (bar_h - 2.0) / 2.0,
                escape(s)
            );
            y += bar_h;
        }
        y += gap;
    }
    let height = y + 10.0;
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height:.0}" viewBox="0 0 {width} {height:.0}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="20" font-size="15" font-weight="bold">{} ({})</text>
{body}</svg>
"#,
        escape(title),
        escape(unit)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_one_bar_per_value_and_a_legend() {
        let svg = bar_chart(
            "speed",
            "MB/s",
            &[
                Group {
                    label: "first backup".into(),
                    bars: vec![("tessera".into(), 600.0), ("borg".into(), 260.0)],
                },
                Group {
                    label: "restore <x>".into(),
                    bars: vec![("tessera".into(), 1100.0)],
                },
            ],
        );
        assert_eq!(svg.matches("<rect x=\"170\"").count(), 3);
        assert!(svg.contains("restore &lt;x&gt;"));
        assert!(svg.contains(">260 borg</text>"));
        assert!(svg.starts_with("<svg"));
    }
}

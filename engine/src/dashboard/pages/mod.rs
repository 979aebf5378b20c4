//! The dashboard's HTML (SPEC §27.4), rendered with `maud`: every interpolated value is
//! escaped, so names, tags and messages from the repository or a job file cannot add markup.
//! The pages carry no script and no inline style (the Content-Security-Policy allows
//! neither); figures the tests and scripts read are in `data-*` attributes next to their
//! human form.

pub mod forget;
pub mod health;
pub mod login;
pub mod overview;
pub mod series;
pub mod snapshot;

use maud::{html, Markup, DOCTYPE};

use crate::sync::http::tokens::Role;
use crate::time::format_us;

/// Who is looking, and the secret their forms carry.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// The token's name.
    pub name: String,
    /// The token's role (`read` or `admin`).
    pub role: Role,
    /// The session's CSRF secret.
    pub csrf: String,
}

impl Viewer {
    /// Whether the viewer may change things.
    pub fn admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// A whole page: head, the top bar (for a logged-in viewer), `body`.
pub fn layout(title: &str, viewer: Option<&Viewer>, here: &str, body: &Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="same-origin";
                title { (title) " · tessera" }
                link rel="stylesheet" href="/ui/static/app.css";
                link rel="icon" href="/ui/static/icon.svg" type="image/svg+xml";
            }
            body {
                header.top {
                    a.brand href="/ui/" { "tessera" }
                    @if let Some(v) = viewer {
                        nav {
                            a #nav-overview href="/ui/" class=[(here == "overview").then_some("here")] { "Overview" }
                            a #nav-health href="/ui/health" class=[(here == "health").then_some("here")] { "Health" }
                        }
                        span.who #whoami data-token=(v.name) data-role=(v.role.name()) {
                            (v.name) " (" (v.role.name()) ") "
                            form.inline #logout method="post" action="/ui/logout" {
                                input type="hidden" name="csrf" value=(v.csrf);
                                button type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
    .into_string()
}

/// A page that only says what went wrong.
pub fn error_page(viewer: Option<&Viewer>, title: &str, message: &str) -> String {
    layout(
        title,
        viewer,
        "",
        &html! {
            h1 { (title) }
            p.error #error-message { (message) }
            p { a href="/ui/" { "Back to the overview" } }
        },
    )
}

/// A byte count as the CLI prints it.
pub fn bytes(n: u64) -> String {
    crate::units::format_bytes(n)
}

/// A byte count: its human form, the exact count in `data-bytes` and the title.
pub fn bytes_cell(n: u64) -> Markup {
    html! { span data-bytes=(n) title=(format!("{n} bytes")) { (bytes(n)) } }
}

/// `3 h ago`, `2 d ago`, `in 5 min` (clock skew).
pub fn age(now_us: i64, at_us: i64) -> String {
    let d = now_us.saturating_sub(at_us);
    let span = super::jobs::human_span(std::time::Duration::from_micros(d.unsigned_abs()));
    if d >= 0 {
        format!("{span} ago")
    } else {
        format!("in {span}")
    }
}

/// A time: RFC 3339 UTC, with the age in the title.
pub fn time_cell(now_us: i64, at_us: i64) -> Markup {
    html! { time datetime=(format_us(at_us)) title=(age(now_us, at_us)) { (format_us(at_us).replace('T', " ").replace('Z', " UTC")) } }
}

/// `2.31x`.
pub fn ratio(r: f64) -> String {
    format!("{r:.2}x")
}

/// The first 12 hex digits of an id.
pub fn short(hex: &str) -> &str {
    hex.get(..12).unwrap_or(hex)
}

/// The hidden CSRF field every form carries.
pub fn csrf_field(v: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(v.csrf); }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_as_people_write_them() {
        assert_eq!(bytes(17), "17 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(300 << 20), "300.00 MiB");
        assert_eq!(bytes(u64::MAX), "16384.00 PiB");
    }

    #[test]
    fn values_are_escaped() {
        let page = error_page(None, "<b>", "<script>alert(1)</script>");
        assert!(!page.contains("<script>"));
        assert!(page.contains("&lt;script&gt;"));
    }
}

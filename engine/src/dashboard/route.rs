//! The dashboard's URLs (SPEC §27.1), parsed from the request line alone, before anything
//! else is looked at.

use tessera_format::SnapshotId;

/// A page shown to a logged-in browser (`GET`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Page {
    /// `/ui/`: every series at a glance.
    Overview,
    /// `/ui/series/NAME`: one series' timeline.
    Series(String),
    /// `/ui/snapshot/ID`: one snapshot.
    Snapshot(SnapshotId),
    /// `/ui/snapshot/ID/forget`: what forgetting it frees, and the form that does it.
    ConfirmForget(SnapshotId),
    /// `/ui/health`: verification history, damage, quarantine, job runs.
    Health,
}

/// A change asked for by a logged-in browser (`POST`, role `admin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `/ui/snapshot/ID/protect` and `/unprotect`.
    Protect(SnapshotId, bool),
    /// `/ui/snapshot/ID/forget`.
    Forget(SnapshotId),
}

/// What a dashboard request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /`: to the overview.
    Root,
    /// `GET /ui/static/NAME` (and `/favicon.ico`): a file compiled into the binary.
    Asset(&'static Asset),
    /// `GET /ui/login`.
    LoginForm,
    /// `POST /ui/login`.
    Login,
    /// `POST /ui/logout`.
    Logout,
    /// A page.
    Page(Page),
    /// An action.
    Action(Action),
}

/// A static file.
#[derive(Debug, PartialEq, Eq)]
pub struct Asset {
    /// Its path.
    pub path: &'static str,
    /// Its media type.
    pub content_type: &'static str,
    /// Its bytes.
    pub bytes: &'static [u8],
}

/// The stylesheet.
pub static STYLE: Asset = Asset {
    path: "/ui/static/app.css",
    content_type: "text/css; charset=utf-8",
    bytes: include_bytes!("assets/app.css"),
};

/// The icon.
pub static ICON: Asset = Asset {
    path: "/ui/static/icon.svg",
    content_type: "image/svg+xml",
    bytes: include_bytes!("assets/icon.svg"),
};

/// Whether `path` belongs to the dashboard rather than to the sync API.
pub fn is_dashboard_path(path: &str) -> bool {
    path == "/" || path == "/ui" || path == "/favicon.ico" || path.starts_with("/ui/")
}

/// Why a request line names no dashboard route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoute {
    /// Nothing here (404).
    NotFound,
    /// The path exists but not with this method (405); the allowed one.
    Method(&'static str),
}

impl Route {
    /// The route of `method path` (a path of the dashboard, see [`is_dashboard_path`]).
    pub fn parse(method: &str, path: &str) -> Result<Self, NoRoute> {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let id = |s: &str| s.parse::<SnapshotId>().map_err(|_| NoRoute::NotFound);
        let (route, allowed) = match parts.as_slice() {
            ["" | "ui"] => (Self::Root, "GET"),
            ["favicon.ico"] => (Self::Asset(&ICON), "GET"),
            ["ui", "static", name] => match *name {
                "app.css" => (Self::Asset(&STYLE), "GET"),
                "icon.svg" => (Self::Asset(&ICON), "GET"),
                _ => return Err(NoRoute::NotFound),
            },
            ["ui", ""] => (Self::Page(Page::Overview), "GET"),
            ["ui", "health"] => (Self::Page(Page::Health), "GET"),
            ["ui", "login"] => {
                return match method {
                    "GET" => Ok(Self::LoginForm),
                    "POST" => Ok(Self::Login),
                    _ => Err(NoRoute::Method("GET, POST")),
                }
            }
            ["ui", "logout"] => (Self::Logout, "POST"),
            ["ui", "series", name] if valid_series(name) => {
                (Self::Page(Page::Series((*name).to_string())), "GET")
            }
            ["ui", "snapshot", s] => (Self::Page(Page::Snapshot(id(s)?)), "GET"),
            ["ui", "snapshot", s, "forget"] => {
                let s = id(s)?;
                return match method {
                    "GET" => Ok(Self::Page(Page::ConfirmForget(s))),
                    "POST" => Ok(Self::Action(Action::Forget(s))),
                    _ => Err(NoRoute::Method("GET, POST")),
                };
            }
            ["ui", "snapshot", s, "protect"] => {
                (Self::Action(Action::Protect(id(s)?, true)), "POST")
            }
            ["ui", "snapshot", s, "unprotect"] => {
                (Self::Action(Action::Protect(id(s)?, false)), "POST")
            }
            _ => return Err(NoRoute::NotFound),
        };
        if method == allowed {
            Ok(route)
        } else {
            Err(NoRoute::Method(allowed))
        }
    }
}

/// Series names as URLs carry them: the format's own rule, so nothing needs decoding.
fn valid_series(name: &str) -> bool {
    tessera_format::snapshot::validate_name("series name", name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_never_reached_by_get() {
        let id = SnapshotId([7; 32]).to_hex();
        for action in ["protect", "unprotect"] {
            let path = format!("/ui/snapshot/{id}/{action}");
            assert_eq!(Route::parse("GET", &path), Err(NoRoute::Method("POST")));
            assert!(matches!(
                Route::parse("POST", &path),
                Ok(Route::Action(Action::Protect(..)))
            ));
        }
        let forget = format!("/ui/snapshot/{id}/forget");
        assert!(matches!(
            Route::parse("GET", &forget),
            Ok(Route::Page(Page::ConfirmForget(_)))
        ));
        assert!(matches!(
            Route::parse("POST", &forget),
            Ok(Route::Action(Action::Forget(_)))
        ));
        assert_eq!(
            Route::parse("GET", "/ui/logout"),
            Err(NoRoute::Method("POST"))
        );
    }

    #[test]
    fn odd_paths_are_not_found() {
        for path in [
            "/ui/series/a%2fb",
            "/ui/snapshot/zz",
            "/ui/static/../x",
            "/ui/nope",
            "/ui/series/",
        ] {
            assert_eq!(Route::parse("GET", path), Err(NoRoute::NotFound), "{path}");
        }
    }
}

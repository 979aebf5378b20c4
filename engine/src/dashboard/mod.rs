//! The web dashboard of `tessera serve` (SPEC §27): every series' backups, space and health
//! at a glance, served on the same listener, HTTP stack and tokens as the sync API.
//!
//! - [`route`]: the URLs, parsed from the request line alone;
//! - [`respond`]: one request on the server's async side (session, CSRF, role, headers);
//! - [`session`]: the logged-in browsers and the forget confirmations they were shown;
//! - [`work`]: the repository work on the serving thread (pages, protect, forget);
//! - [`data`], [`jobs`]: what the pages show, and the figures cached between requests;
//! - [`pages`], [`svg`]: the HTML and its plots.

pub mod data;
pub mod jobs;
pub mod pages;
pub mod respond;
pub mod route;
pub mod session;
pub mod svg;
pub mod work;

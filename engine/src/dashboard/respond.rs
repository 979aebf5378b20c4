//! One dashboard request, from its head to its answer (SPEC §27.2), on the server's async
//! side: the checks that need no repository (rate limit, method, route, session, token,
//! role, CSRF, confirmation, request slot, in that order, all before the body of an action
//! is acted on), then the repository work on the serving thread ([`super::work`]).
//!
//! - **Login** takes a token in a form body (never in a URL: URLs reach logs and history),
//!   hashes it and looks it up like a bearer token; a wrong token counts against the
//!   address's failure budget ([`crate::sync::http::limiter`]) exactly like a wrong bearer
//!   token. Tokens of role `backup` are refused: they write, they do not look.
//! - **Every page and action** needs a live session whose token still exists; its role and
//!   series are the token's as the tokens file says now.
//! - **Every POST** (login included) must come from the dashboard's own origin: an `Origin`
//!   header, when sent, must be this server's, and `Sec-Fetch-Site`, when sent, must be
//!   `same-origin`. Every POST but login also carries the session's CSRF secret. The cookie
//!   is SameSite=Strict as well; any one of the three stops a cross-site form.
//! - **Nothing changes on GET.** Actions are POST only ([`super::route`]), role `admin`
//!   only; a forget also needs the confirmation token of the page that showed its bytes.
//! - **Every answer** carries the security headers of [`security_headers`]; pages are never
//!   cached.

use std::net::SocketAddr;
use std::sync::Arc;

use cookie::{Cookie, SameSite};
use hyper::body::Incoming;
use hyper::header::{
    HeaderMap, HeaderValue, CONTENT_TYPE, COOKIE, HOST, LOCATION, ORIGIN, SET_COOKIE,
};
use hyper::{Request, Response};
use tessera_format::SnapshotId;

use super::pages::{self, Viewer};
use super::route::{Action, NoRoute, Page, Route};
use super::session::{random_secret, secrets_equal, Session, COOKIE as SESSION_COOKIE};
use super::work::{Outcome, UiJob, Work};
use crate::sync::http::audit::Record;
use crate::sync::http::conn::ConnState;
use crate::sync::http::routes::Queued;
use crate::sync::http::server::{transfer_time, IO_TIMEOUT};
use crate::sync::http::service::{
    content_length, read_body, refuse_with, take_slot, Answer, Shared, Slot,
};
use crate::sync::http::tokens::{hash_token, Role, TokenEntry};

/// What a form without the session's CSRF secret is told.
const CSRF_REFUSED: &str =
    "This form is not from this session (CSRF check failed); nothing was done.";

/// Largest form body accepted.
pub const MAX_FORM_BYTES: u64 = 16 << 10;

/// The Content-Security-Policy of every dashboard answer: nothing but this origin's
/// stylesheet and images; no script at all, no framing, forms only to this origin.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Sets the security headers every dashboard answer carries.
pub fn security_headers(h: &mut HeaderMap) {
    for (name, value) in [
        ("content-security-policy", CSP),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "same-origin"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
        ("cache-control", "no-store"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
}

/// What a handled request answers, before it becomes a response.
struct Reply {
    status: u16,
    body: Vec<u8>,
    content_type: &'static str,
    location: Option<String>,
    set_cookie: Option<String>,
    /// For 405: the methods the path allows.
    allow: Option<&'static str>,
}

impl Reply {
    fn html(status: u16, html: String) -> Self {
        Self {
            status,
            body: html.into_bytes(),
            content_type: "text/html; charset=utf-8",
            location: None,
            set_cookie: None,
            allow: None,
        }
    }

    fn redirect(to: impl Into<String>) -> Self {
        Self {
            location: Some(to.into()),
            ..Self::html(303, String::new())
        }
    }

    fn with_cookie(mut self, cookie: String) -> Self {
        self.set_cookie = Some(cookie);
        self
    }
}

/// A refusal before the request is worked on (its connection closes: a body may still be
/// coming), with how long to wait for a 429.
struct Refused {
    reply: Reply,
    retry_after: Option<std::time::Duration>,
}

fn refused_page(status: u16, viewer: Option<&Viewer>, title: &str, message: &str) -> Refused {
    Refused {
        reply: Reply::html(status, pages::error_page(viewer, title, message)),
        retry_after: None,
    }
}

/// Answers one dashboard request (`req.uri().path()` is a dashboard path).
pub async fn respond(
    shared: &Arc<Shared>,
    conn: &Arc<ConnState>,
    peer: SocketAddr,
    req: Request<Incoming>,
    mut record: Record,
) -> std::io::Result<Response<Answer>> {
    let len = content_length(&req);
    conn.set_deadline(Some(transfer_time(len)));
    let admitted = admit(shared, peer, &req, len, &mut record);
    let (route, session) = match admitted {
        Ok(a) => a,
        Err(refused) => {
            let mut answer = refuse_with(
                conn,
                req,
                refused.reply.status,
                refused.reply.body.clone(),
                refused.retry_after,
                record,
            );
            finish_headers(&mut answer, &refused.reply);
            return Ok(answer);
        }
    };
    let reply = match route {
        Route::Login => {
            let form = read_body(req.into_body(), len, &mut record).await?;
            // A new login replaces the browser's old session, whoever's it was.
            if let Some((cookie, _, _)) = &session {
                shared.sessions.logout(cookie);
            }
            login(shared, peer, &form, &mut record)
        }
        Route::Action(action) => {
            let form = read_body(req.into_body(), len, &mut record).await?;
            let Some((cookie, session, token)) = session else {
                return Ok(answer(conn, record, Reply::redirect("/ui/login"), None));
            };
            match act(shared, conn, &cookie, &session, &token, action, &form).await {
                Ok((r, slot)) => return Ok(answer(conn, record, r, Some(slot))),
                Err(r) => r,
            }
        }
        Route::Logout => {
            let form = read_body(req.into_body(), len, &mut record).await?;
            if let Some((cookie, session, _)) = &session {
                if csrf_ok(session, &form) {
                    shared.sessions.logout(cookie);
                    Reply::redirect("/ui/login").with_cookie(expired_cookie(shared.tls))
                } else {
                    Reply::html(403, pages::error_page(None, "Refused", CSRF_REFUSED))
                }
            } else {
                Reply::redirect("/ui/login").with_cookie(expired_cookie(shared.tls))
            }
        }
        Route::Page(page) => {
            let Some((cookie, session, token)) = session else {
                return Ok(answer(conn, record, Reply::redirect("/ui/login"), None));
            };
            if matches!(page, Page::ConfirmForget(_)) && token.role != Role::Admin {
                let v = viewer(&session, &token);
                let page = pages::error_page(Some(&v), "Refused", &only_admin(&token));
                return Ok(answer(conn, record, Reply::html(403, page), None));
            }
            let notice = notice(&page, req.uri().query().unwrap_or(""));
            match page_reply(shared, conn, &cookie, &session, &token, page, notice).await {
                Ok((r, slot)) => return Ok(answer(conn, record, r, Some(slot))),
                Err(r) => r,
            }
        }
        Route::Root => Reply::redirect("/ui/"),
        Route::LoginForm => match session {
            Some(_) => Reply::redirect("/ui/"),
            None => Reply::html(200, pages::login::page(None)),
        },
        Route::Asset(asset) => Reply {
            status: 200,
            body: asset.bytes.to_vec(),
            content_type: asset.content_type,
            location: None,
            set_cookie: None,
            allow: None,
        },
    };
    Ok(answer(conn, record, reply, None))
}

/// The checks before any body is read: the route, and the live session with its token
/// (when the route needs one: `None` sends the browser to the login page).
#[expect(clippy::type_complexity, reason = "one tuple, named at its one use")]
#[expect(
    clippy::result_large_err,
    reason = "a refusal is answered at once; it never travels up a call chain"
)]
fn admit(
    shared: &Shared,
    peer: SocketAddr,
    req: &Request<Incoming>,
    len: u64,
    record: &mut Record,
) -> Result<(Route, Option<(String, Session, TokenEntry)>), Refused> {
    if let Some(wait) = shared.failures.locked_out(peer.ip()) {
        let mut refused = refused_page(
            429,
            None,
            "Too many tries",
            &format!(
                "Too many wrong tokens from {}; try again in {} s.",
                peer.ip(),
                wait.as_secs() + 1
            ),
        );
        refused.retry_after = Some(wait);
        return Err(refused);
    }
    let session = session_of(shared, req.headers());
    if let Some((_, _, token)) = &session {
        record.token = Some(token.name.clone());
    }
    let method = req.method().as_str();
    let is_post = method == "POST";
    let route = Route::parse(method, req.uri().path()).map_err(|e| match e {
        NoRoute::NotFound => refused_page(404, None, "Not found", "There is no such page."),
        NoRoute::Method(allowed) => {
            let mut r = refused_page(
                405,
                None,
                "Not allowed",
                &format!("{method} is not allowed here; {allowed} is."),
            );
            r.reply.allow = Some(allowed);
            r
        }
    })?;
    if req.headers().contains_key(hyper::header::TRANSFER_ENCODING)
        || (is_post && !req.headers().contains_key(hyper::header::CONTENT_LENGTH))
    {
        return Err(refused_page(
            411,
            None,
            "Refused",
            "Send the form with a Content-Length.",
        ));
    }
    if len > if is_post { MAX_FORM_BYTES } else { 0 } {
        return Err(refused_page(
            413,
            None,
            "Refused",
            "The request body is larger than a dashboard form.",
        ));
    }
    if is_post && !same_origin(req.headers()) {
        return Err(refused_page(403, None, "Refused", "This form was not sent from this dashboard (Origin or Sec-Fetch-Site differs); nothing was done."));
    }
    Ok((route, session))
}

/// The session the request's cookie names, with its token as the tokens file says now;
/// `None` (and the session ended) when either is gone.
fn session_of(shared: &Shared, headers: &HeaderMap) -> Option<(String, Session, TokenEntry)> {
    let value = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == SESSION_COOKIE)?
        .value()
        .to_string();
    let session = shared.sessions.get(&value)?;
    let Some(token) = shared.tokens().find(&session.token_hash).cloned() else {
        shared.sessions.logout(&value);
        return None;
    };
    if token.role == Role::Backup {
        shared.sessions.logout(&value);
        return None;
    }
    Some((value, session, token))
}

/// Whether a POST comes from this dashboard's origin (see the module docs). The origin's
/// host and port are compared with the request's `Host`, not its scheme: behind a
/// TLS-terminating proxy the browser's origin is `https://` while this server speaks HTTP
/// (the proxy must pass `Host` through).
fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(site) = text("sec-fetch-site") {
        if site != "same-origin" && site != "none" {
            return false;
        }
    }
    match text(ORIGIN.as_str()) {
        None => true,
        Some(origin) => {
            let authority = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            authority.is_some_and(|a| text(HOST.as_str()) == Some(a))
        }
    }
}

fn form_field(form: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(form)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn csrf_ok(session: &Session, form: &[u8]) -> bool {
    form_field(form, "csrf").is_some_and(|given| secrets_equal(&given, &session.csrf))
}

fn session_cookie(value: String, tls: bool) -> String {
    Cookie::build((SESSION_COOKIE, value))
        .path("/")
        .http_only(true)
        .secure(tls)
        .same_site(SameSite::Strict)
        .build()
        .to_string()
}

fn expired_cookie(tls: bool) -> String {
    let mut c = Cookie::build((SESSION_COOKIE, ""))
        .path("/")
        .http_only(true)
        .secure(tls)
        .same_site(SameSite::Strict)
        .build();
    c.make_removal();
    c.to_string()
}

fn login(shared: &Shared, peer: SocketAddr, form: &[u8], record: &mut Record) -> Reply {
    let given = form_field(form, "token").unwrap_or_default();
    let hash = hash_token(given.trim().as_bytes());
    let Some(token) = shared.tokens().find(&hash).cloned() else {
        shared.failures.failed(peer.ip());
        return Reply::html(
            401,
            pages::login::page(Some("Wrong token: no token of this server matches it.")),
        );
    };
    record.token = Some(token.name.clone());
    if token.role == Role::Backup {
        return Reply::html(
            403,
            pages::login::page(Some(&format!(
                "Token {:?} has the role backup, which may push backups but not look at them: log in with a token of role read or admin.",
                token.name
            ))),
        );
    }
    let cookie = shared.sessions.login(hash);
    Reply::redirect("/ui/").with_cookie(session_cookie(cookie, shared.tls))
}

fn only_admin(token: &TokenEntry) -> String {
    format!(
        "Token {:?} has the role {}: only admin tokens may change snapshots; nothing was done.",
        token.name,
        token.role.name()
    )
}

fn viewer(session: &Session, token: &TokenEntry) -> Viewer {
    Viewer {
        name: token.name.clone(),
        role: token.role,
        csrf: session.csrf.clone(),
    }
}

/// A line about what was just done, from the fixed set the redirects name (never text
/// from the URL).
fn notice(page: &Page, query: &str) -> Option<String> {
    let q = |name: &str| form_field(query.as_bytes(), name);
    match (page, q("done").as_deref(), q("changed").as_deref()) {
        (Page::Snapshot(_), Some("protected"), _) => Some("Protected: prune and forget will leave this snapshot alone.".into()),
        (Page::Snapshot(_), Some("unprotected"), _) => Some("Unprotected.".into()),
        (Page::Series(_) | Page::Overview, Some("forgotten"), _) => {
            let id = q("id").filter(|i| i.parse::<SnapshotId>().is_ok())?;
            let freed = q("freed")?.parse::<u64>().ok()?;
            Some(format!(
                "Snapshot {} forgotten; {} are reclaimed by the next compaction.",
                pages::short(&id),
                pages::bytes(freed)
            ))
        }
        (Page::ConfirmForget(_), _, Some("1")) => Some(
            "The figures changed since the page you confirmed (a snapshot was published or forgotten): these are the figures now; nothing was forgotten.".into(),
        ),
        _ => None,
    }
}

/// Sends a job to the serving thread, holding a request slot, and waits for its outcome.
async fn dispatch(
    shared: &Shared,
    conn: &Arc<ConnState>,
    job: impl FnOnce(tokio::sync::oneshot::Sender<Outcome>) -> UiJob,
) -> Result<(Outcome, Slot), Reply> {
    let slot = take_slot(shared, conn)
        .map_err(|r| Reply::html(r.status, pages::error_page(None, "Busy", &r.message)))?;
    // While the serving thread works on it there is no deadline (as for the API): the
    // answer's own deadline is set when it is handed over.
    conn.set_deadline(None);
    let (tx, rx) = tokio::sync::oneshot::channel();
    shared.jobs.send(Queued::Dashboard(job(tx))).map_err(|_| {
        Reply::html(
            500,
            pages::error_page(None, "Stopped", "The serving thread stopped."),
        )
    })?;
    let outcome = rx.await.map_err(|_| {
        Reply::html(
            500,
            pages::error_page(None, "Stopped", "The serving thread stopped."),
        )
    })?;
    Ok((outcome, slot))
}

async fn page_reply(
    shared: &Shared,
    conn: &Arc<ConnState>,
    cookie: &str,
    session: &Session,
    token: &TokenEntry,
    page: Page,
    notice: Option<String>,
) -> Result<(Reply, Slot), Reply> {
    let confirm = random_secret();
    let (outcome, slot) = dispatch(shared, conn, |reply| UiJob {
        work: Work::Page(page),
        token: token.clone(),
        viewer: viewer(session, token),
        confirm: confirm.clone(),
        notice,
        reply,
    })
    .await?;
    let reply = match outcome {
        Outcome::Html(status, html) => Reply::html(status, html),
        Outcome::Redirect(to) => Reply::redirect(to),
        Outcome::Confirm {
            html,
            snapshot,
            freed,
        } => {
            if shared.sessions.confirm(cookie, confirm, snapshot, freed) {
                Reply::html(200, html)
            } else {
                Reply::redirect("/ui/login")
            }
        }
    };
    Ok((reply, slot))
}

async fn act(
    shared: &Shared,
    conn: &Arc<ConnState>,
    cookie: &str,
    session: &Session,
    token: &TokenEntry,
    action: Action,
    form: &[u8],
) -> Result<(Reply, Slot), Reply> {
    let v = viewer(session, token);
    if !csrf_ok(session, form) {
        return Err(Reply::html(
            403,
            pages::error_page(Some(&v), "Refused", CSRF_REFUSED),
        ));
    }
    if token.role != Role::Admin {
        return Err(Reply::html(
            403,
            pages::error_page(Some(&v), "Refused", &only_admin(token)),
        ));
    }
    let work = match action {
        Action::Protect(id, on) => Work::Protect(id, on),
        Action::Forget(id) => {
            let given = form_field(form, "confirm").unwrap_or_default();
            let Some(c) = shared.sessions.take_confirmation(cookie, id, &given) else {
                return Err(Reply::html(403, pages::error_page(Some(&v), "Refused", "This forget has no valid confirmation (used, expired, or not shown to this session): open the forget page again to see what it frees; nothing was done.")));
            };
            Work::Forget {
                id,
                expected: c.freed_bytes,
            }
        }
    };
    let (outcome, slot) = dispatch(shared, conn, |reply| UiJob {
        work,
        token: token.clone(),
        viewer: v.clone(),
        confirm: String::new(),
        notice: None,
        reply,
    })
    .await?;
    let reply = match outcome {
        Outcome::Html(status, html) => Reply::html(status, html),
        Outcome::Confirm { html, .. } => Reply::html(200, html),
        Outcome::Redirect(to) => Reply::redirect(to),
    };
    Ok((reply, slot))
}

/// The response for `reply`; it holds `slot` (if any) until hyper has taken its last byte.
fn answer(
    conn: &Arc<ConnState>,
    mut record: Record,
    mut reply: Reply,
    slot: Option<Slot>,
) -> Response<Answer> {
    conn.set_deadline(Some(transfer_time(reply.body.len() as u64)));
    record.status = Some(reply.status);
    let body = Answer::new(
        std::mem::take(&mut reply.body),
        slot,
        record,
        conn,
        IO_TIMEOUT,
    );
    let mut r = Response::new(body);
    *r.status_mut() = hyper::StatusCode::from_u16(reply.status)
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    finish_headers(&mut r, &reply);
    r
}

fn finish_headers(r: &mut Response<Answer>, reply: &Reply) {
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    security_headers(h);
    if let Some(to) = reply
        .location
        .as_deref()
        .and_then(|l| HeaderValue::from_str(l).ok())
    {
        h.insert(LOCATION, to);
    }
    if let Some(a) = reply.allow {
        h.insert(hyper::header::ALLOW, HeaderValue::from_static(a));
    }
    if let Some(c) = reply
        .set_cookie
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
    {
        h.insert(SET_COOKIE, c);
    }
}

//! The dashboard's sessions and security (SPEC §27.2), over raw HTTP/1.1: one test per rule,
//! each sending exactly the requests a browser, or an attacker's page, would send, and
//! checking the repository through the CLI afterwards (nothing changed, or exactly what was
//! asked). The client is a few lines over `TcpStream` so that every header and byte of a
//! request is the test's choice (a foreign `Origin`, a chunked body, a body too large).

#![allow(
    clippy::many_single_char_names,
    reason = "d: the served dashboard, s: a session, r: an answer, a and b: snapshots"
)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use tessera_tests::remote::Transport;
use tessera_tests::{
    backup_json, init_repo, list_json, make_image, mutate, pack_files, seed, snapshot_id,
    start_serve_args, tessera, token_add, DataGen, ImageSpec, Served, Value,
};

const MIB: u64 = 1 << 20;

/// The Content-Security-Policy of SPEC §27.2, verbatim.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The headers every dashboard answer carries (SPEC §27.2), with their exact values.
const SECURITY_HEADERS: &[(&str, &str)] = &[
    ("content-security-policy", CSP),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("cache-control", "no-store"),
];

// ---------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client
// ---------------------------------------------------------------------------------------

/// An answer: status, headers (names lower-cased, in order) and body.
#[derive(Debug, Clone)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }

    fn location(&self) -> Option<&str> {
        self.header("location")
    }

    /// The value of the `tessera_session` cookie this answer sets, if any.
    fn session_cookie(&self) -> Option<String> {
        self.all("set-cookie").iter().find_map(|c| {
            c.strip_prefix("tessera_session=")
                .map(|rest| rest.split(';').next().unwrap_or_default().to_string())
        })
    }
}

impl std::fmt::Display for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "HTTP {}", self.status)?;
        for (n, v) in &self.headers {
            writeln!(f, "{n}: {v}")?;
        }
        let body: String = self.body.chars().take(3000).collect();
        write!(f, "\n{body}")
    }
}

/// Sends `request` (the whole request, head and body) on a new connection to `url` and
/// reads the answer to the end (every request says `Connection: close`).
fn exchange(transport: &Transport, url: &str, request: &[u8]) -> Resp {
    let mut s = transport.connect(url);
    s.tcp()
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // The server may answer (and stop reading) before a refused body is all sent.
    let _ = s.write_all(request);
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if raw.is_empty() => panic!("reading the answer from {url}: {e}"),
            Err(_) => break,
        }
    }
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Resp {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body);
    } else if let Some(len) = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body.truncate(len);
    }
    Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        data = &data[eol + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
    out
}

/// `application/x-www-form-urlencoded` of `fields`.
fn form(fields: &[(&str, &str)]) -> String {
    fn enc(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    char::from(b).to_string()
                }
                b' ' => "+".to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The value of attribute `attr` in the tag of `html` that contains `marker` (e.g.
/// `name="csrf"`, `id="freed"`).
fn attr_of(html: &str, marker: &str, attr: &str) -> Option<String> {
    let at = html.find(marker)?;
    let start = html[..at].rfind('<')?;
    let end = at + html[at..].find('>')?;
    let tag = &html[start..end];
    let key = format!(" {attr}=\"");
    let v = tag.find(&key)? + key.len();
    let len = tag[v..].find('"')?;
    Some(
        tag[v..v + len]
            .replace("&quot;", "\"")
            .replace("&amp;", "&"),
    )
}

// ---------------------------------------------------------------------------------------
// A served repository
// ---------------------------------------------------------------------------------------

/// A logged-in browser: its session cookie.
#[derive(Debug, Clone)]
struct Session {
    cookie: String,
}

/// A repository with series `vm1` (snapshots A then B, B a few writes away from A, so they
/// share most chunks and each has some of its own) and `vm2` (one snapshot), served with a
/// tokens file and an audit log.
struct Dash {
    t: tempfile::TempDir,
    repo: PathBuf,
    tokens: PathBuf,
    audit: PathBuf,
    served: Served,
    transport: Transport,
    /// Admin token `ops`.
    admin: String,
    /// Read token `viewer` (every series).
    reader: String,
    /// Backup token `pusher` (series vm1).
    pusher: String,
    /// Snapshot ids by series, oldest first.
    ids: BTreeMap<String, Vec<String>>,
    gen: DataGen,
}

impl Dash {
    fn new(test: &str) -> Self {
        Self::over(test, |_| Transport::http())
    }

    /// [`Dash::new`] served over the transport `transport` makes (in the scratch directory).
    fn over(test: &str, transport: impl FnOnce(&std::path::Path) -> Transport) -> Self {
        let t = tempfile::tempdir().unwrap();
        let transport = transport(t.path());
        let repo = t.path().join("repo");
        init_repo(&repo, &[]);
        let mut gen = DataGen::new(seed(test));
        // No zero regions: every block a snapshot holds is stored, so the few blocks B
        // rewrote are A's alone (and B's new ones B's alone).
        let spec = ImageSpec {
            weights: (0, 1, 1),
            max_region: 128 * 1024,
            ..ImageSpec::mixed(MIB + 4096)
        };
        let mut ids: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let vm1 = t.path().join("vm1.img");
        make_image(&vm1, spec, &mut gen);
        for round in 0..2 {
            if round > 0 {
                mutate(&vm1, &mut gen, 6, 64 * 1024, (0, 1, 1));
            }
            let id = snapshot_id(&backup_json(&repo, "vm1", &[("d", &vm1)]));
            ids.entry("vm1".into()).or_default().push(id);
        }
        let vm2 = t.path().join("vm2.img");
        make_image(&vm2, spec, &mut gen);
        let id = snapshot_id(&backup_json(&repo, "vm2", &[("d", &vm2)]));
        ids.entry("vm2".into()).or_default().push(id);

        let tokens = t.path().join("tokens");
        let admin = token_add(&tokens, "admin", "*", "ops", None);
        let reader = token_add(&tokens, "read", "*", "viewer", None);
        let pusher = token_add(&tokens, "backup", "vm1", "pusher", None);
        let audit = t.path().join("audit.log");
        let mut args: Vec<&OsStr> = vec![
            "--tokens".as_ref(),
            tokens.as_os_str(),
            "--audit-log".as_ref(),
            audit.as_os_str(),
        ];
        if let Transport::Https(cert) = &transport {
            args.extend([
                OsStr::new("--tls-cert"),
                cert.cert.as_os_str(),
                OsStr::new("--tls-key"),
                cert.key.as_os_str(),
            ]);
        }
        let served = start_serve_args(&repo, &args);
        assert!(
            served
                .url
                .starts_with(&format!("{}://", transport.scheme())),
            "{}",
            served.url
        );
        Self {
            t,
            repo,
            tokens,
            audit,
            served,
            transport,
            admin,
            reader,
            pusher,
            ids,
            gen,
        }
    }

    fn addr(&self) -> &str {
        self.served.addr()
    }

    /// The dashboard's origin, as a browser on its pages names it.
    fn origin(&self) -> String {
        format!("{}://{}", self.transport.scheme(), self.addr())
    }

    fn exchange(&self, request: &[u8]) -> Resp {
        exchange(&self.transport, &self.served.url, request)
    }

    fn id(&self, series: &str, i: usize) -> String {
        self.ids[series][i].clone()
    }

    /// `METHOD PATH` with `headers` and `body` (a Content-Length is added when `body` is
    /// `Some`).
    fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: tessera-tests\r\n",
            self.addr()
        );
        for (n, v) in headers {
            let _ = write!(req, "{n}: {v}\r\n");
        }
        if let Some(b) = body {
            let _ = write!(req, "Content-Length: {}\r\n", b.len());
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        if let Some(b) = body {
            bytes.extend_from_slice(b);
        }
        self.exchange(&bytes)
    }

    fn get(&self, path: &str, session: Option<&Session>) -> Resp {
        let cookie = session.map(|s| format!("tessera_session={}", s.cookie));
        let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("Cookie", c.as_str())).collect();
        self.send("GET", path, &headers, None)
    }

    /// A form POST as a browser on the dashboard's own page sends it (`Origin` this
    /// server, `Sec-Fetch-Site: same-origin`), with `headers` replacing or adding to those
    /// (an empty value leaves the header out).
    fn post_with(
        &self,
        path: &str,
        session: Option<&Session>,
        fields: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Resp {
        let origin = self.origin();
        let cookie = session.map(|s| format!("tessera_session={}", s.cookie));
        let mut all: Vec<(&str, &str)> = vec![
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Origin", origin.as_str()),
            ("Sec-Fetch-Site", "same-origin"),
        ];
        if let Some(c) = &cookie {
            all.push(("Cookie", c));
        }
        for (n, v) in headers {
            all.retain(|(m, _)| !m.eq_ignore_ascii_case(n));
            if !v.is_empty() {
                all.push((n, v));
            }
        }
        self.send("POST", path, &all, Some(form(fields).as_bytes()))
    }

    fn post(&self, path: &str, session: Option<&Session>, fields: &[(&str, &str)]) -> Resp {
        self.post_with(path, session, fields, &[])
    }

    /// Logs in with `token`, asserting the 303 to the overview and a session cookie.
    #[track_caller]
    fn login(&self, token: &str) -> Session {
        let r = self.post("/ui/login", None, &[("token", token)]);
        assert_eq!(r.status, 303, "login: {r}");
        assert_eq!(r.location(), Some("/ui/"), "login: {r}");
        Session {
            cookie: r
                .session_cookie()
                .unwrap_or_else(|| panic!("login set no session cookie: {r}")),
        }
    }

    /// The session's CSRF secret, from the hidden field of a page (the top bar's logout
    /// form carries it on every page).
    #[track_caller]
    fn csrf(&self, session: &Session) -> String {
        let r = self.get("/ui/", Some(session));
        assert_eq!(r.status, 200, "{r}");
        attr_of(&r.body, "name=\"csrf\"", "value").unwrap_or_else(|| panic!("no csrf field: {r}"))
    }

    /// The forget confirmation page of `id` for `session`: its confirmation token and the
    /// freed bytes it shows.
    #[track_caller]
    fn confirmation(&self, session: &Session, path: &str) -> (String, u64) {
        let r = self.get(path, Some(session));
        assert_eq!(r.status, 200, "{path}: {r}");
        let token = attr_of(&r.body, "name=\"confirm\"", "value")
            .unwrap_or_else(|| panic!("no confirm field on {path}: {r}"));
        let freed = attr_of(&r.body, "id=\"freed\"", "data-bytes")
            .and_then(|b| b.parse().ok())
            .unwrap_or_else(|| panic!("no #freed[data-bytes] on {path}: {r}"));
        (token, freed)
    }

    /// The snapshot `id` as `tessera list --json` shows it, if it exists.
    fn listed(&self, id: &str) -> Option<Value> {
        list_json(&self.repo).into_iter().find(|s| s["id"] == id)
    }

    fn exists(&self, id: &str) -> bool {
        self.listed(id).is_some()
    }

    fn protected(&self, id: &str) -> bool {
        self.listed(id)
            .unwrap_or_else(|| panic!("snapshot {id} is not listed"))["protected"]
            .as_bool()
            .expect("protected is a bool")
    }

    /// Stored bytes `tessera forget ID --dry-run --json` says forgetting `id` frees.
    fn cli_freed(&self, id: &str) -> u64 {
        tessera_tests::forget_freed(&self.repo, id)
    }

    fn cli(&self, args: &[&str]) {
        let mut all: Vec<&OsStr> = vec![OsStr::new(args[0]), self.repo.as_os_str()];
        all.extend(args[1..].iter().map(OsStr::new));
        tessera(all).ok();
    }

    /// The audit log's lines, as JSON.
    fn audit_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
            .collect()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.t.path().join(name)
    }
}

#[track_caller]
fn assert_security_headers(what: &str, r: &Resp) {
    for (name, value) in SECURITY_HEADERS {
        assert_eq!(
            r.all(name),
            vec![*value],
            "{what}: header {name} must be sent once, exactly {value:?}:\n{r}"
        );
    }
}

fn snapshot_path(id: &str) -> String {
    format!("/ui/snapshot/{id}")
}

// ---------------------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------------------

#[test]
fn every_dashboard_answer_carries_the_security_headers() {
    let d = Dash::new("dashboard_http::headers");
    let s = d.login(&d.admin);
    let a = d.id("vm1", 0);
    let unknown = "ab".repeat(32);
    let answers = [
        ("the login page", d.get("/ui/login", None), 200),
        ("the overview", d.get("/ui/", Some(&s)), 200),
        ("a snapshot page", d.get(&snapshot_path(&a), Some(&s)), 200),
        ("the health page", d.get("/ui/health", Some(&s)), 200),
        ("the stylesheet", d.get("/ui/static/app.css", None), 200),
        ("the icon", d.get("/ui/static/icon.svg", None), 200),
        ("a redirect", d.get("/", None), 303),
        (
            "a path that does not exist",
            d.get("/ui/nope", Some(&s)),
            404,
        ),
        (
            "a snapshot that does not exist",
            d.get(&snapshot_path(&unknown), Some(&s)),
            404,
        ),
        (
            "an action by GET",
            d.get(&format!("/ui/snapshot/{a}/protect"), Some(&s)),
            405,
        ),
        (
            "a wrong token",
            d.post("/ui/login", None, &[("token", &"0".repeat(64))]),
            401,
        ),
        (
            "a refused action",
            d.post(&format!("/ui/snapshot/{a}/protect"), Some(&s), &[]),
            403,
        ),
    ];
    for (what, r, status) in &answers {
        assert_eq!(r.status, *status, "{what}: {r}");
        assert_security_headers(what, r);
    }
    let css = &answers[4].1;
    assert!(
        css.header("content-type")
            .is_some_and(|c| c.starts_with("text/css")),
        "{css}"
    );
    assert!(
        answers[1]
            .1
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "{}",
        answers[1].1
    );
    assert!(!d.protected(&a), "the refused POST protected the snapshot");
}

#[test]
fn pages_have_no_script_and_no_inline_style() {
    let d = Dash::new("dashboard_http::no_script");
    let s = d.login(&d.admin);
    let a = d.id("vm1", 0);
    let b = d.id("vm1", 1);
    let pages = [
        "/ui/login".to_string(),
        "/ui/".into(),
        "/ui/series/vm1".into(),
        snapshot_path(&a),
        snapshot_path(&b),
        format!("/ui/snapshot/{b}/forget"),
        "/ui/health".into(),
        "/ui/nope".into(),
    ];
    for p in &pages {
        let r = d.get(p, if p == "/ui/login" { None } else { Some(&s) });
        let lower = r.body.to_ascii_lowercase();
        for bad in [
            "<script",
            "<style",
            " style=",
            "javascript:",
            " onload=",
            " onclick=",
        ] {
            assert!(!lower.contains(bad), "{p} contains {bad:?}:\n{r}");
        }
        assert!(lower.contains("<html"), "{p} is not a page:\n{r}");
    }
}

// ---------------------------------------------------------------------------------------
// Login
// ---------------------------------------------------------------------------------------

#[test]
fn without_a_session_every_page_sends_the_browser_to_login() {
    let d = Dash::new("dashboard_http::redirects");
    let a = d.id("vm1", 0);
    for (path, to) in [("/", "/ui/"), ("/ui", "/ui/")] {
        let r = d.get(path, None);
        assert_eq!((r.status, r.location()), (303, Some(to)), "GET {path}: {r}");
    }
    let pages = [
        "/ui/".to_string(),
        "/ui/health".into(),
        "/ui/series/vm1".into(),
        snapshot_path(&a),
        format!("/ui/snapshot/{a}/forget"),
    ];
    let forged = Session {
        cookie: "00".repeat(32),
    };
    for p in &pages {
        for session in [None, Some(&forged)] {
            let r = d.get(p, session);
            assert_eq!(
                (r.status, r.location()),
                (303, Some("/ui/login")),
                "GET {p} (cookie {session:?}): {r}"
            );
            assert!(
                !r.body.contains("vm1"),
                "a page shown without a session: {r}"
            );
        }
    }
    // An action without a session does nothing.
    let r = d.post(&format!("/ui/snapshot/{a}/protect"), Some(&forged), &[]);
    assert!(matches!(r.status, 303 | 403), "{r}");
    assert!(!d.protected(&a));
    // The login form is there for anyone; a logged-in browser is sent on to the overview.
    let r = d.get("/ui/login", None);
    assert_eq!(r.status, 200, "{r}");
    assert!(r.body.contains("name=\"token\""), "{r}");
    let s = d.login(&d.reader);
    let r = d.get("/ui/login", Some(&s));
    assert_eq!((r.status, r.location()), (303, Some("/ui/")), "{r}");
}

#[test]
fn wrong_tokens_count_against_the_address_and_then_nothing_is_looked_at() {
    let d = Dash::new("dashboard_http::rate_limit");
    for i in 0..10 {
        let wrong = format!("{i:064x}");
        let r = d.post("/ui/login", None, &[("token", &wrong)]);
        assert_eq!(r.status, 401, "wrong token #{i}: {r}");
        assert!(r.session_cookie().is_none(), "{r}");
        assert!(!r.body.contains(&wrong), "the wrong token is echoed: {r}");
    }
    // The budget is spent: even the right token is not looked at.
    let r = d.post("/ui/login", None, &[("token", &d.admin)]);
    assert_eq!(r.status, 429, "{r}");
    assert!(r.session_cookie().is_none(), "{r}");
    assert_security_headers("the 429 answer", &r);
    let wait: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("429 without a Retry-After in seconds: {r}"));
    assert!((1..=3).contains(&wait), "Retry-After {wait}: {r}");
    // Pages too are refused from that address while it waits.
    assert_eq!(d.get("/ui/login", None).status, 429);
    // One more try per 2 s comes back.
    std::thread::sleep(Duration::from_secs(wait));
    let s = d.login(&d.admin);
    assert_eq!(d.get("/ui/", Some(&s)).status, 200);
}

#[test]
fn backup_tokens_may_not_log_in() {
    let d = Dash::new("dashboard_http::backup_token");
    let r = d.post("/ui/login", None, &[("token", &d.pusher)]);
    assert_eq!(r.status, 403, "{r}");
    assert!(
        r.all("set-cookie").is_empty(),
        "a refused login set a cookie: {r}"
    );
    assert!(!r.body.contains(&d.pusher), "the token is echoed: {r}");
    // The admin and read tokens may.
    d.login(&d.admin);
    d.login(&d.reader);
}

#[test]
fn a_login_sets_a_strict_http_only_cookie_and_never_echoes_the_token() {
    let d = Dash::new("dashboard_http::cookie");
    let r = d.post("/ui/login", None, &[("token", &d.reader)]);
    assert_eq!((r.status, r.location()), (303, Some("/ui/")), "{r}");
    let cookies = r.all("set-cookie");
    assert_eq!(cookies.len(), 1, "{r}");
    let attrs: Vec<String> = cookies[0]
        .split(';')
        .map(|a| a.trim().to_ascii_lowercase())
        .collect();
    let value = r.session_cookie().expect("the session cookie");
    assert!(
        value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()),
        "the session is not 32 random bytes in hex: {value:?}"
    );
    for want in ["httponly", "samesite=strict", "path=/"] {
        assert!(
            attrs.iter().any(|a| a == want),
            "{want} missing in {cookies:?}"
        );
    }
    assert!(
        !attrs.iter().any(|a| a == "secure"),
        "Secure over plain HTTP: the browser would never send the cookie back: {cookies:?}"
    );
    assert!(!value.contains(&d.reader), "the cookie carries the token");
    let s = Session { cookie: value };
    // The token in a URL logs nobody in.
    let r = d.send(
        "POST",
        &format!("/ui/login?token={}", d.admin),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(b""),
    );
    assert_ne!(r.status, 303, "a token in the URL logged in: {r}");
    assert!(r.session_cookie().is_none(), "{r}");
    // Every page the session sees: never the token.
    let a = d.id("vm1", 0);
    let mut bodies = vec![r.body];
    for p in ["/ui/", "/ui/health", "/ui/series/vm1", &snapshot_path(&a)] {
        let r = d.get(p, Some(&s));
        assert_eq!(r.status, 200, "{p}: {r}");
        bodies.push(r.body);
    }
    for b in &bodies {
        assert!(
            !b.contains(&d.reader) && !b.contains(&d.admin),
            "a token in a page:\n{b}"
        );
    }
}

#[test]
fn the_audit_log_names_the_token_and_never_holds_a_secret() {
    let d = Dash::new("dashboard_http::audit");
    let wrong = "f".repeat(64);
    let before = d.audit_lines().len();
    assert_eq!(d.post("/ui/login", None, &[("token", &wrong)]).status, 401);
    let s = d.login(&d.reader);
    assert_eq!(d.get("/ui/", Some(&s)).status, 200);
    assert_eq!(d.get("/ui/static/app.css", None).status, 200);
    let unknown = snapshot_path(&"ab".repeat(32));
    assert_eq!(d.get(&unknown, Some(&s)).status, 404);
    assert_eq!(d.get("/ui/health", Some(&s)).status, 200);
    let csrf = d.csrf(&s);
    let r = d.post("/ui/logout", Some(&s), &[("csrf", &csrf)]);
    assert_eq!((r.status, r.location()), (303, Some("/ui/login")), "{r}");
    let made = 8;
    assert!(
        tessera_tests::wait_until(Duration::from_secs(5), || d.audit_lines().len()
            >= before + made),
        "the audit log has {} new lines for {made} requests:\n{}",
        d.audit_lines().len() - before,
        std::fs::read_to_string(&d.audit).unwrap_or_default()
    );
    std::thread::sleep(Duration::from_millis(300));
    let text = std::fs::read_to_string(&d.audit).unwrap();
    let lines: Vec<Value> = d.audit_lines()[before..].to_vec();
    assert_eq!(lines.len(), made, "one line per request:\n{text}");
    let expect = [
        ("POST", "/ui/login", 401, None),
        ("POST", "/ui/login", 303, Some("viewer")),
        ("GET", "/ui/", 200, Some("viewer")),
        ("GET", "/ui/static/app.css", 200, None),
        ("GET", unknown.as_str(), 404, Some("viewer")),
        ("GET", "/ui/health", 200, Some("viewer")),
        ("GET", "/ui/", 200, Some("viewer")),
        ("POST", "/ui/logout", 303, Some("viewer")),
    ];
    for (line, (method, path, status, token)) in lines.iter().zip(expect) {
        assert_eq!(line["method"], method, "{line}");
        assert_eq!(line["path"], path, "{line}");
        assert_eq!(line["status"], status, "{line}");
        match token {
            Some(name) => assert_eq!(line["token"], name, "{line}"),
            None => assert!(line["token"].is_null(), "{line}"),
        }
    }
    for secret in [&d.reader, &d.admin, &d.pusher, &wrong, &s.cookie, &csrf] {
        assert!(
            !text.contains(secret.as_str()),
            "the audit log holds a secret:\n{text}"
        );
    }
}

#[test]
fn the_audit_log_names_the_session_token_of_refused_requests_too() {
    let d = Dash::new("dashboard_http::audit_refused");
    let s = d.login(&d.reader);
    let a = d.id("vm1", 0);
    let before = d.audit_lines().len();
    assert_eq!(d.get("/ui/nope", Some(&s)).status, 404);
    assert_eq!(
        d.get(&format!("/ui/snapshot/{a}/protect"), Some(&s)).status,
        405
    );
    assert!(
        tessera_tests::wait_until(Duration::from_secs(5), || d.audit_lines().len()
            >= before + 2),
        "no audit lines"
    );
    let lines = d.audit_lines()[before..].to_vec();
    for line in &lines {
        assert_eq!(
            line["token"], "viewer",
            "a request with a live session is logged without its token's name \
             (SPEC §27.2 Audit: the name once the session names it): {line}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------

#[test]
fn removing_a_token_ends_its_sessions() {
    let d = Dash::new("dashboard_http::token_removed");
    let viewer = d.login(&d.reader);
    let ops = d.login(&d.admin);
    assert_eq!(d.get("/ui/", Some(&viewer)).status, 200);
    let out = tessera([
        OsStr::new("token"),
        "remove".as_ref(),
        d.tokens.as_os_str(),
        "viewer".as_ref(),
    ]);
    out.ok();
    let r = d.get("/ui/", Some(&viewer));
    assert_eq!(
        (r.status, r.location()),
        (303, Some("/ui/login")),
        "a removed token's session still works: {r}"
    );
    // A new token of the same name does not bring the session back.
    token_add(&d.tokens, "read", "*", "viewer", None);
    let r = d.get("/ui/", Some(&viewer));
    assert_eq!((r.status, r.location()), (303, Some("/ui/login")), "{r}");
    // The other token's session goes on.
    assert_eq!(d.get("/ui/", Some(&ops)).status, 200);
    // And the removed token cannot log in again.
    let r = d.post("/ui/login", None, &[("token", &d.reader)]);
    assert_eq!(r.status, 401, "{r}");
}

#[test]
fn logout_ends_the_session() {
    let d = Dash::new("dashboard_http::logout");
    let s = d.login(&d.reader);
    let csrf = d.csrf(&s);
    // Logout is a POST with the session's CSRF secret.
    assert_eq!(d.get("/ui/logout", Some(&s)).status, 405);
    assert_eq!(d.post("/ui/logout", Some(&s), &[]).status, 403);
    let r = d.post_with(
        "/ui/logout",
        Some(&s),
        &[("csrf", &csrf)],
        &[("Origin", "http://evil.example")],
    );
    assert_eq!(r.status, 403, "{r}");
    assert_eq!(
        d.get("/ui/", Some(&s)).status,
        200,
        "the refused logouts ended the session"
    );
    let r = d.post("/ui/logout", Some(&s), &[("csrf", &csrf)]);
    assert_eq!((r.status, r.location()), (303, Some("/ui/login")), "{r}");
    let expired = r.all("set-cookie");
    assert!(
        expired.iter().any(|c| c.starts_with("tessera_session=")
            && (c.to_ascii_lowercase().contains("max-age=0")
                || c.to_ascii_lowercase().contains("expires="))),
        "logout does not clear the cookie: {r}"
    );
    let r = d.get("/ui/", Some(&s));
    assert_eq!((r.status, r.location()), (303, Some("/ui/login")), "{r}");
}

#[test]
fn at_most_256_sessions_and_the_least_recently_used_goes() {
    let d = Dash::new("dashboard_http::session_bound");
    // 17 tokens: 16 sessions each at most, so 257 sessions need that many.
    let tokens: Vec<String> = (0..17)
        .map(|i| token_add(&d.tokens, "read", "*", &format!("reader-{i}"), None))
        .collect();
    let oldest = d.login(&tokens[0]);
    let kept = d.login(&tokens[1]);
    let mut made = 2;
    for (i, token) in tokens.iter().enumerate().skip(1) {
        let n = if i == 1 { 15 } else { 16 };
        for _ in 0..n {
            // `kept` is used now and then; `oldest` never again.
            if made % 50 == 0 {
                assert_eq!(
                    d.get("/ui/login", Some(&kept)).status,
                    303,
                    "after {made} logins"
                );
            }
            d.login(token);
            made += 1;
        }
    }
    assert_eq!(made, 257);
    // One session had to go: the least recently used, of a token with a single session.
    let r = d.get("/ui/", Some(&oldest));
    assert_eq!((r.status, r.location()), (303, Some("/ui/login")), "{r}");
    assert_eq!(d.get("/ui/", Some(&kept)).status, 200);
}

#[test]
fn one_token_cannot_log_the_others_out() {
    let d = Dash::new("dashboard_http::session_per_token");
    let other = d.login(&d.admin);
    let mine: Vec<Session> = (0..17).map(|_| d.login(&d.reader)).collect();
    // The 17th session of a token ended its own least recently used one.
    let r = d.get("/ui/", Some(&mine[0]));
    assert_eq!((r.status, r.location()), (303, Some("/ui/login")), "{r}");
    for s in &mine[1..] {
        assert_eq!(d.get("/ui/", Some(s)).status, 200);
    }
    assert_eq!(
        d.get("/ui/", Some(&other)).status,
        200,
        "another token's session ended"
    );
}

#[test]
fn a_login_ends_the_session_the_browser_had() {
    let d = Dash::new("dashboard_http::relogin");
    let first = d.login(&d.admin);
    let cookie = format!("tessera_session={}", first.cookie);
    let r = d.post_with(
        "/ui/login",
        None,
        &[("token", &d.reader)],
        &[("Cookie", cookie.as_str())],
    );
    assert_eq!(r.status, 303, "{r}");
    let second = Session {
        cookie: r.session_cookie().expect("a new session"),
    };
    assert_ne!(
        second.cookie, first.cookie,
        "the session was not renewed at login"
    );
    let r = d.get("/ui/", Some(&first));
    assert_eq!((r.status, r.location()), (303, Some("/ui/login")), "{r}");
    let r = d.get("/ui/", Some(&second));
    assert_eq!(r.status, 200, "{r}");
    assert!(r.body.contains("data-role=\"read\""), "{r}");
}

// ---------------------------------------------------------------------------------------
// Actions
// ---------------------------------------------------------------------------------------

#[test]
fn actions_are_never_done_by_get() {
    let d = Dash::new("dashboard_http::no_get_actions");
    let s = d.login(&d.admin);
    let a = d.id("vm1", 0);
    let b = d.id("vm1", 1);
    d.cli(&["protect", &b]);
    let r = d.get(&format!("/ui/snapshot/{a}/protect"), Some(&s));
    assert_eq!(r.status, 405, "{r}");
    assert!(!d.protected(&a), "GET protect protected the snapshot");
    let r = d.get(&format!("/ui/snapshot/{b}/unprotect"), Some(&s));
    assert_eq!(r.status, 405, "{r}");
    assert!(d.protected(&b), "GET unprotect unprotected the snapshot");
    // GET of the forget URL is only its confirmation page.
    let r = d.get(&format!("/ui/snapshot/{a}/forget"), Some(&s));
    assert_eq!(r.status, 200, "{r}");
    assert!(d.exists(&a));
    for method in ["PUT", "DELETE"] {
        let r = d.send(method, &format!("/ui/snapshot/{a}/forget"), &[], None);
        assert_eq!(r.status, 405, "{method}: {r}");
    }
    assert!(d.exists(&a));
    let r = d.get("/ui/logout", Some(&s));
    assert_eq!(r.status, 405, "{r}");
    assert_eq!(
        d.get("/ui/", Some(&s)).status,
        200,
        "GET logout ended the session"
    );
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "every way a POST can come from elsewhere"
)]
fn every_post_must_come_from_this_dashboard_with_the_session_csrf() {
    let d = Dash::new("dashboard_http::csrf");
    let s = d.login(&d.admin);
    let other = d.login(&d.admin);
    let csrf = d.csrf(&s);
    let others_csrf = d.csrf(&other);
    assert_ne!(csrf, others_csrf, "two sessions share a CSRF secret");
    let a = d.id("vm1", 0);
    let protect = format!("/ui/snapshot/{a}/protect");
    let port = d.addr().rsplit_once(':').expect("HOST:PORT").1.to_string();
    let refused: Vec<(&str, Resp)> = vec![
        ("no csrf", d.post(&protect, Some(&s), &[])),
        ("an empty csrf", d.post(&protect, Some(&s), &[("csrf", "")])),
        (
            "a wrong csrf",
            d.post(&protect, Some(&s), &[("csrf", &"0".repeat(64))]),
        ),
        (
            "a csrf one character short",
            d.post(&protect, Some(&s), &[("csrf", &csrf[..63])]),
        ),
        (
            "another session's csrf",
            d.post(&protect, Some(&s), &[("csrf", &others_csrf)]),
        ),
        (
            "a foreign Origin",
            d.post_with(
                &protect,
                Some(&s),
                &[("csrf", &csrf)],
                &[("Origin", "http://evil.example")],
            ),
        ),
        (
            "Origin null",
            d.post_with(
                &protect,
                Some(&s),
                &[("csrf", &csrf)],
                &[("Origin", "null")],
            ),
        ),
        (
            "another port of this host",
            d.post_with(
                &protect,
                Some(&s),
                &[("csrf", &csrf)],
                &[("Origin", "http://127.0.0.1:1")],
            ),
        ),
        (
            "another name of this host",
            d.post_with(
                &protect,
                Some(&s),
                &[("csrf", &csrf)],
                &[("Origin", &format!("http://localhost:{port}"))],
            ),
        ),
        (
            "this origin as a prefix",
            d.post_with(
                &protect,
                Some(&s),
                &[("csrf", &csrf)],
                &[("Origin", &format!("{}.evil.example", d.origin()))],
            ),
        ),
        (
            "Sec-Fetch-Site: cross-site",
            d.post_with(
                &protect,
                Some(&s),
                &[("csrf", &csrf)],
                &[("Sec-Fetch-Site", "cross-site")],
            ),
        ),
        (
            "Sec-Fetch-Site: same-site",
            d.post_with(
                &protect,
                Some(&s),
                &[("csrf", &csrf)],
                &[("Sec-Fetch-Site", "same-site")],
            ),
        ),
    ];
    for (what, r) in &refused {
        assert_eq!(r.status, 403, "{what}: {r}");
        assert!(!d.protected(&a), "{what}: the snapshot was protected");
    }
    // From this origin, with the secret: done, and back to the snapshot.
    let r = d.post(&protect, Some(&s), &[("csrf", &csrf)]);
    assert_eq!(r.status, 303, "{r}");
    assert_eq!(
        r.location(),
        Some(format!("/ui/snapshot/{a}?done=protected").as_str()),
        "{r}"
    );
    assert!(d.protected(&a), "the snapshot is not protected");
    // `Origin` and `Sec-Fetch-Site` are checked when sent; without them the secret suffices.
    let r = d.post_with(
        &format!("/ui/snapshot/{a}/unprotect"),
        Some(&s),
        &[("csrf", &csrf)],
        &[("Origin", ""), ("Sec-Fetch-Site", "")],
    );
    assert_eq!(r.status, 303, "{r}");
    assert!(!d.protected(&a));
    let r = d.post_with(
        &protect,
        Some(&s),
        &[("csrf", &csrf)],
        &[("Sec-Fetch-Site", "none")],
    );
    assert_eq!(r.status, 303, "{r}");
    assert!(d.protected(&a));
    // The scheme is not compared (a TLS-terminating proxy passes `Host` through).
    let r = d.post_with(
        &format!("/ui/snapshot/{a}/unprotect"),
        Some(&s),
        &[("csrf", &csrf)],
        &[("Origin", &format!("https://{}", d.addr()))],
    );
    assert_eq!(r.status, 303, "{r}");
    assert!(!d.protected(&a));
    // Login is a POST too: a foreign page cannot log a browser in.
    let r = d.post_with(
        "/ui/login",
        None,
        &[("token", &d.reader)],
        &[("Origin", "http://evil.example")],
    );
    assert_eq!(r.status, 403, "{r}");
    assert!(r.session_cookie().is_none(), "{r}");
}

#[test]
fn actions_need_an_admin_token() {
    let d = Dash::new("dashboard_http::roles");
    let viewer = d.login(&d.reader);
    let csrf = d.csrf(&viewer);
    let a = d.id("vm1", 0);
    let b = d.id("vm1", 1);
    d.cli(&["protect", &b]);
    let r = d.post(
        &format!("/ui/snapshot/{a}/protect"),
        Some(&viewer),
        &[("csrf", &csrf)],
    );
    assert_eq!(r.status, 403, "{r}");
    assert!(!d.protected(&a));
    let r = d.post(
        &format!("/ui/snapshot/{b}/unprotect"),
        Some(&viewer),
        &[("csrf", &csrf)],
    );
    assert_eq!(r.status, 403, "{r}");
    assert!(d.protected(&b));
    // The snapshot page offers a read token no button.
    let page = d.get(&snapshot_path(&a), Some(&viewer));
    assert_eq!(page.status, 200, "{page}");
    for id in [
        "id=\"protect\"",
        "id=\"unprotect\"",
        "id=\"forget\"",
        "id=\"actions\"",
    ] {
        assert!(
            !page.body.contains(id),
            "a read token is shown {id}: {page}"
        );
    }
    // The confirmation page is an admin's (SPEC §27.1), and a forget needs admin anyway.
    let forget_page = d.get(&format!("/ui/snapshot/{a}/forget"), Some(&viewer));
    let confirm = attr_of(&forget_page.body, "name=\"confirm\"", "value").unwrap_or_default();
    let r = d.post(
        &format!("/ui/snapshot/{a}/forget"),
        Some(&viewer),
        &[("csrf", &csrf), ("confirm", &confirm)],
    );
    assert_eq!(r.status, 403, "{r}");
    assert!(d.exists(&a), "a read token forgot a snapshot");
    assert_eq!(
        forget_page.status, 403,
        "a read session is shown the forget confirmation page (SPEC §27.1: admin session): {forget_page}"
    );
}

#[test]
fn forget_needs_a_confirmation_shown_to_this_session_for_this_snapshot() {
    let d = Dash::new("dashboard_http::confirm");
    let s = d.login(&d.admin);
    let csrf = d.csrf(&s);
    let a = d.id("vm1", 0);
    let b = d.id("vm2", 0);
    let (for_a, freed_a) = d.confirmation(&s, &format!("/ui/snapshot/{a}/forget"));
    assert_eq!(
        freed_a,
        d.cli_freed(&a),
        "the confirmation page's freed bytes"
    );
    assert!(freed_a > 0);
    let (for_b, _) = d.confirmation(&s, &format!("/ui/snapshot/{b}/forget"));
    assert_ne!(for_a, for_b);
    let forget_a = format!("/ui/snapshot/{a}/forget");
    let other = d.login(&d.admin);
    let other_csrf = d.csrf(&other);
    let refused = [
        (
            "no confirmation",
            d.post(&forget_a, Some(&s), &[("csrf", &csrf)]),
        ),
        (
            "an empty confirmation",
            d.post(&forget_a, Some(&s), &[("csrf", &csrf), ("confirm", "")]),
        ),
        (
            "a made-up confirmation",
            d.post(
                &forget_a,
                Some(&s),
                &[("csrf", &csrf), ("confirm", &"0".repeat(64))],
            ),
        ),
        (
            "the confirmation of another snapshot",
            d.post(&forget_a, Some(&s), &[("csrf", &csrf), ("confirm", &for_b)]),
        ),
        (
            "a confirmation shown to another session",
            d.post(
                &forget_a,
                Some(&other),
                &[("csrf", &other_csrf), ("confirm", &for_a)],
            ),
        ),
        (
            "a confirmation without the csrf",
            d.post(&forget_a, Some(&s), &[("confirm", &for_a)]),
        ),
    ];
    for (what, r) in &refused {
        assert_eq!(r.status, 403, "{what}: {r}");
        assert!(d.exists(&a), "{what}: the snapshot was forgotten");
    }
    // The right one: forgotten, and to its series with what it freed.
    let r = d.post(&forget_a, Some(&s), &[("csrf", &csrf), ("confirm", &for_a)]);
    assert_eq!(r.status, 303, "{r}");
    let to = r.location().unwrap_or_default().to_string();
    assert!(
        to.starts_with(&format!("/ui/series/vm1?done=forgotten&id={a}"))
            && to.ends_with(&format!("&freed={freed_a}")),
        "{r}"
    );
    assert!(!d.exists(&a), "the confirmed forget did not forget");
    assert!(
        d.exists(&d.id("vm1", 1)) && d.exists(&b),
        "another snapshot went too"
    );
    let page = d.get(&to, Some(&s));
    assert_eq!(page.status, 200, "{page}");
    assert!(page.body.contains("id=\"notice\""), "{page}");
    // Used once: gone.
    let r = d.post(&forget_a, Some(&s), &[("csrf", &csrf), ("confirm", &for_a)]);
    assert_eq!(r.status, 403, "{r}");
    // The confirmation of B still works only while B is not protected.
    d.cli(&["protect", &b]);
    let r = d.post(
        &format!("/ui/snapshot/{b}/forget"),
        Some(&s),
        &[("csrf", &csrf), ("confirm", &for_b)],
    );
    assert_ne!(r.status, 303, "a protected snapshot was forgotten: {r}");
    assert!(d.exists(&b), "a protected snapshot was forgotten");
    let r = d.get(&format!("/ui/snapshot/{b}/forget"), Some(&s));
    assert!(
        r.status != 200 && !r.body.contains("name=\"confirm\""),
        "a protected snapshot is offered a forget: {r}"
    );
}

#[test]
fn forget_with_changed_figures_does_nothing_and_shows_them_again() {
    let d = Dash::new("dashboard_http::changed");
    let s = d.login(&d.admin);
    let csrf = d.csrf(&s);
    let a = d.id("vm1", 0);
    let b = d.id("vm1", 1);
    let forget_a = format!("/ui/snapshot/{a}/forget");
    let (first, shown) = d.confirmation(&s, &forget_a);
    assert_eq!(shown, d.cli_freed(&a));
    // B shares most of A's chunks: once B is forgotten they are A's alone, so forgetting A
    // frees more than the page showed.
    d.cli(&["forget", &b]);
    let now = d.cli_freed(&a);
    assert!(
        now > shown,
        "forgetting B did not change A's figures ({shown} -> {now})"
    );
    let r = d.post(&forget_a, Some(&s), &[("csrf", &csrf), ("confirm", &first)]);
    assert_eq!(r.status, 303, "{r}");
    assert_eq!(
        r.location(),
        Some(format!("{forget_a}?changed=1").as_str()),
        "{r}"
    );
    assert!(d.exists(&a), "forgotten although the figures changed");
    // That confirmation was used.
    let r = d.post(&forget_a, Some(&s), &[("csrf", &csrf), ("confirm", &first)]);
    assert_eq!(r.status, 403, "a confirmation worked twice: {r}");
    assert!(d.exists(&a));
    // The page it sent the browser back to says why, and shows the new figures with a new
    // confirmation.
    let page = d.get(&format!("{forget_a}?changed=1"), Some(&s));
    assert!(
        page.body.contains("id=\"notice\""),
        "no word of the change: {page}"
    );
    let (second, shown) = d.confirmation(&s, &format!("{forget_a}?changed=1"));
    assert_eq!(
        shown, now,
        "the confirmation page after a change shows the old figures"
    );
    assert_ne!(first, second);
    let r = d.post(
        &forget_a,
        Some(&s),
        &[("csrf", &csrf), ("confirm", &second)],
    );
    assert_eq!(r.status, 303, "{r}");
    // A was vm1's last snapshot: to the overview (SPEC §27.1).
    let to = r.location().unwrap_or_default().to_string();
    assert!(
        to.starts_with(&format!("/ui/?done=forgotten&id={a}")),
        "{r}"
    );
    assert!(!d.exists(&a));
    let page = d.get(&to, Some(&s));
    assert_eq!(page.status, 200, "{page}");
    assert!(!page.body.contains("data-series=\"vm1\""), "{page}");
    assert!(d.exists(&d.id("vm2", 0)));
}

// ---------------------------------------------------------------------------------------
// Series filter
// ---------------------------------------------------------------------------------------

#[test]
fn a_token_limited_to_a_series_sees_only_that_series() {
    let mut d = Dash::new("dashboard_http::series_filter");
    // A damaged mark would show on health: give vm2 a tag to look for too.
    // vm2's second snapshot, in a pack of its own, damaged and found so by a verify.
    let img = d.path("vm2b.img");
    make_image(
        &img,
        ImageSpec {
            weights: (0, 0, 1),
            ..ImageSpec::mixed(MIB / 2)
        },
        &mut d.gen,
    );
    let packs = pack_files(&d.repo);
    let vm2b = snapshot_id(&backup_json(&d.repo, "vm2", &[("d", &img)]));
    let pack = pack_files(&d.repo)
        .into_iter()
        .find(|p| !packs.contains(p))
        .expect("a new pack");
    let mut bytes = std::fs::read(&pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&pack, bytes).unwrap();
    let verify = tessera([OsStr::new("verify"), d.repo.as_os_str()]);
    assert_eq!(verify.code, 4, "{verify}");
    assert_eq!(d.listed(&vm2b).expect("vm2b")["damaged"], true, "{verify}");
    let limited = token_add(&d.tokens, "read", "vm1", "vm1-reader", None);
    let s = d.login(&limited);
    let vm2 = [d.id("vm2", 0), vm2b];
    let overview = d.get("/ui/", Some(&s));
    assert_eq!(overview.status, 200, "{overview}");
    assert!(
        overview.body.contains("<tr data-series=\"vm1\""),
        "{overview}"
    );
    assert!(
        !overview.body.contains("data-series=\"vm2\""),
        "vm2 shown: {overview}"
    );
    assert!(
        !overview.body.contains("id=\"totals\""),
        "repository totals shown to a token of one series: {overview}"
    );
    for p in ["/ui/", "/ui/health", "/ui/series/vm1"] {
        let r = d.get(p, Some(&s));
        assert_eq!(r.status, 200, "{p}: {r}");
        for id in &vm2 {
            assert!(
                !r.body.contains(id.as_str()),
                "{p} shows vm2's snapshot {id}"
            );
        }
        assert!(!r.body.contains("vm2"), "{p} names vm2:\n{r}");
    }
    // The verification run is shown, with only what it found in vm1: nothing.
    let health = d.get("/ui/health", Some(&s));
    assert!(health.body.contains("id=\"verify-history\""), "{health}");
    assert!(health.body.contains("data-clean=\"1\""), "{health}");
    assert!(!health.body.contains("data-clean=\"0\""), "{health}");
    assert!(!health.body.contains("damaged pack"), "{health}");
    assert!(
        overview.body.contains("data-result=\"clean\""),
        "vm1's last verify: {overview}"
    );
    let r = d.get(&snapshot_path(&d.id("vm1", 0)), Some(&s));
    assert_eq!(r.status, 200, "{r}");
    for id in &vm2 {
        let r = d.get(&snapshot_path(id), Some(&s));
        assert_eq!(r.status, 404, "another series' snapshot: {r}");
        assert!(!r.body.contains("vm2"), "{r}");
    }
    let r = d.get("/ui/series/vm2", Some(&s));
    assert_eq!(r.status, 404, "another series' page: {r}");
    // A read token of every series sees the totals.
    let all = d.login(&d.reader);
    let r = d.get("/ui/", Some(&all));
    assert!(r.body.contains("id=\"totals\""), "{r}");
    assert!(r.body.contains("data-series=\"vm2\""), "{r}");
}

// ---------------------------------------------------------------------------------------
// Bounds
// ---------------------------------------------------------------------------------------

#[test]
fn form_bodies_are_bounded() {
    let d = Dash::new("dashboard_http::bounds");
    let origin = format!("http://{}", d.addr());
    let form_headers = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Origin", origin.as_str()),
    ];
    // 16 KiB exactly is a form.
    let mut body = format!("token={}&pad=", d.admin).into_bytes();
    body.resize(16 << 10, b'x');
    let r = d.send("POST", "/ui/login", &form_headers, Some(&body));
    assert_eq!(r.status, 303, "a 16 KiB form: {r}");
    // One byte more is not.
    body.push(b'x');
    let r = d.send("POST", "/ui/login", &form_headers, Some(&body));
    assert_eq!(r.status, 413, "a form over 16 KiB: {r}");
    assert!(r.session_cookie().is_none(), "{r}");
    assert_security_headers("the 413 answer", &r);
    let big = vec![b'x'; 1 << 20];
    let r = d.send("POST", "/ui/login", &form_headers, Some(&big));
    assert_eq!(r.status, 413, "a 1 MiB form: {r}");
    // A chunked body has no length to check first.
    let token = format!("token={}", d.admin);
    let chunked = format!("{:x}\r\n{token}\r\n0\r\n\r\n", token.len());
    let mut headers = form_headers.to_vec();
    headers.push(("Transfer-Encoding", "chunked"));
    let mut raw = format!(
        "POST /ui/login HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        d.addr()
    );
    for (n, v) in &headers {
        let _ = write!(raw, "{n}: {v}\r\n");
    }
    raw.push_str("\r\n");
    raw.push_str(&chunked);
    let r = d.exchange(raw.as_bytes());
    assert_eq!(r.status, 411, "a chunked form: {r}");
    assert!(r.session_cookie().is_none(), "{r}");
    // A GET has no body.
    let s = d.login(&d.admin);
    let cookie = format!("tessera_session={}", s.cookie);
    let r = d.send(
        "GET",
        "/ui/",
        &[("Cookie", cookie.as_str())],
        Some(b"hello"),
    );
    assert_eq!(r.status, 413, "a GET with a body: {r}");
}

#[test]
fn a_post_without_content_length_is_411() {
    let d = Dash::new("dashboard_http::no_length");
    let origin = format!("http://{}", d.addr());
    let raw = format!(
        "POST /ui/login HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nOrigin: {origin}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n\r\n",
        d.addr()
    );
    let r = d.exchange(raw.as_bytes());
    assert_eq!(
        r.status, 411,
        "SPEC §27.2: form bodies come with a Content-Length (411 without): {r}"
    );
}

// ---------------------------------------------------------------------------------------
// Escaping
// ---------------------------------------------------------------------------------------

#[test]
fn values_from_the_repository_are_escaped() {
    let d = Dash::new("dashboard_http::xss");
    let img = d.path("vm1.img");
    let script = "<script>alert(1)</script>";
    let attr = "\"><img src=x onerror=alert(2)>";
    let out = tessera(
        tessera_tests::backup_args(&d.repo, "vm1", &[("d", img.as_path())])
            .into_iter()
            .chain([
                "--tag".to_string(),
                format!("note={script}"),
                "--tag".into(),
                format!("owner={attr}"),
            ]),
    );
    out.ok();
    let id = snapshot_id(&out.json());
    assert_eq!(
        d.listed(&id).expect("listed")["tags"]["note"],
        script,
        "the tag was not stored as given"
    );
    let s = d.login(&d.admin);
    let r = d.get(&snapshot_path(&id), Some(&s));
    assert_eq!(r.status, 200, "{r}");
    assert!(
        r.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{r}"
    );
    let lower = r.body.to_ascii_lowercase();
    assert!(!lower.contains("<script"), "{r}");
    assert!(!lower.contains("<img"), "{r}");
    assert!(
        r.body.contains("&quot;&gt;&lt;img") || r.body.contains("\"&gt;&lt;img"),
        "{r}"
    );
}

// ---------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------

#[test]
fn over_tls_the_cookie_is_secure_and_the_origin_is_https() {
    let d = Dash::over("dashboard_http::tls", Transport::https);
    let r = d.post("/ui/login", None, &[("token", &d.admin)]);
    assert_eq!((r.status, r.location()), (303, Some("/ui/")), "{r}");
    let cookies = r.all("set-cookie");
    assert_eq!(cookies.len(), 1, "{r}");
    let attrs: Vec<String> = cookies[0]
        .split(';')
        .map(|a| a.trim().to_ascii_lowercase())
        .collect();
    for want in ["httponly", "samesite=strict", "path=/", "secure"] {
        assert!(
            attrs.iter().any(|a| a == want),
            "{want} missing over TLS: {cookies:?}"
        );
    }
    let s = Session {
        cookie: r.session_cookie().expect("the session cookie"),
    };
    assert_security_headers("a page over TLS", &d.get("/ui/", Some(&s)));
    let csrf = d.csrf(&s);
    let a = d.id("vm1", 0);
    let protect = format!("/ui/snapshot/{a}/protect");
    let r = d.post_with(
        &protect,
        Some(&s),
        &[("csrf", &csrf)],
        &[("Origin", "https://evil.example")],
    );
    assert_eq!(r.status, 403, "a foreign origin over TLS: {r}");
    assert!(!d.protected(&a));
    let r = d.post(&protect, Some(&s), &[("csrf", &csrf)]);
    assert_eq!(r.status, 303, "{r}");
    assert!(d.protected(&a));
}

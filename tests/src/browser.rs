//! A real browser for the dashboard tests (SPEC §27): Debian's Chromium, headless, driven
//! over the DevTools protocol by the `headless_chrome` crate.
//!
//! [`Chromium::launch`] starts `/usr/bin/chromium` (it never downloads one: the crate's
//! default `offline` feature) with one tab, and listens to everything the page reports as
//! wrong: console errors (`Log.entryAdded` of level `error`, which is also where Chromium
//! reports a Content-Security-Policy violation and a resource that failed to load),
//! uncaught exceptions (`Runtime.exceptionThrown`), `console.error` calls
//! (`Runtime.consoleAPICalled`) and requests that failed (`Network.loadingFailed`).
//! [`Chromium::assert_clean`] fails the test if any of them happened since the last check.
//!
//! The pages have no script; the test reads their DOM by evaluating JavaScript through
//! DevTools ([`Chromium::eval`], [`Chromium::attr`], ...), which the page's CSP does not
//! govern. Clicks and typing are real input events at the element's position.
//!
//! Screenshots ([`Chromium::screenshot`]) are whole pages, written as PNG files into the
//! directory given at launch; with `TESSERA_UPDATE_DOCS_SCREENSHOTS=1` the ones named in
//! [`DOC_PAGES`] are also copied to `docs/dashboard-NAME.png` of the repository.
//!
//! When Chromium is missing, the test fails and names `scripts/ensure-deps.sh`: it never
//! passes without having looked at the pages.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use headless_chrome::protocol::cdp::types::Event;
use headless_chrome::protocol::cdp::{Network, Page};
use headless_chrome::{Browser, LaunchOptions, Tab};
use serde_json::Value;

/// Where Debian installs Chromium (`apt-get install chromium`, by `scripts/ensure-deps.sh`).
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Screenshots also copied to `docs/dashboard-NAME.png` with
/// `TESSERA_UPDATE_DOCS_SCREENSHOTS=1`.
pub const DOC_PAGES: &[&str] = &["overview", "series", "snapshot", "health"];

/// How long a page may take to load after a navigation or a click.
const PAGE_TIMEOUT: Duration = Duration::from_secs(20);

/// One headless Chromium with one tab.
pub struct Chromium {
    // Kept for the tab's lifetime: dropping it ends the browser process.
    _browser: Browser,
    tab: Arc<Tab>,
    problems: Arc<Mutex<Vec<String>>>,
    shots: PathBuf,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A JavaScript string literal of `s`.
pub fn js_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

impl Chromium {
    /// Starts Chromium with one tab whose problems are recorded; screenshots go to
    /// `shots` (created).
    ///
    /// # Panics
    ///
    /// When Chromium is missing or does not start.
    pub fn launch(shots: &Path) -> Self {
        assert!(
            Path::new(CHROMIUM).is_file(),
            "Chromium is missing at {CHROMIUM}: the dashboard tests drive a real browser; \
             run scripts/ensure-deps.sh (it installs Debian's `chromium` package)"
        );
        std::fs::create_dir_all(shots)
            .unwrap_or_else(|e| panic!("creating {}: {e}", shots.display()));
        let args: Vec<&std::ffi::OsStr> = [
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--lang=en-US",
            "--font-render-hinting=none",
        ]
        .iter()
        .map(std::ffi::OsStr::new)
        .collect();
        let options = LaunchOptions {
            path: Some(PathBuf::from(CHROMIUM)),
            sandbox: false,
            headless: true,
            window_size: Some((1280, 900)),
            idle_browser_timeout: Duration::from_mins(5),
            args,
            ..LaunchOptions::default()
        };
        let browser = Browser::new(options)
            .unwrap_or_else(|e| panic!("starting Chromium ({CHROMIUM}): {e:#}"));
        let tab = browser
            .new_tab()
            .unwrap_or_else(|e| panic!("opening a Chromium tab: {e:#}"));
        tab.set_default_timeout(PAGE_TIMEOUT);
        let problems = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&problems);
        tab.add_event_listener(Arc::new(move |event: &Event| {
            if let Some(p) = problem_of(event) {
                lock(&sink).push(p);
            }
        }))
        .expect("listening to the tab's events");
        tab.enable_log()
            .and_then(|t| t.enable_runtime())
            .expect("enabling the Log and Runtime domains");
        tab.call_method(Network::Enable {
            max_total_buffer_size: None,
            max_resource_buffer_size: None,
            max_post_data_size: None,
            report_direct_socket_traffic: None,
            enable_durable_messages: None,
        })
        .expect("enabling the Network domain");
        Self {
            _browser: browser,
            tab,
            problems,
            shots: shots.to_path_buf(),
        }
    }

    /// The tab, for anything this wrapper does not cover.
    pub fn tab(&self) -> &Tab {
        &self.tab
    }

    /// Opens `url` and waits until the page has loaded.
    ///
    /// # Panics
    ///
    /// When the navigation fails or times out.
    pub fn goto(&self, url: &str) {
        self.mark_document();
        self.tab
            .navigate_to(url)
            .unwrap_or_else(|e| panic!("navigating to {url}: {e:#}"));
        self.wait_new_document(&format!("navigating to {url}"));
    }

    /// The page's URL (`location.href`).
    pub fn url(&self) -> String {
        self.eval("location.href")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The path and query of the page's URL.
    pub fn path(&self) -> String {
        self.eval("location.pathname + location.search")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Evaluates the JavaScript expression `expr` in the page and returns its value as JSON
    /// (`undefined` is `null`).
    ///
    /// # Panics
    ///
    /// When the expression throws or DevTools fails.
    pub fn eval(&self, expr: &str) -> Value {
        match self.try_eval(expr) {
            Ok(v) => v,
            Err(e) => panic!("evaluating {expr:?} on {}: {e}", self.tab.get_url()),
        }
    }

    fn try_eval(&self, expr: &str) -> Result<Value, String> {
        let wrapped = format!(
            "(() => {{ try {{ const v = ({expr}); return JSON.stringify({{ ok: v === undefined ? null : v }}); }} \
             catch (e) {{ return JSON.stringify({{ err: String(e) }}); }} }})()"
        );
        let remote = self
            .tab
            .evaluate(&wrapped, false)
            .map_err(|e| format!("{e:#}"))?;
        let text = remote
            .value
            .as_ref()
            .and_then(Value::as_str)
            .ok_or_else(|| format!("no string result: {remote:?}"))?;
        let mut doc: Value = serde_json::from_str(text).map_err(|e| format!("{e}: {text}"))?;
        if let Some(err) = doc.get("err") {
            return Err(format!("it threw {err}"));
        }
        Ok(doc["ok"].take())
    }

    /// How many elements match `selector`.
    pub fn count(&self, selector: &str) -> usize {
        let n = self.eval(&format!(
            "document.querySelectorAll({}).length",
            js_str(selector)
        ));
        usize::try_from(n.as_u64().expect("a count")).expect("a small count")
    }

    /// Whether an element matches `selector`.
    pub fn exists(&self, selector: &str) -> bool {
        self.count(selector) > 0
    }

    /// Attribute `name` of the first element matching `selector` (`None`: no such element
    /// or no such attribute).
    pub fn attr(&self, selector: &str, name: &str) -> Option<String> {
        self.eval(&format!(
            "(e => e && e.getAttribute({}))(document.querySelector({}))",
            js_str(name),
            js_str(selector)
        ))
        .as_str()
        .map(str::to_string)
    }

    /// Attribute `name` of the first element matching `selector`, which must exist.
    ///
    /// # Panics
    ///
    /// When there is no such element or attribute.
    #[track_caller]
    pub fn must_attr(&self, selector: &str, name: &str) -> String {
        self.attr(selector, name).unwrap_or_else(|| {
            panic!(
                "no element {selector} with attribute {name} on {}",
                self.url()
            )
        })
    }

    /// Attribute `name` of every element matching `selector`, in document order (`None`
    /// where it is absent).
    pub fn attrs(&self, selector: &str, name: &str) -> Vec<Option<String>> {
        self.eval(&format!(
            "Array.from(document.querySelectorAll({}), e => e.getAttribute({}))",
            js_str(selector),
            js_str(name)
        ))
        .as_array()
        .expect("an array")
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect()
    }

    /// The text of the first element matching `selector`, whitespace trimmed.
    pub fn text(&self, selector: &str) -> Option<String> {
        self.eval(&format!(
            "(e => e && e.textContent.trim())(document.querySelector({}))",
            js_str(selector)
        ))
        .as_str()
        .map(str::to_string)
    }

    /// Types `text` into the element matching `selector`: clicks it (as a person would),
    /// then enters the text as one input event (`Input.insertText`, as a paste or an input
    /// method does; key events one character at a time cost a DevTools round trip each).
    ///
    /// # Panics
    ///
    /// When there is no such element.
    pub fn type_into(&self, selector: &str, text: &str) {
        self.tab
            .wait_for_element(selector)
            .and_then(|e| e.click().map(|_| ()))
            .and_then(|()| self.tab.send_character(text).map(|_| ()))
            .unwrap_or_else(|e| panic!("typing into {selector} on {}: {e:#}", self.url()));
        let value = self.eval(&format!(
            "document.querySelector({}).value",
            js_str(selector)
        ));
        assert_eq!(
            value.as_str().map(str::len),
            Some(text.len()),
            "typing into {selector}: the field did not get the text"
        );
    }

    /// Clicks the element matching `selector` (a real mouse click at its middle) and waits
    /// until the page it leads to has loaded.
    ///
    /// # Panics
    ///
    /// When there is no such element or no new page loads.
    pub fn click_and_wait(&self, selector: &str) {
        self.mark_document();
        self.tab
            .wait_for_element(selector)
            .and_then(|e| e.click().map(|_| ()))
            .unwrap_or_else(|e| panic!("clicking {selector} on {}: {e:#}", self.url()));
        self.wait_new_document(&format!("clicking {selector}"));
    }

    /// Marks the current document, so that [`Self::wait_new_document`] knows when it was
    /// replaced.
    fn mark_document(&self) {
        // A blank tab, or a page between loads, may refuse: then there is nothing to mark.
        let _ = self.try_eval("window.__tesseraOld = true");
    }

    fn wait_new_document(&self, what: &str) {
        let started = Instant::now();
        loop {
            let state = self.try_eval("window.__tesseraOld === true ? 'old' : document.readyState");
            if matches!(&state, Ok(Value::String(s)) if s == "complete") {
                return;
            }
            assert!(
                started.elapsed() < PAGE_TIMEOUT,
                "{what}: no new page loaded within {PAGE_TIMEOUT:?} (last state {state:?}, url {})",
                self.tab.get_url()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The problems reported since the last call (and forgets them).
    pub fn take_problems(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.problems))
    }

    /// Fails unless the page reported no problem since the last check (console errors,
    /// CSP violations, failed loads, uncaught exceptions); `page` names it in the message.
    ///
    /// # Panics
    ///
    /// When there were problems.
    #[track_caller]
    pub fn assert_clean(&self, page: &str) {
        // Events arrive on their own thread: give the last ones a moment.
        std::thread::sleep(Duration::from_millis(150));
        let problems = self.take_problems();
        assert!(
            problems.is_empty(),
            "the {page} page ({}) reported problems:\n  {}",
            self.url(),
            problems.join("\n  ")
        );
    }

    /// A PNG screenshot of the whole page, written to `SHOTS/NAME.png` (and to
    /// `docs/dashboard-NAME.png` for the pages of [`DOC_PAGES`] when
    /// `TESSERA_UPDATE_DOCS_SCREENSHOTS=1`); returns its path.
    ///
    /// # Panics
    ///
    /// When the screenshot cannot be taken or written.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let size = self.eval(
            "[Math.max(document.documentElement.scrollWidth, 1280), \
              Math.max(document.documentElement.scrollHeight, 200)]",
        );
        let dim = |i: usize| size[i].as_f64().unwrap_or(1000.0).min(8000.0);
        let shot = self
            .tab
            .call_method(Page::CaptureScreenshot {
                format: Some(Page::CaptureScreenshotFormatOption::Png),
                quality: None,
                clip: Some(Page::Viewport {
                    x: 0.0,
                    y: 0.0,
                    width: dim(0),
                    height: dim(1),
                    scale: 1.0,
                }),
                from_surface: Some(true),
                capture_beyond_viewport: Some(true),
                optimize_for_speed: None,
            })
            .unwrap_or_else(|e| panic!("screenshot of {name}: {e:#}"));
        let png = openssl::base64::decode_block(&shot.data).expect("the screenshot's base64");
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "the screenshot of {name} is not a PNG"
        );
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, &png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        if std::env::var("TESSERA_UPDATE_DOCS_SCREENSHOTS").as_deref() == Ok("1")
            && DOC_PAGES.contains(&name)
        {
            let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
            std::fs::create_dir_all(&docs).expect("creating docs/");
            let to = docs.join(format!("dashboard-{name}.png"));
            std::fs::write(&to, &png).unwrap_or_else(|e| panic!("writing {}: {e}", to.display()));
        }
        path
    }
}

/// What is wrong in `event`, if it reports a problem.
fn problem_of(event: &Event) -> Option<String> {
    match event {
        Event::LogEntryAdded(e) => {
            let entry = &e.params.entry;
            (format!("{:?}", entry.level) == "Error").then(|| {
                format!(
                    "console error ({:?}): {}{}",
                    entry.source,
                    entry.text,
                    entry
                        .url
                        .as_deref()
                        .map(|u| format!(" [{u}]"))
                        .unwrap_or_default()
                )
            })
        }
        Event::RuntimeExceptionThrown(e) => Some(format!(
            "uncaught exception: {} {}",
            e.params.exception_details.text,
            e.params
                .exception_details
                .exception
                .as_ref()
                .and_then(|x| x.description.clone())
                .unwrap_or_default()
        )),
        Event::RuntimeConsoleAPICalled(e) => {
            (format!("{:?}", e.params.Type) == "Error").then(|| {
                let args: Vec<String> = e
                    .params
                    .args
                    .iter()
                    .map(|a| {
                        a.value
                            .as_ref()
                            .map_or_else(|| format!("{:?}", a.description), ToString::to_string)
                    })
                    .collect();
                format!("console.error: {}", args.join(" "))
            })
        }
        Event::NetworkLoadingFailed(e) => {
            // A navigation that replaces a page cancels what the old one still loaded.
            (e.params.canceled != Some(true)).then(|| {
                format!(
                    "a load failed: {} (blocked: {:?})",
                    e.params.error_text, e.params.blocked_reason
                )
            })
        }
        _ => None,
    }
}

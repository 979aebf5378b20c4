//! Notifications of job runs (SPEC.md §26.5) to a real HTTP server and a real SMTP server
//! (aiosmtpd) on loopback: a failure reaches every target whose `on` list has it (webhook
//! body and email as specified), a success only the targets that opted in; a webhook that
//! answers 500 is retried; a target that cannot be reached never changes the run's outcome
//! and its failure is in the record; a run killed with `kill -9` is notified as a failure
//! by the next run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tessera_tests::sinks::{
    free_port, job_run, job_run_ok, kill_if_alive, pids_in, rfc3339_us, script, toml_str,
    KillPidsOnDrop, SmtpSink, WebhookSink,
};
use tessera_tests::{init_repo, make_image, seed, DataGen, ImageSpec, Value};

const MIB: u64 = 1 << 20;

/// A scratch directory with a plain repository, a state directory and a 1 MiB image.
struct Setup {
    t: tempfile::TempDir,
    repo: PathBuf,
    state: PathBuf,
    image: PathBuf,
}

impl Setup {
    fn new(test: &str) -> Self {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("repo");
        init_repo(&repo, &[]);
        let image = t.path().join("disk.raw");
        make_image(&image, ImageSpec::mixed(MIB), &mut DataGen::new(seed(test)));
        let state = t.path().join("state");
        Self {
            t,
            repo,
            state,
            image,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.t.path().join(name)
    }

    /// `DIR/NAME.toml` backing up `source` as series `nts`, then `extra`.
    fn job(&self, name: &str, source: &Path, extra: &str) -> PathBuf {
        tessera_tests::sinks::write_job(
            &self.path(&format!("{name}.toml")),
            &self.repo,
            "nts",
            source,
            extra,
        )
    }
}

/// The notification entries of a record.
fn notifications(doc: &Value) -> Vec<Value> {
    doc["notifications"]
        .as_array()
        .unwrap_or_else(|| panic!("no notifications array in {doc:#}"))
        .clone()
}

/// Checks a webhook body against the record it reports (SPEC §26.5).
#[track_caller]
fn assert_webhook_body(body: &Value, event: &str, job: &str, record: &Value) {
    assert_eq!(body["event"], event, "{body:#}");
    assert_eq!(body["job"], job, "{body:#}");
    assert_eq!(body["series"], "nts", "{body:#}");
    assert!(
        body["host"].as_str().is_some_and(|h| !h.is_empty()),
        "{body:#}"
    );
    rfc3339_us(body["time"].as_str().expect("time"));
    assert!(
        body["summary"].as_str().is_some_and(|s| !s.is_empty()),
        "{body:#}"
    );
    assert_eq!(body["run"]["id"], record["id"], "{body:#}");
    assert_eq!(body["run"]["job"], job, "{body:#}");
    assert_eq!(body["run"]["outcome"], record["outcome"], "{body:#}");
}

#[test]
fn a_failure_reaches_webhook_and_email_and_a_success_only_who_asked() {
    let s = Setup::new("jobs_notify_targets");
    let hook_default = WebhookSink::start(&s.path("hook-default"));
    let hook_success = WebhookSink::start(&s.path("hook-success"));
    let smtp = SmtpSink::start(&s.path("smtp"));
    let targets = format!(
        "\n[[notify]]\nwebhook = {}\n\n[[notify]]\nemail = [\"ops@example.com\", \"oncall@example.com\"]\nsmtp = {}\nfrom = \"tessera@example.com\"\n\n[[notify]]\nwebhook = {}\non = [\"success\"]\n",
        toml_str(hook_default.url()),
        toml_str(smtp.url()),
        toml_str(hook_success.url()),
    );

    // A failing run: the source is gone.
    let file = s.job("nt", &s.path("missing.raw"), &targets);
    let (out, doc) = job_run(&file, &s.state, &[]);
    assert_ne!(out.code, 0, "{out}");
    assert_eq!(doc["outcome"], "failure", "{out}");
    assert_eq!(doc["failure"]["step"], "backup", "{out}");

    let requests = hook_default.requests();
    assert_eq!(requests.len(), 1, "webhook #1: {}", hook_default.log());
    assert_eq!(
        requests[0]
            .content_type
            .as_deref()
            .map(|c| c.split(';').next().unwrap().trim()),
        Some("application/json")
    );
    assert_eq!(requests[0].path, "/hook");
    let body = requests[0].json();
    assert_webhook_body(&body, "failure", "nt", &doc);
    assert_eq!(body["run"]["failure"]["step"], "backup", "{body:#}");
    assert!(
        hook_success.requests().is_empty(),
        "a target with on = [\"success\"] got the failure"
    );

    let mails = smtp.messages();
    assert_eq!(mails.len(), 1, "{mails:#?}\n{}", smtp.log());
    let mail = &mails[0];
    assert_eq!(mail.subject, "[tessera] nt: failure", "{mail:#?}");
    assert!(
        mail.to.iter().any(|a| a == "ops@example.com")
            && mail.to.iter().any(|a| a == "oncall@example.com"),
        "{mail:#?}"
    );
    assert!(mail.from.contains("tessera@example.com"), "{mail:#?}");
    let summary = body["summary"].as_str().unwrap();
    let json_at = mail
        .body
        .find('{')
        .unwrap_or_else(|| panic!("no JSON record in the mail body: {}", mail.body));
    assert!(
        mail.body[..json_at].contains(summary.trim()),
        "the mail does not start with the summary {summary:?}: {}",
        mail.body
    );
    let mail_record = mail.body[json_at..].trim().to_string();
    let failed_id = doc["id"].clone();

    let n = notifications(&doc);
    assert_eq!(n.len(), 2, "{n:#?}");
    assert_eq!(n[0]["target"], "webhook #1", "{n:#?}");
    assert_eq!(n[1]["target"], "email #2", "{n:#?}");
    for x in &n {
        assert_eq!(x["event"], "failure", "{n:#?}");
        assert_eq!(x["ok"], true, "{n:#?}");
        assert_eq!(x["attempts"], 1, "{n:#?}");
        assert!(x["error"].is_null(), "{n:#?}");
    }

    // A successful run: only the target that opted in to `success`.
    let file = s.job("nt", &s.image, &targets);
    let doc = job_run_ok(&file, &s.state, &[]);
    assert_eq!(hook_default.requests().len(), 1, "webhook #1 got a success");
    assert_eq!(smtp.messages().len(), 1, "the email target got a success");
    let got = hook_success.bodies();
    assert_eq!(got.len(), 1, "{}", hook_success.log());
    assert_webhook_body(&got[0], "success", "nt", &doc);
    assert_eq!(
        got[0]["run"]["backup"]["snapshot"], doc["backup"]["snapshot"],
        "{:#}",
        got[0]
    );
    let n = notifications(&doc);
    assert_eq!(n.len(), 1, "{n:#?}");
    assert_eq!(n[0]["target"], "webhook #3", "{n:#?}");
    assert_eq!(n[0]["event"], "success", "{n:#?}");
    assert_eq!(n[0]["ok"], true, "{n:#?}");

    // The mail's body: the summary, then the run record itself as JSON.
    let record: Value = serde_json::from_str(&mail_record)
        .unwrap_or_else(|e| panic!("the mail's record is not JSON ({e}): {mail_record}"));
    assert_eq!(
        record["id"], failed_id,
        "the mail's JSON is not the run record: {record:#}"
    );
    assert_eq!(record["outcome"], "failure", "{record:#}");
    assert_eq!(record["failure"]["step"], "backup", "{record:#}");
}

#[test]
fn a_webhook_answering_500_is_retried() {
    let s = Setup::new("jobs_notify_retry");
    let sink = WebhookSink::start_failing(&s.path("hook"), 1, 500);
    let file = s.job(
        "retry",
        &s.image,
        &format!(
            "\n[[notify]]\nwebhook = {}\non = [\"success\"]\n",
            toml_str(sink.url())
        ),
    );
    let doc = job_run_ok(&file, &s.state, &[]);
    let n = notifications(&doc);
    assert_eq!(n.len(), 1, "{n:#?}");
    assert_eq!(n[0]["ok"], true, "{n:#?}");
    assert_eq!(n[0]["attempts"], 2, "{n:#?}");
    let requests = sink.requests();
    assert_eq!(
        requests.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 200],
        "{}",
        sink.log()
    );
    assert_eq!(
        requests[0].json(),
        requests[1].json(),
        "a retry sends the same body"
    );
}

#[test]
fn unreachable_or_failing_targets_never_change_the_outcome() {
    let s = Setup::new("jobs_notify_unreachable");
    let closed = free_port();
    let sink = WebhookSink::start_failing(&s.path("hook"), 100, 503);
    let file = s.job(
        "unreach",
        &s.image,
        &format!(
            "\n[[notify]]\nwebhook = \"http://127.0.0.1:{closed}/nobody?token=leak-me-7\"\non = [\"success\"]\n\n[[notify]]\nwebhook = {}\non = [\"success\"]\n\n[[notify]]\nemail = [\"ops@example.com\"]\nsmtp = \"smtp://127.0.0.1:{closed}\"\nfrom = \"tessera@example.com\"\non = [\"success\"]\n",
            toml_str(sink.url())
        ),
    );
    let started = std::time::Instant::now();
    let (out, doc) = job_run(&file, &s.state, &[]);
    out.ok();
    assert_eq!(doc["outcome"], "success", "{out}");
    // An error about a URL never repeats it: it may carry a token (SPEC §26.5).
    assert!(
        !out.stdout.contains("leak-me-7") && !out.stderr.contains("leak-me-7"),
        "the webhook URL's token is in the output: {out}"
    );
    let n = notifications(&doc);
    assert_eq!(n.len(), 3, "{n:#?}");
    for x in &n {
        assert_eq!(x["ok"], false, "{n:#?}");
        assert_eq!(x["attempts"], 3, "3 attempts: {n:#?}");
        assert!(x["error"].as_str().is_some_and(|e| !e.is_empty()), "{n:#?}");
    }
    assert_eq!(sink.requests().len(), 3, "{}", sink.log());
    // 3 attempts, 1 s and 2 s apart.
    assert!(
        started.elapsed() >= Duration::from_millis(2900),
        "three attempts 1 s and 2 s apart took only {:?}",
        started.elapsed()
    );
    let on_disk = tessera_tests::sinks::records(&s.state, "unreach");
    assert_eq!(on_disk.len(), 1);
    assert_eq!(on_disk[0]["outcome"], "success");
    assert_eq!(notifications(&on_disk[0]).len(), 3);
}

#[test]
fn a_killed_run_is_notified_as_a_failure_by_the_next_run() {
    let s = Setup::new("jobs_notify_interrupted");
    let sink = WebhookSink::start(&s.path("hook"));
    let pidfile = s.path("hook.pid");
    let _cleanup = KillPidsOnDrop(pidfile.clone());
    let hook = script(
        s.t.path(),
        "hook.sh",
        &format!("echo $$ >> {}\nexec sleep 20", pidfile.display()),
    );
    let notify = format!("\n[[notify]]\nwebhook = {}\n", toml_str(sink.url()));
    let file = s.job(
        "intr",
        &s.image,
        &format!(
            "{notify}\n[hooks.before]\ncommand = [{}]\n",
            toml_str(&hook)
        ),
    );
    tessera_tests::sinks::kill_run_during_before_hook(&file, &s.state, &pidfile);
    let killed = tessera_tests::sinks::records(&s.state, "intr").remove(0);
    assert!(sink.requests().is_empty());

    let file = s.job("intr", &s.image, &notify);
    job_run_ok(&file, &s.state, &[]);
    let bodies = sink.bodies();
    assert_eq!(bodies.len(), 1, "{bodies:#?}");
    assert_eq!(bodies[0]["event"], "failure", "{:#}", bodies[0]);
    assert_eq!(bodies[0]["run"]["id"], killed["id"], "{:#}", bodies[0]);
    assert_eq!(
        bodies[0]["run"]["outcome"], "interrupted",
        "{:#}",
        bodies[0]
    );
    for pid in pids_in(&pidfile) {
        kill_if_alive(pid);
    }
}

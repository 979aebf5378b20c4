//! The dashboard (SPEC §27) in a real browser: Debian's Chromium, headless, logs in through
//! the form, reads every page's figures from its DOM and compares them with what the CLI
//! says about the same repository (`list`, `stats`, `prune --dry-run`, `forget --dry-run`),
//! then protects, unprotects and forgets a snapshot by clicking, and checks the repository
//! afterwards: the forgotten snapshot is gone and every other one restores byte for byte.
//! Every page must load without a single console error, which is how Chromium reports a
//! Content-Security-Policy violation or a resource that failed to load.
//!
//! Screenshots of every page are written under `CARGO_TARGET_TMPDIR/dashboard/TEST/`;
//! `TESSERA_UPDATE_DOCS_SCREENSHOTS=1` also refreshes `docs/dashboard-*.png`.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tessera_tests::browser::Chromium;
use tessera_tests::sinks::{job_run_ok, write_job};
use tessera_tests::{
    backup_json, init_repo, list_json, make_image, mutate, pack_files, restored_sha, seed,
    sha256_file, snapshot_id, start_serve_args, tessera, token_add, DataGen, ImageSpec, Value,
};

const MIB: u64 = 1 << 20;

/// Stored bytes forgetting `id` frees, by the CLI.
fn cli_freed(repo: &Path, id: &str) -> u64 {
    tessera_tests::forget_freed(repo, id)
}

fn listed(repo: &Path, id: &str) -> Option<Value> {
    list_json(repo).into_iter().find(|s| s["id"] == id)
}

fn damaged_ids(repo: &Path) -> BTreeSet<String> {
    list_json(repo)
        .iter()
        .filter(|s| s["damaged"] == true)
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect()
}

/// Asserts the page's path and query; the message shows what the page says.
#[track_caller]
fn expect_path(b: &Chromium, want: &str, what: &str) {
    let path = b.path();
    assert_eq!(
        path,
        want,
        "{what}: the browser is at {path}, saying:\n{}\n(problems: {:?})",
        b.text("main").unwrap_or_default(),
        b.take_problems()
    );
}

fn num(s: &str) -> u64 {
    s.parse()
        .unwrap_or_else(|_| panic!("{s:?} is not a number"))
}

/// The repository the test looks at.
struct Fixture {
    t: tempfile::TempDir,
    repo: PathBuf,
    jobs: PathBuf,
    state: PathBuf,
    /// Snapshot ids by series, oldest first.
    ids: BTreeMap<&'static str, Vec<String>>,
    /// The image's SHA-256 at each snapshot.
    sha: BTreeMap<String, String>,
    /// The image size of each series.
    size: BTreeMap<&'static str, u64>,
}

/// vm1: 4 snapshots (the first by its job, whose retention is keep-last 2), each a few
/// writes from the one before, the second protected; vm2: 2; db1: 1, in a pack of its own
/// that is then damaged and found damaged by `tessera verify`.
fn build(gen: &mut DataGen) -> Fixture {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    init_repo(&repo, &[]);
    let jobs = t.path().join("jobs");
    let state = t.path().join("state");
    fs::create_dir(&jobs).unwrap();
    let mut ids: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    let mut sha = BTreeMap::new();
    let mut size = BTreeMap::new();

    let vm1 = t.path().join("vm1.img");
    size.insert("vm1", 4 * MIB);
    make_image(&vm1, ImageSpec::mixed(4 * MIB), gen);
    let job = write_job(
        &jobs.join("vm1.toml"),
        &repo,
        "vm1",
        &vm1,
        "\n[retention]\nkeep-last = 2\n",
    );
    // The job's own age limit (a top-level key, before the tables write_job wrote).
    let text = fs::read_to_string(&job).unwrap();
    fs::write(&job, format!("stale-after = \"1h\"\n\n{text}")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&job, fs::Permissions::from_mode(0o600)).unwrap();
    }
    let run = job_run_ok(&job, &state, &[]);
    let first = run["backup"]["snapshot"]
        .as_str()
        .unwrap_or_else(|| panic!("no backup.snapshot in {run:#}"))
        .to_string();
    sha.insert(first.clone(), sha256_file(&vm1));
    ids.entry("vm1").or_default().push(first);
    for _ in 1..4 {
        mutate(&vm1, gen, 5, 192 * 1024, (1, 2, 2));
        let id = snapshot_id(&backup_json(&repo, "vm1", &[("d", &vm1)]));
        sha.insert(id.clone(), sha256_file(&vm1));
        ids.entry("vm1").or_default().push(id);
    }

    let vm2 = t.path().join("vm2.img");
    size.insert("vm2", 3 * MIB);
    make_image(&vm2, ImageSpec::mixed(3 * MIB), gen);
    for round in 0..2 {
        if round > 0 {
            mutate(&vm2, gen, 3, 128 * 1024, (1, 2, 2));
        }
        let id = snapshot_id(&backup_json(&repo, "vm2", &[("d", &vm2)]));
        sha.insert(id.clone(), sha256_file(&vm2));
        ids.entry("vm2").or_default().push(id);
    }

    // db1: random data, so its backup writes a pack of its own; one byte of it flipped.
    let db1 = t.path().join("db1.img");
    size.insert("db1", 2 * MIB + 99);
    let before = pack_files(&repo);
    make_image(
        &db1,
        ImageSpec {
            weights: (0, 0, 1),
            ..ImageSpec::mixed(2 * MIB + 99)
        },
        gen,
    );
    let id = snapshot_id(&backup_json(&repo, "db1", &[("d", &db1)]));
    ids.entry("db1").or_default().push(id);
    let pack = pack_files(&repo)
        .into_iter()
        .find(|p| !before.contains(p))
        .expect("db1's backup wrote a pack of its own");
    let mut bytes = fs::read(&pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&pack, bytes).unwrap();

    tessera([
        OsStr::new("protect"),
        repo.as_os_str(),
        ids["vm1"][1].as_ref(),
    ])
    .ok();
    let verify = tessera([OsStr::new("verify"), repo.as_os_str()]);
    assert_eq!(verify.code, 4, "verify of a damaged repository: {verify}");
    assert_eq!(
        damaged_ids(&repo),
        BTreeSet::from([ids["db1"][0].clone()]),
        "verify marked other snapshots than db1's"
    );
    Fixture {
        t,
        repo,
        jobs,
        state,
        ids,
        sha,
        size,
    }
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one visit of the dashboard, page by page"
)]
fn the_dashboard_in_a_real_browser() {
    // (Brings the binary up to date first: that wait is not the test's.)
    tessera_tests::tessera_bin();
    let started = Instant::now();
    let mut gen = DataGen::new(seed("dashboard_browser"));
    let r = build(&mut gen);
    let repo = r.repo.as_path();
    let tokens = r.t.path().join("tokens");
    let admin = token_add(&tokens, "admin", "*", "ops", None);
    let reader = token_add(&tokens, "read", "*", "viewer", None);
    let served = start_serve_args(
        repo,
        &[
            "--tokens".as_ref(),
            tokens.as_os_str(),
            "--jobs".as_ref(),
            r.jobs.as_os_str(),
            "--state-dir".as_ref(),
            r.state.as_os_str(),
            // Series without a job are stale after a second; vm1's job allows an hour.
            "--stale-after".as_ref(),
            "1s".as_ref(),
        ],
    );
    eprintln!(
        "[dashboard_browser] repository ready after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("dashboard")
        .join("the_dashboard_in_a_real_browser");
    let b = Chromium::launch(&shots);
    let lap = |what: &str| {
        eprintln!(
            "[dashboard_browser] {what} at {:.1}s",
            started.elapsed().as_secs_f64()
        );
    };
    lap("Chromium started");
    let base = served.url.clone();
    let vm1 = r.ids["vm1"].clone();
    let vm2 = r.ids["vm2"].clone();
    let db1 = r.ids["db1"][0].clone();

    // --- Login ------------------------------------------------------------------------
    b.goto(&format!("{base}/ui/"));
    expect_path(
        &b,
        "/ui/login",
        "no session: the overview sends to the login",
    );
    b.assert_clean("login");
    b.screenshot("login");
    b.type_into("#token", &admin);
    b.click_and_wait("#login-submit");
    expect_path(&b, "/ui/", "the login leads to the overview");
    b.assert_clean("overview");
    assert_eq!(b.must_attr("#whoami", "data-role"), "admin");

    lap("logged in");
    // --- Overview -----------------------------------------------------------------------
    // (The newest snapshot of db1 is more than a second old, hence stale.)
    let newest_db1_us = listed(repo, &db1).unwrap()["time_us"].as_i64().unwrap();
    let now_us = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap();
    if now_us - newest_db1_us < 1_500_000 {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        b.goto(&format!("{base}/ui/"));
    }
    let list = list_json(repo);
    let rows: Vec<String> = b
        .attrs("#series tr[data-series]", "data-series")
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect();
    assert_eq!(rows, ["db1", "vm1", "vm2"], "one row per series");
    for series in ["db1", "vm1", "vm2"] {
        let count = list.iter().filter(|s| s["series"] == series).count();
        let row = format!("#series tr[data-series=\"{series}\"]");
        assert_eq!(
            b.text(&format!("{row} td.count")).as_deref(),
            Some(count.to_string().as_str()),
            "snapshot count of {series}"
        );
        let newest = list
            .iter()
            .filter(|s| s["series"] == series)
            .max_by_key(|s| s["time_us"].as_i64())
            .unwrap();
        assert_eq!(
            b.attr(&format!("{row} td.newest a"), "data-id").as_deref(),
            newest["id"].as_str(),
            "newest snapshot of {series}"
        );
        assert_eq!(
            b.attr(&format!("{row} td.logical [data-bytes]"), "data-bytes")
                .map(|v| num(&v)),
            newest["logical_bytes"].as_u64(),
            "logical bytes of {series}' newest snapshot"
        );
        let stale = if series == "vm1" { "0" } else { "1" };
        assert_eq!(
            b.attr(&row, "data-stale").as_deref(),
            Some(stale),
            "{series}: vm1's job allows 1 h, the others serve --stale-after 1s"
        );
        assert_eq!(
            b.count(&format!("{row} td.age.stale")),
            usize::from(stale == "1"),
            "{series}: the age is marked stale"
        );
        let expect = if series == "db1" { "damaged" } else { "clean" };
        assert_eq!(
            b.attr(&format!("{row} td.verify"), "data-result")
                .as_deref(),
            Some(expect),
            "last verify of {series}"
        );
    }
    assert_eq!(
        num(&b.must_attr("#totals [data-stat=snapshots]", "data-value")),
        list.len() as u64,
        "repository snapshot count"
    );
    let stats_out = tessera([OsStr::new("--json"), "stats".as_ref(), repo.as_os_str()]);
    stats_out.ok();
    let stats = stats_out.json()["stats"].clone();
    let logical_sum: u64 = list
        .iter()
        .map(|s| s["logical_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(
        stats["logical_bytes"].as_u64(),
        Some(logical_sum),
        "{stats}"
    );
    assert_eq!(
        num(&b.must_attr("#totals [data-stat=logical_bytes]", "data-value")),
        logical_sum,
        "repository logical bytes"
    );
    for (stat, field) in [
        ("series", "series"),
        ("pack_bytes", "pack_bytes"),
        ("unreferenced_stored_bytes", "unreferenced_stored_bytes"),
    ] {
        assert_eq!(
            b.attr(&format!("#totals [data-stat={stat}]"), "data-value")
                .map(|v| num(&v)),
            stats[field].as_u64(),
            "totals: {stat} vs stats.{field}"
        );
    }
    assert!(b.exists("svg#plot-stored"), "the stored-bytes plot");
    assert!(b.exists("svg#plot-delta"), "the daily delta plot");
    assert_eq!(
        b.attr("svg#plot-stored", "data-points").map(|v| num(&v)),
        Some(list.len() as u64)
    );
    assert!(
        b.count("svg#plot-delta rect[data-series]") >= 3,
        "today's bars of the three series"
    );
    b.screenshot("overview");

    lap("overview checked");
    // --- Series vm1 ---------------------------------------------------------------------
    b.click_and_wait("#series a[href=\"/ui/series/vm1\"]");
    expect_path(&b, "/ui/series/vm1", "the series link");
    b.assert_clean("series");
    let shown: Vec<String> = b
        .attrs("#snapshots tbody tr[data-id]", "data-id")
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect();
    let newest_first: Vec<String> = vm1.iter().rev().cloned().collect();
    assert_eq!(shown, newest_first, "vm1's snapshots, newest first");
    for id in &vm1 {
        let row = format!("#snapshots tr[data-id=\"{id}\"]");
        let protected = if *id == vm1[1] { "1" } else { "0" };
        assert_eq!(
            b.attr(&row, "data-protected").as_deref(),
            Some(protected),
            "{id}"
        );
        assert_eq!(b.attr(&row, "data-damaged").as_deref(), Some("0"), "{id}");
    }
    let prune = tessera([
        OsStr::new("--json"),
        "prune".as_ref(),
        repo.as_os_str(),
        "--series".as_ref(),
        "vm1".as_ref(),
        "--keep-last".as_ref(),
        "2".as_ref(),
        "--dry-run".as_ref(),
    ]);
    prune.ok();
    let decisions = prune.json()["decisions"].clone();
    let decisions = decisions.as_array().expect("decisions");
    assert_eq!(decisions.len(), vm1.len(), "{prune}");
    let mut fates = BTreeMap::new();
    for d in decisions {
        let keep = !d["reasons"].as_array().expect("reasons").is_empty();
        let id = d["id"].as_str().unwrap().to_string();
        assert_eq!(
            b.attr(
                &format!("#snapshots tr[data-id=\"{id}\"]"),
                "data-retention"
            )
            .as_deref(),
            Some(if keep { "keep" } else { "forget" }),
            "retention of {id} vs prune --dry-run: {d}"
        );
        fates.insert(id, keep);
    }
    assert!(fates[&vm1[1]], "the protected snapshot is kept");
    assert!(
        !fates[&vm1[0]],
        "keep-last 2 forgets the oldest unprotected one"
    );
    let mut compared = 0;
    for id in vm1.iter().filter(|id| **id != vm1[1]) {
        let shown = b
            .attr(
                &format!("#snapshots tr[data-id=\"{id}\"] td.freed [data-bytes]"),
                "data-bytes",
            )
            .map(|v| num(&v));
        assert_eq!(shown, Some(cli_freed(repo, id)), "freed bytes of {id}");
        compared += 1;
    }
    assert!(compared >= 2);
    assert!(
        b.text("#retention-note")
            .unwrap_or_default()
            .contains("vm1"),
        "the retention note names the job"
    );
    b.screenshot("series");

    lap("series checked");
    // --- Snapshot page (vm1's third: it has a previous one) --------------------------------
    let third = vm1[2].clone();
    b.click_and_wait(&format!("#snapshots tr[data-id=\"{third}\"] a"));
    expect_path(&b, &format!("/ui/snapshot/{third}"), "the snapshot link");
    b.assert_clean("snapshot");
    assert_eq!(b.must_attr("#snapshot-id", "data-id"), third);
    assert_eq!(b.count("#disks tbody tr[data-disk]"), 1, "one disk");
    assert_eq!(
        b.attr("#disks tr[data-disk=\"d\"]", "data-bytes")
            .map(|v| num(&v)),
        Some(r.size["vm1"])
    );
    assert!(
        b.exists("svg.strip[data-disk=\"d\"]"),
        "the changed-extents strip"
    );
    assert!(
        num(&b.must_attr("svg.strip[data-disk=\"d\"]", "data-changed-bytes")) > 0,
        "the strip shows changes"
    );
    assert_eq!(b.must_attr("#previous", "data-id"), vm1[1]);
    let commands = b.text("#commands").unwrap_or_default();
    assert!(commands.contains(&third), "{commands}");
    assert!(commands.contains("tessera restore"), "{commands}");
    assert_eq!(
        b.attr("#freed [data-bytes]", "data-bytes").map(|v| num(&v)),
        Some(cli_freed(repo, &third)),
        "the snapshot page's freed bytes"
    );
    assert!(b.exists("#protect button") && b.exists("#forget"));
    b.screenshot("snapshot");
    // The first snapshot of a series has nothing to compare with.
    b.goto(&format!("{base}/ui/snapshot/{}", vm1[0]));
    b.assert_clean("first snapshot");
    assert!(b.exists("#no-changes") && !b.exists("svg.strip"));
    // The damaged one says so.
    b.goto(&format!("{base}/ui/snapshot/{db1}"));
    b.assert_clean("damaged snapshot");
    assert!(
        b.exists("#damage-note"),
        "the damaged snapshot's page says it is damaged"
    );
    b.screenshot("snapshot-damaged");

    lap("snapshot pages checked");
    // --- Health -------------------------------------------------------------------------
    b.click_and_wait("#nav-health");
    expect_path(&b, "/ui/health", "the Health link");
    b.assert_clean("health");
    let clean = b.attrs("#verify-history tbody tr", "data-clean");
    assert!(!clean.is_empty(), "no verification run shown");
    assert!(
        clean.contains(&Some("0".into())),
        "the damaging run: {clean:?}"
    );
    let shown: BTreeSet<String> = b
        .attrs("#damage tbody tr[data-id]", "data-id")
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect();
    assert_eq!(shown, damaged_ids(repo), "damaged snapshots");
    assert!(
        b.count("#damage-map tbody tr[data-id]") >= 1,
        "the damage map"
    );
    assert!(b.exists("#repair-help"));
    let runs = b.attrs(
        "table.runs[data-job=\"vm1\"] tbody tr[data-run]",
        "data-outcome",
    );
    assert_eq!(runs, [Some("success".to_string())], "vm1's job run");
    b.screenshot("health");

    lap("health checked");
    // --- Protect and unprotect by clicking ------------------------------------------------
    b.goto(&format!("{base}/ui/snapshot/{third}"));
    b.click_and_wait("#protect button");
    expect_path(
        &b,
        &format!("/ui/snapshot/{third}?done=protected"),
        "Protect",
    );
    b.assert_clean("protected snapshot");
    assert_eq!(b.attr("#protected", "data-protected").as_deref(), Some("1"));
    assert!(b.exists("#notice"));
    assert_eq!(
        listed(repo, &third).unwrap()["protected"],
        true,
        "list after Protect"
    );
    assert!(
        !b.exists("#forget"),
        "a protected snapshot is offered a forget"
    );
    b.screenshot("snapshot-protected");
    b.click_and_wait("#unprotect button");
    expect_path(
        &b,
        &format!("/ui/snapshot/{third}?done=unprotected"),
        "Unprotect",
    );
    b.assert_clean("unprotected snapshot");
    assert_eq!(
        listed(repo, &third).unwrap()["protected"],
        false,
        "list after Unprotect"
    );

    lap("protect checked");
    // --- Forget by clicking ---------------------------------------------------------------
    b.click_and_wait("#forget");
    expect_path(
        &b,
        &format!("/ui/snapshot/{third}/forget"),
        "the Forget link",
    );
    b.assert_clean("forget");
    let freed = num(&b.must_attr("#freed", "data-bytes"));
    assert_eq!(
        freed,
        cli_freed(repo, &third),
        "the confirmation's freed bytes"
    );
    b.screenshot("forget");
    b.click_and_wait("#confirm-forget button");
    let after = b.path();
    assert!(
        after.starts_with("/ui/series/vm1?done=forgotten"),
        "after the forget: {after}, saying:\n{}",
        b.text("main").unwrap_or_default()
    );
    b.assert_clean("series after forget");
    assert!(b.exists("#notice"));
    assert_eq!(b.count("#snapshots tbody tr[data-id]"), vm1.len() - 1);
    assert!(
        listed(repo, &third).is_none(),
        "the forgotten snapshot is still listed"
    );
    b.screenshot("series-after-forget");
    lap("forgotten");
    // Everything else is whole: every other snapshot of vm1 and vm2 restores byte for byte,
    // and a new verify finds nothing but the damage made on purpose.
    let scratch = r.t.path().join("scratch");
    fs::create_dir(&scratch).unwrap();
    for id in vm1.iter().chain(&vm2).filter(|id| **id != third) {
        assert_eq!(
            restored_sha(repo, id, &scratch),
            r.sha[id],
            "snapshot {id} restored"
        );
    }
    let verify = tessera([OsStr::new("verify"), repo.as_os_str()]);
    assert_eq!(verify.code, 4, "{verify}");
    assert_eq!(damaged_ids(repo), BTreeSet::from([db1.clone()]), "{verify}");

    lap("restored and verified");
    // --- A read token: no buttons ---------------------------------------------------------
    b.click_and_wait("#logout button");
    expect_path(&b, "/ui/login", "Log out");
    b.assert_clean("login after logout");
    b.goto(&format!("{base}/ui/"));
    expect_path(&b, "/ui/login", "the logout ended the session");
    b.type_into("#token", &reader);
    b.click_and_wait("#login-submit");
    expect_path(&b, "/ui/", "the read token's login");
    b.assert_clean("overview (read)");
    assert_eq!(b.must_attr("#whoami", "data-role"), "read");
    for id in [&vm1[3], &vm1[1]] {
        b.goto(&format!("{base}/ui/snapshot/{id}"));
        b.assert_clean("snapshot (read)");
        assert_eq!(b.must_attr("#snapshot-id", "data-id"), *id);
        assert_eq!(
            b.count("#actions, #protect, #unprotect, #forget"),
            0,
            "a read token is offered actions on {id}"
        );
    }
    b.screenshot("snapshot-read");
    drop(b);
    drop(served);
    let took = started.elapsed().as_secs_f64();
    eprintln!("[dashboard_browser] done in {took:.1}s");
}
